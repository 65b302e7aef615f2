"""Reclaiming a lease whose run is not ours to keep: stop what is left of it, requeue, remove.

A lease is reclaimed when its process is gone (requeue), or alive but not ours to keep (owned by a
previous instance, over its maximum runtime, its heartbeat stopped: stop, then requeue). The task is
requeued only if it is still `working` and the agent's. The lease goes last, and only once TinyTask
has answered: while TinyTask is down it stays for the next check, so no task is ever forgotten.
"""

from __future__ import annotations

import functools
import os

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters.process import stop_process_group
from tinyscheduler.adapters.procfs import probe, processes_tagged, verified_group
from tinyscheduler.adapters.tinytask import TaskNotFound, TinyTaskError
from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.planner import LeaseDecision, LeaseVerdict
from tinyscheduler.service.reporter import requeue_if_ours
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")


def _gone(lease: Lease, boot_id: str | None) -> bool:
    return probe(lease, boot_id) is not Liveness.ALIVE


class Reclaimer:
    def __init__(self, runtime: Runtime, group: anyio.abc.TaskGroup) -> None:
        self.runtime = runtime
        self.group = group

    def start(self, decision: LeaseDecision, lease: Lease) -> None:
        """Reclaim `lease` in the background, unless a run or another reclaim owns its task."""
        if decision.task_id in self.runtime.busy:
            return
        self.runtime.reclaiming.add(decision.task_id)
        self.group.start_soon(self._reclaim, lease, decision)

    async def _reclaim(self, lease: Lease, decision: LeaseDecision) -> None:
        rt = self.runtime
        log.warning(
            "reclaiming",
            task_id=lease.task_id,
            agent=lease.agent,
            pid=lease.pid,
            verdict=decision.verdict.value,
            reason=decision.reason,
        )
        # Wake the tick only when the lease went (a slot or a task may be free now): a reclaim that
        # changed nothing would be planned again by the pass it woke, and again, without end.
        removed = False
        try:
            if decision.verdict is LeaseVerdict.STOP:
                if not await self._stop(lease):
                    return
            elif lease.pid is None:
                await self._stop_unrecorded_runs(lease)
            requeued = await self._requeue(lease, decision.reason)
            await anyio.to_thread.run_sync(rt.store.remove, lease.task_id)
            removed = True
            rt.counters.add("leases_reclaimed")
            rt.events.record(
                "reclaimed",
                task_id=lease.task_id,
                agent=lease.agent,
                pid=lease.pid,
                reason=decision.reason,
                requeued=requeued,
            )
            log.info("reclaimed", task_id=lease.task_id, agent=lease.agent, reason=decision.reason, requeued=requeued)
        except TinyTaskError as exc:
            # The lease stays: the next check retries, so the task is never forgotten while TinyTask is down.
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=f"TinyTask: {exc}")
        except OSError as exc:
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=str(exc))
        finally:
            rt.reclaiming.discard(lease.task_id)
            if removed:
                rt.tick.set()

    async def _stop(self, lease: Lease) -> bool:
        """Stop the lease's live process through the ladder; False when it may not be signalled."""
        rt = self.runtime
        group = verified_group(lease, rt.boot_id)
        if group is None:
            # An original-schema lease cannot prove the PID is still its process, and a pgid that is
            # not the process's own group is not ours to signal: wait for the process to end instead.
            log.warning(
                "reclaim_waiting",
                task_id=lease.task_id,
                pid=lease.pid,
                reason="cannot verify the lease's process and its group; not signalling it",
            )
            return False
        rt.store.write(lease.with_changes(state=LeaseState.STOPPING), durable=False)
        signal_used = await stop_process_group(
            group,
            functools.partial(_gone, lease, rt.boot_id),
            rt.config.settings.stop_grace_sec,
            log.bind(task_id=lease.task_id, agent=lease.agent, pid=lease.pid),
        )
        log.info("reclaim_stopped", task_id=lease.task_id, pid=lease.pid, signal=signal_used)
        return True

    async def _requeue(self, lease: Lease, reason: str) -> bool:
        comment = (
            f"tinyscheduler: run on {self.runtime.host} (pid {lease.pid}, attempt {lease.attempt}) was reclaimed: "
            f"{reason}; the task is back in the queue"
        )
        try:
            return await requeue_if_ours(await self.runtime.connection.client(), lease.task_id, lease.agent, comment)
        except TaskNotFound:
            # Deleted (or archived) meanwhile: nothing left to requeue, and the lease would
            # otherwise be retried, and refused, forever.
            log.warning(
                "reclaim_task_gone",
                task_id=lease.task_id,
                agent=lease.agent,
                reason="the task no longer exists in TinyTask; removing its lease",
            )
            return False

    async def _stop_unrecorded_runs(self, lease: Lease) -> None:
        """Stop a run whose pid never reached its lease (the scheduler died right after spawning it).

        Requeueing without this could start a second run of the task beside the orphan.
        """
        rt = self.runtime
        path = rt.store.path(lease.task_id)
        for pid, ticks in await anyio.to_thread.run_sync(processes_tagged, path):
            found = lease.with_changes(pid=pid, start_ticks=ticks, boot_id=rt.boot_id)
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            log.warning(
                "orphan_found",
                task_id=lease.task_id,
                agent=lease.agent,
                pid=pid,
                reason="a run whose pid was never written to its lease; stopping it before requeueing",
            )
            await stop_process_group(
                group,
                functools.partial(_gone, found, rt.boot_id),
                rt.config.settings.stop_grace_sec,
                log.bind(task_id=lease.task_id, agent=lease.agent, pid=pid),
            )
