#!/usr/bin/env python3
"""Benchmarks of the daemon running runs, with the real daemon as a subprocess and each goal checked
against a baseline measured in the same run.

    .venv/bin/python tests/bench/bench_runs.py [--part all|idle|throughput|slots] [--seed 1]
        [--tasks 500] [--slot-tasks 3000] [--idle-window 60] [--profile-daemon DIR]

The daemon is `python -m tinyscheduler run --daemon` (tests/harness.py `DaemonProcess`), goose is
tests/bench/quick_goose.sh, a bash stand-in whose own start-up is a few milliseconds (it sleeps for
its task's seconds, prints a stream-json `complete` event and appends start/end records), so that
the stand-in is not what is measured; TinyTask is the fake, served over HTTP from this process. The
baseline is tests/bench/bare_spawner.py: the same tasks on the same slots, spawned by a loop that
does nothing but spawn and wait (no TinyTask, no lease, no log): what no scheduler can beat here.

idle: 200 runs of goose sleeping, 4 agents x 50 slots. Once all have started, the daemon process
  itself (not its children) is sampled: CPU = delta of user+system time over a window / the window.
  Goals: under 2% of one core at the default intervals (heartbeat 15 s, loop 60 s; a 60 s window),
  under 10% with a 1 s heartbeat and a 1 s loop (a 15 s window); RSS under 80 MB. So that a quiet
  number cannot come from a daemon that did nothing, the window must show the work: every lease's
  heartbeat within the last heartbeat interval, and the passes the loop interval asks for (list
  requests at the fake). Baseline: the bare spawner holding 200 sleeping runs.
throughput: 500 tasks of 0.2-1 s (seeded) in one queue served by 2 agents x 4 slots; loop 1 s,
  heartbeat 1 s. From the stand-in's records: work conservation = the ideal greedy schedule of the
  runs as they lasted, in task order, on 8 slots / the measured makespan (goal >= 95%); refill = a
  run's end record -> the next start record on that agent while tasks wait (goal p95 < 1 s). From
  the daemon's events, for each of those refills: the daemon's gap = the run's exit (`started` + its
  `duration`) -> the next run's `started` (goal p95 <= 50 ms).
slots: 3,000 tasks of 0.1-2 s on 4 agents x 25 slots (100 slots), loop 1 s, heartbeat 1 s. Busy
  slots on average while tasks wait (first spawn to last spawn), from the records (goal >= 90%);
  daemon CPU per run = the daemon's CPU from the moment the tasks are created to the last run's end
  / the runs (goal <= 5 ms).

Each result line names the CPU model and the load average at that moment. Every process started here
(daemon, stand-ins, the fake, the bare spawner) is stopped on the way out, failure and Ctrl-C
included. Exit status 1 when a goal is missed. `--profile-daemon DIR` runs the daemon with a stack
sampler (see PROFILED) that writes DIR/<part>.json: per function, the share of the event-loop
thread's CPU time spent in it (the numbers then include the sampler's overhead).
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
import subprocess
import sys
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for the harness

from machine import cpu_model, filesystem, where

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, kill_everything, wait_for

HERE = Path(__file__).resolve().parent
QUICK_GOOSE = HERE / "quick_goose.sh"
BARE_SPAWNER = HERE / "bare_spawner.py"
MB = 1024 * 1024

GOAL_RSS_MB = 80.0
GOAL_IDLE_DEFAULT_CPU = 2.0
GOAL_IDLE_FAST_CPU = 10.0
GOAL_WORK_CONSERVATION = 0.95
GOAL_REFILL_P95_SEC = 1.0
GOAL_GAP_P95_SEC = 0.050
GOAL_BUSY = 0.90
GOAL_CPU_PER_RUN_MS = 5.0


class Interrupted(Exception):
    """SIGTERM to the benchmark: unwind through every finally, as Ctrl-C does."""


def _terminate(signum: int, frame: Any) -> None:
    raise Interrupted(f"signal {signum}")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


@dataclass
class Result:
    lines: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def goal(self, name: str, ok: bool, detail: str) -> None:
        self.say(f"  goal {name}: {detail}: {'met' if ok else 'MISSED'} {where()}")
        if not ok:
            self.failed.append(name)


# --- the daemon, the fake, the stand-in --------------------------------------------------------------


#: Runs the daemon with a sampler: every millisecond of the event-loop thread's own CPU time (not
#: of wall time: waits are not costs here; not of the process's: a call that blocks the loop must
#: not collect the CPU of worker threads) a thread notes the loop thread's stack. Inclusive counts
#: per function go to the file named last on the command line; cProfile's overhead distorted the
#: shares too much.
PROFILED = """
import collections, json, sys, threading, time
from tinyscheduler.cli.main import main
out, sys.argv = sys.argv[-1], ['tinyscheduler', *sys.argv[2:-1]]
main_id, counts, done = threading.get_ident(), collections.Counter(), threading.Event()
clock = time.pthread_getcpuclockid(main_id)
sys.setswitchinterval(0.0002)
def sample():
    last = time.clock_gettime(clock)
    while not done.wait(0.001):
        now = time.clock_gettime(clock)
        if now - last < 0.001:
            continue
        last = now
        frame = sys._current_frames().get(main_id)
        seen = set()
        if frame is not None:
            counts["leaf " + frame.f_code.co_filename.rsplit("/", 1)[-1] + ":" + frame.f_code.co_name] += 1
        while frame is not None:
            code = frame.f_code
            key = f"{code.co_filename.rsplit('site-packages/', 1)[-1].rsplit('src/', 1)[-1]}:{code.co_name}"
            if key not in seen:
                seen.add(key)
                counts[key] += 1
            frame = frame.f_back
        counts["<all>"] += 1
