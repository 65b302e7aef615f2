"""An in-memory TinyTask-compatible server for the tests and the demo.

Follows the contract in the project's TinyTask reference, quirks included (limit=0 means "all",
`assigned_to=` matches nothing, REST create ignores `status`, signup ignores blocking, parent
status recomputed from children). Stdlib only, one process, bound to 127.0.0.1.

    with FakeTinyTask() as fake:
        fake.create_task("build", assigned_to="dev", queue_name="dev")
        httpx.get(f"{fake.url}/api/v1/tasks")

`legacy=True` plays the old tinytask-mcp 1.0: no REST, only the legacy SSE MCP transport, no
queue/parent/blocking fields, timestamps as `YYYY-MM-DD HH:MM:SS`.
"""

from __future__ import annotations

import argparse
import json
import queue
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

STATUSES: tuple[str, ...] = ("idle", "working", "complete")
_MAX_DEPTH = 3
_KEEPALIVE_SECONDS = 15.0
_NEW_SERVER_FIELDS = ("parent_task_id", "queue_name", "blocked_by_task_id", "is_currently_blocked")


class FakeError(ValueError):
    """A request the fake refuses, with the HTTP status the real server would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class _Filters:
    assigned_to: str | None = None
    status: tuple[str, ...] = ()
    exclude_status: tuple[str, ...] = ()
    queue_name: str | None = None
    parent_task_id: int | None = None
    top_level_only: bool = False
    limit: int = 0  # 0 means no limit, as on the real server
    offset: int = 0


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Store:
    """Every task and comment, behind one lock; returns fresh dicts, never its own."""

    def __init__(self, legacy: bool) -> None:
        self.legacy = legacy
        self.lock = threading.RLock()
        self._tasks: dict[int, dict[str, Any]] = {}
        self._comments: dict[int, list[dict[str, Any]]] = {}
        self._next_task_id = 1
        self._next_comment_id = 1

    # -- rendering ---------------------------------------------------------------------------

    def _stamp(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        return value.strftime("%Y-%m-%d %H:%M:%S" if self.legacy else "%Y-%m-%dT%H:%M:%SZ")

    def _blocked(self, row: dict[str, Any]) -> bool:
        blocker = self._tasks.get(row["blocked_by_task_id"]) if row["blocked_by_task_id"] else None
        return blocker is not None and blocker["status"] != "complete"

    def _render(self, row: dict[str, Any], relations: bool = False) -> dict[str, Any]:
        out = dict(row)
        out["tags"] = list(row["tags"])
        out["is_currently_blocked"] = self._blocked(row)
        for key in ("created_at", "updated_at", "archived_at"):
            out[key] = self._stamp(row[key])
        if self.legacy:
            for key in _NEW_SERVER_FIELDS:
                del out[key]
        if relations:
            out["comments"] = self.comments(row["id"])
            out["links"] = []
        return out

    def _render_comment(self, comment: dict[str, Any]) -> dict[str, Any]:
        out = dict(comment)
        out["created_at"] = self._stamp(comment["created_at"])
        out["updated_at"] = self._stamp(comment["updated_at"])
        return out

    @staticmethod
    def _order(row: dict[str, Any]) -> tuple[float, datetime, int]:
        # priority DESC, created_at ASC; ids grow with insertion, so they break ties the same way
        return (-row["priority"], row["created_at"], row["id"])

    def _sorted(self, rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(rows, key=self._order)

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: int) -> dict[str, Any] | None:
        """One task with its comments and links, as `GET /tasks/{id}` shows it."""
        with self.lock:
            row = self._tasks.get(task_id)
            return None if row is None else self._render(row, relations=True)

    def comments(self, task_id: int) -> list[dict[str, Any]]:
        with self.lock:
            return [self._render_comment(c) for c in self._comments.get(task_id, [])]

    def all(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._render(row) for row in self._sorted(self._tasks.values())]

    def list(self, filters: _Filters) -> list[dict[str, Any]]:
        with self.lock:
            rows = [
                row
                for row in self._tasks.values()
                if row["archived_at"] is None
                and (filters.assigned_to is None or row["assigned_to"] == filters.assigned_to)
                and (not filters.status or row["status"] in filters.status)
                and row["status"] not in filters.exclude_status
                and (filters.queue_name is None or row["queue_name"] == filters.queue_name)
                and (filters.parent_task_id is None or row["parent_task_id"] == filters.parent_task_id)
                and not (filters.top_level_only and row["parent_task_id"] is not None)
            ]
            rows = self._sorted(rows)[filters.offset :]
            if filters.limit:
                rows = rows[: filters.limit]
            return [self._render(row) for row in rows]

    def queues(self) -> list[str]:
        with self.lock:
            return sorted({r["queue_name"] for r in self._live() if r["queue_name"] is not None})

    def queue_stats(self, queue_name: str) -> dict[str, Any]:
        name = queue_name.strip()
        if not name:
            raise FakeError(400, "Queue name cannot be empty")
        with self.lock:
            rows = [r for r in self._live() if r["queue_name"] == name]
            return {
                "queue_name": name,
                "total_tasks": len(rows),
                "by_status": {s: sum(1 for r in rows if r["status"] == s) for s in STATUSES},
                "assigned": sum(1 for r in rows if r["assigned_to"] is not None),
                "unassigned": sum(1 for r in rows if r["assigned_to"] is None),
                "agents": sorted({r["assigned_to"] for r in rows if r["assigned_to"] is not None}),
            }

    def agent_queue(self, agent: str) -> list[dict[str, Any]]:
        with self.lock:
            rows = [r for r in self._live() if r["assigned_to"] == agent and r["status"] in ("idle", "working")]
            return [self._render(r) for r in self._sorted(rows)]

    def _live(self) -> list[dict[str, Any]]:
        return [r for r in self._tasks.values() if r["archived_at"] is None]

    def _row(self, task_id: int) -> dict[str, Any]:
        row = self._tasks.get(task_id)
        if row is None:
            raise FakeError(404, f"Task not found: {task_id}")
        return row

    def _depth(self, task_id: int) -> int:
        depth, row = 0, self._tasks.get(task_id)
        while row is not None and row["parent_task_id"] is not None and depth < 10:
            depth += 1
            row = self._tasks.get(row["parent_task_id"])
        return depth

    def _descendants(self, task_id: int) -> set[int]:
        found: set[int] = set()
        frontier = [task_id]
        while frontier:
            current = frontier.pop()
            for row in self._tasks.values():
                if row["parent_task_id"] == current and row["id"] not in found:
                    found.add(row["id"])
                    frontier.append(row["id"])
        return found

    # -- writes ------------------------------------------------------------------------------

    def create(
        self,
        *,
        title: str,
        created_by: str | None,
        status: str = "idle",
        assigned_to: str | None = None,
        priority: int = 0,
        queue_name: str | None = None,
        blocked_by_task_id: int | None = None,
        tags: Iterable[str] = (),
        parent_task_id: int | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        if not title or not title.strip():
            raise FakeError(400, "Task title is required")
        if status not in STATUSES:
            raise FakeError(400, f"Invalid status: {status}")
        with self.lock:
            if parent_task_id is not None:
                parent = self._tasks.get(parent_task_id)
                if parent is None:
                    raise FakeError(400, f"Parent task not found: {parent_task_id}")
                if self._depth(parent_task_id) >= _MAX_DEPTH:
                    raise FakeError(400, "Maximum nesting depth (3 levels) exceeded")
                if queue_name is None:
                    queue_name = parent["queue_name"]  # subtasks inherit the parent's queue
            if blocked_by_task_id is not None and blocked_by_task_id not in self._tasks:
                raise FakeError(400, f"Blocking task not found: {blocked_by_task_id}")
            now = _utcnow()
            row: dict[str, Any] = {
                "id": self._next_task_id,
                "title": title.strip(),
                "description": description or None,
                "status": status,
                "assigned_to": assigned_to or None,
                "previous_assigned_to": None,
                "created_by": created_by or None,
                "priority": priority,
                "tags": list(tags),
                "created_at": now,
                "updated_at": now,
                "archived_at": None,
                "parent_task_id": parent_task_id,
                "queue_name": queue_name,
                "blocked_by_task_id": blocked_by_task_id,
            }
            self._next_task_id += 1
            self._tasks[row["id"]] = row
            if parent_task_id is not None:
                self._recompute_parent(parent_task_id)
            return self._render(row)

    def update(self, task_id: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Partial update; `changes` holds only the keys the caller sent, already type-checked."""
        with self.lock:
            row = self._row(task_id)
            if "status" in changes and changes["status"] not in STATUSES:
                raise FakeError(400, f"Invalid status: {changes['status']}")
            parent_id = changes.get("parent_task_id")
            if parent_id is not None:
                if parent_id == task_id:
                    raise FakeError(400, "Task cannot be its own parent")
                if parent_id not in self._tasks:
                    raise FakeError(404, f"Parent task not found: {parent_id}")
                if parent_id in self._descendants(task_id):
                    raise FakeError(400, "Cannot create circular parent-child relationship")
                if self._depth(parent_id) >= _MAX_DEPTH:
                    raise FakeError(400, "Maximum nesting depth (3 levels) exceeded")
            blocker_id = changes.get("blocked_by_task_id")
            if blocker_id is not None:
                if blocker_id == task_id:
                    raise FakeError(400, "Task cannot be blocked by itself")
                blocker = self._tasks.get(blocker_id)
                if blocker is None:
                    raise FakeError(404, f"Blocking task not found: {blocker_id}")
                if blocker["blocked_by_task_id"] == task_id:
                    raise FakeError(400, "Cannot create circular blocking relationship")
            if "title" in changes and not (changes["title"] or "").strip():
                raise FakeError(400, "Task title cannot be empty")
            if not changes:
                return self._render(row)

            old_parent = row["parent_task_id"]
            for key, value in changes.items():
                if key == "title":
                    row["title"] = value.strip()
                elif key == "description":
                    row["description"] = value or None
                elif key == "assigned_to":
                    new = value or None  # "" unassigns too
                    if new != row["assigned_to"]:
                        row["previous_assigned_to"] = row["assigned_to"]
                    row["assigned_to"] = new
                elif key == "tags":
                    row["tags"] = list(value or [])
                else:
                    row[key] = value
            row["updated_at"] = _utcnow()
            if "status" in changes and old_parent is not None:
                self._recompute_parent(old_parent)
            if "parent_task_id" in changes:
                if old_parent is not None:
                    self._recompute_parent(old_parent)
                if row["parent_task_id"] is not None:
                    self._recompute_parent(row["parent_task_id"])
            return self._render(row)

    def _recompute_parent(self, parent_id: int) -> None:
        children = [r for r in self._live() if r["parent_task_id"] == parent_id]
        parent = self._tasks.get(parent_id)
        if not children or parent is None:
            return
        if all(c["status"] == "complete" for c in children):
            status = "complete"
        elif any(c["status"] == "working" for c in children):
            status = "working"
        else:
            status = "idle"
        if parent["status"] != status:
            parent["status"] = status
            parent["updated_at"] = _utcnow()
            if parent["parent_task_id"] is not None:
                self._recompute_parent(parent["parent_task_id"])

    def add_comment(self, task_id: int, content: str, created_by: str | None) -> dict[str, Any]:
        with self.lock:
            self._row(task_id)
            return self._render_comment(self._comment(task_id, content, created_by))

    def _comment(self, task_id: int, content: str, created_by: str | None) -> dict[str, Any]:
        now = _utcnow()
        comment = {
            "id": self._next_comment_id,
            "task_id": task_id,
            "content": content,
            "created_by": created_by or None,
            "created_at": now,
            "updated_at": now,
        }
        self._next_comment_id += 1
        self._comments.setdefault(task_id, []).append(comment)
        return comment

    def signup(self, agent: str) -> dict[str, Any] | None:
        """The agent's best idle task, now working; blocking is ignored, as on the real server."""
        with self.lock:
            idle = [r for r in self._live() if r["assigned_to"] == agent and r["status"] == "idle"]
            if not idle:
                return None
            row = self._sorted(idle)[0]
            row["status"] = "working"
            row["updated_at"] = _utcnow()
            if row["parent_task_id"] is not None:
                self._recompute_parent(row["parent_task_id"])
            return self._render(row, relations=True)

    def transfer(self, task_id: int, new_agent: str, from_agent: str | None, note: str | None) -> dict[str, Any]:
        """Hand a task to another agent: assignee changes, status back to idle, optional note."""
        with self.lock:
            row = self._row(task_id)
            if from_agent is not None and row["assigned_to"] != from_agent:
                current = row["assigned_to"] or "no one"
                raise FakeError(
                    400, f"Task {task_id} is not assigned to {from_agent} (currently assigned to: {current})"
                )
            if row["status"] not in ("idle", "working"):
                raise FakeError(
                    400,
                    f"Task {task_id} with status '{row['status']}' cannot be transferred "
                    "(only 'idle' or 'working' are allowed)",
                )
            previous = row["assigned_to"]
            row["assigned_to"] = new_agent
            row["previous_assigned_to"] = from_agent if from_agent is not None else previous
            row["status"] = "idle"
            row["updated_at"] = _utcnow()
            if row["parent_task_id"] is not None:
                self._recompute_parent(row["parent_task_id"])
            comment = None
            if note and note.strip():
                comment = self._render_comment(self._comment(task_id, note.strip(), from_agent or previous))
            return {"task": self._render(row), "comment": comment}


