"""Telling TinyTask how a run ended, exactly once, only while the task is still ours.

Each report re-reads the task and writes only if it is still `working` and assigned to the agent
(agents may complete or hand over their own task while running). What to write comes from
`core.policy`. TinyTask being unreachable is retried with backoff (0.5 s doubling to 30 s) until a
deadline; a stop request (shutdown) ends the retries at once. Before giving up, what was learned is
kept in the attempt book: a failure is counted, a success is held, and the lease is left for the
recovery (see service.run). Only a comment whose reply was lost can be posted twice: TinyTask has no
idempotency keys.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.tinytask import TinyTaskClient, TinyTaskError, TinyTaskRejected
from tinyscheduler.core.attempts import AttemptRecord
from tinyscheduler.core.outcomes import ProcessEnd, RunVerdict, attempt_comment, gave_up_comment, requeue_comment
from tinyscheduler.core.policy import Intent, LeftAlone, intent_fields, is_ours, left_alone, report_intent
from tinyscheduler.core.tasks import FAILED_TAG, Task
from tinyscheduler.core.text import iso

T = TypeVar("T")

#: Never wait longer than this between two attempts to reach TinyTask for a report.
REPORT_RETRY_MAX_SEC = 30.0


class Reported(enum.StrEnum):
    """What TinyTask was told when the run ended."""

    NONE = "none"
    COMPLETED = "completed"
    #: Back to idle: a failed attempt that will be retried, or a run stopped on request.
    REQUEUED = "requeued"
    #: Back to idle with the failed tag: attempts exhausted.
    GAVE_UP = "gave_up"
    #: The task was no longer ours (completed, transferred, reassigned): nothing written.
    LEFT_ALONE = "left_alone"
    #: TinyTask stayed unreachable, or this host cannot prove it still holds the task (cluster
    #: mode, fenced): outcome kept, lease left for the recovery.
    UNREPORTED = "unreported"
    #: Another host holds the task (cluster mode): nothing written, this host is done with it.
    TAKEN_OVER = "taken_over"


class Unreachable(Exception):
    """TinyTask did not answer before the report deadline."""


async def patch_if_ours(
    client: TinyTaskClient, task_id: int, agent: str, fields_for: Callable[[Task], dict[str, Any]]
) -> tuple[bool, Task]:
    """Re-read the task and update it only if it is still ours: (written?, the task as read)."""
    task = await client.get_task(task_id)
    if not is_ours(task, agent):
        return False, task
    await client.update_task(task_id, **fields_for(task))
    return True, task


async def requeue_if_ours(client: TinyTaskClient, task_id: int, agent: str, comment: str | None) -> bool:
    """Set the task idle (with a comment) if it is still working and assigned to `agent`.

    One try; TinyTask errors propagate so the caller (the lease watcher) can retry on its schedule.
    """
    written, _ = await patch_if_ours(client, task_id, agent, lambda _task: {"status": "idle"})
    if written and comment:
        await client.add_comment(task_id, comment)
    return written


class OutcomeReporter:
    """Reports one run's end (or rolls back a start that never happened) with retries."""

    def __init__(
        self,
        client: TinyTaskClient,
        attempts: AttemptBook,
        *,
        task_id: int,
        agent: str,
        attempt: int,
        log_path: str,
        timeout_sec: float,
        stop_requested: anyio.Event,
        now: Callable[[], Any],
        log: Any,
        emit: Callable[..., None],
    ) -> None:
        self.client = client
        self.attempts = attempts
        self.task_id = task_id
        self.agent = agent
        self.attempt = attempt
        self.log_path = log_path
        self.timeout_sec = timeout_sec
        self.stop_requested = stop_requested
        self._now = now
        self._log = log
        self._emit = emit
        self._failure: AttemptRecord | None = None

    async def report(self, verdict: RunVerdict, end: ProcessEnd) -> Reported:
        deadline = time.monotonic() + self.timeout_sec
        intent = report_intent(verdict, end.stopped_by)
        try:
            if intent is Intent.COMPLETE:
                self.attempts.hold_success(self.task_id)  # first, so a crash right now loses nothing
                written, found = await self._patch_if_ours(deadline, lambda task: intent_fields(intent, task, None))
                if not written:
                    return self._left_alone(found, succeeded=True)
                self.attempts.record_success(self.task_id)
                return Reported.COMPLETED  # said by the run's `run_finished` line (report=completed)
            if intent is Intent.REQUEUE:
                written, found = await self._patch_if_ours(deadline, lambda task: intent_fields(intent, task, None))
                if not written:
                    return self._left_alone(found)
                await self._comment(deadline, requeue_comment(end.stop_reason, self.log_path))
                self._emit("requeued", attempt=self.attempt, reason=end.stop_reason)
                return Reported.REQUEUED
            return await self._report_failure(verdict, deadline)
        except Unreachable:
            if intent is Intent.FAIL:
                self._count_failure(verdict)
            self._log.error(
                "outcome_unreported",
                reason="TinyTask unreachable; lease left for the recovery",
                outcome=verdict.outcome.value,
                attempt=self.attempt,
            )
            return Reported.UNREPORTED

    async def _report_failure(self, verdict: RunVerdict, deadline: float) -> Reported:
        def fields(task: Task) -> dict[str, Any]:
            # Counted only once we know the task is still ours.
            return intent_fields(Intent.FAIL, task, self._count_failure(verdict))

        written, found = await self._patch_if_ours(deadline, fields)
        if not written:
            return self._left_alone(found)
        record = self._count_failure(verdict)
        await self._comment(
            deadline, attempt_comment(self.attempt, self.attempts.policy.max_attempts, verdict, self.log_path)
        )
        if not record.gave_up:
            self._log.info(
                "task_requeued",
                reason="retry after backoff",
                attempt=self.attempt,
                outcome=verdict.outcome.value,
                not_before=iso(record.not_before) if record.not_before else None,
            )
            self._emit("requeued", attempt=self.attempt, reason=verdict.detail)
            return Reported.REQUEUED
        await self._comment(deadline, gave_up_comment(record.failures, FAILED_TAG))
        self._log.warning("gave_up", attempt=self.attempt, outcome=verdict.outcome.value)
        self._emit("gave_up", attempt=self.attempt, failures=record.failures, reason=verdict.detail)
        return Reported.GAVE_UP

    async def roll_back(self, comment: str | None = None, fields: dict[str, Any] | None = None) -> bool:
        """A start that never happened: set the task idle again (and `fields`) if we had set it
        working, and post `comment` if given and the task was ours. False when TinyTask could not be
        told (the lease then stays for the recovery)."""
        deadline = time.monotonic() + self.timeout_sec
        update = fields or {"status": "idle"}
        try:
            written, _ = await self._patch_if_ours(deadline, lambda _task: update)
        except Unreachable:
            return False
        if written and comment:
            await self._comment(deadline, comment)
        return True

    def _count_failure(self, verdict: RunVerdict) -> AttemptRecord:
        if self._failure is None:
            self._failure = self.attempts.record_failure(self.task_id, verdict.outcome.value, self._now())
        return self._failure

    def _left_alone(self, found: Task | None, *, succeeded: bool = False) -> Reported:
        why = left_alone(found, self.agent, succeeded=succeeded)
        if why is LeftAlone.SUCCESS_HELD:
            self._log.info(
                "success_held",
                reason="requeued before the success was reported; completes at its next claim",
                attempt=self.attempt,
            )
        elif why is LeftAlone.REQUEUED:
            self._log.info(
                "task_left_alone", attempt=self.attempt, reason="already back in the queue; attempt history kept"
            )
        else:
            self.attempts.forget(self.task_id)
            self._log.info(
                "task_left_alone",
                attempt=self.attempt,
                reason="completed, transferred or reassigned by someone else during the run",
            )
        return Reported.LEFT_ALONE

    async def _patch_if_ours(
        self, deadline: float, fields_for: Callable[[Task], dict[str, Any]]
    ) -> tuple[bool, Task | None]:
        try:
            return await self._retrying(
                lambda: patch_if_ours(self.client, self.task_id, self.agent, fields_for), deadline
            )
        except TinyTaskRejected as exc:  # e.g. deleted meanwhile: not ours to write any more
            self._log.warning("report_refused", reason=str(exc))
            return False, None

    async def _comment(self, deadline: float, text: str) -> None:
        # The state change is done; a comment that cannot be posted is logged, not fatal.
        try:
            await self._retrying(lambda: self.client.add_comment(self.task_id, text), deadline)
        except (Unreachable, TinyTaskRejected) as exc:
            self._log.warning("comment_not_posted", comment=text, reason=str(exc) or "TinyTask unreachable")

    async def _retrying(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`call` until it succeeds; refusals propagate, unreachability retries until the deadline."""
        wait = 0.5
        while True:
            try:
                return await call()
            except TinyTaskRejected:
                raise
            except TinyTaskError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stop_requested.is_set():
                    raise Unreachable() from exc
                self._log.warning("report_retrying", reason=str(exc), retry_in=round(min(wait, remaining), 2))
                with anyio.move_on_after(min(wait, remaining)):
                    await self.stop_requested.wait()
                wait = min(wait * 2, REPORT_RETRY_MAX_SEC)
