"""`tinyscheduler demo [--keep] [--tasks N]`: the real daemon on a small workload, in a minute.

Everything runs in this one process and on 127.0.0.1: the in-package TinyTask-compatible server
(`testing.fake`, a thread), the real `daemon.Scheduler` in the same event loop as the live
progress display, and the stand-in goose (`standin_goose`, clearly not an AI agent) as the Goose
processes the daemon starts. The workload has three queues, six agents with different slot counts,
a chain of blockers, a task that fails once and then succeeds, and one that keeps failing until
the daemon gives up and tags it `tinyscheduler:failed`. Task tags `standin:<mode>[:<seconds>]`
tell the stand-in what to do per task.

The demo stops the daemon through `Scheduler.request_stop()`, the same shutdown path as SIGTERM,
so the daemon drains as it would under systemd. Ctrl-C reaches the daemon's SIGINT handler: runs
in flight get a short shutdown grace period, the rest are stopped with the stop ladder and their
tasks requeued, and the demo exits 130. Either way no process is left: the daemon reaps its runs,
and the demo checks for stragglers before it removes its folder.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import anyio
import psutil
import yaml

from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.logsetup import configure_logging
from tinyscheduler.cli.status import table
from tinyscheduler.config.settings import LoadedSettings, load_settings
from tinyscheduler.core.attempts import AttemptRecord
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.core.text import format_age
from tinyscheduler.testing.fake import FakeTinyTask
from tinyscheduler.testing.standin_goose import write_launcher

if TYPE_CHECKING:
    from tinyscheduler.service.scheduler import Scheduler

DEFAULT_TASKS = 30
#: The special tasks (a chain of three blockers, fail-once, keeps-failing) need five.
MIN_TASKS = 5
MAX_TASKS = 500
EXIT_INTERRUPTED = 130
REFRESH_SEC = 0.2


@dataclass(frozen=True)
class Agent:
    name: str
    queue: str
    slots: int


AGENTS: tuple[Agent, ...] = (
    Agent("dev-alice", "dev", 3),
    Agent("dev-bob", "dev", 2),
    Agent("qa-carol", "qa", 2),
    Agent("qa-dan", "qa", 1),
    Agent("docs-erin", "docs", 1),
    Agent("docs-frank", "docs", 1),
)


@dataclass(frozen=True)
class Seed:
    title: str
    queue: str
    priority: int
    tags: tuple[str, ...]
    #: Index of the blocking task in the workload list (seeded before this one).
    blocked_by: int | None = None
    assigned_to: str | None = None


_CHORES = {
    "dev": [
        "fix the login redirect",
        "add retries to the uploader",
        "refactor the billing module",
        "upgrade the HTTP client",
        "remove the dead feature flag",
        "speed up the search query",
    ],
    "qa": [
        "regression-test checkout",
        "write tests for the uploader",
        "verify the billing refactor",
        "check the mobile layout",
        "fuzz the config parser",
    ],
    "docs": ["document the new API", "update the changelog", "write the upgrade notes"],
}


def workload(count: int, seed: int = 7) -> list[Seed]:
    """`count` tasks: the special cases first, then ordinary work spread by each queue's slots."""
    rng = random.Random(seed)
    seeds = [
        Seed("design the export API (blocks 2 tasks)", "dev", 1, ("standin:succeed:0.8",)),
        Seed("implement the export API (blocked by the design)", "dev", 2, ("standin:succeed:0.8",), blocked_by=0),
        Seed("test the export API (blocked by the implementation)", "qa", 3, ("standin:succeed:0.6",), blocked_by=1),
        Seed("flaky integration test (fails once, then passes)", "qa", 1, ("standin:fail-once:0.3",)),
        Seed("translate the manual (keeps failing)", "docs", 0, ("standin:fail:0.3",)),
    ]
    weights = {queue: sum(a.slots for a in AGENTS if a.queue == queue) for queue in _CHORES}
    queues = list(_CHORES)
    for number in range(count - len(seeds)):
        queue = rng.choices(queues, weights=[weights[q] for q in queues])[0]
        chores = _CHORES[queue]
        title = f"{chores[number % len(chores)]} #{number + 1}"
        seconds = round(rng.uniform(0.3, 1.5), 1)
        # A few tasks arrive already assigned, as when a person or an agent hands work over.
        pool = [a.name for a in AGENTS if a.queue == queue]
        assigned = pool[number % len(pool)] if number % 9 == 4 else None
        seeds.append(Seed(title, queue, rng.randint(0, 3), (f"standin:succeed:{seconds}",), assigned_to=assigned))
    return seeds[:count]