# -- REST --------------------------------------------------------------------------------------


def _js_parse_int(text: str) -> int | None:
    """JavaScript parseInt: a leading integer, the rest ignored ('12abc' -> 12, 'abc' -> None)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else None


_JS_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _js_number(value: Any) -> float | int:
    """JavaScript Number(value), as zod's z.coerce.number() applies it (null -> 0, "" -> 0)."""
    if value is None or isinstance(value, bool):
        return int(bool(value))
    if isinstance(value, (int, float)):
        number: float | int = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        if _JS_DECIMAL.fullmatch(text):
            number = float(text)
        elif re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            number = int(text, 16)
        else:
            return float("nan")
    else:
        return float("nan")
    if isinstance(number, float) and number.is_integer():
        return int(number)  # JSON has one number type; 3.0 is printed as 3 by the real server
    return number


def _query(raw: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in parse_qsl(raw, keep_blank_values=True):
        if key in params:
            raise FakeError(400, f"Query parameter {key} must be given at most once")
        params[key] = value
    return params


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
    number = _js_number(value)  # so "" is 0 and "1e1" is 10, as on the real server
    if isinstance(number, float) or number < 0:
        raise FakeError(400, f"{name} must be a non-negative integer")
    return number


def _flag(value: str | None, name: str) -> bool:
    if value not in (None, "true", "false"):
        raise FakeError(400, f"{name} must be 'true' or 'false'")
    return value == "true"


def _filters(params: dict[str, str], **fixed: Any) -> _Filters:
    # Checked in the real server's order; include_archived is validated but has nothing to show.
    status = _status_list(params.get("status"), "status")
    exclude_status = _status_list(params.get("exclude_status"), "exclude_status")
    limit = _non_negative(params.get("limit"), "limit")
    offset = _non_negative(params.get("offset"), "offset")
    _flag(params.get("include_archived"), "include_archived")
    top_level_only = _flag(params.get("exclude_subtasks"), "exclude_subtasks")
    parent = params.get("parent_task_id")
    parent_id = None if parent in (None, "null") else _js_parse_int(parent)
    if parent is not None and parent != "null" and parent_id is None:
        raise FakeError(400, "parent_task_id must be an integer or null")
    return _Filters(
        assigned_to=params.get("assigned_to"),
        status=status,
        exclude_status=exclude_status,
        queue_name=fixed.get("queue_name", params.get("queue_name")),
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


@dataclass(frozen=True)
class _Call:
    """One REST request as a route handler sees it; query and body are parsed only when asked."""

    fake: FakeTinyTask
    match: re.Match[str]
    query_string: str
    raw_body: bytes

    def param(self, name: str) -> str:
        return unquote(self.match[name])

    def query(self) -> dict[str, str]:
        return _query(self.query_string)

    def body(self) -> dict[str, Any]:
        return _json_body(self.raw_body)


def _task_id(text: str) -> int:
    task_id = _js_parse_int(text)
    if task_id is None:
        raise FakeError(400, f"Invalid task ID: {text}")
    return task_id


def _get_tasks(call: _Call) -> tuple[int, Any]:
    return 200, call.fake._store.list(_filters(call.query()))


def _post_task(call: _Call) -> tuple[int, Any]:
    data = call.body()
    _check_task_body(data, patch=False)
    # The real REST create never passes `status` on: new tasks are always idle.
    task = call.fake._store.create(
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
    task_id = _task_id(call.match["id"])
    task = call.fake._store.get(task_id)
    if task is None:
        raise FakeError(404, f"Task {task_id} not found")
    return 200, task


def _patch_task(call: _Call) -> tuple[int, Any]:
    task_id = _task_id(call.match["id"])
    data = call.body()
    _check_task_body(data, patch=True)
    return 200, call.fake._store.update(task_id, {k: data[k] for k in _PATCHABLE if k in data})


def _post_comment(call: _Call) -> tuple[int, Any]:
    task_id = _task_id(call.match["id"])
    data = call.body()
    if not isinstance(data.get("content"), str):
        raise FakeError(400, "content is required and must be a string")
    created_by = data.get("created_by")
    return 201, call.fake._store.add_comment(
        task_id, data["content"], created_by if isinstance(created_by, str) else None
    )


def _post_transfer(call: _Call) -> tuple[int, Any]:
    task_id = _task_id(call.match["id"])
    data = call.body()
    # The real server's only body shape: ownership checked, comment required, each checked
    # before the task is looked up.
    for key in ("current_agent", "new_agent", "comment"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise FakeError(400, f"{key} is required and must be a non-empty string")
    return 200, call.fake._store.transfer(task_id, data["new_agent"], data["current_agent"], data["comment"])


def _get_queues(call: _Call) -> tuple[int, Any]:
    return 200, call.fake._store.queues()


def _get_queue_tasks(call: _Call) -> tuple[int, Any]:
    name = call.param("q").strip()
    if not name:
        raise FakeError(400, "Queue name cannot be empty")
    return 200, call.fake._store.list(_filters(call.query(), queue_name=name))


def _get_queue_stats(call: _Call) -> tuple[int, Any]:
    return 200, call.fake._store.queue_stats(call.param("q"))


def _get_agent_queue(call: _Call) -> tuple[int, Any]:
    return 200, call.fake._store.agent_queue(call.param("a"))


def _post_signup(call: _Call) -> tuple[int, Any]:
    task = call.fake._store.signup(call.param("a"))
    if task is None:
        raise FakeError(404, "No idle tasks available for signup")
    return 200, task


_ROUTES: list[tuple[str, re.Pattern[str], Callable[[_Call], tuple[int, Any]]]] = [
    (method, re.compile(f"/api/v1{pattern}"), handler)
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


# -- MCP -----------------------------------------------------------------------------------------

_PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05", "2024-10-07")
_STATUS_ENUM = " | ".join(f"'{s}'" for s in STATUSES)


@dataclass(frozen=True)
class _Param:
    """One tool argument, validated the way the real server's zod schemas do."""

    kind: str  # string | number | nullable_number | status | statuses | status_list | strings | boolean
    description: str
    required: bool = False

    def json_schema(self) -> dict[str, Any]:
        base: dict[str, Any] = {"description": self.description}
        if self.kind in ("number", "nullable_number"):
            return {"type": "number" if self.kind == "number" else ["number", "null"], **base}
        if self.kind == "status":
            return {"type": "string", **base, "enum": list(STATUSES)}
        if self.kind in ("strings", "status_list"):
            return {"type": "array", **base, "items": {"type": "string"}}
        if self.kind == "statuses":
            return {
                "anyOf": [
                    {"type": "string", "enum": list(STATUSES)},
                    {"type": "array", "items": {"type": "string", "enum": list(STATUSES)}},
                ],
                **base,
            }
        return {"type": self.kind, **base}


def _js_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "nan" if value != value else "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


class _InvalidArguments(Exception):
    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__(json.dumps(issues, indent=2))


def _check_status(value: Any, path: list[Any], issues: list[dict[str, Any]]) -> None:
    if not isinstance(value, str):
        issues.append(
            {
                "code": "invalid_type",
                "expected": _STATUS_ENUM,
                "received": _js_type(value),
                "path": path,
                "message": f"Expected {_STATUS_ENUM}, received {_js_type(value)}",
            }
        )
    elif value not in STATUSES:
        issues.append(
            {
                "received": value,
                "code": "invalid_enum_value",
                "options": list(STATUSES),
                "path": path,
                "message": f"Invalid enum value. Expected {_STATUS_ENUM}, received '{value}'",
            }
        )


def _validate(params: dict[str, _Param], strict: bool, args: Any) -> dict[str, Any]:
    """Arguments checked and coerced like zod: every issue collected, unknown keys last."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _InvalidArguments(
            [
                {
                    "code": "invalid_type",
                    "expected": "object",
                    "received": _js_type(args),
                    "path": [],
                    "message": f"Expected object, received {_js_type(args)}",
                }
            ]
        )
    issues: list[dict[str, Any]] = []
    out: dict[str, Any] = {}

    def wrong(key: str, expected: str, value: Any) -> None:
        received = _js_type(value)
        issues.append(
            {
                "code": "invalid_type",
                "expected": expected,
                "received": received,
                "path": [key],
                "message": f"Expected {expected}, received {received}",
            }
        )

    for key, param in params.items():
        if key not in args:
            if param.required:
                expected = "number" if param.kind == "number" else param.kind
                issues.append(
                    {
                        "code": "invalid_type",
                        "expected": expected,
                        "received": "undefined",
                        "path": [key],
                        "message": "Required",
                    }
                )
            continue
        value = args[key]
        if param.kind == "number" or (param.kind == "nullable_number" and value is not None):
            number = _js_number(value)
            if number != number:
                wrong(key, "number", number)
            value = number
        elif param.kind == "string" and not isinstance(value, str):
            wrong(key, "string", value)
        elif param.kind == "boolean" and not isinstance(value, bool):
            wrong(key, "boolean", value)
        elif param.kind == "status":
            _check_status(value, [key], issues)
        elif param.kind in ("strings", "status_list"):
            if not isinstance(value, list):
                wrong(key, "array", value)
            else:
                for index, item in enumerate(value):
                    if param.kind == "status_list":
                        _check_status(item, [key, index], issues)
                    elif not isinstance(item, str):
                        issues.append(
                            {
                                "code": "invalid_type",
                                "expected": "string",
                                "received": _js_type(item),
                                "path": [key, index],
                                "message": f"Expected string, received {_js_type(item)}",
                            }
                        )
        elif param.kind == "statuses":
            items = value if isinstance(value, list) else [value]
            if not all(isinstance(item, str) and item in STATUSES for item in items):
                issues.append({"code": "invalid_union", "path": [key], "message": "Invalid input"})
        out[key] = value
    unknown = [key for key in args if key not in params]
    if strict and unknown:
        listed = ", ".join(f"'{key}'" for key in unknown)
        issues.append(
            {
                "code": "unrecognized_keys",
                "keys": unknown,
                "path": [],
                "message": f"Unrecognized key(s) in object: {listed}",
            }
        )
    if issues:
        raise _InvalidArguments(issues)
    return out


def _compact(value: Any) -> str:
    """JSON as the real server (JavaScript's JSON.stringify) puts it on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def _mcp_filters(args: dict[str, Any], queue_name: str | None) -> _Filters:
    status = args.get("status", ())
    return _Filters(
        assigned_to=args.get("assigned_to"),
        status=(status,) if isinstance(status, str) else tuple(status),
        exclude_status=tuple(args.get("exclude_status", ())),
        queue_name=queue_name,
        parent_task_id=args.get("parent_task_id"),
        top_level_only=args.get("exclude_subtasks", False),
        # The real server builds "LIMIT n OFFSET m" only for truthy numbers.
        limit=max(int(args.get("limit") or 0), 0),
        offset=max(int(args.get("offset") or 0), 0),
    )


_ToolResult = tuple[str, bool]  # text, isError


def _tool_list_tasks(store: _Store, args: dict[str, Any]) -> _ToolResult:
    tasks = store.list(_mcp_filters(args, args.get("queue_name")))
    return _pretty({"count": len(tasks), "tasks": tasks}), False


def _tool_get_queue_tasks(store: _Store, args: dict[str, Any]) -> _ToolResult:
    name = args["queue_name"].strip()
    if not name:
        return "Error retrieving queue tasks: Queue name cannot be empty", True
    tasks = store.list(_mcp_filters(args, name))
    # JSON.stringify drops the filters that were not given; include_archived is always there.
    filters = {
        key: args[key]
        for key in ("assigned_to", "status", "exclude_status", "parent_task_id", "exclude_subtasks")
        if key in args
    }
    filters["include_archived"] = args.get("include_archived") or False
    filters.update({key: args[key] for key in ("limit", "offset") if key in args})
    return _pretty({"queue_name": args["queue_name"], "count": len(tasks), "filters": filters, "tasks": tasks}), False


def _tool_get_task(store: _Store, args: dict[str, Any]) -> _ToolResult:
    task = store.get(args["id"])
    if task is None:
        return f"Task not found: {args['id']}", True
    return _pretty(task), False


def _tool_update_task(store: _Store, args: dict[str, Any]) -> _ToolResult:
    changes = {key: value for key, value in args.items() if key != "id"}
    try:
        task = store.update(args["id"], changes)
    except FakeError as exc:
        return f"Error updating task: {exc.message}", True
    return f"Task {task['id']} updated successfully\n\n{_pretty(task)}", False


def _tool_add_comment(store: _Store, args: dict[str, Any]) -> _ToolResult:
    try:
        comment = store.add_comment(args["task_id"], args["content"], args.get("created_by"))
    except FakeError as exc:
        return f"Error adding comment: {exc.message}", True
    return f"Comment added to task {args['task_id']}\n\n{_pretty(comment)}", False


def _tool_signup_for_task(store: _Store, args: dict[str, Any]) -> _ToolResult:
    task = store.signup(args["agent_name"])
    if task is None:
        return f"No idle tasks available in queue for agent: {args['agent_name']}", False
    return f"Task #{task['id']} claimed and set to working status\n\n{_pretty(task)}", False


def _tool_list_queues(store: _Store, args: dict[str, Any]) -> _ToolResult:
    queues = store.queues()
    return _pretty({"count": len(queues), "queues": queues}), False


def _tool_create_task(store: _Store, args: dict[str, Any]) -> _ToolResult:
    try:
        task = store.create(
            title=args["title"],
            created_by=args.get("created_by"),
            assigned_to=args.get("assigned_to"),
            priority=args.get("priority", 0),
            queue_name=args.get("queue_name"),
            blocked_by_task_id=args.get("blocked_by_task_id"),
            tags=args.get("tags", ()),
            parent_task_id=args.get("parent_task_id"),
            description=args.get("description"),
        )
    except FakeError as exc:
        return f"Error creating task: {exc.message}", True
    return _pretty(task), False


def _tool_move_task(store: _Store, args: dict[str, Any]) -> _ToolResult:
    try:
        result = store.transfer(args["task_id"], args["new_agent"], args["current_agent"], args["comment"])
    except FakeError as exc:
        return exc.message, True
    return _pretty(result), False


@dataclass(frozen=True)
class _Tool:
    name: str
    description: str
    params: dict[str, _Param]
    run: Callable[[_Store, dict[str, Any]], _ToolResult]
    strict: bool = True
    in_legacy: bool = True


_ID = _Param("number", "Task ID", required=True)
_NEW_SERVER_ARGS = frozenset(
    {"queue_name", "parent_task_id", "blocked_by_task_id", "exclude_status", "exclude_subtasks"}
)
_TOOLS: tuple[_Tool, ...] = (
    _Tool(
        "create_task",
        "Create a new task in the system",
        {
            "title": _Param("string", "Task title", required=True),
            "description": _Param("string", "Task description"),
            "assigned_to": _Param("string", "Agent name to assign to"),
            "created_by": _Param("string", "Agent name creating the task"),
            "priority": _Param("number", "Priority level (default: 0)"),
            "tags": _Param("strings", "Array of tags"),
            "parent_task_id": _Param("number", "Parent task ID (creates subtask)"),
            "queue_name": _Param("string", "Queue name (dev, product, qa, etc.)"),
            "blocked_by_task_id": _Param("number", "ID of task that blocks this task"),
        },
        _tool_create_task,
    ),
    _Tool(
        "update_task",
        "Update an existing task",
        {
            "id": _ID,
            "title": _Param("string", "New title"),
            "description": _Param("string", "New description"),
            "status": _Param("status", "New status"),
            "assigned_to": _Param("string", "New assignee"),
            "priority": _Param("number", "New priority"),
            "tags": _Param("strings", "New tags (replaces existing)"),
            "parent_task_id": _Param("number", "New parent task ID"),
            "queue_name": _Param("string", "New queue name"),
            "blocked_by_task_id": _Param(
                "nullable_number", "ID of task that blocks this task. Set to null to unblock."
            ),
        },
        _tool_update_task,
    ),
    _Tool("get_task", "Get a task by ID with all comments and links", {"id": _ID}, _tool_get_task),
    _Tool(
        "list_tasks",
        "List tasks with optional filters",
        {
            "assigned_to": _Param("string", "Filter by assignee"),
            "status": _Param("statuses", "Filter by status (single value or array of statuses)"),
            "exclude_status": _Param("status_list", "Exclude tasks with these statuses"),
            "limit": _Param("number", "Max results (default: 100)"),
            "offset": _Param("number", "Pagination offset"),
            "queue_name": _Param("string", "Filter by queue name"),
            "parent_task_id": _Param("number", "Filter by parent task ID"),
            "exclude_subtasks": _Param("boolean", "Exclude subtasks from results"),
            "include_archived": _Param("boolean", "Include archived tasks (the fake archives nothing)"),
        },
        _tool_list_tasks,
    ),
    _Tool(
        "signup_for_task",
        "Claim the highest priority idle task from your queue and mark it as working",
        {
            "agent_name": _Param("string", "Agent name signing up for task", required=True),
        },
        _tool_signup_for_task,
    ),
    _Tool(
        "move_task",
        "Transfer a task to another agent with status reset to idle and add handoff comment",
        {
            "task_id": _Param("number", "Task ID to transfer", required=True),
            "current_agent": _Param("string", "Current agent (for verification)", required=True),
            "new_agent": _Param("string", "Agent to transfer to", required=True),
            "comment": _Param("string", "Handoff message/context", required=True),
        },
        _tool_move_task,
    ),
    _Tool("list_queues", "List all queue names currently in use", {}, _tool_list_queues, in_legacy=False),
    _Tool(
        "get_queue_tasks",
        "Get all tasks in a queue with optional filters",
        {
            "queue_name": _Param("string", "Queue name", required=True),
            "assigned_to": _Param("string", "Filter by assignee"),
            "status": _Param("statuses", "Filter by status (single value or array of statuses)"),
            "exclude_status": _Param("status_list", "Exclude tasks with these statuses"),
            "limit": _Param("number", "Max results"),
            "offset": _Param("number", "Pagination offset"),
            "parent_task_id": _Param("number", "Filter by parent task ID"),
            "exclude_subtasks": _Param("boolean", "Exclude subtasks from results"),
            "include_archived": _Param("boolean", "Include archived tasks (the fake archives nothing)"),
        },
        _tool_get_queue_tasks,
        in_legacy=False,
    ),
    # The real add_comment schema is the one not marked strict: unknown keys are dropped.
    _Tool(
        "add_comment",
        "Add a comment to a task",
        {
            "task_id": _Param("number", "Task ID", required=True),
            "content": _Param("string", "Comment text", required=True),
            "created_by": _Param("string", "Agent name"),
        },
        _tool_add_comment,
        strict=False,
    ),
)


def _legacy_tool(tool: _Tool) -> _Tool:
    """The tinytask-mcp 1.0 shape of a tool: no queue, parent or blocking arguments."""
    params = {key: param for key, param in tool.params.items() if key not in _NEW_SERVER_ARGS}
    if "status" in params and params["status"].kind == "statuses":
        params["status"] = _Param("status", "Filter by status")
    return _Tool(tool.name, tool.description, params, tool.run, tool.strict)


class _Mcp:
    """JSON-RPC for MCP, shared by both transports; one message in, one reply (or None) out."""

    def __init__(self, store: _Store, legacy: bool) -> None:
        self.store = store
        self.legacy = legacy
        tools = [_legacy_tool(t) for t in _TOOLS if t.in_legacy] if legacy else list(_TOOLS)
        self.tools = {tool.name: tool for tool in tools}

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "id" not in message:
            return None  # notifications (e.g. notifications/initialized) and stray responses
        request_id = message["id"]
        method = message.get("method")
        params = message.get("params") or {}
        if method == "initialize":
            wanted = params.get("protocolVersion") if isinstance(params, dict) else None
            result: dict[str, Any] = {
                "protocolVersion": wanted if wanted in _PROTOCOL_VERSIONS else _PROTOCOL_VERSIONS[0],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "tinytask-mcp", "version": "1.0.0"}
                if self.legacy
                else {"name": "tinytask", "version": "2.0.0"},
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": [self._describe(tool) for tool in self.tools.values()]}
        elif method == "tools/call":
            if not isinstance(params, dict) or not isinstance(params.get("name"), str):
                return _rpc_error(request_id, -32602, "Invalid params: tools/call needs a tool name")
            result = self._call(params["name"], params.get("arguments"))
        else:
            return _rpc_error(request_id, -32601, "Method not found")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    @staticmethod
    def _describe(tool: _Tool) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "object", "properties": {k: p.json_schema() for k, p in tool.params.items()}}
        required = [k for k, p in tool.params.items() if p.required]
        if required:
            schema["required"] = required
        return {"name": tool.name, "description": tool.description, "inputSchema": schema}

    def _call(self, name: str, arguments: Any) -> dict[str, Any]:
        tool = self.tools.get(name)
        if tool is None:
            text, failed = f"Unknown tool: {name}", True
        else:
            try:
                text, failed = tool.run(self.store, _validate(tool.params, tool.strict, arguments))
            except _InvalidArguments as exc:
                text, failed = f"Error calling tool {name}: {exc}", True
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
        if failed:
            result["isError"] = True
        return result


def _rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _sse_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


# -- HTTP plumbing -----------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeTinyTask


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms stalls

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tests read `requests`, not stderr noise

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        fake._record(method, self.path)
        raw_body = self._read_body()
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        try:
            if path == "/health" and method == "GET":
                self._json(200, fake._health())
                return
            if path == "/mcp":
                self._mcp(method, parts.query, raw_body)
                return
            if path.startswith("/api/v1/") and not fake.legacy:
                for route_method, pattern, handler in _ROUTES:
                    match = pattern.fullmatch(path)
                    if match and route_method == method:
                        status, payload = handler(_Call(fake, match, parts.query, raw_body))
                        self._json(status, payload)
                        return
            self._json(404, {"error": "Not found"})
        except FakeError as exc:
            self._json(exc.status, {"error": exc.message})
        except Exception:  # a bug in the fake must still look like a server failure, not a hang
            self._json(500, {"error": "Internal server error"})

    # -- MCP transports ----------------------------------------------------------------------

    def _mcp(self, method: str, query: str, raw_body: bytes) -> None:
        fake = self.server.fake
        session_id = dict(parse_qsl(query)).get("sessionId") or self.headers.get("X-Session-Id")
        if method == "GET":
            if not fake.legacy and "text/event-stream" not in self.headers.get("Accept", ""):
                self._rpc_failure(406, -32000, "Not Acceptable: Client must accept text/event-stream")
            else:
                self._sse_stream()
        elif method == "POST" and (session_id or fake.legacy):
            self._sse_post(session_id, raw_body)
        elif method == "POST":
            self._streamable_post(raw_body)
        elif fake.legacy:
            self._json(404, {"error": "Not found"})
        else:
            self._rpc_failure(405, -32000, "Method not allowed.")

    def _rpc_failure(self, status: int, code: int, message: str) -> None:
        self._json(status, {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": None})

    def _streamable_post(self, raw_body: bytes) -> None:
        """Stateless streamable HTTP: one JSON-RPC message in, its reply as one SSE event out."""
        accept = self.headers.get("Accept", "")
        if "application/json" not in accept or "text/event-stream" not in accept:
            self._rpc_failure(
                406, -32000, "Not Acceptable: Client must accept both application/json and text/event-stream"
            )
            return
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self._rpc_failure(415, -32000, "Unsupported Media Type: Content-Type must be application/json")
            return
        try:
            message = json.loads(raw_body)
        except ValueError:
            self._rpc_failure(400, -32700, "Parse error: Invalid JSON")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._rpc_failure(400, -32700, "Parse error: Invalid JSON-RPC message")
            return
        reply = self.server.fake._mcp.handle(message)
        if reply is None:
            self._send(202, b"", None)
        else:
            self._send(200, _sse_event("message", _compact(reply)), "text/event-stream", {"Cache-Control": "no-cache"})

    def _sse_post(self, session_id: str | None, raw_body: bytes) -> None:
        """Legacy SSE transport: the POST is only acknowledged; the reply goes out on the stream."""
        fake = self.server.fake
        if not session_id:
            self._json(400, {"error": "Missing session ID"})
            return
        events = fake._session(session_id)
        if events is None:
            self._json(404, {"error": "Session not found"})
            return
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("application/json"):
            self._send(400, f"Error: Unsupported content-type: {content_type}".encode(), "text/plain")
            return
        try:
            message = json.loads(raw_body)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            self._send(400, b"Invalid message: " + raw_body, "text/plain")
            return
        reply = fake._mcp.handle(message)
        if reply is not None:
            events.put(_sse_event("message", _compact(reply)))
        self._send(202, b"Accepted", "text/plain; charset=utf-8")

    def _sse_stream(self) -> None:
        fake = self.server.fake
        session_id, events = fake._open_session()
        try:
            self.close_connection = True  # the stream has no length: it ends when the socket closes
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(_sse_event("endpoint", f"/mcp?sessionId={session_id}"))
            while True:
                try:
                    event = events.get(timeout=_KEEPALIVE_SECONDS)
                except queue.Empty:
                    event = b": keepalive\n\n"
                if event is None:  # stop()
                    break
                self.wfile.write(event)
        except OSError:
            pass  # the client went away
        finally:
            fake._close_session(session_id)

    # -- helpers -----------------------------------------------------------------------------

    def _read_body(self) -> bytes:
        # Always drain the body, so the next request on a kept-alive connection starts clean.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, _compact(payload).encode(), "application/json; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise FakeError(400, "Invalid JSON body") from None
    if not isinstance(data, dict):
        raise FakeError(400, "Request body must be a JSON object")
    return data


class FakeTinyTask:
    """A TinyTask server in a background thread; `url` is valid after `start()`.

    The tasks outlive `stop()`: starting again (same object, or a new one on the same port with
    the same seed) is how tests play a server that goes away and comes back.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, legacy: bool = False) -> None:
        self.host = host
        self.port = port
        self.legacy = legacy
        self.url = ""
        self._store = _Store(legacy)
        self._mcp = _Mcp(self._store, legacy)
        self.requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._sessions: dict[str, queue.Queue[bytes | None]] = {}
        self._sessions_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeTinyTask:
        if self._server is not None:
            raise RuntimeError("FakeTinyTask already started")
        server = _Server((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._started = time.monotonic()
        # A short poll interval keeps stop() (and so every test teardown) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-tinytask:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._sessions_lock:
            streams = list(self._sessions.values())
        for events in streams:
            events.put(None)
        # Kept-alive client connections would otherwise still be served by their handler threads.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeTinyTask:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- seeding and inspection --------------------------------------------------------------

    def create_task(
        self,
        title: str,
        *,
        created_by: str = "seed",
        status: str = "idle",
        assigned_to: str | None = None,
        priority: int = 0,
        queue_name: str | None = None,
        blocked_by_task_id: int | None = None,
        tags: Iterable[str] = (),
        parent_task_id: int | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Store a task as the server would (validation, inheritance); raises FakeError."""
        return self._store.create(
            title=title,
            created_by=created_by,
            status=status,
            assigned_to=assigned_to,
            priority=priority,
            queue_name=queue_name,
            blocked_by_task_id=blocked_by_task_id,
            tags=tags,
            parent_task_id=parent_task_id,
            description=description,
        )

    def task(self, task_id: int) -> dict[str, Any]:
        task = self._store.get(task_id)
        if task is None:
            raise KeyError(task_id)
        return task

    def tasks(self) -> list[dict[str, Any]]:
        return self._store.all()

    def comments(self, task_id: int) -> list[dict[str, Any]]:
        return self._store.comments(task_id)

    def reset_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, method: str, path: str) -> None:
        with self._requests_lock:
            self.requests.append((method, path))

    def _track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)

    def _open_session(self) -> tuple[str, queue.Queue[bytes | None]]:
        session_id, events = str(uuid.uuid4()), queue.Queue[bytes | None]()
        with self._sessions_lock:
            self._sessions[session_id] = events
        return session_id, events

    def _session(self, session_id: str) -> queue.Queue[bytes | None] | None:
        with self._sessions_lock:
            return self._sessions.get(session_id)

    def _close_session(self, session_id: str) -> None:
        with self._sessions_lock:
            self._sessions.pop(session_id, None)

    def _health(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        health: dict[str, Any] = {
            "status": "healthy",
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "database": "connected",
            "uptime": round(time.monotonic() - self._started, 3),
        }
        if not self.legacy:  # tinytask-mcp 1.0 reported neither
            health["transport"] = "streamable-http"
            health["sessionCount"] = len(self._sessions)
        return health


# -- command line ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyscheduler.testing.fake_tinytask", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", metavar="FILE.json", help="JSON array of create_task keyword arguments")
    parser.add_argument("--legacy", action="store_true", help="behave like the old tinytask-mcp 1.0")
    args = parser.parse_args(argv)

    fake = FakeTinyTask(args.host, args.port, legacy=args.legacy)
    if args.seed:
        try:
            with open(args.seed, encoding="utf-8") as handle:
                seed = json.load(handle)
        except (OSError, ValueError) as exc:
            parser.error(f"{args.seed}: {exc}")
        if not isinstance(seed, list):
            parser.error(f"{args.seed}: expected a JSON array of task objects")
        for number, entry in enumerate(seed):
            try:
                fake.create_task(**entry)
            except (TypeError, FakeError) as exc:
                parser.error(f"{args.seed}: task #{number}: {exc}")

    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    fake.start()
    print(f"listening on {fake.url}", flush=True)
    try:
        done.wait()
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
