"""When the daemon may tell systemd it is alive: a pure rule over times the daemon passes in."""

from __future__ import annotations


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
