"""One pass, minus the acting: gather a snapshot from TinyTask, the lease folder and the OS, then plan.

The daemon acts on the plan; `run --dry-run` only renders it. Both use exactly this code, so a
dry run shows what the daemon would do.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import anyio

from tinyscheduler.adapters.leasestore import LeaseStore, Quarantined
from tinyscheduler.adapters.procfs import probe
from tinyscheduler.adapters.tinytask import (
    ServerFeatures,
    TaskBatch,
    TaskProblem,
    TinyTaskClient,
    TinyTaskError,
)
from tinyscheduler.config.registry import Registry
from tinyscheduler.core.circuit import Unavailable
from tinyscheduler.core.control import Pauses
from tinyscheduler.core.leases import Lease, Liveness
from tinyscheduler.core.listing import Backlog, Listing, pick
from tinyscheduler.core.planner import PlanConfig, Snapshot
from tinyscheduler.core.tasks import Task

#: Concurrent list requests of the targeted lists: enough to hide latency, few enough to be polite.
FETCH_CONCURRENCY = 8


def plan_config(
    limits: Mapping[str, int],
    registry: Registry | None,
    features: ServerFeatures,
    *,
    disable_blocking: bool,
    heartbeat_sec: float,
    max_runtime_sec: float,
) -> PlanConfig:
    """Queue mode needs a registry and a server with queues; otherwise legacy mode."""
    pools: dict[str, tuple[str, ...]] = {}
    if registry is not None and features.queues:
        for entry in registry.entries:
            pools[entry.queue] = (*pools.get(entry.queue, ()), entry.name)
    return PlanConfig(
        limits=dict(limits),
        pools=pools,
        disable_blocking=disable_blocking or not features.blocking,
        heartbeat_sec=heartbeat_sec,
        max_runtime_sec=max_runtime_sec,
    )


@dataclass(frozen=True)
class Gathered:
    snapshot: Snapshot
    #: Tasks the server sent that could not be used (one log line each).
    problems: tuple[TaskProblem, ...] = ()
    quarantined: tuple[Quarantined, ...] = ()
    #: What a full list of the idle tasks showed (None after targeted lists).
    backlog: Backlog | None = None


@dataclass
class Fetched:
    """The idle tasks a plan needs, as the targeted lists would have returned them."""

    queue_tasks: dict[str, tuple[Task, ...]] = field(default_factory=dict)
    agent_tasks: dict[str, tuple[Task, ...]] = field(default_factory=dict)
    problems: list[TaskProblem] = field(default_factory=list)
    #: What the full list showed (None after targeted lists): core.listing's next choice.
    backlog: Backlog | None = None


async def fetch_tasks(client: TinyTaskClient, config: PlanConfig, listing: Listing = Listing.ALL) -> Fetched:
    """Idle unassigned tasks of every pool's queue and idle tasks of every agent (core.listing):
    from one paged list of every idle task, or from one list per queue and per agent.

    Raises the client's errors: a pass with a partial view of TinyTask must not act.
    """
    queues = sorted(config.pools)
    agents = sorted(planned_agents(config))
    if not queues and not agents:
        return Fetched()
    if listing is Listing.ALL:
        batch = await client.list_tasks(status=["idle"])
        picked = pick(batch.tasks, queues, agents)
        return Fetched(picked.queue_tasks, picked.agent_tasks, list(batch.problems), picked.backlog)
    return await _fetch_targeted(client, queues, agents)


async def _fetch_targeted(client: TinyTaskClient, queues: list[str], agents: list[str]) -> Fetched:
    fetched = Fetched()
    limiter = anyio.CapacityLimiter(FETCH_CONCURRENCY)

    async def one(kind: str, name: str) -> None:
        async with limiter:
            if kind == "queue":
                batch: TaskBatch = await client.idle_unassigned(name)
                fetched.queue_tasks[name] = batch.tasks
            else:
                batch = await client.idle_assigned(name)
                fetched.agent_tasks[name] = batch.tasks
        fetched.problems.extend(batch.problems)

    try:
        async with anyio.create_task_group() as group:
            for queue in queues:
                group.start_soon(one, "queue", queue)
            for agent in agents:
                group.start_soon(one, "agent", agent)
    except BaseExceptionGroup as failed:
        # The task group wraps a failed request in an ExceptionGroup; callers handle TinyTaskError
        # (a pass counts it as TinyTask down, a dry run prints one line), so raise it as itself.
        errors, others = failed.split(TinyTaskError)
        if errors is None or others is not None:
            raise
        raise _first_leaf(errors) from failed
    return fetched


def planned_agents(config: PlanConfig) -> set[str]:
    """Every agent a plan serves: those with a limit and those of a pool."""
    return set(config.limits) | {agent for pool in config.pools.values() for agent in pool}


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


async def gather(
    client: TinyTaskClient,
    config: PlanConfig,
    store: LeaseStore,
    *,
    now: datetime,
    host: str,
    instance_id: str,
    boot_id: str | None,
    supervised: frozenset[int] = frozenset(),
    in_flight: Mapping[int, str] | None = None,
    not_before: Mapping[int, datetime] | None = None,
    unavailable: Mapping[str, Unavailable] | None = None,
    pauses: Pauses | None = None,
    known: Mapping[int, Lease] | None = None,
    listing: Listing = Listing.ALL,
) -> Gathered:
    """`known`: the leases of the runs this daemon supervises, as they last wrote them; their files
    are not read again."""
    scan = await anyio.to_thread.run_sync(store.scan, known)
    # The planner reads the liveness of this host's leases that no run of ours supervises, and no
    # other: probing the rest (one /proc read per run in flight) would be wasted work every pass.
    liveness: dict[int, Liveness] = {
        lease.task_id: probe(lease, boot_id)
        for lease in scan.leases
        if lease.host == host and lease.task_id not in supervised
    }
    fetched = await fetch_tasks(client, config, listing)
    snapshot = Snapshot(
        now=now,
        host=host,
        instance_id=instance_id,
        leases=scan.leases,
        liveness=liveness,
        supervised=supervised,
        in_flight=dict(in_flight or {}),
        queue_tasks=fetched.queue_tasks,
        agent_tasks=fetched.agent_tasks,
        not_before=dict(not_before or {}),
        unavailable=dict(unavailable or {}),
        pauses=pauses or Pauses(),
    )
    return Gathered(snapshot, tuple(fetched.problems), scan.quarantined, fetched.backlog)


# --- what a person reads ---------------------------------------------------------------------------


def queued_and_blocked(snapshot: Snapshot) -> tuple[int, int]:
    """Idle tasks this scheduler could serve, and how many of them are blocked (for STATUS)."""
    seen: dict[int, bool] = {}
    for tasks in (*snapshot.queue_tasks.values(), *snapshot.agent_tasks.values()):
        for task in tasks:
            seen[task.id] = task.is_currently_blocked
    return len(seen), sum(seen.values())
