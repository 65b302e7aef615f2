"""`tinyscheduler report` against the fake TinyTask over HTTP, with and without a daemon at work."""

from __future__ import annotations

import json
import subprocess
import sys

from harness import DaemonProcess, Workspace, wait_for


def report(workspace: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "report", *args],
        cwd=workspace.base,
        env=workspace.daemon_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_one_list_request_per_status_whatever_the_number_of_tasks(fake, workspace):
    for i in range(120):
        fake.create_task(
            f"task {i}",
            queue_name="dev" if i % 2 else "qa",
            priority=i % 3,
            assigned_to="dev-a" if i % 5 == 0 else None,
            status="working" if i % 7 == 0 else "idle",
        )
    fake.reset_requests()

    result = report(workspace, "--format", "json", "--status", "idle,working,complete")

    assert result.returncode == 0, result.stderr
    task_requests = [path for method, path in fake.requests if path.startswith("/api/v1/tasks")]
    assert len(task_requests) == 3, task_requests
    assert all(method == "GET" for method, _ in fake.requests)
    data = json.loads(result.stdout)
    assert data["summary"]["total_open_tasks"] == 120
    assert data["summary"]["total_working"] == len([i for i in range(120) if i % 7 == 0])
    assert data["priority_distribution"]["by_priority"] == {"2": 40, "1": 40, "0": 40}
    assert data["agent_breakdown"]["dev-a"]["total_tasks"] == 24


def test_report_while_the_daemon_works(fake, workspace):
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "hang"})
    urgent = fake.create_task("urgent fix", queue_name="dev", priority=5)
    later = fake.create_task("later", queue_name="dev", priority=1)
    blocked = fake.create_task("after the fix", queue_name="dev", priority=1, blocked_by_task_id=urgent["id"])
    daemon = DaemonProcess(workspace, "run", "--daemon").start()
    try:
        wait_for(lambda: fake.task(urgent["id"])["status"] == "working", what="the urgent task running")

        data = json.loads(report(workspace, "--format", "json").stdout)
        assert data["summary"]["total_working"] == 1 and data["summary"]["total_idle"] == 2
        assert data["summary"]["total_blocked"] == 1
        assert data["agent_breakdown"]["dev-a"]["task_ids"] == [urgent["id"]]
        assert data["agent_breakdown"]["unassigned"]["task_ids"] == [later["id"], blocked["id"]]
        assert [t["id"] for t in data["tasks"]] == [urgent["id"], later["id"], blocked["id"]]
        assert data["age_metrics"]["oldest_task_id"] == urgent["id"]

        table = report(workspace)
        assert table.returncode == 0, table.stderr
        for heading in ("Summary", "Agent workload", "Priority distribution", "Task age", "Tasks (3)"):
            assert heading in table.stdout
        assert "idle (blocked)" in table.stdout

        mine = json.loads(report(workspace, "--format", "json", "--agent", "dev-a", "--status", "working").stdout)
        assert [t["id"] for t in mine["tasks"]] == [urgent["id"]]
    finally:
        daemon.kill()


def test_markdown_to_a_file(fake, workspace):
    fake.create_task("a | pipe in the title", queue_name="docs", assigned_to="docs-a")
    target = workspace.base / "report.md"
    result = report(workspace, "--format", "markdown", "-o", str(target))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and f"report written to {target}" in result.stderr
    text = target.read_text()
    assert text.startswith("# TinyTask workload report")
    assert "| id | status | agent | queue | priority | age | title |" in text
    assert "a \\| pipe in the title" in text


def test_bad_status_and_unreachable_tinytask_are_one_line_errors(workspace):
    bad = report(workspace, "--status", "idle,done")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: --status 'idle,done': expected a comma list of idle, working, complete")

    down = report(workspace, TINYSCHEDULER_MCP_ENDPOINT="http://127.0.0.1:9")
    assert down.returncode == 1
    assert len(down.stderr.strip().splitlines()) == 1 and "127.0.0.1:9" in down.stderr
