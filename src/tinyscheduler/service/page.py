"""The status page: problems, pauses, agents and slots, runs in flight with the end of their logs,
recent runs.

Server-rendered HTML that refreshes itself every few seconds; no script at all. What it shows is
gathered without blocking the event loop: the end of each run's log is read with aiofiles (a
worker thread, and only its last bytes, whatever the log's size), the recent runs come from the
history file in a worker thread. Everything shown is masked (core.redact) and HTML-escaped: task
output, reasons and paths come from outside.
"""

from __future__ import annotations

import html
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiofiles
import anyio

from tinyscheduler import __version__
from tinyscheduler.adapters.history import HistoryError, HistoryStore, RunRecord
from tinyscheduler.core.cost import format_cost
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.text import escaped, format_age, iso
from tinyscheduler.service.availability import problems as availability_problems
from tinyscheduler.service.runtime import Runtime
from tinyscheduler.service.statusfile import PassReport, status_line

#: How much of the end of a run's log is read, and how many of its last lines are shown.
TAIL_BYTES = 8192
TAIL_LINES = 12
RECENT_RUNS = 25
REFRESH_SEC = 5


@dataclass(frozen=True)
class AgentRow:
    agent: str
    busy: int
    limit: int
    #: Why it starts nothing now (its breaker), or "".
    unavailable: str = ""


@dataclass(frozen=True)
class RunRow:
    task_id: int
    agent: str
    attempt: int
    pid: int | None
    running_sec: float
    tail: str


@dataclass(frozen=True)
class PageData:
    host: str
    instance: str
    now: datetime
    last_pass: str
    problems: Sequence[str]
    agents: Sequence[AgentRow]
    runs: Sequence[RunRow]
    recent: Sequence[RunRecord] = ()
    currency: str = ""
    #: The operator's pauses and the drain, each said whole (who, since when, why).
    pauses: Sequence[str] = ()


async def read_tail(path: Path, max_bytes: int = TAIL_BYTES, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines within the last `max_bytes` of a run's log ("" if it cannot be read)."""

    def opener(name: str, flags: int) -> int:
        # Never through a link, never waiting on a FIFO put in its place.
        return os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK)

    try:
        async with aiofiles.open(path, "rb", opener=opener) as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                return ""
            size = await handle.seek(0, os.SEEK_END)
            await handle.seek(max(0, size - max_bytes))
            data = await handle.read(max_bytes)
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace").splitlines()
    if len(data) == max_bytes and text:
        text = text[1:]  # the first line was cut in the middle
    return "\n".join(text[-lines:])


def _recent(path: Path) -> tuple[list[RunRecord], str | None]:
    store = HistoryStore(path, read_only=True)
    if not store.exists():
        return [], None
    try:
        return store.runs(limit=RECENT_RUNS), None
    except HistoryError as exc:
        return [], str(exc)
    finally:
        store.close()


async def gather_page(runtime: Runtime) -> PageData:
    rt = runtime
    now = rt.clock()
    observer = rt.observer
    busy: dict[str, int] = {}
    runs: list[RunRow] = []
    for run in sorted(rt.runs.values(), key=lambda r: r.task_id):
        if run.holds_slot:
            busy[run.agent] = busy.get(run.agent, 0) + 1
        lease = run.lease
        tail = await read_tail(Path(lease.log_path)) if lease is not None and lease.log_path else ""
        running = (now - lease.started_at).total_seconds() if lease is not None else 0.0
        runs.append(RunRow(run.task_id, run.agent, lease.attempt if lease else 0, run.pid, running, tail))
    agents = sorted(set(rt.config.limits) | set(busy))
    unavailable = rt.circuits.unavailable(set(agents), now)
    rows = [
        AgentRow(a, busy.get(a, 0), rt.config.limits.get(a, 0), str(unavailable[a]) if a in unavailable else "")
        for a in agents
    ]
    recent, history_error = await anyio.to_thread.run_sync(_recent, rt.config.settings.history_file)
    report = observer.last_report
    problems = list(availability_problems(rt))
    if report is not None and not report.ok:
        problems.insert(0, f"last pass failed ({report.consecutive_failures} in a row): {report.error}")
    if observer.reload_error:
        problems.append(f"reload rejected, previous configuration kept: {observer.reload_error}")
    if history_error:
        problems.append(history_error)
    return PageData(
        host=rt.host,
        instance=rt.instance_id,
        now=now,
        last_pass=_last_pass(report, observer.last_pass_at),
        problems=problems,
        agents=rows,
        runs=runs,
        recent=recent,
        currency=rt.config.prices.currency,
        pauses=[pause.text for pause in rt.pauses.items],
    )


