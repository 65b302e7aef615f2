"""The keepers of ended runs: killed at the run's end and reaped later, without waiting for them at
the end, and never left behind as zombies, neither while the daemon runs nor once it has stopped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil
import pytest

from tinyscheduler.adapters.runlog import Keeper
from tinyscheduler.service import run as run_module

from world import World, daemon, until


def gone(pid: int) -> bool:
    """Reaped: no process at all, not even a zombie."""
    try:
        psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return True
    return False


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Keeper]:
    keepers: list[Keeper] = []
    spawn: Callable[..., Keeper] = run_module.spawn_keeper

    def counted(*args: Any, **kwargs: Any) -> Keeper:
        keepers.append(spawn(*args, **kwargs))
        return keepers[-1]

    monkeypatch.setattr(run_module, "spawn_keeper", counted)
    return keepers


async def test_a_keeper_is_reaped_while_the_daemon_runs_and_none_is_left_at_its_exit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    keepers = recorded(monkeypatch)
    world.registry([("dev-a", "dev", 1)])
    async with daemon(world) as scheduler:
        first = world.client.create_task("first", queue_name="dev")["id"]
        await until(lambda: world.client.task(first)["status"] == "complete", "the first run")
        second = world.client.create_task("second", queue_name="dev")["id"]
        await until(lambda: world.client.task(second)["status"] == "complete", "the second run")
        await until(lambda: gone(keepers[0].pid), "the first keeper reaped while the daemon runs")
        assert scheduler.passes is not None
        assert keepers[0].pid not in scheduler.passes.runner.children
    assert len(keepers) == 2
    assert all(gone(keeper.pid) for keeper in keepers), "reaped before the daemon returned"
