#!/usr/bin/env python3
"""Start-up of the CLI: `tinyscheduler --help` and `tinyscheduler status`, spawn to exit.

    .venv/bin/python tests/bench/bench_cli.py [--runs 30] [--against SRC]

Each command runs `--runs` times one after the other (`python -m tinyscheduler ...` on a fresh
state folder with no daemon, as an operator types it); reported: median and p95 wall time, and the
same for `python -c pass` (the interpreter alone: the floor). With `--against SRC` (e.g. a `git
archive` of main) the same commands of the package in SRC run in the same rounds, alternating.
Goal: median at most 150 ms for each command. Exit 1 when missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_MS = 150.0
COMMANDS = {"--help": ["--help"], "status": ["status"]}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return (time.perf_counter() - began) * 1000


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--against", type=Path, metavar="SRC", help="also the CLI of the package in SRC")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    versions = {"now": base}
    if args.against is not None:
        versions["today"] = {**base, "PYTHONPATH": str(args.against)}
    times: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-cli-") as tmp:
        folder = Path(tmp)
        floor = [once([sys.executable, "-c", "pass"], folder, base) for _ in range(args.runs)]
        for _ in range(args.runs):
            for name, command in COMMANDS.items():
                for version, env in versions.items():
                    argv = [sys.executable, "-m", "tinyscheduler", *command, "--base-path", str(folder)]
                    times.setdefault((name, version), []).append(once(argv, folder, env))
    machine = f"[{cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}]"
    print(f"CLI start-up, {args.runs} runs each; interpreter alone: median {statistics.median(floor):.0f} ms {machine}")
    failed = False
    for name in COMMANDS:
        now = times[name, "now"]
        line = f"  {name:<7} median {statistics.median(now):.0f} ms, p95 {p95(now):.0f} ms"
        if (name, "today") in times:
            today = times[name, "today"]
            line += (
                f"; today's version median {statistics.median(today):.0f} ms, p95 {p95(today):.0f} ms "
                f"({statistics.median(now) / statistics.median(today):.2f}x)"
            )
        ok = statistics.median(now) <= GOAL_MS
        failed = failed or not ok
        print(f"{line}: goal median <= {GOAL_MS:.0f} ms {'met' if ok else 'MISSED'} {machine}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
