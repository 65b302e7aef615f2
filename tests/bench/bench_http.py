#!/usr/bin/env python3
"""CPU of one JSON request in the client process: the REST client's HTTP/1.1 layer on its own
(`Http11`), and the whole REST client call (`RestClient.get_task` / `update_task`) above it.

    .venv/bin/python tests/bench/bench_http.py [--requests 2000] [--runs 3] [--via http11,rest] [--calls]

The fake TinyTask runs in another process (`python -m tinyscheduler.testing.fake`, one seeded
task), so this process's CPU time (time.process_time) is the client's alone: the event loop, the
request, the parse of the reply. Each run opens a new client, warms it up (its connection, the
code paths), then sends `--requests` GET /api/v1/tasks/1 and as many PATCH /api/v1/tasks/1, one at
a time on one kept-alive connection, as a run of the daemon does. Reported per run: CPU and wall
time per request. `--calls` adds the Python function calls per request (cProfile, a separate run).
The fake is stopped on the way out, failure and Ctrl-C included. No goal: it prints figures.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # machine.py

from machine import where

from tinyscheduler.adapters.tinytask._http11 import Http11
from tinyscheduler.adapters.tinytask.rest import RestClient

WARMUP = 200
TASK = "/api/v1/tasks/1"


def start_fake(folder: Path) -> tuple[subprocess.Popen[str], str]:
    seed = folder / "seed.json"
    seed.write_text(json.dumps([{"title": "bench task", "queue_name": "dev"}]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyscheduler.testing.fake", "--seed", str(seed)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the fake did not start: {line!r}")
    return proc, line.removeprefix("listening on ")


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


Pair = Callable[[int], Awaitable[None]]


async def timed(url: str, via: str, count: int, profile: cProfile.Profile | None) -> tuple[float, float]:
    """(CPU, wall) seconds of `count` GET + PATCH pairs through `via`, after the warm-up."""
    if via == "http11":
        http = Http11(url, connect_timeout=5.0, read_timeout=15.0, max_connections=1)

        async def pair(n: int) -> None:
            for reply in (
                await http.request("GET", TASK),
                await http.request("PATCH", TASK, body=b'{"priority": %d}' % (n % 10)),
            ):
                assert reply.status == 200, reply

        close = http.aclose
    else:
        client = RestClient(url)

        async def pair(n: int) -> None:
            await client.get_task(1)
            await client.update_task(1, priority=n % 10)

        close = client.aclose
    try:
        for n in range(WARMUP // 2):
            await pair(n)
        if profile is not None:
            profile.enable()
        cpu, wall = time.process_time(), time.perf_counter()
        for n in range(count // 2):
            await pair(n)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if profile is not None:
            profile.disable()
        return cpu, wall
    finally:
        await close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per run (half GET, half PATCH)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--via", default="http11,rest", help="comma-separated: http11, rest")
    parser.add_argument("--calls", action="store_true", help="also count Python function calls per request")
    args = parser.parse_args()
    count = args.requests - args.requests % 2
    with tempfile.TemporaryDirectory(prefix="bench-http-") as folder:
        proc, url = start_fake(Path(folder))
        try:
            for via in args.via.split(","):
                for run in range(1, args.runs + 1):
                    cpu, wall = anyio.run(timed, url, via, count, None)
                    print(
                        f"{via:6} run {run}: {cpu / count * 1e6:6.1f} us CPU/request, "
                        f"{wall / count * 1e6:6.1f} us wall/request ({count} requests) {where()}",
                        flush=True,
                    )
                if args.calls:
                    profile = cProfile.Profile()
                    anyio.run(timed, url, via, count, profile)
                    calls = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
                    print(f"{via:6} calls: {calls / count:.0f} Python function calls/request", flush=True)
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
