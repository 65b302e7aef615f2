"""Operator control in-process: the daemon (its real control socket, the stand-in goose as real
processes) against the in-memory TinyTask client. What a pause keeps from starting, what a cancel or
a pause with --stop-runs does to a run and to its attempt count, what is written and recorded."""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from tinyscheduler.adapters import controlsocket
from tinyscheduler.adapters.controlsocket import user_name
from tinyscheduler.adapters.pausestore import PauseStore
from tinyscheduler.core.control import Pause, Pauses, Scope

from world import World, daemon, until

ME = user_name(os.geteuid())


async def ask(world: World, **request: Any) -> dict[str, Any]:
    path = world.base / "state" / "control.sock"
    return await anyio.to_thread.run_sync(controlsocket.ask, path, request, 5.0)


def events(world: World, name: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted((world.base / "state" / "logs").glob("events_*.jsonl")):
        found += [json.loads(line) for line in path.read_text().splitlines()]
    return [event for event in found if event["event"] == name]


async def test_a_paused_agent_starts_nothing_while_the_others_run(world: World) -> None:
    world.registry([("dev-a", "dev", 1), ("qa-a", "qa", 1)])
    dev = world.client.create_task("d", queue_name="dev")["id"]
    qa = world.client.create_task("q", queue_name="qa")["id"]
    (world.base / "state").mkdir()
    PauseStore(world.base / "state" / "pauses.json").save(
        Pauses((Pause(Scope.AGENT, "dev-a", "alice", world.clock.now, "flaky provider"),))
    )

    assert await world.serve() == 0

    assert world.starts() == [qa]
    task = world.client.task(dev)
    assert (task["status"], task["assigned_to"]) == ("idle", None), "a paused agent is given no queue task"


async def test_a_pause_with_stop_runs_stops_the_agents_runs_requeued_and_uncounted(world: World) -> None:
    world.registry([("dev-a", "dev", 1), ("qa-a", "qa", 1)])
    world.recipe("dev-a", mode="hang")
    world.recipe("qa-a", mode="hang")
    dev = world.client.create_task("d", queue_name="dev")["id"]
    qa = world.client.create_task("q", queue_name="qa")["id"]
    async with daemon(world) as scheduler:
        rt = scheduler.runtime
        await until(lambda: len(world.starts()) == 2, "both runs started")

        reply = await ask(world, action="pause", scope="agent", target="dev-a", reason="bad recipe", stop_runs=True)

        assert reply["ok"], reply
        assert reply["message"].endswith(
            f"stopping 1 run(s) in flight (tasks {dev}): requeued, not counted as failed attempts"
        )
        await until(lambda: world.comments(dev), "the requeue comment")
        [comment] = world.comments(dev)
        assert comment.startswith(f"tinyscheduler: run stopped (agent dev-a paused by {ME} since ")
        assert "bad recipe); task requeued, not counted as a failed attempt" in comment
        assert rt.attempts.record(dev).failures == 0
        assert qa in rt.runs, "the other agent's run goes on"
        assert world.client.task(dev)["status"] == "idle" and world.starts().count(dev) == 1
    [event] = events(world, "control")
    assert event | {"timestamp": None, "host": None, "instance": None} == {
        "timestamp": None,
        "host": None,
        "instance": None,
        "event": "control",
        "action": "pause",
        "target": "agent dev-a",
        "reason": "bad recipe",
        "user": ME,
        "uid": os.geteuid(),
        "pid": os.getpid(),
        "stop_runs": True,
    }
    assert PauseStore(world.base / "state" / "pauses.json").load().find(Scope.AGENT, "dev-a") is not None


async def test_cancel_requeues_uncounted_and_cancel_fail_counts_the_attempt(world: World) -> None:
    world.registry([("dev-a", "dev", 2)])
    world.recipe("dev-a", mode="hang")
    first = world.client.create_task("a", queue_name="dev")["id"]
    second = world.client.create_task("b", queue_name="dev")["id"]
    async with daemon(world) as scheduler:
        rt = scheduler.runtime
        await until(lambda: len(world.starts()) == 2, "both runs started")
        # Keep the agent from starting the requeued tasks again, so the test sees them idle.
        assert (await ask(world, action="pause", scope="agent", target="dev-a"))["ok"]

        plain = await ask(world, action="cancel", task_id=first, reason="looping")
        counted = await ask(world, action="cancel", task_id=second, fail=True)
        again = await ask(world, action="cancel", task_id=second)

        assert plain["ok"] and plain["message"].endswith("the task is requeued, not counted as a failed attempt")
        assert counted["ok"] and counted["message"].endswith("it counts as a failed attempt")
        assert again == {"ok": False, "message": f"task {second}: already being stopped (cancelled by {ME})"}
        await until(lambda: world.comments(first) and world.comments(second), "both comments")
        assert world.comments(first) == [
            f"tinyscheduler: run stopped (cancelled by {ME}: looping); task requeued, not counted as a failed "
            f"attempt; log: {world.base}/state/logs/tasks/{first}.1.log"
        ]
        [failed] = world.comments(second)
        assert failed.startswith(f"tinyscheduler: attempt 1/3 failed (stopped on request (cancelled by {ME}), ")
        assert (rt.attempts.record(first).failures, rt.attempts.record(second).failures) == (0, 1)
        assert await ask(world, action="cancel", task_id=first) == {
            "ok": False,
            "message": f"task {first} has no run on this host",
        }
    assert [(e["action"], e["target"], e["fail"]) for e in events(world, "control") if e["action"] == "cancel"] == [
        ("cancel", f"task {first}", False),
        ("cancel", f"task {second}", True),
    ]


async def test_refusals_change_nothing_and_a_pause_that_cannot_be_written_is_refused(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    async with daemon(world) as scheduler:
        assert await ask(world, action="pause", scope="agent", target="nobody") == {
            "ok": False,
            "message": "unknown agent 'nobody' (known: dev-a)",
        }
        assert await ask(world, action="resume", scope="host") == {"ok": False, "message": "host is not paused"}
        assert (await ask(world, action="pause", scope="galaxy"))["message"].startswith("malformed request: scope:")

        (world.base / "state" / "pauses.json").mkdir()  # the file cannot be replaced now
        reply = await ask(world, action="pause", scope="queue", target="dev")

        assert not reply["ok"] and reply["message"].startswith(f"cannot record it in {world.base}/state/pauses.json: ")
        assert scheduler.runtime.pauses == Pauses(), "a pause that would not survive a restart is not applied"
    assert events(world, "control") == []


async def test_status_counts_the_runs_left_while_draining(world: World) -> None:
    world.registry([("dev-a", "dev", 2)])
    world.recipe("dev-a", mode="hang")
    tasks = [world.client.create_task(f"t{i}", queue_name="dev")["id"] for i in range(3)]
    async with daemon(world) as scheduler:
        await until(lambda: len(world.starts()) == 2, "two runs started")
        drained = await ask(world, action="drain", reason="kernel update")
        assert drained["ok"] and drained["message"].startswith(f"host draining by {ME} since ")
        assert (await ask(world, action="drain"))["message"].startswith("already host draining by ")
        assert (await ask(world, action="drain", wait=True))["ok"], "a waiting drain joins the one in progress"

        for task_id in list(scheduler.runtime.runs):
            await ask(world, action="cancel", task_id=task_id)
        await until(lambda: not scheduler.runtime.runs, "the runs ended")
        status = await ask(world, action="status")

        assert (status["runs"], status["message"]) == ([], "draining: 0 runs left, idle")
        assert status["draining"]["reason"] == "kernel update"
        assert len(world.starts()) == 2 and world.client.task(tasks[2])["status"] == "idle", "nothing new started"


async def test_a_pause_applied_while_the_claim_is_in_flight_starts_nothing_and_gives_the_task_back(
    world: World,
) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev")["id"]
    stall = world.client.stall("update_task")  # the claim: assigned_to and working in one write

    async with daemon(world) as scheduler:
        with anyio.fail_after(10):
            await stall.reached.wait()
        assert (await ask(world, action="pause", scope="agent", target="dev-a"))["ok"]
        stall.release.set()
        await until(lambda: task not in scheduler.runtime.runs, "the claimed run gave up")

        assert world.starts() == [], "claimed before the pause, never spawned after it"
        assert world.client.task(task)["status"] == "idle"
        assert world.client.task(task)["assigned_to"] is None, "back in its queue for the pool"
        assert scheduler.runtime.attempts.record(task).failures == 0, "not counted as a failed attempt"
        assert not scheduler.runtime.store.path(task).exists()


async def test_an_unreadable_pause_file_holds_the_host_until_resume_replaces_it(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev")["id"]
    (world.base / "state").mkdir()
    (world.base / "state" / "pauses.json").write_text('{"pauses": [{"scope": "agent", "target": "dev-a"')
    async with daemon(world) as scheduler:
        held = scheduler.runtime.pauses.host
        assert held is not None and held.user == "tinyscheduler"
        assert held.reason.startswith(f"{world.base}/state/pauses.json is unreadable (not valid JSON: ")
        await until(lambda: scheduler.passes is not None and scheduler.passes.report.started_at, "a pass")
        assert world.starts() == []

        resumed = await ask(world, action="resume", scope="host")

        assert resumed["ok"] and resumed["pauses"] == []
        assert json.loads((world.base / "state" / "pauses.json").read_text()) == {"pauses": [], "version": 1}
        await until(lambda: world.starts() == [task], "the run once resumed")
