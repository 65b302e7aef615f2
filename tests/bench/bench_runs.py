#!/usr/bin/env python3
"""Benchmarks of the daemon running Goose (issue 3), with the real daemon as a subprocess.

    .venv/bin/python tests/bench/bench_runs.py [--part all|idle|throughput] [--seed 1]
        [--runs 200] [--tasks 500] [--idle-heartbeats 15,1] [--loop-interval 1] [--profile-daemon DIR]

The daemon is `python -m tinyscheduler run --daemon` (tests/harness.py `DaemonProcess`), Goose is
the stand-in (`tinyscheduler-standin-goose`, which appends start/end records to
TINYSCHEDULER_STANDIN_RECORD), TinyTask is the fake, served over HTTP from this process.
Loop interval 1 s (`--loop-interval`), JSON logs at info level, the harness's other settings.

idle (a): 200 concurrent runs of a stand-in that sleeps. Once the 200 start records are in, the
  daemon process (itself, not its children) is sampled: RSS every second, CPU as the delta of
  user+system time over the window divided by the window's wall time. With heartbeat 15 s (the
  default; the window is one heartbeat period, 15 s) and, for context, heartbeat 1 s (10 s).
  Goals (heartbeat 15 s): RSS < 80 MB, CPU < 5% of one core.
throughput (b, c): 500 tasks of 0.2-1 s (seeded, per task through the tag `standin:succeed:<s>`),
  unassigned in one queue served by 2 agents x 4 slots. From the records:
  (b) work conservation: does a slot sit empty while work waits? A slot holds a process, so each
      run is its process's lifetime as the daemon saw it (the `started` event, just after the
      spawn, plus the `finished` event's duration, spawn to exit). makespan = first spawn to last
      exit; ideal = greedy list scheduling of those same lifetimes in the same order (task id =
      server order) on 8 slots; goal: ideal / measured >= 95%. What is left between two runs is the
      daemon's alone: noticing the exit, the pass, the claim, the spawn. For context, the same
      from the stand-in's own records (its first to its last line), which also counts its Python
      start-up (~60 ms) and teardown (~13 ms) as gaps, and plain utilisation.
  (c) refill latency: each end on an agent while tasks were still waiting, to the next start on
      that agent (ends and starts matched first-in first-out); goal p95 < 1 s. Broken down with
      the daemon's events file: end record -> next `started` (the stand-in's teardown, the exit
      seen, a pass, assignment, claim, spawn; the report to TinyTask runs beside it, the slot is
      free from the exit), `started` -> start record (the stand-in's own start-up: interpreter,
      imports, reading its task's tags).

Every process started here (daemon, stand-ins, the fake) is stopped on the way out, failure and
Ctrl-C included. Exit status 1 when a goal is missed. `--profile-daemon DIR` runs the daemon under
`python -m cProfile -o DIR/<part>.prof` (the numbers then include the profiler's overhead).
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, kill_everything, max_concurrency, wait_for

GOAL_RSS_MB = 80.0
GOAL_CPU_PERCENT = 5.0
GOAL_UTILISATION = 0.95
GOAL_REFILL_P95_SEC = 1.0
MB = 1024 * 1024


class Interrupted(Exception):
    """SIGTERM to the benchmark: unwind through every finally, as Ctrl-C does."""


def _terminate(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def goal(self, name: str, ok: bool, detail: str) -> None:
        self.say(f"  goal {name}: {detail}: {'met' if ok else 'MISSED'}")
        if not ok:
            self.failed.append(name)


class ProfiledDaemon(DaemonProcess):
    """The harness's daemon subprocess, run under cProfile (written when it exits normally)."""

    def __init__(self, workspace: Workspace, *args: str, env: dict[str, str], profile_to: Path) -> None:
        super().__init__(workspace, *args, env=env)
        self.profile_to = profile_to

    def start(self) -> ProfiledDaemon:
        import subprocess

        with open(self.out, "wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cProfile", "-o", str(self.profile_to), "-m", "tinyscheduler", *self.args],
                cwd=self.workspace.base,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self


