"""The planner, rule by rule, with plain data: lease verdicts, slots, queue and legacy mode,
blocking, skips and their reasons. Every test pins one behaviour of planner.py's docstring."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.planner import (
    STALE_HEARTBEATS,
    AgentSlots,
    LeaseVerdict,
    Plan,
    PlanConfig,
    Snapshot,
    blocker_first_order,
    count_blocked_by,
    judge_lease,
    plan,
    refill,
)
from tinyscheduler.core.tasks import FAILED_TAG, Task
from tinyscheduler.core.text import iso

NOW = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
HOST = "host-a"
ME = "instance-now"
HEARTBEAT = 15.0
MAX_RUNTIME = 3600.0


# --- builders --------------------------------------------------------------------------------------


def task(
    task_id: int,
    *,
    agent: str | None = None,
    queue: str | None = None,
    priority: int = 0,
    age: int = 0,
    status: str = "idle",
    blocked_by: int | None = None,
    blocked: bool = False,
    tags: Iterable[str] = (),
) -> Task:
    """A task created `age` minutes before NOW (older tasks have larger ages)."""
    return Task(
        id=task_id,
        title=f"task {task_id}",
        status=status,
        assigned_to=agent,
        queue_name=queue,
        priority=priority,
        blocked_by_task_id=blocked_by,
        is_currently_blocked=blocked,
        tags=tuple(tags),
        created_at=NOW - timedelta(minutes=age),
    )


def lease(
    task_id: int,
    agent: str = "a",
    *,
    host: str = HOST,
    owner: str | None = ME,
    pid: int | None = 4242,
    runtime: float = 60,
    heartbeat_age: float = 5,
    start_ticks: int | None = 1234,
) -> Lease:
    return Lease(
        task_id=task_id,
        agent=agent,
        pid=pid,
        recipe=f"{agent}.yaml",
        started_at=NOW - timedelta(seconds=runtime),
        heartbeat=NOW - timedelta(seconds=heartbeat_age),
        host=host,
        state=LeaseState.RUNNING,
        owner=owner,
        start_ticks=start_ticks,
    )


def snap(
    *,
    leases: Sequence[Lease] = (),
    liveness: Mapping[int, Liveness] | None = None,
    supervised: Iterable[int] = (),
    in_flight: Mapping[int, str] | None = None,
    queue_tasks: Mapping[str, Sequence[Task]] | None = None,
    agent_tasks: Mapping[str, Sequence[Task]] | None = None,
    not_before: Mapping[int, datetime] | None = None,
) -> Snapshot:
    """A snapshot; leases default to ALIVE unless `liveness` says otherwise."""
    alive = {item.task_id: Liveness.ALIVE for item in leases}
    alive.update(liveness or {})
    return Snapshot(
        now=NOW,
        host=HOST,
        instance_id=ME,
        leases=tuple(leases),
        liveness=alive,
        supervised=frozenset(supervised),
        in_flight=dict(in_flight or {}),
        queue_tasks=dict(queue_tasks or {}),
        agent_tasks=dict(agent_tasks or {}),
        not_before=dict(not_before or {}),
    )


def cfg(
    limits: Mapping[str, int],
    pools: Mapping[str, Sequence[str]] | None = None,
    *,
    disable_blocking: bool = False,
) -> PlanConfig:
    return PlanConfig(
        limits=dict(limits),
        pools=dict(pools or {}),
        disable_blocking=disable_blocking,
        heartbeat_sec=HEARTBEAT,
        max_runtime_sec=MAX_RUNTIME,
    )


def started(result: Plan) -> list[tuple[int, str]]:
    return [(s.task_id, s.agent) for s in result.starts]


def started_ids(result: Plan) -> list[int]:
    return [s.task_id for s in result.starts]


def skip_reasons(result: Plan) -> dict[int, list[str]]:
    reasons: dict[int, list[str]] = {}
    for s in result.skips:
        reasons.setdefault(s.task_id, []).append(s.reason)
    return reasons


def slot(result: Plan, agent: str) -> AgentSlots:
    (found,) = [s for s in result.slots if s.agent == agent]
    return found


# --- 1. lease verdicts -----------------------------------------------------------------------------

LEASE_CASES: list[tuple[str, dict[str, Any], Liveness, bool, LeaseVerdict, str]] = [
    # id, lease kwargs, liveness, supervised, verdict, words the reason must contain
    ("other host", {"host": "host-b"}, Liveness.ALIVE, False, LeaseVerdict.FOREIGN, "host-b"),
    ("other host even if dead", {"host": "host-b"}, Liveness.DEAD, False, LeaseVerdict.FOREIGN, "host-b"),
    ("supervised", {}, Liveness.ALIVE, True, LeaseVerdict.KEEP, "supervised"),
    ("supervised wins over liveness", {"runtime": 99_999}, Liveness.DEAD, True, LeaseVerdict.KEEP, "supervised"),
    ("no process yet", {"pid": None}, Liveness.NO_PROCESS, False, LeaseVerdict.RECOVER, "by its tag"),
    ("dead", {}, Liveness.DEAD, False, LeaseVerdict.SETTLE, "4242 ended while no scheduler watched it"),
    ("pid reused", {}, Liveness.REUSED, False, LeaseVerdict.SETTLE, "another process"),
    # A run belongs to the host: a live run of a previous instance is adopted, never stopped for that.
    ("previous instance", {"owner": "instance-old"}, Liveness.ALIVE, False, LeaseVerdict.ADOPT, "instance-old"),
    ("no owner recorded", {"owner": None}, Liveness.ALIVE, False, LeaseVerdict.ADOPT, "(unknown)"),
    (
        "original schema cannot be verified",
        {"owner": None, "start_ticks": None},
        Liveness.ALIVE,
        False,
        LeaseVerdict.WAIT,
        "never signalled",
    ),
    ("over max runtime", {"runtime": MAX_RUNTIME + 1}, Liveness.ALIVE, False, LeaseVerdict.ADOPT, "runtime"),
    ("exactly max runtime", {"runtime": MAX_RUNTIME}, Liveness.ALIVE, False, LeaseVerdict.KEEP, "alive"),
    (
        "stale heartbeat",
        {"heartbeat_age": STALE_HEARTBEATS * HEARTBEAT + 1},
        Liveness.ALIVE,
        False,
        LeaseVerdict.ADOPT,
        "heartbeat",
    ),
    (
        "heartbeat exactly at the limit",
        {"heartbeat_age": STALE_HEARTBEATS * HEARTBEAT},
        Liveness.ALIVE,
        False,
        LeaseVerdict.KEEP,
        "alive",
    ),
    ("heartbeat 2 intervals old", {"heartbeat_age": 2 * HEARTBEAT}, Liveness.ALIVE, False, LeaseVerdict.KEEP, "alive"),
    ("alive and fresh", {}, Liveness.ALIVE, False, LeaseVerdict.KEEP, "4242 is alive"),
    # A dead process cannot be stopped: being gone outranks every reason to stop it.
    ("dead and over runtime", {"runtime": MAX_RUNTIME * 2}, Liveness.DEAD, False, LeaseVerdict.SETTLE, "ended"),
    ("reused and previous owner", {"owner": "instance-old"}, Liveness.REUSED, False, LeaseVerdict.SETTLE, "ended"),
]


@pytest.mark.parametrize(
    ("kwargs", "liveness", "supervised", "verdict", "words"),
    [case[1:] for case in LEASE_CASES],
    ids=[case[0] for case in LEASE_CASES],
)
def test_lease_verdicts(
    kwargs: dict[str, Any], liveness: Liveness, supervised: bool, verdict: LeaseVerdict, words: str
) -> None:
    item = lease(9, "a", **kwargs)
    s = snap(leases=[item], liveness={9: liveness}, supervised=[9] if supervised else [])
    decision = judge_lease(item, s, cfg({"a": 1}))
    assert decision.verdict is verdict
    assert words in decision.reason
    assert (decision.task_id, decision.agent) == (9, "a")
    # plan() gives every lease the same verdict, in lease order
    assert plan(s, cfg({"a": 1})).leases == (decision,)


def test_lease_whose_process_was_not_probed_is_kept_not_requeued() -> None:
    item = lease(9, "a", owner="instance-old", runtime=MAX_RUNTIME * 2)
    s = Snapshot(now=NOW, host=HOST, instance_id=ME, leases=(item,))
    decision = judge_lease(item, s, cfg({"a": 1}))
    assert decision.verdict is LeaseVerdict.KEEP and "not checked" in decision.reason
    assert slot(plan(s, cfg({"a": 1})), "a").busy == 1


def test_recoveries_are_the_leases_to_adopt_settle_or_recover_only() -> None:
    leases = [
        lease(1, host="host-b"),
        lease(2),
        lease(3),
        lease(4, owner="instance-old"),
        lease(5, pid=None),
        lease(6, start_ticks=None, owner=None),
    ]
    s = snap(leases=leases, liveness={3: Liveness.DEAD, 5: Liveness.NO_PROCESS})
    result = plan(s, cfg({"a": 9}))
    assert [(d.task_id, d.verdict) for d in result.recoveries] == [
        (3, LeaseVerdict.SETTLE),
        (4, LeaseVerdict.ADOPT),
        (5, LeaseVerdict.RECOVER),
    ]


# --- 2. slots --------------------------------------------------------------------------------------


def test_free_slots_are_limit_minus_busy() -> None:
    s = snap(leases=[lease(100)], agent_tasks={"a": [task(i, agent="a", age=10 - i) for i in range(1, 6)]})
    result = plan(s, cfg({"a": 3}))
    assert started_ids(result) == [1, 2]
    assert slot(result, "a") == AgentSlots("a", limit=3, busy=1, starting=2)
    assert slot(result, "a").free_after == 0
    reasons = skip_reasons(result)
    assert sorted(reasons) == [3, 4, 5]
    assert all("no free slot" in r for rs in reasons.values() for r in rs)


def test_more_leases_than_the_limit_never_goes_negative() -> None:
    s = snap(leases=[lease(100), lease(101), lease(102)], agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 2}))
    assert result.starts == ()
    assert slot(result, "a") == AgentSlots("a", limit=2, busy=3, starting=0)
    assert slot(result, "a").free_after == 0
    assert "no free slot" in skip_reasons(result)[1][0]


@pytest.mark.parametrize(
    ("liveness", "extra", "verdict", "starts"),
    [
        (Liveness.DEAD, {}, LeaseVerdict.SETTLE, 1),  # its process is gone: its slot is free again
        (Liveness.REUSED, {}, LeaseVerdict.SETTLE, 1),
        (Liveness.NO_PROCESS, {"pid": None}, LeaseVerdict.RECOVER, 0),  # a process may run, its pid unrecorded
        (Liveness.ALIVE, {"runtime": MAX_RUNTIME + 10}, LeaseVerdict.ADOPT, 0),  # still running until stopped
        (Liveness.ALIVE, {"owner": "instance-old"}, LeaseVerdict.ADOPT, 0),
        (Liveness.ALIVE, {"owner": None, "start_ticks": None}, LeaseVerdict.WAIT, 0),
        (Liveness.ALIVE, {}, LeaseVerdict.KEEP, 0),
    ],
    ids=["dead", "reused", "no-process", "adopt-runtime", "adopt-previous-owner", "wait-unverifiable", "keep"],
)
def test_requeued_leases_free_their_slot_unless_pidless_stopping_ones_do_not(
    liveness: Liveness, extra: dict[str, Any], verdict: LeaseVerdict, starts: int
) -> None:
    s = snap(leases=[lease(100, **extra)], liveness={100: liveness}, agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert result.leases[0].verdict is verdict
    assert len(result.starts) == starts
    assert slot(result, "a").busy == 1 - starts


def test_foreign_leases_do_not_take_a_slot() -> None:
    s = snap(leases=[lease(100, host="host-b"), lease(101, host="host-c")], agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert started(result) == [(1, "a")]
    assert slot(result, "a").busy == 0


def test_leases_count_only_for_their_own_agent() -> None:
    s = snap(leases=[lease(100, "b")], agent_tasks={"a": [task(1, agent="a")], "b": [task(2, agent="b")]})
    result = plan(s, cfg({"a": 1, "b": 1}))
    assert started(result) == [(1, "a")]
    assert slot(result, "b").busy == 1


def test_run_in_flight_before_its_lease_exists_holds_a_slot() -> None:
    # A run of this instance writes its lease only after claiming the task: until then it must
    # still count, or the next pass hands its slot out a second time.
    s = snap(in_flight={50: "a"}, agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert result.starts == ()
    assert slot(result, "a").busy == 1
    assert "no free slot" in skip_reasons(result)[1][0]


@pytest.mark.parametrize("liveness", [Liveness.ALIVE, Liveness.DEAD])
def test_run_in_flight_with_its_lease_counts_once(liveness: Liveness) -> None:
    s = snap(
        leases=[lease(50, "a")],
        liveness={50: liveness},
        in_flight={50: "a"},
        agent_tasks={"a": [task(1, agent="a"), task(2, agent="a")]},
    )
    result = plan(s, cfg({"a": 2}))
    assert slot(result, "a").busy == 1
    assert started_ids(result) == [1]


def test_task_in_flight_is_not_started_again() -> None:
    s = snap(in_flight={1: "b"}, queue_tasks={"dev": [task(1)]}, agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1, "b": 1}, {"dev": ["a"]}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["already running on this host", "already running on this host"]}
    assert slot(result, "b").busy == 1


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_zero_or_negative_starts_nothing(limit: int) -> None:
    s = snap(agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": limit}))
    assert result.starts == ()
    assert slot(result, "a") == AgentSlots("a", limit=0, busy=0, starting=0)
    assert "no free slot" in skip_reasons(result)[1][0]


def test_lease_of_an_agent_without_a_limit_is_judged_and_harmless() -> None:
    s = snap(leases=[lease(100, "ghost")], agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert result.leases[0].verdict is LeaseVerdict.KEEP
    assert started(result) == [(1, "a")]
    assert [x.agent for x in result.slots] == ["a"]


# --- 3. queue mode ---------------------------------------------------------------------------------


def test_unassigned_task_goes_to_the_pool_agent_with_most_free_slots() -> None:
    s = snap(leases=[lease(100, "b")], queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg({"a": 2, "b": 3, "c": 1}, {"dev": ["a", "b", "c"]}))
    # free: a=2, b=3-1=2, c=1 -> a and b tie at 2, 'a' first alphabetically
    assert started(result) == [(1, "a")]
    (assignment,) = result.assignments
    assert (assignment.task_id, assignment.agent, assignment.queue) == (1, "a", "dev")
    assert "most free slots (2)" in assignment.reason
    assert result.starts[0].newly_assigned is True


def test_most_free_slots_wins_over_alphabetical_order() -> None:
    s = snap(queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg({"a": 1, "z": 4}, {"dev": ["a", "z"]}))
    assert started(result) == [(1, "z")]


@pytest.mark.parametrize(
    ("pool", "winner"),
    [
        (["b", "a"], "a"),
        (["ab", "a"], "a"),  # a prefix sorts before the longer name
        (["a", "ab"], "a"),
        (["dev-2", "dev-10"], "dev-10"),  # plain string order, not natural order
        (["B", "a"], "B"),  # code-point order: upper case first
    ],
)
def test_tie_goes_to_the_alphabetically_first_name(pool: list[str], winner: str) -> None:
    s = snap(queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg(dict.fromkeys(pool, 1), {"dev": pool}))
    assert started(result) == [(1, winner)]


def test_unassigned_tasks_are_spread_over_the_pool() -> None:
    tasks = [task(i, age=100 - i) for i in range(1, 6)]
    s = snap(queue_tasks={"dev": tasks})
    result = plan(s, cfg({"a": 2, "b": 2}, {"dev": ["b", "a"]}))
    assert started(result) == [(1, "a"), (2, "b"), (3, "a"), (4, "b")]
    assert skip_reasons(result) == {5: ["no free slot in pool dev"]}
    assert result.skips[0].agent is None
    assert [a.task_id for a in result.assignments] == [1, 2, 3, 4]


def test_exhausted_or_empty_pool_skips_with_a_reason() -> None:
    s = snap(queue_tasks={"dev": [task(1)], "qa": [task(2)]})
    result = plan(s, cfg({"a": 0}, {"dev": ["a"], "qa": []}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["no free slot in pool dev"], 2: ["no free slot in pool qa"]}


def test_pool_agent_without_a_limit_has_no_slot() -> None:
    s = snap(queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg({}, {"dev": ["a"]}))
    assert result.starts == ()
    assert slot(result, "a") == AgentSlots("a", 0, 0, 0)


def test_assigned_tasks_fill_the_slots_left_after_the_queue() -> None:
    s = snap(
        queue_tasks={"dev": [task(1)]},
        agent_tasks={"a": [task(10, agent="a", age=3), task(11, agent="a", age=2), task(12, agent="a", age=1)]},
    )
    result = plan(s, cfg({"a": 3}, {"dev": ["a"]}))
    assert started(result) == [(1, "a"), (10, "a"), (11, "a")]
    assert [s.newly_assigned for s in result.starts] == [True, False, False]
    assert [a.task_id for a in result.assignments] == [1]
    assert list(skip_reasons(result)) == [12]
    assert "no free slot (3 of 3 busy or starting)" in result.skips[0].reason
    assert result.skips[0].agent == "a"


def test_agent_with_a_limit_but_no_pool_is_served_from_its_assigned_tasks() -> None:
    s = snap(queue_tasks={"dev": [task(1)]}, agent_tasks={"solo": [task(2, agent="solo")]})
    result = plan(s, cfg({"a": 1, "solo": 1}, {"dev": ["a"]}))
    assert sorted(started(result)) == [(1, "a"), (2, "solo")]
    # solo is no pool's member: it never receives unassigned work
    assert [a.agent for a in result.assignments] == ["a"]


def test_agent_without_a_pool_never_gets_unassigned_tasks() -> None:
    s = snap(queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg({"a": 0, "solo": 5}, {"dev": ["a"]}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["no free slot in pool dev"]}


def test_unknown_queue_starts_nothing() -> None:
    s = snap(queue_tasks={"mystery": [task(1), task(2)]})
    result = plan(s, cfg({"a": 5}, {"dev": ["a"]}))
    assert result.starts == ()
    assert result.assignments == ()


def test_queues_are_served_in_name_order_when_they_share_an_agent() -> None:
    s = snap(queue_tasks={"zeta": [task(1, priority=9)], "alpha": [task(2)]})
    result = plan(s, cfg({"a": 1}, {"zeta": ["a"], "alpha": ["a"]}))
    assert started(result) == [(2, "a")]
    assert skip_reasons(result) == {1: ["no free slot in pool zeta"]}


def test_agent_in_two_pools_counts_its_slots_once() -> None:
    s = snap(queue_tasks={"dev": [task(1)], "qa": [task(2)], "ops": [task(3)]})
    result = plan(s, cfg({"a": 2}, {"dev": ["a"], "qa": ["a"], "ops": ["a"]}))
    assert started(result) == [(1, "a"), (3, "a")]  # dev, ops, qa in name order; 2 slots
    assert slot(result, "a").starting == 2


def test_duplicate_pool_members_do_not_double_slots() -> None:
    s = snap(queue_tasks={"dev": [task(1), task(2)]})
    result = plan(s, cfg({"a": 1}, {"dev": ["a", "a"]}))
    assert started(result) == [(1, "a")]


# --- 4. legacy mode --------------------------------------------------------------------------------


def test_legacy_mode_serves_assigned_tasks_per_agent_only() -> None:
    s = snap(
        queue_tasks={"dev": [task(1)]},  # no pools: queues are not this mode's business
        agent_tasks={"a": [task(2, agent="a")], "b": [task(3, agent="b"), task(4, agent="b")]},
    )
    result = plan(s, cfg({"a": 1, "b": 1}))
    assert started(result) == [(2, "a"), (3, "b")]
    assert result.assignments == ()
    assert all(not s.newly_assigned for s in result.starts)
    assert skip_reasons(result) == {4: ["no free slot (1 of 1 busy or starting)"]}


def test_legacy_mode_ignores_tasks_of_agents_without_a_limit() -> None:
    s = snap(agent_tasks={"stranger": [task(1, agent="stranger")]})
    result = plan(s, cfg({"a": 1}))
    assert result.starts == ()
    assert [x.agent for x in result.slots] == ["a"]


# --- 5. blocking -----------------------------------------------------------------------------------


def test_blocked_task_is_never_started() -> None:
    s = snap(agent_tasks={"a": [task(1, agent="a", blocked_by=7, blocked=True)]})
    result = plan(s, cfg({"a": 5}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["blocked by task 7"]}


def test_blocked_unassigned_task_is_never_assigned() -> None:
    s = snap(queue_tasks={"dev": [task(1, blocked_by=7, blocked=True)]})
    result = plan(s, cfg({"a": 5}, {"dev": ["a"]}))
    assert result.starts == () and result.assignments == ()
    assert skip_reasons(result) == {1: ["blocked by task 7"]}


def test_a_resolved_blocker_no_longer_blocks() -> None:
    # blocked_by still set, but the server says the blocker is complete
    s = snap(agent_tasks={"a": [task(1, agent="a", blocked_by=7, blocked=False)]})
    assert started_ids(plan(s, cfg({"a": 1}))) == [1]


@pytest.mark.parametrize("mode", ["queue", "legacy"])
def test_blocked_head_of_queue_does_not_starve_the_rest(mode: str) -> None:
    # Server order: the blocked task first (highest priority). The original fetched `free slots`
    # tasks and so never got past it.
    head = task(1, priority=100, blocked_by=50, blocked=True)
    rest = [task(2, priority=5), task(3, priority=1)]
    if mode == "queue":
        s = snap(queue_tasks={"dev": [head, *rest]})
        config = cfg({"a": 1}, {"dev": ["a"]})
    else:
        s = snap(agent_tasks={"a": [dataclasses.replace(t, assigned_to="a") for t in (head, *rest)]})
        config = cfg({"a": 1})
    result = plan(s, config)
    assert started_ids(result) == [2]
    assert skip_reasons(result)[1] == ["blocked by task 50"]
    assert "no free slot" in skip_reasons(result)[3][0]


def test_blocker_first_order() -> None:
    # blocks: 10 blocks two fetched tasks, 20 blocks one; 30/31/32 block nothing
    tasks = [
        task(32, agent="a", priority=9, age=5),
        task(31, agent="a", priority=9, age=5),  # same priority and age as 32: lower id first
        task(30, agent="a", priority=9, age=1),  # newer than 31/32
        task(20, agent="a", priority=5, age=0),
        task(10, agent="a", priority=-1, age=0),
        task(40, agent="a", priority=99, blocked_by=10, blocked=True),
        task(41, agent="a", priority=99, blocked_by=10, blocked=True),
        task(42, agent="a", priority=99, blocked_by=20, blocked=True),
        task(50, agent="a", priority=10, age=0),  # blocks nothing, highest unblocked priority
    ]
    result = plan(snap(agent_tasks={"a": tasks}), cfg({"a": 20}))
    assert started_ids(result) == [10, 20, 50, 31, 32, 30]
    assert sorted(skip_reasons(result)) == [40, 41, 42]


def test_blocks_are_counted_across_every_fetched_list_and_each_task_once() -> None:
    # 10 blocks task 90, which was fetched twice (queue list and agent list): it counts once.
    # 20 blocks 91 and 92 from two different lists: it counts twice and goes first despite priority.
    blocked_90 = task(90, queue="dev", blocked_by=10, blocked=True)
    s = snap(
        queue_tasks={"dev": [blocked_90, task(92, blocked_by=20, blocked=True)]},
        agent_tasks={
            "a": [
                task(10, agent="a", priority=5),
                task(20, agent="a", priority=0),
                dataclasses.replace(blocked_90, assigned_to="a"),
                task(91, agent="b", blocked_by=20, blocked=True),
            ]
        },
    )
    assert count_blocked_by(s) == {10: 1, 20: 2}
    result = plan(s, cfg({"a": 2}, {"dev": ["a"]}))
    assert started_ids(result) == [20, 10]


def test_blocker_first_order_function() -> None:
    a, b, c, d = task(4, priority=1, age=1), task(3, priority=1, age=1), task(2, priority=2), task(1)
    assert [t.id for t in blocker_first_order([a, b, c, d], {1: 1})] == [1, 2, 3, 4]
    assert [t.id for t in blocker_first_order([a, b, c, d], {})] == [2, 3, 4, 1]


def test_disable_blocking_keeps_server_order_and_starts_blocked_tasks() -> None:
    tasks = [
        task(3, agent="a", priority=0, age=0),
        task(1, agent="a", priority=9, blocked_by=3, blocked=True),
        task(2, agent="a", priority=5, age=100),
    ]
    result = plan(snap(agent_tasks={"a": tasks}), cfg({"a": 3}, disable_blocking=True))
    assert started_ids(result) == [3, 1, 2]
    assert result.skips == ()
    # and with the filter on, the same input is reordered and 1 is held back
    result = plan(snap(agent_tasks={"a": tasks}), cfg({"a": 3}))
    assert started_ids(result) == [3, 2]


def test_disable_blocking_in_queue_mode() -> None:
    s = snap(queue_tasks={"dev": [task(5, blocked_by=4, blocked=True), task(4, priority=9)]})
    result = plan(s, cfg({"a": 1}, {"dev": ["a"]}, disable_blocking=True))
    assert started(result) == [(5, "a")]  # server order, blocked or not


# --- 6. per-task skips -----------------------------------------------------------------------------


def test_failed_tag_is_skipped_with_a_reason() -> None:
    s = snap(agent_tasks={"a": [task(1, agent="a", tags=["x", FAILED_TAG]), task(2, agent="a", tags=["x"])]})
    result = plan(s, cfg({"a": 2}))
    assert started_ids(result) == [2]
    assert skip_reasons(result) == {1: [f"tagged {FAILED_TAG}; remove the tag to retry"]}


@pytest.mark.parametrize(
    ("offset", "starts"),
    [(timedelta(seconds=1), False), (timedelta(hours=2), False), (timedelta(0), True), (-timedelta(seconds=1), True)],
    ids=["1s-ahead", "2h-ahead", "exactly-now", "past"],
)
def test_backoff_not_before(offset: timedelta, starts: bool) -> None:
    until = NOW + offset
    s = snap(agent_tasks={"a": [task(1, agent="a")]}, not_before={1: until})
    result = plan(s, cfg({"a": 1}))
    assert (started_ids(result) == [1]) is starts
    if not starts:
        assert skip_reasons(result) == {1: [f"retry backs off until {iso(until)}"]}


def test_backoff_of_one_task_does_not_hold_back_the_others() -> None:
    s = snap(
        agent_tasks={"a": [task(1, agent="a", priority=9), task(2, agent="a")]},
        not_before={1: NOW + timedelta(minutes=1)},
    )
    assert started_ids(plan(s, cfg({"a": 1}))) == [2]


@pytest.mark.parametrize("liveness", [Liveness.ALIVE, Liveness.DEAD])
def test_already_leased_task_is_not_started_again(liveness: Liveness) -> None:
    # Even a lease to settle: the settling happens first; the task may start in a later pass.
    s = snap(leases=[lease(1, "b")], liveness={1: liveness}, agent_tasks={"a": [task(1, agent="a")]})
    result = plan(s, cfg({"a": 1, "b": 1}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["already running on this host"]}


def test_task_leased_by_another_host_is_not_started() -> None:
    s = snap(leases=[lease(1, host="host-b")], queue_tasks={"dev": [task(1)]})
    result = plan(s, cfg({"a": 1}, {"dev": ["a"]}))
    assert result.starts == ()
    assert skip_reasons(result) == {1: ["already running on this host"]}


def test_same_task_in_two_lists_starts_once() -> None:
    t = task(1)
    s = snap(queue_tasks={"dev": [t], "qa": [t]}, agent_tasks={"b": [dataclasses.replace(t, assigned_to="b")]})
    result = plan(s, cfg({"a": 2, "b": 2}, {"dev": ["a"], "qa": ["a"]}))
    assert started(result) == [(1, "a")]
    assert len(result.assignments) == 1
    assert result.skips == ()  # "already planned" is not a skip


@pytest.mark.parametrize("where", ["queue", "agent"])
def test_same_task_twice_in_one_list_starts_once(where: str) -> None:
    # Offset paging over a list that changes under it can return a task twice.
    if where == "queue":
        s = snap(queue_tasks={"dev": [task(1), task(1), task(2)]})
        config = cfg({"a": 3}, {"dev": ["a"]})
    else:
        s = snap(agent_tasks={"a": [task(1, agent="a"), task(1, agent="a"), task(2, agent="a")]})
        config = cfg({"a": 3})
    result = plan(s, config)
    assert started_ids(result) == [1, 2]
    assert slot(result, "a").starting == 2
    assert [a.task_id for a in result.assignments] == ([1, 2] if where == "queue" else [])


@pytest.mark.parametrize("status", ["working", "complete"])
def test_non_idle_task_is_skipped(status: str) -> None:
    s = snap(agent_tasks={"a": [task(1, agent="a", status=status), task(2, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert started_ids(result) == [2]
    assert skip_reasons(result) == {1: [f"status is {status}"]}


def test_skipped_tasks_do_not_use_slots() -> None:
    tasks = [
        task(1, agent="a", status="working"),
        task(2, agent="a", tags=[FAILED_TAG]),
        task(3, agent="a", blocked_by=99, blocked=True),
        task(4, agent="a"),
        task(5, agent="a"),
    ]
    s = snap(agent_tasks={"a": tasks}, not_before={4: NOW + timedelta(minutes=5)})
    result = plan(s, cfg({"a": 1}))
    assert started_ids(result) == [5]


# --- 7. the plan as a whole ------------------------------------------------------------------------


def busy_scene() -> tuple[Snapshot, PlanConfig]:
    s = snap(
        leases=[lease(100, "a"), lease(101, "b", owner="instance-old"), lease(102, "b"), lease(103, host="host-b")],
        liveness={102: Liveness.DEAD},
        queue_tasks={"dev": [task(1), task(2, blocked_by=1, blocked=True), task(3)], "qa": [task(4)]},
        agent_tasks={
            "a": [task(5, agent="a", status="working"), task(6, agent="a", tags=[FAILED_TAG])],
            "b": [task(7, agent="b"), task(8, agent="b")],
            "solo": [task(9, agent="solo")],
        },
        not_before={8: NOW + timedelta(minutes=1)},
    )
    return s, cfg({"a": 2, "b": 3, "c": 1, "solo": 1}, {"dev": ["a", "b"], "qa": ["c"]})


def test_every_skip_has_a_reason_and_every_fetched_task_is_accounted_for() -> None:
    s, config = busy_scene()
    result = plan(s, config)
    # dev: 1 -> b (2 free against a's 1), 3 -> a (tie at 1); qa: 4 -> c; then assigned: 7 -> b, 9 -> solo
    assert started(result) == [(1, "b"), (3, "a"), (4, "c"), (7, "b"), (9, "solo")]
    fetched = {t.id for ts in (*s.queue_tasks.values(), *s.agent_tasks.values()) for t in ts}
    accounted = {x.task_id for x in result.starts} | {x.task_id for x in result.skips}
    assert accounted == fetched
    assert all(x.reason.strip() for x in (*result.starts, *result.skips, *result.assignments, *result.leases))
    assert skip_reasons(result) == {
        2: ["blocked by task 1"],
        5: ["status is working"],
        6: [f"tagged {FAILED_TAG}; remove the tag to retry"],
        8: ["retry backs off until 2026-11-26T06:01:00.000Z"],
    }
    assert [(x.agent, x.limit, x.busy, x.starting, x.free_after) for x in result.slots] == [
        ("a", 2, 1, 1, 0),
        ("b", 3, 1, 2, 0),  # 101 is being stopped (counts), 102 is requeued (does not)
        ("c", 1, 0, 1, 0),
        ("solo", 1, 0, 1, 0),
    ]


def test_plan_to_json_round_trips_through_json() -> None:
    s, config = busy_scene()
    result = plan(s, config)
    data = result.to_json()
    text = json.dumps(data)
    assert json.loads(text) == data
    assert [d["verdict"] for d in data["leases"]] == ["keep", "adopt", "settle", "foreign"]
    assert data["starts"][0] == {
        "task_id": 1,
        "agent": "b",
        "reason": result.starts[0].reason,
        "newly_assigned": True,
        "queue": "dev",
    }
    assert data["assignments"][0]["queue"] == "dev"
    assert {"task_id": 2, "agent": None, "reason": "blocked by task 1"} in data["skips"]
    assert data["slots"][0] == {"agent": "a", "limit": 2, "busy": 1, "starting": 1, "free_after": 0}


def test_plan_is_pure_and_deterministic() -> None:
    s, config = busy_scene()
    before = repr(s), repr(config)
    first = plan(s, config)
    assert plan(s, config) == first
    assert (repr(s), repr(config)) == before  # inputs untouched


def test_empty_snapshot_plans_nothing() -> None:
    result = plan(snap(), cfg({}))
    assert result == Plan((), (), (), (), ())
    assert result.recoveries == ()


def test_a_finishing_run_holds_no_slot() -> None:
    """Its process has ended; only the report to TinyTask is left, so the next run may start."""
    done = lease(1, "a").with_changes(state=LeaseState.FINISHING)
    s = snap(leases=[done], supervised=[1], agent_tasks={"a": [task(2, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert started(result) == [(2, "a")]
    assert result.leases[0].verdict is LeaseVerdict.KEEP, "the lease stays until the outcome is reported"
    assert 1 not in started_ids(result)


def test_a_lease_without_a_pid_holds_its_slot_until_recovered() -> None:
    """Its process may exist with the pid never written; the recovery finds it by its lease tag."""
    orphaned = lease(1, "a", pid=None, owner="instance-old").with_changes(state=LeaseState.STARTING)
    s = snap(leases=[orphaned], liveness={1: Liveness.NO_PROCESS}, agent_tasks={"a": [task(2, agent="a")]})
    result = plan(s, cfg({"a": 1}))
    assert result.leases[0].verdict is LeaseVerdict.RECOVER
    assert slot(result, "a").busy == 1 and started(result) == []


# --- waiting and refill ----------------------------------------------------------------------------


def test_what_found_no_slot_waits_in_the_order_the_next_pass_would_start_it() -> None:
    queue = [task(i, queue="q", age=10 - i) for i in range(1, 5)]
    own = [task(10, agent="a", age=3), task(11, agent="a", age=2, blocked=True, blocked_by=1), task(12, agent="a")]
    result = plan(snap(queue_tasks={"q": queue}, agent_tasks={"a": own}), cfg({"a": 1, "b": 1}, {"q": ["a", "b"]}))

    assert started_ids(result) == [1, 2]
    assert [t.id for t in result.waiting.queues["q"]] == [3, 4]
    assert [t.id for t in result.waiting.agents["a"]] == [10, 12], "the blocked task does not wait for a slot"
    assert result.waiting.blockers == frozenset({1})

    first = refill(result.waiting, "a", taken={1, 2}, not_before={}, now=NOW)
    assert first is not None and (first[0].task_id, first[0].newly_assigned, first[0].queue) == (3, True, "q")
    backing_off = {3: NOW + timedelta(seconds=1), 4: NOW - timedelta(seconds=1)}
    found = refill(result.waiting, "a", taken={1, 2}, not_before=backing_off, now=NOW)
    assert found is not None and found[0].task_id == 4, "a task backing off is passed over"
    found = refill(result.waiting, "a", taken={1, 2, 3, 4}, not_before={}, now=NOW)
    assert found is not None and (found[0].task_id, found[0].newly_assigned) == (10, False)
    assert refill(result.waiting, "b", taken={1, 2, 3, 4}, not_before={}, now=NOW) is None, "b takes no task of a"
    assert refill(result.waiting, "a", taken={1, 2, 3, 4, 10, 12}, not_before={}, now=NOW) is None


def test_the_plan_says_which_leases_hold_slots() -> None:
    leases = [lease(1, "a"), lease(2, "a", owner="old"), lease(3, "a", pid=None), lease(4, "a")]
    result = plan(
        snap(leases=leases, liveness={4: Liveness.DEAD}, supervised={1}),
        cfg({"a": 4}),
    )
    assert dict(result.holding) == {1: "a", 2: "a", 3: "a"}, "the ended run's lease holds none"
