"""One base folder for the service tests: a registry, recipes, fast settings, the in-memory TinyTask
client and a clock the test moves. `world.serve()` runs `Scheduler.serve()` in the test's event loop
(one pass, then the runs to their end, with `once=True`)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import yaml

from tinyscheduler.adapters.tinytask._transport import one_task
from tinyscheduler.config.settings import LoadedSettings, load_settings
from tinyscheduler.core.tasks import Task
from tinyscheduler.service.run import Run, RunRequest
from tinyscheduler.service.runner import run_policy
from tinyscheduler.service.scheduler import Hooks, Scheduler
from tinyscheduler.service.session import RunDeps
from tinyscheduler.testing.memory import InMemoryTinyTask

from harness import STANDIN


class Clock:
    """The wall clock the daemon reads, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class World:
    base: Path
    client: InMemoryTinyTask
    clock: Clock = field(default_factory=Clock)
    settings: dict[str, str] = field(default_factory=dict)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def records_file(self) -> Path:
        return self.base / "standin-records.jsonl"

    @property
    def running_dir(self) -> Path:
        return self.base / "state" / "running"

    def leases(self) -> list[Path]:
        """The lease files (the folder also keeps hidden spare files for the next writes)."""
        return sorted(self.running_dir.glob("task_*.json"))

    def registry(self, agents: list[tuple[str, str, int]]) -> None:
        entries = [{"agentName": name, "agentType": queue, "slots": slots} for name, queue, slots in agents]
        (self.base / "agent-control.json").write_text(json.dumps(entries))
        for name, _, _ in agents:
            self.recipe(name)

    def recipe(self, agent: str, **standin: Any) -> None:
        recipe = {
            "title": agent,
            "description": "stand-in recipe",
            "prompt": "work on {{ task_id }} as {{ agent }}",
            "parameters": [
                {"key": "task_id", "input_type": "string", "requirement": "required"},
                {"key": "agent", "input_type": "string", "requirement": "required"},
            ],
            "standin": standin or {"mode": "succeed", "seconds": 0},
        }
        folder = self.base / "recipes"
        folder.mkdir(exist_ok=True)
        (folder / f"{agent}.yaml").write_text(yaml.safe_dump(recipe))

    def loaded(self) -> LoadedSettings:
        cli = {
            "base_path": str(self.base),
            "goose_bin": STANDIN,
            "loop_interval_sec": "1",
            "heartbeat_sec": "1",
            "stop_grace_sec": "0.3",
            "retry_base_sec": "60",
            "shutdown_grace_sec": "5",
            "log_format": "json",
            **self.settings,
        }
        return load_settings(env_file=None, cli=cli, environ={}, cwd=self.base)

    def scheduler(self, *, once: bool = True, hooks: Hooks | None = None) -> Scheduler:
        environ = {
            "PATH": "/usr/bin:/bin",
            "TINYSCHEDULER_STANDIN_RECORD": str(self.records_file),
            "TINYSCHEDULER_ALLOW_STANDIN": "1",  # the in-memory TinyTask is no server to vouch for it
        }
        return Scheduler(self.loaded(), once=once, environ=environ, hooks=hooks, client=self.client, clock=self.clock)

    def run(self, task_id: int, agent: str = "dev-a", *, queue: str | None = None, **policy_changes: Any) -> Run:
        """One run as a pass would start it, on the task as it is now (a list's view of it, read
        without a call), outside a pass; `queue`: the pass assigns it from that queue. Its events go
        to `self.events`."""
        scheduler = self.scheduler()
        rt = scheduler.runtime
        rt.store.ensure()
        policy = dataclasses.replace(run_policy(rt), **policy_changes)
        deps = RunDeps(
            client=self.client,
            leases=rt.store,
            attempts=rt.attempts,
            clock=self.clock,
            environ=rt.environ,
            on_event=lambda name, fields: self.events.append((name, fields)),
        )
        return Run(RunRequest(task_id, agent, f"{agent}.yaml", queue=queue), policy, deps, listed=self.listed(task_id))

    def listed(self, task_id: int) -> Task:
        """The task as a list shows it now, without a call of the client."""
        return one_task(self.client.store.get(task_id), "the test's list")

    async def serve(self, **kwargs: Any) -> int:
        return await self.scheduler(**kwargs).serve()

    def records(self) -> list[dict[str, Any]]:
        if not self.records_file.exists():
            return []
        return [json.loads(line) for line in self.records_file.read_text().splitlines()]

    def starts(self) -> list[int]:
        return [r["task_id"] for r in self.records() if r["event"] == "start"]

    def last_pass(self) -> dict[str, Any]:
        return dict(json.loads((self.base / "state" / "last_pass.json").read_text()))

    def comments(self, task_id: int) -> list[str]:
        return [c["content"] for c in self.client.comments(task_id)]


@asynccontextmanager
async def daemon(world: World, hooks: Hooks | None = None) -> AsyncIterator[Scheduler]:
    """The daemon serving in this event loop until the block ends."""
    scheduler = world.scheduler(once=False, hooks=hooks)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        with anyio.fail_after(10):
            while not (world.base / "state" / "control.sock").exists():
                await anyio.sleep(0.01)
        try:
            yield scheduler
        finally:
            scheduler.request_stop("test over")


async def until(condition: Any, what: str, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)
