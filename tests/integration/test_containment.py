"""Whatever a run starts dies with it, and its log never outgrows its cap: the stand-in's escape modes
(setsid, double fork, a background child outliving goose, a writer that keeps the log open) and a writer
of 1 GB/s, run by the real run supervisor with real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator

import pytest

from tinyscheduler.adapters.containment import CGROUP_PREFIX, RunCgroups
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.service.reporter import Reported
from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, alive, wait_for
from runbench import RunBench, eventually


@pytest.fixture
def delegated() -> Iterator[RunCgroups]:
    """A cgroup of our own to divide, as systemd delegates the daemon's unit one (Delegate=yes): a
    fresh child of this process's cgroup v2, which root may make. Removed with all it holds."""
    own = RunCgroups.detect({"INVOCATION_ID": "test"})
    if own is None:
        pytest.skip("no writable cgroup v2 here (needs root, or a delegated cgroup)")
    root = own.root / f"tinyscheduler-test-{uuid.uuid4().hex[:8]}"
    root.mkdir()
    try:
        yield RunCgroups(root)
    finally:
        for child in root.glob(f"{CGROUP_PREFIX}*"):
            RunCgroups.kill(child)
        RunCgroups.kill(root)


def test_outside_a_systemd_unit_no_cgroup_is_taken() -> None:
    # The cgroup of a login shell or of init.scope was not delegated: dividing it is not ours to do.
    assert RunCgroups.detect({}) is None


async def test_a_process_that_leaves_no_trace_in_proc_dies_with_its_runs_cgroup(
    bench: RunBench, delegated: RunCgroups
) -> None:
    task_id = bench.task()
    recipe = bench.recipe("dev.yaml", mode="untagged-child", linger=300)
    result = await bench.run(task_id, recipe, cgroups=delegated).execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.COMPLETED
    [child] = [r["child"] for r in bench.records() if r["event"] == "child"]
    assert alive([child]) == [], "the cgroup held it and was killed"
    assert list(delegated.root.glob(f"{CGROUP_PREFIX}*")) == [], "the run's cgroup is removed"


async def test_without_a_cgroup_the_same_process_escapes_the_sweep(bench: RunBench) -> None:
    # What the cgroup is for: a setsid grandchild with an empty environment is not found in /proc.
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode="untagged-child", linger=300)).execute()
    [child] = [r["child"] for r in bench.records() if r["event"] == "child"]
    try:
        assert result.outcome is Outcome.SUCCEEDED
        assert alive([child]) == [child]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def test_a_cgroup_is_entered_before_exec_and_killed_whole(delegated: RunCgroups) -> None:
    cgroup = delegated.create(7, 2)
    assert cgroup.name == f"{CGROUP_PREFIX}7-2" and delegated.create(7, 2) == cgroup, "made once"
    script = (
        "import os, time\n"
        "for _ in range(3):\n"
        "    if os.fork() == 0:\n"
        "        os.setsid(); time.sleep(300)\n"
        "print('ready', flush=True); time.sleep(300)"
    )
    argv = RunCgroups.entering(cgroup, ["python3", "-c", script])
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None and parent.stdout.readline() == "ready\n"
        held = [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]
        assert parent.pid in held and len(held) == 4, "goose kept its pid; its three children are in too"
        assert RunCgroups.kill(cgroup) == 4
        assert parent.wait(5) == -signal.SIGKILL
    assert alive(held) == [] and not cgroup.exists()


@pytest.mark.parametrize("mode", ["setsid-child", "double-fork", "background-child", "escaped-writer"])
async def test_nothing_a_run_started_survives_its_end(bench: RunBench, mode: str) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode=mode, linger=300)).execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.COMPLETED
    left = [r["child"] for r in bench.records() if r["event"] == "child"]
    assert left, f"the stand-in's {mode} mode left nothing to catch"
    # Killed when the run ended, before its outcome was reported; SIGKILL takes effect a moment later.
    await eventually(lambda: alive(left) == [], timeout=5, what=f"what the {mode} mode left to die")
    assert bench.ours() == []


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
    wait_for(lambda: alive(left) == [], timeout=5, what=f"what the {mode} mode left to die")
    assert fake.task(task["id"])["status"] == "complete"
