"""`tinyscheduler report`: the TinyTask workload report (summary, per-agent breakdown, priority
distribution, task age metrics, the task table, and the tokens and cost of the runs per agent and per
task from this host's run history) as a table, JSON or Markdown.

One list request per status (pages of a long list aside), never one request per task: the
original reporter fetched every task again to count its comments and links, which made a report of
a busy server cost thousands of requests. The JSON keeps the original's key names, so scripts such
as `jq .summary.total_idle` keep working; comment and link counts are gone for the reason above.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import anyio

from tinyscheduler.adapters.files import write_private
from tinyscheduler.adapters.history import Filter, HistoryError, HistoryStore, Totals
from tinyscheduler.adapters.tinytask import TaskProblem, TinyTaskClient, TinyTaskError
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.cli.status import printable, table
from tinyscheduler.config.prices import currency_of
from tinyscheduler.config.settings import LoadedSettings
from tinyscheduler.core.cost import format_cost
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.tasks import STATUSES, Task
from tinyscheduler.core.text import format_age, iso, markdown_cell

Format = Literal["table", "json", "markdown"]
FORMATS: tuple[str, ...] = ("table", "json", "markdown")
DEFAULT_STATUSES: tuple[str, ...] = ("idle", "working")
#: Rows of the task table in the table and Markdown formats; JSON always has every task.
TABLE_ROWS = 50
UNASSIGNED = "unassigned"
BAR_WIDTH = 30


def parse_statuses(text: str) -> tuple[str, ...]:
    """`idle,working` -> ("idle", "working"); ValueError names what is allowed."""
    wanted = tuple(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    bad = [s for s in wanted if s not in STATUSES]
    if bad or not wanted:
        raise ValueError(f"--status {text!r}: expected a comma list of {', '.join(STATUSES)}")
    return wanted


@dataclass(frozen=True)
class Fetched:
    tasks: tuple[Task, ...]
    problems: tuple[TaskProblem, ...]
    requests: int


async def fetch(client: TinyTaskClient, statuses: Sequence[str], agent: str | None) -> Fetched:
    """One list call per status; a task seen twice (it changed status meanwhile) counts once."""
    tasks: dict[int, Task] = {}
    problems: list[TaskProblem] = []
    for status in statuses:
        batch = await client.list_tasks(status=[status], assigned_to=agent)
        for task in batch.tasks:
            tasks.setdefault(task.id, task)
        problems.extend(batch.problems)
    return Fetched(tuple(tasks.values()), tuple(problems), len(statuses))


def _hours(seconds: float) -> float:
    return round(seconds / 3600, 2)


def build(
    tasks: Sequence[Task],
    *,
    now: datetime,
    statuses: Sequence[str],
    agent: str | None,
    tinytask: str,
    skipped: Sequence[str] = (),
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report as plain data (pure: `now` is an input). `usage`: tokens and cost from the run
    history (`usage_of`), None without one."""
    ordered = sorted(tasks, key=lambda t: (-t.priority, t.created_at, t.id))  # the server's own order
    by_status = {s: sum(1 for t in ordered if t.status == s) for s in STATUSES}
    agents_with_work = sorted({t.assigned_to for t in ordered if t.assigned_to})
    queues: dict[str, int] = {}
    for t in ordered:
        queues[t.queue_name or "(none)"] = queues.get(t.queue_name or "(none)", 0) + 1
    ages = {t.id: max(0.0, (now - t.created_at).total_seconds()) for t in ordered}
    return {
        "generated_at": iso(now),
        "tinytask": tinytask,
        "filters": {"status": list(statuses), "agent": agent},
        "summary": {
            "total_open_tasks": len(ordered),
            "total_idle": by_status["idle"],
            "total_working": by_status["working"],
            "total_complete": by_status["complete"],
            "total_blocked": sum(1 for t in ordered if t.is_currently_blocked),
            "total_unassigned": sum(1 for t in ordered if not t.assigned_to),
            "total_agents": len(agents_with_work),
            "agents_with_work": agents_with_work,
            "by_queue": dict(sorted(queues.items())),
        },
        "agent_breakdown": _agent_breakdown(ordered),
        "priority_distribution": _priority_distribution(ordered),
        "age_metrics": _age_metrics(ordered, ages),
        "tasks": [_task_row(t, ages[t.id]) for t in ordered],
        "skipped_malformed": list(skipped),
        "usage": usage,
    }


