"""Runs of this host that no daemon watches: adopt the live ones, settle the ended ones.

A run belongs to the host, not to the daemon process that started it. After a crash, a `kill -9`, a
watchdog kill, a restart or an upgrade, the next daemon instance finds the runs of the one before
through their leases:

- alive: adopted. It is supervised like a run of our own (heartbeat, max runtime counted from its
  start, the stop ladder to its verified process group, its output pumped from the pipe its keeper
  still holds), and its outcome is reported when it ends. Its exit status went to its old parent, so
  the outcome is read from its output (core.outcomes).
- ended: settled. The rest of its output is taken from its keeper, and the outcome is read from it
  (or taken from the lease, when the previous instance had classified it already). Only a run whose
  output shows neither a `complete` nor an `error` is retried, as a counted attempt.
- lease written before its pid (the daemon died right after spawning): the process is found by the
  lease tag in its environment and adopted; if there is none, the run never started.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog

from tinyscheduler.adapters.process import AdoptedProcess
from tinyscheduler.adapters.procfs import Tagged, process_start_ticks, processes_tagged
from tinyscheduler.adapters.runlog import RunLog, drain, header_prefix, open_kept_pipe
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.service.run import RunPolicy, RunResult, finished
from tinyscheduler.service.session import Output, Reason, RunDeps, RunSession, recorded_verdict
from tinyscheduler.service.supervisor import LeaseKeeper

log = structlog.get_logger("tinyscheduler.runs")


class AdoptedRun:
    """A run this daemon did not start, supervised (alive) or settled (ended) to its reported end."""

    def __init__(self, session: RunSession, how: Reason) -> None:
        self.session = session
        self.how = how

    @property
    def task_id(self) -> int:
        return self.session.task_id

    @property
    def agent(self) -> str:
        return self.session.agent

    @property
    def attempt(self) -> int:
        return self.session.spec.attempt

    @property
    def pid(self) -> int | None:
        return self.session.lease.lease.pid

    @property
    def lease(self) -> Lease:
        return self.session.lease.lease

    @property
    def holds_slot(self) -> bool:
        return not self.session.process_ended

    def request_stop(self, reason: str, *, counted: bool = False) -> None:
        self.session.request_stop(reason, counted=counted)

    async def execute(self) -> RunResult:
        verdict, report, end = await self.session.run(how=self.how)
        return finished(self.session, verdict, report, end)


@dataclass(frozen=True)
class Host:
    """Who adopts: this daemon instance on this boot."""

    instance_id: str
    boot_id: str | None


def adopt(lease: Lease, policy: RunPolicy, deps: RunDeps, host: Host, *, alive: bool) -> AdoptedRun:
    """An adopted (`alive`) or settled run for `lease`, its log and pipe taken over."""
    now = deps.clock()
    run_log = RunLog(_log_path(lease, policy), policy.run_log_max_bytes)
    run_log.reopen(header_prefix(lease.task_id, lease.agent, lease.attempt))
    output = Output(run_log, _kept_pipe(lease), cgroup=Path(lease.cgroup) if lease.cgroup else None)
    bound = log.bind(task_id=lease.task_id, agent=lease.agent)
    taken = lease.with_changes(owner=host.instance_id, heartbeat=now)
    if alive:
        taken = taken.with_changes(state=LeaseState.RUNNING)
    keeper = LeaseKeeper(deps.leases, taken, bound)
    keeper.update()
    elapsed = max(0.0, (now - lease.started_at).total_seconds())
    spec = policy.spec(lease.task_id, lease.agent, lease.attempt, elapsed_sec=elapsed, recorded=recorded_verdict(lease))
    process = AdoptedProcess(taken, host.boot_id) if alive else None
    how = Reason.ADOPTED if alive else Reason.SETTLED
    bound.info(
        "run_adopted" if alive else "run_settling",
        pid=lease.pid,
        attempt=lease.attempt,
        previous_owner=lease.owner,
        running_sec=round(elapsed, 1),
        output_pipe=output.read_fd is not None,
    )
    return AdoptedRun(RunSession(spec, deps, process, keeper, output), how)


async def find_unrecorded(lease: Lease, store_path: Path, boot_id: str | None) -> Lease | None:
    """A lease written before its pid, completed from the tagged processes found in /proc: the goose
    process (to adopt) and its keeper. None when neither is there (the run never started).

    A keeper without a goose means goose ended, or never started: the keeper's pipe decides, so the
    lease is completed with the keeper alone.
    """
    tagged: list[Tagged] = await anyio.to_thread.run_sync(processes_tagged, store_path)
    goose = [t for t in tagged if not t.keeper]
    keepers = [t for t in tagged if t.keeper]
    if not goose and not keepers:
        return None
    changes: dict[str, object] = {"boot_id": boot_id}
    if keepers:
        changes |= {"keeper_pid": keepers[0].pid, "keeper_ticks": keepers[0].start_ticks}
    if goose:
        # The oldest tagged process is the one the daemon spawned; later ones are its own children.
        first = min(goose, key=lambda t: t.start_ticks)
        with contextlib.suppress(ProcessLookupError):
            changes |= {"pid": first.pid, "pgid": os.getpgid(first.pid), "start_ticks": first.start_ticks}
    return lease.with_changes(**changes)


def never_started(lease: Lease, policy: RunPolicy) -> bool:
    """After its keeper is drained: a lease without a pid whose log shows no output of goose."""
    if lease.pid is not None:
        return False
    run_log = RunLog(_log_path(lease, policy), policy.run_log_max_bytes)
    run_log.reopen(header_prefix(lease.task_id, lease.agent, lease.attempt))
    read_fd = _kept_pipe(lease)
    if read_fd is not None:
        drain(read_fd, run_log)
        os.close(read_fd)
    started = run_log.has_output()
    run_log.close()
    return not started


def _log_path(lease: Lease, policy: RunPolicy) -> Path:
    return Path(lease.log_path) if lease.log_path else policy.log_path(lease.task_id, lease.attempt)


def _kept_pipe(lease: Lease) -> int | None:
    """The run's output pipe from its keeper, if the keeper is still the process the lease names."""
    if lease.keeper_pid is None or process_start_ticks(lease.keeper_pid) != lease.keeper_ticks:
        return None
    return open_kept_pipe(lease.keeper_pid)
