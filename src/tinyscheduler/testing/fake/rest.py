"""The fake TinyTask's REST routes under `/api/v1`: query and body checks in the real server's order
and wording, then the store. `answer()` is the whole REST API as one function, so the HTTP server
and the in-memory client serve exactly the same thing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from tinyscheduler.testing.fake import js
from tinyscheduler.testing.fake.store import STATUSES, FakeError, Filters, Store

PREFIX = "/api/v1"

_PATCHABLE = (
    "title",
    "description",
    "status",
    "assigned_to",
    "priority",
    "tags",
    "parent_task_id",
    "queue_name",
    "blocked_by_task_id",
)


def answer(store: Store, method: str, path: str, query: str, raw_body: bytes) -> tuple[int, Any] | None:
    """(HTTP status, JSON payload) of a REST request, None when no route matches; raises FakeError."""
    for route_method, pattern, handler in _ROUTES:
        match = pattern.fullmatch(path)
        if match and route_method == method:
            return handler(_Call(store, match, query, raw_body))
    return None


# -- query strings and bodies --------------------------------------------------------------------


def _query(raw: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        if key in params:
            raise FakeError(400, f"Query parameter {key} must be given at most once")
        params[key] = value
    return params


def json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise FakeError(400, "Invalid JSON body") from None
    if not isinstance(data, dict):
        raise FakeError(400, "Request body must be a JSON object")
    return data


def _status_list(value: str | None, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    for part in parts:
        if part not in STATUSES:
            raise FakeError(400, f'{name} must be one of: {", ".join(STATUSES)} (got: "{part}")')
    return parts


def _non_negative(value: str | None, name: str) -> int:
    if value is None:
        return 0
    number = js.number(value)  # so "" is 0 and "1e1" is 10, as on the real server
    if isinstance(number, float) or number < 0:
        raise FakeError(400, f"{name} must be a non-negative integer")
    return number


def _flag(value: str | None, name: str) -> bool:
    if value not in (None, "true", "false"):
        raise FakeError(400, f"{name} must be 'true' or 'false'")
    return value == "true"


def _filters(params: dict[str, str], queue_name: str | None = None) -> Filters:
    # Checked in the real server's order; include_archived is validated but has nothing to show.
    status = _status_list(params.get("status"), "status")
    exclude_status = _status_list(params.get("exclude_status"), "exclude_status")
    limit = _non_negative(params.get("limit"), "limit")
    offset = _non_negative(params.get("offset"), "offset")
    _flag(params.get("include_archived"), "include_archived")
    top_level_only = _flag(params.get("exclude_subtasks"), "exclude_subtasks")
    parent = params.get("parent_task_id")
    parent_id = None if parent in (None, "null") else js.parse_int(parent)
    if parent is not None and parent != "null" and parent_id is None:
        raise FakeError(400, "parent_task_id must be an integer or null")
    return Filters(
        assigned_to=params.get("assigned_to"),
        status=status,
        exclude_status=exclude_status,
        queue_name=queue_name if queue_name is not None else params.get("queue_name"),
        parent_task_id=parent_id,
        top_level_only=top_level_only or parent == "null",
        limit=limit,
        offset=offset,
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_task_body(body: dict[str, Any], patch: bool) -> None:
    """The REST layer's type checks, in the real server's order and wording."""
    if "title" in body:
        if not isinstance(body["title"], str):
            raise FakeError(400, "title must be a string")
        if not body["title"].strip():
            raise FakeError(400, "Task title is required")
    elif not patch:
        raise FakeError(400, "Task title is required")
    if "priority" in body and not _is_int(body["priority"]):
        raise FakeError(400, "priority must be a finite integer")
    tags = body.get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise FakeError(400, "tags must be an array of strings")
    if "status" in body and body["status"] not in STATUSES:
        shown = body["status"] if isinstance(body["status"], str) else json.dumps(body["status"])
        raise FakeError(400, f"Invalid status: {shown}. Must be one of: {', '.join(STATUSES)}")
    for key in ("description", "assigned_to", "created_by", "queue_name"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise FakeError(400, f"{key} must be a string")
    for key in ("parent_task_id", "blocked_by_task_id"):
        if body.get(key) is not None and not _is_int(body[key]):
            raise FakeError(400, f"{key} must be an integer")
    if not patch and not (isinstance(body.get("created_by"), str) and body["created_by"].strip()):
        raise FakeError(400, "created_by is required")


# -- routes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    """One REST request as a route handler sees it; query and body are parsed only when asked."""

    store: Store
    match: re.Match[str]
    query_string: str
    raw_body: bytes

    def param(self, name: str) -> str:
        return unquote(self.match[name])

    def query(self) -> dict[str, str]:
        return _query(self.query_string)

    def body(self) -> dict[str, Any]:
        return json_body(self.raw_body)

    def task_id(self) -> int:
        task_id = js.parse_int(self.match["id"])
        if task_id is None:
            raise FakeError(400, f"Invalid task ID: {self.match['id']}")
        return task_id


def _get_tasks(call: _Call) -> tuple[int, Any]:
    return 200, call.store.select(_filters(call.query()))


def _post_task(call: _Call) -> tuple[int, Any]:
    data = call.body()
    _check_task_body(data, patch=False)
    # The real REST create never passes `status` on: new tasks are always idle.
    task = call.store.create(
        title=data["title"],
        created_by=data["created_by"],
        assigned_to=data.get("assigned_to"),
        priority=data.get("priority", 0),
        queue_name=data.get("queue_name"),
        blocked_by_task_id=data.get("blocked_by_task_id"),
        tags=data.get("tags") or (),
        parent_task_id=data.get("parent_task_id"),
        description=data.get("description"),
    )
    return 201, task


def _get_task(call: _Call) -> tuple[int, Any]:
    task_id = call.task_id()
    task = call.store.get(task_id)
    if task is None:
        raise FakeError(404, f"Task {task_id} not found")
    return 200, task


def _patch_task(call: _Call) -> tuple[int, Any]:
    task_id = call.task_id()
    data = call.body()
    _check_task_body(data, patch=True)
    return 200, call.store.update(task_id, {k: data[k] for k in _PATCHABLE if k in data})


def _post_comment(call: _Call) -> tuple[int, Any]:
    task_id = call.task_id()
    data = call.body()
    if not isinstance(data.get("content"), str):
        raise FakeError(400, "content is required and must be a string")
    created_by = data.get("created_by")
    return 201, call.store.add_comment(task_id, data["content"], created_by if isinstance(created_by, str) else None)


def _post_transfer(call: _Call) -> tuple[int, Any]:
    task_id = call.task_id()
    data = call.body()
    # The real server's only body shape: ownership checked, comment required, each checked
    # before the task is looked up.
    for key in ("current_agent", "new_agent", "comment"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise FakeError(400, f"{key} is required and must be a non-empty string")
    return 200, call.store.transfer(task_id, data["new_agent"], data["current_agent"], data["comment"])


def _get_queues(call: _Call) -> tuple[int, Any]:
    return 200, call.store.queues()


def _get_queue_tasks(call: _Call) -> tuple[int, Any]:
    name = call.param("q").strip()
    if not name:
        raise FakeError(400, "Queue name cannot be empty")
    return 200, call.store.select(_filters(call.query(), queue_name=name))


def _get_queue_stats(call: _Call) -> tuple[int, Any]:
    return 200, call.store.queue_stats(call.param("q"))


def _get_agent_queue(call: _Call) -> tuple[int, Any]:
    return 200, call.store.agent_queue(call.param("a"))


def _post_signup(call: _Call) -> tuple[int, Any]:
    task = call.store.signup(call.param("a"))
    if task is None:
        raise FakeError(404, "No idle tasks available for signup")
    return 200, task


_ROUTES: list[tuple[str, re.Pattern[str], Callable[[_Call], tuple[int, Any]]]] = [
    (method, re.compile(PREFIX + pattern), handler)
    for method, pattern, handler in [
        ("GET", r"/tasks", _get_tasks),
        ("POST", r"/tasks", _post_task),
        ("GET", r"/tasks/(?P<id>[^/]+)", _get_task),
        ("PATCH", r"/tasks/(?P<id>[^/]+)", _patch_task),
        ("POST", r"/tasks/(?P<id>[^/]+)/comments", _post_comment),
        ("POST", r"/tasks/(?P<id>[^/]+)/transfer", _post_transfer),
        ("GET", r"/queues", _get_queues),
        ("GET", r"/queues/(?P<q>[^/]+)/tasks", _get_queue_tasks),
        ("GET", r"/queues/(?P<q>[^/]+)/stats", _get_queue_stats),
        ("GET", r"/agents/(?P<a>[^/]+)/queue", _get_agent_queue),
        ("POST", r"/agents/(?P<a>[^/]+)/signup", _post_signup),
    ]
]
