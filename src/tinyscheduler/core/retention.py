"""Which files of the state folder go: run logs, quarantined lease files and leftover temporary files,
by age and by total size. Pure: the files come in as plain data (name, size, mtime), the time and the
runs in flight as inputs; `adapters.retention` walks the disk and removes what this module chose.

A file is ours only if its name says so: a run log is `<task>.<attempt>.log` at the top of the run log
folder, or `<task>/<attempt>.log` below it (where 2.0.0 wrote them), a quarantined file is
`<original name>.<YYYYmmddTHHMMSS>.<pid>[.<n>][.reason]`, a temporary file is `.<name>.<random>.tmp`
(what an atomic write leaves when a kill cuts it short). Anything else is left alone, whatever its age.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

#: A temporary file of an atomic write lives for milliseconds; one this old was left by a kill.
TEMP_GRACE_SEC = 600.0

_RUN_LOG = re.compile(r"([0-9]{1,19})\.log")
_FLAT_RUN_LOG = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})\.log")
_TASK_FOLDER = re.compile(r"[0-9]{1,19}")
_QUARANTINED = re.compile(r".+\.[0-9]{8}T[0-9]{6}\.[0-9]+(?:\.[0-9]+)?(?:\.reason)?")
_TEMP = re.compile(r"\..+\.[A-Za-z0-9_]{1,32}\.tmp")


class Kind(enum.StrEnum):
    RUN_LOG = "run_log"
    QUARANTINED = "quarantined"
    TEMP = "temp"


@dataclass(frozen=True)
class StateFile:
    """One regular file found under the state: its path as found, what it is, size and mtime."""

    path: str
    kind: Kind
    size: int
    #: Modification time, seconds since the epoch.
    mtime: float
    #: The task a run log belongs to.
    task_id: int | None = None


@dataclass(frozen=True)
class Limits:
    keep_days: int
    max_bytes: int
    temp_grace_sec: float = TEMP_GRACE_SEC


def run_log_of(folder: str | None, name: str) -> tuple[int, int] | None:
    """(task, attempt) of run log `name` at the top of the run log folder (`folder` None: `42.1.log`)
    or in its task folder `folder` (`42/1.log`, as 2.0.0 wrote them); None when not a run log's names."""
    if folder is None:
        flat = _FLAT_RUN_LOG.fullmatch(name)
        return None if flat is None else (int(flat.group(1)), int(flat.group(2)))
    old = _RUN_LOG.fullmatch(name)
    if not is_task_folder(folder) or old is None:
        return None
    return int(folder), int(old.group(1))


def is_task_folder(name: str) -> bool:
    """Whether `name` may be a task's folder of run logs (the layout of 2.0.0)."""
    return _TASK_FOLDER.fullmatch(name) is not None


def is_quarantined_name(name: str) -> bool:
    return _QUARANTINED.fullmatch(name) is not None


def is_temp_name(name: str) -> bool:
    return _TEMP.fullmatch(name) is not None


def choose(files: Iterable[StateFile], *, in_flight: Iterable[int], now: datetime, limits: Limits) -> list[StateFile]:
    """The files to remove, oldest first: every file past its age, then the oldest run logs and
    quarantined files until what is left fits `max_bytes`. A run log of a task in flight is never
    chosen, whatever its age or the total size."""
    busy = frozenset(in_flight)
    now_sec = now.timestamp()
    oldest_kept = now_sec - timedelta(days=limits.keep_days).total_seconds()
    candidates = [f for f in files if not (f.kind is Kind.RUN_LOG and f.task_id in busy)]
    chosen = [
        f
        for f in candidates
        if (f.kind is Kind.TEMP and f.mtime < now_sec - limits.temp_grace_sec)
        or (f.kind is not Kind.TEMP and f.mtime < oldest_kept)
    ]
    gone = {f.path for f in chosen}
    sized = sorted((f for f in candidates if f.kind is not Kind.TEMP and f.path not in gone), key=_age_order)
    kept_busy = sum(f.size for f in files if f.kind is Kind.RUN_LOG and f.task_id in busy)
    total = kept_busy + sum(f.size for f in sized)
    for f in sized:
        if total <= limits.max_bytes:
            break
        chosen.append(f)
        total -= f.size
    return sorted(chosen, key=_age_order)


def _age_order(f: StateFile) -> tuple[float, str]:
    return (f.mtime, f.path)


def stale_task_ids(
    last_failures: Sequence[tuple[int, datetime | None, bool]], *, now: datetime, keep_days: int
) -> list[int]:
    """Attempt records to forget: (task, last failure, success held) -> the tasks not tried for
    `keep_days`. A held success is kept: it still has to be reported."""
    oldest_kept = now - timedelta(days=keep_days)
    return sorted(
        task_id
        for task_id, failed_at, held in last_failures
        if not held and failed_at is not None and failed_at < oldest_kept
    )
