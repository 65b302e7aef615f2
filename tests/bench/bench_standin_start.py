#!/usr/bin/env python3
"""Start-up of the stand-in goose: from the spawn of its launcher to its `start` record.

    .venv/bin/python tests/bench/bench_standin_start.py [--runs 50]

The stand-in is started the way the daemon starts it: through its launcher script, with a recipe,
`--params task_id=N --params agent=A`, and TINYTASK_ENDPOINT naming the fake TinyTask (so its task's
tags are read before it acts). Each run's start-up is the `t` of its start record minus the wall
clock taken just before the spawn. Runs one at a time. Goal: median < 50 ms. Exit status 1 when
the goal is missed. The baseline, measured in the same run the same way: a launcher of the same
shape whose Python only appends the start record (what any Python stand-in costs at least on this
machine). For context, also: without TINYTASK_ENDPOINT (no tag lookup), with a new recipe file for
every run (the stand-in's recipe cache cold: PyYAML imported and the file parsed), and
tests/bench/quick_goose.sh, the bash stand-in of the run benchmarks. Each line names the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import where

from tinyscheduler.testing.fake import FakeTinyTask
from tinyscheduler.testing.standin_goose import write_launcher

HERE = Path(__file__).resolve().parent

GOAL_MS = 50.0
RECIPE = """title: start-up bench
description: the stand-in's start-up
prompt: work on {{ task_id }} as {{ agent }}
parameters:
  - {key: task_id, input_type: string, requirement: required, description: task}
  - {key: agent, input_type: string, requirement: required, description: agent}
standin: {mode: succeed, seconds: 0}
"""


def start_ups(
    launcher: Path, recipe: Path, record: Path, runs: int, endpoint: str | None, fresh_recipes: bool = False
) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k != "TINYTASK_ENDPOINT"}
    env["TINYSCHEDULER_STANDIN_RECORD"] = str(record)
    if endpoint:
        env["TINYTASK_ENDPOINT"] = endpoint
    args = [str(launcher), "run", "--recipe", str(recipe), "--params", "task_id=1", "--params", "agent=dev"]
    args += ["--no-session", "--output-format", "stream-json"]
    times = []
    for number in range(runs):
        record.unlink(missing_ok=True)
        if fresh_recipes:
            args[3] = str(recipe.with_name(f"fresh-{number}.yaml"))
            Path(args[3]).write_text(RECIPE)
        spawned = time.time()
        done = subprocess.run(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=30, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the stand-in failed: {done.stderr.decode(errors='replace')}")
        start = next(json.loads(line) for line in record.read_text().splitlines() if '"start"' in line)
        times.append((start["t"] - spawned) * 1000)
    return times


#: The baseline's Python: the start record alone, in the stand-in's format.
FLOOR = (
    "import os, time; open(os.environ['TINYSCHEDULER_STANDIN_RECORD'], 'a')"
    '.write(\'{"event": "start", "t": %r}\\n\' % time.time())'
)


def write_floor(path: Path) -> Path:
    """A launcher like the stand-in's (sh, then exec Python) whose Python does nothing but the record."""
    path.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c {shlex.quote(FLOOR)}\n', encoding="utf-8")
    path.chmod(0o755)
    return path


def summary(label: str, times: list[float]) -> float:
    ordered = sorted(times)
    median = statistics.median(ordered)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * len(ordered)) - 1)]
    print(
        f"{label:36} median {median:6.1f} ms   p95 {p95:6.1f} ms   min {ordered[0]:6.1f}   max {ordered[-1]:6.1f} "
        f"{where()}"
    )
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    print(f"python {platform.python_version()} on {platform.machine()}, {args.runs} runs {where()}")
    with tempfile.TemporaryDirectory(prefix="standin-bench-") as folder, FakeTinyTask() as fake:
        root = Path(folder)
        fake.create_task("bench", assigned_to="dev", tags=["bench"])
        launcher = write_launcher(root / "goose")
        floor = write_floor(root / "floor")
        recipe = root / "recipe.yaml"
        recipe.write_text(RECIPE)
        record = root / "record.jsonl"
        start_ups(launcher, recipe, record, 3, fake.url)  # warm the page cache
        start_ups(floor, recipe, record, 3, fake.url)
        median = summary("with TINYTASK_ENDPOINT", start_ups(launcher, recipe, record, args.runs, fake.url))
        base = summary("baseline: Python writing the record", start_ups(floor, recipe, record, args.runs, fake.url))
        summary("without (no tag lookup)", start_ups(launcher, recipe, record, args.runs, None))
        summary("new recipe each run (cache cold)", start_ups(launcher, recipe, record, args.runs, fake.url, True))
        durations = root / "durations"
        durations.mkdir()
        (durations / "1").write_text("0\n")  # quick_goose sleeps its task's seconds: none here
        os.environ["QUICK_GOOSE_DURATIONS"] = str(durations)
        summary(
            "quick_goose.sh (bash, bench_runs)", start_ups(HERE / "quick_goose.sh", recipe, record, args.runs, None)
        )
    met = median < GOAL_MS
    print(
        f"goal: median < {GOAL_MS:g} ms: {median:.1f} ms, {median / base:.2f}x the baseline's {base:.1f} ms: "
        f"{'met' if met else 'MISSED'} {where()}"
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
