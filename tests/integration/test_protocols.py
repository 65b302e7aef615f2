"""The daemon does not know which transport it speaks: REST, MCP over streamable HTTP, MCP over
legacy SSE (the old server's only one) give the same plan and the same end state."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, kill_everything, wait_for

#: (transport asked for, old server?) -> what the daemon ends up speaking
TRANSPORTS = {"rest": ("rest", False), "mcp-http": ("mcp", False), "mcp-sse": ("auto", True)}


def seed_assigned(server: FakeTinyTask) -> None:
    """Work the old server can describe too: assigned tasks with priorities, no queues."""
    for i, (agent, priority) in enumerate([("ann", 1), ("ann", 5), ("ann", 3), ("bob", 0), ("bob", 2), ("cy", 4)]):
        server.create_task(f"task {i}", assigned_to=agent, priority=priority)


@pytest.fixture
def servers() -> Iterator[dict[str, FakeTinyTask]]:
    started = {name: FakeTinyTask(legacy=legacy).start() for name, (_, legacy) in TRANSPORTS.items()}
    try:
        yield started
    finally:
        for server in started.values():
            server.stop()


def dry_run(workspace: Workspace, protocol: str, *extra: str) -> dict:
    env = workspace.daemon_env(TINYSCHEDULER_TINYTASK_PROTOCOL=protocol, TINYSCHEDULER_AGENT_LIMITS="ann:2,bob:1")
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "run", "--once", "--dry-run", "--json", *extra],
        cwd=workspace.base,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_same_tasks_give_the_same_plan_over_every_transport(servers, tmp_path):
    plans = {}
    for name, (protocol, _) in TRANSPORTS.items():
        seed_assigned(servers[name])
        workspace = Workspace(tmp_path / name, servers[name].url)
        plans[name] = dry_run(workspace, protocol)
    assert {name: plan["protocol"] for name, plan in plans.items()} == {
        "rest": "rest",
        "mcp-http": "mcp-http",
        "mcp-sse": "mcp-sse",
    }
    decisions = {name: (plan["starts"], plan["skips"], plan["slots"]) for name, plan in plans.items()}
    assert decisions["rest"] == decisions["mcp-http"] == decisions["mcp-sse"]
    assert [(s["task_id"], s["agent"]) for s in plans["rest"]["starts"]] == [(2, "ann"), (3, "ann"), (5, "bob")]


def test_queue_mode_plans_agree_over_rest_and_mcp(servers, tmp_path):
    plans = {}
    for name in ("rest", "mcp-http"):
        server = servers[name]
        blocker = server.create_task("blocker", queue_name="dev")
        server.create_task("blocked", queue_name="dev", priority=7, blocked_by_task_id=blocker["id"])
        server.create_task("free", queue_name="dev", priority=3)
        server.create_task("mine", queue_name="dev", assigned_to="bob")
        workspace = Workspace(tmp_path / name, server.url)
        workspace.write_registry([("ann", "dev", 2), ("bob", "dev", 1)])
        plans[name] = dry_run(workspace, TRANSPORTS[name][0])
    strip = lambda plan: {k: plan[k] for k in ("assignments", "starts", "skips", "slots")}  # noqa: E731
    assert strip(plans["rest"]) == strip(plans["mcp-http"])
    assert plans["rest"]["mode"] == "queue"


def test_same_end_state_over_every_transport(servers, tmp_path):
    final = {}
    for name, (protocol, _) in TRANSPORTS.items():
        server = servers[name]
        seed_assigned(server)
        workspace = Workspace(tmp_path / name, server.url)
        for agent in ("ann", "bob"):
            workspace.write_recipe(agent, {"mode": "succeed", "seconds": 0.1})
        env = workspace.daemon_env(TINYSCHEDULER_TINYTASK_PROTOCOL=protocol, TINYSCHEDULER_AGENT_LIMITS="ann:2,bob:1")
        once = DaemonProcess(workspace, "run", "--once", env=env).start()
        try:
            assert once.wait(timeout=60) == 0, once.output()[-3000:]
        finally:
            once.kill()
            kill_everything(workspace.base)
        final[name] = [
            (t["id"], t["status"], t["assigned_to"], len(t.get("comments", server.comments(t["id"]))))
            for t in server.tasks()
        ]
    assert final["rest"] == final["mcp-http"] == final["mcp-sse"]
    assert sorted(status for _, status, _, _ in final["rest"]) == ["complete"] * 3 + ["idle"] * 3


def test_old_server_is_named_once_and_served_in_legacy_mode(servers, tmp_path):
    server = servers["mcp-sse"]
    task = server.create_task("assigned work", assigned_to="ann")
    workspace = Workspace(tmp_path, server.url)
    workspace.write_registry([("ann", "dev", 1)])
    workspace.write_recipe("ann", {"mode": "succeed", "seconds": 0.1})
    daemon = DaemonProcess(
        workspace, "run", "--daemon", env=workspace.daemon_env(TINYSCHEDULER_TINYTASK_PROTOCOL="auto")
    ).start()
    try:
        wait_for(lambda: server.task(task["id"])["status"] == "complete", timeout=60, what="assigned task done")
        last_pass = workspace.base / "state" / "last_pass.json"
        first = json.loads(last_pass.read_text())["started_at"]
        wait_for(lambda: json.loads(last_pass.read_text())["started_at"] != first, what="another pass")
        limited = [e for e in daemon.log_events() if e.get("event") == "tinytask_limited"]
        assert len(limited) == 1
        assert "legacy mode" in limited[0]["reason"] and "blocking" in limited[0]["reason"]
        assert any(
            e.get("event") == "tinytask_connected" and e.get("protocol") == "mcp-sse" for e in daemon.log_events()
        )
    finally:
        daemon.kill()
        kill_everything(workspace.base)
