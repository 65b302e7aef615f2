"""Planner properties over generated snapshots (hypothesis): whatever TinyTask, the lease folder and
the configuration say, a plan never breaks the rules that keep a host safe."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyscheduler.core.control import Pause, Pauses, Scope
from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.planner import LeaseVerdict, Plan, PlanConfig, Snapshot, plan
from tinyscheduler.core.tasks import FAILED_TAG, Task

NOW = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
HOST = "host-a"
ME = "instance-now"

AGENT_NAMES = ["a", "ab", "b", "dev-1", "dev-10", "qa.2", "Z"]
QUEUE_NAMES = ["dev", "qa", "ops"]
TASK_IDS = st.integers(min_value=1, max_value=40)

PROPERTY_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Scene:
    snapshot: Snapshot
    config: PlanConfig
    #: Every task by id, as generated (the lists hold copies with assigned_to filled in).
    tasks: dict[int, Task]


@st.composite
def task_bodies(draw: st.DrawFn, task_id: int, ids: list[int]) -> Task:
    blocked_by = draw(st.none() | st.sampled_from(ids))
    return Task(
        id=task_id,
        title=f"t{task_id}",
        status=draw(st.sampled_from(["idle", "idle", "idle", "working", "complete"])),
        priority=draw(st.integers(-2, 3)),
        tags=draw(st.sampled_from([(), (), ("x",), (FAILED_TAG,)])),
        blocked_by_task_id=blocked_by,
        is_currently_blocked=blocked_by is not None and draw(st.booleans()),
        created_at=NOW - timedelta(minutes=draw(st.integers(0, 5))),
        queue_name=draw(st.sampled_from([None, *QUEUE_NAMES])),
    )


@st.composite
def scenes(draw: st.DrawFn) -> Scene:
    agents = draw(st.lists(st.sampled_from(AGENT_NAMES), min_size=1, max_size=5, unique=True))
    queues = draw(st.lists(st.sampled_from(QUEUE_NAMES), max_size=3, unique=True))  # [] = legacy mode
    pools = {q: draw(st.lists(st.sampled_from(agents), max_size=3)) for q in queues}  # may repeat or be empty
    limited = draw(st.lists(st.sampled_from(agents), unique=True))
    limits = {a: draw(st.integers(-1, 3)) for a in limited}
    known_agents = sorted(set(limits) | {a for pool in pools.values() for a in pool})

    ids = sorted(draw(st.sets(TASK_IDS, max_size=25)))
    tasks = {i: draw(task_bodies(i, ids)) for i in ids}
    id_lists = st.lists(st.sampled_from(ids), max_size=10) if ids else st.just([])
    queue_tasks = {q: [tasks[i] for i in draw(id_lists)] for q in queues}
    agent_tasks = {a: [dataclasses.replace(tasks[i], assigned_to=a) for i in draw(id_lists)] for a in known_agents}

    leases: list[Lease] = []
    liveness: dict[int, Liveness] = {}
    for task_id in draw(st.sets(TASK_IDS, max_size=8)):
        pid = draw(st.none() | st.integers(2, 99999))
        leases.append(
            Lease(
                task_id=task_id,
                agent=draw(st.sampled_from(agents)),
                pid=pid,
                recipe="r.yaml",
                started_at=NOW - timedelta(seconds=draw(st.integers(0, 8000))),
                heartbeat=NOW - timedelta(seconds=draw(st.integers(0, 100))),
                host=draw(st.sampled_from([HOST, HOST, "host-b"])),
                state=draw(st.sampled_from(list(LeaseState))),
                owner=draw(st.sampled_from([ME, ME, None, "instance-old"])),
            )
        )
        liveness[task_id] = Liveness.NO_PROCESS if pid is None else draw(st.sampled_from(list(Liveness)))
    supervised = frozenset(draw(st.lists(st.sampled_from([lease.task_id for lease in leases]))) if leases else ())
    # runs of this instance: some with a lease already written, some not yet
    in_flight = {i: draw(st.sampled_from(agents)) for i in draw(st.sets(TASK_IDS, max_size=3))}
    not_before = (
        {i: NOW + timedelta(seconds=draw(st.integers(-120, 120))) for i in draw(st.lists(st.sampled_from(ids))) if ids}
        if ids
        else {}
    )

    targets = [(Scope.HOST, "")] + [(Scope.AGENT, a) for a in agents] + [(Scope.QUEUE, q) for q in QUEUE_NAMES]
    paused = draw(st.lists(st.sampled_from(targets), max_size=3, unique=True) | st.just([]))
    snapshot = Snapshot(
        now=NOW,
        host=HOST,
        instance_id=ME,
        pauses=Pauses(tuple(Pause(scope, target, "op", NOW) for scope, target in paused)),
        leases=tuple(leases),
        liveness=liveness,
        supervised=supervised,
        in_flight=in_flight,
        queue_tasks=queue_tasks,
        agent_tasks=agent_tasks,
        not_before=not_before,
    )
    config = PlanConfig(
        limits=limits,
        pools=pools,
        disable_blocking=draw(st.booleans()),
        heartbeat_sec=15,
        max_runtime_sec=3600,
    )
    return Scene(snapshot, config, tasks)


def served_lists(scene: Scene) -> list[tuple[str | None, list[Task]]]:
    """Every list the planner is meant to look at, with the agent it belongs to (None: a queue)."""
    s, c = scene.snapshot, scene.config
    lists: list[tuple[str | None, list[Task]]] = [(None, list(s.queue_tasks.get(q, ()))) for q in c.pools]
    lists += [(a, list(ts)) for a, ts in s.agent_tasks.items()]
    return lists


@given(scenes())
@PROPERTY_SETTINGS
def test_never_exceeds_any_agents_limit(scene: Scene) -> None:
    result = plan(scene.snapshot, scene.config)
    per_agent = Counter(start.agent for start in result.starts)
    for slot in result.slots:
        limit = max(0, scene.config.limits.get(slot.agent, 0))
        assert slot.limit == limit
        assert slot.starting == per_agent[slot.agent]
        # busy may already be over the limit (limit lowered); then nothing starts
        assert slot.starting <= max(0, limit - slot.busy)
        holding = {
            lease.task_id: lease.agent
            for lease, decision in zip(scene.snapshot.leases, result.leases, strict=True)
            if lease.state is not LeaseState.FINISHING
            # Every lease of this host that may still have a process holds a slot.
            and decision.verdict not in (LeaseVerdict.SETTLE, LeaseVerdict.FOREIGN)
        } | dict(scene.snapshot.in_flight)
        assert slot.busy == sum(1 for agent in holding.values() if agent == slot.agent)
    assert set(per_agent) <= {slot.agent for slot in result.slots}


@given(scenes())
@PROPERTY_SETTINGS
def test_never_starts_a_blocked_task_unless_blocking_is_disabled(scene: Scene) -> None:
    result = plan(scene.snapshot, scene.config)
    if not scene.config.disable_blocking:
        assert not [s.task_id for s in result.starts if scene.tasks[s.task_id].is_currently_blocked]


@given(scenes())
@PROPERTY_SETTINGS
def test_never_starts_a_task_twice_nor_one_already_leased(scene: Scene) -> None:
    result = plan(scene.snapshot, scene.config)
    ids = [s.task_id for s in result.starts]
    assert len(ids) == len(set(ids))
    assert not set(ids) & {lease.task_id for lease in scene.snapshot.leases}
    assert not set(ids) & set(scene.snapshot.in_flight)
    assigned = [a.task_id for a in result.assignments]
    assert len(assigned) == len(set(assigned))


@given(scenes())
@PROPERTY_SETTINGS
def test_only_idle_tasks_without_failed_tag_or_backoff_start(scene: Scene) -> None:
    result = plan(scene.snapshot, scene.config)
    for start in result.starts:
        t = scene.tasks[start.task_id]
        assert t.status == "idle"
        assert FAILED_TAG not in t.tags
        until = scene.snapshot.not_before.get(t.id)
        assert until is None or until <= NOW


@given(scenes())
@PROPERTY_SETTINGS
def test_starts_come_from_the_right_lists(scene: Scene) -> None:
    s, c = scene.snapshot, scene.config
    result = plan(s, c)
    assignments = {a.task_id: a for a in result.assignments}
    for start in result.starts:
        if start.newly_assigned:
            a = assignments[start.task_id]
            assert a.agent == start.agent
            assert start.agent in c.pools[a.queue]
            assert start.task_id in {t.id for t in s.queue_tasks[a.queue]}
        else:
            assert start.task_id not in assignments
            assert start.task_id in {t.id for t in s.agent_tasks[start.agent]}
    assert set(assignments) <= {x.task_id for x in result.starts if x.newly_assigned}


@given(scenes())
@PROPERTY_SETTINGS
def test_every_fetched_task_is_started_or_skipped_with_a_reason(scene: Scene) -> None:
    result = plan(scene.snapshot, scene.config)
    accounted = {s.task_id for s in result.starts} | {s.task_id for s in result.skips if s.reason.strip()}
    for _, tasks in served_lists(scene):
        for t in tasks:
            assert t.id in accounted, f"task {t.id} neither started nor skipped"
    assert all(d.reason.strip() for d in result.leases)
    assert len(result.leases) == len(scene.snapshot.leases)


def _reordered(scene: Scene) -> tuple[Snapshot, PlanConfig]:
    """The same facts with every mapping in reverse insertion order and pools listed backwards."""
    s, c = scene.snapshot, scene.config
    snapshot = Snapshot(
        now=s.now,
        host=s.host,
        instance_id=s.instance_id,
        leases=tuple(s.leases),
        liveness=dict(reversed(list(s.liveness.items()))),
        supervised=frozenset(s.supervised),
        in_flight=dict(reversed(list(s.in_flight.items()))),
        queue_tasks=dict(reversed(list(s.queue_tasks.items()))),
        agent_tasks=dict(reversed(list(s.agent_tasks.items()))),
        not_before=dict(reversed(list(s.not_before.items()))),
        pauses=Pauses(tuple(reversed(s.pauses.items))),
    )
    config = PlanConfig(
        limits=dict(reversed(list(c.limits.items()))),
        pools={q: list(reversed(p)) for q, p in reversed(list(c.pools.items()))},
        disable_blocking=c.disable_blocking,
        heartbeat_sec=c.heartbeat_sec,
        max_runtime_sec=c.max_runtime_sec,
    )
    return snapshot, config


@given(scenes())
@PROPERTY_SETTINGS
def test_deterministic_for_the_same_input(scene: Scene) -> None:
    first: Plan = plan(scene.snapshot, scene.config)
    assert plan(scene.snapshot, scene.config) == first
    # Mapping order is not an input: the same facts, listed differently, give the same plan.
    assert plan(*_reordered(scene)) == first
    assert first.to_json() == plan(*_reordered(scene)).to_json()


@given(scenes())
@PROPERTY_SETTINGS
def test_nothing_paused_is_assigned_or_started_and_every_paused_task_says_who_paused_it(scene: Scene) -> None:
    pauses = scene.snapshot.pauses
    result = plan(scene.snapshot, scene.config)
    for start in result.starts:
        # A queue's task is started under its queue; an agent's task under its own queue name.
        assert pauses.holding(start.agent, start.queue) is None
    for assignment in result.assignments:
        assert pauses.holding(assignment.agent, assignment.queue) is None
    if pauses.host is not None:
        assert not result.starts and not result.assignments
        described = pauses.host.text
        # Every task that could start otherwise is skipped with the host's pause as its reason.
        unpaused = plan(dataclasses.replace(scene.snapshot, pauses=Pauses()), scene.config)
        held = {skip.task_id: skip.reason for skip in result.skips}
        assert all(held[start.task_id] == described for start in unpaused.starts)
