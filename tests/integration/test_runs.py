"""One Goose run end to end: the stand-in goose as a real process, real signals, real lease files,
the fake TinyTask over HTTP. Timings are small (heartbeat 0.2 s, grace 0.3 s); waits poll."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
import structlog.testing

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.process import AdoptedProcess, stop_process_group
from tinyscheduler.adapters.procfs import current_boot_id, probe, process_start_ticks
from tinyscheduler.adapters.runlog import RunLog
from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.service.reporter import Reported, requeue_if_ours
from tinyscheduler.service.run import StartFailure
from tinyscheduler.service.supervisor import LeaseKeeper, Limits, Supervision

from runbench import STANDIN, RunBench, eventually

#: The ladder's grace where a test expects SIGINT to be enough: the stand-in holds stop signals
#: while it starts, and its exit (coverage's save included) took up to 2 s on a loaded 2-core
#: machine, past the bench's 0.3 s. A run that ignored SIGINT would still reach SIGTERM and fail.
SIGINT_IS_ENOUGH_SEC = 10.0


def running_lease(b: RunBench, task_id: int) -> Lease | None:
    lease = b.leases.read(task_id)
    return lease if lease is not None and lease.state is LeaseState.RUNNING else None


async def test_success_completes_the_task_and_removes_the_lease(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="succeed", seconds=0.2))

    result = await run.execute()

    assert (result.outcome, result.report, result.exit_code) == (Outcome.SUCCEEDED, Reported.COMPLETED, 0)
    assert bench.fake.task(task_id)["status"] == "complete"
    assert bench.leases.read(task_id) is None
    assert bench.attempts.next_attempt(task_id) == 1
    log = result.log_path.read_text()
    assert result.log_path == bench.root / "logs" / f"{task_id}.1.log"
    assert log.startswith(f"--- tinyscheduler: task {task_id}, agent dev, attempt 1,")
    assert "stand-in goose: done" in log and log.endswith("--- tinyscheduler: succeeded: " + result.reason + "\n")
    assert [name for name, _ in bench.events] == ["started", "finished"]
    assert bench.events[0][1]["pid"] == run.pid
    assert [(r["event"], r["exit"] if r["event"] == "end" else None) for r in bench.records()] == [
        ("start", None),
        ("end", 0),
    ]
    assert bench.comments(task_id) == []


def test_a_descriptor_the_daemon_inherited_never_reaches_a_keeper(tmp_path: Path) -> None:
    """A shell that starts the daemon with an open pipe (fd 7 here, inheritable, as inherited ones
    are): a keeper holding it would keep the pipe open for as long as runs live."""
    program = (
        "import os, sys, time\n"
        "from tinyscheduler.adapters.runlog import output_pipe, spawn_keeper\n"
        "inherited = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT)\n"
        "os.dup2(inherited, 7)\n"
        "read_fd, write_fd = output_pipe()\n"
        "keeper = spawn_keeper(read_fd, {b'TINYSCHEDULER_LEASE': b'x'})\n"
        # Linux lets posix_spawn return before the child's exec has closed its close-on-exec fds.
        "deadline = time.monotonic() + 5\n"
        "while (fds := sorted(int(fd) for fd in os.listdir(f'/proc/{keeper.pid}/fd'))) != [0, 1, 2]:\n"
        "    if time.monotonic() > deadline: break\n"
        "    time.sleep(0.01)\n"
        "print(fds, os.get_inheritable(7))\n"
        "keeper.kill()\n"
        "print(keeper.wait(5))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "inherited")], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["[0, 1, 2] False", f"{-signal.SIGKILL}"]


async def test_the_output_keeper_carries_the_runs_tag_and_nothing_of_the_daemons(bench: RunBench) -> None:
    """Found by its tag (adoption, the sweep); goose's environment (API keys) and the daemon's open
    files are not its to hold."""
    bench.environ["GOOSE_PROVIDER_API_KEY"] = "sk-not-for-the-keeper"
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="hang"))
    execution = asyncio.create_task(run.execute())
    lease = await eventually(lambda: running_lease(bench, task_id), what="the run to start")
    try:
        assert lease.keeper_pid is not None
        keeper = psutil.Process(lease.keeper_pid)
        environ = keeper.environ()
        assert environ["TINYSCHEDULER_LEASE"] == str(bench.leases.path(task_id))
        assert environ["TINYSCHEDULER_OUTPUT_KEEPER"] == "1"
        assert "GOOSE_PROVIDER_API_KEY" not in environ and "PATH" not in environ
        assert psutil.Process(run.pid).environ()["GOOSE_PROVIDER_API_KEY"] == "sk-not-for-the-keeper"
        await eventually(  # its exec closes the daemon's descriptors just after posix_spawn returns
            lambda: sorted(int(fd) for fd in os.listdir(f"/proc/{keeper.pid}/fd")) == [0, 1, 2],
            timeout=5,
            what="the keeper to hold fds 0-2 only",
        )
    finally:
        run.request_stop("test over")
        await execution


async def test_lease_is_written_before_the_task_is_working_and_the_process_exists(bench: RunBench) -> None:
    task_id = bench.task()
    seen: list[Lease | None] = []
    bench.client.before_update = lambda tid, fields: seen.append(bench.leases.read(tid))

    await bench.run(task_id, bench.recipe("dev.yaml", mode="succeed")).execute()

    first = seen[0]
    assert first is not None and (first.state, first.pid) == (LeaseState.STARTING, None)
    assert bench.starts(task_id) == 1


async def test_running_lease_has_exact_liveness_fields_and_a_heartbeat(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="hang"))
    execution = asyncio.create_task(run.execute())
    try:
        lease = await eventually(lambda: running_lease(bench, task_id), what="a running lease")
        assert lease.pid == run.pid and lease.pgid == run.pid
        assert lease.start_ticks == process_start_ticks(run.pid)
        assert (lease.owner, lease.host, lease.attempt, lease.recipe) == (
            "instance-under-test",
            "testhost",
            1,
            "dev.yaml",
        )
        assert lease.boot_id == current_boot_id() and lease.log_path == str(run.log_path)
        assert probe(lease, current_boot_id()) is Liveness.ALIVE
        assert bench.fake.task(task_id)["status"] == "working"
        # Lease timestamps have one-second resolution: wait for the next second to show.
        await eventually(
            lambda: (bench.leases.read(task_id) or lease).heartbeat > lease.heartbeat, what="a newer heartbeat"
        )
    finally:
        run.request_stop("test over")
        result = await execution
    assert result.outcome is Outcome.KILLED


async def test_failure_requeues_with_a_comment_and_counts_the_attempt(bench: RunBench) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode="fail")).execute()

    assert (result.outcome, result.report, result.exit_code) == (Outcome.FAILED, Reported.REQUEUED, 1)
    assert bench.fake.task(task_id)["status"] == "idle"
    [comment] = bench.comments(task_id)
    assert comment == f"tinyscheduler: attempt 1/3 failed ({result.reason}); log: {result.log_path}"
    assert result.reason.startswith("exit 1 after ")
    assert bench.attempts.next_attempt(task_id) == 2
    assert bench.leases.read(task_id) is None
    assert [name for name, _ in bench.events] == ["started", "requeued", "finished"]


async def test_retry_waits_for_the_backoff(bench: RunBench) -> None:
    bench.attempts.policy = dataclasses.replace(bench.attempts.policy, retry_base_sec=3600)
    task_id = bench.task()
    recipe = bench.recipe("dev.yaml", mode="fail")
    await bench.run(task_id, recipe).execute()

    again = await bench.run(task_id, recipe).execute()

    assert again.outcome is Outcome.NOT_STARTED and again.reason.startswith("not claimable: retry backs off until ")
    assert bench.starts(task_id) == 1


async def test_after_max_attempts_the_task_is_tagged_failed_and_left_alone(bench: RunBench) -> None:
    task_id = bench.task(tags=["keep-me"])
    recipe = bench.recipe("dev.yaml", mode="fail")
    results = [await bench.run(task_id, recipe).execute() for _ in range(3)]

    assert [r.report for r in results] == [Reported.REQUEUED, Reported.REQUEUED, Reported.GAVE_UP]
    assert [r.attempt for r in results] == [1, 2, 3]
    task = bench.fake.task(task_id)
    assert task["status"] == "idle" and task["tags"] == ["keep-me", FAILED_TAG]
    comments = bench.comments(task_id)
    assert [c.split(" (")[0] for c in comments[:3]] == [f"tinyscheduler: attempt {n}/3 failed" for n in (1, 2, 3)]
    assert comments[3].startswith("tinyscheduler: giving up after 3 failed attempts; tagged tinyscheduler:failed.")
    assert (
        "gave_up",
        {"task_id": task_id, "agent": "dev", "attempt": 3, "failures": 3, "reason": results[2].reason},
    ) in bench.events

    refused = await bench.run(task_id, recipe).execute()
    assert (
        refused.outcome is Outcome.NOT_STARTED
        and refused.reason == f"not claimable: tagged {FAILED_TAG}; remove the tag to retry"
    )
    assert bench.starts(task_id) == 3

    # A person removes the tag: a fresh budget of attempts.
    await bench.client.update_task(task_id, tags=["keep-me"])
    result = await bench.run(task_id, bench.recipe("ok.yaml", mode="succeed")).execute()
    assert (result.attempt, result.report) == (1, Reported.COMPLETED)


async def test_hung_run_is_stopped_at_max_runtime_with_sigint(bench: RunBench) -> None:
    task_id = bench.task()
    result = await bench.run(
        task_id, bench.recipe("dev.yaml", mode="hang"), max_runtime_sec=0.5, stop_grace_sec=SIGINT_IS_ENOUGH_SEC
    ).execute()

    assert result.outcome is Outcome.TIMED_OUT and result.report is Reported.REQUEUED
    assert "stopped with SIGINT" in result.reason and result.exit_code == 1
    assert result.duration_sec is not None and 0.5 <= result.duration_sec < 5
    assert "Headless run interrupted" in result.log_path.read_text()
    assert bench.fake.task(task_id)["status"] == "idle"
    assert bench.comments(task_id)[0].startswith("tinyscheduler: attempt 1/3 failed (max runtime reached")
    assert bench.ours() == []


async def test_process_ignoring_sigint_and_sigterm_still_dies(bench: RunBench) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode="stubborn"), max_runtime_sec=0.3).execute()

    assert result.outcome is Outcome.TIMED_OUT and "stopped with SIGKILL" in result.reason
    assert result.exit_code == -signal.SIGKILL
    assert bench.ours() == []
    assert bench.leases.read(task_id) is None


async def test_silent_run_is_stopped_by_the_idle_timeout(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(
        task_id, bench.recipe("dev.yaml", mode="hang"), idle_timeout_sec=0.6, stop_grace_sec=SIGINT_IS_ENOUGH_SEC
    )
    result = await run.execute()

    assert result.outcome is Outcome.IDLE_TIMEOUT and "stopped with SIGINT" in result.reason
    assert bench.attempts.next_attempt(task_id) == 2


@pytest.mark.parametrize(
    ("standin", "outcome", "reason"),
    [
        ({"mode": "max-turns"}, Outcome.INCOMPLETE, "stopped at the max-turns limit; exit 0 after "),
        (
            {"mode": "stream-json", "error": "provider exploded"},
            Outcome.FAILED,
            "goose reported an error: provider exploded; exit 0 after ",
        ),
    ],
)
async def test_exit_zero_is_not_always_success(
    bench: RunBench, standin: dict[str, Any], outcome: Outcome, reason: str
) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", **standin)).execute()

    assert result.exit_code == 0 and result.outcome is outcome and result.reason.startswith(reason)
    assert bench.fake.task(task_id)["status"] == "idle"
    assert bench.attempts.next_attempt(task_id) == 2


async def test_goose_json_output_success_via_extra_args(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="succeed"), goose_args=("--output-format", "json"))
    result = await run.execute()

    assert result.outcome is Outcome.SUCCEEDED
    assert '"status": "completed"' in result.log_path.read_text()


@pytest.mark.parametrize(
    ("standin", "status", "assigned_to"),
    [
        ({"mode": "transfer", "to": "qa", "seconds": 0.2}, "idle", "qa"),
        ({"mode": "succeed", "complete_task": True}, "complete", "dev"),
    ],
)
async def test_task_changed_by_the_agent_is_not_overwritten(
    bench: RunBench, standin: dict[str, Any], status: str, assigned_to: str
) -> None:
    task_id = bench.task()
    result = await bench.run(task_id, bench.recipe("dev.yaml", **standin)).execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.LEFT_ALONE
    task = bench.fake.task(task_id)
    assert (task["status"], task["assigned_to"]) == (status, assigned_to)
    assert not any(c.startswith("tinyscheduler:") for c in bench.comments(task_id))
    assert bench.leases.read(task_id) is None


async def test_transferred_task_that_then_fails_is_not_requeued_or_counted(bench: RunBench) -> None:
    task_id = bench.task()
    # The stand-in hands the task over, then overstays its max runtime.
    result = await bench.run(
        task_id, bench.recipe("dev.yaml", mode="transfer", to="qa", seconds=30), max_runtime_sec=1.0
    ).execute()

    assert result.outcome is Outcome.TIMED_OUT and result.report is Reported.LEFT_ALONE
    assert bench.fake.task(task_id)["assigned_to"] == "qa"
    assert bench.attempts.next_attempt(task_id) == 1


async def test_log_is_capped_keeping_the_tail_with_a_marker(bench: RunBench) -> None:
    task_id = bench.task()
    cap = 64 * 1024
    result = await bench.run(
        task_id, bench.recipe("dev.yaml", mode="flood", megabytes=4), run_log_max_bytes=cap
    ).execute()

    assert result.outcome is Outcome.SUCCEEDED
    assert result.log_path.stat().st_size <= cap
    log = result.log_path.read_text()
    assert log.startswith(f"[tinyscheduler: log capped at {cap} bytes; ")
    assert "bytes of earlier output cut here]\n" in log
    assert "flood: end of output\n" in log and log.endswith(f"--- tinyscheduler: succeeded: {result.reason}\n")


def test_capping_keeps_whole_lines_and_tracks_where_this_run_starts(tmp_path: Path) -> None:
    run_log = RunLog(tmp_path / "logs" / "1.log", max_bytes=200)
    previous_run = b"".join(b"old %03d\n" % n for n in range(5))  # an earlier run of the same attempt
    run_log.path.parent.mkdir()
    run_log.path.write_bytes(previous_run)
    run_log.create("--- header\n")
    assert run_log.start == len(previous_run) + len("--- header\n")
    assert run_log.tail() == ""  # the earlier run's output is no evidence of this one
    for n in range(100):
        run_log.write(b"line %03d\n" % n)
        assert run_log.path.stat().st_size <= 200  # at every moment, not only at the end

    text = run_log.path.read_text()
    assert text.startswith("[tinyscheduler: log capped at 200 bytes; ")
    kept = text.splitlines()[1:]
    assert kept[-1] == "line 099" and all(line.startswith("line ") and len(line) == 8 for line in kept)
    assert run_log.tail() == "".join(f"{line}\n" for line in kept)  # the marker is not output
    assert run_log.size == len(text)


async def test_a_log_removed_by_hand_does_not_end_supervision(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="hang"))
    execution = asyncio.create_task(run.execute())
    await eventually(lambda: bench.starts(task_id), what="the stand-in to start")
    run.log_path.unlink()
    run.request_stop("test over")
    result = await execution
    assert result.outcome is Outcome.KILLED and result.report is Reported.REQUEUED
    assert result.log_path.read_text().startswith("--- tinyscheduler: killed: ")  # a fresh file, the footer


@pytest.mark.parametrize("goose", ["missing", "not executable", "a folder"])
async def test_spawn_failure_removes_the_lease_and_requeues(bench: RunBench, goose: str) -> None:
    task_id = bench.task()
    missing = str(bench.root / "no-such-goose")
    if goose == "not executable":
        Path(missing).write_text("#!/bin/sh\nexit 0\n")
    elif goose == "a folder":
        os.mkdir(missing)
    result = await bench.run(task_id, bench.recipe("dev.yaml"), goose_bin=missing).execute()

    assert result.outcome is Outcome.NOT_STARTED and result.spawn_failed
    assert result.reason.startswith("spawn failed: ") and missing in result.reason
    assert bench.leases.read(task_id) is None
    assert bench.fake.task(task_id)["status"] == "idle"
    assert bench.attempts.next_attempt(task_id) == 1  # a host problem, not the task's fault
    assert result.start_failure is StartFailure.GOOSE  # every agent's breaker opens, not only this one's
    [comment] = bench.comments(task_id)  # rolled back once, said once
    assert "could not start: spawn failed: " in comment and "not counted as a failed attempt" in comment


async def test_any_exception_while_starting_is_rolled_back_once_with_one_comment(
    bench: RunBench, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only OSError: the measured case was a ValueError (a NUL byte in the goose arguments)."""

    def broken_spawn(*_args: object, **_kwargs: object) -> None:
        raise ValueError("embedded null byte")

    monkeypatch.setattr("tinyscheduler.service.run.spawn", broken_spawn)
    task_id = bench.task()
    bench.fake.reset_requests()
    result = await bench.run(task_id, bench.recipe("dev.yaml")).execute()

    assert result.outcome is Outcome.NOT_STARTED and result.start_failure is StartFailure.AGENT
    assert "ValueError" not in result.reason and "embedded null byte" in result.reason
    assert bench.leases.read(task_id) is None and bench.fake.task(task_id)["status"] == "idle"
    assert bench.attempts.next_attempt(task_id) == 1
    assert len(bench.comments(task_id)) == 1
    patches = [path for method, path in bench.fake.requests if method == "PATCH"]
    assert len(patches) == 2, "set working, then idle again: once each"


