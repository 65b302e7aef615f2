"""`tinyscheduler logs` against a real daemon subprocess and the fake TinyTask."""
from __future__ import annotations

import io
import shlex
import subprocess
import sys
from collections.abc import Iterator

import pytest

from harness import DaemonProcess, Workspace, wait_for
from tinyscheduler.tasklogs import copy_new


@pytest.fixture
def daemon(workspace: Workspace) -> Iterator[DaemonProcess]:
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.2})
    process = DaemonProcess(workspace, "run", "--daemon").start()
    yield process
    process.kill()


def logs(workspace: Workspace, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tinyscheduler", "logs", *args], cwd=workspace.base,
                          env=workspace.daemon_env(), capture_output=True, text=True, timeout=timeout)


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
    assert result.stderr.strip() == (f"tinyscheduler: no run log for task 4242 in "
                                     f"{workspace.base / 'state' / 'logs' / 'tasks' / '4242'}")


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
