"""One goose run, supervised from a coroutine of the daemon's event loop (no wrapper process).

`Run.execute()` goes: check the recipe -> take the task as the pass listed it (or read it) and check
that the agent may claim it (`core.policy`) -> in a cluster, claim it in etcd (service.claims: a
key only one host can create) and read it again -> write the lease (STARTING) -> claim it in
TinyTask with one update (assigned to the agent, `working`; the reply shows whether another writer
assigned it since the list) -> spawn goose in its own session with its output appended to a log file -> rewrite the
lease as RUNNING (pid, pgid, start ticks, boot id, owner) -> supervise (service.supervisor) ->
classify the outcome (core.outcomes) -> report it if the task is still ours (service.reporter) ->
remove the lease, last. A run that succeeds costs three requests: the claim, and the report's read
and update (four in a cluster, with the read after the etcd claim).

Why this order: at every instant a crash of the daemon leaves something the lease watcher can
reconcile. The lease exists before the task is `working` and before the process exists, and it
disappears only after TinyTask has been told how the run ended. The process writes to a file, not
to a pipe, and lives in its own session, so it survives a daemon crash.

When TinyTask cannot be told the outcome before the report deadline, the attempt book keeps it (a
failure is counted, a success is held) and the lease is deliberately left in place: its process is
dead, so the lease watcher requeues the task (only if it is still `working` and the agent's) once
TinyTask answers again, and removes the lease; a held success then completes the task at its next
claim instead of running the agent again. The lease watcher leaves alone the leases of runs still
supervised (whose `execute()` has not returned).

Stopped on request (daemon shutdown), a run is requeued with a comment and does not count as a failed
attempt. Cancelling `execute()` abandons the run: the process keeps running and the lease stays for
the recovery; call `request_stop()` and await `execute()` for an orderly stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from tinyscheduler.adapters.containment import RunCgroups
from tinyscheduler.adapters.process import ChildProcess, encoded, spawn
from tinyscheduler.adapters.procfs import process_start_ticks
from tinyscheduler.adapters.runlog import RunLog, header_prefix, output_pipe, spawn_keeper
from tinyscheduler.adapters.tinytask import Task, TinyTaskError, TinyTaskRejected
from tinyscheduler.config.registry import recipe_problem
from tinyscheduler.core.goose import base_environment, goose_command, output_format_of, run_variables
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import DEFAULT_EVIDENCE, EvidenceRule, Outcome, ProcessEnd, RunVerdict, read_evidence
from tinyscheduler.core.policy import claim_collision, claim_fields, claim_refusal, history_reset, yield_fields
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.text import iso
from tinyscheduler.service.reporter import OutcomeReporter, Reported
from tinyscheduler.service.session import EventSink, Output, Reason, RunDeps, RunSession, SessionSpec, reporter_for
from tinyscheduler.service.supervisor import LeaseKeeper, Limits

log = structlog.get_logger("tinyscheduler.runs")


@dataclass(frozen=True)
class RunPolicy:
    """Everything a run needs from the settings; plain data, built by the daemon."""

    goose_bin: str
    goose_args: tuple[str, ...]
    base_path: Path
    recipes_dir: Path
    task_log_dir: Path
    tinytask_url: str
    heartbeat_sec: float
    max_runtime_sec: float
    stop_grace_sec: float
    idle_timeout_sec: float  # 0 = off
    run_log_max_bytes: int
    host: str
    instance_id: str
    boot_id: str | None
    #: How long to keep trying to tell TinyTask how a run ended (see the module docstring).
    report_timeout_sec: float = 300.0
    #: Whether a blocked task may not be claimed (TINYSCHEDULER_DISABLE_BLOCKING turns it off).
    blocking: bool = True
    #: goose's --output-format (added unless goose_args has one) and what proves success with it.
    evidence: EvidenceRule = DEFAULT_EVIDENCE

    @property
    def limits(self) -> Limits:
        return Limits(self.heartbeat_sec, self.max_runtime_sec, self.stop_grace_sec, self.idle_timeout_sec)

    def log_path(self, task_id: int, attempt: int) -> Path:
        # Flat, no folder per task: a run's start allocates one inode, not two (2.0.0's
        # `<task>/<attempt>.log` is still read by `logs` and pruned by the retention).
        return self.task_log_dir / f"{task_id}.{attempt}.log"

    def spec(
        self, task_id: int, agent: str, attempt: int, *, elapsed_sec: float = 0.0, recorded: RunVerdict | None = None
    ) -> SessionSpec:
        return SessionSpec(
            task_id=task_id,
            agent=agent,
            attempt=attempt,
            limits=self.limits,
            evidence=self.evidence,
            report_timeout_sec=self.report_timeout_sec,
            log_path=self.log_path(task_id, attempt),
            elapsed_sec=elapsed_sec,
            recorded=recorded,
        )


@dataclass(frozen=True)
class RunRequest:
    task_id: int
    agent: str
    #: Recipe file name relative to `RunPolicy.recipes_dir`.
    recipe: str
    #: The queue whose unassigned task the claim assigns to the agent (None: it is already the agent's).
    queue: str | None = None
    #: Why the plan chose it (said with the assignment).
    reason: str = ""


@dataclass(frozen=True)
class RunResult:
    task_id: int
    agent: str
    attempt: int
    outcome: Outcome
    #: Why it did not start, or how it ended ("exit 1 after 42s").
    reason: str
    report: Reported = Reported.NONE
    log_path: Path | None = None
    exit_code: int | None = None
    duration_sec: float | None = None
    #: Why the run could not start when that is the host's doing, not the task's: it opens a breaker.
    start_failure: StartFailure | None = None

    @property
    def started(self) -> bool:
        return self.outcome is not Outcome.NOT_STARTED

    @property
    def spawn_failed(self) -> bool:
        return self.start_failure is not None


class StartFailure(enum.StrEnum):
    """Whose breaker a failed start opens (service.availability)."""

    #: The agent's: its recipe vanished, its command or launch failed.
    AGENT = "agent"
    #: Goose's, standing for every agent: the program is missing or not executable.
    GOOSE = "goose"
    #: TinyTask's writes, standing for every agent: the claim was not confirmed.
    TINYTASK = "tinytask"


class RecipeError(ValueError):
    """The recipe cannot be used; the message says which and why."""


def resolve_recipe(recipes_dir: Path, recipe: str) -> Path:
    """`recipes_dir/recipe`, refusing names that leave the folder (the registry's rule) or files
    that do not exist."""
    problem = recipe_problem(recipe, recipes_dir) if recipe else "is empty"
    if problem:
        raise RecipeError(f"recipe {recipe!r} {problem}")
    path = recipes_dir / recipe
    if not path.is_file():
        raise RecipeError(f"recipe {path} does not exist")
    return path


class Run:
    """A new run: claim the task, start goose, then hand over to a `RunSession`."""

    def __init__(self, request: RunRequest, policy: RunPolicy, deps: RunDeps, *, listed: Task | None = None) -> None:
        """`listed`: the task as the pass's list showed it a moment ago; the claim checks it instead of
        reading it once more (without it, the task is read first)."""
        self.request = request
        self.policy = policy
        self.deps = deps
        self._listed = listed
        self._attempt = deps.attempts.next_attempt(request.task_id)
        self._pid: int | None = None
        self._started_at: datetime | None = None
        self._lease: LeaseKeeper | None = None
        self._session: RunSession | None = None
        self._stop_reason: str | None = None
        self._stop_counted = False
        #: Set by a stop request: cuts report retries short.
        self._stop_requested = anyio.Event()
        self._log = log.bind(task_id=request.task_id, agent=request.agent)

    # --- what the daemon looks at ----------------------------------------------------------------

    @property
    def task_id(self) -> int:
        return self.request.task_id

    @property
    def agent(self) -> str:
        return self.request.agent

    @property
    def attempt(self) -> int:
        return self._attempt

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def started_at(self) -> datetime | None:
        return self._started_at

    @property
    def lease(self) -> Lease | None:
        """The lease as this run last wrote it (None before it exists)."""
        return self._lease.lease if self._lease is not None else None

    @property
    def log_path(self) -> Path:
        return self.policy.log_path(self.task_id, self._attempt)

    @property
    def on_event(self) -> EventSink | None:
        return self.deps.on_event

    @on_event.setter
    def on_event(self, sink: EventSink | None) -> None:
        self.deps = dataclasses.replace(self.deps, on_event=sink)

    @property
    def holds_slot(self) -> bool:
        """True until the process has ended (also while claiming, before it exists)."""
        return self._session is None or not self._session.process_ended

    def request_stop(self, reason: str, *, counted: bool = False) -> None:
        """Stop the run now through the ladder (a shutdown, an operator); the task gets requeued, or
        with `counted` the run is a failed attempt. A run not started yet is rolled back, uncounted."""
        if self._stop_reason is None:
            self._stop_reason, self._stop_counted = reason, counted
            self._stop_requested.set()
            if self._session is not None:
                self._session.request_stop(reason, counted=counted)

    # --- the run ---------------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        try:
            recipe = resolve_recipe(self.policy.recipes_dir, self.request.recipe)
        except RecipeError as exc:  # nothing claimed yet: nothing to roll back
            return self._not_started(str(exc), start_failure=StartFailure.AGENT)
        refused = await self._claim()
        if refused is not None:
            return refused
        extra = self.policy.goose_args
        extra = (*extra, *output_format_of(extra, self.policy.evidence.output_format)[1])
        command = [self.policy.goose_bin]
        try:
            command = goose_command(self.policy.goose_bin, recipe, self.task_id, self.agent, extra)
            process, output = launch(command, self.policy, self.deps, self.request, self._attempt)
        except Exception as exc:  # any failure to start (not only OSError): rolled back once, counted
            failure = StartFailure.GOOSE if getattr(exc, "filename", None) == command[0] else StartFailure.AGENT
            self._log.error("spawn_failed", reason=f"{type(exc).__name__}: {exc}", command=shlex.join(command))
            return await self._roll_back(f"spawn failed: {exc}", start_failure=failure)
        return await self._supervise(process, output)

    async def _claim(self) -> RunResult | None:
        """Check the task, write the lease, claim the task; a RunResult if not started."""
        assigning = self.request.queue is not None
        try:
            task = self._listed or await self.deps.client.get_task(self.task_id)
        except TinyTaskError as exc:
            return self._not_started(f"cannot read the task: {exc}")
        attempts = self.deps.attempts
        record = attempts.record(self.task_id)
        if history_reset(task, record):
            self._log.info("failed_tag_removed", reason="a person removed the tag; attempt history reset")
            attempts.forget(self.task_id)
            record = attempts.record(self.task_id)
        now = self.deps.clock()
        refusal = claim_refusal(task, self.agent, record, blocking=self.policy.blocking, now=now, assigning=assigning)
        if refusal:
            return self._not_started(f"not claimable: {refusal}")
        gate = await self.deps.claims.claim(self.task_id, self.agent, starting=True)  # before any write
        if not gate.ok:
            return self._not_started(f"not claimed: {gate.reason}")
        if self.deps.claims.shared:
            # Another host may have run the task since the list; whoever did reported it before its
            # claim went, so what TinyTask says now that the claim is ours is the truth.
            try:
                task = await self.deps.client.get_task(self.task_id)
            except TinyTaskError as exc:
                return self._not_started(f"cannot read the task: {exc}")
            refusal = claim_refusal(
                task, self.agent, record, blocking=self.policy.blocking, now=now, assigning=assigning
            )
            if refusal:
                return self._not_started(f"not claimable: {refusal}")
        if record.success_unreported:
            return await self._complete_held_success()
        self._attempt = attempts.next_attempt(self.task_id)
        self._lease = LeaseKeeper(self.deps.leases, self._starting_lease(now), self._log)
        try:
            await self._lease.create()
        except OSError as exc:
            return self._not_started(f"cannot write the lease: {exc}")
        try:
            claimed = await self.deps.client.update_task(self.task_id, **claim_fields(self.agent))
        except TinyTaskRejected as exc:  # refused: nothing changed on the server
            self.deps.leases.remove(self.task_id)
            return self._not_started(f"TinyTask refused to set the task working: {exc}")
        except TinyTaskError as exc:  # the change may have been applied even though no reply came
            return await self._roll_back(f"cannot set the task working: {exc}", start_failure=StartFailure.TINYTASK)
        collision = claim_collision(task, claimed, self.agent)
        if collision is not None:
            return await self._give_back(claimed, collision)
        if assigning:
            self._assigned()
        if self._stop_reason is not None:
            return await self._roll_back(f"stop requested before start ({self._stop_reason})")
        held = self.deps.held(self.agent, task.queue_name) if self.deps.held is not None else None
        if held is not None:  # paused while TinyTask answered: given back as it was, not counted
            return await self._roll_back(f"{held}; not started", fields=yield_fields(claimed))
        return None

    def _assigned(self) -> None:
        fields = {"agent": self.agent, "queue": self.request.queue, "reason": self.request.reason}
        # At debug: the run's `run_started` line names the queue (a log line is ~0.1 ms of a run's CPU).
        self._log.debug("assigned", **fields)
        if self.deps.on_event is not None:
            self.deps.on_event("assigned", {"task_id": self.task_id, **fields})

    async def _give_back(self, claimed: Task, why: str) -> RunResult:
        """Another writer assigned the task after our list, and our claim replaced it: theirs it is."""
        self._log.warning("claim_lost", winner=claimed.previous_assigned_to, reason=why)
        if await self._reporter().roll_back(fields=yield_fields(claimed)):
            self.deps.leases.remove(self.task_id)
        else:
            detail = "TinyTask unreachable: lease left for the recovery"
            self._log.error("rollback_unreported", reason=why, detail=detail)
        return self._not_started(f"not claimed: {why}")

    def _starting_lease(self, now: datetime) -> Lease:
        return Lease(
            task_id=self.task_id,
            agent=self.agent,
            pid=None,
            recipe=self.request.recipe,
            started_at=now,
            heartbeat=now,
            host=self.policy.host,
            state=LeaseState.STARTING,
            boot_id=self.policy.boot_id,
            owner=self.policy.instance_id,
            attempt=self._attempt,
            log_path=str(self.log_path),
        )

    async def _complete_held_success(self) -> RunResult:
        """An earlier run succeeded but could not say so; the recovery requeued it. Finish it."""
        try:
            await self.deps.client.set_status(self.task_id, "complete")
        except TinyTaskError as exc:
            return self._not_started(f"cannot complete the task of an earlier successful run: {exc}")
        self.deps.attempts.record_success(self.task_id)
        reason = "completed from an earlier successful run whose report had not reached TinyTask"
        self._log.info("task_completed", outcome=Outcome.SUCCEEDED.value, reason=reason)
        return RunResult(self.task_id, self.agent, self._attempt, Outcome.SUCCEEDED, reason, report=Reported.COMPLETED)

    async def _supervise(self, process: ChildProcess, output: Output) -> RunResult:
        assert self._lease is not None
        self._pid = process.pid
        self._started_at = self.deps.clock()
        keeper = output.keeper
        self._lease.update(
            state=LeaseState.RUNNING,
            pid=process.pid,
            pgid=process.pid,
            heartbeat=self._started_at,
            start_ticks=process_start_ticks(process.pid),
            keeper_pid=keeper.pid if keeper else None,
            keeper_ticks=process_start_ticks(keeper.pid) if keeper else None,
            cgroup=str(output.cgroup) if output.cgroup else None,
        )
        assigned = {"queue": self.request.queue} if self.request.queue is not None else {}
        self._log.info("run_started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path), **assigned)
        spec = self.policy.spec(self.task_id, self.agent, self._attempt)
        session = self._session = RunSession(
            spec, self.deps, process, self._lease, output, stop_requested=self._stop_requested
        )
        session.emit("started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path))
        try:
            verdict, report, end = await session.run(
                how=Reason.SPAWNED, stop_reason=self._stop_reason, stop_counted=self._stop_counted
            )
        finally:
            children, killed = self.deps.children, self.deps.keepers
            if children is not None:  # goose is reaped; a killed keeper is, or will be (KilledKeepers)
                children.discard(process.pid)
                if keeper is not None and not (killed is not None and keeper in killed):
                    children.discard(keeper.pid)
        return finished(session, verdict, report, end)

    # --- not started -----------------------------------------------------------------------------

    async def _roll_back(
        self, reason: str, *, start_failure: StartFailure | None = None, fields: dict[str, Any] | None = None
    ) -> RunResult:
        """We may have set the task working but no run exists: set it idle, then drop the lease.

        A start that failed for the host's reasons also says so in one comment on the task (once per
        failed start; the breaker it opens keeps those rare)."""
        comment = None
        if start_failure is not None:
            comment = (
                f"tinyscheduler: the run of {self.agent} on {self.policy.host} could not start: {reason}; "
                "the task is back in the queue (not counted as a failed attempt)"
            )
        if await self._reporter().roll_back(comment, fields):
            self.deps.leases.remove(self.task_id)
        else:
            self._log.error(
                "rollback_unreported",
                reason=reason,
                detail="TinyTask unreachable: the task may stay working; lease left for the recovery",
            )
        return self._not_started(reason, start_failure=start_failure)

    def _reporter(self) -> OutcomeReporter:
        spec = self.policy.spec(self.task_id, self.agent, self._attempt)
        return reporter_for(spec, self.deps, self._stop_requested, self._log, lambda *_args, **_fields: None)

    def _not_started(self, reason: str, *, start_failure: StartFailure | None = None) -> RunResult:
        self._log.info("run_not_started", reason=reason, attempt=self._attempt)
        return RunResult(
            self.task_id, self.agent, self._attempt, Outcome.NOT_STARTED, reason, start_failure=start_failure
        )


def finished(session: RunSession, verdict: RunVerdict, report: Reported, end: ProcessEnd) -> RunResult:
    """The result of a session that ran to its end, said as the `finished` event (with the tokens goose
    reported: the observer records it in the run history and the metrics)."""
    spec = session.spec
    pid = session.process.pid if session.process is not None else session.lease.lease.pid
    usage = read_evidence(end.tail).usage
    session.emit(
        "finished",
        pid=pid,
        attempt=spec.attempt,
        duration=end.duration_sec,
        log_path=str(spec.log_path),
        outcome=verdict.outcome.value,
        reason=verdict.detail,
        report=report.value,
        how=session.how.value,
        exit_code=end.returncode,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        total_tokens=usage.total_tokens,
        model=usage.model,
    )
    return RunResult(
        task_id=spec.task_id,
        agent=spec.agent,
        attempt=spec.attempt,
        outcome=verdict.outcome,
        reason=verdict.detail,
        report=report,
        log_path=spec.log_path,
        exit_code=end.returncode,
        duration_sec=end.duration_sec,
    )


def launch(
    command: list[str], policy: RunPolicy, deps: RunDeps, request: RunRequest, attempt: int
) -> tuple[ChildProcess, Output]:
    """The run's cgroup, log, pipe, keeper and goose; raises OSError with nothing left behind."""
    # Spawned directly, a goose that cannot be executed fails the spawn, naming it; through a
    # cgroup's shell it would be a run that exits 127, so it is looked for first.
    if deps.cgroups is not None and shutil.which(command[0]) is None:
        raise FileNotFoundError(2, "goose is not an executable program", command[0])
    task_id, agent = request.task_id, request.agent
    cgroup = deps.cgroups.create(task_id, attempt) if deps.cgroups is not None else None
    enter = (lambda argv: RunCgroups.entering(cgroup, argv)) if cgroup is not None else (lambda argv: argv)
    run_log = RunLog(policy.log_path(task_id, attempt), policy.run_log_max_bytes)
    header = f"{header_prefix(task_id, agent, attempt)}{iso(deps.clock())}: {shlex.join(redacted('', command))}\n"
    run_log.create(header)
    read_fd, write_fd = output_pipe()
    output = Output(run_log, read_fd, cgroup=cgroup)
    own = encoded(run_variables(task_id, agent, attempt, deps.leases.path(task_id), policy.tinytask_url))
    env = {**_encoded_base(deps.environ), **own}
    try:
        output.keeper = spawn_keeper(read_fd, own, enter=enter)
        if deps.children is not None:
            deps.children.add(output.keeper.pid)
        popen = spawn(enter(command), output_fd=write_fd, cwd=policy.base_path, env=env)
        if deps.children is not None:
            deps.children.add(popen.pid)
    except OSError as exc:
        run_log.append(f"--- tinyscheduler: could not start goose: {exc}\n")
        _discard(output, deps.children)
        raise
    finally:
        os.close(write_fd)
    return ChildProcess(popen), output


_ENCODED: list[tuple[Mapping[str, str], dict[bytes, bytes]]] = []


def _encoded_base(environ: Mapping[str, str]) -> dict[bytes, bytes]:
    """`base_environment` encoded, once per environment (the daemon's stays the same)."""
    if not _ENCODED or _ENCODED[0][0] is not environ:
        _ENCODED[:] = [(environ, encoded(base_environment(environ)))]
    return _ENCODED[0][1]


def _discard(output: Output, children: set[int] | None) -> None:
    """Undo a launch that failed half-way: the keeper, the pipe, the cgroup."""
    if output.keeper is not None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            output.keeper.kill()
            output.keeper.wait(5)
        if children is not None:
            children.discard(output.keeper.pid)
    output.close()
    if output.cgroup is not None:
        RunCgroups.kill(output.cgroup)