threading.Thread(target=sample, daemon=True).start()
try:
    main()
finally:
    done.set()
    counts["<cpu ms: process>"] = round(time.process_time() * 1000)
    counts["<cpu ms: loop thread>"] = round(time.clock_gettime(clock) * 1000)
    json.dump(counts.most_common(), open(out, "w"))
"""


class ProfiledDaemon(DaemonProcess):
    """The harness's daemon subprocess with the sampler (PROFILED), written when it exits normally."""

    def __init__(self, workspace: Workspace, *args: str, env: dict[str, str], profile_to: Path) -> None:
        super().__init__(workspace, *args, env=env)
        self.program = [sys.executable, "-c", PROFILED, "--"]
        self.args = (*self.args, str(profile_to))


class Session:
    """One daemon over one workspace and one fake; `close()` stops all of it, whatever happened."""

    #: Run the daemon of the package in this folder instead (`--daemon-src`: today's version).
    daemon_src: Path | None = None

    def __init__(self, root: Path, name: str, profile_dir: Path | None) -> None:
        self.fake = FakeTinyTask().start()
        self.workspace = Workspace(root / name, self.fake.url)
        self.seconds: list[float] = []
        #: CPU of one file creation next to the run logs, before the daemon starts (file_creation_us).
        self.creation_us = 0.0
        self.name = name
        self.profile_dir = profile_dir
        self.daemon: DaemonProcess | None = None

    def agents(self, agents: list[tuple[str, int]], queue: str = "bench") -> None:
        self.workspace.write_registry([(name, queue, slots) for name, slots in agents])
        for name, _ in agents:
            self.workspace.write_recipe(name)  # quick_goose reads none; the daemon wants it to exist

    def plan(self, seconds: Iterable[float]) -> None:
        """The seconds each task's run will sleep, task 1 first, before the daemon starts: quick_goose
        gets them all in one variable, not a file per task. (Thousands of files deleted with the
        workspace would slow every file creation near them for minutes on ext4 without a journal,
        the next benchmark's run logs included; docs/performance.md.)"""
        self.seconds = list(seconds)

    def tasks(self, queue: str = "bench") -> list[tuple[int, float]]:
        """The planned tasks in the queue, with their seconds; in creation (= server) order."""
        made = []
        for n, duration in enumerate(self.seconds):
            task_id = self.fake.create_task(f"bench task {n}", queue_name=queue)["id"]
            if task_id != n + 1:
                raise RuntimeError(f"task {n} got id {task_id}: quick_goose finds its seconds by id, from 1")
            made.append((task_id, duration))
        return made

    def env(self) -> dict[str, str]:
        # quick_goose.sh: 8 characters a task, task 1 first.
        seconds = "".join(f"{duration:<8.3f}"[:8] for duration in self.seconds)
        return {"QUICK_GOOSE_SECONDS": seconds, "TINYSCHEDULER_STANDIN_RECORD": str(self.records_file)}

    @property
    def records_file(self) -> Path:
        return self.workspace.records_file

    def start_daemon(self, **env: str) -> DaemonProcess:
        environment = self.workspace.daemon_env(TINYSCHEDULER_GOOSE_BIN=str(QUICK_GOOSE), **self.env(), **env)
        if self.daemon_src is not None:
            environment["PYTHONPATH"] = str(self.daemon_src)
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            profile = self.profile_dir / f"{self.name}.json"
            self.daemon = ProfiledDaemon(self.workspace, "run", "--daemon", env=environment, profile_to=profile)
        else:
            self.daemon = DaemonProcess(self.workspace, "run", "--daemon", env=environment)
        return self.daemon.start()

    def stop_daemon(self) -> None:
        """SIGTERM twice: runs are stopped at once rather than awaited."""
        daemon = self.daemon
        if daemon is None or daemon.proc is None or daemon.proc.poll() is not None:
            return
        daemon.signal(signal.SIGTERM)
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

    def records(self) -> list[dict[str, Any]]:
        return self.workspace.records()

    def events(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.workspace.base.rglob("events_*.jsonl")):
            found += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return found

    def list_requests(self) -> int:
        return sum(1 for method, path in self.fake.requests if method == "GET" and path.startswith("/api/v1/tasks?"))


