"""systemd integration: sd_notify messages and the watchdog interval.

Sending goes through the `sdnotify` package; this module adds what the daemon needs on top:
the address comes from an environ we are given (tests pass their own), a failed send is logged
once and never raised, and the messages the daemon sends have names. When to ping the watchdog is
decided in `core.watchdog`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Mapping

import sdnotify
import structlog

log = structlog.get_logger("tinyscheduler.systemd")


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


def own_unit() -> str | None:
    """The systemd service this process runs as, from its cgroup (`.../tinyscheduler.service`)."""
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("0::"):
                    for part in reversed(line[3:].strip().split("/")):
                        if part.endswith(".service"):
                            return part
    except OSError:
        pass
    return None


def restart_in_progress(environ: Mapping[str, str], timeout: float = 5.0) -> bool:
    """Whether systemd is restarting this service (`systemctl restart`, an upgrade) rather than
    stopping it: its job is then of type `restart` while the old instance is being stopped.

    Anything that cannot be told (not a systemd unit, no systemctl, no answer) counts as a stop.
    """
    unit = own_unit()
    if not environ.get("INVOCATION_ID") or unit is None:
        return False
    scope = "--user" if environ.get("MANAGERPID") else "--system"
    try:
        done = subprocess.run(
            ["systemctl", scope, "list-jobs", "--no-legend", "--no-pager", "--full", unit],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.split()[1:3] == [unit, "restart"] for line in done.stdout.splitlines() if line.strip())
