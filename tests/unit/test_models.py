"""TinyTask task models at the boundary: what the current and the old server send parses; anything
malformed becomes a TaskProblem naming task and field, and parsing never raises."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyscheduler.adapters.tinytask.models import (
    TaskBatch,
    TaskCache,
    TaskProblem,
    parse_task,
    parse_tasks,
    parse_timestamp,
)
from tinyscheduler.core.tasks import FAILED_TAG, Task

# A task exactly as tinytask 2.x sends it from GET /api/v1/tasks/{id} (comments and links included).
CURRENT = json.loads("""
{
  "id": 42,
  "title": "Fix the login page",
  "description": "It 500s on empty passwords",
  "status": "idle",
  "assigned_to": "dev-1",
  "previous_assigned_to": "Product Owner",
  "created_by": "alice",
  "priority": -2,
  "tags": ["bug", "tinyscheduler:failed"],
  "parent_task_id": 7,
  "queue_name": "dev",
  "blocked_by_task_id": 41,
  "is_currently_blocked": true,
  "created_at": "2026-11-26T06:37:12Z",
  "updated_at": "2026-11-26T07:00:00Z",
  "archived_at": null,
  "comments": [{"id": 1, "content": "hi"}],
  "links": []
}
""")

# A task as tinytask-mcp 1.0 sends it: no queue, parent or blocking fields, SQLite timestamps.
OLD = {
    "id": 3,
    "title": "Write docs",
    "description": None,
    "status": "working",
    "assigned_to": "qa.2",
    "created_by": "bob",
    "priority": 5,
    "tags": [],
    "created_at": "2026-11-26 06:37:12",
    "updated_at": "2026-11-26 06:40:00",
}


def test_current_server_task_parses() -> None:
    task = parse_task(CURRENT, "GET /tasks/42")
    assert isinstance(task, Task)
    assert (task.id, task.status, task.assigned_to, task.priority, task.queue_name) == (42, "idle", "dev-1", -2, "dev")
    assert task.tags == ("bug", FAILED_TAG) and task.failed_for_good
    assert (task.parent_task_id, task.blocked_by_task_id, task.is_currently_blocked) == (7, 41, True)
    assert task.previous_assigned_to == "Product Owner"  # free text that is never acted on
    assert task.created_at == datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)
    assert task.updated_at == datetime(2026, 11, 26, 7, 0, 0, tzinfo=UTC)


def test_old_server_task_parses() -> None:
    task = parse_task(OLD, "list_tasks")
    assert isinstance(task, Task)
    assert (task.id, task.status, task.assigned_to, task.priority) == (3, "working", "qa.2", 5)
    assert task.queue_name is None and task.parent_task_id is None
    assert task.blocked_by_task_id is None and task.is_currently_blocked is False
    assert task.created_at == datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)
    assert task.created_at.tzinfo is not None  # comparable with the current server's timestamps
    assert task.updated_at == datetime(2026, 11, 26, 6, 40, 0, tzinfo=UTC)
    assert task.tags == () and not task.failed_for_good


def test_minimal_task_gets_defaults() -> None:
    task = parse_task({"id": 1, "status": "idle"}, "x")
    assert isinstance(task, Task)
    assert task.priority == 0 and task.tags == () and task.assigned_to is None
    assert task.created_at == datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"assigned_to": ""}, None),  # empty means nobody
        ({"queue_name": ""}, None),
        ({"tags": None}, ()),
    ],
)
def test_empty_values_mean_none(changes: dict[str, Any], expected: Any) -> None:
    task = parse_task(CURRENT | changes, "x")
    assert isinstance(task, Task)
    assert getattr(task, next(iter(changes))) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T06:37:12Z", datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)),
        ("2026-11-26 06:37:12", datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)),
        ("2026-11-26T06:37:12.500Z", datetime(2026, 11, 26, 6, 37, 12, 500000, tzinfo=UTC)),
        ("2026-11-26T08:37:12+02:00", datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)),
        (" 2026-11-26 06:37:12 ", datetime(2026, 11, 26, 6, 37, 12, tzinfo=UTC)),
    ],
)
def test_timestamps(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


MALFORMED: list[tuple[str, dict[str, Any], Any, str]] = [
    # id, changes to CURRENT, task id the problem names, field it names
    ("string id", {"id": "42"}, "42", "id"),
    ("float id", {"id": 42.0}, 42.0, "id"),
    ("missing id", {"id": None}, None, "id"),
    ("negative id", {"id": -5}, -5, "id"),  # measured: its lease went round quarantine and back
    ("zero id", {"id": 0}, 0, "id"),
    ("priority high", {"priority": "high"}, 42, "priority"),
    ("boolean priority", {"priority": True}, 42, "priority"),
    ("bad status", {"status": "done"}, 42, "status"),
    ("missing status", {"status": None}, 42, "status"),
    ("assignee with spaces", {"assigned_to": "dev 1"}, 42, "assigned_to"),
    ("assignee too long", {"assigned_to": "a" * 65}, 42, "assigned_to"),
    ("assignee not a string", {"assigned_to": 5}, 42, "assigned_to"),
    ("queue with a slash", {"queue_name": "../etc"}, 42, "queue_name"),
    ("tags not a list", {"tags": "bug"}, 42, "tags"),
    ("bad timestamp", {"created_at": "yesterday"}, 42, "created_at"),
    ("epoch timestamp", {"created_at": 1795672800}, 42, "created_at"),
    ("blocker not an int", {"blocked_by_task_id": "41"}, 42, "blocked_by_task_id"),
    ("blocked flag not a bool", {"is_currently_blocked": "perhaps"}, 42, "is_currently_blocked"),
]


@pytest.mark.parametrize(("changes", "task_id", "field"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_task_is_a_problem_naming_task_and_field(changes: dict[str, Any], task_id: Any, field: str) -> None:
    raw = {k: v for k, v in (CURRENT | changes).items() if v is not None or k not in ("id", "status")}
    problem = parse_task(raw, "GET /api/v1/queues/dev/tasks")
    assert isinstance(problem, TaskProblem)
    assert problem.task_id == task_id
    assert problem.field == field
    assert problem.message
    line = str(problem)
    assert line.startswith("GET /api/v1/queues/dev/tasks: task ")
    assert f"field {field}" in line and repr(task_id) in line


@pytest.mark.parametrize("raw", ["task", 42, None, [1, 2], True])
def test_non_object_is_a_problem(raw: Any) -> None:
    problem = parse_task(raw, "list")
    assert isinstance(problem, TaskProblem)
    assert (problem.task_id, problem.field) == (None, "(task)")
    assert "expected a JSON object" in problem.message


def test_parse_tasks_keeps_the_good_in_order_and_reports_the_bad() -> None:
    raw = [CURRENT, {"id": "x", "status": "idle"}, OLD, "junk", CURRENT | {"id": 43, "priority": "high"}]
    batch = parse_tasks(raw, "list")
    assert [t.id for t in batch.tasks] == [42, 3]
    assert [(p.task_id, p.field) for p in batch.problems] == [("x", "id"), (None, "(task)"), (43, "priority")]


@pytest.mark.parametrize("raw", [{"tasks": []}, "[]", None, 5])
def test_parse_tasks_of_a_non_list_is_one_problem(raw: Any) -> None:
    batch = parse_tasks(raw, "list")
    assert batch.tasks == ()
    (problem,) = batch.problems
    assert problem.field == "(list)" and "expected a JSON array" in problem.message


def test_a_row_listed_again_unchanged_is_not_validated_again() -> None:
    cache = TaskCache()
    bad = {"id": "x", "status": "idle"}
    first = parse_tasks([CURRENT, OLD, bad], "list", cache)
    again = parse_tasks([dict(CURRENT), OLD | {"priority": 6}, bad], "list", cache)

    assert again.tasks[0] is first.tasks[0], "the same row: the same task, no validation"
    assert again.tasks[1] is not first.tasks[1] and again.tasks[1].priority == 6, "a changed row is parsed"
    assert [p.task_id for p in again.problems] == ["x"], "a malformed row is said every time"
    assert again == parse_tasks([CURRENT, OLD | {"priority": 6}, bad], "list"), "same result as without it"


def test_rows_no_recent_list_showed_are_forgotten() -> None:
    cache = TaskCache()
    first = parse_tasks([CURRENT], "list", cache)
    for _ in range(2 * TaskCache.KEEP_LISTS):
        parse_tasks([OLD], "list", cache)
    assert parse_tasks([CURRENT], "list", cache).tasks[0] is not first.tasks[0]


def test_parse_tasks_of_an_empty_list() -> None:
    assert parse_tasks([], "list") == TaskBatch((), ())


def test_task_is_immutable() -> None:
    task = parse_task(CURRENT, "x")
    assert isinstance(task, Task)
    with pytest.raises(dataclasses.FrozenInstanceError):
        task.priority = 9  # type: ignore[misc]


# --- fuzz: never raises ----------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TASK_KEYS = [*CURRENT, "extra"]
TASKISH = st.dictionaries(st.sampled_from(TASK_KEYS), JSON, max_size=len(TASK_KEYS)).map(lambda d: CURRENT | d)


@given(st.lists(TASKISH | JSON, max_size=5) | JSON)
@settings(max_examples=150, deadline=None)
def test_parse_tasks_never_raises(raw: Any) -> None:
    batch = parse_tasks(raw, "fuzz")
    if isinstance(raw, list):
        assert len(batch.tasks) + len(batch.problems) == len(raw)
        for problem in batch.problems:
            assert problem.field and problem.message and str(problem)
    else:
        assert batch.tasks == () and len(batch.problems) == 1
