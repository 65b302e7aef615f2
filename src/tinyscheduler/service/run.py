"""One goose run, supervised from a coroutine of the daemon's event loop (no wrapper process).

`Run.execute()` goes: check the recipe -> read the task (or take the caller's fresh copy) and check
that the agent may claim it (`core.policy`) -> write the lease (STARTING) -> set the task `working`
-> spawn goose in its own session with its output appended to a log file -> rewrite the lease as
RUNNING (pid, pgid, start ticks, boot id, owner) -> supervise (service.supervisor) -> classify the
outcome (core.outcomes) -> report it if the task is still ours (service.reporter) -> remove the
lease, last.

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

import os
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.process import spawn
from tinyscheduler.adapters.procfs import process_start_ticks
from tinyscheduler.adapters.runlog import RunLog
from tinyscheduler.adapters.tinytask import Task, TinyTaskClient, TinyTaskError, TinyTaskRejected
from tinyscheduler.config.registry import recipe_problem
from tinyscheduler.core.goose import child_environment, goose_command, output_format_of
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import EvidenceRule, Outcome, ProcessEnd, classify
from tinyscheduler.core.policy import claim_refusal, history_reset
from tinyscheduler.service.reporter import OutcomeReporter, Reported
from tinyscheduler.service.supervisor import LeaseKeeper, Limits, Supervision

log = structlog.get_logger("tinyscheduler.runs")

EventSink = Callable[[str, dict[str, Any]], None]


def utcnow() -> datetime:
    return datetime.now(UTC)


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
    evidence: EvidenceRule = EvidenceRule()

    @property
    def limits(self) -> Limits:
        return Limits(self.heartbeat_sec, self.max_runtime_sec, self.stop_grace_sec, self.idle_timeout_sec)


@dataclass(frozen=True)
class RunRequest:
    task_id: int
    agent: str
    #: Recipe file name relative to `RunPolicy.recipes_dir`.
    recipe: str


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
    #: The goose process could not be started (bad binary, base path...): a host problem to count.
    spawn_failed: bool = False

    @property
    def started(self) -> bool:
        return self.outcome is not Outcome.NOT_STARTED


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
    def __init__(
        self,
        request: RunRequest,
        policy: RunPolicy,
        *,
        client: TinyTaskClient,
        leases: LeaseStore,
        attempts: AttemptBook,
        clock: Callable[[], datetime] = utcnow,
        environ: Mapping[str, str] | None = None,
        on_event: EventSink | None = None,
        fresh_task: Task | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        """`fresh_task`: the task as the caller read it back a moment ago (after assigning it);
        the claim then uses it instead of reading it once more. `on_exit` is called the moment the
        process has ended, before the outcome is reported: its slot is free from then on."""
        self.request = request
        self.policy = policy
        self.client = client
        self.leases = leases
        self.attempts = attempts
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self.on_event = on_event
        self._fresh_task = fresh_task
        self._on_exit = on_exit
        self._process_ended = False
        self._attempt = attempts.next_attempt(request.task_id)
        self._pid: int | None = None
        self._started_at: datetime | None = None
        self._lease: LeaseKeeper | None = None
        self._supervision: Supervision | None = None
        self._stop_reason: str | None = None
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
        return self.policy.task_log_dir / str(self.task_id) / f"{self._attempt}.log"

    @property
    def holds_slot(self) -> bool:
        """True until the process has ended (also while claiming, before it exists)."""
        return not self._process_ended

    def request_stop(self, reason: str) -> None:
        """Stop the run now through the ladder (e.g. daemon shutdown); the task gets requeued."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_requested.set()
            if self._supervision is not None:
                self._supervision.request_stop(reason)

    # --- the run ---------------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        try:
            recipe = resolve_recipe(self.policy.recipes_dir, self.request.recipe)
        except RecipeError as exc:
            return self._not_started(str(exc))
        refused = await self._claim()
        if refused is not None:
            return refused
        extra = self.policy.goose_args
        extra = (*extra, *output_format_of(extra, self.policy.evidence.output_format)[1])
        command = goose_command(self.policy.goose_bin, recipe, self.task_id, self.agent, extra)
        try:
            process = self._spawn(command)
        except OSError as exc:
            self._log.error("spawn_failed", reason=str(exc), command=shlex.join(command))
            return await self._roll_back(f"spawn failed: {exc}", spawn_failed=True)
        return await self._supervise_and_report(process)

    async def _claim(self) -> RunResult | None:
        """Read and check the task, write the lease, set the task working; a RunResult if not started."""
        try:
            task = self._fresh_task or await self.client.get_task(self.task_id)
        except TinyTaskError as exc:
            return self._not_started(f"cannot read the task: {exc}")
        record = self.attempts.record(self.task_id)
        if history_reset(task, record):
            self._log.info("failed_tag_removed", reason="a person removed the tag; attempt history reset")
            self.attempts.forget(self.task_id)
            record = self.attempts.record(self.task_id)
        refusal = claim_refusal(task, self.agent, record, blocking=self.policy.blocking, now=self.clock())
        if refusal:
            return self._not_started(f"not claimable: {refusal}")
        if record.success_unreported:
            return await self._complete_held_success()
        self._attempt = self.attempts.next_attempt(self.task_id)
        now = self.clock()
        self._lease = LeaseKeeper(self.leases, self._starting_lease(now), self._log)
        try:
            await self._lease.create()
        except OSError as exc:
            return self._not_started(f"cannot write the lease: {exc}")
        try:
            await self.client.set_status(self.task_id, "working")
        except TinyTaskRejected as exc:  # refused: nothing changed on the server
            self.leases.remove(self.task_id)
            return self._not_started(f"TinyTask refused to set the task working: {exc}")
        except TinyTaskError as exc:  # the change may have been applied even though no reply came
            return await self._roll_back(f"cannot set the task working: {exc}")
        if self._stop_reason is not None:
            return await self._roll_back(f"stop requested before start ({self._stop_reason})")
        return None

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
            await self.client.set_status(self.task_id, "complete")
        except TinyTaskError as exc:
            return self._not_started(f"cannot complete the task of an earlier successful run: {exc}")
        self.attempts.record_success(self.task_id)
        reason = "completed from an earlier successful run whose report had not reached TinyTask"
        self._log.info("task_completed", outcome=Outcome.SUCCEEDED.value, reason=reason)
        return RunResult(self.task_id, self.agent, self._attempt, Outcome.SUCCEEDED, reason, report=Reported.COMPLETED)

    def _spawn(self, command: list[str]) -> Any:
        run_log = RunLog(self.log_path, self.policy.run_log_max_bytes)
        header = (
            f"--- tinyscheduler: task {self.task_id}, agent {self.agent}, attempt {self._attempt}, "
            f"{self.clock().isoformat(timespec='seconds')}: {shlex.join(command)}\n"
        )
        fd = run_log.open_for_child(header)
        env = child_environment(
            self.environ,
            task_id=self.task_id,
            agent=self.agent,
            attempt=self._attempt,
            lease_path=self.leases.path(self.task_id),
            endpoint=self.policy.tinytask_url,
        )
        try:
            process = spawn(command, output_fd=fd, cwd=self.policy.base_path, env=env)
        except OSError as exc:
            run_log.append(f"--- tinyscheduler: could not start goose: {exc}\n")
            raise
        finally:
            os.close(fd)
        self._run_log = run_log
        return process

    async def _supervise_and_report(self, process: Any) -> RunResult:
        assert self._lease is not None
        self._pid = process.pid
        self._started_at = self.clock()
        self._lease.update(
            state=LeaseState.RUNNING,
            pid=process.pid,
            pgid=process.pid,
            heartbeat=self._started_at,
            start_ticks=process_start_ticks(process.pid),
        )
        self._log.info("run_started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path))
        self._emit("started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path))
        supervision = self._supervision = Supervision(
            process,
            limits=self.policy.limits,
            lease=self._lease,
            run_log=self._run_log,
            clock=self.clock,
            log=self._log,
        )
        if self._stop_reason is not None:
            supervision.request_stop(self._stop_reason)
        end = await supervision.run()
        return await self._finish(process.pid, end)

    async def _finish(self, pid: int, end: ProcessEnd) -> RunResult:
        assert self._lease is not None
        # The slot is free now; reporting (TinyTask round trips, maybe retries) must not hold it.
        self._lease.update(state=LeaseState.FINISHING)
        self._process_ended = True
        if self._on_exit is not None:
            self._on_exit()
        verdict = classify(end, self.policy.evidence)
        self._run_log.append(f"--- tinyscheduler: {verdict.outcome.value}: {verdict.detail}\n")
        self._run_log.cap()
        report = await self._reporter().report(verdict, end)
        if report is not Reported.UNREPORTED:
            self.leases.remove(self.task_id)
        fields = {"outcome": verdict.outcome.value, "reason": verdict.detail, "report": report.value}
        self._log.info("run_finished", pid=pid, attempt=self._attempt, duration=round(end.duration_sec, 3), **fields)
        self._emit(
            "finished", pid=pid, attempt=self._attempt, duration=end.duration_sec, log_path=str(self.log_path), **fields
        )
        return RunResult(
            task_id=self.task_id,
            agent=self.agent,
            attempt=self._attempt,
            outcome=verdict.outcome,
            reason=verdict.detail,
            report=report,
            log_path=self.log_path,
            exit_code=end.returncode,
            duration_sec=end.duration_sec,
        )

    def _reporter(self) -> OutcomeReporter:
        return OutcomeReporter(
            self.client,
            self.attempts,
            task_id=self.task_id,
            agent=self.agent,
            attempt=self._attempt,
            log_path=str(self.log_path),
            timeout_sec=self.policy.report_timeout_sec,
            stop_requested=self._stop_requested,
            now=self.clock,
            log=self._log,
            emit=self._emit,
        )

    # --- not started -----------------------------------------------------------------------------

    async def _roll_back(self, reason: str, *, spawn_failed: bool = False) -> RunResult:
        """We may have set the task working but no run exists: set it idle, then drop the lease."""
        if await self._reporter().roll_back():
            self.leases.remove(self.task_id)
        else:
            self._log.error(
                "rollback_unreported",
                reason=reason,
                detail="TinyTask unreachable: the task may stay working; lease left for the recovery",
            )
        return self._not_started(reason, spawn_failed=spawn_failed)

    def _not_started(self, reason: str, *, spawn_failed: bool = False) -> RunResult:
        self._log.info("run_not_started", reason=reason, attempt=self._attempt)
        return RunResult(
            self.task_id, self.agent, self._attempt, Outcome.NOT_STARTED, reason, spawn_failed=spawn_failed
        )

    def _emit(self, name: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(name, {"task_id": self.task_id, "agent": self.agent, **fields})
        except Exception as exc:  # an event sink's bug must not end a run
            self._log.error("event_sink_failed", event_name=name, reason=repr(exc))
