#!/usr/bin/env python3
"""The baseline of the run benchmarks: the same workload with no daemon-side cost.

    python tests/bench/bare_spawner.py JOB.json

JOB: {"slots": N, "tasks": [task_id, ...], "goose": PATH, "env": {...}, "out": PATH}.
N slots take the tasks in order from one queue; each slot spawns goose for its next task (as agent
`slot-<n>`) the moment its previous process exits (a pidfd in an event loop, as the daemon waits),
and does nothing else: no TinyTask, no lease, no log. When every task is done it writes
{"cpu_sec": its own CPU time} to "out". SIGTERM ends it at once.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import subprocess
import sys
from collections import deque
from typing import Any


async def slot(number: int, queue: deque[int], job: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    env = {**os.environ, **job["env"]}
    while queue:
        task_id = queue.popleft()
        args = [job["goose"], "run", "--recipe", "bench.yaml", "--params", f"task_id={task_id}"]
        args += ["--params", f"agent=slot-{number}", "--no-session", "--output-format", "stream-json"]
        child = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        fd = os.pidfd_open(child.pid)
        ended = loop.create_future()
        loop.add_reader(fd, ended.set_result, None)
        await ended
        loop.remove_reader(fd)
        os.close(fd)
        child.wait()


async def main(job: dict[str, Any]) -> None:
    queue: deque[int] = deque(job["tasks"])
    await asyncio.gather(*(slot(number, queue, job) for number in range(job["slots"])))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    with open(job["out"], "w") as handle:
        json.dump({"cpu_sec": usage.ru_utime + usage.ru_stime}, handle)


if __name__ == "__main__":
    with open(sys.argv[1]) as source:
        asyncio.run(main(json.load(source)))
