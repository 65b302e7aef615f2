"""Where the daemon writes run logs: one file per run in the run log folder, no folder per run (a
mkdir per run was ~8% of the daemon's CPU on ext4 without a journal)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from tinyscheduler.adapters import runlog
from tinyscheduler.adapters.files import make_private_folder

from world import World, daemon, until


def folders(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir()]


async def test_a_run_makes_no_folder_and_a_removed_log_folder_is_made_again_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []

    def counted(path: Path) -> None:
        made.append(path)
        make_private_folder(path)

    monkeypatch.setattr(runlog, "make_private_folder", counted)
    world.registry([("dev-a", "dev", 1)])
    tasks = world.base / "state" / "logs" / "tasks"
    async with daemon(world):
        assert folders(tasks) == [], "made by the daemon's start, empty"
        first = world.client.create_task("a", queue_name="dev")["id"]
        await until(lambda: world.client.task(first)["status"] == "complete", "the first run")
        assert (folders(tasks), made) == ([], []), "no folder made, none looked for"
        assert [p.name for p in tasks.iterdir()] == [f"{first}.1.log"]

        shutil.rmtree(tasks)  # by an operator, while the daemon runs
        second = world.client.create_task("b", queue_name="dev")["id"]
        await until(lambda: world.client.task(second)["status"] == "complete", "the second run")
    assert made == [tasks], "made again by the run that found it missing, once"
    assert [p.name for p in tasks.iterdir()] == [f"{second}.1.log"]
    assert stat.S_IMODE(tasks.stat().st_mode) == 0o700
    assert (tasks / f"{second}.1.log").read_text().startswith(f"--- tinyscheduler: task {second}, agent dev-a")
