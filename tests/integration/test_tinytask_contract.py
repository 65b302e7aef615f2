"""One contract, four clients: REST, MCP over streamable HTTP and MCP over legacy SSE against the
fake server, and the in-memory client over the fake's own store (what service tests use).

Every test here runs unchanged against each of them: the same seeded tasks must give the same
answers from every interface method and leave the same end state.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tinyscheduler.adapters.tinytask import (
    SCHEDULER_NAME,
    TaskBatch,
    TaskNotFound,
    TinyTaskClient,
    TinyTaskRejected,
)
from tinyscheduler.adapters.tinytask.mcp import McpHttpClient, McpSseClient
from tinyscheduler.adapters.tinytask.rest import RestClient
from tinyscheduler.testing.fake import FakeTinyTask
from tinyscheduler.testing.memory import InMemoryTinyTask

TRANSPORTS = {"rest": RestClient, "mcp-http": McpHttpClient, "mcp-sse": McpSseClient}
#: The in-memory client answers as the REST client does.
PROTOCOLS = {"rest": "rest", "mcp-http": "mcp-http", "mcp-sse": "mcp-sse", "memory": "rest"}


async def no_wait(delay: float) -> None:
    """Backoff without waiting: the contract is about answers, not timing."""


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        seed(server)
        yield server


def open_client(name: str, fake: FakeTinyTask) -> TinyTaskClient:
    if name == "memory":
        return InMemoryTinyTask(fake.store)
    # Pages of 2 make every multi-task listing cross page boundaries.
    return TRANSPORTS[name](fake.url, page_size=2, sleep=no_wait)


@pytest.fixture(params=list(PROTOCOLS))
async def client(request: pytest.FixtureRequest, fake: FakeTinyTask) -> AsyncIterator[TinyTaskClient]:
    async with open_client(request.param, fake) as opened:
        if isinstance(opened, (McpHttpClient, McpSseClient)):
            await opened.detect_features()
        assert opened.features.protocol == PROTOCOLS[request.param]
        yield opened


def seed(fake: FakeTinyTask) -> None:
    """Ids 1..9 in creation order; server order is priority desc, then creation."""
    fake.create_task("blocker", assigned_to="dev", queue_name="dev", priority=1)  # 1
    fake.create_task("blocked", assigned_to="dev", queue_name="dev", priority=9, blocked_by_task_id=1)  # 2
    fake.create_task("free dev a", queue_name="dev", priority=3, tags=["x"])  # 3
    fake.create_task("free dev b", queue_name="dev", priority=3)  # 4
    fake.create_task("dev working", assigned_to="dev", queue_name="dev", status="working")  # 5
    fake.create_task("qa idle", assigned_to="qa", queue_name="qa", priority=-1)  # 6
    fake.create_task("dev done", assigned_to="dev", queue_name="dev", status="complete")  # 7
    fake.create_task("no queue", assigned_to="dev", priority=2, description="loose")  # 8
    fake.create_task("child", assigned_to="qa", parent_task_id=6)  # 9 (queue qa)


def ids(batch: TaskBatch) -> list[int]:
    assert batch.problems == ()
    return [task.id for task in batch.tasks]


STATE_FIELDS = (
    "id",
    "title",
    "status",
    "assigned_to",
    "previous_assigned_to",
    "priority",
    "tags",
    "queue_name",
    "blocked_by_task_id",
    "is_currently_blocked",
    "parent_task_id",
)


def state(fake: FakeTinyTask) -> list[dict[str, Any]]:
    """The server's tasks without timestamps, which differ from run to run."""
    return [{key: task[key] for key in STATE_FIELDS} for task in fake.tasks()]


async def test_list_queues(client: TinyTaskClient) -> None:
    assert await client.list_queues() == ["dev", "qa"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [2, 3, 4, 8, 1, 5, 7, 9, 6]),
        ({"status": ["idle"]}, [2, 3, 4, 8, 1, 9, 6]),
        ({"status": ["idle", "working"]}, [2, 3, 4, 8, 1, 5, 9, 6]),
        ({"status": ["complete"], "assigned_to": "dev"}, [7]),
        ({"assigned_to": "dev"}, [2, 8, 1, 5, 7]),
        ({"queue_name": "qa"}, [9, 6]),
        ({"status": ["idle"], "assigned_to": "dev", "queue_name": "dev"}, [2, 1]),
        ({"assigned_to": "nobody"}, []),
        ({"assigned_to": ""}, []),  # no "unassigned" filter: an empty name matches nothing
        ({"status": []}, []),
    ],
)
async def test_list_tasks(client: TinyTaskClient, filters: dict[str, Any], expected: list[int]) -> None:
    assert ids(await client.list_tasks(**filters)) == expected


