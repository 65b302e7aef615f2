"""The fake TinyTask's tasks and comments, and the real server's rules for them.

Ordering (priority DESC, created_at ASC, ties by insertion), parents (status recomputed from the
children, three levels at most, subtasks inherit the queue), advisory blocking (computed on read,
ignored by every write), comments, transfer and signup. Both the HTTP fake and the in-memory
client work on this one class, so they cannot disagree about the contract.

Rows are kept as plain dicts and every read returns fresh copies rendered as the server sends them
(timestamps as text; `legacy` drops the fields tinytask-mcp 1.0 never had).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tinyscheduler.core.standin import FAKE_SERVER_FIELD, FAKE_SERVER_VALUE

STATUSES: tuple[str, ...] = ("idle", "working", "complete")
MAX_DEPTH = 3
NEW_SERVER_FIELDS = ("parent_task_id", "queue_name", "blocked_by_task_id", "is_currently_blocked")

Row = dict[str, Any]


class FakeError(ValueError):
    """A request the fake refuses, with the HTTP status the real server would answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Filters:
    assigned_to: str | None = None
    status: tuple[str, ...] = ()
    exclude_status: tuple[str, ...] = ()
    queue_name: str | None = None
    parent_task_id: int | None = None
    top_level_only: bool = False
    limit: int = 0  # 0 means no limit, as on the real server
    offset: int = 0

    def admit(self, row: Row) -> bool:
        return (
            row["archived_at"] is None
            and (self.assigned_to is None or row["assigned_to"] == self.assigned_to)
            and (not self.status or row["status"] in self.status)
            and row["status"] not in self.exclude_status
            and (self.queue_name is None or row["queue_name"] == self.queue_name)
            and (self.parent_task_id is None or row["parent_task_id"] == self.parent_task_id)
            and not (self.top_level_only and row["parent_task_id"] is not None)
        )


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def health_document(legacy: bool, uptime: float, sessions: int, *, marked: bool = True) -> dict[str, Any]:
    """What `GET /health` answers; `marked` adds the field the real server never sends, which lets
    the scheduler run the stand-in goose against the fake (core.standin)."""
    now = datetime.now(UTC)
    health: dict[str, Any] = {
        "status": "healthy",
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
        "database": "connected",
        "uptime": round(uptime, 3),
    }
    if not legacy:  # tinytask-mcp 1.0 reported neither
        health["transport"] = "streamable-http"
        health["sessionCount"] = sessions
    if marked:
        health[FAKE_SERVER_FIELD] = FAKE_SERVER_VALUE
    return health


def _order(row: Row) -> tuple[float, datetime, int]:
    # priority DESC, created_at ASC; ids grow with insertion, so they break ties the same way
    return (-row["priority"], row["created_at"], row["id"])


def _sorted(rows: Iterable[Row]) -> list[Row]:
    return sorted(rows, key=_order)


