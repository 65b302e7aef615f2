"""Attempt history: counting, backoff, give-up, held successes, persistence across restarts, the
journal (appended, compacted, the old attempts.json migrated)."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog.testing

from tinyscheduler.adapters.attempt_book import COMPACT_MIN_LINES, AttemptBook
from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.core.attempts import AttemptRecord

NOW = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)


def book(path: Path, max_attempts: int = 3, base: float = 60) -> AttemptBook:
    return AttemptBook(path, max_attempts=max_attempts, retry_base_sec=base)


def test_fresh_task_has_no_history(tmp_path: Path) -> None:
    b = book(tmp_path / "attempts.jsonl")
    assert b.next_attempt(5) == 1
    assert b.not_before(5) is None
    assert not b.gave_up(5)
    assert b.record(5) == AttemptRecord(5)
    assert not (tmp_path / "attempts.jsonl").exists()  # nothing written until something happens


@pytest.mark.parametrize(
    ("failures", "next_attempt", "wait", "gave_up"),
    [(1, 2, 60, False), (2, 3, 120, False), (3, 4, None, True)],
)
def test_failures_back_off_then_give_up(
    tmp_path: Path, failures: int, next_attempt: int, wait: float | None, gave_up: bool
) -> None:
    b = book(tmp_path / "a.jsonl")
    for i in range(failures):
        record = b.record_failure(9, "failed", NOW + timedelta(seconds=i))
    last = NOW + timedelta(seconds=failures - 1)
    assert record.failures == failures
    assert record.last_failure_at == last
    assert b.next_attempt(9) == next_attempt
    assert b.gave_up(9) is gave_up
    assert b.not_before(9) == (None if wait is None else last + timedelta(seconds=wait))


def test_backoff_is_capped_at_an_hour(tmp_path: Path) -> None:
    b = book(tmp_path / "a.jsonl", max_attempts=20, base=600)
    for _ in range(5):
        b.record_failure(1, "timed_out", NOW)
    assert b.not_before(1) == NOW + timedelta(hours=1)


def test_success_clears_history(tmp_path: Path) -> None:
    b = book(tmp_path / "a.jsonl")
    b.record_failure(3, "failed", NOW)
    b.record_success(3)
    assert b.next_attempt(3) == 1
    assert read_records(tmp_path / "a.jsonl") == {}


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "attempts.jsonl"
    first = book(path)
    first.record_failure(4, "failed", NOW)
    first.record_failure(4, "incomplete", NOW)
    first.hold_success(8)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = book(path)
    assert again.record(4) == first.record(4)
    assert again.record(4).last_outcome == "incomplete"
    assert again.success_unreported(8)
    assert not again.success_unreported(4)


def test_held_success_is_cleared_by_a_later_failure_or_success(tmp_path: Path) -> None:
    b = book(tmp_path / "a.jsonl")
    b.hold_success(2)
    b.record_failure(2, "failed", NOW)
    assert not b.success_unreported(2)
    b.hold_success(2)
    b.record_success(2)
    assert not b.success_unreported(2)


def test_forget_grants_a_fresh_budget(tmp_path: Path) -> None:
    b = book(tmp_path / "a.jsonl", max_attempts=1)
    b.record_failure(6, "failed", NOW)
    assert b.gave_up(6)
    b.forget(6)
    assert not b.gave_up(6) and b.next_attempt(6) == 1


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"tasks": []}',
        '{"tasks": {"x": {}}}',
        '{"tasks": {"1": {"failures": "two"}}}',
        '{"tasks": {"1": {"not_before": "yesterday"}}}',
        '{"tasks": {"1": {"not_before": "2026-01-01T00:00:00"}}}',
    ],
)
def test_an_unreadable_old_history_is_set_aside_not_fatal(tmp_path: Path, content: str) -> None:
    old = tmp_path / "attempts.json"
    old.write_text(content)
    b = book(tmp_path / "attempts.jsonl")
    assert b.next_attempt(1) == 1
    assert not old.exists()
    [aside] = tmp_path.glob("attempts.json.bad-*")
    assert aside.read_text() == content
    b.record_failure(1, "failed", NOW)  # and it keeps working
    assert book(tmp_path / "attempts.jsonl").next_attempt(1) == 2


@pytest.mark.parametrize(
    "line", ["not json", "[]", '{"failures": 1}', '{"task_id": "7"}', '{"task_id": 7, "failures": -1}']
)
def test_a_bad_line_of_the_journal_costs_that_line_only(tmp_path: Path, line: str) -> None:
    """Every line holds its task's whole record: the others stand, held successes above all (set
    aside with the bad line, they would run again)."""
    journal = tmp_path / "attempts.jsonl"
    good = [json.dumps({"task_id": task, "failures": 1, "success_unreported": True}) for task in range(1, 101)]
    journal.write_text("\n".join([*good[:50], line, *good[50:]]) + "\n")
    b = book(journal)
    assert [task for task in range(1, 101) if b.record(task).success_unreported] == list(range(1, 101))
    assert b.next_attempt(3) == 2
    [copy] = tmp_path.glob("attempts.jsonl.bad-*")
    assert line in copy.read_text(), "the journal as it was, kept for a person"
    b.record_failure(3, "failed", NOW)
    assert book(journal).next_attempt(3) == 3
    assert line not in journal.read_text(), "compacted without the bad line"


def test_every_change_is_one_appended_line_never_a_rewrite(tmp_path: Path) -> None:
    journal = tmp_path / "attempts.jsonl"
    b = book(journal)
    b.record_failure(1, "failed", NOW)
    inode = journal.stat().st_ino
    b.hold_success(2)
    b.record_success(2)
    b.record_failure(1, "timed_out", NOW)
    assert journal.stat().st_ino == inode, "the journal was replaced, not appended to"
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert [(line["task_id"], line.get("forget", False)) for line in lines] == [
        (1, False),
        (2, False),
        (2, True),
        (1, False),
    ]
    assert stat.S_IMODE(journal.stat().st_mode) == 0o600


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    journal = tmp_path / "attempts.jsonl"
    first = book(journal)
    first.record_failure(4, "failed", NOW)
    with journal.open("a") as handle:
        handle.write('{"task_id": 4, "failu')  # the daemon died in the middle of this write
    assert read_records(journal)[4].failures == 1
    assert book(journal).record(4).failures == 1


def test_opening_compacts_the_journal_and_migrates_the_old_file(tmp_path: Path) -> None:
    old = tmp_path / "attempts.json"
    old.write_text(
        json.dumps({"version": 1, "tasks": {"5": {"failures": 2, "last_outcome": "failed"}, "6": {"failures": 1}}})
    )
    journal = tmp_path / "attempts.jsonl"
    journal.write_text('{"task_id": 6, "forget": true}\n{"task_id": 7, "failures": 1}\n{"task_id": 7, "failures": 2}\n')
    assert set(read_records(journal)) == {5, 7}, "status reads the old file and the journal on top"
    assert old.exists(), "reading changes nothing"

    b = book(journal)

    assert b.record(5).failures == 2 and b.record(7).failures == 2 and b.next_attempt(6) == 1
    assert not old.exists() and (tmp_path / "attempts.json.migrated").exists()
    assert [json.loads(line)["task_id"] for line in journal.read_text().splitlines()] == [5, 7]


def test_a_long_journal_is_compacted_while_running(tmp_path: Path) -> None:
    journal = tmp_path / "attempts.jsonl"
    b = book(journal)
    for task in range(COMPACT_MIN_LINES):
        b.hold_success(task)
        b.record_success(task)
    b.record_failure(99_999, "failed", NOW)
    assert len(journal.read_text().splitlines()) < COMPACT_MIN_LINES
    assert read_records(journal) == {99_999: b.record(99_999)}


def test_a_change_the_journal_cannot_take_is_kept_and_written_with_the_next(tmp_path: Path) -> None:
    # A dangling symlink in the journal's place (or a full disk): the append fails. Before, the
    # OSError went up through the run's report and ended the daemon, its runs left unsupervised.
    journal = tmp_path / "attempts.jsonl"
    journal.symlink_to(tmp_path / "missing" / "elsewhere.jsonl")
    b = book(journal)
    with structlog.testing.capture_logs() as logs:
        b.record_failure(5, "failed", NOW)
        assert b.next_attempt(5) == 2, "the book in memory goes on"
        b.hold_success(6)  # the next change writes the whole book, in a file of its own
    assert [entry["event"] for entry in logs] == ["attempt_history_not_written"]
    assert not journal.is_symlink()
    assert read_records(journal) == {5: b.record(5), 6: b.record(6)}
