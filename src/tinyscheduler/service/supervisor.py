"""Watching one goose process until it ends: heartbeat, log cap, deadlines, the stop ladder.

One task group per run owns the heartbeat, the exit watch and the stop ladder, so nothing outlives
the supervision and a cancelled run leaves no task behind. The supervisor wakes when the process
exits (pidfd), when a stop is requested, at its next check (at most a second, for the log cap) or
at its next deadline, whichever comes first.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.abc

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.process import ExitWatch, stop_process_group
from tinyscheduler.adapters.runlog import RunLog
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import ProcessEnd, StopCause
from tinyscheduler.service.runtime import Waker

#: The longest the supervisor sleeps between two looks at the log (its cap) and the deadlines.
CHECK_SEC = 1.0


class LeaseKeeper:
    """The lease of one run as it last wrote it; rewrites are atomic and cheap (not fsynced).

    A full disk must not end the supervision of a live process: a failed rewrite is logged and the
    next heartbeat tries again.
    """

    def __init__(self, store: LeaseStore, lease: Lease, log: Any) -> None:
        self.store = store
        self.lease = lease
        self._log = log

    async def create(self) -> None:
        """The first write, durable (it must outlive a power cut): in a thread, the loop goes on."""
        await anyio.to_thread.run_sync(self.store.write, self.lease)

    def update(self, **changes: Any) -> Lease:
        self.lease = self.lease.with_changes(**changes)
        try:
            self.store.write(self.lease, durable=False)
        except OSError as exc:
            self._log.error("lease_write_failed", reason=str(exc))
        return self.lease


@dataclass(frozen=True)
class Limits:
    heartbeat_sec: float
    max_runtime_sec: float
    stop_grace_sec: float
    idle_timeout_sec: float  # 0 = off


class Supervision:
    """From a spawned process to its `ProcessEnd`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        limits: Limits,
        lease: LeaseKeeper,
        run_log: RunLog,
        clock: Callable[[], datetime],
        log: Any,
    ) -> None:
        self.process = process
        self.limits = limits
        self.lease = lease
        self.run_log = run_log
        self.clock = clock
        self._log = log
        self.waker = Waker()
        self.stop_reason: str | None = None
        self._cause = StopCause.NONE
        self._ladder_done: anyio.Event | None = None
        self._stop_signal: str | None = None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.waker.set()

    async def run(self) -> ProcessEnd:
        began = time.monotonic()
        watch = ExitWatch(self.process.pid)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat)
                group.start_soon(self._wake_on_exit, watch)
                await self._watch(group, began)
                duration = time.monotonic() - began
                if self._ladder_done is not None:
                    await self._ladder_done.wait()
                group.cancel_scope.cancel()
        finally:
            watch.close()
        self.run_log.cap()
        return ProcessEnd(
            self.process.returncode,
            duration,
            self._cause,
            self._stop_signal,
            self.run_log.tail(),
            self.stop_reason or "",
        )

    async def _watch(self, group: anyio.abc.TaskGroup, began: float) -> None:
        limits = self.limits
        last_size, last_output = self.run_log.size(), began
        while self.process.poll() is None:
            now = time.monotonic()
            size = self.run_log.size()
            if size != last_size:
                last_output = now
            self.run_log.cap()
            last_size = self.run_log.size()
            if self._ladder_done is None:
                self._cause = self._stop_cause(now - began, now - last_output)
                if self._cause is not StopCause.NONE:
                    self._start_ladder(group)
            timeout = min(limits.heartbeat_sec, CHECK_SEC)
            if self._ladder_done is None:
                timeout = min(timeout, max(0.0, limits.max_runtime_sec - (now - began)))
                if limits.idle_timeout_sec > 0:
                    timeout = min(timeout, max(0.0, limits.idle_timeout_sec - (now - last_output)))
            await self.waker.wait(max(timeout, 0.01))

    def _stop_cause(self, running: float, silent: float) -> StopCause:
        if self.stop_reason is not None:
            return StopCause.REQUEST
        if running >= self.limits.max_runtime_sec:
            return StopCause.MAX_RUNTIME
        if self.limits.idle_timeout_sec > 0 and silent >= self.limits.idle_timeout_sec:
            return StopCause.IDLE
        return StopCause.NONE

    def _start_ladder(self, group: anyio.abc.TaskGroup) -> None:
        pid = self.process.pid
        self._log.warning("run_stopping", pid=pid, attempt=self.lease.lease.attempt, reason=self._cause.value)
        self.lease.update(state=LeaseState.STOPPING)
        done = self._ladder_done = anyio.Event()

        async def ladder() -> None:
            try:
                self._stop_signal = await stop_process_group(
                    pid, lambda: self.process.poll() is not None, self.limits.stop_grace_sec, self._log.bind(pid=pid)
                )
            finally:
                done.set()
                self.waker.set()

        group.start_soon(ladder)

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.limits.heartbeat_sec)
            self.lease.update(heartbeat=self.clock())

    async def _wake_on_exit(self, watch: ExitWatch) -> None:
        # Without a pidfd the watch never fires and the supervisor's checks poll instead.
        if await watch.wait(math.inf):
            self.waker.set()
