"""One goose process from the moment it exists, spawned here or adopted from a previous daemon
instance, to its reported end: supervise it, kill what it left behind, classify how it ended from
its exit status and its own output, tell TinyTask once, remove the lease.
"""

from __future__ import annotations

import contextlib
import enum
import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.containment import RunCgroups, kill_tagged, reap_orphans, strays
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.process import RunProcess
from tinyscheduler.adapters.procfs import descendants
from tinyscheduler.adapters.runlog import Keeper, KilledKeepers, RunLog, drain
from tinyscheduler.adapters.tinytask import TinyTaskClient
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import EvidenceRule, Outcome, ProcessEnd, RunVerdict, classify
from tinyscheduler.service.claims import ClaimGate, NoClaims
from tinyscheduler.service.reporter import OutcomeReporter, Reported
from tinyscheduler.service.supervisor import LeaseKeeper, Limits, Supervision

log = structlog.get_logger("tinyscheduler.runs")

EventSink = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class RunDeps:
    """What every run of a daemon shares (its parts are adapters and callbacks, no settings)."""

    client: TinyTaskClient
    leases: LeaseStore
    attempts: AttemptBook
    clock: Callable[[], datetime]
    environ: Mapping[str, str]
    on_event: EventSink | None = None
    #: Called the moment a run's process has ended: its slot is free from then on.
    on_exit: Callable[[], None] | None = None
    #: Per-run cgroups, when systemd delegated the daemon's (adapters.containment).
    cgroups: RunCgroups | None = None
    #: The daemon's own child processes in use (goose runs, keepers), kept by the runs that spawn
    #: them: when set, orphans re-parented to the daemon (its subreaper) are reaped at each run's end;
    #: these are never touched.
    children: set[int] | None = None
    #: Whether the daemon is its runs' child subreaper (adapters.containment).
    subreaper: bool = False
    #: Where a run's keeper goes once killed, to be reaped later (the runner's; None: waited for).
    keepers: KilledKeepers | None = None
    #: What holds an agent's work now (an operator's pause: its text), asked again once the claim is
    #: in: a pause made while TinyTask answered starts nothing.
    held: Callable[[str, str | None], str | None] | None = None
    #: Whether this host may still write the task's outcome (service.claims; always, on one host).
    claims: ClaimGate = field(default_factory=NoClaims)


class Reason(enum.StrEnum):
    """How a session came to be, for its log lines."""

    SPAWNED = "spawned"
    ADOPTED = "adopted"
    SETTLED = "settled"


@dataclass
class Output:
    """Where a run's output goes: the log, the daemon's end of the pipe, and the keeper that holds it."""

    run_log: RunLog
    read_fd: int | None = None
    #: Our child when the daemon spawned it (reaped here); else only its pid is known.
    keeper: Keeper | None = None
    cgroup: Path | None = None

    def close(self) -> None:
        if self.read_fd is not None:
            os.close(self.read_fd)
            self.read_fd = None
        self.run_log.close()


@dataclass(frozen=True)
class SessionSpec:
    task_id: int
    agent: str
    attempt: int
    limits: Limits
    evidence: EvidenceRule
    report_timeout_sec: float
    log_path: Path
    #: How long the process had been running when this session began (an adopted run).
    elapsed_sec: float = 0.0
    #: The outcome a previous instance had already classified (a FINISHING lease).
    recorded: RunVerdict | None = None


