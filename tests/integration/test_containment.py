"""Whatever a run starts dies with it, and its log never outgrows its cap: the stand-in's escape modes
(setsid, double fork, a background child outliving goose, a writer that keeps the log open) and a writer
of 1 GB/s, run by the real run supervisor with real processes."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import psutil
import pytest

from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.service.reporter import Reported
from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace
from runbench import RunBench, eventually


def alive(pids: list[int]) -> list[int]:
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


@pytest.mark.parametrize("mode", ["setsid-child", "double-fork", "background-child", "escaped-writer"])
async def test_nothing_a_run_started_survives_its_end(bench: RunBench, mode: str) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode=mode, linger=300)).execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.COMPLETED
    left = [r["child"] for r in bench.records() if r["event"] == "child"]
    assert left, f"the stand-in's {mode} mode left nothing to catch"
    # Killed when the run ended, before its outcome was reported: nothing to wait for here.
    assert alive(left) == [] and bench.ours() == []


async def test_the_stop_ladder_also_kills_what_escaped(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="setsid-child", linger=300, seconds=300))
    execution = asyncio.create_task(run.execute())
    await eventually(lambda: [r for r in bench.records() if r["event"] == "child"], what="the escaped child")
    run.request_stop("test over")
    result = await execution
    assert result.outcome is Outcome.KILLED
    assert alive([r["child"] for r in bench.records() if r["event"] == "child"]) == []
    assert bench.ours() == []


async def test_a_log_stays_within_its_cap_while_a_run_writes_a_gigabyte_a_second(bench: RunBench) -> None:
    cap = 1024 * 1024
    task_id = bench.task()
    recipe = bench.recipe("dev.yaml", mode="flood-rate", rate=1000, flood_seconds=2)
    run = bench.run(task_id, recipe, run_log_max_bytes=cap)
    largest = 0
    done = threading.Event()

    def watch() -> None:  # samples the size on disk as fast as it can while the run writes
        nonlocal largest
        while not done.is_set():
            with contextlib.suppress(FileNotFoundError):
                largest = max(largest, run.log_path.stat().st_blocks * 512, run.log_path.stat().st_size)

    sampler = threading.Thread(target=watch)
    sampler.start()
    try:
        result = await run.execute()
    finally:
        done.set()
        sampler.join()
    assert result.outcome is Outcome.SUCCEEDED
    assert largest <= 2 * cap, f"the log reached {largest} bytes on disk against a cap of {cap}"
    assert result.log_path.stat().st_size <= cap + 200


async def test_exit_zero_with_no_output_is_not_a_success(bench: RunBench) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode="silent-success")).execute()
    assert result.outcome is Outcome.FAILED
    assert "without a complete event" in result.reason
    assert bench.fake.task(task_id)["status"] == "idle", "not completed"
    assert any("attempt 1/3 failed" in c for c in bench.comments(task_id))


@pytest.mark.parametrize("mode", ["setsid-child", "double-fork", "background-child", "escaped-writer"])
def test_the_daemon_as_subreaper_kills_what_its_run_left_reading_only_its_own_descendants(
    fake: FakeTinyTask, workspace: Workspace, mode: str
) -> None:
    """The real daemon (the subreaper of its runs) sweeps only its own part of /proc at a run's end."""
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": mode, "linger": 300})
    task = fake.create_task("leaves something behind", queue_name="dev")
    daemon = DaemonProcess(workspace, "run", "--once").start()
    try:
        assert daemon.wait(timeout=30) == 0
    finally:
        daemon.kill()
    left = [r["child"] for r in workspace.records() if r["event"] == "child"]
    assert left, f"the stand-in's {mode} mode left nothing to catch"
    assert alive(left) == [] and fake.task(task["id"])["status"] == "complete"
