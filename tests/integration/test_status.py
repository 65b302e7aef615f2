"""`tinyscheduler status` against a real daemon subprocess and the fake TinyTask, and with no daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.adapters.lock import InstanceLock

from harness import DaemonProcess, Workspace, wait_for


def wait_showing(daemon: DaemonProcess, predicate: Callable[[], Any], what: str) -> Any:
    """wait_for, with the daemon's output in the failure message."""
    try:
        return wait_for(predicate, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; daemon output:\n{daemon.output()[-4000:]}") from None


def status(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "status", *args],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def status_json(workspace: Workspace) -> dict[str, Any]:
    result = status(workspace, "--json")
    data = json.loads(result.stdout)
    # Like systemctl: 1 = problems, 3 = not running.
    assert result.returncode == (1 if data["problems"] else 0 if data["daemon"]["running"] else 3), result.stderr
    return data


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `folder` with its mode and content: proof that nothing changed."""
    return {
        str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_status_of_a_running_daemon_shows_holder_slots_leases_last_pass_and_problems(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 2), ("qa-a", "qa", 1)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    workspace.write_recipe("qa-a", {"mode": "fail"})
    long = fake.create_task("long job", queue_name="dev")
    doomed = fake.create_task("always fails", queue_name="qa")
    daemon = DaemonProcess(
        workspace, "run", "--daemon", env=workspace.daemon_env(TINYSCHEDULER_MAX_ATTEMPTS="1")
    ).start()
    daemons.append(daemon)
    lease = workspace.running_dir / f"task_{long['id']}.json"
    wait_showing(daemon, lambda: lease.exists() and json.loads(lease.read_text()).get("pid"), "a run with a pid")
    wait_showing(daemon, lambda: "tinyscheduler:failed" in fake.task(doomed["id"])["tags"], "the task given up")
    (workspace.running_dir / "task_999.json").write_text("{not json")
    wait_showing(
        daemon,
        lambda: list((workspace.base / "state" / "quarantine").glob("task_999.json.*")),
        "the bad lease file quarantined",
    )

    data = status_json(workspace)
    assert data["daemon"]["running"] is True
    assert data["daemon"]["pid"] == daemon.pid
    assert data["last_pass"]["ok"] is True and data["last_pass"]["pid"] == daemon.pid
    assert {a["agent"]: (a["busy"], a["limit"]) for a in data["agents"]} == {"dev-a": (1, 2), "qa-a": (0, 1)}
    [row] = data["leases"]
    assert (row["task_id"], row["agent"], row["attempt"], row["verdict"]) == (long["id"], "dev-a", 1, "keep")
    assert row["pid"] and Path(row["log_path"]).is_file()
    assert row["heartbeat_age_sec"] < 5
    problems = "\n".join(data["problems"])
    assert f"task {doomed['id']} gave up" in problems and "tinyscheduler:failed" in problems
    assert "quarantined lease file" in problems and "task_999.json" in problems
    assert [q["moved"] for q in data["quarantined"]] == [True]

    human = status(workspace)
    assert human.returncode == 1, human.stderr
    assert f"running, pid {daemon.pid}" in human.stdout
    assert "dev-a" in human.stdout and "1/2" in human.stdout
    assert row["log_path"] in human.stdout
    assert "Problems (2)" in human.stdout


def test_status_without_a_daemon_reads_only_and_names_what_is_wrong(workspace):
    workspace.write_registry([("dev-a", "dev", 3)])
    running = workspace.running_dir
    running.mkdir(parents=True)
    now = datetime.now(UTC).isoformat()
    # A lease whose process is long gone (PID 2**22 + 1 is above the kernel's maximum).
    (running / "task_7.json").write_text(
        json.dumps(
            {
                "task_id": 7,
                "agent": "dev-a",
                "pid": 4194305,
                "recipe": "dev-a.yaml",
                "started_at": now,
                "heartbeat": now,
                "host": os.uname().nodename,
                "state": "running",
                "attempt": 2,
                "log_path": "state/logs/tasks/7/2.log",
            }
        )
    )
    (running / "task_8.json").write_text("truncated {")
    (workspace.base / "state" / "attempts.json").write_text(
        json.dumps(
            {
                "version": 1,
                "tasks": {
                    "5": {"failures": 3, "last_outcome": "failed", "gave_up": True},
                    "6": {"failures": 1, "last_outcome": "timed_out", "not_before": "2999-01-01T00:00:00+00:00"},
                },
            }
        )
    )
    before = tree(workspace.base)

    data = status_json(workspace)
    human = status(workspace)

    assert tree(workspace.base) == before, "status changed the state folder"
    assert data["daemon"]["running"] is False and data["last_pass"] is None
    assert data["agents"] == [{"agent": "dev-a", "busy": 1, "limit": 3}]
    [lease] = data["leases"]
    assert lease["verdict"] == "settle" and "ended while no scheduler watched it" in lease["reason"]
    problems = "\n".join(data["problems"])
    assert "unsupervised run: task 7" in problems and "once one starts, reports its outcome" in problems
    assert "bad lease file" in problems and "task_8.json" in problems
    assert "task 5 gave up after 3 failed attempt(s)" in problems
    assert [b["task_id"] for b in data["backing_off"]] == [6]
    assert "not running" in human.stdout and "Waiting to retry (1)" in human.stdout
    assert "Problems (3)" in human.stdout


def test_status_of_an_empty_folder_is_calm(workspace):
    result = status(workspace)
    assert result.returncode == 3, result.stderr  # not running, nothing else wrong
    assert "not running" in result.stdout and "No problems found." in result.stdout
    assert sorted(p.name for p in workspace.base.iterdir()) == [], "status created files"


@pytest.mark.parametrize(
    ("started_ago", "last_pass", "stuck"),
    [
        (600, None, "no pass finished since the daemon started 10m"),
        (600, "a previous daemon's", "no pass finished since the daemon started 10m"),
        (600, "its own, 10 minutes old", "no pass finished for 10m"),
        (600, "its own, just now", None),
        (5, None, None),
    ],
    ids=["none-yet", "previous-daemon", "own-old", "own-fresh", "just-started"],
)
def test_status_says_a_running_daemon_may_be_stuck_when_no_pass_of_its_own_finished_in_time(
    workspace, started_ago, last_pass, stuck
):
    """Before, a daemon whose first pass never ended showed as healthy for good: status only aged a
    pass on record, and only one of the running daemon's."""
    state = workspace.base / "state"
    state.mkdir(mode=0o700)
    now = datetime.now(UTC)
    if last_pass is not None:
        pid = os.getpid() + (1 if last_pass == "a previous daemon's" else 0)
        started = now - timedelta(seconds=600 if "old" in last_pass or "previous" in last_pass else 1)
        record = {"pid": pid, "started_at": started.isoformat(), "ok": True, "duration_sec": 0.1}
        (state / "last_pass.json").write_text(json.dumps(record))
    lock = InstanceLock(state / "tinyscheduler.lock")
    lock.acquire()
    try:
        since = (now - timedelta(seconds=started_ago)).isoformat()
        (state / "tinyscheduler.lock").write_text(f"pid {os.getpid()} since {since} instance test config -\n")
        data = status_json(workspace)
    finally:
        lock.release()
    said = [p for p in data["problems"] if p.startswith("no pass finished")]
    if stuck is None:
        assert said == [], data["problems"]
    else:
        assert len(said) == 1 and said[0].startswith(stuck), data["problems"]
        assert said[0].endswith("the daemon may be stuck")


def test_status_of_a_base_path_that_does_not_exist_says_so(workspace):
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "--base-path", str(workspace.base / "typo"), "status"],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert "No problems found" not in result.stdout
    assert f"base path {workspace.base / 'typo'} is not an existing folder" in result.stdout


