"""Run history: one row per run that ended, in SQLite (`state/history.sqlite3`), kept for a number of days.

Append-only: the daemon inserts a row when a run's end has been reported and never changes one; rows
older than the retention go, at most once a day. Everything else reads (`history`, `report`, the
status page), through a read-only connection. Queries filter on the indexed columns (end time,
agent, task), so they stay fast at hundreds of thousands of rows (tests/bench/bench_history.py).

WAL mode: a reader never waits for the writer, and a commit does not fsync (only checkpoints do,
and the writer runs in a worker thread). A file of a newer schema, or one that is no SQLite database,
is an error naming the file, never a crash.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tinyscheduler.adapters.files import make_private_folder, open_private

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    host TEXT NOT NULL,
    instance TEXT NOT NULL,
    agent TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT NOT NULL,
    report TEXT NOT NULL,
    how TEXT NOT NULL,
    exit_code INTEGER,
    duration_sec REAL NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    model TEXT,
    cost REAL,
    log_path TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_end ON runs (ended_at);
CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent, ended_at, {sums});
CREATE INDEX IF NOT EXISTS runs_by_task ON runs (task_id, ended_at, {sums});
""".format(sums="outcome, duration_sec, input_tokens, output_tokens, total_tokens, cost")
#: The agent and task indexes carry the summed columns: the totals read the index alone (a GROUP BY
#: over 100,000 runs: 250 ms through row lookups, a few tens of ms this way).


class HistoryError(Exception):
    """The history file cannot be used; the message names it and why."""


@dataclass(frozen=True)
class RunRecord:
    """One run that ended, as `history` lists it. Times are aware datetimes (UTC)."""

    started_at: datetime
    ended_at: datetime
    host: str
    instance: str
    agent: str
    task_id: int
    attempt: int
    outcome: str
    reason: str
    report: str
    #: How this daemon came to supervise it: spawned, adopted, settled.
    how: str
    exit_code: int | None
    duration_sec: float
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    model: str | None
    cost: float | None
    log_path: str


_COLUMNS = tuple(f.name for f in fields(RunRecord))


@dataclass(frozen=True)
class Filter:
    agent: str | None = None
    task_id: int | None = None
    since: datetime | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        values: list[object] = []
        if self.agent is not None:
            clauses.append("agent = ?")
            values.append(self.agent)
        if self.task_id is not None:
            clauses.append("task_id = ?")
            values.append(self.task_id)
        if self.since is not None:
            clauses.append("ended_at >= ?")
            values.append(self.since.timestamp())
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", values


@dataclass(frozen=True)
class Totals:
    """Sums over the runs of one agent or one task (tokens and cost count only where known)."""

    key: str
    runs: int
    succeeded: int
    duration_sec: float
    input_tokens: int
    output_tokens: int
    total_tokens: int
    #: None when no run of the group has a cost (no price table, or no price for its model).
    cost: float | None


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def _moment(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


class HistoryStore:
    """The history file. `read_only` opens an existing file for reading and never creates one."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._db: sqlite3.Connection | None = None

    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        try:
            self._db = self._open()
        except sqlite3.Error as exc:
            raise HistoryError(f"run history {self.path}: {exc}") from None
        except OSError as exc:
            raise HistoryError(f"run history {self.path}: {exc.strerror or exc}") from None
        return self._db

    def _open(self) -> sqlite3.Connection:
        if self.read_only:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
            self._check_version(db, writable=False)
            return db
        make_private_folder(self.path.parent)
        # Created here, 0600 and never through a link; SQLite then opens the regular file it finds.
        os.close(open_private(self.path, os.O_RDWR | os.O_CREAT))
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        self._check_version(db, writable=True)
        return db

    def _check_version(self, db: sqlite3.Connection, *, writable: bool) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            db.close()
            raise HistoryError(
                f"run history {self.path}: schema version {version} is newer than this version knows "
                f"({SCHEMA_VERSION}); upgrade TinyScheduler or move the file away"
            )
        if version < SCHEMA_VERSION and writable:
            # One script, one transaction: a reader never sees the tables without their version.
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- writing (the daemon) ----------------------------------------------------------------------

    def append(self, records: Sequence[RunRecord]) -> None:
        db = self._connect()
        rows = [(*(_epoch(r.started_at), _epoch(r.ended_at)), *astuple(r)[2:]) for r in records]
        marks = ", ".join("?" for _ in _COLUMNS)
        try:
            with _transaction(db):
                db.executemany(f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES ({marks})", rows)
        except sqlite3.Error as exc:
            raise HistoryError(f"run history {self.path}: {exc}") from None

    def prune(self, before: datetime) -> int:
        """Remove the runs that ended before `before` (retention); how many went."""
        db = self._connect()
        try:
            with _transaction(db):
                return db.execute("DELETE FROM runs WHERE ended_at < ?", (_epoch(before),)).rowcount
        except sqlite3.Error as exc:
            raise HistoryError(f"run history {self.path}: {exc}") from None

    # --- reading -----------------------------------------------------------------------------------

    def runs(self, where: Filter = Filter(), *, limit: int | None = None) -> list[RunRecord]:
        """The matching runs, the latest end first; at most `limit` (None: all)."""
        clause, values = where.where()
        sql = f"SELECT {', '.join(_COLUMNS)} FROM runs{clause} ORDER BY ended_at DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            values.append(limit)
        rows = self._query(sql, values)
        return [RunRecord(_moment(row[0]), _moment(row[1]), *row[2:]) for row in rows]

    def count(self, where: Filter = Filter(), *, distinct: str = "*") -> int:
        """How many runs match (or how many distinct agents or tasks: `distinct="task_id"`)."""
        if distinct not in ("*", "agent", "task_id"):
            raise ValueError(f"count of {distinct!r}: expected *, agent or task_id")
        clause, values = where.where()
        what = "*" if distinct == "*" else f"DISTINCT {distinct}"
        return int(self._query(f"SELECT COUNT({what}) FROM runs{clause}", values)[0][0])

    def totals(self, by: str, where: Filter = Filter(), *, limit: int | None = None) -> list[Totals]:
        """Sums per agent (`by="agent"`) or per task (`by="task_id"`), the costliest first; at most `limit`."""
        if by not in ("agent", "task_id"):
            raise ValueError(f"totals by {by!r}: expected agent or task_id")
        clause, values = where.where()
        sql = (
            f"SELECT {by}, COUNT(*), SUM(outcome = 'succeeded'), TOTAL(duration_sec), TOTAL(input_tokens), "
            f"TOTAL(output_tokens), TOTAL(total_tokens), SUM(cost) FROM runs{clause} GROUP BY {by} "
            f"ORDER BY SUM(cost) DESC, TOTAL(total_tokens) DESC, {by}"
        )
        if limit is not None:
            sql += " LIMIT ?"
            values.append(limit)
        return [
            Totals(str(row[0]), row[1], row[2], row[3], int(row[4]), int(row[5]), int(row[6]), row[7])
            for row in self._query(sql, values)
        ]

    def _query(self, sql: str, values: Sequence[object]) -> list[tuple[Any, ...]]:
        db = self._connect()
        try:
            return db.execute(sql, values).fetchall()
        except sqlite3.Error as exc:
            raise HistoryError(f"run history {self.path}: {exc}") from None


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
