"""The fake TinyTask's MCP tools: their argument schemas, checked and coerced the way the real
server's zod schemas do (every issue collected, in zod's words), and what each tool answers.

A tool answers `(text, is_error)`: pretty-printed JSON, or a sentence, a blank line and JSON, or an
error sentence; the real server never answers a failure as a JSON-RPC error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tinyscheduler.testing.fake import js
from tinyscheduler.testing.fake.store import STATUSES, FakeError, Filters, Store

_STATUS_ENUM = " | ".join(f"'{s}'" for s in STATUSES)

ToolResult = tuple[str, bool]  # text, isError
Issue = dict[str, Any]


@dataclass(frozen=True)
class Param:
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


class InvalidArguments(Exception):
    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(json.dumps(issues, indent=2))


# -- argument checks --------------------------------------------------------------------------------


def _invalid_type(path: list[Any], expected: str, value: Any) -> Issue:
    received = js.type_name(value)
    return {
        "code": "invalid_type",
        "expected": expected,
        "received": received,
        "path": path,
        "message": f"Expected {expected}, received {received}",
    }


def _check_status(value: Any, path: list[Any], issues: list[Issue]) -> None:
    if not isinstance(value, str):
        issues.append(_invalid_type(path, _STATUS_ENUM, value))
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


def _check_list(key: str, param: Param, value: Any, issues: list[Issue]) -> None:
    if not isinstance(value, list):
        issues.append(_invalid_type([key], "array", value))
        return
    for index, item in enumerate(value):
        if param.kind == "status_list":
            _check_status(item, [key, index], issues)
        elif not isinstance(item, str):
            issues.append(_invalid_type([key, index], "string", item))


def _check_value(key: str, param: Param, value: Any, issues: list[Issue]) -> Any:
    """The value as the tool receives it (numbers coerced); problems are appended to `issues`."""
    if param.kind == "number" or (param.kind == "nullable_number" and value is not None):
        number = js.number(value)
        if isinstance(number, float) and math.isnan(number):
            issues.append(_invalid_type([key], "number", number))
        return number
    if param.kind == "string" and not isinstance(value, str):
        issues.append(_invalid_type([key], "string", value))
    elif param.kind == "boolean" and not isinstance(value, bool):
        issues.append(_invalid_type([key], "boolean", value))
    elif param.kind == "status":
        _check_status(value, [key], issues)
    elif param.kind in ("strings", "status_list"):
        _check_list(key, param, value, issues)
    elif param.kind == "statuses":
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(item, str) and item in STATUSES for item in items):
            issues.append({"code": "invalid_union", "path": [key], "message": "Invalid input"})
    return value


def validate(params: dict[str, Param], strict: bool, args: Any) -> dict[str, Any]:
    """Arguments checked and coerced like zod: every issue collected, unknown keys last."""
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise InvalidArguments([_invalid_type([], "object", args)])
    issues: list[Issue] = []
    out: dict[str, Any] = {}
    for key, param in params.items():
        if key in args:
            out[key] = _check_value(key, param, args[key], issues)
        elif param.required:
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
        raise InvalidArguments(issues)
    return out


# -- the tools -----------------------------------------------------------------------------------


def _filters(args: dict[str, Any], queue_name: str | None) -> Filters:
    status = args.get("status", ())
    return Filters(
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


def _list_tasks(store: Store, args: dict[str, Any]) -> ToolResult:
    tasks = store.select(_filters(args, args.get("queue_name")))
    return js.pretty({"count": len(tasks), "tasks": tasks}), False


def _get_queue_tasks(store: Store, args: dict[str, Any]) -> ToolResult:
    name = args["queue_name"].strip()
    if not name:
        return "Error retrieving queue tasks: Queue name cannot be empty", True
    tasks = store.select(_filters(args, name))
    # JSON.stringify drops the filters that were not given; include_archived is always there.
    filters: dict[str, Any] = {
        key: args[key]
        for key in ("assigned_to", "status", "exclude_status", "parent_task_id", "exclude_subtasks")
        if key in args
    }
    filters["include_archived"] = args.get("include_archived") or False
    filters.update({key: args[key] for key in ("limit", "offset") if key in args})
    return js.pretty({"queue_name": args["queue_name"], "count": len(tasks), "filters": filters, "tasks": tasks}), False


def _get_task(store: Store, args: dict[str, Any]) -> ToolResult:
    task = store.get(args["id"])
    if task is None:
        return f"Task not found: {args['id']}", True
    return js.pretty(task), False


def _update_task(store: Store, args: dict[str, Any]) -> ToolResult:
    changes = {key: value for key, value in args.items() if key != "id"}
    try:
        task = store.update(args["id"], changes)
    except FakeError as exc:
        return f"Error updating task: {exc.message}", True
    return f"Task {task['id']} updated successfully\n\n{js.pretty(task)}", False


def _add_comment(store: Store, args: dict[str, Any]) -> ToolResult:
    try:
        comment = store.add_comment(args["task_id"], args["content"], args.get("created_by"))
    except FakeError as exc:
        return f"Error adding comment: {exc.message}", True
    return f"Comment added to task {args['task_id']}\n\n{js.pretty(comment)}", False


def _signup_for_task(store: Store, args: dict[str, Any]) -> ToolResult:
    task = store.signup(args["agent_name"])
    if task is None:
        return f"No idle tasks available in queue for agent: {args['agent_name']}", False
    return f"Task #{task['id']} claimed and set to working status\n\n{js.pretty(task)}", False


def _list_queues(store: Store, args: dict[str, Any]) -> ToolResult:
    queues = store.queues()
    return js.pretty({"count": len(queues), "queues": queues}), False


def _create_task(store: Store, args: dict[str, Any]) -> ToolResult:
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
    return js.pretty(task), False


def _move_task(store: Store, args: dict[str, Any]) -> ToolResult:
    try:
        result = store.transfer(args["task_id"], args["new_agent"], args["current_agent"], args["comment"])
    except FakeError as exc:
        return exc.message, True
    return js.pretty(result), False


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: dict[str, Param]
    run: Callable[[Store, dict[str, Any]], ToolResult]
    strict: bool = True
    in_legacy: bool = True

    def describe(self) -> dict[str, Any]:
        """The tool as `tools/list` shows it."""
        schema: dict[str, Any] = {"type": "object", "properties": {k: p.json_schema() for k, p in self.params.items()}}
        required = [k for k, p in self.params.items() if p.required]
        if required:
            schema["required"] = required
        return {"name": self.name, "description": self.description, "inputSchema": schema}

    def call(self, store: Store, arguments: Any) -> ToolResult:
        try:
            return self.run(store, validate(self.params, self.strict, arguments))
        except InvalidArguments as exc:
            return f"Error calling tool {self.name}: {exc}", True


_ID = Param("number", "Task ID", required=True)
_NEW_SERVER_ARGS = frozenset(
    {"queue_name", "parent_task_id", "blocked_by_task_id", "exclude_status", "exclude_subtasks"}
)

TOOLS: tuple[Tool, ...] = (
    Tool(
        "create_task",
        "Create a new task in the system",
        {
            "title": Param("string", "Task title", required=True),
            "description": Param("string", "Task description"),
            "assigned_to": Param("string", "Agent name to assign to"),
            "created_by": Param("string", "Agent name creating the task"),
            "priority": Param("number", "Priority level (default: 0)"),
            "tags": Param("strings", "Array of tags"),
            "parent_task_id": Param("number", "Parent task ID (creates subtask)"),
            "queue_name": Param("string", "Queue name (dev, product, qa, etc.)"),
            "blocked_by_task_id": Param("number", "ID of task that blocks this task"),
        },
        _create_task,
    ),
    Tool(
        "update_task",
        "Update an existing task",
        {
            "id": _ID,
            "title": Param("string", "New title"),
            "description": Param("string", "New description"),
            "status": Param("status", "New status"),
            "assigned_to": Param("string", "New assignee"),
            "priority": Param("number", "New priority"),
            "tags": Param("strings", "New tags (replaces existing)"),
            "parent_task_id": Param("number", "New parent task ID"),
            "queue_name": Param("string", "New queue name"),
            "blocked_by_task_id": Param("nullable_number", "ID of task that blocks this task. Set to null to unblock."),
        },
        _update_task,
    ),
    Tool("get_task", "Get a task by ID with all comments and links", {"id": _ID}, _get_task),
    Tool(
        "list_tasks",
        "List tasks with optional filters",
        {
            "assigned_to": Param("string", "Filter by assignee"),
            "status": Param("statuses", "Filter by status (single value or array of statuses)"),
            "exclude_status": Param("status_list", "Exclude tasks with these statuses"),
            "limit": Param("number", "Max results (default: 100)"),
            "offset": Param("number", "Pagination offset"),
            "queue_name": Param("string", "Filter by queue name"),
            "parent_task_id": Param("number", "Filter by parent task ID"),
            "exclude_subtasks": Param("boolean", "Exclude subtasks from results"),
            "include_archived": Param("boolean", "Include archived tasks (the fake archives nothing)"),
        },
        _list_tasks,
    ),
    Tool(
        "signup_for_task",
        "Claim the highest priority idle task from your queue and mark it as working",
        {"agent_name": Param("string", "Agent name signing up for task", required=True)},
        _signup_for_task,
    ),
    Tool(
        "move_task",
        "Transfer a task to another agent with status reset to idle and add handoff comment",
        {
            "task_id": Param("number", "Task ID to transfer", required=True),
            "current_agent": Param("string", "Current agent (for verification)", required=True),
            "new_agent": Param("string", "Agent to transfer to", required=True),
            "comment": Param("string", "Handoff message/context", required=True),
        },
        _move_task,
    ),
    Tool("list_queues", "List all queue names currently in use", {}, _list_queues, in_legacy=False),
    Tool(
        "get_queue_tasks",
        "Get all tasks in a queue with optional filters",
        {
            "queue_name": Param("string", "Queue name", required=True),
            "assigned_to": Param("string", "Filter by assignee"),
            "status": Param("statuses", "Filter by status (single value or array of statuses)"),
            "exclude_status": Param("status_list", "Exclude tasks with these statuses"),
            "limit": Param("number", "Max results"),
            "offset": Param("number", "Pagination offset"),
            "parent_task_id": Param("number", "Filter by parent task ID"),
            "exclude_subtasks": Param("boolean", "Exclude subtasks from results"),
            "include_archived": Param("boolean", "Include archived tasks (the fake archives nothing)"),
        },
        _get_queue_tasks,
        in_legacy=False,
    ),
    # The real add_comment schema is the one not marked strict: unknown keys are dropped.
    Tool(
        "add_comment",
        "Add a comment to a task",
        {
            "task_id": Param("number", "Task ID", required=True),
            "content": Param("string", "Comment text", required=True),
            "created_by": Param("string", "Agent name"),
        },
        _add_comment,
        strict=False,
    ),
)


def _legacy_tool(tool: Tool) -> Tool:
    """The tinytask-mcp 1.0 shape of a tool: no queue, parent or blocking arguments."""
    params = {key: param for key, param in tool.params.items() if key not in _NEW_SERVER_ARGS}
    if "status" in params and params["status"].kind == "statuses":
        params["status"] = Param("status", "Filter by status")
    return Tool(tool.name, tool.description, params, tool.run, tool.strict)


def toolset(legacy: bool) -> dict[str, Tool]:
    """The tools a server offers, by name, in `tools/list` order."""
    tools = [_legacy_tool(t) for t in TOOLS if t.in_legacy] if legacy else list(TOOLS)
    return {tool.name: tool for tool in tools}
