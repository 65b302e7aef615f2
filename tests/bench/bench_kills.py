#!/usr/bin/env python3
"""How many runs the scheduler wastes when its daemon dies: kill -9 it again and again mid-work.

    .venv/bin/python tests/bench/bench_kills.py [--kills 65] [--tasks 270] [--slots 12] [--seed 1]

The hostile test the runs issue was measured with, as a script: the real daemon (a subprocess), the
stand-in goose, the fake TinyTask. Tasks of 0.5-3 s (seeded) in one queue served by 4 agents; the
daemon is started, killed with SIGKILL at a random moment once at least 10 runs are in flight (or all
that are left), and started again, `--kills` times; a last instance then finishes the work. The
stand-in records every start and end and holds a per-task lock, so the counts below come from what
really ran:

- reruns: runs started for a task after a run of it had already ended with exit 0 (wasted work);
- overlaps: a run of a task starting while another run of it was in flight;
- lost: tasks not complete at the end, or leases left behind;
- adopted / settled: runs a new instance took over alive, or judged after they ended unwatched.

Exit status 1 when anything was rerun, overlapped or lost.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, kill_everything, wait_for


def in_flight(records: list[dict[str, Any]]) -> int:
    started = {r["pid"] for r in records if r["event"] == "start"}
    ended = {r["pid"] for r in records if r["event"] == "end"}
    return len(started - ended)


def reruns_after_success(records: list[dict[str, Any]]) -> int:
    done: set[int] = set()
    reruns = 0
    for record in sorted(records, key=lambda r: r["t"]):
        if record["event"] == "start" and record["task_id"] in done:
            reruns += 1
        if record["event"] == "end" and record.get("exit") == 0:
            done.add(record["task_id"])
    return reruns


def events(workspace: Workspace, name: str) -> int:
    count = 0
    for out in workspace.base.glob("daemon-*.out"):
        for line in out.read_text(errors="replace").splitlines():
            try:
                count += json.loads(line).get("event") == name
            except (json.JSONDecodeError, AttributeError):
                continue
    return count


def run(kills: int, tasks: int, slots: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="bench-kills-") as folder, FakeTinyTask() as fake:
        workspace = Workspace(Path(folder), fake.url)
        (workspace.base / "locks").mkdir()
        workspace.env["TINYSCHEDULER_STANDIN_LOCK_DIR"] = str(workspace.base / "locks")
        agents = 4
        workspace.write_registry([(f"dev-{n}", "dev", slots // agents) for n in range(agents)])
        for n in range(agents):
            workspace.write_recipe(f"dev-{n}", {"mode": "succeed", "seconds": 1})
        for i in range(tasks):
            fake.create_task(f"work {i}", queue_name="dev", tags=[f"standin:succeed:{rng.uniform(0.5, 3):.2f}"])
        daemons: list[DaemonProcess] = []
        try:
            for _ in range(kills):
                daemon = DaemonProcess(workspace, "run", "--daemon").start()
                daemons.append(daemon)
                wanted = min(10, sum(1 for t in fake.tasks() if t["status"] != "complete"))
                wait_for(lambda w=wanted: in_flight(workspace.records()) >= w, timeout=60, what="runs in flight")
                time.sleep(rng.uniform(0, 0.6))  # the random moment of the kill
                psutil.Process(daemon.pid).send_signal(signal.SIGKILL)
                daemon.wait()
            last = DaemonProcess(workspace, "run", "--daemon").start()
            daemons.append(last)
            wait_for(lambda: all(t["status"] == "complete" for t in fake.tasks()), timeout=600, what="the work done")
            wait_for(lambda: workspace.leases() == [], timeout=60, what="no lease left")
            records = workspace.records()
            return {
                "tasks": tasks,
                "kills": kills,
                "runs": sum(1 for r in records if r["event"] == "start"),
                "reruns after exit 0": reruns_after_success(records),
                "overlaps": sum(1 for r in records if r["event"] == "overlap"),
                "lost": sum(1 for t in fake.tasks() if t["status"] != "complete") + len(workspace.leases()),
                "adopted": events(workspace, "run_adopted"),
                "settled": events(workspace, "run_settling"),
                "never started, requeued": events(workspace, "reclaimed"),
            }
        finally:
            for daemon in daemons:
                daemon.kill()
            kill_everything(workspace.base)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=65)
    parser.add_argument("--tasks", type=int, default=270)
    parser.add_argument("--slots", type=int, default=12)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    result = run(args.kills, args.tasks, args.slots, args.seed)
    width = max(map(len, result))
    for name, value in result.items():
        print(f"{name:<{width}}  {value}")
    bad = result["reruns after exit 0"] + result["overlaps"] + result["lost"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
