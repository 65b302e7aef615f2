"""Breakers (core.circuit) and what the planner does with an unavailable agent."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tinyscheduler.core.circuit import (
    Breaker,
    CircuitPolicy,
    Circuits,
    Unavailable,
    run_failed,
    start_failed,
    started,
    succeeded,
)
from tinyscheduler.core.pacing import PASS_BURST, PassPacer
from tinyscheduler.core.planner import PlanConfig, Snapshot, plan
from tinyscheduler.core.tasks import Task
from tinyscheduler.core.text import iso

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
POLICY = CircuitPolicy(base_sec=60, cap_sec=3600)


def test_a_failed_start_opens_at_once_and_each_opening_in_a_row_waits_twice_as_long() -> None:
    breaker = Breaker()
    waits = []
    for _ in range(8):
        breaker = start_failed(breaker, "goose not found", NOW, POLICY)
        assert breaker.is_open(NOW)
        assert breaker.open_until is not None
        waits.append((breaker.open_until - NOW).total_seconds())
    assert waits == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert not breaker.is_open(NOW + timedelta(hours=1)), "open until, not after"


def test_a_start_closes_what_kept_runs_from_starting() -> None:
    breaker = start_failed(Breaker(), "recipe gone", NOW, POLICY)
    assert started(breaker) == Breaker()


def test_failed_runs_open_the_breaker_only_when_in_a_row() -> None:
    breaker = Breaker()
    breaker = run_failed(breaker, "exit 1", NOW, POLICY)
    breaker = run_failed(breaker, "exit 1", NOW, POLICY)
    assert not breaker.is_open(NOW)
    assert run_failed(succeeded(breaker), "exit 1", NOW, POLICY).run_failures == 1, "a success resets the count"
    breaker = run_failed(breaker, "exit 1", NOW, POLICY)
    assert breaker.is_open(NOW) and breaker.reason == "3 runs in a row failed (last: exit 1)"
    # A start alone does not forgive failed runs: only a success does.
    assert started(breaker).run_failures == 3


def test_goose_missing_makes_every_agent_unavailable_with_its_reason() -> None:
    circuits = Circuits(goose=start_failed(Breaker(), "goose 'goose' not found on PATH", NOW, POLICY))
    circuits.put("qa", start_failed(Breaker(), "recipe gone", NOW, POLICY))
    found = circuits.unavailable({"dev", "qa"}, NOW)
    assert {agent: entry.reason for agent, entry in found.items()} == {
        "dev": "goose 'goose' not found on PATH",
        "qa": "goose 'goose' not found on PATH",
    }
    assert not circuits.goose_due(NOW) and circuits.goose_due(NOW + timedelta(seconds=60))
    circuits.put("qa", Breaker())
    assert circuits.agents == {}, "a closed breaker is forgotten"


def task(task_id: int, **fields: object) -> Task:
    return Task(id=task_id, status="idle", **fields)  # type: ignore[arg-type]


def test_an_unavailable_agent_starts_nothing_and_its_tasks_say_why_and_until_when() -> None:
    until = NOW + timedelta(minutes=2)
    gone = Unavailable("dev-a", until, "spawn failed: no such file")
    snapshot = Snapshot(
        now=NOW,
        host="h",
        instance_id="i",
        queue_tasks={"dev": (task(1, queue_name="dev"), task(2, queue_name="dev"))},
        agent_tasks={"dev-a": (task(3, assigned_to="dev-a"),), "dev-b": (task(4, assigned_to="dev-b"),)},
        unavailable={"dev-a": gone},
    )
    config = PlanConfig(limits={"dev-a": 2, "dev-b": 1}, pools={"dev": ("dev-a", "dev-b")})
    result = plan(snapshot, config)
    assert [(s.task_id, s.agent) for s in result.starts] == [(1, "dev-b")], "the pool's other agent serves it"
    reasons = {skip.task_id: skip.reason for skip in result.skips}
    assert reasons[3] == f"agent dev-a unavailable until {iso(until)}: spawn failed: no such file"
    assert reasons[2] == "no free slot in pool dev"
    assert reasons[4] == "no free slot (1 of 1 busy or starting)"

    everyone = plan(
        Snapshot(**{**snapshot.__dict__, "unavailable": {"dev-a": gone, "dev-b": Unavailable("dev-b", until, "x")}}),
        config,
    )
    assert everyone.starts == () and everyone.assignments == ()
    pool_reason = next(skip.reason for skip in everyone.skips if skip.task_id == 1)
    assert pool_reason.startswith("no agent of pool dev available: agent dev-a unavailable until ")


def test_passes_come_in_a_burst_of_five_then_five_per_interval() -> None:
    pacer = PassPacer(interval_sec=60)
    clock = 1000.0
    ran = []
    # Something wakes the loop every 10 ms for ten minutes: how many passes may run?
    while clock < 1000.0 + 600:
        if pacer.wait_sec(clock) == 0:
            pacer.take(clock)
            ran.append(clock)
        clock += 0.01
    assert len(ran[:5]) == 5 and ran[4] - ran[0] < 0.1, "the burst passes at once"
    assert len(ran) <= PASS_BURST + 10 * PASS_BURST + 1, len(ran)
    assert len(ran) >= 10 * PASS_BURST, "and no fewer: scheduled passes are never held back"