def usage_of(history: Path, agent: str | None, task_ids: set[int], currency: str) -> dict[str, Any] | None:
    """Tokens and cost per agent, and per task of the report, from this host's run history."""
    store = HistoryStore(history, read_only=True)
    if not store.exists():
        return None
    where = Filter(agent=agent)
    try:
        by_agent = store.totals("agent", where)
        by_task = [t for t in store.totals("task_id", where) if int(t.key) in task_ids]
    except HistoryError as exc:
        return {"error": str(exc)}
    finally:
        store.close()

    def sums(t: Totals) -> dict[str, Any]:
        return {
            "runs": t.runs,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "total_tokens": t.total_tokens,
            "cost": t.cost,
        }

    return {
        "currency": currency or None,
        "per_agent": {t.key: sums(t) for t in by_agent},
        "per_task": {t.key: sums(t) for t in by_task},
    }


def _agent_breakdown(ordered: Sequence[Task]) -> dict[str, dict[str, Any]]:
    breakdown: dict[str, dict[str, Any]] = {}
    for t in ordered:
        name = t.assigned_to or UNASSIGNED
        entry = breakdown.setdefault(
            name,
            {
                "agent_name": name,
                "total_tasks": 0,
                "idle_tasks": 0,
                "working_tasks": 0,
                "complete_tasks": 0,
                "task_ids": [],
            },
        )
        entry["total_tasks"] += 1
        entry[f"{t.status}_tasks"] += 1
        entry["task_ids"].append(t.id)
    return dict(sorted(breakdown.items()))


def _priority_distribution(ordered: Sequence[Task]) -> dict[str, Any]:
    counts: dict[int, int] = {}
    for t in ordered:
        counts[t.priority] = counts.get(t.priority, 0) + 1
    return {
        "by_priority": {str(p): counts[p] for p in sorted(counts, reverse=True)},
        "highest_priority": max(counts, default=0),
        "lowest_priority": min(counts, default=0),
        "average_priority": round(sum(t.priority for t in ordered) / len(ordered), 2) if ordered else 0.0,
    }


def _age_metrics(ordered: Sequence[Task], ages: dict[int, float]) -> dict[str, Any]:
    oldest = max(ordered, key=lambda t: (ages[t.id], -t.id), default=None)
    newest = min(ordered, key=lambda t: (ages[t.id], -t.id), default=None)
    return {
        "oldest_task_age_hours": _hours(ages[oldest.id]) if oldest else 0.0,
        "newest_task_age_hours": _hours(ages[newest.id]) if newest else 0.0,
        "average_task_age_hours": _hours(sum(ages.values()) / len(ages)) if ages else 0.0,
        "oldest_task_id": oldest.id if oldest else None,
        "newest_task_id": newest.id if newest else None,
    }


def _task_row(t: Task, age_sec: float) -> dict[str, Any]:
    return {
        "id": t.id,
        "title": t.title,
        "description": t.description,
        "status": t.status,
        "assigned_to": t.assigned_to,
        "created_by": t.created_by,
        "priority": t.priority,
        "tags": list(t.tags),
        "queue_name": t.queue_name,
        "blocked_by_task_id": t.blocked_by_task_id,
        "is_currently_blocked": t.is_currently_blocked,
        "created_at": iso(t.created_at),
        "updated_at": iso(t.updated_at) if t.updated_at else None,
        "age_hours": _hours(age_sec),
    }


# --- rendering -------------------------------------------------------------------------------------


