"""One pass and its runs, in-process: what TinyTask sees (call counts), what ran (stand-in records)."""

from __future__ import annotations

import json
import os

import anyio

from tinyscheduler.adapters.spares import spares_in
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.service.availability import problems, unavailable
from tinyscheduler.service.scheduler import Hooks

from world import World, daemon, until


async def test_a_pass_assigns_by_free_slots_and_runs_each_task_once(world: World) -> None:
    world.registry([("dev-a", "dev", 2), ("dev-b", "dev", 1)])
    ids = [world.client.create_task(f"t{i}", queue_name="dev")["id"] for i in range(5)]

    assert await world.serve() == 0

    assert sorted(world.starts()) == ids[:3], "three slots, the three oldest tasks"
    assert [world.client.task(i)["status"] for i in ids] == ["complete"] * 3 + ["idle"] * 2
    owners = [world.client.task(i)["assigned_to"] for i in ids[:3]]
    assert sorted(owners) == ["dev-a", "dev-a", "dev-b"]
    report = world.last_pass()
    assert (report["ok"], report["assigned"], report["started"]) == (True, 3, 3)
    assert world.leases() == [], "every lease removed"


async def test_tinytask_down_fails_the_pass_without_acting(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev")["id"]
    world.client.fail_next(None)

    assert await world.serve() == 1  # `run --once` says the pass failed

    report = world.last_pass()
    assert report["ok"] is False and report["error"].startswith("TinyTask: ")
    assert report["consecutive_failures"] == 1 and report["counters"]["pass_errors"] == 1
    assert world.starts() == [] and world.client.task(task)["status"] == "idle"


async def test_a_task_backing_off_starts_only_once_the_clock_has_passed_its_time(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.recipe("dev-a", mode="fail")
    task = world.client.create_task("t", queue_name="dev")["id"]
    await world.serve()
    [comment] = world.comments(task)
    assert comment.startswith("tinyscheduler: attempt 1/3 failed (exit 1 after ")

    world.clock.advance(59)
    await world.serve()
    assert world.starts() == [task], "still backing off (60 s)"
    world.clock.advance(2)
    await world.serve()
    assert world.starts() == [task, task]


async def test_a_task_tagged_failed_is_never_started(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.client.create_task("t", queue_name="dev", tags=[FAILED_TAG])
    await world.serve()
    assert world.starts() == []


async def test_a_freed_slot_takes_the_next_waiting_task_without_a_pass(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.settings["loop_interval_sec"] = "60"  # no pass of the interval while the test runs
    ids = [world.client.create_task(f"t{i}", queue_name="dev")["id"] for i in range(3)]
    await serve_until_complete(world, ids)

    assert world.starts() == ids, "one slot, the tasks one after the other, in order"
    lists = world.client.count("list_tasks")
    assert lists <= 2, f"{lists} lists: the first pass, and one once nothing waited any more"
    assert world.last_pass()["counters"]["refills"] == 2


async def test_passes_create_and_delete_no_file_once_running(world: World) -> None:
    """last_pass.json goes through spare files: a file made and one freed every pass would make every
    later file creation in the folder dearer (ext4 without a journal; adapters.spares)."""
    world.registry([("dev-a", "dev", 1)])
    state = world.base / "state"
    async with daemon(world) as scheduler:
        assert scheduler.passes is not None
        await until((state / "last_pass.json").exists, "the daemon's own first pass")
        spares_in(state).rest_sec = 0  # the daemon lets a file rest a second before it is reused
        await scheduler.passes.run_pass()
        before = {entry.inode() for entry in os.scandir(state)}
        for _ in range(5):
            await scheduler.passes.run_pass()
        assert {entry.inode() for entry in os.scandir(state)} == before
    assert json.loads((state / "last_pass.json").read_text())["ok"] is True


async def test_refills_never_run_an_agent_over_its_slots(world: World) -> None:
    world.registry([("dev-a", "dev", 2), ("dev-b", "dev", 1)])
    for agent in ("dev-a", "dev-b"):
        world.recipe(agent, mode="succeed", seconds=0.15)
    world.settings["loop_interval_sec"] = "60"  # the first pass, then refills alone
    ids = [world.client.create_task(f"t{i}", queue_name="dev")["id"] for i in range(9)]
    await serve_until_complete(world, ids)

    most: dict[str, int] = {}
    running: dict[str, int] = {}
    for record in sorted(world.records(), key=lambda r: (r["t"], r["event"] == "start")):  # an end first
        if record["event"] in ("start", "end"):
            running[record["agent"]] = running.get(record["agent"], 0) + (1 if record["event"] == "start" else -1)
            most[record["agent"]] = max(most.get(record["agent"], 0), running[record["agent"]])
    assert most == {"dev-a": 2, "dev-b": 1}
    assert world.last_pass()["counters"]["refills"] >= 5


async def test_claims_tinytask_does_not_confirm_stop_every_start_and_show_until_one_goes_through(world: World) -> None:
    """A server that applies a PATCH and loses its reply: before, claims went on at every pass
    (58 requests/s with a 1 s loop) while `status` said nothing was wrong."""
    world.registry([("dev-a", "dev", 2), ("dev-b", "dev", 2)])
    for i in range(8):
        world.client.create_task(f"t{i}", queue_name="dev")
    world.client.lose_reply(None, "update_task")

    def claims() -> int:
        return sum(1 for c in world.client.calls if c.name == "update_task" and c.args.get("status") == "working")

    passes: list[None] = []

    async def count_pass() -> None:
        passes.append(None)

    async with daemon(world, Hooks(before_pass=count_pass)) as scheduler:
        rt = scheduler.runtime
        await until(lambda: rt.circuits.tinytask.failing and not rt.runs, "the claims given up")
        first = claims()
        for _ in range(3):  # passes come and go; the breaker holds (the clock does not move)
            seen = len(passes)
            rt.tick.set()
            await until(lambda seen=seen: len(passes) > seen + 1, "another pass, ended")
        assert claims() == first, "no claim while TinyTask's writes are failing"
        [problem] = [p for p in problems(rt) if p.startswith("TinyTask did not confirm")]
        assert "cannot set the task working" in problem and "no run starts meanwhile" in problem
        assert set(unavailable(rt, {"dev-a", "dev-b"})) == {"dev-a", "dev-b"}

        world.client.clear_faults()
        world.clock.advance(3600)
        rt.tick.set()
        await until(lambda: not rt.circuits.tinytask.failing, "a claim that went through")
    assert first <= 4 and world.starts(), "at most one pass of claims, and runs once TinyTask answers"


async def serve_until_complete(world: World, ids: list[int]) -> None:
    """The daemon serving until every task of `ids` is complete (30 s at most)."""
    scheduler = world.scheduler(once=False)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        with anyio.fail_after(30):
            while not all(world.client.task(i)["status"] == "complete" for i in ids):
                await anyio.sleep(0.02)
        scheduler.request_stop()
