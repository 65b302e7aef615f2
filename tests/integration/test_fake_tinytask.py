"""The fake TinyTask server keeps the real server's contract, quirks included, over real HTTP."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tinyscheduler.testing.fake import FakeError, FakeTinyTask

TASK_FIELDS = {
    "id",
    "title",
    "description",
    "status",
    "assigned_to",
    "previous_assigned_to",
    "created_by",
    "priority",
    "tags",
    "parent_task_id",
    "queue_name",
    "blocked_by_task_id",
    "is_currently_blocked",
    "created_at",
    "updated_at",
    "archived_at",
}
ISO_SECONDS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    server = FakeTinyTask().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(fake: FakeTinyTask) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"{fake.url}/api/v1", timeout=10) as client:
        yield client


def ids(tasks: list[dict]) -> list[int]:
    return [t["id"] for t in tasks]


# -- health, routing, Python API ----------------------------------------------------------------


def test_health_document(fake: FakeTinyTask) -> None:
    assert fake.url.startswith("http://127.0.0.1:") and not fake.url.endswith("/")
    reply = httpx.get(f"{fake.url}/health")
    assert reply.status_code == 200
    body = reply.json()
    assert body["status"] == "healthy" and body["transport"] == "streamable-http"
    assert body["database"] == "connected"
    assert isinstance(body["uptime"], float) and isinstance(body["sessionCount"], int)
    assert body["timestamp"].endswith("Z")


def test_unknown_route_is_json_404(fake: FakeTinyTask, api: httpx.Client) -> None:
    for reply in (api.get("/nope"), api.delete("/tasks"), httpx.get(f"{fake.url}/elsewhere")):
        assert reply.status_code == 404
        assert reply.json() == {"error": "Not found"}


def test_requests_are_recorded_with_query_and_can_be_reset(fake: FakeTinyTask, api: httpx.Client) -> None:
    api.get("/tasks", params={"status": "idle"})
    api.patch("/tasks/9", json={})
    assert fake.requests == [("GET", "/api/v1/tasks?status=idle"), ("PATCH", "/api/v1/tasks/9")]
    fake.reset_requests()
    assert fake.requests == []


def test_python_api_returns_copies(fake: FakeTinyTask, api: httpx.Client) -> None:
    created = fake.create_task("t", tags=["a"], queue_name="dev")
    assert set(created) == TASK_FIELDS
    copy = fake.task(created["id"])
    copy["tags"].append("mutated")
    copy["status"] = "complete"
    assert fake.task(created["id"])["tags"] == ["a"]
    assert fake.task(created["id"])["status"] == "idle"
    assert fake.task(created["id"])["comments"] == [] and fake.task(created["id"])["links"] == []
    with pytest.raises(KeyError):
        fake.task(999)
    with pytest.raises(FakeError, match="Blocking task not found: 42"):
        fake.create_task("x", blocked_by_task_id=42)
    api.post(f"/tasks/{created['id']}/comments", json={"content": "hi"})
    assert [c["content"] for c in fake.comments(created["id"])] == ["hi"]
    assert ids(fake.tasks()) == [created["id"]]


def test_stop_closes_kept_alive_connections() -> None:
    server = FakeTinyTask().start()
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert client.get("/health").status_code == 200
        server.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/health")


def test_context_manager_and_restart_on_same_port() -> None:
    with FakeTinyTask() as first:
        port = first.port
        assert httpx.get(f"{first.url}/health").status_code == 200
    with FakeTinyTask(port=port) as second:
        assert second.url == f"http://127.0.0.1:{port}"
        assert httpx.get(f"{second.url}/health").status_code == 200


def test_restart_keeps_url_and_tasks() -> None:
    server = FakeTinyTask().start()
    try:
        url = server.url
        server.create_task("kept")
        server.stop()
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
        server.start()
        assert server.url == url
        assert [t["title"] for t in httpx.get(f"{url}/api/v1/tasks").json()] == ["kept"]
    finally:
        server.stop()


# -- task shape, create --------------------------------------------------------------------------


def test_create_returns_201_with_full_shape(api: httpx.Client) -> None:
    reply = api.post("/tasks", json={"title": " build ", "created_by": "me", "priority": -2, "status": "working"})
    assert reply.status_code == 201
    task = reply.json()
    assert set(task) == TASK_FIELDS
    # Quirks of the real REST create: title trimmed, `status` accepted but never applied.
    assert task["title"] == "build" and task["status"] == "idle" and task["priority"] == -2
    assert task["tags"] == [] and task["assigned_to"] is None and task["archived_at"] is None
    assert task["is_currently_blocked"] is False
    assert task["created_at"] == task["updated_at"]
    assert re.match(ISO_SECONDS, task["created_at"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"created_by": "me"}, "Task title is required"),
        ({"title": "  ", "created_by": "me"}, "Task title is required"),
        ({"title": 5, "created_by": "me"}, "title must be a string"),
        ({"title": "t"}, "created_by is required"),
        ({"title": "t", "created_by": "me", "priority": 1.5}, "priority must be a finite integer"),
        ({"title": "t", "created_by": "me", "priority": "3"}, "priority must be a finite integer"),
        ({"title": "t", "created_by": "me", "priority": True}, "priority must be a finite integer"),
        ({"title": "t", "created_by": "me", "priority": None}, "priority must be a finite integer"),
        ({"title": "t", "created_by": "me", "tags": "a"}, "tags must be an array of strings"),
        (
            {"title": "t", "created_by": "me", "status": "done"},
            "Invalid status: done. Must be one of: idle, working, complete",
        ),
        ({"title": "t", "created_by": "me", "parent_task_id": 77}, "Parent task not found: 77"),
        ({"title": "t", "created_by": "me", "blocked_by_task_id": 77}, "Blocking task not found: 77"),
    ],
)
def test_create_validation(api: httpx.Client, body: dict, message: str) -> None:
    reply = api.post("/tasks", json=body)
    assert reply.status_code == 400
    assert reply.json() == {"error": message}


def test_malformed_json_body_is_400(api: httpx.Client) -> None:
    reply = api.post("/tasks", content=b"{nope", headers={"Content-Type": "application/json"})
    assert reply.status_code == 400 and "error" in reply.json()


# -- lists: order, filters, validation -----------------------------------------------------------


def test_lists_sort_by_priority_desc_then_creation(fake: FakeTinyTask, api: httpx.Client) -> None:
    low = fake.create_task("low", priority=-1)
    first = fake.create_task("first", priority=5)
    mid = fake.create_task("mid", priority=0)
    second = fake.create_task("second", priority=5)
    assert ids(api.get("/tasks").json()) == [first["id"], second["id"], mid["id"], low["id"]]
    api.patch(f"/tasks/{low['id']}", json={"priority": 9})
    assert ids(api.get("/tasks").json()) == [low["id"], first["id"], second["id"], mid["id"]]
    assert ids(fake.tasks()) == [low["id"], first["id"], second["id"], mid["id"]]


def test_list_filters(fake: FakeTinyTask, api: httpx.Client) -> None:
    a = fake.create_task("a", assigned_to="dev", queue_name="q1")
    b = fake.create_task("b", assigned_to="dev", queue_name="q2", status="working")
    c = fake.create_task("c", queue_name="q1", status="complete")
    d = fake.create_task("d", assigned_to="qa", queue_name="q1")

    def listed(**params: str) -> list[int]:
        reply = api.get("/tasks", params=params)
        assert reply.status_code == 200, reply.text
        return ids(reply.json())

    assert listed() == [a["id"], b["id"], c["id"], d["id"]]
    assert listed(assigned_to="dev") == [a["id"], b["id"]]
    assert listed(status="idle") == [a["id"], d["id"]]
    assert listed(status="idle,working") == [a["id"], b["id"], d["id"]]
    assert listed(status=" working , complete ") == [b["id"], c["id"]]
    assert listed(exclude_status="idle") == [b["id"], c["id"]]
    assert listed(queue_name="q1", status="idle") == [a["id"], d["id"]]
    assert listed(queue_name="q1", assigned_to="qa") == [d["id"]]
    # There is no "unassigned" filter: an empty assigned_to matches nobody.
    assert listed(assigned_to="") == []
    assert listed(queue_name="nope") == []
    # An empty status list filters nothing.
    assert listed(status="") == [a["id"], b["id"], c["id"], d["id"]]


def test_subtask_filters(fake: FakeTinyTask, api: httpx.Client) -> None:
    root = fake.create_task("root", queue_name="dev")
    child = fake.create_task("child", parent_task_id=root["id"])
    loose = fake.create_task("loose", queue_name="dev")
    assert ids(api.get("/tasks", params={"parent_task_id": str(root["id"])}).json()) == [child["id"]]
    assert ids(api.get("/tasks", params={"parent_task_id": "null"}).json()) == [root["id"], loose["id"]]
    assert ids(api.get("/queues/dev/tasks", params={"exclude_subtasks": "true"}).json()) == [root["id"], loose["id"]]
    assert ids(api.get("/tasks", params={"exclude_subtasks": "false", "include_archived": "true"}).json()) == [
        root["id"],
        child["id"],
        loose["id"],
    ]


def test_limit_and_offset(fake: FakeTinyTask, api: httpx.Client) -> None:
    made = [fake.create_task(f"t{i}")["id"] for i in range(5)]

    def listed(**params: str) -> list[int]:
        return ids(api.get("/tasks", params=params).json())

    assert listed(limit="2") == made[:2]
    assert listed(limit="2", offset="2") == made[2:4]
    assert listed(offset="3") == made[3:]
    assert listed(limit="0") == made  # the real server reads limit=0 as "no limit"
    assert listed(limit="10", offset="10") == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=done", 'status must be one of: idle, working, complete (got: "done")'),
        ("status=idle,nope", 'status must be one of: idle, working, complete (got: "nope")'),
        ("exclude_status=x", 'exclude_status must be one of: idle, working, complete (got: "x")'),
        ("limit=-1", "limit must be a non-negative integer"),
        ("limit=abc", "limit must be a non-negative integer"),
        ("limit=1.5", "limit must be a non-negative integer"),
        ("offset=-3", "offset must be a non-negative integer"),
        ("status=idle&status=working", "Query parameter status must be given at most once"),
        ("assigned_to=a&assigned_to=b", "Query parameter assigned_to must be given at most once"),
        ("limit=1&limit=1", "Query parameter limit must be given at most once"),
        ("include_archived=yes", "include_archived must be 'true' or 'false'"),
        ("exclude_subtasks=1", "exclude_subtasks must be 'true' or 'false'"),
        ("parent_task_id=x", "parent_task_id must be an integer or null"),
    ],
)
def test_list_query_validation(fake: FakeTinyTask, api: httpx.Client, query: str, message: str) -> None:
    fake.create_task("t", queue_name="q")
    for path in ("/tasks", "/queues/q/tasks"):
        reply = api.get(f"{path}?{query}")
        assert reply.status_code == 400, path
        assert reply.json() == {"error": message}


# -- single task ---------------------------------------------------------------------------------


def test_get_task_with_relations_and_errors(fake: FakeTinyTask, api: httpx.Client) -> None:
    task = fake.create_task("t")
    api.post(f"/tasks/{task['id']}/comments", json={"content": "note", "created_by": "qa"})
    got = api.get(f"/tasks/{task['id']}").json()
    assert set(got) == TASK_FIELDS | {"comments", "links"}
    assert got["links"] == []
    assert [(c["content"], c["created_by"], c["task_id"]) for c in got["comments"]] == [("note", "qa", task["id"])]

    missing = api.get("/tasks/999")
    assert (missing.status_code, missing.json()) == (404, {"error": "Task 999 not found"})
    bad = api.get("/tasks/abc")
    assert (bad.status_code, bad.json()) == (400, {"error": "Invalid task ID: abc"})
    # parseInt semantics: a leading number is the id.
    assert api.get(f"/tasks/{task['id']}abc").json()["id"] == task["id"]


def test_patch_partial_update_and_assignment_history(fake: FakeTinyTask, api: httpx.Client) -> None:
    task = fake.create_task("t", priority=3, tags=["x"], queue_name="dev", description="d")
    tid = task["id"]

    assigned = api.patch(f"/tasks/{tid}", json={"assigned_to": "alice"}).json()
    assert assigned["assigned_to"] == "alice" and assigned["previous_assigned_to"] is None
    assert (assigned["priority"], assigned["tags"], assigned["queue_name"], assigned["description"]) == (
        3,
        ["x"],
        "dev",
        "d",
    )

    moved = api.patch(f"/tasks/{tid}", json={"assigned_to": "bob", "status": "working"}).json()
    assert (moved["assigned_to"], moved["previous_assigned_to"], moved["status"]) == ("bob", "alice", "working")

    same = api.patch(f"/tasks/{tid}", json={"assigned_to": "bob"}).json()
    assert same["previous_assigned_to"] == "alice"  # unchanged assignee keeps the history

    unassigned = api.patch(f"/tasks/{tid}", json={"assigned_to": None}).json()
    assert unassigned["assigned_to"] is None and unassigned["previous_assigned_to"] == "bob"

    api.patch(f"/tasks/{tid}", json={"assigned_to": "carol"})
    emptied = api.patch(f"/tasks/{tid}", json={"assigned_to": ""}).json()
    assert emptied["assigned_to"] is None and emptied["previous_assigned_to"] == "carol"

    retagged = api.patch(f"/tasks/{tid}", json={"tags": ["a", "b"], "priority": -4, "queue_name": "qa"}).json()
    assert (retagged["tags"], retagged["priority"], retagged["queue_name"]) == (["a", "b"], -4, "qa")
    assert fake.task(tid)["queue_name"] == "qa"


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/tasks/1", {"status": "failed"}, 400, "Invalid status: failed. Must be one of: idle, working, complete"),
        ("/tasks/1", {"status": None}, 400, "Invalid status: null. Must be one of: idle, working, complete"),
        ("/tasks/1", {"priority": 2.5}, 400, "priority must be a finite integer"),
        ("/tasks/1", {"assigned_to": 7}, 400, "assigned_to must be a string"),
        ("/tasks/1", {"title": ""}, 400, "Task title is required"),
        ("/tasks/1", {"blocked_by_task_id": 1}, 400, "Task cannot be blocked by itself"),
        ("/tasks/1", {"blocked_by_task_id": 50}, 404, "Blocking task not found: 50"),
        ("/tasks/1", {"parent_task_id": 1}, 400, "Task cannot be its own parent"),
        ("/tasks/404", {"status": "complete"}, 404, "Task not found: 404"),
        ("/tasks/zz", {"status": "complete"}, 400, "Invalid task ID: zz"),
    ],
)
def test_patch_errors(fake: FakeTinyTask, api: httpx.Client, path: str, body: dict, status: int, message: str) -> None:
    fake.create_task("t")
    reply = api.patch(path, json=body)
    assert reply.status_code == status
    assert reply.json() == {"error": message}
    assert fake.task(1)["status"] == "idle"


def test_blocking_is_computed_on_read(fake: FakeTinyTask, api: httpx.Client) -> None:
    blocker = fake.create_task("blocker")
    blocked = fake.create_task("blocked", blocked_by_task_id=blocker["id"])
    assert blocked["is_currently_blocked"] is True
    api.patch(f"/tasks/{blocker['id']}", json={"status": "complete"})
    assert api.get(f"/tasks/{blocked['id']}").json()["is_currently_blocked"] is False
    api.patch(f"/tasks/{blocker['id']}", json={"status": "working"})
    assert api.get("/tasks", params={"status": "idle"}).json()[0]["is_currently_blocked"] is True
    unblocked = api.patch(f"/tasks/{blocked['id']}", json={"blocked_by_task_id": None}).json()
    assert unblocked["blocked_by_task_id"] is None and unblocked["is_currently_blocked"] is False
    # Blocking is advisory: status changes go through regardless.
    api.patch(f"/tasks/{blocked['id']}", json={"blocked_by_task_id": blocker["id"]})
    assert api.patch(f"/tasks/{blocked['id']}", json={"status": "working"}).json()["status"] == "working"


def test_comments(fake: FakeTinyTask, api: httpx.Client) -> None:
    task = fake.create_task("t")
    reply = api.post(f"/tasks/{task['id']}/comments", json={"content": "run failed", "created_by": "sched"})
    assert reply.status_code == 201
    comment = reply.json()
    assert {k: comment[k] for k in ("id", "task_id", "content", "created_by")} == {
        "id": 1,
        "task_id": task["id"],
        "content": "run failed",
        "created_by": "sched",
    }
    anonymous = api.post(f"/tasks/{task['id']}/comments", json={"content": "x"}).json()
    assert anonymous["created_by"] is None
    bad = api.post(f"/tasks/{task['id']}/comments", json={"text": "x"})
    assert (bad.status_code, bad.json()) == (400, {"error": "content is required and must be a string"})
    missing = api.post("/tasks/99/comments", json={"content": "x"})
    assert (missing.status_code, missing.json()) == (404, {"error": "Task not found: 99"})
    assert [c["content"] for c in fake.comments(task["id"])] == ["run failed", "x"]


# -- agents, transfer, queues --------------------------------------------------------------------


def test_signup_takes_best_idle_task_and_ignores_blocking(fake: FakeTinyTask, api: httpx.Client) -> None:
    blocker = fake.create_task("blocker")
    fake.create_task("other agent", assigned_to="qa", priority=10)
    low = fake.create_task("low", assigned_to="dev", priority=1)
    high = fake.create_task("high", assigned_to="dev", priority=5, blocked_by_task_id=blocker["id"])
    fake.create_task("busy", assigned_to="dev", priority=9, status="working")

    reply = api.post("/agents/dev/signup")
    assert reply.status_code == 200
    taken = reply.json()
    assert taken["id"] == high["id"] and taken["status"] == "working" and taken["is_currently_blocked"] is True
    assert "comments" in taken and "links" in taken
    assert api.post("/agents/dev/signup").json()["id"] == low["id"]
    empty = api.post("/agents/dev/signup")
    assert (empty.status_code, empty.json()) == (404, {"error": "No idle tasks available for signup"})
    assert fake.task(blocker["id"])["status"] == "idle"


def test_agent_queue_is_idle_and_working_of_that_agent(fake: FakeTinyTask, api: httpx.Client) -> None:
    idle = fake.create_task("idle", assigned_to="dev")
    working = fake.create_task("working", assigned_to="dev", status="working", priority=2)
    fake.create_task("done", assigned_to="dev", status="complete")
    fake.create_task("theirs", assigned_to="qa")
    assert ids(api.get("/agents/dev/queue").json()) == [working["id"], idle["id"]]
    assert api.get("/agents/nobody/queue").json() == []


def test_transfer(fake: FakeTinyTask, api: httpx.Client) -> None:
    task = fake.create_task("t", assigned_to="dev", status="working")
    reply = api.post(
        f"/tasks/{task['id']}/transfer", json={"current_agent": "dev", "new_agent": "qa", "comment": " needs review "}
    )
    assert reply.status_code == 200
    moved = reply.json()["task"]
    assert (moved["assigned_to"], moved["previous_assigned_to"], moved["status"]) == ("qa", "dev", "idle")
    assert reply.json()["comment"]["content"] == "needs review"
    assert [(c["content"], c["created_by"]) for c in fake.comments(task["id"])] == [("needs review", "dev")]

    # Ownership is checked against the current assignee.
    wrong = api.post(f"/tasks/{task['id']}/transfer", json={"current_agent": "dev", "new_agent": "ops", "comment": "x"})
    assert wrong.status_code == 400
    assert wrong.json() == {"error": f"Task {task['id']} is not assigned to dev (currently assigned to: qa)"}

    api.patch(f"/tasks/{task['id']}", json={"status": "complete"})
    done = api.post(f"/tasks/{task['id']}/transfer", json={"current_agent": "qa", "new_agent": "dev", "comment": "c"})
    assert done.status_code == 400 and "cannot be transferred" in done.json()["error"]
    missing = api.post("/tasks/99/transfer", json={"current_agent": "qa", "new_agent": "dev", "comment": "c"})
    assert (missing.status_code, missing.json()) == (404, {"error": "Task not found: 99"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "current_agent"),
        # Not a body the real server knows: it asks for current_agent, as for any body without it.
        ({"to_agent": "qa", "reason": "needs review"}, "current_agent"),
        ({"current_agent": "dev", "new_agent": " ", "comment": "c"}, "new_agent"),
        ({"current_agent": "dev", "new_agent": "qa"}, "comment"),
    ],
)
def test_transfer_body_is_checked_before_the_task(
    fake: FakeTinyTask, api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    task = fake.create_task("t", assigned_to="dev")
    for task_id in (task["id"], 99):
        reply = api.post(f"/tasks/{task_id}/transfer", json=body)
        assert (reply.status_code, reply.json()) == (
            400,
            {"error": f"{field} is required and must be a non-empty string"},
        )
    assert fake.task(task["id"])["assigned_to"] == "dev"


def test_queues_queue_tasks_and_stats(fake: FakeTinyTask, api: httpx.Client) -> None:
    a = fake.create_task("a", queue_name="qa", assigned_to="tester")
    b = fake.create_task("b", queue_name="dev", priority=2)
    c = fake.create_task("c", queue_name="dev", status="working", assigned_to="coder")
    fake.create_task("loose")
    assert api.get("/queues").json() == ["dev", "qa"]
    assert ids(api.get("/queues/dev/tasks").json()) == [b["id"], c["id"]]
    assert ids(api.get("/queues/dev/tasks", params={"status": "idle"}).json()) == [b["id"]]
    assert ids(api.get("/queues/qa/tasks", params={"assigned_to": "tester"}).json()) == [a["id"]]
    assert api.get("/queues/dev/stats").json() == {
        "queue_name": "dev",
        "total_tasks": 2,
        "by_status": {"idle": 1, "working": 1, "complete": 0},
        "assigned": 1,
        "unassigned": 1,
        "agents": ["coder"],
    }
    assert api.get("/queues/empty/stats").json()["total_tasks"] == 0


def test_parent_status_follows_children_and_queue_is_inherited(fake: FakeTinyTask, api: httpx.Client) -> None:
    root = fake.create_task("root", queue_name="dev")
    child = api.post("/tasks", json={"title": "child", "created_by": "me", "parent_task_id": root["id"]}).json()
    assert child["queue_name"] == "dev" and child["parent_task_id"] == root["id"]
    other = fake.create_task("other", parent_task_id=root["id"])
    grandchild = fake.create_task("grandchild", parent_task_id=child["id"])
    assert grandchild["queue_name"] == "dev"

    api.patch(f"/tasks/{grandchild['id']}", json={"status": "working"})
    assert fake.task(child["id"])["status"] == "working"
    assert fake.task(root["id"])["status"] == "working"  # recomputed up the chain

    api.patch(f"/tasks/{grandchild['id']}", json={"status": "complete"})
    assert fake.task(child["id"])["status"] == "complete"
    assert fake.task(root["id"])["status"] == "idle"  # `other` is still idle

    api.patch(f"/tasks/{other['id']}", json={"status": "complete"})
    assert fake.task(root["id"])["status"] == "complete"

    # Nesting stops at three levels below the root.
    great = fake.create_task("great", parent_task_id=grandchild["id"])
    deep = api.post("/tasks", json={"title": "too deep", "created_by": "me", "parent_task_id": great["id"]})
    assert (deep.status_code, deep.json()) == (400, {"error": "Maximum nesting depth (3 levels) exceeded"})


# -- command line --------------------------------------------------------------------------------


def test_cli_serves_seed_and_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(
        json.dumps(
            [
                {"title": "one", "queue_name": "dev", "priority": 1},
                {"title": "two", "assigned_to": "dev", "blocked_by_task_id": 1},
            ]
        )
    )
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyscheduler.testing.fake", "--seed", str(seed)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        tasks = httpx.get(f"{url}/api/v1/tasks", timeout=10).json()
        assert [(t["title"], t["is_currently_blocked"]) for t in tasks] == [("one", False), ("two", True)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- MCP, streamable HTTP ------------------------------------------------------------------------

MCP_ACCEPT = {"Accept": "application/json, text/event-stream"}


class Mcp:
    """A bare-bones streamable HTTP MCP client that checks the framing of every reply."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=10)
        self.next_id = 0

    def rpc(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        reply = self.http.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}},
            headers=MCP_ACCEPT,
        )
        assert reply.status_code == 200, reply.text
        assert reply.headers["content-type"].startswith("text/event-stream")
        assert "mcp-session-id" not in reply.headers  # stateless
        assert reply.text.startswith("event: message\ndata: ") and reply.text.endswith("\n\n")
        message = json.loads(reply.text.removeprefix("event: message\ndata: "))
        assert message["jsonrpc"] == "2.0" and message["id"] == self.next_id
        return message

    def call(self, name: str, arguments: dict | None = None) -> tuple[str, bool]:
        """(text, isError) of a tool call; a tool failure must never be a JSON-RPC error."""
        message = self.rpc("tools/call", {"name": name, "arguments": arguments or {}})
        assert "error" not in message
        result = message["result"]
        assert [c["type"] for c in result["content"]] == ["text"]
        assert result.get("isError", False) in (True, False)
        return result["content"][0]["text"], result.get("isError", False)

    def ok(self, name: str, arguments: dict | None = None) -> str:
        text, failed = self.call(name, arguments)
        assert not failed, text
        return text

    def failure(self, name: str, arguments: dict | None = None) -> str:
        text, failed = self.call(name, arguments)
        assert failed, text
        return text


