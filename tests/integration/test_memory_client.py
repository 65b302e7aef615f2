"""The in-memory TinyTask client's own promises: calls are recorded, faults are injected as asked
(fail, apply but lose the reply, stall until released), no threads, and the old server's shape.
Its answers are checked against the HTTP transports in test_tinytask_contract.py."""

from __future__ import annotations

import threading

import anyio
import pytest

from tinyscheduler.adapters.tinytask import TaskNotFound, TinyTaskRejected, TinyTaskUnavailable
from tinyscheduler.testing.fake import FakeTinyTask
from tinyscheduler.testing.memory import ClientCall, InMemoryTinyTask


@pytest.fixture
def client() -> InMemoryTinyTask:
    memory = InMemoryTinyTask()
    memory.create_task("one", assigned_to="dev", queue_name="dev")
    memory.create_task("two", queue_name="dev", priority=5)
    return memory


async def test_every_call_is_recorded_with_its_arguments(client: InMemoryTinyTask) -> None:
    await client.idle_unassigned("dev")
    await client.assign(2, "dev")
    await client.add_comment(2, "claimed")
    with pytest.raises(TaskNotFound):
        await client.get_task(99)

    assert client.calls == [
        ClientCall("list_tasks", {"status": ["idle"], "assigned_to": None, "queue_name": "dev"}),
        ClientCall("update_task", {"task_id": 2, "assigned_to": "dev"}),
        ClientCall("add_comment", {"task_id": 2, "content": "claimed", "created_by": "tinyscheduler"}),
        ClientCall("get_task", {"task_id": 99}),
    ]
    assert (client.count(), client.count("update_task"), client.count("health")) == (4, 1, 0)
    client.reset_calls()
    assert client.count() == 0


async def test_fail_next_fails_only_the_calls_asked_for_and_changes_nothing(client: InMemoryTinyTask) -> None:
    client.fail_next(2, method="update_task")
    for _ in range(2):
        with pytest.raises(TinyTaskUnavailable, match="update_task failed"):
            await client.set_status(1, "working")
        assert client.task(1)["status"] == "idle"
        assert (await client.get_task(1)).status == "idle"  # other methods still answer
    assert (await client.set_status(1, "working")).status == "working"
    assert client.count("update_task") == 3


async def test_fail_next_without_a_count_is_a_server_that_stays_down(client: InMemoryTinyTask) -> None:
    client.fail_next(None)
    for call in (client.health, client.list_queues, lambda: client.get_task(1), lambda: client.add_comment(1, "x")):
        with pytest.raises(TinyTaskUnavailable):
            await call()
    assert client.comments(1) == []
    client.clear_faults()
    assert (await client.health())["status"] == "healthy"


async def test_a_lost_reply_is_applied_then_raises(client: InMemoryTinyTask) -> None:
    client.lose_reply(method="update_task")
    await client.add_comment(1, "not affected")  # another method: neither applied twice nor failed
    with pytest.raises(TinyTaskUnavailable, match="reply lost"):
        await client.update_task(1, status="working", assigned_to="qa")
    assert (client.task(1)["status"], client.task(1)["assigned_to"]) == ("working", "qa")
    assert (await client.set_status(1, "idle")).status == "idle"  # only the one reply was lost
    assert [c["content"] for c in client.comments(1)] == ["not affected"]


async def test_a_rejected_call_stays_rejected_even_when_its_reply_would_be_lost(client: InMemoryTinyTask) -> None:
    client.lose_reply(method="update_task")
    with pytest.raises(TinyTaskRejected) as caught:
        await client.set_status(1, "failed")
    assert caught.value.status == 400 and client.task(1)["status"] == "idle"


async def test_a_stalled_call_waits_for_its_release_while_others_go_on(client: InMemoryTinyTask) -> None:
    stall = client.stall("get_task")
    results: list[str] = []

    async def read() -> None:
        results.append((await client.get_task(1)).title)

    async with anyio.create_task_group() as group:
        group.start_soon(read)
        with anyio.fail_after(5):
            await stall.reached.wait()
        assert (await client.set_status(1, "working")).status == "working"
        assert results == []
        stall.release.set()
    assert results == ["one"]
    assert (await client.get_task(1)).title == "one"  # a stall holds one call only


async def test_a_stall_can_take_the_test_s_own_event_and_then_fail(client: InMemoryTinyTask) -> None:
    release = anyio.Event()
    stall = client.stall(release=release)
    client.fail_next(method="list_queues")

    async def queues() -> None:
        with pytest.raises(TinyTaskUnavailable):
            await client.list_queues()

    async with anyio.create_task_group() as group:
        group.start_soon(queues)
        await stall.reached.wait()
        release.set()
    assert await client.list_queues() == ["dev"]


async def test_no_thread_is_started() -> None:
    before = threading.active_count()
    client = InMemoryTinyTask()
    client.create_task("t", assigned_to="dev")
    async with client:
        await client.list_tasks()
        await client.set_status(1, "working")
    assert threading.active_count() == before


async def test_shares_the_store_of_a_running_fake() -> None:
    with FakeTinyTask() as fake:
        client = InMemoryTinyTask(fake.store)
        created = fake.create_task("seen by both", queue_name="dev")
        await client.set_status(created["id"], "working")
        assert fake.task(created["id"])["status"] == "working"
        assert fake.requests == []  # not one HTTP request


async def test_legacy_store_has_the_old_shape_and_no_queues() -> None:
    client = InMemoryTinyTask(legacy=True)
    client.create_task("old", assigned_to="dev", priority=2)
    assert (client.features.protocol, client.features.queues, client.features.blocking) == ("mcp-sse", False, False)
    assert "queue_name" not in client.task(1)
    (task,) = (await client.list_tasks(status=["idle", "working"], assigned_to="dev")).tasks
    assert (task.title, task.queue_name, task.is_currently_blocked) == ("old", None, False)
    with pytest.raises(TinyTaskRejected, match="has no queues"):
        await client.list_queues()
    with pytest.raises(TinyTaskRejected, match="has no queues"):
        await client.idle_unassigned("dev")
