#!/usr/bin/env python3
"""Benchmark of `tinyscheduler history` over a run history of 100,000 runs (the monitoring issue).

    .venv/bin/python tests/bench/bench_history.py [--runs 100000] [--rounds 7]

Fills a history file as the daemon does (adapters.history, batches of 500) with 100,000 runs of
20 agents over 10,000 tasks, spread over the 90 days of the default retention, then times each
query as the command runs it (`history_command`, output rendered into memory; best and median of
--rounds, each on a fresh read-only connection, as a new process would):

- default: the latest 100 runs, their count, tokens and cost per agent and per task over all runs;
- agent+since: `--agent dev-07 --since 1d`;
- task: `--task 4242`;
- all-json: `--limit 0 --json`, every run (reported, no goal: it prints 100,000 runs).

Also the append rate. Goal: each filtered or default query under 200 ms (median). Exit 1 if missed.
"""

from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tinyscheduler.adapters.history import HistoryStore, RunRecord
from tinyscheduler.cli.history import history_command
from tinyscheduler.config.settings import load_settings

GOAL_MS = 200.0
OUTCOMES = ["succeeded"] * 8 + ["failed", "timed_out"]


def fill(path: Path, runs: int, seed: int) -> float:
    rng = random.Random(seed)
    now = datetime.now(UTC)
    store = HistoryStore(path)
    batch: list[RunRecord] = []
    started = time.perf_counter()
    for n in range(runs):
        ended = now - timedelta(seconds=rng.uniform(0, 89 * 86400))
        duration = rng.uniform(30, 1800)
        tokens_in, tokens_out = rng.randint(1000, 200_000), rng.randint(100, 20_000)
        batch.append(
            RunRecord(
                started_at=ended - timedelta(seconds=duration),
                ended_at=ended,
                host=f"host-{n % 3}",
                instance="bench",
                agent=f"dev-{n % 20:02d}",
                task_id=rng.randint(1, 10_000),
                attempt=rng.randint(1, 3),
                outcome=rng.choice(OUTCOMES),
                reason="exit 0 after 5m03s",
                report="completed",
                how="spawned",
                exit_code=0,
                duration_sec=duration,
                input_tokens=tokens_in,
                output_tokens=tokens_out,
                total_tokens=tokens_in + tokens_out,
                model="claude-sonnet-4",
                cost=(tokens_in * 3 + tokens_out * 15) / 1e6,
                log_path=f"/var/log/tinyscheduler/tasks/{n}/1.log",
            )
        )
        if len(batch) == 500:
            store.append(batch)
            batch = []
    if batch:
        store.append(batch)
    store.close()
    return time.perf_counter() - started


def timed(base: Path, rounds: int, **query: object) -> tuple[float, float, int]:
    loaded = load_settings(env_file=None, cli={"base_path": str(base)}, environ={}, cwd=base)
    times = []
    size = 0
    for _ in range(rounds):
        out = io.StringIO()
        began = time.perf_counter()
        assert history_command(loaded, out=out, **query) == 0  # type: ignore[arg-type]
        times.append((time.perf_counter() - began) * 1000)
        size = len(out.getvalue())
    return min(times), statistics.median(times), size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        base = Path(folder)
        path = base / "state" / "history.sqlite3"
        took = fill(path, args.runs, args.seed)
        print(
            f"appended {args.runs:,} runs in {took:.1f} s ({args.runs / took:,.0f} runs/s); "
            f"file {path.stat().st_size / 1e6:.1f} MB"
        )
        queries = {
            "default": {},
            "agent+since": {"agent": "dev-07", "since": "1d"},
            "task": {"task_id": 4242},
            "all-json": {"limit": 0, "json_output": True},
        }
        missed = []
        print(f"{'query':<12} {'best ms':>9} {'median ms':>10} {'output':>12}")
        for name, query in queries.items():
            best, median, size = timed(base, args.rounds if name != "all-json" else 3, **query)
            print(f"{name:<12} {best:9.1f} {median:10.1f} {size:>10,} B")
            if name != "all-json" and median > GOAL_MS:
                missed.append(f"{name}: median {median:.0f} ms > {GOAL_MS:.0f} ms")
    for line in missed:
        print(f"goal missed: {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
