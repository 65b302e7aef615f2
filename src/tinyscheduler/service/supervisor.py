"""Watching one goose process until it ends: heartbeat, output, deadlines, the stop ladder.

The supervisor sleeps on the process's pidfd until it exits, a stop is requested (which cancels the
sleep), or its next deadline (a heartbeat, max runtime, idle timeout) comes. Output is copied by the
event loop's reader callback (runlog.OutputFeed), which wakes for output alone. A stop ladder runs in
a task group opened for it, so it never outlives the supervision; most runs need none, and open no
group (a group's exit costs a turn of the loop). When the process has ended, what it left behind is
killed (`contain`), which closes the last writers of the pipe, and the rest of the output is copied
before the end is classified.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import anyio
import anyio.abc

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.process import ExitWatch, RunProcess, stop_process_group
from tinyscheduler.adapters.runlog import OutputFeed, RunLog, drain
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import ProcessEnd, StopCause

#: Without a pidfd to wake it, how often the supervisor looks whether the process has ended.
POLL_SEC = 1.0
#: How long the output of an ended run may take to arrive once what it left behind is killed.
DRAIN_SEC = 2.0


class LeaseKeeper:
    """The lease of one run as it last wrote it; rewrites are atomic and cheap (not fsynced), and a
    heartbeat only sets the file's mtime (adapters.leasestore).

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

    def beat(self, moment: datetime) -> None:
        """A heartbeat; a lease file removed meanwhile is written again."""
        self.lease = self.lease.with_changes(heartbeat=moment)
        try:
            self.store.touch(self.lease.task_id, moment)
        except FileNotFoundError:
            self.update()
        except OSError as exc:
            self._log.error("lease_write_failed", reason=str(exc))


@dataclass(frozen=True)
class Limits:
    heartbeat_sec: float
    max_runtime_sec: float
    stop_grace_sec: float
    idle_timeout_sec: float  # 0 = off


