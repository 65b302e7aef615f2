"""Operator control end to end: the real daemon as a subprocess, the fake TinyTask over HTTP, the
stand-in goose as real processes, and `tinyscheduler pause|resume|cancel|drain` as real commands
talking to the daemon's control socket (or, with no daemon, to state/pauses.json)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.adapters.controlsocket import user_name

from harness import DaemonProcess, NotifyListener, Workspace, wait_for

ME = user_name(os.geteuid())
LOOP_SEC = 1.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


@pytest.fixture
def start(workspace: Workspace, listener: NotifyListener, daemons: list[DaemonProcess]) -> Any:
    def start_daemon(**env: str) -> DaemonProcess:
        daemon = DaemonProcess(
            workspace, "run", "--daemon", env=workspace.daemon_env(NOTIFY_SOCKET=str(listener.path), **env)
        ).start()
        daemons.append(daemon)
        wait_for((workspace.base / "state" / "control.sock").exists, what="the control socket")
        return daemon

    return start_daemon


def starts_of(workspace: Workspace, task_id: int) -> list[float]:
    return [r["t"] for r in workspace.records() if r["event"] == "start" and r["task_id"] == task_id]


def passes_since(listener: NotifyListener, since: float) -> int:
    """STATUS= messages (one per pass) received after `since` (time.monotonic())."""
    with listener._lock:
        return sum(1 for at, text in listener.messages if at > since and text.startswith("STATUS="))


def events(workspace: Workspace) -> list[dict[str, Any]]:
    found = []
    for path in sorted((workspace.base / "state" / "logs").glob("events_*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return [event for event in found if event["event"] == "control"]


def test_a_paused_agent_starts_nothing_while_another_works_and_resume_starts_it_within_one_pass(
    fake, workspace, listener, start
):
    workspace.write_registry([("dev-a", "dev", 1), ("qa-a", "qa", 1)])
    for agent in ("dev-a", "qa-a"):
        workspace.write_recipe(agent, {"mode": "succeed", "seconds": 0.1})
    start()
    paused = workspace.cli("pause", "--agent", "dev-a", "--reason", "provider outage")
    assert (paused.returncode, paused.stderr) == (0, "")
    assert paused.stdout.startswith(f"agent dev-a paused by {ME} since ") and "provider outage" in paused.stdout
    dev = fake.create_task("dev work", queue_name="dev")["id"]
    qa = [fake.create_task(f"qa work {i}", queue_name="qa")["id"] for i in range(2)]

    wait_for(lambda: all(fake.task(t)["status"] == "complete" for t in qa), what="the other agent's tasks")
    quiet_from = time.monotonic()
    wait_for(
        lambda: time.monotonic() - quiet_from >= 2 * LOOP_SEC and passes_since(listener, quiet_from) >= 2,
        what="two loop intervals and two passes",
    )
    assert starts_of(workspace, dev) == [] and fake.task(dev)["assigned_to"] is None
    assert listener.statuses()[-1].startswith("paused: agent dev-a; 0/2 slots busy, 1 queued")
    dry = workspace.cli("run", "--dry-run", "--json")
    [skip] = [s for s in json.loads(dry.stdout)["skips"] if s["task_id"] == dev]
    assert skip["reason"].startswith(f"no agent of pool dev available: agent dev-a paused by {ME} since ")

    resumed = workspace.cli("resume", "--agent", "dev-a")
    resumed_at = time.time()
    assert resumed.returncode == 0 and resumed.stdout.startswith("resumed agent dev-a (agent dev-a paused by ")
    [started] = wait_for(lambda: starts_of(workspace, dev), what="the resumed agent's start")
    # The resume wakes a pass at once: goose starts within one loop interval (the stand-in's own
    # start-up included), not at the next tick or later.
    assert started - resumed_at < LOOP_SEC


def test_a_pause_survives_a_daemon_restart_and_shows_in_status(fake, workspace, listener, start):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1})
    first = start()
    assert workspace.cli("pause", "--queue", "dev", "--reason", "migration").returncode == 0
    first.signal(signal.SIGTERM)
    assert first.wait() == 0
    assert not (workspace.base / "state" / "control.sock").exists(), "the socket goes with the daemon"

    start()
    task = fake.create_task("after the restart", queue_name="dev")["id"]
    since = time.monotonic()
    wait_for(lambda: passes_since(listener, since) >= 2, what="two passes of the new daemon")
    assert starts_of(workspace, task) == []
    status = workspace.cli("status")
    assert f"  - queue dev paused by {ME} since " in status.stdout and "migration" in status.stdout
    assert status.returncode == 0, "a pause is not a problem"
    [pause] = json.loads(workspace.cli("status", "--json").stdout)["pauses"]
    assert (pause["scope"], pause["target"], pause["user"], pause["reason"]) == ("queue", "dev", ME, "migration")

    assert workspace.cli("resume", "--queue", "dev").returncode == 0
    wait_for(lambda: fake.task(task)["status"] == "complete", what="the task once resumed")


def test_cancelling_a_hanging_run_requeues_it_with_a_comment_within_the_stop_grace_and_counts_no_attempt(
    fake, workspace, start
):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    start(TINYSCHEDULER_STOP_GRACE_SEC="5")
    task = fake.create_task("hangs", queue_name="dev")["id"]
    wait_for(workspace.running_pids, what="the run")

    command = subprocess.Popen(
        [sys.executable, "-m", "tinyscheduler", "cancel", str(task), "--reason", "stuck in a loop"],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = command.communicate(timeout=60)
    answered = time.monotonic()
    assert (command.returncode, err) == (0, "")
    assert out.strip().endswith("stopping its run; the task is requeued, not counted as a failed attempt")
    [comment] = wait_for(lambda: [c["content"] for c in fake.comments(task)], what="the requeue comment")
    assert time.monotonic() - answered < 5, "stopped by the ladder's first step, within the stop grace"
    assert comment.startswith(f"tinyscheduler: run stopped (cancelled by {ME}: stuck in a loop); task requeued, ")
    assert "not counted as a failed attempt" in comment

    # Requeued, the task runs again at once: as attempt 1, nothing was counted.
    wait_for(lambda: len(starts_of(workspace, task)) == 2, what="the task started again")
    attempts = workspace.base / "state" / "attempts.json"
    assert not attempts.exists() or str(task) not in json.loads(attempts.read_text())["tasks"]
    [lease] = workspace.leases()
    assert json.loads(lease.read_text())["attempt"] == 1
    [event] = events(workspace)
    assert {k: event[k] for k in ("action", "target", "reason", "user", "pid", "fail")} == {
        "action": "cancel",
        "target": f"task {task}",
        "reason": "stuck in a loop",
        "user": ME,
        "pid": command.pid,
        "fail": False,
    }


def test_a_drain_with_runs_in_flight_reports_idle_once_they_end_and_starts_nothing_meanwhile(
    fake, workspace, listener, start
):
    workspace.write_registry([("dev-a", "dev", 2)])
    # Runs that outlast the CLI's start (up to 1.7 s seen under CI's load), so both are in flight at the drain.
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 5})
    daemon = start()
    tasks = [fake.create_task(f"t{i}", queue_name="dev")["id"] for i in range(4)]
    wait_for(lambda: len(workspace.running_pids()) == 2, what="two runs in flight")

    drain = workspace.cli("drain", "--wait", "--timeout", "30", "--reason", "kernel update")

    assert (drain.returncode, drain.stderr) == (0, "")
    lines = drain.stdout.splitlines()
    assert lines[0].startswith(f"host draining by {ME} since ") and lines[0].endswith(": kernel update")
    assert lines[1] == "draining: 2 runs left"
    assert lines[-1] == "idle: no run in flight; the daemon stays up and starts nothing until `resume --host`"
    assert workspace.leases() == []
    assert sum(len(starts_of(workspace, t)) for t in tasks) == 2, "no new run started while draining"
    statuses = listener.statuses()
    assert any(s.startswith("draining: 2 runs left; ") for s in statuses)
    wait_for(lambda: listener.statuses()[-1].startswith("draining: 0 runs left, idle; "), what="STATUS says idle")
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon stays up"

    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.2})  # nothing left to outlast
    assert workspace.cli("resume", "--host").returncode == 0
    wait_for(lambda: all(fake.task(t)["status"] == "complete" for t in tasks), what="the rest once resumed")


def test_without_a_daemon_pause_resume_and_drain_change_the_state_and_cancel_exits_3(workspace):
    workspace.write_registry([("dev-a", "dev", 1)])
    (workspace.base / "state").mkdir()

    paused = workspace.cli("pause", "--agent", "dev-a", "--reason", "upgrade")
    unknown = workspace.cli("pause", "--agent", "nobody")
    again = workspace.cli("pause", "--agent", "dev-a")
    drained = workspace.cli("drain")
    cancelled = workspace.cli("cancel", "7")
    status = workspace.cli("status")
    resumed = workspace.cli("resume", "--host")
    not_paused = workspace.cli("resume", "--queue", "dev")

    pauses_file = workspace.base / "state" / "pauses.json"
    assert paused.returncode == 0
    assert paused.stdout.startswith(f"no daemon running: agent dev-a paused by {ME} since ")
    assert paused.stdout.endswith(f": upgrade; recorded in {pauses_file}, applied when the daemon starts\n")
    assert (unknown.returncode, unknown.stderr) == (
        1,
        "tinyscheduler: refused: unknown agent 'nobody' (known: dev-a)\n",
    )
    assert again.returncode == 1 and again.stderr.startswith("tinyscheduler: refused: already paused: agent dev-a")
    assert drained.returncode == 0 and drained.stdout.startswith(f"no daemon running: host draining by {ME} since ")
    assert (cancelled.returncode, cancelled.stdout) == (3, "")
    assert cancelled.stderr.startswith("tinyscheduler: no daemon running (") and cancelled.stderr.count("\n") == 1
    assert "Draining:  0 runs left (host draining by" in status.stdout and "  - agent dev-a paused by" in status.stdout
    assert resumed.returncode == 0 and resumed.stdout.startswith("no daemon running: resumed host (host draining by ")
    assert (not_paused.returncode, not_paused.stderr) == (1, "tinyscheduler: refused: queue dev is not paused\n")
    assert [p["target"] for p in json.loads(pauses_file.read_text())["pauses"]] == ["dev-a"]
    assert [(e["action"], e["target"], e["user"], e["daemon"]) for e in events(workspace)] == [
        ("pause", "agent dev-a", ME, False),
        ("drain", "host", ME, False),
        ("resume", "host", ME, False),
    ]


def test_bad_arguments_exit_2_with_one_line(workspace):
    (workspace.base / "state").mkdir()
    for args, message in [
        (["pause"], "one of the arguments --agent --queue --host is required"),
        (["pause", "--agent", "a", "--host"], "not allowed with argument"),
        (["pause", "--agent", "../etc"], "error: target: '../etc' is not a agent name"),
        (["pause", "--host", "--reason", "two\nlines"], "error: reason: control characters"),
        (["cancel", "x"], "invalid int value"),
        (["--base-path", str(workspace.base / "nowhere"), "drain"], "state folder"),
    ]:
        result = workspace.cli(*args)
        assert result.returncode == 2, (args, result)
        assert message in result.stderr and result.stderr.count("\n") == 1, (args, result.stderr)


# --- the socket under abuse ------------------------------------------------------------------------


def connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{folder}/{path.name}")
    finally:
        os.close(folder)
    sock.settimeout(15)
    return sock


def exchange(path: Path, payload: bytes) -> str:
    """Send `payload` (of any kind), return what the daemon answers (nothing if it hung up)."""
    with connect(path) as sock:
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # it stopped reading a huge request and hung up: its reply may still be there
        try:
            return sock.recv(65536).decode(errors="replace")
        except OSError:
            return ""


def test_socket_abuse_never_blocks_the_daemon(fake, workspace, listener, start):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1})
    daemon = start()
    path = workspace.base / "state" / "control.sock"

    huge = b"x" * (5 * 1024 * 1024)
    garbage = {
        os.urandom(9000): "malformed request: not one JSON object on a line",
        huge: "request larger than 4096 bytes",
        b"[" * 4000 + b"\n": "malformed request: not one JSON object on a line (RecursionError)",
        b'{"action": "cancel", "task_id": "1; rm -rf /"}\n': "malformed request: task_id: '1; rm -rf /' is not",
        b"\x00\xff" * 100: "malformed request: not one JSON object on a line (UnicodeDecodeError)",
        b"": "malformed request: not one JSON object on a line (JSONDecodeError)",
    }
    for payload, message in garbage.items():
        answer = exchange(path, payload)
        if payload is huge and not answer:
            continue  # left unread past the limit, it reset the connection: the refusal may be lost
        reply = json.loads(answer)
        assert reply["ok"] is False and reply["message"].startswith(message), (payload[:20], reply)

    silent = [connect(path) for _ in range(24)]  # half-open: never a byte; 16 served, 8 waiting
    try:
        since = time.monotonic()
        replies: list[str] = []
        threads = [
            threading.Thread(target=lambda p=payload: replies.append(exchange(path, p))) for payload in [*garbage] * 10
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        task = fake.create_task("during the abuse", queue_name="dev")["id"]
        wait_for(lambda: fake.task(task)["status"] == "complete", what="a run started and ended meanwhile")
        wait_for(lambda: passes_since(listener, since) >= 2, what="passes going on")
        answered = [json.loads(r) for r in replies if r]
        assert len(answered) >= len(threads) - 10 and all(reply["ok"] is False for reply in answered)
        late = silent[0].recv(65536)
        assert json.loads(late) == {"ok": False, "message": "no complete request within 5s"}
    finally:
        for sock in silent:
            sock.close()

    paused = workspace.cli("pause", "--host")
    assert (paused.returncode, paused.stderr) == (0, ""), "still answering"
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "control_connection_failed" not in daemon.output() and "Traceback" not in daemon.output()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to connect as another user")
def test_another_user_is_refused_even_when_the_socket_lets_them_connect(workspace, start):
    workspace.write_registry([("dev-a", "dev", 1)])
    daemon = start()
    path = workspace.base / "state" / "control.sock"

    def as_nobody() -> str:
        """Ask for a drain from a child process that became user nobody (the path stays reachable
        through a descriptor of the folder opened before)."""
        read, write = os.pipe()
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        child = os.fork()
        if child == 0:  # the child reports through the pipe and never returns
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(10)
                    sock.connect(f"/proc/self/fd/{folder}/{path.name}")
                    with contextlib.suppress(BrokenPipeError):  # refused before it reads
                        sock.sendall(b'{"action": "drain"}\n')
                    os.write(write, sock.recv(4096))
            except OSError as exc:
                os.write(write, f"connect: errno {exc.errno}".encode())
            finally:
                os._exit(0)
        os.close(write)
        os.close(folder)
        os.waitpid(child, 0)
        with os.fdopen(read, "rb") as pipe:
            return pipe.read().decode().strip()

    assert as_nobody() == "connect: errno 13", "the socket file is 0600"
    # Mistakes by hand (a folder others may enter, a socket anyone may open): the peer check still holds.
    os.chmod(path.parent, 0o711)
    os.chmod(path, 0o666)
    answer = as_nobody()
    assert answer.startswith("{"), (answer, daemon.output()[-3000:])
    reply = json.loads(answer)
    assert reply == {"ok": False, "message": f"only the scheduler's user ({ME}) may control it"}
    assert json.loads(workspace.cli("status", "--json").stdout)["pauses"] == [], "nothing changed"


def test_a_broken_pause_file_is_a_problem_in_status_and_resume_host_replaces_it(workspace):
    (workspace.base / "state").mkdir()
    pauses_file = workspace.base / "state" / "pauses.json"
    pauses_file.write_text("{oops")

    status = workspace.cli("status")
    resumed = workspace.cli("resume", "--host")

    assert status.returncode == 1
    assert f"  - {pauses_file}: not valid JSON: " in status.stdout and "`resume --host` replaces it" in status.stdout
    assert "  - host paused by tinyscheduler since " in status.stdout, "nothing starts meanwhile"
    assert resumed.returncode == 0 and resumed.stdout.startswith("no daemon running: resumed host (")
    assert json.loads(pauses_file.read_text()) == {"pauses": [], "version": 1}
    after = workspace.cli("status")
    assert (after.returncode, "No problems found." in after.stdout) == (3, True), "no daemon (3), no problem"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the state folder to another user")
def test_only_the_owner_of_the_state_folder_may_control_the_scheduler(workspace):
    state = workspace.base / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)

    result = workspace.cli("pause", "--host")

    assert result.returncode == 1
    assert result.stderr == (
        f"tinyscheduler: refused: only the owner of {state} ({user_name(65534)}) may control the scheduler, "
        f"not {ME} (sudo -u {user_name(65534)} tinyscheduler ...)\n"
    )
    assert not (state / "pauses.json").exists()