def write_config(folder: Path) -> None:
    (folder / "agent-control.json").write_text(
        json.dumps(
            [
                {
                    "agentName": a.name,
                    "agentType": a.queue,
                    "slots": a.slots,
                    "comment": f"{a.queue} queue, {a.slots} slot(s)",
                }
                for a in AGENTS
            ],
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    recipes = folder / "recipes"
    recipes.mkdir(parents=True, exist_ok=True)
    for agent in AGENTS:
        recipe = {
            "title": f"{agent.name} (demo)",
            "description": f"Demo recipe of {agent.name}, an agent of the {agent.queue} queue.",
            "prompt": "Work on TinyTask task {{ task_id }} as {{ agent }}; complete it when done.",
            "parameters": [
                {"key": "task_id", "input_type": "string", "requirement": "required", "description": "task id"},
                {"key": "agent", "input_type": "string", "requirement": "required", "description": "agent name"},
            ],
            # Read by the stand-in only; per-task `standin:` tags override it.
            "standin": {"mode": "succeed", "seconds": 0.5},
        }
        (recipes / f"{agent.name}.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")


def demo_settings(folder: Path, tinytask_url: str, goose: Path) -> LoadedSettings:
    """Fast timings so retries and give-up happen within seconds; nothing from the caller's env."""
    cli = {
        "base_path": str(folder),
        "mcp_endpoint": tinytask_url,
        "tinytask_protocol": "rest",
        "goose_bin": str(goose),
        "loop_interval_sec": "1",
        "heartbeat_sec": "1",
        "max_runtime_sec": "60",
        "stop_grace_sec": "1",
        "shutdown_grace_sec": "2",
        "retry_base_sec": "1",
        "max_attempts": "3",
        "log_level": "INFO",
        "log_format": "console",
    }
    return load_settings(env_file=None, cli=cli, environ={}, cwd=folder)


@dataclass
class Progress:
    total: int
    done: int = 0
    running: int = 0
    idle: int = 0
    blocked: int = 0
    retrying: int = 0
    failed: int = 0
    leases: int = 0
    busy: dict[str, int] = field(default_factory=dict)
    finished_by: dict[str, int] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        """Every task complete or given up, and no run in flight."""
        return self.done + self.failed == self.total and self.leases == 0

    def line(self) -> str:
        return (
            f"done {self.done}/{self.total}  running {self.running}  idle {self.idle} "
            f"({self.blocked} blocked, {self.retrying} retrying)  failed {self.failed}"
        )


class Demo:
    def __init__(self, folder: Path, count: int, out: TextIO) -> None:
        self.folder = folder
        self.count = count
        self.out = out
        self.live = out.isatty() and os.environ.get("TERM") != "dumb"
        self.fake = FakeTinyTask()
        self.ids: list[int] = []
        self.seeds = workload(count)
        self.loaded: LoadedSettings | None = None
        self.began = time.monotonic()
        self.stopped_by_demo = False
        self._drawn = 0
        self._last_line = ""
        self._daemon_log: TextIO | None = None

    # --- set-up ---------------------------------------------------------------------------------

    def start(self) -> None:
        write_config(self.folder)
        goose = write_launcher(self.folder / "bin" / "goose-standin")
        self.fake.start()
        for seed in self.seeds:
            blocker = self.ids[seed.blocked_by] if seed.blocked_by is not None else None
            task = self.fake.create_task(
                seed.title,
                created_by="demo",
                queue_name=seed.queue,
                priority=seed.priority,
                tags=seed.tags,
                blocked_by_task_id=blocker,
                assigned_to=seed.assigned_to,
            )
            self.ids.append(task["id"])
        self.loaded = demo_settings(self.folder, self.fake.url, goose)
        s = self.loaded.settings
        s.log_dir.mkdir(parents=True, exist_ok=True)
        # The daemon's own log goes to files: the terminal belongs to the progress display.
        self._daemon_log = open(s.log_dir / "daemon.log", "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        configure_logging(s.log_level, "console", s.log_dir, stream=self._daemon_log)

    def close(self) -> None:
        self.fake.stop()
        if self._daemon_log is not None:
            self._daemon_log.close()

    # --- running --------------------------------------------------------------------------------

    async def run(self) -> int:
        from tinyscheduler.service.scheduler import Scheduler

        assert self.loaded is not None
        self._say(
            f"TinyScheduler demo: {self.count} tasks, {len({a.queue for a in AGENTS})} queues, "
            f"{len(AGENTS)} agents, {sum(a.slots for a in AGENTS)} slots, in {self.folder}\n"
            f"TinyTask (the in-package fake) at {self.fake.url}; goose is a stand-in. Ctrl-C stops it cleanly."
        )
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("TINYSCHEDULER_", "NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_"))
        }
        scheduler = Scheduler(self.loaded, environ=environ)
        timeout = max(50.0, 2.0 * self.count)
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch, scheduler, timeout)
            code = await scheduler.serve()
            group.cancel_scope.cancel()
        self._draw(self.progress())
        return code

    async def _watch(self, scheduler: Scheduler, limit_sec: float) -> None:
        deadline = time.monotonic() + limit_sec
        while True:
            progress = await anyio.to_thread.run_sync(self.progress)
            self._draw(progress)
            if progress.settled or time.monotonic() > deadline:
                if not progress.settled:
                    self._say(f"demo: not finished after {limit_sec:.0f}s; stopping the daemon")
                self.stopped_by_demo = True
                scheduler.request_stop("the demo is done")
                return
            await anyio.sleep(REFRESH_SEC)

    def progress(self) -> Progress:
        assert self.loaded is not None
        s = self.loaded.settings
        retry = {r.task_id for r in self._attempts() if r.failures and not r.gave_up}
        p = Progress(total=self.count)
        for task in self.fake.tasks():
            if FAILED_TAG in task["tags"]:
                p.failed += 1
            elif task["status"] == "complete":
                p.done += 1
                p.finished_by[task["assigned_to"]] = p.finished_by.get(task["assigned_to"], 0) + 1
            elif task["status"] == "working":
                p.running += 1
            else:
                p.idle += 1
                p.blocked += task["is_currently_blocked"]
                p.retrying += task["id"] in retry
        leases = LeaseStore(s.running_dir, s.quarantine_dir, read_only=True).scan().leases
        p.leases = len(leases)
        for lease in leases:
            p.busy[lease.agent] = p.busy.get(lease.agent, 0) + 1
        return p

    def _attempts(self) -> list[AttemptRecord]:
        assert self.loaded is not None
        try:
            return list(read_records(self.loaded.settings.attempts_file).values())
        except (OSError, ValueError):
            return []  # unreadable for a moment: next refresh

    # --- display --------------------------------------------------------------------------------

    def _say(self, text: str) -> None:
        self._drawn = 0  # printed text stays; the live block starts below it
        self.out.write(text + "\n")
        self.out.flush()

    def _draw(self, p: Progress) -> None:
        elapsed = f"{time.monotonic() - self.began:5.1f}s"
        if not self.live:
            # Piped: one plain line per change, so a log of the demo reads like a timeline.
            line = p.line()
            if line != self._last_line:
                self._say(f"{elapsed}  {line}")
                self._last_line = line
            return
        width = 30
        bar = "#" * round(width * p.done / p.total) + "x" * round(width * p.failed / p.total)
        lines = [f"{elapsed}  {p.line()}", f"        [{bar.ljust(width, '.')}]", ""]
        rows = []
        for agent in AGENTS:
            busy = p.busy.get(agent.name, 0)
            rows.append(
                [
                    agent.name,
                    agent.queue,
                    "#" * busy + "." * max(0, agent.slots - busy),
                    f"{busy}/{agent.slots}",
                    p.finished_by.get(agent.name, 0),
                ]
            )
        lines += table(["agent", "queue", "slots", "busy", "done"], rows)
        # A wrapped line would throw off the count of lines to move up over: cut to the width.
        columns = shutil.get_terminal_size().columns - 1
        lines = [line[:columns] for line in lines]
        # Move up over the previous block and clear it, then draw the new one in its place.
        rewind = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
        self.out.write(rewind + "\n".join(lines) + "\n")
        self.out.flush()
        self._drawn = len(lines)

    # --- the end --------------------------------------------------------------------------------

    def summary(self, interrupted: bool) -> str:
        assert self.loaded is not None
        s = self.loaded.settings
        p = self.progress()
        events = _events(s.log_dir)
        finished = [e for e in events if e.get("event") == "finished"]
        lines = [""]
        took = format_age(time.monotonic() - self.began)
        if interrupted:
            lines.append(
                f"Interrupted after {took}: {p.done} of {p.total} tasks complete; runs in flight got the "
                "shutdown grace period, then were stopped and their tasks put back in the queue."
            )
        else:
            lines.append(
                f"Finished in {took}: {p.done} of {p.total} tasks complete, {p.failed} given up (tagged {FAILED_TAG})."
            )
        rows = []
        for agent in AGENTS:
            mine = [e for e in finished if e.get("agent") == agent.name]
            ok = sum(1 for e in mine if e.get("outcome") == "succeeded")
            busy = sum(float(e.get("duration") or 0) for e in mine)
            rows.append([agent.name, agent.queue, agent.slots, len(mine), ok, len(mine) - ok, format_age(busy)])
        lines += ["", *table(["agent", "queue", "slots", "runs", "succeeded", "failed", "busy time"], rows), ""]
        lines += [f"  - {note}" for note in self._notes(finished)]
        return "\n".join(lines) + "\n"

    def _notes(self, finished: Sequence[dict[str, Any]]) -> list[str]:
        notes = []
        runs: dict[int, list[dict[str, Any]]] = {}
        for event in finished:
            runs.setdefault(int(event.get("task_id", 0)), []).append(event)
        by_id = {t["id"]: t for t in self.fake.tasks()}
        for index, seed in enumerate(self.seeds):
            task_id = self.ids[index]
            task = by_id[task_id]
            outcomes = [e.get("outcome") for e in runs.get(task_id, [])]
            if any(tag.startswith("standin:fail-once") for tag in seed.tags) and task["status"] == "complete":
                notes.append(
                    f'task {task_id} "{seed.title}": runs {", ".join(map(str, outcomes))}: '
                    "retried after a backoff and completed"
                )
            elif FAILED_TAG in task["tags"]:
                comments = self.fake.comments(task_id)
                last = f"; its last comment: {comments[-1]['content']}" if comments else ""
                notes.append(
                    f'task {task_id} "{seed.title}": {len(outcomes)} failed attempts, then tagged {FAILED_TAG}{last}'
                )
        chain = [i for i, seed in enumerate(self.seeds) if seed.blocked_by is not None]
        if chain:
            ids = [self.ids[self.seeds[chain[0]].blocked_by or 0], *(self.ids[i] for i in chain)]
            notes.append(f"blocker chain {' -> '.join(map(str, ids))}: {self._chain_verdict(ids)}")
        return notes

    def _chain_verdict(self, ids: list[int]) -> str:
        assert self.loaded is not None
        events = _events(self.loaded.settings.log_dir)
        started = {e["task_id"]: e["timestamp"] for e in events if e.get("event") == "started"}
        ended = {
            e["task_id"]: e["timestamp"]
            for e in events
            if e.get("event") == "finished" and e.get("outcome") == "succeeded"
        }
        pairs = list(itertools.pairwise(ids))
        if not all(b in ended and t in started for b, t in pairs):
            return "not all of it ran"
        in_order = all(datetime.fromisoformat(started[t]) >= datetime.fromisoformat(ended[b]) for b, t in pairs)
        return "each task started only after its blocker completed" if in_order else "ORDER VIOLATED"


