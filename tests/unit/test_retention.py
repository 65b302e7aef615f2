"""Retention: the choice (core.retention) over plain data, and the disk part (adapters.retention) on real
files: old run logs, quarantined files and leftover temporary files go, by age and by total size; a run in
flight keeps its log whatever its age; nothing that is not ours, nor anything behind a link, is touched."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.retention import Places, usage
from tinyscheduler.core.retention import (
    Kind,
    Limits,
    StateFile,
    choose,
    is_quarantined_name,
    is_temp_name,
    run_log_of,
)
from tinyscheduler.service.retention import prune_files

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
DAY = 86400.0
GIB = 1024**3


def log_file(task: int, age_days: float, size: int = 100, attempt: int = 1) -> StateFile:
    return StateFile(f"tasks/{task}/{attempt}.log", Kind.RUN_LOG, size, NOW.timestamp() - age_days * DAY, task)


def test_files_past_the_age_go_and_a_run_in_flight_keeps_its_log() -> None:
    files = [log_file(1, 20), log_file(2, 20), log_file(3, 1)]
    chosen = choose(files, in_flight={2}, now=NOW, limits=Limits(14, GIB))
    assert [f.task_id for f in chosen] == [1]


def test_over_the_size_limit_the_oldest_go_first_but_never_a_run_in_flight() -> None:
    files = [log_file(task, age_days=10 - task, size=1000) for task in range(1, 6)]
    # 5000 bytes kept under 2500: the three oldest go, except task 1, which is in flight.
    chosen = choose(files, in_flight={1}, now=NOW, limits=Limits(14, 2500))
    assert [f.task_id for f in chosen] == [2, 3, 4]


def test_temporary_files_go_after_ten_minutes_whatever_the_size_limit() -> None:
    old = StateFile("running/.task_1.json.ab12cd34.tmp", Kind.TEMP, 10, NOW.timestamp() - 601)
    fresh = StateFile("running/.task_2.json.ab12cd34.tmp", Kind.TEMP, 10, NOW.timestamp() - 5)
    assert choose([old, fresh], in_flight=(), now=NOW, limits=Limits(14, GIB)) == [old]


def test_only_our_names_are_ours() -> None:
    assert is_temp_name(".task_7.json.k2j4x9ab.tmp") and is_temp_name(".attempts.jsonl.4242.tmp")
    assert not is_temp_name("notes.tmp") and not is_temp_name(".bashrc")
    assert is_quarantined_name("task_7.json.20261129T120000.4242") and is_quarantined_name(
        "task_7.json.20261129T120000.4242.1.reason"
    )
    assert not is_quarantined_name("keep-me.txt")
    assert run_log_of(None, "42.3.log") == (42, 3) and run_log_of("42", "3.log") == (42, 3)
    for name in ("12.3.log.bak", "a.1.log", "12.log", "1.2.3.log", "12.1.LOG", "+1.1.log", "1" * 20 + ".1.log"):
        assert run_log_of(None, name) is None, name
    assert run_log_of("42", "3.1.log") is None and run_log_of("x", "1.log") is None


def places(base: Path) -> Places:
    state = base / "state"
    return Places(state / "logs" / "tasks", state / "quarantine", (state / "running", state), state / "running")


def aged(path: Path, days: float, text: str = "output\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    moment = time.time() - days * DAY
    os.utime(path, (moment, moment))
    return path


def test_two_thousand_old_task_folders_are_pruned_to_the_ones_in_flight(tmp_path: Path) -> None:
    where = places(tmp_path)
    for task in range(1, 2001):
        aged(where.task_log_dir / str(task) / "1.log", days=20)
    aged(where.running_dir / "task_7.json", days=0, text="{}")  # a run in flight: its old log stays
    before = len(list(where.task_log_dir.iterdir()))
    removed = prune_files(where, frozenset({9}), datetime.now(UTC), Limits(14, GIB))
    after = sorted(int(p.name) for p in where.task_log_dir.iterdir())
    print(f"task folders: {before} before, {len(after)} after; {removed.bytes} bytes removed")
    assert (before, after) == (2000, [7, 9])
    assert (removed.files, removed.folders) == (1998, 1998)


def test_run_logs_of_both_layouts_go_alike_and_look_alikes_stay(tmp_path: Path) -> None:
    # 2.0.0 wrote <task>/<attempt>.log; runs now write <task>.<attempt>.log; an upgrade has both.
    where = places(tmp_path)
    tasks = where.task_log_dir
    for old in ("3/1.log", "3.2.log", "5.1.log", "4/1.log", "4.2.log"):
        aged(tasks / old, days=20)
    aged(tasks / "6.1.log", days=1)
    aged(where.running_dir / "task_4.json", days=0, text="{}")  # task 4 in flight: both its logs stay
    outside = aged(tmp_path / "precious", days=100)
    strangers = ["12.3.log.bak", "a.1.log", "12.log", "1.2.3.log", "1" * 20 + ".1.log", "12.1.log/1.log"]
    for name in strangers:
        aged(tasks / name, days=100)
    (tasks / "13.1.log").symlink_to(outside)
    assert (usage(where, (tmp_path,)).run_logs, usage(where, (tmp_path,)).task_folders) == (6, 4)

    removed = prune_files(where, frozenset(), datetime.now(UTC), Limits(14, GIB))

    left = sorted(str(p.relative_to(tasks)) for p in tasks.rglob("*") if not p.is_dir())
    assert left == sorted(["4/1.log", "4.2.log", "6.1.log", "13.1.log", *strangers])
    assert (removed.files, removed.folders) == (3, 1), "3/ left empty is removed; 4/ is in flight"
    assert outside.exists() and (tasks / "12.1.log").is_dir()


def test_the_total_size_is_bounded_oldest_first_across_both_layouts(tmp_path: Path) -> None:
    where = places(tmp_path)
    for task in range(1, 7):
        name = f"{task}/1.log" if task % 2 else f"{task}.1.log"
        aged(where.task_log_dir / name, days=(7 - task) / 24, text="x" * 400_000)
    prune_files(where, frozenset(), datetime.now(UTC), Limits(14, 1024 * 1024))
    # 2.4 MB of logs under a 1 MiB bound: the two newest (tasks 5 and 6) are what fits.
    assert sorted(p.name for p in where.task_log_dir.iterdir()) == ["5", "6.1.log"]


def test_the_total_size_is_bounded_oldest_first(tmp_path: Path) -> None:
    where = places(tmp_path)
    for task in range(1, 11):
        aged(where.task_log_dir / str(task) / "1.log", days=(11 - task) / 24, text="x" * 400_000)
    prune_files(where, frozenset(), datetime.now(UTC), Limits(14, 1024 * 1024))
    # 4 MB of logs under a 1 MiB bound: the two newest (tasks 9 and 10) are what fits.
    assert sorted(int(p.name) for p in where.task_log_dir.iterdir()) == [9, 10]


def test_links_and_strangers_are_left_alone(tmp_path: Path) -> None:
    where = places(tmp_path)
    outside = tmp_path / "precious"
    aged(outside / "1.log", days=100)
    where.task_log_dir.mkdir(parents=True)
    (where.task_log_dir / "5").symlink_to(outside)  # a task folder that is a link: not followed
    aged(where.task_log_dir / "6" / "notes.txt", days=100)  # not a run log's name
    aged(where.task_log_dir / "8" / "1.log", days=100)
    (where.task_log_dir / "8" / "2.log").symlink_to(outside / "1.log")  # a link where a log would be
    aged(where.quarantine_dir / "my-file.txt", days=100)
    aged(where.quarantine_dir / "task_3.json.20261001T120000.42", days=100)
    aged(where.quarantine_dir / "task_3.json.20261001T120000.42.reason", days=100)
    removed = prune_files(where, frozenset(), datetime.now(UTC), Limits(14, GIB))
    assert (outside / "1.log").exists()
    assert (where.task_log_dir / "6" / "notes.txt").exists()
    assert (where.task_log_dir / "8" / "2.log").is_symlink() and not (where.task_log_dir / "8" / "1.log").exists()
    assert sorted(p.name for p in where.quarantine_dir.iterdir()) == ["my-file.txt"]
    assert removed.by_kind == {"run_log": 1, "quarantined": 2}


def test_leftover_temporary_files_are_shown_then_pruned(tmp_path: Path) -> None:
    where = places(tmp_path)
    aged(where.running_dir / ".task_4.json.ab12cd34.tmp", days=1)
    aged(where.running_dir / ".task_5.json.zz12cd34.tmp", days=0)  # a write in progress
    aged(tmp_path / "state" / ".last_pass.json.q1w2e3r4.tmp", days=1)
    assert usage(where, (tmp_path / "state",)).temp_files == 3
    prune_files(where, frozenset(), datetime.now(UTC), Limits(14, GIB))
    assert usage(where, (tmp_path / "state",)).temp_files == 1
    assert (where.running_dir / ".task_5.json.zz12cd34.tmp").exists()


def test_attempt_records_of_tasks_no_longer_tried_are_forgotten(tmp_path: Path) -> None:
    book = AttemptBook(tmp_path / "attempts.jsonl", max_attempts=1, retry_base_sec=60)
    long_ago = NOW - timedelta(days=30)
    for task in (1, 2, 3):
        book.record_failure(task, "failed", long_ago)  # given up (max_attempts=1)
    book.record_failure(4, "failed", NOW - timedelta(days=1))
    book.hold_success(3)
    assert book.forget_stale(NOW, 14, busy=frozenset({2})) == [1]
    book.close()
    kept = AttemptBook(tmp_path / "attempts.jsonl", max_attempts=1, retry_base_sec=60)
    assert [task for task in (1, 2, 3, 4) if kept.record(task).failures] == [2, 3, 4], "as read back from disk"