async def test_child_gets_a_scrubbed_environment_and_the_base_path(bench: RunBench) -> None:
    task_id = bench.task()
    bench.environ["GOOSE_MODE"] = "smart_approve"
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="hang"))
    execution = asyncio.create_task(run.execute())
    try:
        await eventually(lambda: run.pid and bench.starts(task_id), what="the stand-in to start")
        process = psutil.Process(run.pid)
        env = process.environ()
        cmdline = process.cmdline()
        cwd = process.cwd()
    finally:
        run.request_stop("test over")
        await execution
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS"} & set(env)
    assert env["TINYSCHEDULER_TASK_ID"] == str(task_id) and env["TINYSCHEDULER_AGENT"] == "dev"
    assert env["TINYSCHEDULER_LEASE"] == str(bench.leases.path(task_id))
    assert env["TINYTASK_ENDPOINT"] == bench.fake.url and env["TINYSCHEDULER_ATTEMPT"] == "1"
    assert env["GOOSE_MODE"] == "smart_approve"  # an operator's choice is kept
    assert cwd == str(bench.policy.base_path)
    assert cmdline[-10:] == [
        "run",
        "--recipe",
        str(bench.policy.recipes_dir / "dev.yaml"),
        "--params",
        f"task_id={task_id}",
        "--params",
        "agent=dev",
        "--no-session",
        "--output-format",
        "stream-json",
    ]