class BareSpawner:
    """tests/bench/bare_spawner.py as a subprocess, over the same tasks and slots."""

    def __init__(self, root: Path, session: Session, slots: int, tasks: list[int]) -> None:
        self.out = root / f"{session.name}-bare.json"
        self.records_file = root / f"{session.name}-bare-records.jsonl"
        job = root / f"{session.name}-bare-job.json"
        env = {**session.env(), "TINYSCHEDULER_STANDIN_RECORD": str(self.records_file)}
        job.write_text(
            json.dumps({"slots": slots, "tasks": tasks, "goose": str(QUICK_GOOSE), "env": env, "out": str(self.out)})
        )
        self.proc = subprocess.Popen([sys.executable, str(BARE_SPAWNER), str(job)], start_new_session=True)

    def wait(self, timeout: float) -> dict[str, Any]:
        self.proc.wait(timeout)
        return dict(json.loads(self.out.read_text()))

    def records(self) -> list[dict[str, Any]]:
        lines = self.records_file.read_text().splitlines() if self.records_file.exists() else []
        return [json.loads(line) for line in lines if line.strip()]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


# --- what the records say ----------------------------------------------------------------------------


def lifetimes(records: list[dict[str, Any]]) -> dict[int, tuple[float, float, str]]:
    """task id -> (start, end, agent) from the stand-in's records (one run per task)."""
    starts = {r["task_id"]: r for r in records if r["event"] == "start"}
    ends = {r["task_id"]: r for r in records if r["event"] == "end"}
    return {task: (starts[task]["t"], ends[task]["t"], starts[task]["agent"]) for task in starts if task in ends}


