#!/usr/bin/env python3
"""Benchmark of a dry-run pass against the fake TinyTask (issues 2, 6 and "a pass in O(1) round trips").

    .venv/bin/python tests/bench/bench_dryrun.py [--rounds 15] [--seed 1] [--profile rest|mcp]
        [--against SRC]      # also today's version: the same pass of the package in SRC (e.g. a
                             # `git archive` of main), in a subprocess, on the same seeded data

Seeds the in-process fake TinyTask with 2,000 idle tasks over 10 queues (half unassigned in their
queue, half assigned to one of the queue's 5 agents, about 10% blocked by another idle task, 2%
tagged failed) and writes a registry of 50 agents (5 per queue, 2 slots each). Then, every round,
in a rotating order:

- rest: a dry-run pass over REST, `gather(...)` + `plan(...)`, which is what `run --dry-run` does
  minus printing: one list of every idle task (core.listing);
- bare: the HTTP requests that pass needs (exactly the GETs the pass sent, recorded by the fake,
  the pages of one list one after the other, lists concurrently with the same limit as
  `gather.FETCH_CONCURRENCY`) issued with plain httpx on one pooled AsyncClient, JSON decoded,
  no validation, no planning;
- targeted: the same pass with one list per queue and per agent (60 here), as every pass did before
  and as the fallback does where it is cheaper;
- bare-targeted: those 60 requests, bare;
- mcp: the same pass as `rest` over MCP streamable HTTP (`connect(url, "mcp")`).

Before the rounds, the price of one request in task rows (core.listing's REQUEST_ROWS) is measured:
the loop CPU of a list of N rows against a list of 1 row, both bare.

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
import dataclasses
import gc
import json
import os
import platform
import pstats
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.procfs import current_boot_id
from tinyscheduler.adapters.tinytask import TinyTaskClient
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.adapters.tinytask.models import parse_tasks
from tinyscheduler.config.registry import load_registry
from tinyscheduler.core.planner import Plan, PlanConfig, plan
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.service.gather import FETCH_CONCURRENCY, gather, plan_config

try:  # today's version (--against) has no core.listing: its passes were always targeted
    from tinyscheduler.core.listing import Listing
except ImportError:
    Listing = None  # type: ignore[assignment,misc]
from machine import where

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
        #: The GET paths of one pass, grouped by list, in page order: the full list, the targeted ones.
        self.lists: dict[str, list[list[str]]] = {}
        self.bare_client: httpx.AsyncClient | None = None

    async def dry_pass(self, client: TinyTaskClient, targeted: bool = False, config: PlanConfig | None = None) -> Plan:
        config = config or self.config
        extra = {} if Listing is None else {"listing": Listing.TARGETED if targeted else Listing.ALL}
        gathered = await gather(
            client,
            config,
            self.store,
            now=datetime.now(UTC),
            host=self.host,
            instance_id="dry-run",
            boot_id=self.boot_id,
            **extra,
        )
        return plan(gathered.snapshot, config)

    async def requests_with_one_pool(self, client: TinyTaskClient) -> int:
        """The requests of one pass with the first queue's 5 agents alone (the same tasks on the server)."""
        queue, pool = min(self.config.pools.items())
        five = dataclasses.replace(self.config, limits={a: self.config.limits[a] for a in pool}, pools={queue: pool})
        self.fake.reset_requests()
        await self.dry_pass(client, config=five)
        return len(self.fake.requests)

    async def record_requests(self, client: TinyTaskClient, kind: str) -> int:
        self.fake.reset_requests()
        await self.dry_pass(client, targeted=kind == "targeted")
        groups: dict[str, list[str]] = {}
        for method, path in list(self.fake.requests):
            if method != "GET":
                raise RuntimeError(f"a dry-run pass sent {method} {path}")
            groups.setdefault(list_key(path), []).append(path)
        self.lists[kind] = list(groups.values())
        return sum(len(pages) for pages in self.lists[kind])

    async def bare_pass(self, kind: str = "full") -> int:
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

        await asyncio.gather(*(one_list(pages) for pages in self.lists[kind]))
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


