"""The next daemon instance takes over what the previous one left: in-process, one pass each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from typing import Any

from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.adapters.procfs import current_boot_id, process_start_ticks

from harness import STANDIN
from world import World

COMPLETE = '{"type": "complete", "input_tokens": 10, "output_tokens": 2, "total_tokens": 12}\n'


def lease(world: World, task_id: int, **fields: Any) -> None:
    world.running_dir.mkdir(parents=True, exist_ok=True)
    started = (world.clock.now - timedelta(seconds=30)).isoformat()
    data = {
        "task_id": task_id,
        "agent": "dev-a",
        "pid": None,
        "recipe": "dev-a.yaml",
        "started_at": started,
        "heartbeat": started,
        "host": os.uname().nodename,
        "state": "running",
        "owner": "a-previous-instance",
        "attempt": 1,
        "log_path": str(world.base / "state" / "logs" / "tasks" / str(task_id) / "1.log"),
        **fields,
    }
    (world.running_dir / f"task_{task_id}.json").write_text(json.dumps(data))


def run_log(world: World, task_id: int, output: str) -> None:
    path = world.base / "state" / "logs" / "tasks" / str(task_id) / "1.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"--- tinyscheduler: task {task_id}, agent dev-a, attempt 1, 2026-11-29T11:59:30+00:00: goose\n{output}"
    )


def dead_pid() -> tuple[int, int]:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    ticks = process_start_ticks(child.pid)
    child.wait()
    assert ticks is not None
    return child.pid, ticks


def working(world: World) -> int:
    task = world.client.create_task("t", queue_name="dev", assigned_to="dev-a")["id"]
    world.client.store.update(task, {"status": "working"})
    return int(task)


async def test_a_run_that_succeeded_while_no_daemon_watched_is_completed_not_rerun(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = working(world)
    pid, ticks = dead_pid()
    lease(world, task, pid=pid, pgid=pid, start_ticks=ticks, boot_id=current_boot_id())
    run_log(world, task, '{"type": "message"}\n' + COMPLETE)

    await world.serve()

    assert world.client.task(task)["status"] == "complete"
    assert world.starts() == [], "nothing was run again"
    assert world.comments(task) == []
    assert not world.running_dir.joinpath(f"task_{task}.json").exists()


async def test_a_run_with_no_evidence_is_retried_as_a_counted_attempt_said_so(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = working(world)
    pid, ticks = dead_pid()
    lease(world, task, pid=pid, pgid=pid, start_ticks=ticks, boot_id=current_boot_id())
    run_log(world, task, '{"type": "message"}\n')

    await world.serve()

    assert world.client.task(task)["status"] == "idle"
    [comment] = world.comments(task)
    assert "attempt 1/3 failed (outcome unknown" in comment
    assert read_records(world.base / "state" / "attempts.jsonl")[task].failures == 1


async def test_a_recorded_outcome_is_reported_as_the_previous_instance_classified_it(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = working(world)
    pid, ticks = dead_pid()
    lease(
        world,
        task,
        pid=pid,
        pgid=pid,
        start_ticks=ticks,
        state="finishing",
        outcome="succeeded",
        outcome_detail="exit 0 after 3.0s",
    )
    run_log(world, task, "")  # the outcome in the lease decides, not this empty log

    await world.serve()

    assert world.client.task(task)["status"] == "complete"


async def test_a_lease_of_a_run_that_never_started_is_requeued_once_without_counting(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = working(world)
    lease(world, task, state="starting")

    await world.serve()

    [comment] = world.comments(task)
    assert "never started" in comment and "not counted" in comment
    # Requeued, then started by the same pass as attempt 1: nothing was counted against it.
    assert world.starts() == [task] and world.client.task(task)["status"] == "complete"
    assert "attempt 1," in (world.base / "state" / "logs" / "tasks" / f"{task}.1.log").read_text()


async def test_a_live_run_of_a_previous_instance_is_adopted_and_reported_when_it_ends(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.recipe("dev-a", mode="succeed", seconds=0.5)
    task = working(world)
    lease_path = world.running_dir / f"task_{task}.json"
    log = world.base / "state" / "logs" / "tasks" / str(task) / "1.log"
    run_log(world, task, "")
    env = {
        **os.environ,
        "TINYSCHEDULER_LEASE": str(lease_path),
        "TINYSCHEDULER_STANDIN_RECORD": str(world.records_file),
    }
    recipe = str(world.base / "recipes" / "dev-a.yaml")
    with open(log, "ab") as out:
        orphan = subprocess.Popen(
            [
                STANDIN,
                "run",
                "--recipe",
                recipe,
                "--params",
                f"task_id={task}",
                "--params",
                "agent=dev-a",
                "--output-format",
                "stream-json",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        ticks = process_start_ticks(orphan.pid)
        lease(world, task, pid=orphan.pid, pgid=orphan.pid, start_ticks=ticks, boot_id=current_boot_id())

        await world.serve()  # recovery adopts it before READY; `once` waits for it to the end

        assert world.client.task(task)["status"] == "complete"
        assert world.starts() == [task], "the one run, adopted, not a second one"
    finally:
        orphan.kill()
        orphan.wait()
