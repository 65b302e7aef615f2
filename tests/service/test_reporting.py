"""What TinyTask is told about one run, in-process against the in-memory client: how many calls,
and what a lost reply or an outage does."""

from __future__ import annotations

import pytest

from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.service.reporter import Reported

from world import World


@pytest.mark.parametrize("assigned", [True, False], ids=["assigned", "unassigned in its queue"])
async def test_a_successful_run_costs_three_calls(world: World, assigned: bool) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a" if assigned else None)["id"]
    world.client.reset_calls()

    result = await world.run(task, queue=None if assigned else "dev").execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.COMPLETED
    # the claim (assigned and working in one update), the report (read, complete)
    assert [c.name for c in world.client.calls] == ["update_task", "get_task", "update_task"]
    assert world.client.calls[0].args == {"task_id": task, "assigned_to": "dev-a", "status": "working"}
    assert world.client.task(task)["status"] == "complete"
    assigned_events = [fields for name, fields in world.events if name == "assigned"]
    assert len(assigned_events) == (0 if assigned else 1)


async def test_a_failed_run_costs_four_calls(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.recipe("dev-a", mode="fail")
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a")["id"]
    world.client.reset_calls()

    result = await world.run(task).execute()

    assert result.outcome is Outcome.FAILED and result.report is Reported.REQUEUED
    # the claim, the report (read, back to idle) and its comment
    assert [c.name for c in world.client.calls] == ["update_task", "get_task", "update_task", "add_comment"]


async def test_a_claim_that_replaced_another_writers_assignment_gives_the_task_back(world: World) -> None:
    """TinyTask has no atomic claim: the reply's previous_assigned_to shows whose assignment ours replaced."""
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev")["id"]
    run = world.run(task, queue="dev")  # listed while unassigned
    world.client.store.update(task, {"assigned_to": "other-team", "status": "working"})  # then someone claims it

    result = await run.execute()

    assert result.outcome is Outcome.NOT_STARTED and "assigned to other-team by another writer" in result.reason
    assert world.starts() == [], "no run beside theirs"
    row = world.client.task(task)
    assert (row["assigned_to"], row["status"]) == ("other-team", "idle")
    assert world.leases() == []


async def test_a_failure_whose_requeue_reply_was_lost_keeps_its_count_and_posts_nothing_twice(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.recipe("dev-a", mode="fail")
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a")["id"]
    run = world.run(task)
    # The outage starts with the run: the report's update is applied, its reply lost.
    run.on_event = lambda name, _fields: world.client.lose_reply(method="update_task") if name == "started" else None

    result = await run.execute()

    assert result.outcome is Outcome.FAILED and result.report is Reported.LEFT_ALONE
    assert world.client.task(task)["status"] == "idle"
    assert read_records(world.base / "state" / "attempts.jsonl")[task].failures == 1, (
        "the failure still counts, with its backoff"
    )
    assert len(world.comments(task)) <= 1


async def test_a_success_unreported_while_tinytask_is_down_is_held_and_completed_without_a_rerun(
    world: World,
) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a")["id"]
    run = world.run(task, report_timeout_sec=0.5)
    run.on_event = lambda name, _fields: world.client.fail_next(None) if name == "started" else None

    result = await run.execute()

    assert result.report is Reported.UNREPORTED
    assert (world.running_dir / f"task_{task}.json").exists(), "the lease stays for the recovery"
    world.client.clear_faults()
    await world.serve()  # the next instance settles it from the recorded outcome
    assert world.client.task(task)["status"] == "complete"
    assert world.starts() == [task], "the agent's work was not repeated"
