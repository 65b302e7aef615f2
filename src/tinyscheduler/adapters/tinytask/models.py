"""What TinyTask sends, validated at the boundary.

Accepts the current server (tinytask 2.x) and the old one (tinytask-mcp 1.0: no queue, parent or
blocking fields, timestamps as `YYYY-MM-DD HH:MM:SS`). A task that does not fit is reported as a
`TaskProblem` naming task and field; it never aborts a pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
)

from tinyscheduler.core.tasks import NAME_PATTERN, Status, Task


def parse_timestamp(value: Any) -> datetime:
    """Both server formats, always as an aware UTC datetime."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"expected a timestamp string, got {type(value).__name__}")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)  # also takes 'YYYY-MM-DD HH:MM:SS'
    except ValueError:
        raise ValueError(f"expected ISO 8601 or 'YYYY-MM-DD HH:MM:SS', got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class TaskRecord(BaseModel):
    """One task as the server sends it, validated; `to_task()` gives the core's plain value."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    #: TinyTask numbers tasks from 1; anything else (a misbehaving server) names no file or lease.
    id: StrictInt = Field(ge=1)
    title: str = ""
    description: str | None = None
    status: Status
    assigned_to: str | None = None
    previous_assigned_to: str | None = None
    created_by: str | None = None
    priority: StrictInt = 0
    tags: tuple[str, ...] = ()
    parent_task_id: StrictInt | None = None
    queue_name: str | None = None
    blocked_by_task_id: StrictInt | None = None
    is_currently_blocked: bool = False
    created_at: datetime = Field(default_factory=lambda: datetime(1970, 1, 1, tzinfo=UTC))
    updated_at: datetime | None = None

    @field_validator("created_at", "updated_at", mode="before")
    @classmethod
    def _timestamp(cls, value: Any) -> Any:
        return None if value is None else parse_timestamp(value)

    @field_validator("assigned_to", "queue_name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> Any:
        # The server stores free text; the scheduler only acts on names it can put in a file name
        # and a command line, so anything else marks the task as not ours to touch.
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise ValueError(f"expected a name of 1-64 letters, digits, '_', '.', '-', got {value!r}")
        return value

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        return () if value is None else value

    def to_task(self) -> Task:
        return Task(**{name: getattr(self, name) for name in _TASK_FIELDS})


_TASK_FIELDS = tuple(TaskRecord.model_fields)


@dataclass(frozen=True)
class TaskProblem:
    """A task the server sent that could not be used, and why (one log line)."""

    task_id: Any
    field: str
    message: str
    where: str

    def __str__(self) -> str:
        return f"{self.where}: task {self.task_id!r} skipped: field {self.field}: {self.message}"


@dataclass(frozen=True)
class TaskBatch:
    """Tasks from one list call, plus the ones that were skipped as malformed."""

    tasks: tuple[Task, ...]
    problems: tuple[TaskProblem, ...] = ()


def parse_task(raw: Any, where: str) -> Task | TaskProblem:
    if not isinstance(raw, dict):
        return TaskProblem(None, "(task)", f"expected a JSON object, got {type(raw).__name__}", where)
    try:
        return TaskRecord.model_validate(raw).to_task()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(task)"
        return TaskProblem(raw.get("id"), field, first["msg"], where)


def parse_tasks(raw: Any, where: str, cache: TaskCache | None = None) -> TaskBatch:
    if not isinstance(raw, list):
        return TaskBatch((), (TaskProblem(None, "(list)", f"expected a JSON array, got {type(raw).__name__}", where),))
    tasks: list[Task] = []
    problems: list[TaskProblem] = []
    for item in raw:
        parsed = cache.parse(item, where) if cache is not None else parse_task(item, where)
        if isinstance(parsed, Task):
            tasks.append(parsed)
        else:
            problems.append(parsed)
    if cache is not None:
        cache.listed()
    return TaskBatch(tuple(tasks), tuple(problems))


class TaskCache:
    """Tasks validated before, by id, with the row they came from. A pass lists every idle task;
    most rows are the same as the pass before (the backlog waits), and validating a row costs ten
    times what comparing it costs: a row sent again unchanged gives back the task made from it.
    Rows not listed for `KEEP_LISTS` lists are forgotten."""

    KEEP_LISTS = 8

    def __init__(self) -> None:
        self._rows: dict[int, tuple[dict[str, Any], Task, int]] = {}
        self._lists = 0

    def parse(self, raw: Any, where: str) -> Task | TaskProblem:
        ident = raw.get("id") if isinstance(raw, dict) else None
        known = self._rows.get(ident) if isinstance(ident, int) else None
        if known is not None and known[0] == raw:
            task = known[1]
        else:
            parsed = parse_task(raw, where)
            if not isinstance(parsed, Task):
                return parsed
            task = parsed
        self._rows[task.id] = (raw, task, self._lists)
        return task

    def listed(self) -> None:
        """A list is done: forget what no recent list showed."""
        self._lists += 1
        if self._lists % self.KEEP_LISTS == 0:
            oldest = self._lists - self.KEEP_LISTS
            self._rows = {ident: entry for ident, entry in self._rows.items() if entry[2] >= oldest}


@dataclass(frozen=True)
class ServerFeatures:
    """What the server on the other end can do; the old server has no queues and no blocking."""

    protocol: Literal["rest", "mcp-http", "mcp-sse"]
    queues: bool = True
    blocking: bool = True
