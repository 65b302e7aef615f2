"""The daemon prunes its own state: run logs, quarantined lease files, leftover temporary files and the
attempt records of tasks no longer tried, by age and total size (TINYSCHEDULER_STATE_KEEP_DAYS,
TINYSCHEDULER_STATE_MAX_BYTES).

A task of the scheduler's task group, off the pass path: a minute after the start, then every hour.
The disk walk and the unlinks run in a worker thread; the choice is `core.retention`'s. The runs in
flight (supervised, being reclaimed, or with a lease file) keep their logs whatever their age.
"""

from __future__ import annotations

from datetime import datetime

import anyio
import anyio.to_thread
import structlog

from tinyscheduler.adapters.retention import Places, Removed, leased_tasks, places_of, remove, scan
from tinyscheduler.core.retention import Limits, choose
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.retention")

FIRST_PRUNE_SEC = 60.0
PRUNE_EVERY_SEC = 3600.0


def prune_files(places: Places, busy: frozenset[int], now: datetime, limits: Limits) -> Removed:
    """One prune of the files (blocking: for a worker thread). The lease folder is read here, just
    before the choice, so a run started since `busy` was taken keeps its log too."""
    in_flight = set(busy) | leased_tasks(places.running_dir)
    chosen = choose(scan(places), in_flight=in_flight, now=now, limits=limits)
    return remove(chosen, places, in_flight)


class Pruner:
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt

    async def loop(self) -> None:
        await anyio.sleep(FIRST_PRUNE_SEC)
        while not self.rt.stopping:
            await self.prune()
            await anyio.sleep(PRUNE_EVERY_SEC)

    async def prune(self) -> Removed:
        rt = self.rt
        s = rt.config.settings
        now = rt.clock()
        limits = Limits(s.state_keep_days, s.state_max_bytes)
        try:
            removed = await anyio.to_thread.run_sync(prune_files, places_of(s), rt.busy, now, limits)
        except OSError as exc:
            # A folder that cannot be read: said, and tried again at the next prune.
            log.warning("prune_failed", path=str(exc.filename or ""), reason=exc.strerror or str(exc))
            return Removed()
        forgotten = rt.attempts.forget_stale(now, s.state_keep_days, busy=rt.busy)
        if removed.files or removed.folders or forgotten:
            log.info(
                "pruned",
                files=removed.files,
                bytes=removed.bytes,
                task_folders=removed.folders,
                kinds=removed.by_kind,
                attempt_records=len(forgotten),
            )
        for error in removed.errors[:5]:
            log.warning("prune_failed", reason=error)
        return removed
