"""The daemon prunes its own state: a task of its task group, started after READY, off the pass path."""

from __future__ import annotations

import os

import anyio
import pytest

from tinyscheduler.service import retention

from world import World

DAY = 86400


async def test_the_daemon_prunes_old_run_logs_and_temporary_files_by_itself(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "FIRST_PRUNE_SEC", 0.0)
    world.registry([("dev-a", "dev", 1)])
    old = world.clock().timestamp() - 30 * DAY
    tasks = world.base / "state" / "logs" / "tasks"
    for task in range(100, 110):
        # Half as 2.0.0 wrote them (<task>/<attempt>.log), half as runs write them now.
        log = tasks / str(task) / "1.log" if task % 2 else tasks / f"{task}.1.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("an old run\n")
        os.utime(log, (old, old))
    world.running_dir.mkdir(parents=True)
    leftover = world.running_dir / ".task_3.json.k2j4x9ab.tmp"
    leftover.write_text("{")
    os.utime(leftover, (old, old))

    scheduler = world.scheduler(once=False)
    async with anyio.create_task_group() as group:
        group.start_soon(scheduler.serve)
        with anyio.fail_after(30):
            while (tasks.exists() and any(tasks.iterdir())) or leftover.exists():
                await anyio.sleep(0.05)
        scheduler.request_stop("test")
    assert list(tasks.iterdir()) == [] and not leftover.exists()
