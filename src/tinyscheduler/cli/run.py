"""`tinyscheduler run`: the daemon (`--daemon`), one pass (`--once`), or the plan only (`--dry-run`)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import sys
from pathlib import Path

import anyio

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.history import HistoryStore
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.lock import is_locked, read_holder
from tinyscheduler.adapters.logsetup import configure_logging
from tinyscheduler.adapters.pausestore import PauseStore
from tinyscheduler.adapters.procfs import current_boot_id
from tinyscheduler.adapters.reading import read_bytes
from tinyscheduler.adapters.tinytask import TinyTaskError
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.cli.plan_view import render_plan
from tinyscheduler.cli.status import printable
from tinyscheduler.config.registry import RegistryError
from tinyscheduler.config.settings import LoadedSettings
from tinyscheduler.core.planner import plan
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.text import iso
from tinyscheduler.service.availability import from_published, goose_unavailable
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.gather import gather, planned_agents
from tinyscheduler.service.runtime import utcnow
from tinyscheduler.service.scheduler import Hooks, Scheduler


async def dry_run(loaded: LoadedSettings, *, json_output: bool) -> int:
    """Read TinyTask and the leases, print the plan, change nothing anywhere."""
    s = loaded.settings
    try:
        config = Configuration.load(loaded)
    except RegistryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    store = LeaseStore(s.running_dir, s.quarantine_dir, read_only=True)
    # Leases of a daemon that is running now are its own, not a previous instance's.
    instance_id = "dry-run"
    breakers: object = None
    if is_locked(s.lock_file):
        holder = read_holder(s.lock_file).split()
        instance_id = holder[holder.index("instance") + 1] if "instance" in holder else instance_id
        breakers = _daemon_breakers(s.last_pass_file)
    try:
        async with await connect(s.tinytask_url, s.tinytask_protocol) as client:
            pc = config.plan_config(client.features)
            now = utcnow()
            agents = planned_agents(pc)
            # What the daemon would skip: its open breakers, and goose if it cannot run now.
            unavailable = from_published(breakers, now) | await goose_unavailable(
                s.goose_bin, dict(os.environ), agents, now
            )
            attempts = AttemptBook(
                s.attempts_file, max_attempts=s.max_attempts, retry_base_sec=s.retry_base_sec, read_only=True
            )
            gathered = await gather(
                client,
                pc,
                store,
                now=now,
                host=socket.gethostname(),
                instance_id=instance_id,
                boot_id=current_boot_id(),
                not_before=attempts.not_before_all(),
                unavailable=unavailable,
                pauses=PauseStore(s.pauses_file).load_or_hold(now),
            )
            protocol = client.features.protocol
    except TinyTaskError as exc:
        print(
            printable([f"tinyscheduler: TinyTask at {s.tinytask_url} is unreachable or failed: {exc}"]),
            end="",
            file=sys.stderr,
        )
        return 1
    result = plan(gathered.snapshot, pc)
    if json_output:
        payload = {
            "dry_run": True,
            "tinytask": s.tinytask_url,
            "protocol": protocol,
            "mode": "queue" if pc.pools else "legacy",
            **result.to_json(),
            "malformed": [str(p) for p in gathered.problems],
            "quarantine_candidates": [{"file": str(q.original), "reason": q.reason} for q in gathered.quarantined],
        }
        print(json.dumps(redacted("", payload), indent=2, default=str))
    else:
        mode = f"queue mode ({len(pc.pools)} queue(s))" if pc.pools else "legacy mode (agent limits only)"
        header = (
            f"TinyScheduler dry run at {gathered.snapshot.now:%Y-%m-%d %H:%M:%S} UTC: "
            f"TinyTask {s.tinytask_url} ({protocol}), {mode}"
        )
        print(render_plan(result, gathered, header=header) + "\nDry run: nothing was assigned, started or written.")
    return 0


def _daemon_breakers(path: Path) -> object:
    try:
        return json.loads(read_bytes(path)).get("breakers")
    except (OSError, ValueError, RecursionError, AttributeError):
        return None


def run_command(
    loaded: LoadedSettings, *, once: bool, daemon: bool, json_output: bool, hooks: Hooks | None = None
) -> int:
    """Entry point of `tinyscheduler run` (the CLI has handled the kill switch and config errors)."""
    s = loaded.settings
    configure_logging(s.log_level, s.log_format, None if s.dry_run else s.log_dir, s.log_keep_days)
    if s.dry_run:
        return anyio.run(lambda: dry_run(loaded, json_output=json_output))

    built: list[Scheduler] = []

    async def serve() -> int:
        # Built inside the event loop: its events belong to that loop.
        built.append(Scheduler(loaded, once=once or not daemon, hooks=hooks or Hooks()))
        return await built[0].serve()

    try:
        code = anyio.run(serve)
    except RegistryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    if json_output and built:
        print(json.dumps(redacted("", once_summary(built[0], code)), indent=2, default=str))
    return code


def once_summary(scheduler: Scheduler, code: int) -> dict[str, object]:
    """What `run --once --json` prints: the pass, and the runs this invocation started, as they ended."""
    s = scheduler.config.settings
    runs = HistoryStore(s.history_file, read_only=True).runs() if s.history_file.exists() else []
    ours = [r for r in runs if r.instance == scheduler.instance_id and r.how == "spawned"]
    report = scheduler.passes.report if scheduler.passes is not None else None
    return {
        "exit_code": code,
        "instance": scheduler.instance_id,
        "pass": dataclasses.asdict(report) if report is not None else None,
        "started": [
            {
                "task_id": r.task_id,
                "agent": r.agent,
                "attempt": r.attempt,
                "started_at": iso(r.started_at),
                "ended_at": iso(r.ended_at),
                "outcome": r.outcome,
                "exit_code": r.exit_code,
                "log_path": r.log_path,
            }
            for r in sorted(ours, key=lambda r: (r.started_at, r.task_id))
        ],
    }
