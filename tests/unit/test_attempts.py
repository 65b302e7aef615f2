"""Attempt history: counting, backoff, give-up, held successes, persistence across restarts."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.core.attempts import AttemptRecord

NOW = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)


def book(path: Path, max_attempts: int = 3, base: float = 60) -> AttemptBook:
    return AttemptBook(path, max_attempts=max_attempts, retry_base_sec=base)


def test_fresh_task_has_no_history(tmp_path: Path) -> None:
    b = book(tmp_path / "attempts.json")
    assert b.next_attempt(5) == 1
    assert b.not_before(5) is None
    assert not b.gave_up(5)
    assert b.record(5) == AttemptRecord(5)
    assert not (tmp_path / "attempts.json").exists()  # nothing written until something happens


@pytest.mark.parametrize(
    ("failures", "next_attempt", "wait", "gave_up"),
    [(1, 2, 60, False), (2, 3, 120, False), (3, 4, None, True)],
)
def test_failures_back_off_then_give_up(
    tmp_path: Path, failures: int, next_attempt: int, wait: float | None, gave_up: bool
) -> None:
    b = book(tmp_path / "a.json")
    for i in range(failures):
        record = b.record_failure(9, "failed", NOW + timedelta(seconds=i))
    last = NOW + timedelta(seconds=failures - 1)
    assert record.failures == failures
    assert record.last_failure_at == last
    assert b.next_attempt(9) == next_attempt
    assert b.gave_up(9) is gave_up
    assert b.not_before(9) == (None if wait is None else last + timedelta(seconds=wait))


def test_backoff_is_capped_at_an_hour(tmp_path: Path) -> None:
    b = book(tmp_path / "a.json", max_attempts=20, base=600)
    for _ in range(5):
        b.record_failure(1, "timed_out", NOW)
    assert b.not_before(1) == NOW + timedelta(hours=1)


def test_success_clears_history(tmp_path: Path) -> None:
    b = book(tmp_path / "a.json")
    b.record_failure(3, "failed", NOW)
    b.record_success(3)
    assert b.next_attempt(3) == 1
    assert json.loads((tmp_path / "a.json").read_text())["tasks"] == {}


def test_history_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "state" / "attempts.json"
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
    b = book(tmp_path / "a.json")
    b.hold_success(2)
    b.record_failure(2, "failed", NOW)
    assert not b.success_unreported(2)
    b.hold_success(2)
    b.record_success(2)
    assert not b.success_unreported(2)


def test_forget_grants_a_fresh_budget(tmp_path: Path) -> None:
    b = book(tmp_path / "a.json", max_attempts=1)
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
def test_unreadable_history_is_set_aside_not_fatal(tmp_path: Path, content: str) -> None:
    path = tmp_path / "a.json"
    path.write_text(content)
    b = book(path)
    assert b.next_attempt(1) == 1
    assert not path.exists()
    [aside] = tmp_path.glob("a.json.bad-*")
    assert aside.read_text() == content
    b.record_failure(1, "failed", NOW)  # and it keeps working
    assert book(path).next_attempt(1) == 2
