"""What the scheduler decides around one run, from plain data: may the task start, what TinyTask is
told when the run ends, and when the history of a task starts afresh.

The planner and the run share `task_refusal`, so a dry run, a pass and a claim word the same reason
the same way. Nothing here reads a clock, a file or the network: the caller passes what it knows.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from tinyscheduler.core.attempts import AttemptRecord
from tinyscheduler.core.outcomes import Outcome, RunVerdict, StopCause
from tinyscheduler.core.tasks import FAILED_TAG, Task
from tinyscheduler.core.text import iso


def task_refusal(task: Task, *, blocking: bool, not_before: datetime | None, now: datetime) -> str | None:
    """Why `task` may not start now, or None: its status, the failed tag, a blocker, the backoff."""
    if task.status != "idle":
        return f"status is {task.status}"
    if task.failed_for_good:
        return f"tagged {FAILED_TAG}; remove the tag to retry"
    if blocking and task.is_currently_blocked:
        return f"blocked by task {task.blocked_by_task_id}"
    if not_before is not None and not_before > now:
        return f"retry backs off until {iso(not_before)}"
    return None


def claim_refusal(
    task: Task, agent: str, record: AttemptRecord, *, blocking: bool, now: datetime, assigning: bool = False
) -> str | None:
    """Why `agent` may not claim `task` now (the task as last listed or read), or None.

    `assigning`: the plan gives the agent an unassigned queue task, which must still be unassigned."""
    owner = None if assigning else agent
    if task.assigned_to != owner:
        wanted = "no one" if assigning else agent
        return f"assigned to {task.assigned_to or 'no one'}, not {wanted}"
    return task_refusal(task, blocking=blocking, not_before=record.not_before, now=now)


def claim_fields(agent: str) -> dict[str, Any]:
    """The one update that claims a task: assigned to the agent (again, for a task it already has,
    so that a reassignment in between shows in the reply) and working."""
    return {"assigned_to": agent, "status": "working"}


def claim_collision(listed: Task, claimed: Task, agent: str) -> str | None:
    """Whether another writer assigned the task between our list and our claim (or None).

    TinyTask has no atomic claim, but it keeps `previous_assigned_to`: the assignee a change of
    assignee replaced. So the reply to our claim shows who held the task the instant before it:
    the assignee we listed when the claim changes it, or the listed `previous_assigned_to` when
    the task was already the agent's and the claim changes nothing of it. Anything else means our
    write replaced someone else's, who wins: the first writer keeps the task.
    """
    expected = listed.assigned_to if listed.assigned_to != agent else listed.previous_assigned_to
    if claimed.previous_assigned_to == expected:
        return None
    return f"assigned to {claimed.previous_assigned_to or 'no one'} by another writer after it was listed"


def yield_fields(claimed: Task) -> dict[str, Any]:
    """What gives a collided claim back: the assignee our write replaced, and idle (its owner's
    scheduler then reports a success it holds at its next claim, or requeues a failure)."""
    return {"assigned_to": claimed.previous_assigned_to, "status": "idle"}


def history_reset(task: Task, record: AttemptRecord) -> bool:
    """Given up on, yet no longer tagged: a person removed the tag to grant a fresh budget."""
    return record.gave_up and not task.failed_for_good


def is_ours(task: Task, agent: str) -> bool:
    """Still the state our run left it in: working, and assigned to the agent that ran it."""
    return task.status == "working" and task.assigned_to == agent


class Intent(enum.StrEnum):
    """What a finished run asks of TinyTask, before anyone has looked at the task again."""

    #: Succeeded: complete the task.
    COMPLETE = "complete"
    #: Stopped on request (shutdown, an operator): back to idle, not counted as a failed attempt.
    REQUEUE = "requeue"
    #: Failed in any other way, or stopped by an operator who counts it (`cancel --fail`): back to
    #: idle as a counted attempt (tagged once the budget is spent).
    FAIL = "fail"


def report_intent(verdict: RunVerdict, stopped_by: StopCause) -> Intent:
    if verdict.outcome is Outcome.SUCCEEDED:
        return Intent.COMPLETE
    if stopped_by is StopCause.REQUEST:
        return Intent.REQUEUE
    return Intent.FAIL


def intent_fields(intent: Intent, task: Task, record: AttemptRecord | None) -> dict[str, Any]:
    """The update that carries out `intent` on `task` (as just read); `record` after a failure."""
    if intent is Intent.COMPLETE:
        return {"status": "complete"}
    if intent is Intent.FAIL and record is not None and record.gave_up:
        return {"status": "idle", "tags": [*(t for t in task.tags if t != FAILED_TAG), FAILED_TAG]}
    return {"status": "idle"}


class LeftAlone(enum.StrEnum):
    """Why a run's end was not written to a task that is no longer ours, and what becomes of its history."""

    #: Idle and still the agent's (our own update whose reply was lost, the recovery, a person): the
    #: history (the failure just counted, its backoff, the attempt budget) still applies.
    REQUEUED = "requeued"
    #: Same, after a success: the success stays held and completes the task at its next claim.
    SUCCESS_HELD = "success_held"
    #: Completed, transferred or reassigned by someone else: their word stands; forget our history.
    TAKEN_OVER = "taken_over"


def left_alone(found: Task | None, agent: str, *, succeeded: bool) -> LeftAlone:
    requeued = found is not None and found.status == "idle" and found.assigned_to == agent
    if not requeued:
        return LeftAlone.TAKEN_OVER
    return LeftAlone.SUCCESS_HELD if succeeded else LeftAlone.REQUEUED
