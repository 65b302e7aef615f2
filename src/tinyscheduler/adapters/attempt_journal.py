"""The attempt book's files, read without changing them: the journal `attempts.jsonl` (one JSON line
per change) and the previous format `attempts.json`. `status` and the demo read them through this
module alone (no logging library at start-up); `attempt_book` keeps them.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinyscheduler.adapters.reading import read_bytes
from tinyscheduler.core.attempts import AttemptRecord

#: Far above the history of any real host (a record is about 200 bytes).
MAX_BOOK_BYTES = 64 * 1024 * 1024


def read_records(journal: Path, legacy: Path | None = None) -> dict[int, AttemptRecord]:
    """The book as the files say now, changing nothing (for `status`): the old document, then the
    journal. Raises OSError or ValueError (with the file's name) when one cannot be read."""
    records: dict[int, AttemptRecord] = {}
    legacy = legacy if legacy is not None else journal.with_name("attempts.json")
    bad: list[str] = []
    for path, parse in ((legacy, parse_document), (journal, lambda raw, found: replay(raw, found, bad))):
        try:
            raw = read_bytes(path, MAX_BOOK_BYTES)
        except FileNotFoundError:
            continue
        try:
            parse(raw, records)
        except (ValueError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        if bad:
            raise ValueError(f"{path}: {len(bad)} line(s) cannot be read ({bad[0]})")
    return records


def parse_document(raw: bytes, records: dict[int, AttemptRecord]) -> int:
    """The old format: one JSON object with a 'tasks' object; its records go into `records`."""
    data = json.loads(raw)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise ValueError("expected an object with a 'tasks' object")
    for key, value in data["tasks"].items():
        records[int(key)] = _checked(AttemptRecord.from_json(int(key), value))
    return 0


def replay(raw: bytes, records: dict[int, AttemptRecord], bad: list[str]) -> int:
    """Apply the journal's lines to `records`; the number of lines. A last line without its newline
    is a write a crash cut short: skipped. A line that cannot be read is skipped and said in `bad`:
    every line holds its task's whole record, so one bad line costs that task's last change, not
    the book (whose held successes would otherwise run again)."""
    lines = raw.split(b"\n")[:-1]  # whatever follows the last newline is incomplete
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict):
                raise ValueError("expected a JSON object")
            task_id = entry["task_id"]
            if isinstance(task_id, bool) or not isinstance(task_id, int):
                raise ValueError(f"task_id: expected an integer, got {task_id!r}")
            if entry.get("forget") is True:
                records.pop(task_id, None)
            else:
                records[task_id] = _checked(AttemptRecord.from_json(task_id, entry))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            bad.append(f"line {number}: {exc}")
    return len(lines)


def _checked(record: AttemptRecord) -> AttemptRecord:
    for moment in (record.last_failure_at, record.not_before):
        if moment is not None and moment.tzinfo is None:
            raise ValueError(f"task {record.task_id}: timestamp without a time zone")
    return record