class RunSession:
    def __init__(
        self,
        spec: SessionSpec,
        deps: RunDeps,
        process: RunProcess | None,
        lease: LeaseKeeper,
        output: Output,
        *,
        stop_requested: anyio.Event | None = None,
    ) -> None:
        self.spec = spec
        self.deps = deps
        self.process = process
        self.lease = lease
        self.output = output
        self.stop_requested = stop_requested or anyio.Event()
        self._log = log.bind(task_id=spec.task_id, agent=spec.agent)
        self._supervision: Supervision | None = None
        self._stop_reason: str | None = None
        self._stop_counted = False
        self.process_ended = process is None
        #: How this session came to be (said in its log lines, its `finished` event and the history).
        self.how = Reason.SPAWNED if process is not None else Reason.SETTLED

    @property
    def task_id(self) -> int:
        return self.spec.task_id

    @property
    def agent(self) -> str:
        return self.spec.agent

    def request_stop(self, reason: str, *, counted: bool = False) -> None:
        """Stop the process through the ladder; `counted`: as a failed attempt (else requeued)."""
        self.stop_requested.set()
        if self._supervision is not None:
            self._supervision.request_stop(reason, counted=counted)
        elif self._stop_reason is None:
            self._stop_reason, self._stop_counted = reason, counted

    async def run(
        self, *, how: Reason, stop_reason: str | None = None, stop_counted: bool = False
    ) -> tuple[RunVerdict, Reported, ProcessEnd]:
        self.how = how
        if stop_reason is not None and self._stop_reason is None:
            self._stop_reason, self._stop_counted = stop_reason, stop_counted
        if how is Reason.ADOPTED:
            await self._keep_claim()
        end = await self._supervise() if self.process is not None else await self._settle()
        self.process_ended = True
        verdict = self.spec.recorded or classify(end, self.spec.evidence)
        if self.spec.recorded is None:
            self.output.run_log.append(f"--- tinyscheduler: {verdict.outcome.value}: {verdict.detail}\n")
            # One rewrite: the process has ended (its slot is free) and how it ended.
            self.lease.update(state=LeaseState.FINISHING, outcome=verdict.outcome.value, outcome_detail=verdict.detail)
        elif self.lease.lease.state is not LeaseState.FINISHING:
            self.lease.update(state=LeaseState.FINISHING)
        if self.deps.on_exit is not None:
            self.deps.on_exit()
        self.output.close()
        report = await self._report(verdict, end)
        if report is not Reported.UNREPORTED:
            self.deps.leases.remove(self.task_id)
        self._log.info(
            "run_finished",
            pid=self.process.pid if self.process is not None else self.lease.lease.pid,
            attempt=self.spec.attempt,
            duration=round(end.duration_sec, 3),
            outcome=verdict.outcome.value,
            reason=verdict.detail,
            report=report.value,
            how=how.value,
        )
        return verdict, report, end

    async def _keep_claim(self) -> None:
        """A run of an earlier daemon goes on only while this host still holds its task."""
        claimed = await self.deps.claims.claim(self.task_id, self.agent, starting=False)
        if claimed.taken:
            self._log.warning("run_taken_over", reason=claimed.reason, detail="stopping it; another host has the task")
            self.request_stop(f"taken over: {claimed.reason}")

    async def _report(self, verdict: RunVerdict, end: ProcessEnd) -> Reported:
        """Tell TinyTask, if the task is still this host's to tell about (service.claims)."""
        claimed = await self.deps.claims.claim(self.task_id, self.agent, starting=False)
        if claimed.ok:
            return await self._reporter().report(verdict, end)
        if claimed.taken:
            self._log.warning("outcome_not_reported", outcome=verdict.outcome.value, reason=claimed.reason)
            return Reported.TAKEN_OVER
        self._log.error("outcome_unreported", outcome=verdict.outcome.value, reason=claimed.reason)
        return Reported.UNREPORTED

    async def _supervise(self) -> ProcessEnd:
        assert self.process is not None
        supervision = self._supervision = Supervision(
            self.process,
            limits=self.spec.limits,
            lease=self.lease,
            run_log=self.output.run_log,
            read_fd=self.output.read_fd,
            contain=self.contain,
            clock=self.deps.clock,
            log=self._log,
            elapsed_sec=self.spec.elapsed_sec,
        )
        if self._stop_reason is not None:
            supervision.request_stop(self._stop_reason, counted=self._stop_counted)
        return await supervision.run()

    async def _settle(self) -> ProcessEnd:
        """The process ended while no daemon watched: the rest of its output, then its evidence."""
        # Into the log before the keeper is killed: a daemon killed in between must not lose it.
        if self.output.read_fd is not None:
            drain(self.output.read_fd, self.output.run_log)
        await self.contain()
        if self.output.read_fd is not None:
            drain(self.output.read_fd, self.output.run_log)
        lease = self.lease.lease
        duration = max(0.0, (lease.heartbeat - lease.started_at).total_seconds())
        return ProcessEnd(None, duration, tail=self.output.run_log.tail())

    async def contain(self) -> None:
        """Kill whatever the run left behind, and its keeper.

        A run this daemon started (its keeper is our child) while it is the subreaper left all it
        left below the daemon: the daemon's children that are no run's, and theirs. With none (the
        usual end) only the keeper is killed, on the loop, and reaped later (`deps.keepers`);
        otherwise the sweep (it reads /proc, and kills a cgroup) runs in a thread."""
        deps, output, keeper = self.deps, self.output, self.output.keeper
        if deps.keepers is not None:
            deps.keepers.reap()  # those of earlier runs: off the list of children before it is read
        found = None
        if deps.subreaper and keeper is not None and deps.children is not None:
            found = strays(deps.children)
        if keeper is not None and deps.keepers is not None and found is not None and not found and not output.cgroup:
            # Nothing orphaned a moment ago: none to reap (a second listing of the daemon's children
            # costs as much as the first, which grows with the runs in flight), only the keeper to kill.
            deps.keepers.kill(keeper)
            return
        escaped = await anyio.to_thread.run_sync(self._sweep, found)
        if deps.children is not None:
            # On the loop, where no run is half spawned: never the exit status of a child of ours.
            reap_orphans(deps.children)
        if escaped:
            self._log.warning("run_leftovers_killed", processes=escaped)

    def _sweep(self, below: set[int] | None) -> int:
        """In a thread: kill the processes tagged with the run's lease (`below` these processes, or
        anywhere), its cgroup and its keeper; how many of them had escaped goose."""
        output, keeper = self.output, self.output.keeper
        among = descendants(below) if below is not None else None
        spare = (keeper.pid,) if keeper is not None else ()
        escaped = sum(not found.keeper for found in kill_tagged(self.deps.leases.path(self.task_id), spare, among))
        if keeper is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                keeper.kill()
                keeper.wait(5)
        if output.cgroup is not None and self.deps.cgroups is not None:
            escaped += RunCgroups.kill(output.cgroup)
        return escaped

    def _reporter(self) -> OutcomeReporter:
        return reporter_for(self.spec, self.deps, self.stop_requested, self._log, self.emit)

    def emit(self, name: str, **fields: Any) -> None:
        if self.deps.on_event is None:
            return
        try:
            self.deps.on_event(name, {"task_id": self.task_id, "agent": self.agent, **fields})
        except Exception as exc:  # an event sink's bug must not end a run
            self._log.error("event_sink_failed", event_name=name, reason=repr(exc))


def recorded_verdict(lease: Lease) -> RunVerdict | None:
    """The outcome a FINISHING lease recorded, if any and if it is one this version knows."""
    if lease.state is not LeaseState.FINISHING or lease.outcome is None:
        return None
    try:
        return RunVerdict(Outcome(lease.outcome), lease.outcome_detail or lease.outcome)
    except ValueError:
        return None


def reporter_for(
    spec: SessionSpec, deps: RunDeps, stop_requested: anyio.Event, log: Any, emit: Callable[..., None]
) -> OutcomeReporter:
    """What tells TinyTask about one run (its outcome, or a start rolled back)."""
    return OutcomeReporter(
        deps.client,
        deps.attempts,
        task_id=spec.task_id,
        agent=spec.agent,
        attempt=spec.attempt,
        log_path=str(spec.log_path),
        timeout_sec=spec.report_timeout_sec,
        stop_requested=stop_requested,
        now=deps.clock,
        log=log,
        emit=emit,
    )