def _events(log_dir: Path) -> list[dict[str, Any]]:
    """The daemon's task lifecycle events (events_YYYYMMDD.jsonl), oldest first."""
    events = []
    for path in sorted(log_dir.glob("events_*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
    return events


def _stragglers() -> list[psutil.Process]:
    """Child processes still alive (there should be none: the daemon reaps its runs)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    alive = []
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.append(child)
        except psutil.Error:
            continue
    return alive


def demo_command(*, keep: bool = False, tasks: int = DEFAULT_TASKS, out: TextIO | None = None) -> int:
    """Entry point of `tinyscheduler demo`: 0 when every task ended as planned."""
    out = out or sys.stdout
    if not MIN_TASKS <= tasks <= MAX_TASKS:
        print(
            f"tinyscheduler: --tasks {tasks}: expected {MIN_TASKS} to {MAX_TASKS} "
            "(the demo's special cases need five tasks)",
            file=sys.stderr,
        )
        return 2
    folder = Path(tempfile.mkdtemp(prefix="tinyscheduler-demo-"))
    demo = Demo(folder, tasks, out)
    interrupted = False
    code = 1
    try:
        demo.start()
        try:
            anyio.run(demo.run)
        except KeyboardInterrupt:  # Ctrl-C outside the daemon's own handler (set-up, summary)
            interrupted = True
        interrupted = interrupted or not demo.stopped_by_demo
        progress = demo.progress()
        out.write(demo.summary(interrupted))
        expected_failures = 1  # the task that keeps failing
        ok = not interrupted and progress.settled and progress.failed == expected_failures
        code = 0 if ok else (EXIT_INTERRUPTED if interrupted else 1)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        for process in _stragglers():
            print(f"tinyscheduler: stopping leftover process {process.pid}", file=sys.stderr)
            process.kill()
        demo.close()
        logs = folder / "state" / "logs"
        if keep:
            out.write(
                f"\nLogs: {logs} (scheduler_*.log, events_*.jsonl, tasks/<id>.<attempt>.log)\n"
                f"Folder kept: {folder}\n"
                f"  tinyscheduler --base-path {folder} status\n"
                f"  tinyscheduler --base-path {folder} logs {demo.ids[4] if demo.ids else 1}\n"
            )
        else:
            shutil.rmtree(folder, ignore_errors=True)
            out.write(f"\nLogs were in {logs}; removed with the demo folder (--keep keeps them).\n")
        out.flush()
    return code
