"""The real daemon as a subprocess, the fake TinyTask over HTTP, the stand-in goose as real processes."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime

import pytest

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.tinytask import TinyTaskError
from tinyscheduler.adapters.tinytask.rest import RestClient
from tinyscheduler.core.planner import PlanConfig
from tinyscheduler.service.gather import gather
from tinyscheduler.testing.fake import FakeTinyTask

from harness import (
    STANDIN,
    DaemonProcess,
    Workspace,
    max_concurrency,
    overlapping_runs_of_one_task,
    processes_of,
    wait_for,
)
from runbench import FlakyClient

AGENTS = [("dev-a", "dev", 2), ("dev-b", "dev", 1), ("qa-a", "qa", 2), ("ops-a", "ops", 1), ("ops-b", "ops", 2)]


def start_daemon(daemons: list[DaemonProcess], workspace: Workspace, *args: str, **env: str) -> DaemonProcess:
    daemon = DaemonProcess(workspace, "run", *args, env=workspace.daemon_env(**env)).start()
    daemons.append(daemon)
    return daemon


def all_complete(fake: FakeTinyTask) -> bool:
    return all(t["status"] == "complete" for t in fake.tasks())


def test_thirty_tasks_over_three_queues_complete_within_limits_and_blockers_first(fake, workspace, daemons):
    workspace.write_registry(AGENTS)
    for name, _, _ in AGENTS:
        workspace.write_recipe(name, {"mode": "succeed", "seconds": 0.3})
    queues = ["dev", "qa", "ops"]
    for i in range(27):
        fake.create_task(f"task {i}", queue_name=queues[i % 3], priority=i % 4)
    blocker = fake.create_task("blocker", queue_name="dev", priority=0)
    blocked = fake.create_task("blocked", queue_name="dev", priority=9, blocked_by_task_id=blocker["id"])
    fake.create_task("second blocked", queue_name="qa", priority=9, blocked_by_task_id=blocked["id"])

    daemon = start_daemon(daemons, workspace, "--daemon")
    wait_for(lambda: all_complete(fake), timeout=90, what="all 30 tasks complete")

    records = workspace.records()
    starts = [r for r in records if r["event"] == "start"]
    assert sorted(r["task_id"] for r in starts) == sorted(t["id"] for t in fake.tasks()), "each task ran exactly once"
    peaks = max_concurrency(records)
    limits = {name: slots for name, _, slots in AGENTS}
    assert all(peaks[agent] <= limits[agent] for agent in peaks), (peaks, limits)
    assert sum(peaks.values()) > len(AGENTS), "runs overlapped: slots were actually used in parallel"
    end_of = {r["task_id"]: r["t"] for r in records if r["event"] == "end"}
    start_of = {r["task_id"]: r["t"] for r in starts}
    assert start_of[blocked["id"]] >= end_of[blocker["id"]]
    assert start_of[blocked["id"] + 1] >= end_of[blocked["id"]]
    agents_used = {t["assigned_to"] for t in fake.tasks()}
    assert agents_used == set(limits), "every pool agent got work"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert workspace.leases() == []


def test_failing_task_backs_off_then_is_tagged_failed(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "fail"})
    task = fake.create_task("always fails", queue_name="dev")

    start_daemon(daemons, workspace, "--daemon", TINYSCHEDULER_MAX_ATTEMPTS="3", TINYSCHEDULER_RETRY_BASE_SEC="1")
    wait_for(lambda: "tinyscheduler:failed" in fake.task(task["id"])["tags"], timeout=60, what="failed tag")

    starts = [r["t"] for r in workspace.records() if r["event"] == "start"]
    assert len(starts) == 3
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, f"backoff doubles from 1 s: gaps {gaps}"

    # The tag comes with the last report's PATCH; its comments follow it.
    def comments_once_given_up() -> list[str] | None:
        texts = [c["content"] for c in fake.comments(task["id"])]
        return texts if any("giving up after 3 failed attempts" in c for c in texts) else None

    comments = wait_for(comments_once_given_up, what="the giving-up comment")
    assert fake.task(task["id"])["status"] == "idle"
    assert [c for c in comments if "attempt 1/3 failed" in c] and [c for c in comments if "attempt 3/3 failed" in c]


def test_kill_9_mid_run_then_restart_loses_nothing_and_never_runs_a_task_twice_at_once(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 3), ("dev-b", "dev", 2)])
    for agent in ("dev-a", "dev-b"):
        workspace.write_recipe(agent, {"mode": "succeed", "seconds": 1.5})
    for i in range(10):
        fake.create_task(f"work {i}", queue_name="dev")

    first = start_daemon(daemons, workspace, "--daemon")
    wait_for(lambda: len(workspace.running_pids()) >= 3, what="three runs in flight")
    os.killpg(first.pid, signal.SIGKILL)  # the daemon only; its runs live in their own sessions
    first.wait()
    assert any(p for p in processes_of(workspace.base)), "runs outlived the killed daemon"

    start_daemon(daemons, workspace, "--daemon")
    wait_for(lambda: all_complete(fake), timeout=90, what="every task complete after the restart")
    records = workspace.records()
    assert overlapping_runs_of_one_task(records) == []
    completed_by_run = {r["task_id"] for r in records if r["event"] == "end" and r.get("exit") == 0}
    assert completed_by_run == {t["id"] for t in fake.tasks()}, "every task was really worked on"
    wait_for(lambda: workspace.leases() == [], what="no leases left")


def test_sigterm_drains_or_requeues_runs_and_exits_cleanly(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    tasks = [fake.create_task(f"long {i}", queue_name="dev") for i in range(2)]

    daemon = start_daemon(daemons, workspace, "--daemon", TINYSCHEDULER_SHUTDOWN_GRACE_SEC="1")
    wait_for(lambda: len([r for r in workspace.records() if r["event"] == "start"]) == 2, what="two runs started")
    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    assert workspace.leases() == []
    assert processes_of(workspace.base) == []
    for task in tasks:
        state = fake.task(task["id"])
        assert state["status"] == "idle" and state["assigned_to"] == "dev-a"
        assert "tinyscheduler:failed" not in state["tags"], "a shutdown is not the task's failure"


def test_second_instance_exits_75_naming_the_holder(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    first = start_daemon(daemons, workspace, "--daemon")
    wait_for((workspace.base / "state" / "last_pass.json").exists, what="first pass")
    second = start_daemon(daemons, workspace, "--daemon")
    assert second.wait() == 75
    assert f"pid {first.pid}" in second.output()
    once = start_daemon(daemons, workspace, "--once")
    assert once.wait() == 75


def test_run_once_starts_one_pass_and_supervises_its_runs_to_the_end(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.5})
    tasks = [fake.create_task(f"t{i}", queue_name="dev") for i in range(3)]
    once = start_daemon(daemons, workspace, "--once")
    assert once.wait(timeout=60) == 0
    states = sorted(fake.task(t["id"])["status"] for t in tasks)
    assert states == ["complete", "complete", "idle"], "one pass: two slots, two runs, each seen to its end"
    assert workspace.leases() == []
    assert processes_of(workspace.base) == []


def test_dry_run_prints_the_plan_and_changes_nothing(fake, workspace):
    workspace.write_registry([("dev-a", "dev", 1), ("dev-b", "dev", 1)])
    blocker = fake.create_task("blocker", queue_name="dev")
    fake.create_task("blocked", queue_name="dev", priority=5, blocked_by_task_id=blocker["id"])
    fake.create_task("other", queue_name="dev")
    fake.reset_requests()
    before = fake.tasks()

    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "run", "--once", "--dry-run", "--json"],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    started = {s["task_id"]: s["agent"] for s in plan["starts"]}
    assert started == {blocker["id"]: "dev-a", blocker["id"] + 2: "dev-b"}
    assert any(s["task_id"] == blocker["id"] + 1 and "blocked" in s["reason"] for s in plan["skips"])
    assert fake.tasks() == before
    assert {method for method, _ in fake.requests} == {"GET"}
    assert sorted(p.name for p in workspace.base.iterdir()) == ["agent-control.json"]

    table = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "run", "--once", "--dry-run"],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert table.returncode == 0, table.stderr
    assert "Would start (2)" in table.stdout and "blocked by task" in table.stdout


def test_dry_run_with_tinytask_down_says_so_in_one_line_and_exits_1(workspace, tmp_path):
    workspace.write_registry([("dev-a", "dev", 1)])
    env = workspace.daemon_env(TINYSCHEDULER_MCP_ENDPOINT="http://127.0.0.1:9")
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "run", "--once", "--dry-run"],
        cwd=workspace.base,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "127.0.0.1:9" in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_daemon_survives_tinytask_outage_and_resumes(workspace, daemons):
    server = FakeTinyTask().start()
    port = server.url.rsplit(":", 1)[1]
    workspace.tinytask_url = server.url
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1})
    server.stop()
    # Nobody can tell it is the fake while it is down: the stand-in goose needs the test switch.
    daemon = start_daemon(daemons, workspace, "--daemon", TINYSCHEDULER_ALLOW_STANDIN="1")
    last_pass = workspace.base / "state" / "last_pass.json"
    wait_for(
        lambda: last_pass.exists() and json.loads(last_pass.read_text())["consecutive_failures"] >= 2,
        what="failed passes counted",
    )
    assert daemon.proc.poll() is None, "TinyTask down never ends the daemon"
    with FakeTinyTask(port=int(port)) as again:
        task = again.create_task("after the outage", queue_name="dev")
        wait_for(lambda: again.task(task["id"])["status"] == "complete", timeout=60, what="work resumes")


def test_lease_removed_by_hand_is_restored_while_its_process_runs(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    task = fake.create_task("long", queue_name="dev")
    daemon = start_daemon(daemons, workspace, "--daemon", TINYSCHEDULER_HEARTBEAT_SEC="30")
    lease = workspace.running_dir / f"task_{task['id']}.json"
    wait_for(lambda: lease.exists() and json.loads(lease.read_text()).get("pid"), what="lease with a pid")
    lease.unlink()
    wait_for(lease.exists, timeout=10, what="lease restored")
    # The file is written first, then the line is logged.
    wait_for(lambda: any(e.get("event") == "lease_restored" for e in daemon.log_events()), what="lease_restored")


def test_run_whose_pid_never_reached_its_lease_is_found_and_stopped_before_the_task_runs_again(
    fake, workspace, daemons
):
    """The daemon died between spawning goose and writing the pid into the lease."""
    workspace.write_registry([("dev-a", "dev", 1)])
    recipe = workspace.write_recipe("dev-a", {"mode": "hang"})
    task = fake.create_task("interrupted start", queue_name="dev", assigned_to="dev-a")
    fake_patch(fake, task["id"], status="working")
    workspace.running_dir.mkdir(parents=True)
    lease_path = workspace.running_dir / f"task_{task['id']}.json"
    lease_path.write_text(
        json.dumps(
            {
                "task_id": task["id"],
                "agent": "dev-a",
                "pid": None,
                "recipe": "dev-a.yaml",
                "state": "starting",
                "started_at": "2026-01-01T00:00:00Z",
                "heartbeat": "2026-01-01T00:00:00Z",
                "host": socket.gethostname(),
                "owner": "previous-instance",
                "attempt": 1,
            }
        )
    )
    env = workspace.daemon_env(TINYSCHEDULER_LEASE=str(lease_path), TINYTASK_ENDPOINT=fake.url)
    orphan = subprocess.Popen(
        [
            STANDIN,
            "run",
            "--recipe",
            str(recipe),
            "--params",
            f"task_id={task['id']}",
            "--params",
            "agent=dev-a",
            "--no-session",
        ],
        env=env,
        cwd=workspace.base,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: any(r["event"] == "start" for r in workspace.records()), what="the orphan runs")
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.2})

    daemon = start_daemon(daemons, workspace, "--daemon")
    wait_for(
        lambda: fake.task(task["id"])["status"] == "complete", timeout=60, what="the task runs again and completes"
    )
    assert orphan.wait(timeout=10) is not None
    assert overlapping_runs_of_one_task(workspace.records()) == []
    assert any(e.get("event") == "orphan_found" and e.get("pid") == orphan.pid for e in daemon.log_events())


def fake_patch(fake: FakeTinyTask, task_id: int, **fields: object) -> None:
    request = urllib.request.Request(
        f"{fake.url}/api/v1/tasks/{task_id}",
        data=json.dumps(fields).encode(),
        method="PATCH",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.status == 200


def test_a_broken_registry_stops_the_start_with_one_line_naming_the_file(fake, workspace):
    (workspace.base / "agent-control.json").write_text(
        '[{"agentName": "dev-a", "agentType": "dev"},\n  {"agentName": "dev-a"}]'
    )
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "run", "--daemon"],
        cwd=workspace.base,
        env=workspace.daemon_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    problems = [line for line in result.stderr.splitlines() if "agent-control.json" in line]
    assert problems and all("[1]" in line for line in problems), result.stderr
    assert not (workspace.base / "state" / "tinyscheduler.lock").exists(), "nothing started, nothing locked"


def _original_lease(workspace: Workspace, task_id: int, **fields: object) -> None:
    workspace.running_dir.mkdir(parents=True, exist_ok=True)
    (workspace.running_dir / f"task_{task_id}.json").write_text(
        json.dumps(
            {
                "task_id": str(task_id),
                "agent": "dev-a",
                "recipe": "dev-a.yaml",
                "state": "running",
                "started_at": "2026-01-01T00:00:00Z",
                "heartbeat": "2026-01-01T00:00:00Z",
                "host": socket.gethostname(),
                **fields,
            }
        )
    )


def test_a_reclaim_that_changes_nothing_does_not_spin_the_tick(fake, workspace, daemons):
    """An original-schema lease whose PID is alive cannot be stopped safely; waiting must not wake a pass
    that plans the same reclaim again at once (it did, thousands of requests a second)."""
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        _original_lease(workspace, 77, pid=sleeper.pid)
        daemon = start_daemon(
            daemons, workspace, "--daemon", TINYSCHEDULER_LOOP_INTERVAL_SEC="60", TINYSCHEDULER_HEARTBEAT_SEC="30"
        )
        wait_for((workspace.base / "state" / "last_pass.json").exists, what="first pass")
        fake.reset_requests()
        time.sleep(2)
        assert len(fake.requests) < 20, f"{len(fake.requests)} requests in 2 s of an idle daemon"
        waits = [e for e in daemon.log_events() if e.get("event") == "lease_waiting"]
        assert len(waits) == 1, "said once, not once per check"
        assert (workspace.running_dir / "task_77.json").exists(), "the lease is kept while its PID lives"
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lease_of_a_deleted_task_is_removed_not_retried_forever(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    dead = subprocess.Popen(["true"])
    dead.wait()
    _original_lease(workspace, 4242, pid=dead.pid, start_ticks=1)  # no such task on the server
    daemon = start_daemon(
        daemons, workspace, "--daemon", TINYSCHEDULER_LOOP_INTERVAL_SEC="60", TINYSCHEDULER_HEARTBEAT_SEC="30"
    )
    wait_for(lambda: workspace.leases() == [], what="the lease removed")
    wait_for(
        lambda: any(
            e.get("event") == "run_finished" and e.get("task_id") == 4242 and e.get("report") == "left_alone"
            for e in daemon.log_events()
        ),
        what="the settled run left alone",
    )
    fake.reset_requests()
    time.sleep(1)
    assert len(fake.requests) < 20


async def test_no_run_starts_for_a_task_whose_reclaim_is_in_flight(fake, workspace):
    """A pass planned on a lease scan taken before a reclaim removed the lease must not start the task
    while that reclaim can still set it idle and delete the lease (the new run's lease)."""
    from tinyscheduler.config.settings import load_settings
    from tinyscheduler.core.planner import Start
    from tinyscheduler.core.tasks import Task
    from tinyscheduler.service.reclaim import Reclaimer
    from tinyscheduler.service.runner import Runner
    from tinyscheduler.service.scheduler import Scheduler

    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    task = fake.create_task("being reclaimed", queue_name="dev", assigned_to="dev-a")
    loaded = load_settings(env_file=None, cli={}, environ=workspace.daemon_env(), cwd=workspace.base)
    scheduler = Scheduler(loaded, environ={})
    started: list[object] = []

    class Group:
        def start_soon(self, *args: object) -> None:
            started.append(args)

    rt = scheduler.runtime
    runner = Runner(rt, Group(), Reclaimer(rt, Group()))  # type: ignore[arg-type]
    rt.reclaiming.add(task["id"])
    listed = Task(id=task["id"], status="idle", assigned_to="dev-a", queue_name="dev")

    assert runner.launch(Start(task["id"], "dev-a", "assigned to dev-a"), listed) is False
    assert started == [] and rt.runs == {}


async def test_a_failed_list_request_fails_the_pass_as_a_tinytask_error_not_an_exception_group(fake, tmp_path):
    """The daemon counts TinyTaskError as "TinyTask down" and a dry run prints one line for it; a
    request failing inside the concurrent fetches used to surface as an ExceptionGroup instead."""
    client = FlakyClient(RestClient(fake.url, retries=0))
    client.down = True
    store = LeaseStore(tmp_path / "running", tmp_path / "quarantine")
    try:
        with pytest.raises(TinyTaskError):
            await gather(
                client,
                PlanConfig(limits={"dev-a": 1, "dev-b": 1}, pools={"dev": ("dev-a", "dev-b")}),
                store,
                now=datetime.now(UTC),
                host="h",
                instance_id="i",
                boot_id=None,
            )
    finally:
        await client.aclose()


def test_a_symlink_loop_in_the_lease_folder_does_not_end_the_daemon(fake, workspace, daemons):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a")
    daemon = start_daemon(daemons, workspace, "--daemon", TINYSCHEDULER_HEARTBEAT_SEC="30")
    wait_for((workspace.base / "state" / "last_pass.json").exists, what="first pass")
    os.symlink("task_5.json", workspace.running_dir / "task_5.json")  # ELOOP on stat
    wait_for(
        lambda: (
            any(e.get("event") == "lease_quarantined" for e in daemon.log_events()) or daemon.proc.poll() is not None
        ),
        timeout=10,
        what="the bad entry handled",
    )
    assert daemon.proc.poll() is None, daemon.output()[-2000:]
    task = fake.create_task("still served", queue_name="dev")
    wait_for(lambda: fake.task(task["id"])["status"] == "complete", timeout=30, what="work goes on")