class Session:
    """One daemon over one workspace and one fake; `close()` stops all of it, whatever happened."""

    def __init__(self, root: Path, name: str, profile_dir: Path | None) -> None:
        self.fake = FakeTinyTask().start()
        self.workspace = Workspace(root / name, self.fake.url)
        self.name = name
        self.profile_dir = profile_dir
        self.daemon: DaemonProcess | None = None

    def start_daemon(self, **env: str) -> DaemonProcess:
        environment = self.workspace.daemon_env(**env)
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            self.daemon = ProfiledDaemon(
                self.workspace, "run", "--daemon", env=environment, profile_to=self.profile_dir / f"{self.name}.prof"
            )
        else:
            self.daemon = DaemonProcess(self.workspace, "run", "--daemon", env=environment)
        return self.daemon.start()

    def stop_daemon(self, hurry: bool) -> None:
        """SIGTERM (twice when `hurry`: runs are stopped at once rather than awaited)."""
        daemon = self.daemon
        if daemon is None or daemon.proc is None or daemon.proc.poll() is not None:
            return
        daemon.signal(signal.SIGTERM)
        if hurry:
            time.sleep(0.5)
            if daemon.proc.poll() is None:
                daemon.signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=60)
        except AssertionError as exc:
            print(f"warning: {exc}", file=sys.stderr)
            return
        if code != 0:
            print(f"warning: the daemon exited with {code}; output tail:\n{daemon.output()[-2000:]}", file=sys.stderr)

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.kill()
        finally:
            try:
                kill_everything(self.workspace.base)
            finally:
                self.fake.stop()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.workspace.base.rglob("events_*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    found.append(json.loads(line))
        return found


# --- (a) many idle runs ------------------------------------------------------------------------


def sample_daemon(pid: int, window: float) -> tuple[float, list[float]]:
    """CPU percent of one core over `window` seconds, and the RSS samples (MB) taken meanwhile."""
    proc = psutil.Process(pid)
    rss = [proc.memory_info().rss / MB]
    before, wall = proc.cpu_times(), time.monotonic()
    deadline = wall + window
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        rss.append(proc.memory_info().rss / MB)
    after, elapsed = proc.cpu_times(), time.monotonic() - wall
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / elapsed, rss


def idle_runs(root: Path, args: argparse.Namespace, heartbeat: int, result: Result) -> tuple[float, float]:
    runs = args.runs
    window = float(max(10, heartbeat))
    agents = [(f"agent-{n}", "bench", runs // 4) for n in range(1, 5)]
    session = Session(root, f"idle-hb{heartbeat}", args.profile_daemon)
    try:
        ws = session.workspace
        ws.write_registry(agents)
        # Long enough for the ramp-up (200 interpreters starting on few cores) plus the window.
        for name, _, _ in agents:
            ws.write_recipe(name, {"mode": "succeed", "seconds": args.idle_seconds})
        for n in range(runs):
            session.fake.create_task(f"idle run {n}", queue_name="bench")
        began = time.monotonic()
        daemon = session.start_daemon(
            TINYSCHEDULER_HEARTBEAT_SEC=str(heartbeat), TINYSCHEDULER_LOOP_INTERVAL_SEC=str(args.loop_interval)
        )
        wait_for(
            lambda: len([r for r in ws.records() if r["event"] == "start"]) >= runs,
            timeout=args.idle_seconds - window - 5,
            interval=0.5,
            what=f"{runs} runs started",
        )
        ramp = time.monotonic() - began
        time.sleep(2.0)  # the last runs' lease rewrites and the pass they triggered
        window_start = time.time()
        cpu, rss = sample_daemon(daemon.pid, window)
        window_end = time.time()
        records = ws.records()
        ended_early = [r for r in records if r["event"] == "end" and r["t"] <= window_end]
        in_flight = sum(max_concurrency(records).values())
        if ended_early:
            raise RuntimeError(f"{len(ended_early)} runs ended before the window closed; raise --idle-seconds")
        result.say(
            f"- {runs} concurrent sleeping runs, heartbeat {heartbeat} s, loop interval {args.loop_interval} s: "
            f"{in_flight} in flight (from the records), ramp-up {ramp:.1f} s, window {window:.0f} s "
            f"from {datetime.fromtimestamp(window_start):%H:%M:%S}"
        )
        result.say(
            f"    daemon RSS: median {statistics.median(rss):.1f} MB, max {max(rss):.1f} MB; "
            f"daemon CPU: {cpu:.2f}% of one core"
        )
        session.stop_daemon(hurry=True)
        return cpu, max(rss)
    finally:
        session.close()


# --- (b), (c) short tasks on 8 slots -------------------------------------------------------------


def greedy_makespan(durations: list[float], slots: int) -> float:
    """List scheduling: each task, in order, starts on the slot that frees first."""
    free = [0.0] * slots
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def throughput(root: Path, args: argparse.Namespace, result: Result) -> None:
    rng = random.Random(args.seed)
    agents = [("agent-1", "bench", 4), ("agent-2", "bench", 4)]
    slots = sum(n for _, _, n in agents)
    session = Session(root, "throughput", args.profile_daemon)
    try:
        ws = session.workspace
        ws.write_registry(agents)
        for name, _, _ in agents:
            ws.write_recipe(name, {"mode": "succeed", "seconds": 0.5})
        requested: dict[int, float] = {}
        for n in range(args.tasks):
            seconds = round(rng.uniform(0.2, 1.0), 2)
            task = session.fake.create_task(f"short task {n}", queue_name="bench", tags=[f"standin:succeed:{seconds}"])
            requested[task["id"]] = seconds
        daemon = session.start_daemon(TINYSCHEDULER_LOOP_INTERVAL_SEC=str(args.loop_interval))
        began = time.monotonic()

        def done() -> bool:
            return sum(1 for r in ws.records() if r["event"] == "end") >= args.tasks

        wait_for(done, timeout=args.throughput_timeout, interval=0.5, what=f"{args.tasks} runs ended")
        cpu_total = psutil.Process(daemon.pid).cpu_times()
        wall = time.monotonic() - began
        wait_for(
            lambda: all(t["status"] == "complete" for t in session.fake.tasks()), timeout=30, what="every task complete"
        )
        session.stop_daemon(hurry=False)
        records, events = ws.records(), session.events()
    finally:
        session.close()

    starts = {r["task_id"]: r for r in records if r["event"] == "start"}
    ends = {r["task_id"]: r for r in records if r["event"] == "end"}
    if len(starts) != args.tasks or len(ends) != args.tasks:
        raise RuntimeError(f"expected one run per task: {len(starts)} starts, {len(ends)} ends for {args.tasks} tasks")
    failed = [r for r in ends.values() if r.get("exit") != 0]
    peaks = max_concurrency(records)
    measured = {task: ends[task]["t"] - starts[task]["t"] for task in starts}
    order = sorted(requested)  # server order: equal priorities, so creation order
    first, last = min(r["t"] for r in starts.values()), max(r["t"] for r in ends.values())
    makespan = last - first
    ideal = greedy_makespan([measured[t] for t in order], slots)
    ideal_requested = greedy_makespan([requested[t] for t in order], slots)
    utilisation_vs_ideal = ideal / makespan
    plain = sum(measured.values()) / (slots * makespan)
    overhead = [measured[t] - requested[t] for t in order]

    result.say(
        f"- {args.tasks} tasks of 0.2-1 s (seed {args.seed}, {sum(requested.values()):.0f} s of requested work) "
        f"on {len(agents)} agents x 4 slots; loop interval {args.loop_interval} s, heartbeat 1 s"
    )
    result.say(
        f"    peak runs in flight per agent: {dict(sorted(peaks.items()))}; failed runs: {len(failed)}; "
        f"daemon CPU over the whole run {100 * (cpu_total.user + cpu_total.system) / wall:.1f}% of one core"
    )
    result.say(f"    ideal greedy schedule of the requested seconds: {ideal_requested:.2f} s")
    result.say(
        f"    stand-in start-to-end minus requested seconds: "
        f"median {statistics.median(overhead) * 1000:.0f} ms, p95 {p95(overhead) * 1000:.0f} ms"
    )
    result.say(f"    plain utilisation sum(durations) / ({slots} x makespan): {plain:.1%}")
    finished = {e["task_id"]: e for e in events if e["event"] == "finished"}
    started_at = {e["task_id"]: _epoch(e["timestamp"]) for e in events if e["event"] == "started"}
    if not set(order) <= set(started_at) & set(finished):
        raise RuntimeError("the daemon's events file lacks a started or finished event of some run")
    lifetime = {t: float(finished[t]["duration"]) for t in order}
    proc_makespan = max(started_at[t] + lifetime[t] for t in order) - min(started_at[t] for t in order)
    proc_ideal = greedy_makespan([lifetime[t] for t in order], slots)
    result.say(
        f"    stand-in records (first start to last end) as context: makespan {makespan:.2f} s, ideal "
        f"{ideal:.2f} s, ideal / measured {utilisation_vs_ideal:.1%}"
    )
    result.say(
        f"    process lifetimes (spawn to exit, as the daemon saw them): makespan {proc_makespan:.2f} s, "
        f"ideal {proc_ideal:.2f} s; stand-in start-up (spawn to its start record) median "
        f"{statistics.median(starts[t]['t'] - started_at[t] for t in order) * 1000:.0f} ms"
    )
    result.goal(
        "(b) work conservation",
        proc_ideal / proc_makespan >= GOAL_UTILISATION,
        f"ideal / measured makespan of the process lifetimes {proc_ideal / proc_makespan:.1%} "
        f"(>= {GOAL_UTILISATION:.0%})",
    )

    # (c) refill latency, matched per agent first-in first-out.
    by_agent: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for r in records:
        by_agent[r["agent"]].append((r["t"], r["event"], r["task_id"]))
    start_times = sorted(r["t"] for r in starts.values())
    latencies: list[float] = []
    scheduling: list[float] = []
    standin_start: list[float] = []
    for timeline in by_agent.values():
        waiting: deque[tuple[float, int]] = deque()
        for t, event, task in sorted(timeline, key=lambda item: (item[0], item[1] == "start")):
            if event == "end":
                started_before = sum(1 for s in start_times if s <= t)
                if started_before < args.tasks:  # work was still waiting somewhere
                    waiting.append((t, task))
            elif waiting:
                end_t, _ended = waiting.popleft()
                latencies.append(t - end_t)
                if task in started_at:
                    scheduling.append(started_at[task] - end_t)
                    standin_start.append(t - started_at[task])
    if not latencies:
        raise RuntimeError("no refill observed")
    lat_ms = sorted(x * 1000 for x in latencies)
    result.say(
        f"    refill latency (end -> next start on the agent), {len(lat_ms)} refills: "
        f"p50 {statistics.median(lat_ms):.0f} ms, p95 {p95(lat_ms):.0f} ms, max {max(lat_ms):.0f} ms"
    )
    for label, values in (
        ("end record -> next run spawned (stand-in teardown, exit seen, pass, claim, spawn)", scheduling),
        ("spawned -> stand-in start record (its own start-up)", standin_start),
    ):
        if values:
            ms = [v * 1000 for v in values]
            result.say(f"      {label}: p50 {statistics.median(ms):.0f} ms, p95 {p95(ms):.0f} ms, max {max(ms):.0f} ms")
    result.goal(
        "(c) refill p95",
        p95(lat_ms) / 1000 < GOAL_REFILL_P95_SEC,
        f"p95 {p95(lat_ms):.0f} ms (< {GOAL_REFILL_P95_SEC * 1000:.0f} ms)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "idle", "throughput"), default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200, help="concurrent runs of the idle part")
    parser.add_argument("--idle-seconds", type=float, default=75.0, help="sleep of each idle run")
    parser.add_argument(
        "--idle-heartbeats",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[15, 1],
        metavar="S[,S...]",
        help="heartbeat of each idle measurement; the first one has the goals",
    )
    parser.add_argument("--loop-interval", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=500, help="short tasks of the throughput part")
    parser.add_argument("--throughput-timeout", type=float, default=150.0)
    parser.add_argument("--profile-daemon", type=Path, metavar="DIR")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    result = Result()
    result.say(f"bench_runs on {machine()}")
    try:
        with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-runs-") as tmp:
            root = Path(tmp)
            if args.part in ("all", "idle"):
                for number, heartbeat in enumerate(args.idle_heartbeats):
                    cpu, rss = idle_runs(root, args, heartbeat, result)
                    if number == 0:  # the others are context, without a goal
                        result.goal("(a) RSS", rss < GOAL_RSS_MB, f"max {rss:.1f} MB (< {GOAL_RSS_MB:.0f} MB)")
                        result.goal(
                            "(a) CPU", cpu < GOAL_CPU_PERCENT, f"{cpu:.2f}% of one core (< {GOAL_CPU_PERCENT:.0f}%)"
                        )
            if args.part in ("all", "throughput"):
                throughput(root, args, result)
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    result.say(f"goals missed: {', '.join(result.failed)}" if result.failed else "all goals met")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
