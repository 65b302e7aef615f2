"""What the run supervisor tests build on: the fake TinyTask over real HTTP, real lease files under
tmp_path, the stand-in goose as a real process (the `bench` fixture in conftest.py opens one).

Every process a test starts is killed when the bench closes, found by the lease path under
tmp_path that `Run` puts in its environment (runs have sessions of their own).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import psutil
import yaml

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.containment import RunCgroups
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.procfs import current_boot_id
from tinyscheduler.adapters.tinytask import TaskBatch, TinyTaskClient, TinyTaskUnavailable
from tinyscheduler.adapters.tinytask.rest import RestClient
from tinyscheduler.core.tasks import Task
from tinyscheduler.service.run import Run, RunPolicy, RunRequest
from tinyscheduler.service.runtime import utcnow
from tinyscheduler.service.session import RunDeps
from tinyscheduler.testing.fake import FakeTinyTask

from harness import STANDIN, Deadline

T = TypeVar("T")


async def eventually(predicate: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """`harness.wait_for` for coroutines: poll without blocking the event loop."""
    deadline = Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        await asyncio.sleep(0.02)
    return value


class FlakyClient(TinyTaskClient):
    """The real REST client behind a switch: `down` (or `fail_next` calls) raise TinyTaskUnavailable."""

    def __init__(self, inner: TinyTaskClient) -> None:
        self.inner = inner
        self.features = inner.features
        self.down = False
        self.fail_next = 0
        self.failed_calls = 0
        self.before_update: Callable[[int, dict[str, Any]], None] | None = None

    def _gate(self) -> None:
        if self.down or self.fail_next > 0:
            self.fail_next = max(0, self.fail_next - 1)
            self.failed_calls += 1
            raise TinyTaskUnavailable("switched off by the test")

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def health(self) -> dict[str, Any]:
        self._gate()
        return await self.inner.health()

    async def list_queues(self) -> list[str]:
        self._gate()
        return await self.inner.list_queues()

    async def list_tasks(
        self, *, status: Sequence[str] | None = None, assigned_to: str | None = None, queue_name: str | None = None
    ) -> TaskBatch:
        self._gate()
        return await self.inner.list_tasks(status=status, assigned_to=assigned_to, queue_name=queue_name)

    async def get_task(self, task_id: int) -> Task:
        self._gate()
        return await self.inner.get_task(task_id)

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        self._gate()
        if self.before_update is not None:
            self.before_update(task_id, fields)
        return await self.inner.update_task(task_id, **fields)

    async def add_comment(self, task_id: int, content: str, created_by: str = "tinyscheduler") -> None:
        self._gate()
        await self.inner.add_comment(task_id, content, created_by)


@dataclass
class RunBench:
    root: Path
    fake: FakeTinyTask
    client: FlakyClient
    policy: RunPolicy
    leases: LeaseStore
    attempts: AttemptBook
    record: Path
    environ: dict[str, str]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def recipe(self, name: str, **standin: Any) -> str:
        recipe = {
            "title": name,
            "description": "stand-in recipe",
            "prompt": "work on {{ task_id }} as {{ agent }}",
            "parameters": [
                {"key": "task_id", "input_type": "string", "requirement": "required"},
                {"key": "agent", "input_type": "string", "requirement": "required"},
            ],
            "standin": standin,
        }
        (self.policy.recipes_dir / name).write_text(yaml.safe_dump(recipe))
        return name

    def task(self, agent: str = "dev", **fields: Any) -> int:
        return int(self.fake.create_task(f"task for {agent}", assigned_to=agent, **fields)["id"])

    def run(
        self, task_id: int, recipe: str, agent: str = "dev", cgroups: RunCgroups | None = None, **policy_changes: Any
    ) -> Run:
        deps = RunDeps(
            client=self.client,
            leases=self.leases,
            attempts=self.attempts,
            clock=utcnow,
            environ=self.environ,
            on_event=lambda name, fields: self.events.append((name, fields)),
            cgroups=cgroups,
        )
        return Run(RunRequest(task_id, agent, recipe), replace(self.policy, **policy_changes), deps)

    def records(self) -> list[dict[str, Any]]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    def starts(self, task_id: int) -> int:
        return sum(1 for r in self.records() if r["event"] == "start" and r["task_id"] == task_id)

    def comments(self, task_id: int) -> list[str]:
        return [c["content"] for c in self.fake.comments(task_id)]

    def ours(self) -> list[psutil.Process]:
        """Live processes started for this test (their lease path is under our folder)."""
        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(
                    "TINYSCHEDULER_LEASE", ""
                ).startswith(str(self.root)):
                    found.append(process)
        return found


@contextlib.asynccontextmanager
async def open_bench(tmp_path: Path, fake: FakeTinyTask) -> AsyncIterator[RunBench]:
    """A run's surroundings under `tmp_path`; every process started for it is killed on the way out."""
    for folder in ("base", "recipes", "logs"):
        (tmp_path / folder).mkdir()
    policy = RunPolicy(
        goose_bin=STANDIN,
        goose_args=(),
        base_path=tmp_path / "base",
        recipes_dir=tmp_path / "recipes",
        task_log_dir=tmp_path / "logs",
        tinytask_url=fake.url,
        heartbeat_sec=0.2,
        max_runtime_sec=30,
        stop_grace_sec=0.3,
        idle_timeout_sec=0,
        run_log_max_bytes=1024 * 1024,
        host="testhost",
        instance_id="instance-under-test",
        boot_id=current_boot_id(),
        report_timeout_sec=2,
    )
    leases = LeaseStore(tmp_path / "state" / "running", tmp_path / "state" / "quarantine")
    leases.ensure()
    record = tmp_path / "standin-record.jsonl"
    environ = {
        **os.environ,
        "TINYSCHEDULER_STANDIN_RECORD": str(record),
        "NOTIFY_SOCKET": "/run/test/notify",
        "WATCHDOG_USEC": "1000000",
        "LISTEN_FDS": "1",
    }
    client = FlakyClient(RestClient(fake.url, retries=0, connect_timeout=2, read_timeout=5))
    attempts = AttemptBook(tmp_path / "state" / "attempts.json", max_attempts=3, retry_base_sec=0)
    bench = RunBench(tmp_path, fake, client, policy, leases, attempts, record, environ)
    try:
        yield bench
    finally:
        for process in bench.ours():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        await client.aclose()
