"""Attempt history of one task, and how a failure or a success changes it: pure values.

`AttemptRecord` is what the scheduler remembers of a task across runs and restarts: failed attempts,
the backoff before the next one, whether it gave up, and a success that TinyTask has not been told
yet. The transitions take the time as an input; `adapters.attempt_book` keeps the records on disk.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from tinyscheduler.core.text import iso

#: Upper bound of the wait between attempts, whatever the base and the count.
MAX_RETRY_DELAY_SEC = 3600.0


@dataclass(frozen=True)
class AttemptRecord:
    task_id: int
    failures: int = 0
    last_outcome: str | None = None
    last_failure_at: datetime | None = None
    #: Earliest moment the next attempt may start (retry backoff).
    not_before: datetime | None = None
    gave_up: bool = False
    #: The agent succeeded but TinyTask could not be told; complete the task instead of rerunning.
    success_unreported: bool = False

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["task_id"]  # the key of the entry
        for key in ("last_failure_at", "not_before"):
            data[key] = iso(data[key]) if data[key] else None
        return data

    @classmethod
    def from_json(cls, task_id: int, data: dict[str, Any]) -> AttemptRecord:
        def moment(key: str) -> datetime | None:
            value = data.get(key)
            return datetime.fromisoformat(value) if isinstance(value, str) else None

        failures = data.get("failures", 0)
        if isinstance(failures, bool) or not isinstance(failures, int) or failures < 0:
            raise ValueError(f"task {task_id}: field failures: expected a count, got {failures!r}")
        return cls(
            task_id=task_id,
            failures=failures,
            last_outcome=data.get("last_outcome"),
            last_failure_at=moment("last_failure_at"),
            not_before=moment("not_before"),
            gave_up=bool(data.get("gave_up", False)),
            success_unreported=bool(data.get("success_unreported", False)),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How failures are budgeted: attempts before giving up, and the backoff between them."""

    max_attempts: int
    retry_base_sec: float
    max_delay_sec: float = MAX_RETRY_DELAY_SEC


def retry_delay(failures: int, base_sec: float, cap_sec: float = MAX_RETRY_DELAY_SEC) -> float:
    """Wait before the next attempt after `failures` failed ones: base, 2*base, 4*base ... capped."""
    if failures < 1:
        return 0.0
    # Cap the exponent too: 2**1000 would overflow a float long after the cap applies.
    return min(cap_sec, base_sec * 2.0 ** min(failures - 1, 64))


def after_failure(record: AttemptRecord, outcome: str, now: datetime, policy: RetryPolicy) -> AttemptRecord:
    """One more failed attempt: counted, backed off, and given up once the budget is spent."""
    failures = record.failures + 1
    gave_up = failures >= policy.max_attempts
    delay = retry_delay(failures, policy.retry_base_sec, policy.max_delay_sec)
    return replace(
        record,
        failures=failures,
        last_outcome=outcome,
        last_failure_at=now,
        not_before=None if gave_up else now + timedelta(seconds=delay),
        gave_up=gave_up,
        success_unreported=False,
    )


def with_success_held(record: AttemptRecord) -> AttemptRecord:
    """The agent succeeded but TinyTask does not know yet: complete the task instead of rerunning it."""
    return replace(record, success_unreported=True)