def file_creation_us(folder: Path, count: int = 200) -> float:
    """CPU microseconds per file created in `folder` (made here): each run creates its log, and on
    ext4 without a journal a creation looks past every inode freed in the last minutes in its block
    group (15 us in a quiet one, 250 us after a few thousand deletions nearby, on this machine). The
    files stay: deleting them would do just that to the daemon's run logs."""
    folder.mkdir(parents=True)
    began = time.process_time()
    for n in range(count):
        os.close(os.open(folder / f"probe-{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return (time.process_time() - began) / count * 1e6


def greedy_makespan(durations: list[float], slots: int) -> float:
    """List scheduling: each task, in order, starts on the slot that frees first."""
    free = [0.0] * slots
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def work_conservation(runs: dict[int, tuple[float, float, str]], order: list[int], slots: int) -> float:
    first = min(start for start, _, _ in runs.values())
    last = max(end for _, end, _ in runs.values())
    return greedy_makespan([runs[t][1] - runs[t][0] for t in order], slots) / (last - first)


def busy_share(runs: dict[int, tuple[float, float, str]], slots: int) -> float:
    """Busy slots on average while tasks waited: from the first start to the last start."""
    begin = min(start for start, _, _ in runs.values())
    end = max(start for start, _, _ in runs.values())
    busy = sum(max(0.0, min(stop, end) - max(start, begin)) for start, stop, _ in runs.values())
    return busy / (slots * (end - begin))


#: A run's moment on its agent: (agent, time, task id).
Moment = tuple[str, float, int]


def refill_pairs(ends: Iterable[Moment], starts: Iterable[Moment], last_start: float) -> list[tuple[int, int, float]]:
    """Per agent, each end while tasks waited matched first-in first-out to the next start after it:
    (the task that ended, the task that started, the seconds in between)."""
    timeline: dict[str, list[tuple[float, int, int]]] = defaultdict(list)
    for agent, moment, task in ends:
        if moment < last_start:
            timeline[agent].append((moment, 0, task))
    for agent, moment, task in starts:
        timeline[agent].append((moment, 1, task))
    pairs = []
    for events in timeline.values():
        waiting: deque[tuple[float, int]] = deque()
        for moment, kind, task in sorted(events):
            if kind == 0:
                waiting.append((moment, task))
            elif waiting:
                ended, ended_task = waiting.popleft()
                pairs.append((ended_task, task, moment - ended))
    return pairs


def record_pairs(runs: dict[int, tuple[float, float, str]]) -> list[tuple[int, int, float]]:
    """The refills as the stand-in's records show them: a run's end record -> the next start record on
    its agent while tasks waited."""
    last_start = max(start for start, _, _ in runs.values())
    ends = ((agent, end, task) for task, (_, end, agent) in runs.items())
    starts = ((agent, start, task) for task, (start, _, agent) in runs.items())
    return refill_pairs(ends, starts, last_start)


def record_gaps(runs: dict[int, tuple[float, float, str]]) -> list[float]:
    return [gap for _, _, gap in record_pairs(runs)]


def daemon_gaps(events: list[dict[str, Any]], pairs: list[tuple[int, int, float]]) -> list[float]:
    """The daemon's share of each refill in `pairs` (record_pairs): the run's exit as the daemon saw it
    (its `started` event plus its `duration`) -> the next run's `started` event. The records say which
    start followed which end; pairing the daemon's own moments by time instead, one exit estimated a
    few milliseconds after the spawn that replaced it mismatched every later pair of that agent
    (seen: 490 of 492 pairs, p95 242-341 ms, while the records showed 13-17 ms end to start)."""
    duration = {e["task_id"]: float(e["duration"]) for e in events if e["event"] == "finished"}
    started = {
        e["task_id"]: datetime.fromisoformat(e["timestamp"]).timestamp() for e in events if e["event"] == "started"
    }
    return [
        started[following] - (started[ended] + duration[ended])
        for ended, following, _ in pairs
        if ended in duration and ended in started and following in started
    ]


def ms(values: list[float]) -> str:
    shown = [v * 1000 for v in values]
    return f"p50 {statistics.median(shown):.0f} ms, p95 {p95(shown):.0f} ms, max {max(shown):.0f} ms ({len(shown)})"


# --- the parts ---------------------------------------------------------------------------------------


def sample_cpu(pid: int, window: float) -> tuple[float, float]:
    """CPU percent of one core over `window` seconds, and the largest RSS (MB) seen meanwhile."""
    proc = psutil.Process(pid)
    rss = proc.memory_info().rss
    before, wall = proc.cpu_times(), time.monotonic()
    deadline = wall + window
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        rss = max(rss, proc.memory_info().rss)
    after, elapsed = proc.cpu_times(), time.monotonic() - wall
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / elapsed, rss / MB


def idle(root: Path, args: argparse.Namespace, heartbeat: int, loop: int, window: float, result: Result) -> float:
    runs = 200
    session = Session(root, f"idle-hb{heartbeat}-loop{loop}", args.profile_daemon)
    try:
        session.agents([(f"agent-{n}", runs // 4) for n in range(1, 5)])
        session.plan([3600.0] * runs)
        session.tasks()
        ws = session.workspace
        daemon = session.start_daemon(
            TINYSCHEDULER_HEARTBEAT_SEC=str(heartbeat), TINYSCHEDULER_LOOP_INTERVAL_SEC=str(loop)
        )
        began = time.monotonic()
        wait_for(
            lambda: sum(r["event"] == "start" for r in ws.records()) >= runs, timeout=120, interval=0.5, what="200 runs"
        )
        ramp = time.monotonic() - began
        time.sleep(3.0)  # the last runs' lease writes and the pass their ends woke
        session.fake.reset_requests()
        cpu, rss = sample_cpu(daemon.pid, window)
        lists = session.list_requests()
        fresh = sum(1 for lease in ws.leases() if time.time() - lease.stat().st_mtime <= heartbeat + 1)
        result.say(
            f"- {runs} sleeping runs, heartbeat {heartbeat} s, loop {loop} s (ramp-up {ramp:.1f} s), "
            f"window {window:.0f} s: daemon CPU {cpu:.2f}% of one core, RSS max {rss:.1f} MB; "
            f"in the window: {lists} passes' list requests, {fresh}/{runs} leases touched within a heartbeat {where()}"
        )
        passes_expected = int(window // loop) - 1  # at least, whatever the phase of the window
        if lists < passes_expected or fresh < runs:
            raise RuntimeError(f"the window did not show the daemon's work ({lists} lists, {fresh} fresh leases)")
        session.stop_daemon()
        return cpu if rss < GOAL_RSS_MB else float("inf")
    finally:
        session.close()


def idle_baseline(root: Path, result: Result) -> None:
    session = Session(root, "idle-bare", None)
    bare = None
    try:
        session.plan([3600.0] * 200)
        tasks = session.tasks()
        bare = BareSpawner(root, session, 200, [task_id for task_id, _ in tasks])
        wait_for(
            lambda: sum(r["event"] == "start" for r in bare.records()) >= 200, timeout=60, interval=0.5, what="200 runs"
        )
        cpu, _ = sample_cpu(bare.proc.pid, 10.0)
        result.say(f"- baseline: the bare spawner holding 200 sleeping runs: {cpu:.2f}% of one core {where()}")
    finally:
        if bare is not None:
            bare.close()
        session.close()


def workload(
    root: Path, name: str, args: argparse.Namespace, agents: list[tuple[str, int]], seconds: list[float]
) -> tuple[Session, list[tuple[int, float]], float, dict[str, Any]]:
    """The daemon over the tasks, then the bare spawner over the same: (session, tasks, daemon CPU
    seconds from the tasks' creation to the last run's end, the bare spawner's result)."""
    session = Session(root, name, args.profile_daemon)
    session.agents(agents)
    session.plan(seconds)
    session.creation_us = file_creation_us(session.workspace.base / "state" / "logs" / "probe")
    daemon = session.start_daemon()
    wait_for((session.workspace.base / "state" / "last_pass.json").exists, timeout=60, what="the first pass")
    cpu_before = psutil.Process(daemon.pid).cpu_times()
    tasks = session.tasks()
    total = len(tasks)
    wait_for(
        lambda: sum(r["event"] == "end" for r in session.records()) >= total,
        timeout=args.timeout,
        interval=0.5,
        what=f"{total} runs",
    )
    cpu_after = psutil.Process(daemon.pid).cpu_times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    wait_for(
        lambda: all(t["status"] == "complete" for t in session.fake.tasks()), timeout=60, what="every task complete"
    )
    session.stop_daemon()
    counters = json.loads((session.workspace.base / "state" / "last_pass.json").read_text())["counters"]
    requests = len(session.fake.requests)
    print(
        f"    ({name}: {session.list_requests()} list requests (passes), {counters.get('refills', 0)} refills, "
        f"{requests} requests in all, {requests / total:.2f} per run; a file created next to the run logs "
        f"before the start: {session.creation_us:.0f} us of CPU) {where()}",
        flush=True,
    )
    slots = sum(n for _, n in agents)
    bare = BareSpawner(root, session, slots, [task_id for task_id, _ in tasks])
    try:
        baseline = bare.wait(args.timeout)
        baseline["records"] = bare.records()
    finally:
        bare.close()
    return session, tasks, cpu, baseline


def finished(
    session: Session, tasks: list[tuple[int, float]]
) -> tuple[dict[int, tuple[float, float, str]], list[dict[str, Any]]]:
    """The runs' lifetimes and the daemon's events once the workload is over (the session closed);
    exactly one run per task, or the benchmark measured something else."""
    try:
        runs, events = lifetimes(session.records()), session.events()
    finally:
        session.close()
    if len(runs) != len(tasks):
        raise RuntimeError(f"expected one run per task: {len(runs)} runs for {len(tasks)} tasks")
    return runs, events


def throughput(root: Path, args: argparse.Namespace, result: Result) -> None:
    rng = random.Random(args.seed)
    seconds = [round(rng.uniform(0.2, 1.0), 2) for _ in range(args.tasks)]
    agents = [("agent-1", 4), ("agent-2", 4)]
    session, tasks, cpu, baseline = workload(root, "throughput", args, agents, seconds)
    runs, events = finished(session, tasks)
    order = [task_id for task_id, _ in tasks]
    bare = lifetimes(baseline["records"])
    result.say(
        f"- {len(tasks)} tasks of 0.2-1 s (seed {args.seed}, {sum(seconds):.0f} s of work) on 2 agents x 4 slots, "
        f"loop 1 s, heartbeat 1 s: daemon CPU {cpu * 1000 / len(tasks):.1f} ms per run "
        f"(bare spawner {baseline['cpu_sec'] * 1000 / len(tasks):.1f} ms) {where()}"
    )
    conserved, bare_conserved = work_conservation(runs, order, 8), work_conservation(bare, order, 8)
    result.goal(
        "(b) work conservation",
        conserved >= GOAL_WORK_CONSERVATION,
        f"{conserved:.1%} (bare spawner {bare_conserved:.1%}; >= 95%)",
    )
    pairs = record_pairs(runs)
    refills, bare_refills = [gap for _, _, gap in pairs], record_gaps(bare)
    result.say(
        f"    refill, end record -> next start record on the agent: {ms(refills)}; "
        f"bare spawner {ms(bare_refills)} {where()}"
    )
    result.goal("(c) refill p95", p95(refills) < GOAL_REFILL_P95_SEC, f"{p95(refills) * 1000:.0f} ms (< 1,000 ms)")
    gaps = daemon_gaps(events, pairs)
    result.say(f"    the daemon's gap, a run's exit -> the next spawn on the agent: {ms(gaps)} {where()}")
    result.goal("(d) daemon gap p95", p95(gaps) <= GOAL_GAP_P95_SEC, f"{p95(gaps) * 1000:.0f} ms (<= 50 ms)")


def slots(root: Path, args: argparse.Namespace, result: Result) -> None:
    rng = random.Random(args.seed)
    seconds = [round(rng.uniform(0.1, 2.0), 2) for _ in range(args.slot_tasks)]
    agents = [(f"agent-{n}", 25) for n in range(1, 5)]
    session, tasks, cpu, baseline = workload(root, "slots", args, agents, seconds)
    runs, events = finished(session, tasks)
    busy, bare_busy = busy_share(runs, 100), busy_share(lifetimes(baseline["records"]), 100)
    per_run, bare_per_run = cpu * 1000 / len(tasks), baseline["cpu_sec"] * 1000 / len(tasks)
    result.say(
        f"- {len(tasks)} tasks of 0.1-2 s (seed {args.seed}, {sum(seconds):.0f} s of work) on 4 agents x 25 slots, "
        f"loop 1 s, heartbeat 1 s {where()}"
    )
    gaps = daemon_gaps(events, record_pairs(runs))
    result.say(f"    the daemon's gap, a run's exit -> the next spawn on the agent: {ms(gaps)} {where()}")
    result.goal(
        "(e) busy slots",
        busy >= GOAL_BUSY,
        f"{busy:.1%} of 100 on average while tasks waited (bare spawner {bare_busy:.1%}; >= 90%)",
    )
    result.goal(
        "(f) CPU per run",
        per_run <= GOAL_CPU_PER_RUN_MS,
        f"{per_run:.2f} ms of daemon CPU per run (bare spawner {bare_per_run:.2f} ms; <= 5 ms; "
        f"a file creation next to the run logs: {session.creation_us:.0f} us)",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "idle", "throughput", "slots"), default="all")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tasks", type=int, default=500, help="tasks of the throughput part")
    parser.add_argument("--slot-tasks", type=int, default=3000, help="tasks of the slots part")
    parser.add_argument("--idle-window", type=float, default=60.0, help="window at the default intervals")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--profile-daemon", type=Path, metavar="DIR")
    parser.add_argument(
        "--state-in", type=Path, metavar="DIR", help="where the workspaces go (default: the temp folder)"
    )
    parser.add_argument("--daemon-src", type=Path, metavar="SRC", help="run the daemon of the package in SRC")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    Session.daemon_src = args.daemon_src

    result = Result()
    daemon = f"the daemon of {args.daemon_src}" if args.daemon_src else "this daemon"
    result.say(
        f"bench_runs, {daemon}: {os.cpu_count()} CPUs ({cpu_model()}), Python {platform.python_version()} {where()}"
    )
    runners: dict[str, Callable[[Path], None]] = {
        "idle": lambda root: _idle_part(root, args, result),
        "throughput": lambda root: throughput(root, args, result),
        "slots": lambda root: slots(root, args, result),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="tinyscheduler-bench-runs-", dir=args.state_in) as tmp:
            result.say(f"state folders in {tmp} ({filesystem(Path(tmp))}) {where()}")
            for name, run in runners.items():
                if args.part in ("all", name):
                    run(Path(tmp))
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    result.say(f"goals missed: {', '.join(result.failed)}" if result.failed else "all goals met")
    return 1 if result.failed else 0


def _idle_part(root: Path, args: argparse.Namespace, result: Result) -> None:
    default = idle(root, args, 15, 60, args.idle_window, result)
    result.goal("(a) idle CPU at the defaults", default < GOAL_IDLE_DEFAULT_CPU, f"{default:.2f}% (< 2%; RSS < 80 MB)")
    fast = idle(root, args, 1, 1, 15.0, result)
    result.goal("(a) idle CPU, heartbeat and loop 1 s", fast < GOAL_IDLE_FAST_CPU, f"{fast:.2f}% (< 10%; RSS < 80 MB)")
    idle_baseline(root, result)


if __name__ == "__main__":
    sys.exit(main())