async def calibrate(rest: TinyTaskClient, rounds: int = 30) -> tuple[float, float]:
    """Wall time (ms) of one list request of 1 row through the client (the fake's serving included),
    and of one row more: core.listing.REQUEST_ROWS is their ratio. The rows are validated already
    (the cache), as they are pass after pass."""
    api, cache = rest._api, rest.task_cache  # type: ignore[attr-defined]

    async def page(rows: int) -> float:
        wall = time.perf_counter()
        parse_tasks(await api.request("GET", "/api/v1/tasks", params={"status": "idle", "limit": rows}), "x", cache)
        return time.perf_counter() - wall

    for _ in range(5):
        await page(TASKS)
    small = statistics.median([await page(1) for _ in range(rounds)])
    large = statistics.median([await page(TASKS) for _ in range(rounds)])
    return small * 1000, (large - small) * 1000 / (TASKS - 1)


async def setup(args: argparse.Namespace, fake: FakeTinyTask, workdir: Path) -> tuple[PlanConfig, LeaseStore]:
    queues, pools = seed(fake, random.Random(args.seed))
    workspace = Workspace(workdir, fake.url)
    registry_file = workspace.write_registry((a, q, SLOTS) for q in queues for a in pools[q])
    registry = load_registry(registry_file, workdir / "recipes")
    assert registry is not None
    limits = {entry.name: entry.slots or 1 for entry in registry.entries}
    store = LeaseStore(workdir / "state" / "running", workdir / "state" / "quarantine", read_only=True)
    features = (await connect(fake.url, "rest")).features
    config = plan_config(limits, registry, features, disable_blocking=False, heartbeat_sec=15, max_runtime_sec=3600)
    return config, store