async def test_stop_request_requeues_without_counting_a_failure(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="hang"), stop_grace_sec=SIGINT_IS_ENOUGH_SEC)
    execution = asyncio.create_task(run.execute())
    await eventually(lambda: bench.starts(task_id), what="the stand-in to start")

    run.request_stop("daemon shutdown")
    result = await execution

    assert result.outcome is Outcome.KILLED and result.report is Reported.REQUEUED
    assert result.reason.startswith("stopped on request (daemon shutdown), stopped with SIGINT")
    assert bench.fake.task(task_id)["status"] == "idle"
    assert bench.comments(task_id) == [
        "tinyscheduler: run stopped (daemon shutdown); task requeued, not counted as a failed attempt; "
        f"log: {result.log_path}"
    ]
    assert bench.attempts.next_attempt(task_id) == 1
    assert bench.leases.read(task_id) is None and bench.ours() == []


@pytest.mark.parametrize(
    ("fields", "recipe", "reason"),
    [
        ({"status": "working"}, "dev.yaml", "not claimable: status is working"),
        ({"agent": "qa"}, "dev.yaml", "not claimable: assigned to qa, not dev"),
        ({"tags": [FAILED_TAG]}, "dev.yaml", f"not claimable: tagged {FAILED_TAG}"),
        ({}, "../dev.yaml", "escapes the recipes folder"),
        ({}, "/etc/passwd", "is absolute; expected a path inside the recipes folder"),
        ({}, "missing.yaml", "does not exist"),
    ],
)
async def test_refuses_to_start(bench: RunBench, fields: dict[str, Any], recipe: str, reason: str) -> None:
    bench.recipe("dev.yaml")
    task_id = bench.task(**fields)
    before = bench.fake.task(task_id)

    result = await bench.run(task_id, recipe).execute()

    assert result.outcome is Outcome.NOT_STARTED and reason in result.reason
    assert bench.fake.task(task_id) == before
    assert bench.leases.read(task_id) is None and bench.records() == []


