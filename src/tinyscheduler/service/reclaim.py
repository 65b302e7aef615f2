"""Requeueing the task of a run that never started (its lease was written, its process never was).

The task is requeued only if it is still `working` and the agent's, and the attempt is not counted.
The lease goes last, and only once TinyTask has answered: while TinyTask is down it stays for the next
check, so no task is ever forgotten.
"""

from __future__ import annotations

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters.tinytask import TaskNotFound, TinyTaskError
from tinyscheduler.core.leases import Lease
from tinyscheduler.service.reporter import requeue_if_ours
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")

NEVER_STARTED = "its process never started (the scheduler stopped before it could)"


class Reclaimer:
    def __init__(self, runtime: Runtime, group: anyio.abc.TaskGroup) -> None:
        self.runtime = runtime
        self.group = group

    def requeue_unstarted(self, lease: Lease) -> None:
        """Requeue the lease's task in the background, unless a run or another reclaim owns it."""
        if lease.task_id in self.runtime.busy:
            return
        self.runtime.reclaiming.add(lease.task_id)
        self.group.start_soon(self._reclaim, lease)

    async def _reclaim(self, lease: Lease) -> None:
        rt = self.runtime
        log.warning("reclaiming", task_id=lease.task_id, agent=lease.agent, reason=NEVER_STARTED)
        # Wake the tick only when the lease went (a slot or a task may be free now): a reclaim that
        # changed nothing would be planned again by the pass it woke, and again, without end.
        removed = False
        try:
            claimed = await rt.claims.claim(lease.task_id, lease.agent, starting=False)
            if not claimed.ok and not claimed.taken:
                log.error("reclaim_waits", task_id=lease.task_id, agent=lease.agent, reason=claimed.reason)
                return
            # Taken over by another host (cluster mode): the task is theirs now, only the lease goes.
            requeued = await self._requeue(lease) if claimed.ok else False
            await anyio.to_thread.run_sync(rt.store.remove, lease.task_id)
            removed = True
            rt.counters.add("leases_reclaimed")
            rt.events.record(
                "reclaimed", task_id=lease.task_id, agent=lease.agent, reason=NEVER_STARTED, requeued=requeued
            )
            log.info("reclaimed", task_id=lease.task_id, agent=lease.agent, reason=NEVER_STARTED, requeued=requeued)
        except TinyTaskError as exc:
            # The lease stays: the next check retries, so the task is never forgotten while TinyTask is down.
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=f"TinyTask: {exc}")
        except OSError as exc:
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=str(exc))
        finally:
            if removed:
                with anyio.CancelScope(shield=True):
                    await rt.claims.release(lease.task_id)
            rt.reclaiming.discard(lease.task_id)
            if removed:
                rt.tick.set()

    async def _requeue(self, lease: Lease) -> bool:
        comment = (
            f"tinyscheduler: run on {self.runtime.host} (attempt {lease.attempt}) never started: {NEVER_STARTED}; "
            "the task is back in the queue, not counted as a failed attempt"
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
