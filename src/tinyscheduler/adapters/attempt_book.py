"""Attempt history per task: failures, backoff, give-up, and successes not yet reported.

One small JSON file (e.g. `state/attempts.json`), rewritten atomically after every change, so the
history survives restarts of the daemon and a crash mid-write leaves the old file or the new one.
The daemon runs in one event loop thread; the book is only touched from there.

A success whose report to TinyTask failed is held here too (`hold_success`): the task then stays
`working` on the server until the lease watcher requeues it, and the next claim of that task
completes it instead of running the agent again (see `runs`).
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import structlog

from tinyscheduler.adapters.files import make_private_folder, write_json_atomic
from tinyscheduler.adapters.reading import FileTooLarge, NotRegularFile, read_bytes, reason
from tinyscheduler.core.attempts import (
    MAX_RETRY_DELAY_SEC,
    AttemptRecord,
    RetryPolicy,
    after_failure,
    with_success_held,
)
from tinyscheduler.core.retention import stale_task_ids

FORMAT_VERSION = 1
#: Far above the history of any real host (a record is about 200 bytes).
MAX_BOOK_BYTES = 64 * 1024 * 1024
log = structlog.get_logger("tinyscheduler.attempts")


class AttemptBook:
    def __init__(
        self,
        path: Path,
        *,
        max_attempts: int,
        retry_base_sec: float,
        max_delay_sec: float = MAX_RETRY_DELAY_SEC,
        read_only: bool = False,
    ) -> None:
        self.path = path
        #: A read-only book (dry run, status) never writes nor moves the file.
        self.read_only = read_only
        #: Replaced on reload; records already written keep the backoff they were given.
        self.policy = RetryPolicy(max_attempts, retry_base_sec, max_delay_sec)
        self._records: dict[int, AttemptRecord] = self._load()

    # --- queries ---------------------------------------------------------------------------------

    def record(self, task_id: int) -> AttemptRecord:
        return self._records.get(task_id) or AttemptRecord(task_id)

    def next_attempt(self, task_id: int) -> int:
        return self.record(task_id).failures + 1

    def not_before(self, task_id: int) -> datetime | None:
        return self.record(task_id).not_before

    def not_before_all(self) -> dict[int, datetime]:
        """Every task still backing off, for the planner."""
        return {tid: rec.not_before for tid, rec in self._records.items() if rec.not_before is not None}

    def gave_up(self, task_id: int) -> bool:
        return self.record(task_id).gave_up

    def success_unreported(self, task_id: int) -> bool:
        return self.record(task_id).success_unreported

    # --- changes (each one written to disk before it returns) ------------------------------------

    def record_failure(self, task_id: int, outcome: str, now: datetime) -> AttemptRecord:
        record = after_failure(self.record(task_id), outcome, now, self.policy)
        self._put(record)
        return record

    def record_success(self, task_id: int) -> None:
        """The task is done (and TinyTask knows): its history goes."""
        self.forget(task_id)

    def hold_success(self, task_id: int) -> None:
        self._put(with_success_held(self.record(task_id)))

    def forget(self, task_id: int) -> None:
        """Drop the history, e.g. when a person removed the failed tag to grant a fresh budget."""
        if self._records.pop(task_id, None) is not None:
            self._save()

    def forget_stale(self, now: datetime, keep_days: int, *, busy: frozenset[int] = frozenset()) -> list[int]:
        """Drop the records of tasks not tried for `keep_days` (given up, or done elsewhere), in one
        write; a held success and a task in `busy` stay. The tasks forgotten."""
        stale = stale_task_ids(
            [(r.task_id, r.last_failure_at, r.success_unreported) for r in self._records.values()],
            now=now,
            keep_days=keep_days,
        )
        stale = [task_id for task_id in stale if task_id not in busy]
        for task_id in stale:
            del self._records[task_id]
        if stale:
            self._save()
        return stale

    # --- file ------------------------------------------------------------------------------------

    def _put(self, record: AttemptRecord) -> None:
        self._records[record.task_id] = record
        self._save()

    def _save(self) -> None:
        if self.read_only:
            return
        make_private_folder(self.path.parent)
        tasks = {str(tid): rec.to_json() for tid, rec in sorted(self._records.items())}
        # Atomic but not fsynced: it is on every run's path, and a record lost to a power cut costs
        # at most one extra attempt of a task.
        write_json_atomic(self.path, {"version": FORMAT_VERSION, "tasks": tasks}, durable=False)

    def _load(self) -> dict[int, AttemptRecord]:
        try:
            # A FIFO or a device in its place must not hang the daemon's start.
            raw = read_bytes(self.path, MAX_BOOK_BYTES)
        except FileNotFoundError:
            return {}
        except (NotRegularFile, FileTooLarge, IsADirectoryError) as exc:  # other errors: the folder's
            return self._unreadable(reason(exc))
        try:
            return _parse(raw)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            return self._unreadable(str(exc))

    def _unreadable(self, why: str) -> dict[int, AttemptRecord]:
        # A broken history must not stop the daemon; keep the file for a person, start afresh.
        if self.read_only:
            log.error("attempt_history_unreadable", action="ignored (read-only)", path=str(self.path), reason=why)
            return {}
        aside = self.path.with_name(f"{self.path.name}.bad-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        with contextlib.suppress(OSError):
            os.replace(self.path, aside)
        log.error(
            "attempt_history_unreadable", action="starting empty", path=str(self.path), moved_to=str(aside), reason=why
        )
        return {}


def _parse(raw: bytes) -> dict[int, AttemptRecord]:
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError("expected an object with a 'tasks' object")
    records = {int(key): AttemptRecord.from_json(int(key), value) for key, value in data["tasks"].items()}
    for record in records.values():
        for moment in (record.last_failure_at, record.not_before):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"task {record.task_id}: timestamp without a time zone")
    return records
