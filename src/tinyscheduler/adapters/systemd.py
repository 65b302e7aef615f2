"""systemd integration: sd_notify messages, the watchdog interval and the watchdog gate.

Sending goes through the `sdnotify` package; this module adds what the daemon needs on top:
the address comes from an environ we are given (tests pass their own), a failed send is logged
once and never raised, and the messages the daemon sends have names. `WatchdogGate` is the pure
rule for "is it safe to ping the watchdog now", driven by times the daemon passes in.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import sdnotify
import structlog

log = structlog.get_logger("tinyscheduler.systemd")

#: Variables systemd hands to the service itself; a child that inherits them could ping the
#: watchdog or report readiness on our behalf (NotifyAccess=all) or claim our sockets.
_SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_SERVICE_ONLY_PREFIX = "LISTEN_"


class _Sender(sdnotify.SystemdNotifier):
    """sdnotify's sender connected to a given address.

    `SystemdNotifier.__init__` reads os.environ itself and swallows every error; we connect to
    the address from the environ we were given and keep its `notify()` with errors raised to us.
    """

    def __init__(self, address: str) -> None:
        self.debug = True
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        # A leading "@" names a socket in the abstract namespace (sd_notify(3)).
        self.socket.connect("\0" + address[1:] if address.startswith("@") else address)


class Notifier:
    """Sends sd_notify(3) messages; does nothing when not started by systemd."""

    def __init__(self, address: str | None) -> None:
        self._address = address
        self._sender: _Sender | None = None
        self._failed = False
        if address:
            try:
                self._sender = _Sender(address)
            except OSError as exc:
                self._fail(exc)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        return cls(environ.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """True when systemd asked for notifications and the socket could be connected."""
        return self._sender is not None

    def ready(self) -> None:
        self._send("READY=1")

    def status(self, text: str) -> None:
        # One assignment per line in the protocol, so a newline would start a new one; sdnotify
        # encodes as Latin-1 while systemd drops STATUS that is not UTF-8, so keep to ASCII.
        line = " ".join(text.split()).encode("ascii", "replace").decode("ascii")
        self._send(f"STATUS={line}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def reloading(self) -> None:
        # Type=notify-reload needs both fields in one datagram to match the reload to its request.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for `seconds` more before systemd's start/stop timeout fires (from now)."""
        self._send(f"EXTEND_TIMEOUT_USEC={max(0, round(seconds * 1_000_000))}")

    def _send(self, message: str) -> None:
        if self._sender is None:
            return
        try:
            self._sender.notify(message)
        except (OSError, UnicodeError) as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        # Once: when the socket is gone every later message fails the same way.
        if not self._failed:
            self._failed = True
            log.warning("sd_notify_failed", socket=self._address, error=str(exc))


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when not asked for."""
    pid = environ.get("WATCHDOG_PID")
    if pid and pid.strip() != str(os.getpid()):
        return None  # meant for another process (we were exec'd by a wrapper or inherited it)
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2 / 1_000_000 if usec > 0 else None


def scrubbed_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` without the variables systemd meant for this service alone."""
    return {
        key: value
        for key, value in environ.items()
        if key not in _SERVICE_ONLY and not key.startswith(_SERVICE_ONLY_PREFIX)
    }


class WatchdogGate:
    """Whether the daemon is healthy enough to ping the watchdog; pure, times are passed in.

    Unhealthy when a pass has been running longer than `pass_timeout`, or, with `loop_timeout`
    set, when no pass is running and the tick loop has not started or ended one for longer than
    that. Before its first report the loop cannot be late. How a pass ended
    does not matter: a pass that failed because TinyTask is down still ended, and a restart
    would not bring TinyTask back.
    """

    def __init__(self, pass_timeout: float, loop_timeout: float | None = None) -> None:
        self._pass_timeout = pass_timeout
        self._loop_timeout = loop_timeout
        self._last_report: float | None = None
        self._pass_started: float | None = None

    def pass_started(self, now: float) -> None:
        self._pass_started = now
        self._last_report = now

    def pass_finished(self, now: float) -> None:
        self._pass_started = None
        self._last_report = now

    def healthy(self, now: float) -> bool:
        if self._pass_started is not None:
            return now - self._pass_started <= self._pass_timeout
        if self._loop_timeout is None or self._last_report is None:
            return True
        return now - self._last_report <= self._loop_timeout


# The daemon passes the six values positionally today; keyword-only once service/ is split.
def status_line(  # noqa: PLR0917
    busy: int,
    total: int,
    queued: int,
    blocked: int,
    last_pass_seconds: float,
    error: str | None,
) -> str:
    """The STATUS= text: `3/8 slots busy, 12 queued, 1 blocked, last pass 0.14 s ok`.

    With an error the pass's duration says nothing useful, so the error takes its place.
    """
    counts = f"{busy}/{total} slots busy, {queued} queued, {blocked} blocked"
    if error is not None:
        return f"{counts}, last pass failed: {error}"
    return f"{counts}, last pass {last_pass_seconds:.2f} s ok"
