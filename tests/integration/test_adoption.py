"""Runs are precious: they belong to the host, survive any death of the daemon, are judged from their own
output, and leave nothing behind. Real daemons (killed with SIGKILL), the stand-in goose as real processes,
the fake TinyTask over HTTP.

The stand-in records every start and end with its task and pid, and holds a per-task lock while it runs
($TINYSCHEDULER_STANDIN_LOCK_DIR): a second run of the same task at the same time records an `overlap`.
"""

from __future__ import annotations

import random
import signal
import time
from typing import Any

import psutil
import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, wait_for


def start_daemon(daemons: list[DaemonProcess], workspace: Workspace, **env: str) -> DaemonProcess:
    daemon = DaemonProcess(workspace, "run", "--daemon", env=workspace.daemon_env(**env)).start()
    daemons.append(daemon)
    return daemon


def in_flight(records: list[dict[str, Any]]) -> int:
    """Stand-in runs that started and have not ended yet."""
    started = {r["pid"] for r in records if r["event"] == "start"}
    ended = {r["pid"] for r in records if r["event"] == "end"}
    return len(started - ended)


def reruns_after_success(records: list[dict[str, Any]]) -> dict[int, int]:
    """Per task, how many runs started after a run of it had already ended with exit 0."""
    done: set[int] = set()
    reruns: dict[int, int] = {}
    for record in sorted(records, key=lambda r: r["t"]):
        task = record["task_id"]
        if record["event"] == "start" and task in done:
            reruns[task] = reruns.get(task, 0) + 1
        if record["event"] == "end" and record.get("exit") == 0:
            done.add(task)
    return reruns


@pytest.fixture
def locked(workspace: Workspace) -> Workspace:
    workspace.env["TINYSCHEDULER_STANDIN_LOCK_DIR"] = str(workspace.base / "task-locks")
    (workspace.base / "task-locks").mkdir()
    return workspace


def test_twenty_kill_9s_rerun_nothing_that_succeeded_lose_nothing_and_never_overlap(
    fake: FakeTinyTask, locked: Workspace, daemons: list[DaemonProcess]
) -> None:
    workspace = locked
    rng = random.Random(20261129)
    workspace.write_registry([(f"dev-{n}", "dev", 3) for n in range(4)])  # 12 slots
    for n in range(4):
        workspace.write_recipe(f"dev-{n}", {"mode": "succeed", "seconds": 1})
    tasks = [
        fake.create_task(f"work {i}", queue_name="dev", tags=[f"standin:succeed:{rng.uniform(0.5, 3):.2f}"])
        for i in range(120)
    ]
    kills_with_ten_in_flight = 0
    for _ in range(20):
        daemon = start_daemon(daemons, workspace)
        wanted = min(10, sum(1 for t in fake.tasks() if t["status"] != "complete"))
        wait_for(lambda w=wanted: in_flight(workspace.records()) >= w, timeout=30, what="ten runs in flight")
        kills_with_ten_in_flight += in_flight(workspace.records()) >= 10
        # The kill lands at a random moment (not a wait for anything): in a pass, a claim, a spawn,
        # a report, or between them.
        time.sleep(rng.uniform(0, 0.6))
        psutil.Process(daemon.pid).send_signal(signal.SIGKILL)
        daemon.wait()
    start_daemon(daemons, workspace)
    wait_for(lambda: all(t["status"] == "complete" for t in fake.tasks()), timeout=180, what="every task complete")
    wait_for(lambda: workspace.leases() == [], what="no lease left")

    records = workspace.records()
    assert [r for r in records if r["event"] == "overlap"] == [], "a task ran twice at the same time"
    assert reruns_after_success(records) == {}, "work that had succeeded was run again"
    ended_well = {r["task_id"] for r in records if r["event"] == "end" and r.get("exit") == 0}
    assert ended_well == {t["id"] for t in tasks}, "every task was really worked on"
    assert kills_with_ten_in_flight >= 10, f"only {kills_with_ten_in_flight} kills hit ten runs in flight"
