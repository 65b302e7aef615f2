"""`tinyscheduler logs` against a real daemon subprocess and the fake TinyTask."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tinyscheduler.cli import logs as tasklogs
from tinyscheduler.cli.logs import copy_new
from tinyscheduler.config.settings import load_settings

from harness import DaemonProcess, Workspace, wait_for


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.2})
    process = DaemonProcess(workspace, "run", "--daemon").start()
    yield process
    process.kill()


def logs(workspace: Workspace, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "logs", *args],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_logs_shows_the_latest_attempt_or_the_one_asked_for(fake, workspace, daemon):
    task = fake.create_task("flaky", queue_name="dev", tags=["standin:fail-once:0.1"])
    wait_for(lambda: fake.task(task["id"])["status"] == "complete", what="retry succeeded")

    latest = logs(workspace, str(task["id"]))
    assert latest.returncode == 0, latest.stderr
    assert "attempt 2" in latest.stdout and "stand-in goose: done" in latest.stdout
    assert "--- tinyscheduler: succeeded" in latest.stdout

    first = logs(workspace, str(task["id"]), "--attempt", "1")
    assert first.returncode == 0, first.stderr
    assert "attempt 1" in first.stdout and "simulated failure" in first.stdout

    missing = logs(workspace, str(task["id"]), "--attempt", "3")
    assert missing.returncode == 1
    assert "attempts with a log: 1, 2" in missing.stderr and "Traceback" not in missing.stderr


def test_logs_follow_prints_while_the_run_is_in_flight_and_ends_with_it(fake, workspace, daemon):
    task = fake.create_task("slow", queue_name="dev", tags=["standin:succeed:2"])
    lease = workspace.running_dir / f"task_{task['id']}.json"
    wait_for(lease.exists, what="the run's lease")

    followed = logs(workspace, str(task["id"]), "-f", timeout=30)

    assert followed.returncode == 0, followed.stderr
    assert fake.task(task["id"])["status"] == "complete", "-f returned before the run ended"
    assert followed.stdout.index("mode succeed") < followed.stdout.index("--- tinyscheduler: succeeded")


def test_logs_of_a_task_that_never_ran(workspace):
    result = logs(workspace, "4242")
    assert result.returncode == 1
    tasks = workspace.base / "state" / "logs" / "tasks"
    assert result.stderr.strip() == (
        f"tinyscheduler: no run log for task 4242 "
        f"(looked for {tasks}/4242.<attempt>.log and {tasks}/4242/<attempt>.log)"
    )


def loaded_at(base):
    return load_settings(env_file=None, cli={"base_path": str(base)}, environ={}, cwd=base)


def shown(base, task_id, attempt=None):
    """`logs TASK [--attempt N]` in-process: (exit code, what it printed)."""
    out = io.BytesIO()
    code = tasklogs.logs_command(loaded_at(base), task_id=task_id, attempt=attempt, follow_output=False, out=out)
    return code, out.getvalue().decode()


def test_logs_reads_both_layouts_and_the_latest_attempt_of_either(tmp_path, capsys):
    # 2.0.0 wrote <task>/<attempt>.log; runs now write <task>.<attempt>.log; an upgrade has both.
    tasks = tmp_path / "state" / "logs" / "tasks"
    (tasks / "5").mkdir(parents=True)
    (tasks / "5" / "1.log").write_text("old layout, attempt 1\n")
    (tasks / "5" / "2.log").write_text("old layout, attempt 2\n")
    (tasks / "5.3.log").write_text("new layout, attempt 3\n")
    for stranger in ("5.4.log.bak", "a.5.log", "55.9.log", "5.x.log"):
        (tasks / stranger).write_text("not a log of task 5\n")
    (tasks / "6").mkdir()
    (tasks / "6" / "4.log").write_text("old layout, attempt 4\n")
    (tasks / "6.2.log").write_text("new layout, attempt 2\n")
    (tasks / "7").mkdir()
    (tasks / "7" / "1.log").write_text("old layout\n")
    (tasks / "7.1.log").write_text("new layout\n")

    assert shown(tmp_path, 5) == (0, "new layout, attempt 3\n")
    assert shown(tmp_path, 5, 2) == (0, "old layout, attempt 2\n")
    assert shown(tmp_path, 6) == (0, "old layout, attempt 4\n"), "the highest number, whichever the layout"
    assert shown(tmp_path, 6, 2) == (0, "new layout, attempt 2\n")
    assert shown(tmp_path, 7, 1) == (0, "new layout\n"), "the flat name first"
    found = tasklogs.attempts(loaded_at(tmp_path).settings, 5)
    assert found == {1: tasks / "5" / "1.log", 2: tasks / "5" / "2.log", 3: tasks / "5.3.log"}
    capsys.readouterr()
    assert shown(tmp_path, 5, 4) == (1, "")
    assert capsys.readouterr().err == (
        f"tinyscheduler: no log of attempt 4 of task 5 (attempts with a log: 1, 2, 3; "
        f"looked for {tasks}/5.4.log and {tasks}/5/4.log)\n"
    )


def test_follow_starts_over_when_the_log_cap_cut_the_file(tmp_path):
    log = tmp_path / "1.log"
    log.write_bytes(b"a" * 100 + b"\n")
    out = io.BytesIO()
    offset = copy_new(log, 0, out)
    log.write_bytes(b"[tinyscheduler: log capped]\ntail\n")  # shorter than what was read: a cut
    copy_new(log, offset, out)
    assert out.getvalue() == b"a" * 100 + b"\n[tinyscheduler: log capped]\ntail\n"


def test_logs_piped_into_head_ends_quietly(tmp_path):
    log = tmp_path / "state" / "logs" / "tasks" / "42"
    log.mkdir(parents=True)
    (log / "1.log").write_text("".join(f"line {n}\n" for n in range(200_000)))
    command = f"{shlex.quote(sys.executable)} -m tinyscheduler --base-path {tmp_path} logs 42 | head -1"
    result = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, "line 0\n", "")


def _orphan_lease(workspace: Workspace, task_id: int, pid: int, state: str = "running") -> None:
    """A lease left behind by a daemon that is gone, with the log its run wrote."""
    now = datetime.now(UTC).isoformat()
    workspace.running_dir.mkdir(parents=True, exist_ok=True)
    log = workspace.base / "state" / "logs" / "tasks" / str(task_id) / "1.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("stand-in goose: working\n")
    (workspace.running_dir / f"task_{task_id}.json").write_text(
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
                "attempt": 1,
                "log_path": str(log),
            }
        )
    )


@pytest.mark.parametrize("state", ["running", "finishing"])
def test_logs_follow_ends_when_no_daemon_is_left_to_end_the_run(workspace, state):
    # The daemon was killed and its run's process is gone (PID 2**22 + 1 is above the kernel's
    # maximum): the lease stays until the next daemon starts, but the run is over.
    _orphan_lease(workspace, 7, 4194305, state)
    followed = logs(workspace, "7", "-f", timeout=15)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout == "stand-in goose: working\n"


def test_logs_follow_keeps_following_a_live_process_without_a_daemon(workspace):
    with subprocess.Popen(["sleep", "30"]) as sleeper:
        try:
            _orphan_lease(workspace, 8, sleeper.pid)
            with pytest.raises(subprocess.TimeoutExpired):
                logs(workspace, "8", "-f", timeout=2)
        finally:
            sleeper.kill()


def test_logs_that_cannot_be_read_give_one_line(tmp_path, monkeypatch, capsys):
    # As root a 0700 folder of another user is still readable, so the refusal is simulated.
    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tasklogs.os, "listdir", refuse)
    code = tasklogs.logs_command(loaded_at(tmp_path), task_id=3, attempt=None, follow_output=False, out=io.BytesIO())
    assert code == 1
    assert capsys.readouterr().err == (
        f"tinyscheduler: cannot read {tmp_path}/state/logs/tasks/3: "
        "Permission denied; run logs as the scheduler's user\n"
    )


@pytest.mark.parametrize("name", ["9.1.log", "9/1.log"])
def test_logs_of_a_fifo_in_a_logs_place_is_one_line_not_a_hang(tmp_path, name):
    # Before: `logs 9` opened the FIFO and waited for a writer forever (killed after 10 s, 0 bytes out).
    fifo = tmp_path / "state" / "logs" / "tasks" / name
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    for args in (["9"], ["9", "-f"]):
        command = [sys.executable, "-m", "tinyscheduler", "--base-path", str(tmp_path), "logs", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == f"tinyscheduler: cannot read {fifo}: is a FIFO, expected a regular file\n"


@pytest.mark.parametrize("name", ["9.1.log", "9/1.log"])
def test_logs_never_prints_the_file_a_link_in_a_logs_place_names(tmp_path, name):
    # Before: `1.log -> /etc/shadow` was printed in full to whoever ran `logs` (root, often).
    secret = tmp_path / "secret"
    secret.write_text("root:$6$not-for-you\n")
    link = tmp_path / "state" / "logs" / "tasks" / name
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    for args in (["9"], ["9", "-f"]):
        command = [sys.executable, "-m", "tinyscheduler", "--base-path", str(tmp_path), "logs", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert (result.returncode, result.stdout) == (1, "")
        assert result.stderr == (f"tinyscheduler: cannot read {link}: is a symbolic link, expected a regular file\n")