class Store:
    """Every task and comment, behind one lock; returns fresh dicts, never its own."""

    def __init__(self, legacy: bool = False) -> None:
        self.legacy = legacy
        self.lock = threading.RLock()
        self._tasks: dict[int, Row] = {}
        self._comments: dict[int, list[Row]] = {}
        self._next_task_id = 1
        self._next_comment_id = 1

    # -- rendering ---------------------------------------------------------------------------

    def _stamp(self, value: datetime | None) -> str | None:
        if value is None:
            return None
        return value.strftime("%Y-%m-%d %H:%M:%S" if self.legacy else "%Y-%m-%dT%H:%M:%SZ")

    def _blocked(self, row: Row) -> bool:
        blocker = self._tasks.get(row["blocked_by_task_id"]) if row["blocked_by_task_id"] else None
        return blocker is not None and blocker["status"] != "complete"

    def _render(self, row: Row, relations: bool = False) -> Row:
        out = dict(row)
        out["tags"] = list(row["tags"])
        out["is_currently_blocked"] = self._blocked(row)
        for key in ("created_at", "updated_at", "archived_at"):
            out[key] = self._stamp(row[key])
        if self.legacy:
            for key in NEW_SERVER_FIELDS:
                del out[key]
        if relations:
            out["comments"] = self.comments(row["id"])
            out["links"] = []
        return out

    def _render_comment(self, comment: Row) -> Row:
        out = dict(comment)
        out["created_at"] = self._stamp(comment["created_at"])
        out["updated_at"] = self._stamp(comment["updated_at"])
        return out

    # -- reads -------------------------------------------------------------------------------

    def get(self, task_id: int) -> Row | None:
        """One task with its comments and links, as `GET /tasks/{id}` shows it."""
        with self.lock:
            row = self._tasks.get(task_id)
            return None if row is None else self._render(row, relations=True)

    def comments(self, task_id: int) -> list[Row]:
        with self.lock:
            return [self._render_comment(c) for c in self._comments.get(task_id, [])]

    def all(self) -> list[Row]:
        with self.lock:
            return [self._render(row) for row in _sorted(self._tasks.values())]

    def select(self, filters: Filters) -> list[Row]:
        """The tasks a filtered listing shows, in server order."""
        with self.lock:
            rows = _sorted(row for row in self._tasks.values() if filters.admit(row))[filters.offset :]
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

    def agent_queue(self, agent: str) -> list[Row]:
        with self.lock:
            rows = [r for r in self._live() if r["assigned_to"] == agent and r["status"] in ("idle", "working")]
            return [self._render(r) for r in _sorted(rows)]

    def _live(self) -> list[Row]:
        return [r for r in self._tasks.values() if r["archived_at"] is None]

    def _row(self, task_id: int) -> Row:
        row = self._tasks.get(task_id)
        if row is None:
            raise FakeError(404, f"Task not found: {task_id}")
        return row

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
    ) -> Row:
        if not title or not title.strip():
            raise FakeError(400, "Task title is required")
        if status not in STATUSES:
            raise FakeError(400, f"Invalid status: {status}")
        with self.lock:
            if parent_task_id is not None:
                parent = self._tasks.get(parent_task_id)
                if parent is None:
                    raise FakeError(400, f"Parent task not found: {parent_task_id}")
                if _depth(self._tasks, parent_task_id) >= MAX_DEPTH:
                    raise FakeError(400, "Maximum nesting depth (3 levels) exceeded")
                if queue_name is None:
                    queue_name = parent["queue_name"]  # subtasks inherit the parent's queue
            if blocked_by_task_id is not None and blocked_by_task_id not in self._tasks:
                raise FakeError(400, f"Blocking task not found: {blocked_by_task_id}")
            now = utcnow()
            row: Row = {
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

    def update(self, task_id: int, changes: dict[str, Any]) -> Row:
        """Partial update; `changes` holds only the keys the caller sent, already type-checked."""
        with self.lock:
            row = self._row(task_id)
            _check_update(self._tasks, task_id, changes)
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
            row["updated_at"] = utcnow()
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
            parent["updated_at"] = utcnow()
            if parent["parent_task_id"] is not None:
                self._recompute_parent(parent["parent_task_id"])

    def add_comment(self, task_id: int, content: str, created_by: str | None) -> Row:
        with self.lock:
            self._row(task_id)
            return self._render_comment(self._comment(task_id, content, created_by))

    def _comment(self, task_id: int, content: str, created_by: str | None) -> Row:
        now = utcnow()
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

    def signup(self, agent: str) -> Row | None:
        """The agent's best idle task, now working; blocking is ignored, as on the real server."""
        with self.lock:
            idle = [r for r in self._live() if r["assigned_to"] == agent and r["status"] == "idle"]
            if not idle:
                return None
            row = _sorted(idle)[0]
            row["status"] = "working"
            row["updated_at"] = utcnow()
            if row["parent_task_id"] is not None:
                self._recompute_parent(row["parent_task_id"])
            return self._render(row, relations=True)

    def transfer(self, task_id: int, new_agent: str, from_agent: str | None, note: str | None) -> Row:
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
            row["updated_at"] = utcnow()
            if row["parent_task_id"] is not None:
                self._recompute_parent(row["parent_task_id"])
            comment = None
            if note and note.strip():
                comment = self._render_comment(self._comment(task_id, note.strip(), from_agent or previous))
            return {"task": self._render(row), "comment": comment}


# -- the tree and blocking rules, over the raw rows -------------------------------------------------


def _depth(tasks: dict[int, Row], task_id: int) -> int:
    depth, row = 0, tasks.get(task_id)
    while row is not None and row["parent_task_id"] is not None and depth < 10:
        depth += 1
        row = tasks.get(row["parent_task_id"])
    return depth


def _descendants(tasks: dict[int, Row], task_id: int) -> set[int]:
    found: set[int] = set()
    frontier = [task_id]
    while frontier:
        current = frontier.pop()
        for row in tasks.values():
            if row["parent_task_id"] == current and row["id"] not in found:
                found.add(row["id"])
                frontier.append(row["id"])
    return found


def _check_update(tasks: dict[int, Row], task_id: int, changes: dict[str, Any]) -> None:
    """An update's checks, in the real server's order and wording; raises FakeError."""
    if "status" in changes and changes["status"] not in STATUSES:
        raise FakeError(400, f"Invalid status: {changes['status']}")
    parent_id = changes.get("parent_task_id")
    if parent_id is not None:
        if parent_id == task_id:
            raise FakeError(400, "Task cannot be its own parent")
        if parent_id not in tasks:
            raise FakeError(404, f"Parent task not found: {parent_id}")
        if parent_id in _descendants(tasks, task_id):
            raise FakeError(400, "Cannot create circular parent-child relationship")
        if _depth(tasks, parent_id) >= MAX_DEPTH:
            raise FakeError(400, "Maximum nesting depth (3 levels) exceeded")
    blocker_id = changes.get("blocked_by_task_id")
    if blocker_id is not None:
        if blocker_id == task_id:
            raise FakeError(400, "Task cannot be blocked by itself")
        blocker = tasks.get(blocker_id)
        if blocker is None:
            raise FakeError(404, f"Blocking task not found: {blocker_id}")
        if blocker["blocked_by_task_id"] == task_id:
            raise FakeError(400, "Cannot create circular blocking relationship")
    if "title" in changes and not (changes["title"] or "").strip():
        raise FakeError(400, "Task title cannot be empty")


class Seeding:
    """Seed tasks and read them back as the server stores them; shared by the fake and the
    in-memory client, which both keep their tasks in `store`."""

    store: Store

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
    ) -> Row:
        """Store a task as the server would (validation, inheritance); raises FakeError."""
        return self.store.create(
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

    def task(self, task_id: int) -> Row:
        task = self.store.get(task_id)
        if task is None:
            raise KeyError(task_id)
        return task

    def tasks(self) -> list[Row]:
        return self.store.all()

    def comments(self, task_id: int) -> list[Row]:
        return self.store.comments(task_id)