def test_status_reports_a_lease_folder_it_cannot_read(workspace):
    # As root a 0700 folder of another user is still readable, so a file where the folder should be
    # stands in for "cannot read the lease folder".
    (workspace.base / "state").mkdir()
    (workspace.base / "state" / "running").write_text("not a folder")
    data = status_json(workspace)
    assert any("cannot read" in p and "state/running" in p for p in data["problems"]), data["problems"]
    assert data["leases"] == []


def test_runs_the_daemon_is_still_starting_or_reporting_are_not_called_stale(workspace):
    # The daemon (this test holds its lock) judges only leases no run of its own supervises: a
    # lease of its instance in state starting (no pid yet) or finishing (the process has ended, the
    # outcome is being reported, maybe retried while TinyTask is down) is its run at work.
    workspace.write_registry([("dev-a", "dev", 3)])
    running = workspace.running_dir
    running.mkdir(parents=True)
    now = datetime.now(UTC).isoformat()

    def lease(task_id: int, state: str, pid: int | None, owner: str) -> None:
        (running / f"task_{task_id}.json").write_text(
            json.dumps(
                {
                    "task_id": task_id,
                    "agent": "dev-a",
                    "pid": pid,
                    "recipe": "dev-a.yaml",
                    "started_at": now,
                    "heartbeat": now,
                    "host": os.uname().nodename,
                    "state": state,
                    "owner": owner,
                }
            )
        )

    lease(1, "finishing", 4194305, "live1234")
    lease(2, "starting", None, "live1234")
    lease(3, "running", 4194305, "live1234")  # its process is gone while it should be running
    lease(4, "finishing", 4194305, "gone5678")  # a previous instance's: the daemon settles it
    lock = InstanceLock(workspace.base / "state" / "tinyscheduler.lock")
    lock.acquire("instance live1234 config -")
    try:
        data = status_json(workspace)
    finally:
        lock.release()

    verdicts = {row["task_id"]: row["verdict"] for row in data["leases"]}
    assert verdicts == {1: "keep", 2: "keep", 3: "settle", 4: "settle"}
    stale = [p for p in data["problems"] if p.startswith("unsupervised run")]
    assert [p.split(" (")[0] for p in stale] == ["unsupervised run: task 3", "unsupervised run: task 4"]
    assert {a["agent"]: a["busy"] for a in data["agents"]} == {"dev-a": 2}  # finishing holds no slot


