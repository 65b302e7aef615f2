"""Least privilege, no leaks: the real CLI and daemon against the fake TinyTask, one section per point.

1. files: private modes whatever the umask, no write through a symlink, an unsafe state folder refused;
2. terminal: text from outside is shown escaped in status, report, logs and log lines;
3. secrets: a planted secret appears in no output and no file;
4. units: tests/unit/test_units.py (scores, verify) and tests/system (the sandboxed units at work);
5. the stand-in goose runs only against the in-package fake TinyTask, or with the test switch.
"""

from __future__ import annotations

import io
import os
import signal
import stat
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.lock import InstanceLock
from tinyscheduler.adapters.logsetup import DailyFile, configure_logging
from tinyscheduler.adapters.runlog import RunLog
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.testing.fake import FakeTinyTask

from harness import STANDIN, DaemonProcess, Workspace, wait_for

CONTROL = ("\x1b", "\x07", "\x9b", "\r")


def script_goose(folder: Path, body: str = "") -> Path:
    """A goose that is not the stand-in: runs `body`, then ends its stream-json output complete."""
    path = folder / "bin" / "goose"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\n{body}\necho \'{{"type": "complete"}}\'\n')
    path.chmod(0o755)
    return path


def one_task_for(workspace: Workspace, fake: FakeTinyTask, title: str = "t") -> dict[str, Any]:
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1})
    return fake.create_task(title, queue_name="dev")


def modes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): f"{stat.S_IMODE(p.lstat().st_mode):04o}" for p in sorted(folder.rglob("*"))}


# --- 1. files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022])
def test_state_and_logs_are_private_whatever_the_umask_and_runs_keep_theirs(
    workspace: Workspace, fake: FakeTinyTask, umask: int
) -> None:
    task = one_task_for(workspace, fake)
    goose = script_goose(workspace.base, body=f"umask > {workspace.base / 'run-umask'}")
    result = workspace.cli("run", "--once", umask=umask, TINYSCHEDULER_GOOSE_BIN=str(goose))
    assert result.returncode == 0, result.stderr
    assert fake.task(task["id"])["status"] == "complete"

    found = modes(workspace.base / "state")
    folders = {"running", "logs", "logs/tasks"}
    files = {"tinyscheduler.lock", "attempts.jsonl", "last_pass.json", f"logs/tasks/{task['id']}.1.log"}
    assert folders | files <= set(found)
    assert any(name.startswith("logs/scheduler_") for name in found)
    assert any(name.startswith("logs/events_") for name in found)
    # Measured on main: 0777 folders and a 0666 log under umask 000; 0644 files under 022.
    assert {name: mode for name, mode in found.items() if mode not in ("0700", "0600")} == {}
    assert all(found[name] == "0700" for name in folders)
    # The run starts with the umask the scheduler was started with (the shipped units: 0077).
    assert (workspace.base / "run-umask").read_text().strip() == f"{umask:04o}"


def test_no_write_goes_through_a_symlink_or_into_a_fifo(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.write_text("keep me\n")
    state = tmp_path / "state"
    (state / "logs" / "tasks" / "1").mkdir(parents=True)

    lock = state / "tinyscheduler.lock"
    lock.symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"):
        InstanceLock(lock).acquire()

    now = datetime.now().astimezone()
    daily = DailyFile(state / "logs", "scheduler", ".log", keep_days=14)
    daily.path_for(now.date()).symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"):
        daily.write(now, "a log line")

    run_log = state / "logs" / "tasks" / "1" / "1.log"
    run_log.symlink_to(precious)
    with pytest.raises(OSError, match="symbolic link"):
        RunLog(run_log, max_bytes=10).create("header\n")

    # A FIFO would block the daemon's loop on its first write once the pipe is full.
    fifo = state / "logs" / "tasks" / "1" / "2.log"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        RunLog(fifo, max_bytes=10).create("header\n")

    assert precious.read_text() == "keep me\n"


def test_the_daemon_writes_no_file_through_a_planted_symlink(workspace: Workspace, fake: FakeTinyTask) -> None:
    precious = workspace.base / "precious"
    precious.write_text("keep me\n")
    state = workspace.base / "state"
    state.mkdir(mode=0o700)
    (state / "tinyscheduler.lock").symlink_to(precious)
    result = workspace.cli("run", "--once")
    assert result.returncode == 1
    assert result.stderr.strip().endswith("tinyscheduler.lock: is a symbolic link (not followed)"), result.stderr
    (state / "tinyscheduler.lock").unlink()

    task = one_task_for(workspace, fake)
    today = datetime.now().astimezone()
    (state / "logs" / "tasks").mkdir(parents=True)
    for day in (today, today + timedelta(days=1)):  # a run at midnight writes the next day's log
        scheduler_log = state / "logs" / f"scheduler_{day:%Y%m%d}.log"
        scheduler_log.unlink(missing_ok=True)  # written by the first attempt
        scheduler_log.symlink_to(precious)
    (state / "logs" / "tasks" / f"{task['id']}.1.log").symlink_to(precious)
    result = workspace.cli("run", "--once")
    assert result.returncode == 1, "a run that could not start fails `run --once` (docs/reliability.md)"
    assert "cannot write the log file" in result.stderr  # said once; the stream still gets every line
    assert precious.read_text() == "keep me\n"
    assert fake.task(task["id"])["status"] == "idle", "no run without its log: rolled back"


@pytest.mark.parametrize("problem", ["world-writable", "another user's"])
def test_an_unsafe_state_folder_is_refused_in_one_line(workspace: Workspace, fake: FakeTinyTask, problem: str) -> None:
    task = one_task_for(workspace, fake)
    state = workspace.base / "state"
    state.mkdir()
    if problem == "world-writable":
        state.chmod(0o777)
        expected = f"{state} is writable by every user (mode 0777)"
    else:
        if os.geteuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        os.chown(state, 65534, 65534)
        expected = f"{state} belongs to "
    result = workspace.cli("run", "--once")
    assert result.returncode == 2, result.stderr
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        line for line in result.stderr.splitlines() if "not started: unsafe state folder: " + expected in line
    ]
    assert os.listdir(state) == [] and fake.task(task["id"])["status"] == "idle"
    checked = workspace.cli("validate-config")
    assert checked.returncode == 1
    assert f"FAIL  paths: unsafe state folder: {expected}" in checked.stdout


