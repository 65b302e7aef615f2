"""What TinyTask is told about one run, in-process against the in-memory client: how many calls,
and what a lost reply or an outage does."""

from __future__ import annotations

from tinyscheduler.adapters.attempt_book import read_records
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.service.reporter import Reported

from world import World


async def test_a_successful_run_of_an_assigned_task_costs_four_calls(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a")["id"]
    world.client.reset_calls()

    result = await world.run(task).execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.COMPLETED
    # claim (read, set working), report (read, complete)
    assert [c.name for c in world.client.calls] == ["get_task", "update_task", "get_task", "update_task"]


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