def _last_pass(report: PassReport | None, at: datetime | None) -> str:
    if report is None or at is None:
        return "no pass yet"
    return f"{status_line(report)} (at {iso(at)})"


# --- HTML ------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Anything shown: secrets masked, control characters made visible, HTML escaped."""
    return html.escape(escaped(redacted("", str(value)), keep_lines=True))


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, css: str = "") -> str:
    if not rows:
        return '<p class="none">none</p>'
    head = "".join(f"<th>{_text(h)}</th>" for h in headers)
    body = "".join(f'<tr class="{css}">' + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _tokens(record: RunRecord) -> str:
    if record.input_tokens is None and record.output_tokens is None:
        return "-"
    return f"{record.input_tokens or 0:,} in / {record.output_tokens or 0:,} out"


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse}th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
pre{margin:0;font-size:12px;max-width:70em;white-space:pre-wrap;word-break:break-all;background:#f6f6f6}
.problem{color:#a00}.meta{color:#666}.none{color:#888}
"""


def render_page(data: PageData) -> str:
    problems = "".join(f'<li class="problem">{_text(p)}</li>' for p in data.problems)
    pauses = "".join(f'<li class="pause">{_text(p)}</li>' for p in data.pauses)
    agents = _table(
        ["agent", "busy", "slots", "available"],
        [[_text(a.agent), a.busy, a.limit, _text(a.unavailable or "yes")] for a in data.agents],
        css="agent",
    )
    runs = _table(
        ["task", "agent", "attempt", "pid", "running", "log (end)"],
        [
            [
                r.task_id,
                _text(r.agent),
                r.attempt,
                r.pid or "-",
                format_age(r.running_sec),
                f"<pre>{_text(r.tail)}</pre>",
            ]
            for r in data.runs
        ],
        css="run",
    )
    recent = _table(
        ["ended", "task", "agent", "attempt", "outcome", "duration", "tokens", "cost", "reason"],
        [
            [
                _text(iso(r.ended_at)),
                r.task_id,
                _text(r.agent),
                r.attempt,
                _text(r.outcome),
                format_age(r.duration_sec),
                _tokens(r),
                _text(format_cost(r.cost, data.currency)),
                _text(r.reason),
            ]
            for r in data.recent
        ],
        css="recent",
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SEC}">
<title>TinyScheduler on {_text(data.host)}</title><style>{_STYLE}</style></head>
<body>
<h1>TinyScheduler on {_text(data.host)}</h1>
<p class="meta">version {_text(__version__)}, instance {_text(data.instance)},
{_text(iso(data.now))}; last pass: {_text(data.last_pass)}</p>
<h2>Problems</h2>
{f'<ul id="problems">{problems}</ul>' if problems else '<p class="none" id="problems">none</p>'}
<h2>Pauses</h2>
{f'<ul id="pauses">{pauses}</ul>' if pauses else '<p class="none" id="pauses">none</p>'}
<h2>Agents</h2>
<div id="agents">{agents}</div>
<h2>Runs in flight</h2>
<div id="runs">{runs}</div>
<h2>Recent runs</h2>
<div id="recent">{recent}</div>
</body></html>
"""