# --- 2. terminal --------------------------------------------------------------------------------------

HOSTILE = "evil\x1b[2J\x1b]0;owned\x07\nforged | row | x"


def test_status_shows_lease_fields_escaped_in_one_row(workspace: Workspace) -> None:
    store = LeaseStore(workspace.running_dir, workspace.base / "state" / "quarantine")
    store.ensure()
    now = datetime.now().astimezone()
    store.write(
        Lease(
            task_id=7,
            agent=HOSTILE,
            pid=None,
            recipe="r.yaml",
            started_at=now,
            heartbeat=now,
            host=HOSTILE,
            state=LeaseState.STARTING,
            log_path=f"/tmp/{HOSTILE}.log",
        )
    )
    result = workspace.cli("status")
    assert result.returncode == 3, result.stderr  # no daemon runs (as systemctl: 3)
    assert not any(char in result.stdout for char in CONTROL)
    lines = result.stdout.splitlines()
    table = lines[lines.index("Running (1)") + 1 :]
    assert table[0].split()[:2] == ["task", "agent"]
    assert table[1].split()[:2] == ["7", "evil\\x1b[2J\\x1b]0;owned\\x07\\nforged"]
    assert table[2] == "", "one lease, one row: no forged line"


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_report_shows_task_titles_escaped_in_one_row(workspace: Workspace, fake: FakeTinyTask, fmt: str) -> None:
    fake.create_task(HOSTILE, assigned_to="dev")
    fake.create_task("plain", assigned_to="dev")
    result = workspace.cli("report", "--format", fmt)
    assert result.returncode == 0, result.stderr
    assert not any(char in result.stdout for char in CONTROL)
    rows = [line for line in result.stdout.splitlines() if "evil" in line or "plain" in line]
    assert len(rows) == 2, rows
    if fmt == "markdown":
        # Seven cells, so eight unescaped pipes: the title's own are `\|`.
        assert [row.replace("\\|", "").count("|") for row in rows] == [8, 8]


@pytest.mark.parametrize("fmt", ["journal", "console"])
def test_log_lines_show_server_text_escaped_on_one_line(fmt: str) -> None:
    stream = io.StringIO()
    configure_logging("info", fmt, None, stream=stream)
    try:
        structlog.get_logger("test").error("pass_failed", error="boom\x1b[2J\x07\n<2>event=forged", path=HOSTILE)
    finally:
        configure_logging("info", "json", None, stream=io.StringIO())
    out = stream.getvalue()
    assert out.count("\n") == 1 and not any(char in out for char in CONTROL), repr(out)
    assert "x1b[2J" in out and "forged" in out  # shown, inert


# --- 3. secrets ---------------------------------------------------------------------------------------

PLANTED = ("PLANTEDtokenXYZ", "sk-PLANTEDkeyXYZ", "PLANTEDenvXYZ")