class Supervision:
    """From a live process to its `ProcessEnd`."""

    def __init__(
        self,
        process: RunProcess,
        *,
        limits: Limits,
        lease: LeaseKeeper,
        run_log: RunLog,
        read_fd: int | None,
        contain: Callable[[], Awaitable[None]],
        clock: Callable[[], datetime],
        log: Any,
        elapsed_sec: float = 0.0,
    ) -> None:
        self.process = process
        self.limits = limits
        self.lease = lease
        self.run_log = run_log
        self.read_fd = read_fd
        self.contain = contain
        self.clock = clock
        self._log = log
        #: How long the process had been running when this supervision began (an adopted run).
        self.elapsed_sec = elapsed_sec
        #: The supervisor's sleep while it lasts; a stop request or the ladder's end cut it short.
        self._nap: anyio.CancelScope | None = None
        self._woken = False
        self.stop_reason: str | None = None
        #: The stop requested counts as a failed attempt (`cancel --fail`).
        self.stop_counted = False
        self._cause = StopCause.NONE
        self._ladder_done: anyio.Event | None = None
        self._stop_signal: str | None = None
        #: A stop found no group provably the run's: the next try (monotonic), at a heartbeat's pace.
        self._retry_stop_at: float | None = None

    def request_stop(self, reason: str, *, counted: bool = False) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_counted = counted
            self._wake()

    async def run(self) -> ProcessEnd:
        began = time.monotonic() - self.elapsed_sec
        self.run_log.last_output = time.monotonic()
        watch = ExitWatch(self.process.pid)
        feed = OutputFeed(self.read_fd, self.run_log) if self.read_fd is not None else None
        try:
            duration = await self._watch(None, began, watch)
            if duration is None:  # a stop must begin: its ladder gets a task group
                async with anyio.create_task_group() as group:
                    duration = await self._watch(group, began, watch)
                    if self._ladder_done is not None:
                        await self._ladder_done.wait()
            assert duration is not None  # with a group, the watch ends only with the process
            # goose's last words are in the pipe now: into the log before anything is killed, so a
            # daemon killed right here leaves them on disk (the keeper dies with what it holds).
            if self.read_fd is not None:
                drain(self.read_fd, self.run_log)
            # What the run left behind holds the pipe open: once it is gone, the output ends.
            await self.contain()
            if feed is not None and not feed.ended.is_set():
                with anyio.move_on_after(DRAIN_SEC):
                    await feed.ended.wait()
        finally:
            if feed is not None:
                feed.close()
            watch.close()
        return ProcessEnd(
            self.process.returncode,
            duration,
            self._cause,
            self._stop_signal,
            self.run_log.tail(),
            self.stop_reason or "",
        )

    async def _watch(self, group: anyio.abc.TaskGroup | None, began: float, watch: ExitWatch) -> float | None:
        """Until the process has ended: its heartbeat, and its deadlines (one wake-up for all). How
        long it ran; None when a stop must begin and there is no `group` to run its ladder in."""
        limits, polling = self.limits, not watch.available
        next_beat = time.monotonic() + limits.heartbeat_sec
        while not self.process.exited():
            now = time.monotonic()
            if now >= next_beat:
                self.lease.beat(self.clock())
                next_beat = now + limits.heartbeat_sec
            silent = now - self.run_log.last_output
            deferred = self._retry_stop_at is not None and now < self._retry_stop_at
            if self._ladder_done is None and not deferred:
                self._cause = self._stop_cause(now - began, silent)
                if self._cause is StopCause.NONE:
                    self._retry_stop_at = None  # output came back: no stop is owed any more
                else:
                    if group is None:
                        return None
                    if not self._start_ladder(group):
                        self._retry_stop_at = now + limits.heartbeat_sec
            timeout = min(POLL_SEC if polling else math.inf, next_beat - now)
            if self._ladder_done is None:
                if self._retry_stop_at is not None:
                    timeout = min(timeout, max(0.0, self._retry_stop_at - now))
                else:
                    timeout = min(timeout, max(0.0, limits.max_runtime_sec - (now - began)))
                    if self._idle_timeout() > 0:
                        timeout = min(timeout, max(0.0, self._idle_timeout() - silent))
            await self._sleep(watch, max(timeout, 0.01))
        return time.monotonic() - began

    async def _sleep(self, watch: ExitWatch, at_most: float) -> None:
        if not self._woken:
            with anyio.move_on_after(at_most) as nap:
                self._nap = nap
                await watch.until_exit()
            self._nap = None
        self._woken = False

    def _wake(self) -> None:
        self._woken = True
        if self._nap is not None:
            self._nap.cancel()

    def _idle_timeout(self) -> float:
        # Without the output pipe (an adopted run whose keeper is gone) silence says nothing.
        return self.limits.idle_timeout_sec if self.read_fd is not None else 0.0

    def _stop_cause(self, running: float, silent: float) -> StopCause:
        if self.stop_reason is not None:
            return StopCause.REQUEST_COUNTED if self.stop_counted else StopCause.REQUEST
        if running >= self.limits.max_runtime_sec:
            return StopCause.MAX_RUNTIME
        if self._idle_timeout() > 0 and silent >= self._idle_timeout():
            return StopCause.IDLE
        return StopCause.NONE

    def _start_ladder(self, group: anyio.abc.TaskGroup) -> bool:
        """Whether the ladder started: a group that cannot be proven to be this run's is never
        signalled (said once; tried again at each heartbeat while the process lives)."""
        pid = self.process.pid
        first_try = self._retry_stop_at is None
        if first_try:
            self._log.warning("run_stopping", pid=pid, attempt=self.lease.lease.attempt, reason=self._cause.value)
        pgid = self.process.group()
        if pgid is None:
            if first_try:
                self._log.error("run_not_signalled", pid=pid, reason="cannot verify the process and its group")
            return False
        self.lease.update(state=LeaseState.STOPPING)
        done = self._ladder_done = anyio.Event()

        async def ladder() -> None:
            try:
                self._stop_signal = await stop_process_group(
                    pgid, self.process.exited, self.limits.stop_grace_sec, self._log.bind(pid=pid)
                )
            finally:
                done.set()
                self._wake()

        group.start_soon(ladder)
        return True