async def measure(
    variants: dict[str, Callable[[], Awaitable[object]]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    for fn in variants.values():  # warm-up
        await fn()
    walls: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for number in range(rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = await timed(variants[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
    return walls, cpus


async def only_rest(args: argparse.Namespace, fake: FakeTinyTask, workdir: Path) -> int:
    """`--only rest`: the REST pass alone, as JSON (what --against runs in today's version)."""
    config, store = await setup(args, fake, workdir)
    rest = await connect(fake.url, "rest")
    try:
        bench = Bench(fake, config, store)
        requests = await bench.record_requests(rest, "full")
        requests_5 = await bench.requests_with_one_pool(rest)
        walls, cpus = await measure({"rest": lambda: bench.dry_pass(rest)}, args.rounds)
    finally:
        await rest.aclose()
    print(json.dumps({"requests": requests, "requests_5": requests_5, "wall": walls["rest"], "cpu": cpus["rest"]}))
    return 0


def against(args: argparse.Namespace, src: Path) -> dict[str, Any]:
    """The REST pass of the package in `src`, in a subprocess on the same seeded data."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    command = [sys.executable, __file__, "--only", "rest", "--rounds", str(args.rounds), "--seed", str(args.seed)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


async def run(args: argparse.Namespace, fake: FakeTinyTask, workdir: Path) -> int:
    config, store = await setup(args, fake, workdir)
    rest = await connect(fake.url, "rest")
    mcp = await connect(fake.url, "mcp")
    bench = Bench(fake, config, store)
    bench.bare_client = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))
    try:
        requests = await bench.record_requests(rest, "full")
        requests_5 = await bench.requests_with_one_pool(rest)
        targeted_requests = await bench.record_requests(rest, "targeted")
        rest_plan, mcp_plan = await bench.dry_pass(rest), await bench.dry_pass(mcp)
        if not same_plan(rest_plan, mcp_plan) or not same_plan(rest_plan, await bench.dry_pass(rest, True)):
            print("ERROR: the passes planned differently", file=sys.stderr)
            return 1
        rows, targeted_rows = await bench.bare_pass("full"), await bench.bare_pass("targeted")
        request_ms, row_ms = await calibrate(rest)
        print(
            f"dry-run pass: {TASKS} idle tasks, {QUEUES} queues, {AGENTS} agents x {SLOTS} slots; "
            f"{requests} list request(s), {rows} rows; targeted: {targeted_requests} requests, {targeted_rows} rows; "
            f"plan: {len(rest_plan.starts)} starts, {len(rest_plan.assignments)} assignments, "
            f"{len(rest_plan.skips)} skips"
        )
        print(f"requests per pass: {requests_5} with the 5 agents of one queue, {requests} with all {AGENTS} {where()}")
        print(
            f"price (wall, serving included) of a request: {request_ms:.3f} ms, of a row: {row_ms * 1000:.1f} us; "
            f"one request = {request_ms / row_ms:.0f} rows (core.listing.REQUEST_ROWS)"
        )
        variants: dict[str, Callable[[], Awaitable[object]]] = {
            "rest": lambda: bench.dry_pass(rest),
            "bare": lambda: bench.bare_pass("full"),
            "targeted": lambda: bench.dry_pass(rest, True),
            "bare-targeted": lambda: bench.bare_pass("targeted"),
            "mcp": lambda: bench.dry_pass(mcp),
        }
        if args.profile:
            return await profile(variants[args.profile], args.rounds, args.profile)
        walls, cpus = await measure(variants, args.rounds)
    finally:
        await bench.bare_client.aclose()
        await rest.aclose()
        await mcp.aclose()
    if args.against is not None:
        today = against(args, args.against)
        walls["today"], cpus["today"] = today["wall"], today["cpu"]
        print(
            f"today's version ({args.against}): requests per pass: {today['requests_5']} with the 5 agents of "
            f"one queue, {today['requests']} with all {AGENTS} {where()}"
        )
    return report(args, walls, cpus)


def report(args: argparse.Namespace, walls: dict[str, list[float]], cpus: dict[str, list[float]]) -> int:
    machine = where()
    print(f"{args.rounds} rounds; Python {platform.python_version()} {machine}")
    print(f"  {'variant':<14} {'wall median':>12} {'wall p95':>10} {'loop CPU median':>16} {'loop CPU p95':>13}")
    for name, wall in walls.items():
        print(
            f"  {name:<14} {statistics.median(wall):>9.1f} ms {p95(wall):>7.1f} ms "
            f"{statistics.median(cpus[name]):>13.1f} ms {p95(cpus[name]):>10.1f} ms"
        )
    med = {name: statistics.median(values) for name, values in walls.items()}
    cpu_med = {name: statistics.median(values) for name, values in cpus.items()}
    rest_ratio, mcp_ratio = med["rest"] / med["bare"], med["mcp"] / med["rest"]
    rest_ok, mcp_ok = rest_ratio <= GOAL_REST_OVER_BARE, mcp_ratio <= GOAL_MCP_OVER_REST
    cpu = {name: cpu_med["rest"] / cpu_med[name] for name in cpu_med}
    print(
        f"goal: REST pass <= {GOAL_REST_OVER_BARE:g} x bare requests (median wall): {rest_ratio:.2f}x "
        f"{'met' if rest_ok else 'MISSED'} (loop CPU {cpu['bare']:.2f}x) {machine}"
    )
    print(
        f"goal: MCP pass <= {GOAL_MCP_OVER_REST:g} x REST pass (median wall): {mcp_ratio:.2f}x "
        f"{'met' if mcp_ok else 'MISSED'} (loop CPU {cpu_med['mcp'] / cpu_med['rest']:.2f}x) {machine}"
    )
    print(
        f"context: against the 60 bare requests of earlier passes: {med['rest'] / med['bare-targeted']:.2f}x; "
        f"against the targeted pass: {med['rest'] / med['targeted']:.2f}x (loop CPU {cpu['targeted']:.2f}x)"
    )
    if "today" in med:
        print(
            f"context: against today's version: {med['rest'] / med['today']:.2f}x wall, "
            f"{cpu_med['rest'] / cpu_med['today']:.2f}x loop CPU {machine}"
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
    parser.add_argument("--profile", choices=("rest", "mcp", "bare", "targeted"))
    parser.add_argument("--against", type=Path, metavar="SRC", help="also the pass of the package in SRC")
    parser.add_argument("--only", choices=("rest",), help=argparse.SUPPRESS)
    args = parser.parse_args()
    fake = FakeTinyTask()
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-dryrun-") as tmp:
        fake.start()
        try:
            return asyncio.run((only_rest if args.only else run)(args, fake, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        finally:
            fake.stop()


if __name__ == "__main__":
    sys.exit(main())