async def test_scheduler_views(client: TinyTaskClient) -> None:
    assert ids(await client.idle_unassigned("dev")) == [3, 4]
    assert ids(await client.idle_assigned("dev")) == [2, 8, 1]
    assert ids(await client.idle_unassigned("qa")) == []


async def test_task_fields(client: TinyTaskClient) -> None:
    batch = await client.list_tasks(queue_name="dev", status=["idle"])
    blocked, free_a = batch.tasks[0], batch.tasks[1]
    assert (blocked.id, blocked.blocked_by_task_id, blocked.is_currently_blocked) == (2, 1, True)
    assert (free_a.title, free_a.tags, free_a.assigned_to, free_a.priority) == ("free dev a", ("x",), None, 3)
    child = await client.get_task(9)
    assert (child.parent_task_id, child.queue_name, child.assigned_to) == (6, "qa", "qa")
    loose = await client.get_task(8)
    assert (loose.description, loose.queue_name, loose.created_by) == ("loose", None, "seed")
    assert loose.created_at.tzinfo is not None


async def test_get_task_matches_listing(client: TinyTaskClient) -> None:
    listed = {task.id: task for task in (await client.list_tasks()).tasks}
    for task_id, task in listed.items():
        assert await client.get_task(task_id) == task


async def test_updates_and_comments_leave_the_same_end_state(client: TinyTaskClient, fake: FakeTinyTask) -> None:
    expected = {task["id"]: task for task in state(fake)}
    claimed = await client.assign(3, "dev")
    working = await client.set_status(3, "working")
    released = await client.unassign(5)
    await client.set_status(1, "complete")
    tagged = await client.update_task(4, tags=["tinyscheduler:failed"], priority=0)
    await client.add_comment(3, "started by the scheduler")
    await client.add_comment(5, "handed back", created_by="dev")

    assert (claimed.assigned_to, claimed.previous_assigned_to, claimed.status) == ("dev", None, "idle")
    assert (working.status, working.assigned_to) == ("working", "dev")
    assert (released.assigned_to, released.previous_assigned_to) == (None, "dev")
    assert tagged.failed_for_good and tagged.priority == 0
    assert (await client.get_task(2)).is_currently_blocked is False  # its blocker is complete now

    expected[1].update(status="complete")
    expected[2].update(is_currently_blocked=False)
    expected[3].update(status="working", assigned_to="dev")
    expected[4].update(tags=["tinyscheduler:failed"], priority=0)
    expected[5].update(assigned_to=None, previous_assigned_to="dev")
    assert {task["id"]: task for task in state(fake)} == expected
    assert [(c["content"], c["created_by"]) for c in fake.comments(3)] == [("started by the scheduler", SCHEDULER_NAME)]
    assert [(c["content"], c["created_by"]) for c in fake.comments(5)] == [("handed back", "dev")]


async def test_missing_task(client: TinyTaskClient, fake: FakeTinyTask) -> None:
    with pytest.raises(TaskNotFound):
        await client.get_task(404)
    with pytest.raises(TaskNotFound):
        await client.set_status(404, "idle")
    with pytest.raises(TaskNotFound):
        await client.add_comment(404, "nobody home")
    assert len(fake.tasks()) == 9


async def test_invalid_update_is_rejected(client: TinyTaskClient, fake: FakeTinyTask) -> None:
    before = state(fake)
    with pytest.raises(TinyTaskRejected) as caught:
        await client.set_status(3, "failed")
    assert not isinstance(caught.value, TaskNotFound)
    assert state(fake) == before


async def test_malformed_rows_are_problems_not_failures(client: TinyTaskClient, fake: FakeTinyTask) -> None:
    odd = fake.create_task("free-text assignee", assigned_to="not a name!", queue_name="qa")["id"]
    batch = await client.list_tasks(queue_name="qa")
    assert [task.id for task in batch.tasks] == [9, 6]
    assert [(problem.task_id, problem.field) for problem in batch.problems] == [(odd, "assigned_to")]


async def test_blocking_is_advisory_and_assignment_last_writer_wins(client: TinyTaskClient) -> None:
    started = await client.set_status(2, "working")  # blocked by 1, which is not complete
    assert (started.status, started.is_currently_blocked) == ("working", True)
    await client.assign(3, "dev")
    taken = await client.assign(3, "qa")
    assert (taken.assigned_to, taken.previous_assigned_to) == ("qa", "dev")