def _age(hours: float) -> str:
    return format_age(hours * 3600)


def _bar(count: int, total: int) -> str:
    share = count / total if total else 0.0
    return f"{'#' * max(1, round(share * BAR_WIDTH))} ({share:.0%})"


def _sections(report: dict[str, Any]) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, headers, rows) of every table section; shared by the table and Markdown forms."""
    s = report["summary"]
    statuses = report["filters"]["status"]
    summary = [["tasks", s["total_open_tasks"]]]
    summary += [[status, s[f"total_{status}"]] for status in statuses]
    summary += [
        ["blocked", s["total_blocked"]],
        ["unassigned", s["total_unassigned"]],
        ["agents with work", f"{s['total_agents']} ({', '.join(s['agents_with_work']) or '-'})"],
    ]
    summary += [[f"queue {q}", n] for q, n in s["by_queue"].items()]

    agents = [
        [a["agent_name"], a["total_tasks"], *[a[f"{st}_tasks"] for st in statuses]]
        for a in report["agent_breakdown"].values()
    ]

    p = report["priority_distribution"]
    total = s["total_open_tasks"]
    priorities = [[prio, n, _bar(n, total)] for prio, n in p["by_priority"].items()]

    a = report["age_metrics"]
    ages = (
        []
        if not total
        else [
            ["oldest", f"{_age(a['oldest_task_age_hours'])} (task {a['oldest_task_id']})"],
            ["newest", f"{_age(a['newest_task_age_hours'])} (task {a['newest_task_id']})"],
            ["average", _age(a["average_task_age_hours"])],
        ]
    )

    tasks = [
        [
            t["id"],
            t["status"] + (" (blocked)" if t["is_currently_blocked"] else ""),
            t["assigned_to"] or "-",
            t["queue_name"] or "-",
            t["priority"],
            _age(t["age_hours"]),
            t["title"],
        ]
        for t in report["tasks"][:TABLE_ROWS]
    ]
    shown = f"{len(tasks)} of {total}" if total > len(tasks) else str(total)
    return [
        ("Summary", ["", "count"], summary),
        ("Agent workload", ["agent", "total", *statuses], agents),
        (f"Priority distribution (average {p['average_priority']})", ["priority", "tasks", "share"], priorities),
        ("Task age", ["", "age"], ages),
        (f"Tasks ({shown})", ["id", "status", "agent", "queue", "priority", "age", "title"], tasks),
        *_usage_sections(report.get("usage")),
    ]


def _usage_sections(usage: dict[str, Any] | None) -> list[tuple[str, list[str], list[list[Any]]]]:
    if not usage or "error" in usage:
        return []
    currency = usage["currency"] or ""
    headers = ["runs", "tokens in", "tokens out", "cost"]

    def row(key: str, sums: dict[str, Any]) -> list[Any]:
        tokens = f"{sums['input_tokens']:,}", f"{sums['output_tokens']:,}"
        return [key, sums["runs"], *tokens, format_cost(sums["cost"], currency)]

    return [
        (
            "Tokens and cost per agent (run history)",
            ["agent", *headers],
            [row(k, v) for k, v in usage["per_agent"].items()],
        ),
        (
            "Tokens and cost per task (run history)",
            ["task", *headers],
            [row(k, v) for k, v in usage["per_task"].items()],
        ),
    ]


def _footer(report: dict[str, Any]) -> list[str]:
    lines = []
    if len(report["tasks"]) > TABLE_ROWS:
        lines.append(f"{len(report['tasks']) - TABLE_ROWS} more task(s) not shown; --format json lists all.")
    usage = report.get("usage") or {}
    if "error" in usage:
        lines.append(f"Tokens and cost not shown: {usage['error']}")
    if report["skipped_malformed"]:
        lines.append(f"Skipped {len(report['skipped_malformed'])} malformed task(s):")
        lines += [f"  {p}" for p in report["skipped_malformed"]]
    return lines


def _header(report: dict[str, Any]) -> str:
    f = report["filters"]
    agent = f", agent {f['agent']}" if f["agent"] else ""
    return f"{report['tinytask']} at {report['generated_at']} (status {','.join(f['status'])}{agent})"


def render_table(report: dict[str, Any]) -> str:
    lines = ["TinyTask workload report", _header(report)]
    for title, headers, rows in _sections(report):
        lines += ["", title]
        lines += table(headers, rows) if rows else ["  (none)"]
    footer = _footer(report)
    return printable(lines + (["", *footer] if footer else []))


def render_markdown(report: dict[str, Any]) -> str:
    lines = ["# TinyTask workload report", "", _header(report)]
    for title, headers, rows in _sections(report):
        lines += ["", f"## {title}", ""]
        if not rows:
            lines.append("(none)")
            continue
        lines.append("| " + " | ".join(markdown_cell(str(h)) for h in headers) + " |")
        lines.append("|" + "|".join("---" for _ in headers) + "|")
        lines += ["| " + " | ".join(markdown_cell(str(c)) for c in row) + " |" for row in rows]
    footer = _footer(report)
    return printable(lines + (["", *footer] if footer else []))


def render(report: dict[str, Any], fmt: Format) -> str:
    if fmt == "json":
        return json.dumps(report, indent=2) + "\n"
    return render_markdown(report) if fmt == "markdown" else render_table(report)


async def _collect(loaded: LoadedSettings, statuses: Sequence[str], agent: str | None) -> dict[str, Any]:
    s = loaded.settings
    async with await connect(s.tinytask_url, s.tinytask_protocol) as client:
        fetched = await fetch(client, statuses, agent)
    usage = await anyio.to_thread.run_sync(
        usage_of, s.history_file, agent, {t.id for t in fetched.tasks}, currency_of(s.prices)
    )
    return build(
        fetched.tasks,
        now=datetime.now(UTC),
        statuses=statuses,
        agent=agent,
        tinytask=redacted("", s.tinytask_url),
        skipped=[str(p) for p in fetched.problems],
        usage=usage,
    )


def endpoint_origin(loaded: LoadedSettings) -> str:
    """Where the TinyTask URL came from, as a person names it."""
    source = loaded.sources["mcp_endpoint"]
    if source == "default":
        where = f"env file {loaded.env_file}" if loaded.env_file else "no env file was found"
        return f"the default: TINYSCHEDULER_MCP_ENDPOINT is set nowhere ({where})"
    if source == "env-file":
        return f"TINYSCHEDULER_MCP_ENDPOINT in {loaded.env_file}"
    return "--mcp-endpoint" if source == "cli" else "TINYSCHEDULER_MCP_ENDPOINT in the environment"


def report_command(
    loaded: LoadedSettings,
    *,
    fmt: Format = "table",
    agent: str | None = None,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    output: Path | None = None,
    out: TextIO | None = None,
) -> int:
    """Entry point of `tinyscheduler report`: 0, or 1 when TinyTask cannot be read."""
    url = loaded.settings.tinytask_url
    origin = endpoint_origin(loaded)
    if loaded.sources["mcp_endpoint"] == "default":
        # Never silently: a report of the wrong server (or none) must say which one it asked.
        print(f"tinyscheduler: note: asking TinyTask at {url}, {origin}", file=sys.stderr)
    try:
        report = anyio.run(_collect, loaded, tuple(statuses), agent)
    except TinyTaskError as exc:
        line = f"tinyscheduler: TinyTask at {url} ({origin}) is unreachable or failed: {exc}"
        print(printable([line]), end="", file=sys.stderr)
        return 1
    text = render(report, fmt)
    if output is None:
        (out or sys.stdout).write(text)
        return 0
    try:
        write_private(output, text)
    except OSError as exc:
        print(f"tinyscheduler: cannot write the report to {output}: {exc.strerror}", file=sys.stderr)
        return 1
    print(f"report written to {output}", file=sys.stderr)
    return 0
