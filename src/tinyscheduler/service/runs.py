"""One Goose run, supervised from a coroutine of the daemon's event loop (no wrapper process).

`Run.execute()` goes: check the recipe -> re-read and claim the task -> write the lease (STARTING)
-> set the task `working` -> spawn goose in its own session (environment: the daemon's minus systemd's NOTIFY_SOCKET,
WATCHDOG_*, LISTEN_*; plus TINYSCHEDULER_TASK_ID, _AGENT, _ATTEMPT, _LEASE, TINYTASK_ENDPOINT and
GOOSE_MODE=auto unless set) with its output appended to a log file
-> rewrite the lease as RUNNING (pid, pgid, start ticks, boot id, owner) -> supervise (heartbeat,
log cap, max runtime, idle timeout, stop requests) -> classify the outcome -> report it if the task
is still ours -> remove the lease, last.

Why this order: at every instant a crash of the daemon leaves something the lease watcher can
reconcile. The lease exists before the task is `working` and before the process exists, and it
disappears only after TinyTask has been told how the run ended. The process writes to a file, not
to a pipe, and lives in its own session, so it survives a daemon crash and is stopped (or left to
finish) by the next instance through the lease.

Reporting when TinyTask is unreachable. The report (re-read, conditional PATCH, comments) is retried
with backoff (0.5 s doubling to 30 s) for at most `report_timeout_sec`. Before giving up the run
persists what it learned in the attempt book: a failure is counted (backoff and give-up still
work), a success is *held* (`AttemptBook.hold_success`). The lease is then deliberately left in
place: its process is dead, so the lease watcher requeues the task (conditionally: only if it is
still `working` and assigned to the agent) once TinyTask answers again, and removes the lease. When
the task is claimed next, a held success completes it instead of running the agent again. So no
outcome is lost and no successful work is repeated; a run stopped on request simply gets requeued.
Removing the lease instead would strand the task in `working` with nothing left to reconcile it.
The lease watcher must leave alone the leases of runs still supervised (whose `execute()` has not
returned): while a report is being retried the process is dead but the run is not over. Should the
task be requeued meanwhile anyway, the report finds it idle and still assigned to the agent and
writes nothing; a success stays held, so the agent's work is still not repeated.
Only a POST of a comment whose reply was lost can be duplicated (TinyTask has no idempotency keys).

Stopping is the ladder in `stop_process_group`: SIGINT to the process group, `stop_grace_sec` later
SIGTERM, the same later SIGKILL; then whatever is left of the group gets SIGKILL. Stopped on
request (daemon shutdown), a run is requeued with a comment and does not count as a failed
attempt. Cancelling `execute()` abandons the run: the process keeps running and the lease stays for
the recovery; call `request_stop()` and await `execute()` for an orderly stop.

The process is a `subprocess.Popen` child, awaited through a pidfd (no thread per child, no global
child watcher). Nothing else in the daemon may reap children it did not start (no SIGCHLD=SIG_IGN,
no waitpid(-1)); a stolen exit status would look like exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import structlog

from tinyscheduler.adapters.attempt_book import AttemptBook, AttemptRecord
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.procfs import process_start_ticks
from tinyscheduler.adapters.systemd import scrubbed_environ
from tinyscheduler.adapters.tinytask import TinyTaskClient, TinyTaskError, TinyTaskRejected
from tinyscheduler.config.registry import recipe_problem
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.outcomes import (
    TAIL_BYTES,
    Outcome,
    ProcessEnd,
    RunVerdict,
    StopCause,
    attempt_comment,
    classify,
    gave_up_comment,
    requeue_comment,
)
from tinyscheduler.core.tasks import FAILED_TAG, Task

log = structlog.get_logger("tinyscheduler.runs")

T = TypeVar("T")
EventSink = Callable[[str, dict[str, Any]], None]

#: Never wait longer than this between two attempts to reach TinyTask for a report.
REPORT_RETRY_MAX_SEC = 30.0


def _utcnow() -> datetime:
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
    max_attempts: int
    retry_base_sec: float
    host: str
    instance_id: str
    boot_id: str | None
    #: How long to keep trying to tell TinyTask how a run ended (see the module docstring).
    report_timeout_sec: float = 300.0


@dataclass(frozen=True)
class RunRequest:
    task_id: int
    agent: str
    #: Recipe file name relative to `RunPolicy.recipes_dir`.
    recipe: str


class Reported(enum.StrEnum):
    """What TinyTask was told when the run ended."""

    NONE = "none"
    COMPLETED = "completed"
    #: Back to idle: a failed attempt that will be retried, or a run stopped on request.
    REQUEUED = "requeued"
    #: Back to idle with the failed tag: attempts exhausted.
    GAVE_UP = "gave_up"
    #: The task was no longer ours (completed, transferred, reassigned): nothing written.
    LEFT_ALONE = "left_alone"
    #: TinyTask stayed unreachable; outcome kept in the attempt book, lease left for the recovery.
    UNREPORTED = "unreported"


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


def goose_command(request: RunRequest, policy: RunPolicy) -> list[str]:
    return [
        policy.goose_bin,
        "run",
        "--recipe",
        str(resolve_recipe(policy.recipes_dir, request.recipe)),
        "--params",
        f"task_id={request.task_id}",
        "--params",
        f"agent={request.agent}",
        "--no-session",
        *policy.goose_args,
    ]


def child_environment(
    base: Mapping[str, str], *, task_id: int, agent: str, attempt: int, lease_path: Path, endpoint: str
) -> dict[str, str]:
    env = scrubbed_environ(base)
    env.update(
        TINYSCHEDULER_TASK_ID=str(task_id),
        TINYSCHEDULER_AGENT=agent,
        TINYSCHEDULER_ATTEMPT=str(attempt),
        TINYSCHEDULER_LEASE=str(lease_path),
        TINYTASK_ENDPOINT=endpoint,
    )
    # Approval prompts fail headless runs; an operator's explicit choice still wins.
    env.setdefault("GOOSE_MODE", "auto")
    return env


def is_ours(task: Task, agent: str) -> bool:
    """Still the state our run left it in: working, and assigned to the agent that ran it."""
    return task.status == "working" and task.assigned_to == agent


async def patch_if_ours(
    client: TinyTaskClient, task_id: int, agent: str, fields_for: Callable[[Task], dict[str, Any]]
) -> tuple[bool, Task]:
    """Re-read the task and update it only if it is still ours: (written?, the task as read)."""
    task = await client.get_task(task_id)
    if not is_ours(task, agent):
        return False, task
    await client.update_task(task_id, **fields_for(task))
    return True, task


async def requeue_if_ours(client: TinyTaskClient, task_id: int, agent: str, comment: str | None) -> bool:
    """Set the task idle (with a comment) if it is still working and assigned to `agent`.

    One try; TinyTask errors propagate so the caller (the lease watcher) can retry on its schedule.
    """
    written, _ = await patch_if_ours(client, task_id, agent, lambda _task: {"status": "idle"})
    if not written:
        return False
    if comment:
        await client.add_comment(task_id, comment)
    return True


async def stop_process_group(
    pgid: int, is_gone: Callable[[], bool], grace: float, log: Any, *, poll_sec: float = 0.05
) -> str:
    """SIGINT, SIGTERM after `grace`, SIGKILL after `grace` more, to a whole process group.

    `is_gone` says whether the process that matters (the group leader) has ended: for a child of
    ours `lambda: proc.poll() is not None` (which also reaps it); for a process of a previous
    daemon instance `lambda: probe(lease, boot_id) is not Liveness.ALIVE`. Once it is gone, what
    is left of the group is killed. Returns the name of the last signal that was needed, "" if the
    process was gone before the first one.
    """
    last = ""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if is_gone():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        last = sig.name
        log.info("stop_signal", signal=last, pgid=pgid, grace=grace)
        # After SIGKILL only the kernel can be slow (e.g. a process in uninterruptible sleep).
        if await _wait_until(is_gone, max(grace, 5.0) if sig is signal.SIGKILL else grace, poll_sec):
            break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)  # leftovers of the group; no-op when it is empty
    return last


async def _wait_until(predicate: Callable[[], bool], timeout: float, poll_sec: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(poll_sec, remaining))
    return True


class RunLog:
    """The run's output file: appended to by the child, capped by us, keeping the tail.

    The child holds the file open (O_APPEND), so capping rewrites it in place: read the tail up
    to EOF, truncate, append a cut marker and the tail in one write. Output written in the few
    microseconds between the read and the truncation is lost; the marker says there was a cut.
    Between two checks the file may overshoot the cap by what the child writes in that time;
    the cap holds exactly once the run has ended. A log that disappears (removed by hand) or cannot
    be written (full disk) is logged, never allowed to end the supervision of a live process.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: Where this run's output starts (the file may hold earlier runs of the same attempt).
        self.start = 0
        self.cut_total = 0

    def open_for_child(self, header: str) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header.encode())
            self.start = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        return fd

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, text: str) -> None:
        try:
            with open(self.path, "ab") as handle:
                handle.write(text.encode())
        except OSError as exc:
            log.warning("run_log_write_failed", path=str(self.path), reason=str(exc))

    def cap(self) -> None:
        if self.max_bytes <= 0 or self.size() <= self.max_bytes:
            return
        try:
            self._cut()
        except OSError as exc:
            log.warning("run_log_cap_failed", path=str(self.path), reason=str(exc))

    def _cut(self) -> None:
        # Keep half the cap so a flood is rewritten once per max_bytes/2 of output, not on every check.
        keep = self.max_bytes // 2
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            cut = max(0, size - keep)
            # Read to EOF, output written since the stat included, within a bound a flood cannot stretch.
            chunks: list[bytes] = []
            offset = cut
            while offset < size + self.max_bytes and (chunk := os.pread(fd, 1 << 20, offset)):
                chunks.append(chunk)
                offset += len(chunk)
            tail = b"".join(chunks)
            newline = tail.find(b"\n")
            if 0 <= newline < len(tail) - 1:  # start the kept part on a whole line
                tail = tail[newline + 1 :]
                cut += newline + 1
            os.ftruncate(fd, 0)
            self.cut_total += cut
            marker = (
                f"[tinyscheduler: log capped at {self.max_bytes} bytes; {self.cut_total} bytes of "
                f"earlier output cut here]\n"
            ).encode()
            os.write(fd, marker + tail)
        finally:
            os.close(fd)
        self.start = len(marker) + max(0, self.start - cut)

    def tail(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(self.start, size - TAIL_BYTES))
                return handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            log.warning("run_log_read_failed", path=str(self.path), reason=str(exc))
            return ""