async def test_refuses_a_blocked_task(bench: RunBench) -> None:
    blocker = bench.task()
    task_id = bench.task(blocked_by_task_id=blocker)
    result = await bench.run(task_id, bench.recipe("dev.yaml")).execute()
    assert result.outcome is Outcome.NOT_STARTED and result.reason == f"not claimable: blocked by task {blocker}"


async def test_tinytask_down_at_claim_is_a_reason_not_an_exception(bench: RunBench) -> None:
    task_id = bench.task()
    bench.client.down = True
    result = await bench.run(task_id, bench.recipe("dev.yaml")).execute()
    assert result.outcome is Outcome.NOT_STARTED and result.reason.startswith("cannot read the task: ")
    assert bench.leases.read(task_id) is None


async def test_brief_tinytask_outage_at_report_time_is_retried(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="succeed"), report_timeout_sec=10)
    # The outage starts as the run starts: the report's first calls fail, later ones get through.
    run.on_event = lambda name, fields: setattr(bench.client, "fail_next", 2) if name == "started" else None

    result = await run.execute()

    assert result.report is Reported.COMPLETED and bench.client.failed_calls == 2
    assert bench.fake.task(task_id)["status"] == "complete"
    assert bench.leases.read(task_id) is None


async def test_success_unreported_while_tinytask_is_down_is_completed_later_without_rerun(bench: RunBench) -> None:
    task_id = bench.task()
    recipe = bench.recipe("dev.yaml", mode="succeed", seconds=0.2)
    run = bench.run(task_id, recipe, report_timeout_sec=0.8)
    run.on_event = lambda name, fields: setattr(bench.client, "down", name == "started")

    result = await run.execute()

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.UNREPORTED
    lease = bench.leases.read(task_id)
    assert lease is not None and probe(lease, current_boot_id()) is Liveness.DEAD  # for the lease watcher
    assert bench.attempts.success_unreported(task_id)
    assert bench.fake.task(task_id)["status"] == "working"

    # TinyTask is back; the lease watcher does its part: requeue (conditionally), drop the lease.
    bench.client.down = False
    assert await requeue_if_ours(bench.client, task_id, "dev", "tinyscheduler: run lost; requeued")
    bench.leases.remove(task_id)
    again = await bench.run(task_id, recipe).execute()

    assert again.outcome is Outcome.SUCCEEDED and again.report is Reported.COMPLETED
    assert bench.fake.task(task_id)["status"] == "complete"
    assert bench.starts(task_id) == 1  # the agent's work was not repeated
    assert not bench.attempts.success_unreported(task_id)