def test_a_planted_secret_appears_in_no_output_and_no_file(workspace: Workspace, fake: FakeTinyTask) -> None:
    token, api_key, env_key = PLANTED
    task = one_task_for(workspace, fake)
    secrets = {
        "TINYSCHEDULER_MCP_ENDPOINT": fake.url.replace("http://", f"http://{token}@"),
        "TINYSCHEDULER_GOOSE_ARGS": f"--api-key {api_key} --with-env OPENAI_API_KEY={env_key}",
        "TINYSCHEDULER_GOOSE_BIN": str(script_goose(workspace.base)),
    }
    outputs = [
        workspace.cli("config", "--show", **secrets),
        workspace.cli("config", "--json", **secrets),
        workspace.cli("run", "--dry-run", **secrets),
        workspace.cli("run", "--dry-run", "--json", **secrets),
        workspace.cli("run", "--once", **secrets),
        workspace.cli("run", "--once", TINYSCHEDULER_LOG_FORMAT="console", **secrets),
        workspace.cli("status", "--json", **secrets),
        workspace.cli("status", **secrets),
        workspace.cli("validate-config", **secrets),
        # An unreachable server: its error names the URL.
        workspace.cli("run", "--dry-run", **{**secrets, "TINYSCHEDULER_MCP_ENDPOINT": f"http://{token}@127.0.0.1:9"}),
    ]
    assert fake.task(task["id"])["status"] == "complete"
    files = {str(p): p.read_text(errors="replace") for p in (workspace.base / "state").rglob("*") if p.is_file()}
    assert any("/logs/tasks/" in name and "--api-key '***'" in text for name, text in files.items()), "the header"
    assert any("events_" in name for name in files) and any("scheduler_" in name for name in files)
    for secret in PLANTED:
        for result in outputs:
            assert secret not in result.stdout + result.stderr, (result.args, result.stdout, result.stderr)
        assert [name for name, text in files.items() if secret in text] == []


# --- 5. the stand-in goose ------------------------------------------------------------------------------


@pytest.fixture
def production() -> Any:
    """A TinyTask that does not say it is the fake, as the real one."""
    with FakeTinyTask(disguised=True) as server:
        yield server


def test_the_stand_in_is_refused_against_a_real_tinytask(tmp_path: Path, production: FakeTinyTask) -> None:
    workspace = Workspace(tmp_path, production.url)
    task = one_task_for(workspace, production)
    production.reset_requests()
    result = workspace.cli("run", "--once")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("tinyscheduler: not started: ")]
    assert len(lines) == 1 and "is the in-package stand-in goose" in lines[0], result.stderr
    assert production.requests == [("GET", "/api/v1/queues"), ("GET", "/health")], "connected, asked, nothing else"
    assert production.task(task["id"])["status"] == "idle"
    assert not (tmp_path / "state" / "running").exists()

    checked = workspace.cli("validate-config")
    assert checked.returncode == 1
    assert "FAIL  goose: TINYSCHEDULER_GOOSE_BIN=" in checked.stdout and "stand-in" in checked.stdout
    # The test switch, and only it, lets the stand-in run against any server.
    allowed = workspace.cli("validate-config", TINYSCHEDULER_ALLOW_STANDIN="1")
    assert "PASS  goose: " in allowed.stdout and "tinyscheduler stand-in goose (not goose)" in allowed.stdout


def test_the_stand_in_runs_against_the_in_package_fake(workspace: Workspace, fake: FakeTinyTask) -> None:
    assert fake.health()["tinyschedulerFake"] == "in-package fake TinyTask (not TinyTask)"
    task = one_task_for(workspace, fake)
    checked = workspace.cli("validate-config")
    assert "PASS  goose: " in checked.stdout, checked.stdout
    assert workspace.cli("run", "--once").returncode == 0
    assert fake.task(task["id"])["status"] == "complete"


def test_a_reload_to_the_stand_in_is_rejected(tmp_path: Path, production: FakeTinyTask) -> None:
    workspace = Workspace(tmp_path, production.url)
    workspace.write_registry([("dev-a", "dev", 1)])
    env_file = tmp_path / "tinyscheduler.env"
    env_file.write_text(f"TINYSCHEDULER_GOOSE_BIN={script_goose(tmp_path)}\n")
    env = {k: v for k, v in workspace.daemon_env().items() if k != "TINYSCHEDULER_GOOSE_BIN"}
    daemon = DaemonProcess(workspace, "--env-file", str(env_file), "run", "--daemon", env=env).start()
    try:
        wait_for(lambda: any(e.get("event") == "started" for e in daemon.log_events()), what="the daemon")
        env_file.write_text(f"TINYSCHEDULER_GOOSE_BIN={STANDIN}\n")
        daemon.signal(signal.SIGHUP)
        rejected = wait_for(
            lambda: [e for e in daemon.log_events() if e.get("event") == "reload_rejected"], what="reload_rejected"
        )
        assert "is the in-package stand-in goose" in rejected[0]["reason"]
        assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon keeps its configuration and runs"
    finally:
        daemon.kill()