class _ExitSignal:
    """Sets `event` the moment the child exits, via a pidfd in the event loop (no thread per child).

    Without pidfd support (Linux < 5.3) nothing is registered and the supervisor's tick polls.
    """

    def __init__(self, pid: int, event: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        try:
            self._fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return
        self._loop.add_reader(self._fd, self._ready, event)

    def _ready(self, event: asyncio.Event) -> None:
        # The pidfd stays readable once the process has exited: unregister, or the loop would spin.
        self.close()
        event.set()

    def close(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None


class _Unreachable(Exception):
    """TinyTask did not answer before the report deadline."""


class Run:
    def __init__(
        self,
        request: RunRequest,
        policy: RunPolicy,
        *,
        client: TinyTaskClient,
        leases: LeaseStore,
        attempts: AttemptBook,
        clock: Callable[[], datetime] = _utcnow,
        environ: Mapping[str, str] | None = None,
        on_event: EventSink | None = None,
        fresh_task: Task | None = None,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        """`fresh_task`: the task as the caller read it back a moment ago (after assigning it);
        the claim then uses it instead of reading it once more. `on_exit` is called the moment the
        process has ended, before the outcome is reported: its slot is free from then on."""
        self.request = request
        self._fresh_task = fresh_task
        self._on_exit = on_exit
        self._process_ended = False
        self.policy = policy
        self.client = client
        self.leases = leases
        self.attempts = attempts
        self.clock = clock
        self.environ = os.environ if environ is None else environ
        self.on_event = on_event
        self._attempt = attempts.next_attempt(request.task_id)
        self._pid: int | None = None
        self._started_at: datetime | None = None
        self._lease: Lease | None = None
        self._log_file: RunLog | None = None
        self._stop_reason: str | None = None
        #: Set on a stop request and when the child exits: the supervisor wakes at once.
        self._wake = asyncio.Event()
        #: Set by a stop request only: cuts report retries short.
        self._stop_requested = asyncio.Event()
        self._failure: AttemptRecord | None = None
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
        return self._lease

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
            self._wake.set()
            self._stop_requested.set()

    # --- the run ---------------------------------------------------------------------------------

    async def execute(self) -> RunResult:
        try:
            command = goose_command(self.request, self.policy)
        except RecipeError as exc:
            return self._not_started(str(exc))
        try:
            task = self._fresh_task or await self.client.get_task(self.task_id)
        except TinyTaskError as exc:
            return self._not_started(f"cannot read the task: {exc}")
        refusal = self._refusal(task)
        if refusal:
            return self._not_started(refusal)
        if self.attempts.success_unreported(self.task_id):
            return await self._complete_held_success()
        self._attempt = self.attempts.next_attempt(self.task_id)

        now = self.clock()
        self._lease = Lease(
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
        try:
            # Durable, so it takes a few milliseconds: in a thread, the other runs go on meanwhile.
            await asyncio.to_thread(self.leases.write, self._lease)
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

        try:
            process = self._spawn(command)
        except OSError as exc:
            self._log.error("spawn_failed", reason=str(exc), command=shlex.join(command))
            return await self._roll_back(f"spawn failed: {exc}", spawn_failed=True)
        return await self._supervise_and_report(process)

    def _refusal(self, task: Task) -> str | None:
        if task.status != "idle":
            return f"task is {task.status}, not idle"
        if task.assigned_to != self.agent:
            return f"task is assigned to {task.assigned_to or 'no one'}, not {self.agent}"
        if task.is_currently_blocked:
            return f"task is blocked by task {task.blocked_by_task_id}"
        if task.failed_for_good:
            return f"task is tagged {FAILED_TAG}"
        if self.attempts.gave_up(self.task_id):
            # The tag is gone, so a person removed it: a fresh budget of attempts.
            self._log.info("failed_tag_removed", reason="a person removed the tag; attempt history reset")
            self.attempts.forget(self.task_id)
        not_before = self.attempts.not_before(self.task_id)
        if not_before is not None and self.clock() < not_before:
            return f"retry backoff until {not_before.isoformat(timespec='seconds')}"
        return None

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

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        run_log = RunLog(self.log_path, self.policy.run_log_max_bytes)
        header = (
            f"--- tinyscheduler: task {self.task_id}, agent {self.agent}, attempt {self._attempt}, "
            f"{self.clock().isoformat(timespec='seconds')}: {shlex.join(command)}\n"
        )
        fd = run_log.open_for_child(header)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=subprocess.STDOUT,
                cwd=self.policy.base_path,
                env=child_environment(
                    self.environ,
                    task_id=self.task_id,
                    agent=self.agent,
                    attempt=self._attempt,
                    lease_path=self.leases.path(self.task_id),
                    endpoint=self.policy.tinytask_url,
                ),
                start_new_session=True,  # own session and process group: the ladder reaches it all
            )
        except OSError as exc:
            run_log.append(f"--- tinyscheduler: could not start goose: {exc}\n")
            raise
        finally:
            os.close(fd)
        self._log_file = run_log
        return process

    async def _supervise_and_report(self, process: subprocess.Popen[bytes]) -> RunResult:
        assert self._lease is not None and self._log_file is not None
        began = time.monotonic()
        self._pid = process.pid
        self._started_at = self.clock()
        self._lease = self._lease.with_changes(
            state=LeaseState.RUNNING,
            pid=process.pid,
            pgid=process.pid,
            heartbeat=self._started_at,
            start_ticks=process_start_ticks(process.pid),
        )
        self._write_lease()
        self._log.info("run_started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path))
        self._emit("started", pid=process.pid, attempt=self._attempt, log_path=str(self.log_path))

        end = await self._supervise(process, began)
        # The slot is free now; reporting (TinyTask round trips, maybe retries) must not hold it.
        self._lease = self._lease.with_changes(state=LeaseState.FINISHING)
        self._write_lease()
        self._process_ended = True
        if self._on_exit is not None:
            self._on_exit()
        verdict = classify(end)
        self._log_file.append(f"--- tinyscheduler: {verdict.outcome.value}: {verdict.detail}\n")
        self._log_file.cap()
        report = await self._report(verdict, end)
        if report is not Reported.UNREPORTED:
            self.leases.remove(self.task_id)
        self._log.info(
            "run_finished",
            pid=process.pid,
            attempt=self._attempt,
            outcome=verdict.outcome.value,
            reason=verdict.detail,
            duration=round(end.duration_sec, 3),
            report=report.value,
        )
        self._emit(
            "finished",
            pid=process.pid,
            attempt=self._attempt,
            outcome=verdict.outcome.value,
            reason=verdict.detail,
            duration=end.duration_sec,
            report=report.value,
            log_path=str(self.log_path),
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

    async def _supervise(self, process: subprocess.Popen[bytes], began: float) -> ProcessEnd:
        assert self._log_file is not None
        policy = self.policy
        run_log = self._log_file
        exit_signal = _ExitSignal(process.pid, self._wake)
        heartbeat = asyncio.create_task(self._heartbeat())
        ladder: asyncio.Task[str] | None = None
        cause = StopCause.NONE
        last_size, last_output = run_log.size(), began
        try:
            while process.poll() is None:
                now = time.monotonic()
                size = run_log.size()
                if size != last_size:
                    last_output = now
                run_log.cap()
                last_size = run_log.size()
                if ladder is None:
                    cause = self._stop_cause(now - began, now - last_output)
                    if cause is not StopCause.NONE:
                        ladder = self._start_ladder(process, cause)
                # Wake for the exit, a stop request, the next check, or the next deadline.
                timeout = min(policy.heartbeat_sec, 1.0)
                if ladder is None:
                    timeout = min(timeout, max(0.0, policy.max_runtime_sec - (now - began)))
                    if policy.idle_timeout_sec > 0:
                        timeout = min(timeout, max(0.0, policy.idle_timeout_sec - (now - last_output)))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.01))
                self._wake.clear()
            duration = time.monotonic() - began
            stop_signal = await ladder if ladder is not None else None
        finally:
            exit_signal.close()
            heartbeat.cancel()
            if ladder is not None and not ladder.done():
                ladder.cancel()  # only when execute() itself is cancelled
        run_log.cap()
        return ProcessEnd(process.returncode, duration, cause, stop_signal, run_log.tail(), self._stop_reason or "")

    def _stop_cause(self, running: float, silent: float) -> StopCause:
        if self._stop_reason is not None:
            return StopCause.REQUEST
        if running >= self.policy.max_runtime_sec:
            return StopCause.MAX_RUNTIME
        if self.policy.idle_timeout_sec > 0 and silent >= self.policy.idle_timeout_sec:
            return StopCause.IDLE
        return StopCause.NONE

    def _start_ladder(self, process: subprocess.Popen[bytes], cause: StopCause) -> asyncio.Task[str]:
        assert self._lease is not None
        self._log.warning("run_stopping", pid=process.pid, attempt=self._attempt, reason=cause.value)
        self._lease = self._lease.with_changes(state=LeaseState.STOPPING)
        self._write_lease()
        return asyncio.create_task(
            stop_process_group(
                process.pid,
                lambda: process.poll() is not None,
                self.policy.stop_grace_sec,
                self._log.bind(pid=process.pid),
            )
        )

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.policy.heartbeat_sec)
            assert self._lease is not None
            self._lease = self._lease.with_changes(heartbeat=self.clock())
            self._write_lease()

    def _write_lease(self) -> None:
        # A rewrite (pid, heartbeat, stopping): atomic, not fsynced. A full disk must not end the
        # supervision; the next heartbeat tries again.
        assert self._lease is not None
        try:
            self.leases.write(self._lease, durable=False)
        except OSError as exc:
            self._log.error("lease_write_failed", reason=str(exc))

    # --- telling TinyTask -------------------------------------------------------------------------

    async def _report(self, verdict: RunVerdict, end: ProcessEnd) -> Reported:
        deadline = time.monotonic() + self.policy.report_timeout_sec
        try:
            if verdict.outcome is Outcome.SUCCEEDED:
                self.attempts.hold_success(self.task_id)  # first, so a crash right now loses nothing
                written, found = await self._patch_if_ours(deadline, lambda _task: {"status": "complete"})
                if not written:
                    return self._left_alone(found, succeeded=True)
                self.attempts.record_success(self.task_id)
                self._log.info("task_completed", attempt=self._attempt)
                return Reported.COMPLETED
            if end.stopped_by is StopCause.REQUEST:
                written, found = await self._patch_if_ours(deadline, lambda _task: {"status": "idle"})
                if not written:
                    return self._left_alone(found)
                await self._comment(deadline, requeue_comment(end.stop_reason, str(self.log_path)))
                self._emit("requeued", attempt=self._attempt, reason=end.stop_reason)
                return Reported.REQUEUED
            return await self._report_failure(verdict, deadline)
        except _Unreachable:
            if verdict.outcome is not Outcome.SUCCEEDED and end.stopped_by is not StopCause.REQUEST:
                self._count_failure(verdict)
            self._log.error(
                "outcome_unreported",
                reason="TinyTask unreachable; lease left for the recovery",
                outcome=verdict.outcome.value,
                attempt=self._attempt,
            )
            return Reported.UNREPORTED

    async def _report_failure(self, verdict: RunVerdict, deadline: float) -> Reported:
        def fields(task: Task) -> dict[str, Any]:
            record = self._count_failure(verdict)  # only once we know the task is still ours
            if not record.gave_up:
                return {"status": "idle"}
            return {"status": "idle", "tags": [*(t for t in task.tags if t != FAILED_TAG), FAILED_TAG]}

        written, found = await self._patch_if_ours(deadline, fields)
        if not written:
            return self._left_alone(found)
        record = self._count_failure(verdict)
        await self._comment(
            deadline, attempt_comment(self._attempt, self.policy.max_attempts, verdict, str(self.log_path))
        )
        if not record.gave_up:
            self._log.info(
                "task_requeued",
                reason="retry after backoff",
                attempt=self._attempt,
                outcome=verdict.outcome.value,
                not_before=record.not_before.isoformat() if record.not_before else None,
            )
            self._emit("requeued", attempt=self._attempt, reason=verdict.detail)
            return Reported.REQUEUED
        await self._comment(deadline, gave_up_comment(record.failures, FAILED_TAG))
        self._log.warning("gave_up", attempt=self._attempt, outcome=verdict.outcome.value)
        self._emit("gave_up", attempt=self._attempt, failures=record.failures, reason=verdict.detail)
        return Reported.GAVE_UP

    def _count_failure(self, verdict: RunVerdict) -> AttemptRecord:
        if self._failure is None:
            self._failure = self.attempts.record_failure(self.task_id, verdict.outcome.value, self.clock())
        return self._failure

    def _left_alone(self, found: Task | None, *, succeeded: bool = False) -> Reported:
        requeued = found is not None and found.status == "idle" and found.assigned_to == self.agent
        if requeued and not succeeded:
            # Idle and still the agent's: our own PATCH whose reply was lost, or a requeue by the
            # recovery or a person. Not completed, transferred or reassigned: the history (the
            # failure just counted, its backoff, the attempt budget) still applies.
            self._log.info(
                "task_left_alone", attempt=self._attempt, reason="already back in the queue; attempt history kept"
            )
            return Reported.LEFT_ALONE
        if succeeded and requeued:
            # Requeued (by the recovery or a person) before our report got through: keep the held
            # success, so the next claim completes the task instead of running the agent again.
            self._log.info(
                "success_held",
                reason="requeued before the success was reported; completes at its next claim",
                attempt=self._attempt,
            )
            return Reported.LEFT_ALONE
        # Completed, transferred or reassigned by someone else: their word stands, and our history
        # of this task (a held success included) no longer applies.
        self.attempts.forget(self.task_id)
        self._log.info(
            "task_left_alone",
            attempt=self._attempt,
            reason="completed, transferred or reassigned by someone else during the run",
        )
        return Reported.LEFT_ALONE

    async def _patch_if_ours(
        self, deadline: float, fields_for: Callable[[Task], dict[str, Any]]
    ) -> tuple[bool, Task | None]:
        try:
            return await self._retrying(
                lambda: patch_if_ours(self.client, self.task_id, self.agent, fields_for), deadline
            )
        except TinyTaskRejected as exc:  # e.g. deleted meanwhile: not ours to write any more
            self._log.warning("report_refused", reason=str(exc))
            return False, None

    async def _comment(self, deadline: float, text: str) -> None:
        # The state change is done; a comment that cannot be posted is logged, not fatal.
        try:
            await self._retrying(lambda: self.client.add_comment(self.task_id, text), deadline)
        except (_Unreachable, TinyTaskRejected) as exc:
            self._log.warning("comment_not_posted", comment=text, reason=str(exc) or "TinyTask unreachable")

    async def _retrying(self, call: Callable[[], Awaitable[T]], deadline: float) -> T:
        """`call` until it succeeds; refusals propagate, unreachability retries until the deadline.

        A stop request (the daemon is shutting down) ends the retries at once: the outcome is in the
        attempt book and the lease stays, so the next instance's recovery finishes the job.
        """
        wait = 0.5
        while True:
            try:
                return await call()
            except TinyTaskRejected:
                raise
            except TinyTaskError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop_reason is not None:
                    raise _Unreachable() from exc
                self._log.warning("report_retrying", reason=str(exc), retry_in=round(min(wait, remaining), 2))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), timeout=min(wait, remaining))
                wait = min(wait * 2, REPORT_RETRY_MAX_SEC)

    # --- not started -----------------------------------------------------------------------------

    async def _roll_back(self, reason: str, *, spawn_failed: bool = False) -> RunResult:
        """We may have set the task working but no run exists: set it idle, then drop the lease."""
        deadline = time.monotonic() + self.policy.report_timeout_sec
        try:
            await self._patch_if_ours(deadline, lambda _task: {"status": "idle"})
        except _Unreachable:
            self._log.error(
                "rollback_unreported",
                reason=reason,
                detail="TinyTask unreachable: the task may stay working; lease left for the recovery",
            )
        else:
            self.leases.remove(self.task_id)
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
