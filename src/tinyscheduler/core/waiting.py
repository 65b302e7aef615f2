"""Why the idle tasks a pass saw did not start, counted by queue: the `tasks waiting` of metrics.

Pure: from the pass's snapshot and plan. A task the plan skipped is waiting because it is tagged
failed (`given_up`), blocked by another task (`blocked`), backing off after a failed attempt
(`backing_off`), or because no slot of its agent or pool was free or available (`no_slot`). A task
already running here, or no longer idle, is not waiting at all.
"""

from __future__ import annotations

from tinyscheduler.core.planner import Plan, Snapshot
from tinyscheduler.core.tasks import Task

REASONS = ("blocked", "no_slot", "backing_off", "given_up")
#: The queue label of a task that has none (legacy servers, tasks assigned directly).
NO_QUEUE = "none"


def wait_reason(task: Task, snapshot: Snapshot, leased: set[int], *, blocking: bool) -> str | None:
    if task.status != "idle" or task.id in leased:
        return None
    if task.failed_for_good:
        return "given_up"
    if blocking and task.is_currently_blocked:
        return "blocked"
    not_before = snapshot.not_before.get(task.id)
    if not_before is not None and not_before > snapshot.now:
        return "backing_off"
    return "no_slot"


def waiting(snapshot: Snapshot, plan: Plan, *, blocking: bool) -> dict[str, dict[str, int]]:
    """queue -> reason -> how many tasks, for every task the plan skipped."""
    fetched = (*snapshot.queue_tasks.values(), *snapshot.agent_tasks.values())
    tasks = {task.id: task for batch in fetched for task in batch}
    leased = {lease.task_id for lease in snapshot.leases} | set(snapshot.supervised) | set(snapshot.in_flight)
    counts: dict[str, dict[str, int]] = {}
    for task_id in {skip.task_id for skip in plan.skips}:
        task = tasks.get(task_id)
        reason = wait_reason(task, snapshot, leased, blocking=blocking) if task is not None else None
        if task is not None and reason is not None:
            queue = counts.setdefault(task.queue_name or NO_QUEUE, {})
            queue[reason] = queue.get(reason, 0) + 1
    return counts
