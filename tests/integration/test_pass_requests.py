"""How many requests a pass sends to TinyTask, counted by the fake server over real HTTP: the same
with 5 agents as with 50, and the targeted lists only where they cost less (core.listing)."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.tinytask.rest import RestClient
from tinyscheduler.core.listing import Listing, choose_listing
from tinyscheduler.core.planner import PlanConfig, plan
from tinyscheduler.service.gather import fetch_tasks, gather
from tinyscheduler.testing.fake import FakeTinyTask

QUEUES = [f"queue-{n}" for n in range(10)]


def seed(fake: FakeTinyTask, tasks: int, rng: random.Random) -> None:
    """Idle tasks over 10 queues of 5 agents each, half of them unassigned."""
    for n in range(tasks):
        queue = rng.choice(QUEUES)
        agent = f"{queue}-agent-{rng.randrange(5)}" if n % 2 else None
        fake.create_task(f"task {n}", queue_name=queue, assigned_to=agent, priority=rng.randrange(3))


def config_for(agents: list[tuple[str, str]]) -> PlanConfig:
    """Queue mode: each agent with 2 slots in its queue's pool (what a registry gives)."""
    pools: dict[str, list[str]] = {}
    for name, queue in agents:
        pools.setdefault(queue, []).append(name)
    return PlanConfig(limits={name: 2 for name, _ in agents}, pools={q: tuple(a) for q, a in pools.items()})


async def one_pass(fake: FakeTinyTask, config: PlanConfig, tmp_path: Path) -> tuple[int, int]:
    """(requests, starts) of one pass's gather and plan, with a connected client, as the daemon has."""
    store = LeaseStore(tmp_path / "running", tmp_path / "quarantine", read_only=True)
    async with RestClient(fake.url) as client:
        fake.reset_requests()
        now = datetime.now(UTC)
        gathered = await gather(client, config, store, now=now, host="h", instance_id="i", boot_id=None)
        requests = len(fake.requests)
    return requests, len(plan(gathered.snapshot, config).starts)


@pytest.mark.parametrize("tasks", [200, 2_000])
async def test_a_pass_costs_the_same_requests_with_5_agents_as_with_50(
    fake: FakeTinyTask, tmp_path: Path, tasks: int
) -> None:
    seed(fake, tasks, random.Random(1))
    five = [(f"queue-0-agent-{n}", "queue-0") for n in range(5)]
    fifty = [(f"{queue}-agent-{n}", queue) for queue in QUEUES for n in range(5)]

    requests_5, starts_5 = await one_pass(fake, config_for(five), tmp_path)
    requests_50, starts_50 = await one_pass(fake, config_for(fifty), tmp_path)

    assert starts_5 == 10 and starts_50 > 90, "the plans fill the agents' slots"
    assert requests_5 == requests_50 == 1, "one list of the idle tasks, whatever the agents and queues"


async def test_the_full_list_finds_what_the_targeted_lists_find(fake: FakeTinyTask) -> None:
    seed(fake, 600, random.Random(2))
    config = config_for([(f"{queue}-agent-{n}", queue) for queue in QUEUES[:4] for n in range(3)])
    async with RestClient(fake.url) as client:
        full = await fetch_tasks(client, config, Listing.ALL)
        fake.reset_requests()
        targeted = await fetch_tasks(client, config, Listing.TARGETED)

    assert full.queue_tasks == targeted.queue_tasks and full.agent_tasks == targeted.agent_tasks
    assert len(fake.requests) == 4 + 12, "one list per queue and per agent"
    assert full.backlog is not None and full.backlog.rows == 600


async def test_a_few_agents_among_a_large_backlog_use_targeted_lists(fake: FakeTinyTask) -> None:
    for n in range(3_000):
        fake.create_task(f"another team's task {n}", queue_name="elsewhere")
    fake.create_task("ours", queue_name="mine")
    fake.create_task("ours too", queue_name="mine", assigned_to="mine-agent")
    config = config_for([("mine-agent", "mine")])
    async with RestClient(fake.url) as client:
        first = await fetch_tasks(client, config, Listing.ALL)
        assert first.backlog is not None
        listing = choose_listing(first.backlog, 0, client.page_size)
        fake.reset_requests()
        second = await fetch_tasks(client, config, listing)

    assert listing is Listing.TARGETED
    assert len(fake.requests) == 2, "the queue's list and the agent's, not 3,002 tasks"
    assert (second.queue_tasks, second.agent_tasks) == (first.queue_tasks, first.agent_tasks)