async def test_success_requeued_by_someone_else_during_an_outage_is_not_rerun(bench: RunBench) -> None:
    task_id = bench.task()
    recipe = bench.recipe("dev.yaml", mode="succeed")
    run = bench.run(task_id, recipe, report_timeout_sec=10)
    run.on_event = lambda name, fields: setattr(bench.client, "down", name == "started")
    execution = asyncio.create_task(run.execute())
    # While the report waits to retry, TinyTask comes back and the task gets requeued behind its back.
    await eventually(lambda: bench.client.failed_calls, what="the report to meet the outage")
    bench.client.down = False
    assert await requeue_if_ours(bench.client.inner, task_id, "dev", "requeued during the outage")

    result = await execution

    assert result.report is Reported.LEFT_ALONE and bench.attempts.success_unreported(task_id)
    again = await bench.run(task_id, recipe).execute()
    assert again.report is Reported.COMPLETED and bench.starts(task_id) == 1


async def test_stop_request_ends_report_retries_at_once_and_leaves_the_lease(bench: RunBench) -> None:
    """A daemon shutting down does not wait out the report deadline while TinyTask is down."""
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="succeed"), report_timeout_sec=300)
    run.on_event = lambda name, fields: setattr(bench.client, "down", name == "started")
    execution = asyncio.create_task(run.execute())
    await eventually(lambda: bench.client.failed_calls, what="the report to meet the outage")

    run.request_stop("the scheduler is shutting down")
    result = await asyncio.wait_for(execution, timeout=10)

    assert result.outcome is Outcome.SUCCEEDED and result.report is Reported.UNREPORTED
    assert bench.attempts.success_unreported(task_id), "the success is kept for the recovery"
    assert bench.leases.read(task_id) is not None, "the lease stays for the next instance"