def sentence_and_json(text: str) -> tuple[str, dict]:
    sentence, blank, payload = text.partition("\n\n")
    assert blank and "\n" not in sentence, text
    return sentence, json.loads(payload)


@pytest.fixture
def mcp(fake: FakeTinyTask) -> Iterator[Mcp]:
    client = Mcp(fake.url)
    try:
        yield client
    finally:
        client.http.close()


@pytest.mark.parametrize("accept", [None, "application/json", "text/event-stream", "*/*"])
def test_mcp_post_needs_both_accept_types(fake: FakeTinyTask, accept: str | None) -> None:
    headers = {"Accept": accept} if accept else {}
    reply = httpx.post(f"{fake.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
    assert reply.status_code == 406
    assert reply.json()["error"]["message"].startswith("Not Acceptable")


def test_mcp_rejects_other_content_types_and_bad_json(fake: FakeTinyTask) -> None:
    as_text = httpx.post(f"{fake.url}/mcp", content=b"{}", headers={**MCP_ACCEPT, "Content-Type": "text/plain"})
    assert as_text.status_code == 415
    broken = httpx.post(f"{fake.url}/mcp", content=b"{nope", headers={**MCP_ACCEPT, "Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["code"] == -32700


def test_mcp_is_stateless_and_initialize_is_optional(fake: FakeTinyTask, mcp: Mcp) -> None:
    fake.create_task("t")
    assert json.loads(mcp.ok("get_task", {"id": 1}))["title"] == "t"  # no initialize first
    init = mcp.rpc(
        "initialize",
        {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}},
    )["result"]
    assert init["protocolVersion"] == "2025-03-26"
    assert "tools" in init["capabilities"] and init["serverInfo"]["name"] == "tinytask"
    note = mcp.http.post("/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=MCP_ACCEPT)
    assert (note.status_code, note.content) == (202, b"")
    assert mcp.rpc("ping")["result"] == {}
    unknown = mcp.rpc("resources/subscribe")
    assert unknown["error"]["code"] == -32601
    assert ("POST", "/mcp") in fake.requests


def test_mcp_tool_list(mcp: Mcp) -> None:
    tools = {t["name"]: t for t in mcp.rpc("tools/list")["result"]["tools"]}
    assert set(tools) == {
        "list_tasks",
        "get_queue_tasks",
        "get_task",
        "update_task",
        "add_comment",
        "signup_for_task",
        "list_queues",
        "create_task",
        "move_task",
    }
    assert "get_unassigned_in_queue" not in tools
    update = tools["update_task"]["inputSchema"]
    assert update["required"] == ["id"] and update["properties"]["assigned_to"]["type"] == "string"
    assert update["properties"]["blocked_by_task_id"]["type"] == ["number", "null"]
    assert "required" not in tools["list_queues"]["inputSchema"]


def test_mcp_list_tasks(fake: FakeTinyTask, mcp: Mcp) -> None:
    a = fake.create_task("a", queue_name="dev", assigned_to="x")
    b = fake.create_task("b", queue_name="dev", status="working", priority=3)
    c = fake.create_task("c", queue_name="qa", status="complete")

    def listed(**arguments: object) -> list[int]:
        payload = json.loads(mcp.ok("list_tasks", arguments))
        assert payload["count"] == len(payload["tasks"])
        return ids(payload["tasks"])

    assert listed() == [b["id"], a["id"], c["id"]]
    assert listed(status="idle") == [a["id"]]
    assert listed(status=["idle", "working"]) == [b["id"], a["id"]]
    assert listed(exclude_status=["complete"], queue_name="dev") == [b["id"], a["id"]]
    assert listed(assigned_to="x") == [a["id"]]
    assert listed(assigned_to="") == []
    assert listed(limit=1, offset=1) == [a["id"]]
    assert listed(limit="2") == [b["id"], a["id"]]  # numbers are coerced, as by zod
    child = fake.create_task("child", parent_task_id=a["id"])
    assert listed(parent_task_id=a["id"]) == [child["id"]]
    assert child["id"] not in listed(exclude_subtasks=True, include_archived=False)
    assert "invalid_union" in mcp.failure("list_tasks", {"status": "done"})
    assert "Unrecognized key(s) in object: 'unassigned'" in mcp.failure("list_tasks", {"unassigned": True})


def test_mcp_get_queue_tasks_and_list_queues(fake: FakeTinyTask, mcp: Mcp) -> None:
    a = fake.create_task("a", queue_name="dev")
    fake.create_task("b", queue_name="dev", status="working")
    fake.create_task("c", queue_name="qa")
    payload = json.loads(mcp.ok("get_queue_tasks", {"queue_name": "dev", "status": "idle"}))
    assert payload["queue_name"] == "dev" and payload["count"] == 1 and ids(payload["tasks"]) == [a["id"]]
    assert payload["filters"] == {"status": "idle", "include_archived": False}
    assert "Queue name cannot be empty" in mcp.failure("get_queue_tasks", {"queue_name": " "})
    assert "Required" in mcp.failure("get_queue_tasks", {})
    assert json.loads(mcp.ok("list_queues")) == {"count": 2, "queues": ["dev", "qa"]}
    assert "Unrecognized key" in mcp.failure("list_queues", {"x": 1})


def test_mcp_get_task(fake: FakeTinyTask, mcp: Mcp) -> None:
    task = fake.create_task("t")
    mcp.ok("add_comment", {"task_id": task["id"], "content": "hello"})
    text = mcp.ok("get_task", {"id": task["id"]})
    assert text.startswith('{\n  "id"')  # pretty-printed JSON
    got = json.loads(text)
    assert [c["content"] for c in got["comments"]] == ["hello"] and got["links"] == []
    assert mcp.failure("get_task", {"id": 77}) == "Task not found: 77"


def test_mcp_update_task(fake: FakeTinyTask, mcp: Mcp) -> None:
    task = fake.create_task("t", assigned_to="dev")
    sentence, updated = sentence_and_json(mcp.ok("update_task", {"id": str(task["id"]), "status": "working"}))
    assert sentence == f"Task {task['id']} updated successfully"
    assert updated["status"] == "working" and fake.task(task["id"])["status"] == "working"

    _, unassigned = sentence_and_json(mcp.ok("update_task", {"id": task["id"], "assigned_to": ""}))
    assert unassigned["assigned_to"] is None and unassigned["previous_assigned_to"] == "dev"

    mcp.ok("update_task", {"id": task["id"], "assigned_to": "qa"})
    rejected = mcp.failure("update_task", {"id": task["id"], "assigned_to": None})
    assert "Expected string, received null" in rejected
    assert fake.task(task["id"])["assigned_to"] == "qa"

    assert "Invalid enum value" in mcp.failure("update_task", {"id": task["id"], "status": "failed"})
    assert "Unrecognized key(s) in object: 'state'" in mcp.failure("update_task", {"id": task["id"], "state": "x"})
    assert mcp.failure("update_task", {"id": 99, "status": "idle"}) == "Error updating task: Task not found: 99"
    assert "Expected number, received nan" in mcp.failure("update_task", {"id": "abc"})
    assert fake.task(task["id"])["status"] == "working"

    blocker = fake.create_task("blocker")
    _, blocked = sentence_and_json(mcp.ok("update_task", {"id": task["id"], "blocked_by_task_id": blocker["id"]}))
    assert blocked["is_currently_blocked"] is True
    _, unblocked = sentence_and_json(mcp.ok("update_task", {"id": task["id"], "blocked_by_task_id": None}))
    assert unblocked["blocked_by_task_id"] is None


def test_mcp_add_comment(fake: FakeTinyTask, mcp: Mcp) -> None:
    task = fake.create_task("t")
    sentence, comment = sentence_and_json(
        mcp.ok("add_comment", {"task_id": task["id"], "content": "failed twice", "created_by": "sched"})
    )
    assert str(task["id"]) in sentence
    assert (comment["content"], comment["created_by"], comment["task_id"]) == ("failed twice", "sched", task["id"])
    # add_comment is the one tool whose schema is not strict: unknown keys are dropped.
    mcp.ok("add_comment", {"task_id": task["id"], "content": "x", "extra": 1})
    assert mcp.failure("add_comment", {"task_id": 99, "content": "x"}) == "Error adding comment: Task not found: 99"
    assert "Required" in mcp.failure("add_comment", {"task_id": task["id"]})
    assert [c["content"] for c in fake.comments(task["id"])] == ["failed twice", "x"]


def test_mcp_signup_for_task(fake: FakeTinyTask, mcp: Mcp) -> None:
    task = fake.create_task("t", assigned_to="dev")
    sentence, claimed = sentence_and_json(mcp.ok("signup_for_task", {"agent_name": "dev"}))
    assert sentence == f"Task #{task['id']} claimed and set to working status"
    assert claimed["status"] == "working" and "comments" in claimed
    text, failed = mcp.call("signup_for_task", {"agent_name": "dev"})
    assert (text, failed) == ("No idle tasks available in queue for agent: dev", False)


def test_mcp_create_and_move_task(fake: FakeTinyTask, mcp: Mcp) -> None:
    created = json.loads(
        mcp.ok(
            "create_task",
            {"title": "new", "created_by": "me", "priority": "4", "queue_name": "dev", "assigned_to": "dev"},
        )
    )
    assert (created["priority"], created["queue_name"], created["status"]) == (4, "dev", "idle")
    assert fake.task(created["id"])["title"] == "new"
    assert "Required" in mcp.failure("create_task", {"created_by": "me"})
    assert "Unrecognized key" in mcp.failure("create_task", {"title": "x", "status": "working"})
    assert mcp.failure("create_task", {"title": "x", "blocked_by_task_id": 50}) == (
        "Error creating task: Blocking task not found: 50"
    )

    moved = json.loads(
        mcp.ok(
            "move_task",
            {"task_id": created["id"], "current_agent": "dev", "new_agent": "qa", "comment": "review please"},
        )
    )
    assert moved["task"]["assigned_to"] == "qa" and moved["comment"]["content"] == "review please"
    assert mcp.failure(
        "move_task", {"task_id": created["id"], "current_agent": "dev", "new_agent": "x", "comment": "c"}
    ).startswith(f"Task {created['id']} is not assigned to dev")


def test_mcp_unknown_tool_is_a_tool_error(mcp: Mcp) -> None:
    assert mcp.failure("get_unassigned_in_queue", {"queue_name": "dev"}) == "Unknown tool: get_unassigned_in_queue"


# -- MCP, legacy SSE transport -------------------------------------------------------------------


class SseStream:
    """Reads a `GET /mcp` event stream in a thread; events arrive on a queue."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.events: queue.Queue[tuple[str, str]] = queue.Queue()
        self.opened = threading.Event()
        self.closed = threading.Event()
        self.status: int | None = None
        self._thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self._thread.start()
        assert self.opened.wait(10), "stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(10, read=None)) as client,
                client.stream("GET", url, headers=headers) as reply,
            ):
                self.status = reply.status_code
                self.opened.set()
                event, data = "message", []
                for line in reply.iter_lines():
                    if line.startswith(":"):
                        continue
                    if not line:
                        if data:
                            self.events.put((event, "\n".join(data)))
                        event, data = "message", []
                        continue
                    field, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if field == "event":
                        event = value
                    elif field == "data":
                        data.append(value)
        except httpx.HTTPError:
            pass
        finally:
            self.opened.set()
            self.closed.set()

    def next(self) -> tuple[str, str]:
        return self.events.get(timeout=10)


def sse_post(base: str, endpoint: str, message: dict) -> httpx.Response:
    return httpx.post(f"{base}{endpoint}", json={"jsonrpc": "2.0", **message}, timeout=10)


def test_sse_endpoint_event_and_replies_on_the_stream(fake: FakeTinyTask) -> None:
    fake.create_task("t", assigned_to="dev")
    stream = SseStream(f"{fake.url}/mcp", {"Accept": "text/event-stream"})
    assert stream.status == 200
    event, endpoint = stream.next()
    assert event == "endpoint"
    assert re.fullmatch(r"/mcp\?sessionId=[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", endpoint)
    assert httpx.get(f"{fake.url}/health").json()["sessionCount"] == 1

    accepted = sse_post(
        fake.url,
        endpoint,
        {"id": 7, "method": "tools/call", "params": {"name": "signup_for_task", "arguments": {"agent_name": "dev"}}},
    )
    assert (accepted.status_code, accepted.text) == (202, "Accepted")
    event, data = stream.next()
    reply = json.loads(data)
    assert event == "message" and reply["id"] == 7
    assert reply["result"]["content"][0]["text"].startswith("Task #1 claimed")
    assert fake.task(1)["status"] == "working"

    assert sse_post(fake.url, endpoint, {"method": "notifications/initialized"}).status_code == 202
    assert sse_post(fake.url, endpoint, {"id": 8, "method": "ping"}).status_code == 202
    assert json.loads(stream.next()[1]) == {"jsonrpc": "2.0", "id": 8, "result": {}}  # nothing for the notification

    lost = sse_post(fake.url, "/mcp?sessionId=00000000-0000-0000-0000-000000000000", {"id": 1, "method": "ping"})
    assert (lost.status_code, lost.json()) == (404, {"error": "Session not found"})


def test_sse_stream_needs_event_stream_accept(fake: FakeTinyTask) -> None:
    assert httpx.get(f"{fake.url}/mcp", headers={"Accept": "application/json"}).status_code == 406


def test_stop_ends_open_sse_streams(fake: FakeTinyTask) -> None:
    stream = SseStream(f"{fake.url}/mcp", {"Accept": "text/event-stream"})
    assert stream.next()[0] == "endpoint"
    fake.stop()
    assert stream.closed.wait(5), "the stream outlived the server"


# -- legacy tinytask-mcp 1.0 ---------------------------------------------------------------------

LEGACY_TIMESTAMP = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"


@pytest.fixture
def legacy() -> Iterator[FakeTinyTask]:
    server = FakeTinyTask(legacy=True).start()
    try:
        yield server
    finally:
        server.stop()


def test_legacy_has_no_rest(legacy: FakeTinyTask) -> None:
    legacy.create_task("t")
    for method, path in [
        ("GET", "/api/v1/tasks"),
        ("GET", "/api/v1/tasks/1"),
        ("PATCH", "/api/v1/tasks/1"),
        ("POST", "/api/v1/tasks"),
        ("GET", "/api/v1/queues"),
        ("POST", "/api/v1/agents/a/signup"),
    ]:
        reply = httpx.request(method, f"{legacy.url}{path}", json={})
        assert (reply.status_code, reply.json()) == (404, {"error": "Not found"}), path
    health = httpx.get(f"{legacy.url}/health").json()
    assert health["status"] == "healthy" and "transport" not in health


def test_legacy_has_no_streamable_http(legacy: FakeTinyTask) -> None:
    reply = httpx.post(
        f"{legacy.url}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=MCP_ACCEPT
    )
    assert (reply.status_code, reply.json()) == (400, {"error": "Missing session ID"})


def test_legacy_task_shape_and_tools_over_sse(legacy: FakeTinyTask) -> None:
    blocker = legacy.create_task("blocker", queue_name="dev")
    legacy.create_task("t", blocked_by_task_id=blocker["id"])
    for task in legacy.tasks():
        assert set(task) == TASK_FIELDS - {"queue_name", "parent_task_id", "blocked_by_task_id", "is_currently_blocked"}
        assert re.match(LEGACY_TIMESTAMP, task["created_at"]) and re.match(LEGACY_TIMESTAMP, task["updated_at"])

    stream = SseStream(f"{legacy.url}/mcp", {})  # the old server does not look at Accept
    event, endpoint = stream.next()
    assert event == "endpoint"

    def rpc(request_id: int, method: str, params: dict) -> dict:
        assert sse_post(legacy.url, endpoint, {"id": request_id, "method": method, "params": params}).status_code == 202
        reply = json.loads(stream.next()[1])
        assert reply["id"] == request_id
        return reply["result"]

    tools = {t["name"]: t for t in rpc(1, "tools/list", {})["tools"]}
    assert "list_queues" not in tools and "get_queue_tasks" not in tools
    assert "queue_name" not in tools["list_tasks"]["inputSchema"]["properties"]
    assert "blocked_by_task_id" not in tools["update_task"]["inputSchema"]["properties"]

    listed = json.loads(rpc(2, "tools/call", {"name": "list_tasks", "arguments": {}})["content"][0]["text"])
    assert listed["count"] == 2 and "queue_name" not in listed["tasks"][0]
    refused = rpc(3, "tools/call", {"name": "list_tasks", "arguments": {"queue_name": "dev"}})
    assert refused["isError"] is True and "Unrecognized key" in refused["content"][0]["text"]
    missing = rpc(4, "tools/call", {"name": "list_queues", "arguments": {}})
    assert missing == {"content": [{"type": "text", "text": "Unknown tool: list_queues"}], "isError": True}
    got = json.loads(rpc(5, "tools/call", {"name": "get_task", "arguments": {"id": 1}})["content"][0]["text"])
    assert re.match(LEGACY_TIMESTAMP, got["created_at"]) and "is_currently_blocked" not in got
