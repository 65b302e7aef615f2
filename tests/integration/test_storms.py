"""No storms, no crashes: each fault the issue measured, driven against the real daemon (a subprocess),
the fake TinyTask over HTTP and the stand-in goose, and measured as counts of requests, comments,
log lines and files. docs/reliability.md has the table of these figures beside those of before.

Every daemon runs with a loop interval of 1 s; "a window" below is a number of the daemon's own
goose checks or failed starts, each further apart than the last (the breakers double), so the
counts bound a rate without timing anything.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import FAULTY_DAEMON, STANDIN, DaemonProcess, NotifyListener, Workspace, wait_for


def start(daemons: list[DaemonProcess], workspace: Workspace, *args: str, program=None, **env: str) -> DaemonProcess:
    daemon = DaemonProcess(workspace, "run", *args, env=workspace.daemon_env(**env), program=program).start()
    daemons.append(daemon)
    return daemon


def events(daemon: DaemonProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in daemon.log_events() if e.get("event") == name]


def writes(fake: FakeTinyTask) -> list[tuple[str, str]]:
    return [request for request in fake.requests if request[0] != "GET"]


def measured(case: str, **figures: Any) -> None:
    # `pytest -s tests/integration/test_storms.py` prints the figures of docs/reliability.md.
    print(f"measured {case}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


@pytest.fixture
def listener(tmp_path: Path):
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


# --- retry storms -----------------------------------------------------------------------------------


def test_goose_not_on_path_starts_nothing_says_so_everywhere_and_recovers_on_reload(fake, workspace, daemons, listener):
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a")
    tasks = [fake.create_task(f"t{i}", queue_name="dev") for i in range(3)]
    bin_dir = workspace.base / "bin"
    bin_dir.mkdir()
    path = f"{bin_dir}:/usr/bin:/bin"
    daemon = start(
        daemons,
        workspace,
        "--daemon",
        TINYSCHEDULER_GOOSE_BIN="goose",
        PATH=path,
        NOTIFY_SOCKET=str(listener.path),
    )
    # The window: the check at start and two more, 1 s then 2 s later (the goose breaker doubles).
    wait_for(lambda: len(events(daemon, "goose_still_unavailable")) >= 2, what="goose checked three times")
    requests = list(fake.requests)
    assert writes(fake) == [], "no assignment, no status change, no comment while goose is missing"
    assert all(not fake.comments(t["id"]) and fake.task(t["id"])["status"] == "idle" for t in tasks)
    assert len(events(daemon, "goose_unavailable")) == 1, "said once, then quieter lines"
    assert len(requests) <= 25, requests  # the passes' own reads only: before, 303 spawns in 13 s
    measured("goose missing", requests=len(requests), writes=0, checks=3, spawns=len(events(daemon, "spawn_failed")))

    status = workspace.cli("status", "--json", PATH=path)
    assert status.returncode == 1
    assert any(
        p.startswith("goose unavailable") and "not found on PATH" in p for p in json.loads(status.stdout)["problems"]
    )
    wait_for(lambda: "goose unavailable" in (listener.statuses() or [""])[-1], what="STATUS naming goose")

    (bin_dir / "goose").symlink_to(STANDIN)
    daemon.signal(signal.SIGHUP)  # a reload checks goose at once
    wait_for(lambda: all(fake.task(t["id"])["status"] == "complete" for t in tasks), what="the tasks done")
    assert len(events(daemon, "goose_available")) == 1
    wait_for(lambda: workspace.cli("status", PATH=path).returncode == 0, what="status healthy again")


def test_run_once_with_goose_missing_exits_non_zero(fake, workspace):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    fake.create_task("t", queue_name="dev")
    result = workspace.cli("run", "--once", TINYSCHEDULER_GOOSE_BIN=str(workspace.base / "no-goose"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "goose_unavailable" in result.stdout + result.stderr
    assert writes(fake) == []


def test_any_exception_while_starting_rolls_back_once_per_start_and_backs_off(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    task = fake.create_task("t", queue_name="dev")
    daemon = start(
        daemons, workspace, "--daemon", program=FAULTY_DAEMON, TINYSCHEDULER_TEST_SPAWN_ERROR="embedded null byte"
    )
    # The window: three failed starts, the agent's breaker waiting 1 s, then 2 s between them.
    # Each failed start is said twice, the failure then the agent's breaker opening: wait for both.
    wait_for(
        lambda: len(events(daemon, "spawn_failed")) >= 3 and len(events(daemon, "agent_unavailable")) >= 3,
        what="three failed starts and the breaker opened after each",
    )
    failed = len(events(daemon, "spawn_failed"))
    comments = fake.comments(task["id"])
    patches = [r for r in writes(fake) if r[0] == "PATCH"]
    assert failed <= 4, "before: 115-129 crashed starts in 8 s"
    assert len(comments) <= failed + 1 and all("could not start" in c["content"] for c in comments)
    assert len(patches) <= 1 + 2 * (failed + 1), patches  # assign once; working and idle again per start
    assert events(daemon, "run_crashed") == []
    assert len(events(daemon, "agent_unavailable")) >= 3
    wait_for(lambda: fake.task(task["id"])["status"] == "idle" and not workspace.leases(), what="rolled back")
    measured("exception at start", starts=failed, comments=len(comments), patches=len(patches))
    status = workspace.cli("status", "--json")
    assert status.returncode == 1
    assert any(p.startswith("agent dev-a unavailable until") for p in json.loads(status.stdout)["problems"])


# --- crashes and hangs ------------------------------------------------------------------------------


def test_a_nul_byte_in_a_recipe_name_is_a_refused_reload_not_a_crash(fake, workspace, daemons):
    registry = workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    task = fake.create_task("long", queue_name="dev")
    daemon = start(daemons, workspace, "--daemon")
    lease = workspace.running_dir / f"task_{task['id']}.json"
    pid = wait_for(lambda: lease.exists() and json.loads(lease.read_text()).get("pid"), what="a run")

    registry.write_text(json.dumps([{"agentName": "dev-a", "agentType": "dev", "recipe": "dev\u0000.yaml"}]))
    daemon.signal(signal.SIGHUP)
    [refused] = wait_for(lambda: events(daemon, "reload_rejected"), what="the reload refused")
    assert "contains a control character" in refused["reason"]
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon lives on"
    assert lease.exists() and json.loads(lease.read_text())["pid"] == pid, "its run is still supervised"
    assert "Traceback" not in daemon.output()

    for args, code in ((["validate-config"], 1), (["run", "--once"], 2)):
        result = workspace.cli(*args)
        assert result.returncode == code and "Traceback" not in result.stderr + result.stdout
        assert "contains a control character" in result.stdout + result.stderr


def test_a_fifo_in_place_of_the_registry_or_the_lock_never_hangs_anything(fake, workspace, daemons):
    registry = workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    daemon = start(daemons, workspace, "--daemon")
    wait_for((workspace.base / "state" / "last_pass.json").exists, what="a first pass")
    registry.unlink()
    os.mkfifo(registry)
    daemon.signal(signal.SIGHUP)
    [refused] = wait_for(lambda: events(daemon, "reload_rejected"), what="the reload refused")
    assert "is a FIFO, expected a regular file" in refused["reason"]
    task = fake.create_task("after the refused reload", queue_name="dev")
    wait_for(lambda: fake.task(task["id"])["status"] == "complete", what="the old configuration running on")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait(timeout=20) == 0

    lock = workspace.base / "state" / "tinyscheduler.lock"
    lock.unlink()
    os.mkfifo(lock)
    status = workspace.cli("status")  # 60 s timeout: a hang fails the test
    assert status.returncode == 1 and "agent-control.json: cannot read: is a FIFO" in status.stdout
    dry = workspace.cli("run", "--dry-run", TINYSCHEDULER_AGENT_LIMITS="dev-a:1")
    assert "Traceback" not in dry.stderr


# --- bad data and settings --------------------------------------------------------------------------


def renumber(fake: FakeTinyTask, task_id: int, new_id: int) -> None:
    """Play a misbehaving server: the fake itself never numbers a task below 1."""
    with fake.store.lock:
        row = fake.store._tasks.pop(task_id)
        row["id"] = new_id
        fake.store._tasks[new_id] = row


def queue_lists(fake: FakeTinyTask) -> int:
    """Lists of tasks sent (a pass sends one: core.listing)."""
    return sum(1 for method, path in fake.requests if method == "GET" and path.startswith("/api/v1/tasks?"))


def test_a_negative_task_id_and_malformed_tasks_are_skipped_and_said_once(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a")
    for i in range(19):  # free text the server accepts as an assignee, and we cannot use
        fake.create_task(f"bad {i}", queue_name="dev", assigned_to=f"Jane Doe {i}")
    negative = fake.create_task("negative id", queue_name="dev")
    renumber(fake, negative["id"], -5)
    good = fake.create_task("good", queue_name="dev")
    daemon = start(daemons, workspace, "--daemon")
    wait_for(lambda: fake.task(good["id"])["status"] == "complete", what="the good task done")
    # The window: five more passes (each lists the idle tasks once).
    lists = queue_lists(fake)
    wait_for(lambda: queue_lists(fake) >= lists + 5, what="five more passes")
    malformed = events(daemon, "task_malformed")
    assert sorted(e["task_id"] for e in malformed) == sorted([-5, *range(1, 20)]), "once per task, not per pass"
    quarantine = workspace.base / "state" / "quarantine"
    assert not quarantine.exists() or list(quarantine.iterdir()) == []
    assert workspace.leases() == []
    measured("malformed", tasks=20, warnings=len(malformed), quarantined=0)
    status = json.loads(workspace.cli("status", "--json").stdout)
    assert any(p.startswith("20 task(s) from TinyTask could not be used") for p in status["problems"])


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"TINYSCHEDULER_LOG_KEEP_DAYS": "99999999999"},
            "error: TINYSCHEDULER_LOG_KEEP_DAYS='99999999999': expected a whole number of days from 1 to 3650",
        ),
        (
            {"TINYSCHEDULER_LOOP_INTERVAL_SEC": "99999999999"},
            "error: TINYSCHEDULER_LOOP_INTERVAL_SEC='99999999999': expected a whole number of seconds from 1 to 86400",
        ),
        ({"TINYSCHEDULER_STOP_GRACE_SEC": "1e9"}, "error: TINYSCHEDULER_STOP_GRACE_SEC='1e9': expected a number"),
        ({"TINYSCHEDULER_AGENT_CONTROL_FILE": "agents.json"}, "agents.json: not found; the agent registry is named"),
    ],
)
def test_a_setting_out_of_range_or_a_missing_named_registry_stops_run_with_one_line(fake, workspace, env, line):
    result = workspace.cli("run", "--once", **env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [error] = result.stderr.splitlines()
    assert line in error
    assert writes(fake) == []


def test_the_dry_run_says_which_agents_cannot_start_and_why(fake, workspace):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    task = fake.create_task("t", queue_name="dev")
    result = workspace.cli("run", "--dry-run", "--json", TINYSCHEDULER_GOOSE_BIN="goose", PATH="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["starts"] == []
    [skip] = [s for s in plan["skips"] if s["task_id"] == task["id"]]
    assert skip["reason"].startswith("no agent of pool dev available: agent dev-a unavailable until ")
    assert skip["reason"].endswith("goose 'goose' not found on PATH")
