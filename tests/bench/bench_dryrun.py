#!/usr/bin/env python3
"""Benchmark of a dry-run pass against the fake TinyTask (issues 2 and 6).

    .venv/bin/python tests/bench/bench_dryrun.py [--rounds 15] [--seed 1] [--profile rest|mcp]

Seeds the in-process fake TinyTask with 2,000 idle tasks over 10 queues (half unassigned in their
queue, half assigned to one of the queue's 5 agents, about 10% blocked by another idle task, 2%
tagged failed) and writes a registry of 50 agents (5 per queue, 2 slots each). Then, every round,
in a rotating order:

- rest: a dry-run pass over REST, `tick.gather(...)` + `planner.plan(...)`, which is what
  `daemon.dry_run` does minus printing;
- bare: the HTTP requests that pass needs (exactly the GETs the pass sent, recorded by the fake,
  the pages of one list one after the other, lists concurrently with the same limit as
  `tick.FETCH_CONCURRENCY`) issued with plain httpx on one pooled AsyncClient, JSON decoded,
  no validation, no planning;
- mcp: the same pass as `rest` over MCP streamable HTTP (`connect(url, "mcp")`).

Clients are connected once, before the rounds, as the daemon keeps its client between passes.
Each pass starts from a collected heap. Reported per variant: median and p95 wall time, and the CPU
time of the event-loop thread (the client's own work; the fake serves from other threads of this
process and shares the GIL with it, as stated in docs/performance.md).
Goals: rest <= 3 x bare (ratio of medians), mcp <= 2 x rest (ratio of medians). Exit 1 if missed.
`--profile rest|mcp` runs that pass under cProfile instead and prints the top functions.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import os
import platform
import pstats
import random
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.procfs import current_boot_id
from tinyscheduler.adapters.tinytask import TinyTaskClient
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.config.registry import load_registry
from tinyscheduler.core.planner import Plan, PlanConfig, plan
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.service.gather import FETCH_CONCURRENCY, gather, plan_config
from tinyscheduler.testing.fake import FakeTinyTask

from harness import Workspace

TASKS, QUEUES, AGENTS, SLOTS = 2_000, 10, 50, 2
GOAL_REST_OVER_BARE = 3.0
GOAL_MCP_OVER_REST = 2.0


def seed(fake: FakeTinyTask, rng: random.Random) -> tuple[list[str], dict[str, list[str]]]:
    queues = [f"queue-{q:02d}" for q in range(QUEUES)]
    per_pool = AGENTS // QUEUES
    pools = {q: [f"agent-{i * per_pool + a:02d}" for a in range(per_pool)] for i, q in enumerate(queues)}
    for n in range(1, TASKS + 1):
        queue = queues[rng.randrange(QUEUES)]
        assigned = rng.choice(pools[queue]) if rng.random() < 0.5 else None
        blocker = rng.randrange(1, n) if n > 1 and rng.random() < 0.10 else None
        fake.create_task(
            f"bench task {n}",
            queue_name=queue,
            assigned_to=assigned,
            priority=rng.randint(-2, 5),
            blocked_by_task_id=blocker,
            tags=[FAILED_TAG] if rng.random() < 0.02 else ["bench"],
            description="seeded by tests/bench/bench_dryrun.py " + "x" * rng.randint(0, 200),
        )
    return queues, pools


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def list_key(path: str) -> str:
    """The list a page belongs to: its path and query without the offset."""
    parts = urlsplit(path)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "offset"]
    return parts.path + "?" + urlencode(query)


class Bench:
    def __init__(self, fake: FakeTinyTask, config: PlanConfig, store: LeaseStore) -> None:
        self.fake = fake
        self.config = config
        self.store = store
        self.boot_id = current_boot_id()
        self.host = socket.gethostname()
        self.lists: list[list[str]] = []  # the GET paths of one REST pass, grouped by list, in page order
        self.bare_client: httpx.AsyncClient | None = None

    async def dry_pass(self, client: TinyTaskClient) -> Plan:
        gathered = await gather(
            client,
            self.config,
            self.store,
            now=datetime.now(UTC),
            host=self.host,
            instance_id="dry-run",
            boot_id=self.boot_id,
        )
        return plan(gathered.snapshot, self.config)

    async def record_requests(self, client: TinyTaskClient) -> int:
        self.fake.reset_requests()
        await self.dry_pass(client)
        groups: dict[str, list[str]] = {}
        for method, path in list(self.fake.requests):
            if method != "GET":
                raise RuntimeError(f"a dry-run pass sent {method} {path}")
            groups.setdefault(list_key(path), []).append(path)
        self.lists = list(groups.values())
        return sum(len(pages) for pages in self.lists)

    async def bare_pass(self) -> int:
        assert self.bare_client is not None
        http, base = self.bare_client, self.fake.url
        limiter = asyncio.Semaphore(FETCH_CONCURRENCY)
        rows = 0

        async def one_list(pages: list[str]) -> None:
            nonlocal rows
            async with limiter:
                for path in pages:
                    response = await http.get(base + path)
                    response.raise_for_status()
                    rows += len(response.json())

        await asyncio.gather(*(one_list(pages) for pages in self.lists))
        return rows


async def timed(fn: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.thread_time()
    await fn()
    return (time.perf_counter() - wall) * 1000, (time.thread_time() - cpu) * 1000


def same_plan(a: Plan, b: Plan) -> bool:
    return [(s.task_id, s.agent) for s in a.starts] == [(s.task_id, s.agent) for s in b.starts] and len(a.skips) == len(
        b.skips
    )


async def run(args: argparse.Namespace, fake: FakeTinyTask, workdir: Path) -> int:
    rng = random.Random(args.seed)
    queues, pools = seed(fake, rng)
    workspace = Workspace(workdir, fake.url)
    registry_file = workspace.write_registry((a, q, SLOTS) for q in queues for a in pools[q])
    registry = load_registry(registry_file, workdir / "recipes")
    assert registry is not None
    limits = {entry.name: entry.slots or 1 for entry in registry.entries}
    store = LeaseStore(workdir / "state" / "running", workdir / "state" / "quarantine", read_only=True)

    rest = await connect(fake.url, "rest")
    mcp = await connect(fake.url, "mcp")
    bench: Bench | None = None
    try:
        config = plan_config(
            limits, registry, rest.features, disable_blocking=False, heartbeat_sec=15, max_runtime_sec=3600
        )
        bench = Bench(fake, config, store)
        bench.bare_client = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))
        requests = await bench.record_requests(rest)
        rest_plan, mcp_plan = await bench.dry_pass(rest), await bench.dry_pass(mcp)
        if not same_plan(rest_plan, mcp_plan):
            print("ERROR: the REST and MCP passes planned differently", file=sys.stderr)
            return 1
        rows = await bench.bare_pass()
        print(
            f"dry-run pass: {TASKS} idle tasks, {QUEUES} queues, {AGENTS} agents x {SLOTS} slots; "
            f"{requests} list requests ({len(bench.lists)} lists), {rows} task rows decoded per pass; "
            f"plan: {len(rest_plan.starts)} starts, {len(rest_plan.assignments)} assignments, "
            f"{len(rest_plan.skips)} skips"
        )

        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "rest": lambda: bench.dry_pass(rest),
            "bare": bench.bare_pass,
            "mcp": lambda: bench.dry_pass(mcp),
        }
        if args.profile:
            return await profile(variants[args.profile], args.rounds, args.profile)

        for fn in variants.values():  # warm-up
            await fn()
        walls: dict[str, list[float]] = {name: [] for name in variants}
        cpus: dict[str, list[float]] = {name: [] for name in variants}
        names = list(variants)
        for number in range(args.rounds):
            shift = number % len(names)
            for name in names[shift:] + names[:shift]:
                wall, cpu = await timed(variants[name])
                walls[name].append(wall)
                cpus[name].append(cpu)
    finally:
        if bench is not None and bench.bare_client is not None:
            await bench.bare_client.aclose()
        await rest.aclose()
        await mcp.aclose()

    print(
        f"{args.rounds} rounds; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  {'variant':<6} {'wall median':>12} {'wall p95':>10} {'loop CPU median':>16} {'loop CPU p95':>13}")
    for name in variants:
        print(
            f"  {name:<6} {statistics.median(walls[name]):>9.1f} ms {p95(walls[name]):>7.1f} ms "
            f"{statistics.median(cpus[name]):>13.1f} ms {p95(cpus[name]):>10.1f} ms"
        )
    med = {name: statistics.median(values) for name, values in walls.items()}
    cpu_med = {name: statistics.median(values) for name, values in cpus.items()}
    rest_ratio, mcp_ratio = med["rest"] / med["bare"], med["mcp"] / med["rest"]
    rest_ok, mcp_ok = rest_ratio <= GOAL_REST_OVER_BARE, mcp_ratio <= GOAL_MCP_OVER_REST
    print(
        f"goal: REST pass <= {GOAL_REST_OVER_BARE:g} x bare requests (median wall): "
        f"{rest_ratio:.2f}x {'met' if rest_ok else 'MISSED'}  "
        f"(loop CPU {cpu_med['rest'] / cpu_med['bare']:.2f}x)"
    )
    print(
        f"goal: MCP pass <= {GOAL_MCP_OVER_REST:g} x REST pass (median wall): "
        f"{mcp_ratio:.2f}x {'met' if mcp_ok else 'MISSED'}  "
        f"(loop CPU {cpu_med['mcp'] / cpu_med['rest']:.2f}x)"
    )
    return 0 if rest_ok and mcp_ok else 1


async def profile(fn: Callable[[], Awaitable[object]], rounds: int, name: str) -> int:
    await fn()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(rounds):
        await fn()
    profiler.disable()
    print(f"cProfile of {rounds} {name} passes (event-loop thread only), top 30 by own time:")
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", choices=("rest", "mcp", "bare"))
    args = parser.parse_args()
    fake = FakeTinyTask()
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-dryrun-") as tmp:
        fake.start()
        try:
            return asyncio.run(run(args, fake, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            fake.stop()


if __name__ == "__main__":
    sys.exit(main())