def test_status_from_another_folder_finds_the_running_daemon(fake, workspace, daemons, tmp_path_factory):
    """Exit codes as systemctl's, and a status run from the wrong folder with no configuration no longer
    says "not running, no problems" (exit 0) while a daemon runs: it names it (exit 1)."""
    env_file = workspace.base / "tinyscheduler.env"
    settings = {k: v for k, v in workspace.daemon_env().items() if k.startswith("TINYSCHEDULER_")}
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items() if k != "TINYSCHEDULER_STANDIN_RECORD"))
    plain = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    daemon = DaemonProcess(workspace, "--env-file", str(env_file), "run", "--daemon", env=plain).start()
    daemons.append(daemon)
    wait_showing(daemon, (workspace.base / "state" / "last_pass.json").exists, "a first pass")
    elsewhere = tmp_path_factory.mktemp("elsewhere")

    def status_in(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tinyscheduler", *args, "status"],
            cwd=folder,
            env={**plain, **env},
            capture_output=True,
            text=True,
            timeout=30,
        )

    assert status_in(workspace.base, "--env-file", str(env_file)).returncode == 0
    assert status_in(elsewhere, TINYSCHEDULER_ENV_FILE=str(env_file)).returncode == 0
    lost = status_in(elsewhere)
    assert lost.returncode == 1, lost.stdout
    assert f"pid {daemon.pid} runs" in lost.stdout and str(workspace.base) in lost.stdout
    assert (
        "no configuration found (looked at: --env-file (not given), TINYSCHEDULER_ENV_FILE (not given), " in lost.stderr
    )
    daemon.signal(15)
    assert daemon.wait() == 0
    assert status_in(workspace.base, "--env-file", str(env_file)).returncode == 3
