#!/usr/bin/env python3
"""Start-up of the CLI: `tinyscheduler --help` and `tinyscheduler status`, spawn to exit.

    .venv/bin/python tests/bench/bench_cli.py [--runs 30] [--against SRC]

Each command runs `--runs` times one after the other (`python -m tinyscheduler ...` on a fresh
state folder with no daemon, as an operator types it); reported: median and p95 wall time, the
median CPU time (user + system: what a busy machine does not inflate as much), and the median wall
time of `python -c pass` (the interpreter alone: the floor). With `--against SRC` (a PYTHONPATH:
e.g. a checkout's src, then the site-packages of its own venv for dependencies this one lacks) the
same commands of that package run in the same rounds, alternating. Each package is byte-compiled
first, as pip does when it installs one: with PYTHONDONTWRITEBYTECODE set (as in the test
environment) every start would otherwise compile every module it imports again, which no installed
CLI does. Goal: median at most 150 ms for each command. Exit 1 when missed.
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

from machine import where

GOAL_MS = 150.0
COMMANDS = {"--help": ["--help"], "status": ["status"]}


def once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall time and CPU time (user + system, its own rusage) of one command, in ms."""
    began = time.perf_counter()
    child = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, _, usage = os.wait4(child.pid, 0)
    child.returncode = 0  # reaped here: Popen must not wait for it again
    return (time.perf_counter() - began) * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def compile_package(env: dict[str, str]) -> None:
    """Byte-compile the package `env` imports (see the module docstring)."""
    code = (
        "import compileall, os, tinyscheduler; compileall.compile_dir(os.path.dirname(tinyscheduler.__file__), quiet=1)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, stdout=subprocess.DEVNULL)


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
    for env in versions.values():
        compile_package(env)
    times: dict[tuple[str, str], list[float]] = {}
    cpus: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-cli-") as tmp:
        folder = Path(tmp)
        floor = [once([sys.executable, "-c", "pass"], folder, base)[0] for _ in range(args.runs)]
        for _ in range(args.runs):
            for name, command in COMMANDS.items():
                for version, env in versions.items():
                    argv = [sys.executable, "-m", "tinyscheduler", *command, "--base-path", str(folder)]
                    wall, cpu = once(argv, folder, env)
                    times.setdefault((name, version), []).append(wall)
                    cpus.setdefault((name, version), []).append(cpu)
    machine = where()
    print(f"CLI start-up, {args.runs} runs each; interpreter alone: median {statistics.median(floor):.0f} ms {machine}")
    failed = False
    for name in COMMANDS:
        now = times[name, "now"]
        line = (
            f"  {name:<7} median {statistics.median(now):.0f} ms, p95 {p95(now):.0f} ms "
            f"(CPU median {statistics.median(cpus[name, 'now']):.0f} ms)"
        )
        if (name, "today") in times:
            today = times[name, "today"]
            line += (
                f"; today's version median {statistics.median(today):.0f} ms, p95 {p95(today):.0f} ms "
                f"(CPU median {statistics.median(cpus[name, 'today']):.0f} ms) "
                f"({statistics.median(now) / statistics.median(today):.2f}x)"
            )
        ok = statistics.median(now) <= GOAL_MS
        failed = failed or not ok
        print(f"{line}: goal median <= {GOAL_MS:.0f} ms {'met' if ok else 'MISSED'} {machine}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