async def test_failure_unreported_while_tinytask_is_down_still_counts(bench: RunBench) -> None:
    task_id = bench.task()
    run = bench.run(task_id, bench.recipe("dev.yaml", mode="fail"), report_timeout_sec=0.5)
    run.on_event = lambda name, fields: setattr(bench.client, "down", name == "started")

    result = await run.execute()

    assert result.outcome is Outcome.FAILED and result.report is Reported.UNREPORTED
    assert bench.attempts.next_attempt(task_id) == 2
    assert bench.leases.read(task_id) is not None


async def test_requeue_if_ours_leaves_other_agents_tasks_alone(bench: RunBench) -> None:
    mine = bench.task(status="working")
    theirs = bench.task("qa", status="working")
    idle = bench.task()
    assert await requeue_if_ours(bench.client, mine, "dev", "requeued by a test")
    assert not await requeue_if_ours(bench.client, theirs, "dev", "nope")
    assert not await requeue_if_ours(bench.client, idle, "dev", "nope")
    assert bench.fake.task(mine)["status"] == "idle" and bench.comments(mine) == ["requeued by a test"]
    assert bench.fake.task(theirs)["status"] == "working" and bench.comments(theirs) == []


@pytest.mark.parametrize(("mode", "needed"), [("hang", "SIGINT"), ("stubborn", "SIGKILL")])
async def test_stop_process_group_works_from_the_lease_alone(bench: RunBench, mode: str, needed: str) -> None:
    # As the recovery sees a run of a previous daemon instance: only a lease, liveness via /proc.
    recipe = bench.policy.recipes_dir / bench.recipe("dev.yaml", mode=mode)
    env = {**bench.environ, "TINYSCHEDULER_LEASE": str(bench.leases.path(99))}
    process = subprocess.Popen(
        [STANDIN, "run", "--recipe", str(recipe), "--params", "task_id=99"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await eventually(lambda: bench.starts(99), what="the stand-in to start")
        now = datetime.now().astimezone()
        lease = Lease(
            99,
            "dev",
            process.pid,
            "dev.yaml",
            now,
            now,
            "testhost",
            pgid=process.pid,
            start_ticks=process_start_ticks(process.pid),
            boot_id=current_boot_id(),
        )
        last = await stop_process_group(
            process.pid,
            lambda: probe(lease, current_boot_id()) is not Liveness.ALIVE,
            SIGINT_IS_ENOUGH_SEC if needed == "SIGINT" else 0.3,
            structlog.get_logger("test"),
        )
        assert last == needed
        assert process.wait(timeout=5) == (1 if mode == "hang" else -signal.SIGKILL)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def test_stop_process_group_of_a_finished_process_sends_nothing(bench: RunBench) -> None:
    process = subprocess.Popen(["true"], start_new_session=True)
    process.wait()
    assert await stop_process_group(process.pid, lambda: True, 0.1, structlog.get_logger("test")) == ""


async def test_a_run_whose_group_cannot_be_verified_is_said_once_and_tried_again_at_each_heartbeat(
    tmp_path: Path,
) -> None:
    """An adopted run whose lease names a group that is not its process's own (planted, or stale) is
    never signalled. Past its max runtime the supervision used to say so, and try again, every 10 ms."""
    process = subprocess.Popen(["sleep", "60"], start_new_session=True)
    beats: list[datetime] = []
    tries: list[int | None] = []

    class Counted(AdoptedProcess):
        def group(self) -> int | None:
            tries.append(super().group())
            return tries[-1]

    class Keeper(LeaseKeeper):
        def beat(self, moment: datetime) -> None:
            super().beat(moment)
            beats.append(moment)
            if len(beats) == 5:  # the end comes from elsewhere: the run is never signalled
                process.kill()
                process.wait()

    try:
        now = datetime.now().astimezone()
        ticks = process_start_ticks(process.pid)
        lease = Lease(7, "dev", process.pid, "dev.yaml", now, now, "testhost", pgid=process.pid + 1, start_ticks=ticks)
        store = LeaseStore(tmp_path / "running", tmp_path / "quarantine")
        store.ensure()
        store.write(lease)
        with structlog.testing.capture_logs() as logs:
            log = structlog.get_logger("test")
            await Supervision(
                Counted(lease, current_boot_id()),
                limits=Limits(heartbeat_sec=0.1, max_runtime_sec=0.05, stop_grace_sec=0.3, idle_timeout_sec=0),
                lease=Keeper(store, lease, log),
                run_log=RunLog(tmp_path / "run.log", 1 << 20),
                read_fd=None,
                contain=contained,
                clock=lambda: datetime.now().astimezone(),
                log=log,
            ).run()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL and len(beats) == 5
    events = [entry["event"] for entry in logs]
    assert (events.count("run_stopping"), events.count("run_not_signalled"), events.count("stop_signal")) == (1, 1, 0)
    assert set(tries) == {None} and len(tries) <= len(beats) + 1, f"{len(tries)} tries in {len(beats)} heartbeats"


async def contained() -> None:
    """Nothing to contain: the test ended the process itself."""


async def test_a_failure_whose_requeue_reply_was_lost_keeps_its_count_and_backoff(bench: RunBench) -> None:
    """TinyTask applied the PATCH to idle but the reply never came; the retry re-reads the task idle
    and still the agent's. That is our own requeue, not someone else's word: the failure just counted
    must stay (it used to be forgotten, so a flaky server erased backoff and the attempt budget)."""
    from tinyscheduler.adapters.tinytask import TinyTaskUnavailable

    bench.attempts.policy = dataclasses.replace(bench.attempts.policy, retry_base_sec=3600)
    task_id = bench.task()
    lost: list[dict[str, Any]] = []

    def apply_then_lose_the_reply(tid: int, fields: dict[str, Any]) -> None:
        if fields.get("status") == "idle" and not lost:
            lost.append(fields)
            bench.fake.store.update(tid, dict(fields))
            raise TinyTaskUnavailable("reply lost by the test")

    bench.client.before_update = apply_then_lose_the_reply
    result = await bench.run(task_id, bench.recipe("dev.yaml", mode="fail")).execute()

    assert lost and result.outcome is Outcome.FAILED
    assert bench.fake.task(task_id)["status"] == "idle"
    assert bench.attempts.next_attempt(task_id) == 2
    assert bench.attempts.not_before(task_id) is not None, "the backoff holds"
    assert bench.leases.read(task_id) is None


async def test_a_requeue_repeated_for_one_event_posts_one_comment(bench: RunBench) -> None:
    """A reclaim whose lease could not be removed is tried again at the next check: the task is no
    longer ours to requeue then, so the second try writes nothing and says nothing."""
    task_id = bench.task()
    await bench.client.set_status(task_id, "working")
    bench.fake.reset_requests()
    results = [await requeue_if_ours(bench.client, task_id, "dev", "never started; requeued") for _ in range(5)]
    assert results == [True, False, False, False, False]
    assert len(bench.comments(task_id)) == 1
    assert [method for method, _ in bench.fake.requests].count("PATCH") == 1
