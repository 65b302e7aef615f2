"""What the parts of the daemon share: identity, stores, the TinyTask connection, counters, wake-ups.

One `Runtime` per daemon instance, built by the Scheduler and handed to each part (pass runner,
lease watcher, reclaimer, runs). Everything runs in the one event loop thread, so plain attributes
need no locks; the configuration is swapped as a whole on reload.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.logsetup import EventLog
from tinyscheduler.adapters.systemd import Notifier
from tinyscheduler.adapters.tinytask import (
    SCHEDULER_NAME,
    ServerFeatures,
    Task,
    TaskBatch,
    TinyTaskClient,
    TinyTaskError,
)
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.core.circuit import Circuits
from tinyscheduler.core.control import Pauses
from tinyscheduler.service.claims import ClaimGate, NoClaims
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.observer import CountingClient, Observer

if TYPE_CHECKING:
    from tinyscheduler.service.runner import Supervised

log = structlog.get_logger("tinyscheduler.daemon")

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Waker:
    """A resettable wake-up: `set()` from anywhere in the loop, `wait(timeout)` from the one owner."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, at_most: float) -> None:
        with anyio.move_on_after(at_most):
            await self._event.wait()
        # No await between the return and the swap: a set() cannot fall in between and be lost.
        self._event = anyio.Event()


class Counters:
    """How often each kind of thing happened since start (shown in last_pass.json and status)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def add(self, name: str, amount: int = 1) -> None:
        self._counts[name] = self._counts.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class Connection:
    """The one TinyTask client of the daemon, opened on first use and kept."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._client: TinyTaskClient | None = None
        self._opening = anyio.Lock()
        #: For runs: supervising a run needs no TinyTask, only its report does, so they connect late.
        self.lazy = LazyClient(self)

    async def client(self) -> TinyTaskClient:
        if self._client is not None:  # every request but the first: no lock, so no extra loop turn
            return self._client
        # Reclaims and the pass may all need the client at start-up: connect once, not once each.
        async with self._opening:
            if self._client is None:
                self._client = await self._open()
            return self._client

    async def _open(self) -> TinyTaskClient:
        s = self._runtime.config.settings
        observer = self._runtime.observer
        try:
            client: TinyTaskClient = CountingClient(
                await connect(s.tinytask_url, s.tinytask_protocol), observer.tinytask_error
            )
        except TinyTaskError as exc:
            observer.tinytask_error(exc)
            raise
        features = client.features
        log.info("tinytask_connected", url=s.tinytask_url, protocol=features.protocol)
        if not features.queues:
            log.warning(
                "tinytask_limited",
                url=s.tinytask_url,
                reason="the server has no queues or blocking (old tinytask-mcp); running legacy mode: "
                "only tasks already assigned to agents start, blocking is not checked",
            )
        return client

    def use(self, client: TinyTaskClient) -> None:
        """Talk to TinyTask through `client` instead of connecting (service tests)."""
        self._client = CountingClient(client, self._runtime.observer.tinytask_error)

    @property
    def opened(self) -> TinyTaskClient | None:
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


class LazyClient(TinyTaskClient):
    """The daemon's client, connected at its first call: a run adopted while TinyTask is down is
    supervised at once and reports (with retries) once TinyTask answers."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    @property
    def features(self) -> ServerFeatures:  # type: ignore[override]
        client = self._connection.opened
        return client.features if client is not None else ServerFeatures(protocol="rest")

    async def aclose(self) -> None:
        await self._connection.aclose()

    async def health(self) -> dict[str, Any]:
        return await (await self._connection.client()).health()

    async def list_queues(self) -> list[str]:
        return await (await self._connection.client()).list_queues()

    async def list_tasks(
        self, *, status: Sequence[str] | None = None, assigned_to: str | None = None, queue_name: str | None = None
    ) -> TaskBatch:
        client = await self._connection.client()
        return await client.list_tasks(status=status, assigned_to=assigned_to, queue_name=queue_name)

    async def get_task(self, task_id: int) -> Task:
        return await (await self._connection.client()).get_task(task_id)

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        return await (await self._connection.client()).update_task(task_id, **fields)

    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None:
        await (await self._connection.client()).add_comment(task_id, content, created_by)


@dataclass
class Runtime:
    config: Configuration
    host: str
    instance_id: str
    boot_id: str | None
    environ: dict[str, str]
    store: LeaseStore
    attempts: AttemptBook
    events: EventLog
    notifier: Notifier
    clock: Clock = utcnow
    counters: Counters = field(default_factory=Counters)
    #: Wakes the tick loop for a pass now (a run ended, a lease was reclaimed, a reload).
    tick: Waker = field(default_factory=Waker)
    #: Runs this instance supervises, by task id.
    runs: dict[int, Supervised] = field(default_factory=dict)
    #: The same runs by agent (the slot counts of a refill look at one agent's runs, not all).
    agent_runs: dict[str, dict[int, Supervised]] = field(default_factory=dict)
    #: Task ids whose lease is being reclaimed right now.
    reclaiming: set[int] = field(default_factory=set)
    #: The breakers of goose and of each agent (service.availability moves them).
    circuits: Circuits = field(default_factory=Circuits)
    #: What operators paused (core.control), as in state/pauses.json; changed by service.control.
    pauses: Pauses = field(default_factory=Pauses)
    stopping: bool = False
    #: Whether the daemon is the child subreaper of its runs (set at start).
    subreaper: bool = False
    #: Whether this host may claim a task (service.claims): always on one host; etcd in a cluster.
    claims: ClaimGate = field(default_factory=NoClaims)
    connection: Connection = field(init=False)
    #: Metrics, run history and what the status page shows (service.observer).
    observer: Observer = field(init=False)

    def __post_init__(self) -> None:
        self.observer = Observer(self)
        self.connection = Connection(self)

    @property
    def busy(self) -> frozenset[int]:
        """Task ids a pass must not start or reclaim: supervised, or being reclaimed."""
        return frozenset(self.runs) | frozenset(self.reclaiming)
