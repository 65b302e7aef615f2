"""`tinyscheduler history`: every run that ended on this host, from the run history file.

Start and end, agent, task, attempt, outcome and reason, exit code, duration, tokens, cost, host
(the latest 100 runs unless --limit); then the sums of tokens and cost per agent and per task over
every matching run. Filters: --agent, --task, --since (`30m`, `12h`, `1d`, `2w`, or a date/time).
Reads only: the daemon alone writes the file (adapters.history), and a missing file is "no runs
yet", not an error.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from tinyscheduler.adapters.history import Filter, HistoryError, HistoryStore, RunRecord, Totals
from tinyscheduler.cli.status import printable, table
from tinyscheduler.config.prices import currency_of
from tinyscheduler.config.settings import LoadedSettings
from tinyscheduler.core.cost import format_cost
from tinyscheduler.core.text import format_age, iso

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: Rows of the per-task totals in the table; --json has them all.
TASK_ROWS = 20
#: Runs listed unless --limit says otherwise (0: all); the sums always cover every matching run.
DEFAULT_LIMIT = 100


def parse_since(text: str, now: datetime) -> datetime:
    """`30m`, `12h`, `1d`, `2w` before `now`, or an ISO date/time (UTC unless it says); ValueError."""
    match = re.fullmatch(r"\s*(\d{1,6})\s*([smhdw])\s*", text)
    if match:
        return now - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected a duration such as 30m, 12h, 1d or 2w, or a date such as 2026-11-29"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _tokens(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def run_rows(runs: list[RunRecord], currency: str) -> list[list[Any]]:
    return [
        [
            iso(r.started_at),
            iso(r.ended_at),
            r.agent,
            r.task_id,
            r.attempt,
            r.outcome,
            "-" if r.exit_code is None else r.exit_code,
            format_age(r.duration_sec),
            _tokens(r.input_tokens),
            _tokens(r.output_tokens),
            format_cost(r.cost, currency),
            r.host,
            r.reason,
        ]
        for r in runs
    ]


def totals_rows(totals: list[Totals], currency: str) -> list[list[Any]]:
    return [
        [
            t.key,
            t.runs,
            t.succeeded,
            format_age(t.duration_sec),
            f"{t.input_tokens:,}",
            f"{t.output_tokens:,}",
            format_cost(t.cost, currency),
        ]
        for t in totals
    ]


@dataclass(frozen=True)
class Found:
    runs: list[RunRecord]
    #: How many runs match (more than listed when --limit cut them).
    total: int
    by_agent: list[Totals]
    by_task: list[Totals]
    #: How many tasks match (more than `by_task` in the table, which lists the costliest).
    tasks: int


def find(store: HistoryStore, where: Filter, limit: int, *, every_task: bool) -> Found:
    runs = store.runs(where, limit=limit or None)
    total = store.count(where) if limit and len(runs) == limit else len(runs)
    by_task = store.totals("task_id", where, limit=None if every_task else TASK_ROWS)
    tasks = len(by_task) if every_task or len(by_task) < TASK_ROWS else store.count(where, distinct="task_id")
    return Found(runs, total, store.totals("agent", where), by_task, tasks)


def render_table(found: Found, currency: str) -> str:
    runs, total, by_agent, by_task = found.runs, found.total, found.by_agent, found.by_task
    headers = ["started", "ended", "agent", "task", "attempt", "outcome", "exit", "duration"]
    lines = table([*headers, "tokens in", "tokens out", "cost", "host", "reason"], run_rows(runs, currency))
    if total > len(runs):
        lines.append(f"the latest {len(runs)} of {total:,} runs; --limit 0 lists all")
    sums = ["runs", "succeeded", "time", "tokens in", "tokens out", "cost"]
    lines += ["", "Per agent", *table(["agent", *sums], totals_rows(by_agent, currency))]
    lines += ["", "Per task (the costliest)", *table(["task", *sums], totals_rows(by_task, currency))]
    if found.tasks > len(by_task):
        lines.append(f"{found.tasks - len(by_task):,} more task(s) not shown; --json lists all.")
    return printable(lines)


def render_json(found: Found, currency: str) -> str:
    def run(record: RunRecord) -> dict[str, Any]:
        data = asdict(record)
        data["started_at"], data["ended_at"] = iso(record.started_at), iso(record.ended_at)
        return data

    def sums(totals: Totals, name: str, key: object) -> dict[str, Any]:
        data = asdict(totals)
        del data["key"]
        return {name: key, **data}

    document = {
        "currency": currency or None,
        "total_runs": found.total,
        "runs": [run(r) for r in found.runs],
        "per_agent": [sums(t, "agent", t.key) for t in found.by_agent],
        "per_task": [sums(t, "task_id", int(t.key)) for t in found.by_task],
    }
    return json.dumps(document, indent=2) + "\n"


def history_command(
    loaded: LoadedSettings,
    *,
    agent: str | None = None,
    task_id: int | None = None,
    since: str | None = None,
    limit: int = DEFAULT_LIMIT,
    json_output: bool = False,
    out: TextIO | None = None,
) -> int:
    """Entry point of `tinyscheduler history`: 0; 1 when the history file cannot be read; 2 for bad --since."""
    out = out or sys.stdout
    try:
        if limit < 0:
            raise ValueError(f"--limit {limit}: expected 0 (all) or a positive number of runs")
        start = parse_since(since, datetime.now(UTC)) if since else None
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    where = Filter(agent=agent, task_id=task_id, since=start)
    store = HistoryStore(loaded.settings.history_file, read_only=True)
    if not store.exists():
        print(f"no runs recorded yet ({store.path} does not exist)", file=sys.stderr)
        if json_output:
            out.write(render_json(Found([], 0, [], [], 0), ""))
        return 0
    try:
        found = find(store, where, limit, every_task=json_output)
    except HistoryError as exc:
        print(printable([f"tinyscheduler: {exc}"]), end="", file=sys.stderr)
        return 1
    finally:
        store.close()
    currency = currency_of(loaded.settings.prices)
    out.write(render_json(found, currency) if json_output else render_table(found, currency))
    return 0
