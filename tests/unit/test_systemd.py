"""systemd.py against a real AF_UNIX datagram socket standing in for systemd's notify socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tinyscheduler.adapters.systemd import (
    Notifier,
    watchdog_interval,
)
from tinyscheduler.core.goose import scrubbed_environ
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.statusfile import PassReport, status_line


class NotifySocket:
    """A bound SOCK_DGRAM socket; `messages()` returns every datagram received so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def messages(self) -> list[str]:
        received = []
        while True:
            try:
                received.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return received


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    yield listener
    listener.sock.close()


@pytest.fixture
def notifier(notify_socket: NotifySocket) -> Notifier:
    return Notifier.from_environ({"NOTIFY_SOCKET": str(notify_socket.path)})


def test_each_message_is_one_datagram(notifier: Notifier, notify_socket: NotifySocket) -> None:
    assert notifier.enabled
    notifier.ready()
    notifier.status("3/8 slots busy")
    notifier.watchdog()
    notifier.stopping()
    notifier.extend_timeout(65.5)
    assert notify_socket.messages() == [
        "READY=1",
        "STATUS=3/8 slots busy",
        "WATCHDOG=1",
        "STOPPING=1",
        "EXTEND_TIMEOUT_USEC=65500000",
    ]


def test_reloading_carries_the_monotonic_time_in_the_same_datagram(
    notifier: Notifier, notify_socket: NotifySocket
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [message] = notify_socket.messages()
    first, second = message.split("\n")
    assert first == "RELOADING=1"
    name, _, usec = second.partition("=")
    assert name == "MONOTONIC_USEC"
    assert before <= int(usec) <= after


def test_status_stays_one_ascii_line(notifier: Notifier, notify_socket: NotifySocket) -> None:
    # A newline would smuggle in a second assignment (READY=1 here); non-ASCII is not valid UTF-8
    # once sdnotify encodes it as Latin-1, and systemd would drop the whole STATUS.
    notifier.status("last pass failed: café\nREADY=1")
    assert notify_socket.messages() == ["STATUS=last pass failed: caf? READY=1"]


def test_abstract_namespace_address() -> None:
    name = f"tinyscheduler-test-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    try:
        Notifier.from_environ({"NOTIFY_SOCKET": "@" + name}).ready()
        assert listener.recv(64) == b"READY=1"
    finally:
        listener.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready()
    notifier.status("x")
    notifier.reloading()


def test_a_missing_socket_is_logged_once_and_never_raised(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": str(tmp_path / "absent")})
        notifier.ready()
        notifier.watchdog()
    assert not notifier.enabled
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]


def test_a_socket_that_goes_away_is_logged_once(notify_socket: NotifySocket, notifier: Notifier) -> None:
    notifier.ready()
    notify_socket.sock.close()
    notify_socket.path.unlink()
    with structlog.testing.capture_logs() as logs:
        notifier.watchdog()
        notifier.watchdog()
        notifier.status("still running")
    assert [entry["event"] for entry in logs] == ["sd_notify_failed"]
    assert logs[0]["socket"] == str(notify_socket.path)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "60000000"}, 30.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ) == expected


def test_scrubbed_environ_drops_what_systemd_gave_the_service_only() -> None:
    environ = {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "60000000",
        "WATCHDOG_PID": "42",
        "LISTEN_FDS": "1",
        "LISTEN_PID": "42",
        "LISTEN_FDNAMES": "http",
        "PATH": "/usr/bin",
        "GOOSE_MODE": "auto",
        "JOURNAL_STREAM": "8:123",
    }
    assert scrubbed_environ(environ) == {
        "PATH": "/usr/bin",
        "GOOSE_MODE": "auto",
        "JOURNAL_STREAM": "8:123",
    }
    assert "NOTIFY_SOCKET" in environ  # the input is left alone


# WatchdogGate, table-driven like Buildkite agent's watchdog tests: a script of (time, call)
# steps, then whether the gate lets a ping through at given times.
PASS_TIMEOUT = 10.0
LOOP_TIMEOUT = 30.0


@pytest.mark.parametrize(
    ("steps", "checks"),
    [
        pytest.param([], [(0, True), (1000, True)], id="no report yet: nothing to be late for"),
        pytest.param(
            [(0, "pass_started")],
            [(5, True), (10, True), (10.5, False), (100, False)],
            id="a pass running past its timeout",
        ),
        pytest.param(
            [(0, "pass_started"), (9, "pass_finished")],
            [(20, True), (39, True), (39.5, False)],
            id="finished pass, then the loop goes quiet",
        ),
        pytest.param(
            [(0, "pass_started"), (20, "pass_finished"), (21, "pass_started")],
            [(25, True), (31, True), (31.5, False)],
            id="a slow pass that ended is forgiven; the next one has its own timeout",
        ),
        pytest.param(
            [(0, "pass_started"), (3, "pass_finished"), (40, "pass_started")],
            [(41, True)],
            id="a new pass after a quiet spell counts as a report",
        ),
    ],
)
def test_watchdog_gate(steps: list[tuple[float, str]], checks: list[tuple[float, bool]]) -> None:
    gate = WatchdogGate(pass_timeout=PASS_TIMEOUT, loop_timeout=LOOP_TIMEOUT)
    for now, call in steps:
        getattr(gate, call)(now)
    assert [(now, gate.healthy(now)) for now, _ in checks] == checks


def test_watchdog_gate_without_loop_timeout_only_watches_passes() -> None:
    gate = WatchdogGate(pass_timeout=PASS_TIMEOUT)
    gate.pass_started(0)
    gate.pass_finished(1)
    assert gate.healthy(10_000)
    gate.pass_started(10_000)
    assert not gate.healthy(10_011)


def test_failed_passes_keep_the_watchdog_fed() -> None:
    # TinyTask being down makes every pass fail fast; each still ends, so the gate stays open.
    gate = WatchdogGate(pass_timeout=PASS_TIMEOUT, loop_timeout=LOOP_TIMEOUT)
    for now in range(0, 300, 5):
        gate.pass_started(now)
        gate.pass_finished(now + 0.01)
        assert gate.healthy(now + 4)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((3, 8, 12, 1, 0.1412, None), "3/8 slots busy, 12 queued, 1 blocked, last pass 0.14 s ok"),
        ((0, 0, 0, 0, 2.0, None), "0/0 slots busy, 0 queued, 0 blocked, last pass 2.00 s ok"),
        (
            (2, 8, 5, 0, 30.0, "TinyTask: connection refused"),
            "2/8 slots busy, 5 queued, 0 blocked, last pass failed: TinyTask: connection refused",
        ),
    ],
)
def test_status_line(args: tuple, expected: str) -> None:
    busy, slots, queued, blocked, duration, error = args
    report = PassReport(busy=busy, slots=slots, queued=queued, blocked=blocked, duration_sec=duration, error=error)
    assert status_line(report) == expected
