"""Pinging systemd's watchdog, only while passes keep finishing in time (core.watchdog decides)."""

from __future__ import annotations

import time

import anyio
import structlog

from tinyscheduler.adapters.systemd import watchdog_interval
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")


async def ping_watchdog(runtime: Runtime, gate: WatchdogGate) -> None:
    interval = watchdog_interval(runtime.environ)
    if interval is None:
        return
    while True:
        if gate.healthy(time.monotonic()):
            runtime.notifier.watchdog()
        else:
            log.error("watchdog_withheld", reason="a pass is stuck beyond its timeout; systemd will restart us")
        await anyio.sleep(interval)
