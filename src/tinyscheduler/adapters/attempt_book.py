"""Attempt history per task: failures, backoff, give-up, and successes not yet reported.

Kept in a journal, `state/attempts.jsonl`: one JSON line per change (a task's record as it now is,
or `{"task_id": N, "forget": true}`), appended with one write and never rewritten in place, so a
run's path costs an append of ~150 bytes, not a rewrite of the whole history. Replaying the lines
in order gives the book. When the daemon opens it, and whenever the journal has grown to several
times the records it holds, it is compacted: the live records are written to a new file that
replaces the journal atomically. A crash mid-append leaves a last line without its newline, which
readers skip.

The previous format, one JSON document `state/attempts.json` (`{"version": 1, "tasks": {...}}`),
is still read: its records come first, the journal's lines apply on top, and the first compaction
moves them into the journal and renames the old file `attempts.json.migrated`. `status` and the
dry run read both without changing either (`read_records`).

A success whose report to TinyTask failed is held here too (`hold_success`): the task then stays
`working` on the server until the lease watcher requeues it, and the next claim of that task
completes it instead of running the agent again (see service.run). The daemon runs in one event
loop thread; the book is only touched from there.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import structlog

from tinyscheduler.adapters.attempt_journal import MAX_BOOK_BYTES, parse_document, replay
from tinyscheduler.adapters.files import make_private_folder, open_private
from tinyscheduler.adapters.reading import FileTooLarge, NotRegularFile, read_bytes, reason
from tinyscheduler.core.attempts import (
    MAX_RETRY_DELAY_SEC,
    AttemptRecord,
    RetryPolicy,
    after_failure,
    with_success_held,
)
from tinyscheduler.core.retention import stale_task_ids

#: Compact once the journal holds this many lines and more than COMPACT_RATIO lines per live record.
COMPACT_MIN_LINES = 1000
COMPACT_RATIO = 4
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
        legacy_path: Path | None = None,
    ) -> None:
        """`path`: the journal; `legacy_path`: the old `attempts.json` (default: next to it)."""
        self.path = path
        self.legacy_path = legacy_path if legacy_path is not None else path.with_name("attempts.json")
        #: A read-only book (dry run, status) never writes nor moves a file.
        self.read_only = read_only
        #: Replaced on reload; records already written keep the backoff they were given.
        self.policy = RetryPolicy(max_attempts, retry_base_sec, max_delay_sec)
        self._fd: int | None = None
        self._lines = 0
        #: Why the last change could not be written (None: the journal holds the book).
        self._unwritten: str | None = None
        self._records: dict[int, AttemptRecord] = self._load()
        if not read_only and (self._lines or self.legacy_path.exists()):
            self._compact()

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

    # --- changes (each one in the journal before it returns) -------------------------------------

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
            self._append({"task_id": task_id, "forget": True})

    def forget_stale(self, now: datetime, keep_days: int, *, busy: frozenset[int] = frozenset()) -> list[int]:
        """Drop the records of tasks not tried for `keep_days` (given up, or done elsewhere), one
        journal line each; a held success and a task in `busy` stay. The tasks forgotten."""
        stale = stale_task_ids(
            [(r.task_id, r.last_failure_at, r.success_unreported) for r in self._records.values()],
            now=now,
            keep_days=keep_days,
        )
        stale = [task_id for task_id in stale if task_id not in busy]
        for task_id in stale:
            self.forget(task_id)
        return stale

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- files -----------------------------------------------------------------------------------

    def _put(self, record: AttemptRecord) -> None:
        self._records[record.task_id] = record
        self._append({"task_id": record.task_id, **record.to_json()})

    def _append(self, entry: dict[str, object]) -> None:
        if self.read_only:
            return
        try:
            if self._unwritten or (
                self._lines >= COMPACT_MIN_LINES and self._lines > COMPACT_RATIO * len(self._records)
            ):
                self._compact()  # the compacted journal holds the change (and any that were not written)
            else:
                # Not fsynced: it is on every run's path, and a line lost to a power cut costs at most one
                # extra attempt of a task. One write() of one line: readers never see half of it but at the end.
                os.write(self._journal(), (json.dumps(entry, separators=(",", ":")) + "\n").encode())
                self._lines += 1
        except OSError as exc:  # a full disk, a link in the journal's place: a run's report must go on
            self.close()
            if not self._unwritten:
                detail = "kept in memory; the whole history is written at the next change that can be"
                log.error("attempt_history_not_written", path=str(self.path), reason=reason(exc), detail=detail)
            self._unwritten = reason(exc)
            return
        self._unwritten = None

    def _journal(self) -> int:
        if self._fd is None:
            make_private_folder(self.path.parent)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def _compact(self) -> None:
        """The live records into a fresh journal that replaces the old one (and the old format)."""
        self.close()
        make_private_folder(self.path.parent)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        lines = [
            json.dumps({"task_id": tid, **rec.to_json()}, separators=(",", ":")) + "\n"
            for tid, rec in sorted(self._records.items())
        ]
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(temp, flags, 0o600)
        try:
            os.write(fd, "".join(lines).encode())
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        self._lines = len(lines)
        if self.legacy_path.exists():
            with contextlib.suppress(OSError):
                os.replace(self.legacy_path, self.legacy_path.with_name(f"{self.legacy_path.name}.migrated"))

    def _load(self) -> dict[int, AttemptRecord]:
        records: dict[int, AttemptRecord] = {}
        bad: list[str] = []
        journal = partial(replay, bad=bad)
        for path, parse in ((self.legacy_path, parse_document), (self.path, journal)):
            try:
                # A FIFO or a device in its place must not hang the daemon's start.
                raw = read_bytes(path, MAX_BOOK_BYTES)
            except FileNotFoundError:
                continue
            except (NotRegularFile, FileTooLarge, IsADirectoryError) as exc:  # other errors: the folder's
                self._unreadable(path, reason(exc))
                continue
            applied = dict(records)  # a file that cannot be trusted is not half applied
            try:
                lines = parse(raw, applied)
            except (ValueError, TypeError, AttributeError, RecursionError) as exc:
                self._unreadable(path, str(exc))
                continue
            records = applied
            if path == self.path:
                self._lines = lines
                if bad:
                    self._skipped(raw, bad)
        return records

    def _skipped(self, raw: bytes, bad: list[str]) -> None:
        """Lines of the journal that could not be read were skipped: a copy of it is kept for a person
        (the next compaction drops them from the journal)."""
        aside = self.path.with_name(f"{self.path.name}.bad-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        if not self.read_only:
            with (
                contextlib.suppress(OSError),
                os.fdopen(open_private(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "wb") as copy,
            ):
                copy.write(raw)
        log.error(
            "attempt_history_lines_skipped",
            path=str(self.path),
            lines=len(bad),
            first=bad[:3],
            copy=None if self.read_only else str(aside),
            detail="the other records are kept; the skipped lines' tasks lose their last change",
        )

    def _unreadable(self, path: Path, why: str) -> None:
        # A broken history must not stop the daemon; keep the file for a person, go on without it.
        if self.read_only:
            log.error("attempt_history_unreadable", action="ignored (read-only)", path=str(path), reason=why)
            return
        aside = path.with_name(f"{path.name}.bad-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        with contextlib.suppress(OSError):
            os.replace(path, aside)
        log.error("attempt_history_unreadable", action="set aside", path=str(path), moved_to=str(aside), reason=why)
