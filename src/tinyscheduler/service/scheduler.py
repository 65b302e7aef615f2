"""The daemon: one asyncio event loop composing the tick, the runs, the lease watcher, the watchdog
and the signal handlers.

- tick: every loop interval, and at once when a run ends, a lease is reclaimed or the
  configuration is reloaded: gather -> plan -> act.
- runs: one `runs.Run` supervisor coroutine per Goose process.
- lease watcher: every heartbeat interval, at start-up, and within a second of a lease file being
  removed or changed by hand: judge every lease no run of ours supervises, reclaim dead or orphaned
  ones, restore a lease removed by hand while its process lives.
- watchdog: pings systemd only while passes finish within their timeout.
- signals: SIGTERM/SIGINT drain and stop (a second one skips the wait), SIGHUP reloads.
A failing pass (TinyTask down, a bad task, a full disk) is logged, counted and retried with backoff;
it never ends the daemon.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from tinyscheduler.adapters import systemd
from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.files import write_json_atomic
from tinyscheduler.adapters.leasestore import LeaseStore, Quarantined
from tinyscheduler.adapters.lock import EXIT_LOCKED, InstanceLock, LockHeld, is_locked, read_holder
from tinyscheduler.adapters.logsetup import EventLog, configure_logging
from tinyscheduler.adapters.procfs import current_boot_id, probe, processes_tagged
from tinyscheduler.adapters.tinytask import TaskNotFound, TinyTaskClient, TinyTaskError
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.config.registry import (
    Registry,
    RegistryError,
    agent_recipe_path,
    effective_limits,
    load_registry,
)
from tinyscheduler.config.settings import ConfigError, LoadedSettings, Settings
from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.planner import LeaseDecision, LeaseVerdict, Plan, PlanConfig, Snapshot, judge_lease, plan
from tinyscheduler.core.redact import mask_url_passwords, redacted
from tinyscheduler.core.tasks import Task
from tinyscheduler.service.gather import Gathered, gather, plan_config, queued_and_blocked, render_plan
from tinyscheduler.service.runs import Run, RunPolicy, RunRequest, requeue_if_ours, stop_process_group

log = structlog.get_logger("tinyscheduler.daemon")

#: Settings read once at start: changing them needs a restart (the lock and leases live there).
RESTART_ONLY = ("base_path", "running_dir", "lock_file", "pass_timeout_sec")
#: How often the lease folder is checked for changes made by hand.
LEASE_DIR_POLL_SEC = 1.0
#: First retry delay after a failed pass; doubles up to the loop interval.
PASS_RETRY_BASE_SEC = 2.0
#: Test-only switch: while this file exists, passes hang (to prove the watchdog restarts us).
WEDGE_ENV = "TINYSCHEDULER_TEST_WEDGE_FILE"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Configuration:
    """Settings plus what is derived from them; swapped as a whole on reload."""

    loaded: LoadedSettings
    registry: Registry | None
    limits: dict[str, int]

    @property
    def settings(self) -> Settings:
        return self.loaded.settings

    @classmethod
    def load(cls, loaded: LoadedSettings) -> Configuration:
        s = loaded.settings
        registry = load_registry(s.agent_control_file, s.recipes_dir)
        return cls(loaded, registry, effective_limits(registry, s))


@dataclass
class PassReport:
    """The last pass, as STATUS, `status` and the journal show it."""

    started_at: str = ""
    duration_sec: float = 0.0
    ok: bool = True
    error: str | None = None
    busy: int = 0
    slots: int = 0
    queued: int = 0
    blocked: int = 0
    assigned: int = 0
    started: int = 0
    reclaimed: int = 0
    malformed: int = 0
    consecutive_failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)


class Scheduler:
    def __init__(self, loaded: LoadedSettings, *, once: bool = False, environ: dict[str, str] | None = None) -> None:
        self.config = Configuration.load(loaded)
        self.once = once
        self.environ = dict(os.environ if environ is None else environ)
        s = self.config.settings
        self.host = socket.gethostname()
        self.instance_id = uuid.uuid4().hex[:12]
        self.boot_id = current_boot_id()
        self.store = LeaseStore(s.running_dir, s.quarantine_dir)
        self.attempts = AttemptBook(s.attempts_file, max_attempts=s.max_attempts, retry_base_sec=s.retry_base_sec)
        self.events = EventLog(s.log_dir, keep_days=s.log_keep_days)
        self.notifier = systemd.Notifier.from_environ(self.environ)
        # The tick loop must also keep coming back: a loop that stopped passing is as stuck as a pass.
        self.gate = systemd.WatchdogGate(
            pass_timeout=s.pass_timeout_sec, loop_timeout=None if once else 2 * s.loop_interval_sec + s.pass_timeout_sec
        )
        self.client: TinyTaskClient | None = None
        self.runs: dict[int, Run] = {}
        self.reclaiming: set[int] = set()
        self.known_leases: dict[int, Lease] = {}
        self.report = PassReport()
        self.counters: dict[str, int] = {}
        self.reload_error: str | None = None
        self.stopping = False
        self._wake = anyio.Event()
        self._lease_change = anyio.Event()
        self._hurry = anyio.Event()
        self._connecting = anyio.Lock()
        self._group: anyio.abc.TaskGroup | None = None

    # --- the whole life ---------------------------------------------------------------------------

    async def serve(self) -> int:
        s = self.config.settings
        lock = InstanceLock(s.lock_file)
        try:
            lock.acquire(f"instance {self.instance_id} config {self.config.loaded.env_file or '-'}")
        except LockHeld as exc:
            print(f"tinyscheduler: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        try:
            self.store.ensure()
            s.task_log_dir.mkdir(parents=True, exist_ok=True)
            log.info(
                "started",
                pid=os.getpid(),
                instance=self.instance_id,
                host=self.host,
                mode="once" if self.once else "daemon",
                limits=self.config.limits,
                registry=str(s.agent_control_file) if self.config.registry else None,
            )
            for unknown in self.config.loaded.unknown_keys:
                log.warning("unknown_setting", where=unknown, reason="not a TinyScheduler setting (a typo?); ignored")
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                async with anyio.create_task_group() as group:
                    self._group = group
                    group.start_soon(self._handle_signals, signals)
                    # Recovery before READY: orphans stopped, dead runs requeued (bounded by the stop
                    # ladder and one TinyTask attempt each; a lease whose requeue failed stays).
                    await self._check_leases()
                    await self._until(lambda: not self.reclaiming, None)
                    self.notifier.ready()
                    group.start_soon(self._watchdog)
                    group.start_soon(self._lease_watcher)
                    group.start_soon(self._watch_lease_dir)
                    if self.once:
                        await self._pass()
                    else:
                        await self._tick_loop()
                    await self._drain()
                    group.cancel_scope.cancel()
        finally:
            if self.client is not None:
                await self.client.aclose()
            lock.release()
        log.info("stopped", pid=os.getpid(), instance=self.instance_id)
        return 0 if self.report.ok or not self.once else 1

    async def _tick_loop(self) -> None:
        while not self.stopping:
            await self._pass()
            if self.stopping:
                return
            s = self.config.settings
            delay = float(s.loop_interval_sec)
            if not self.report.ok:
                delay = min(delay, PASS_RETRY_BASE_SEC * 2 ** (self.report.consecutive_failures - 1))
            with anyio.move_on_after(delay):
                await self._wake.wait()
            self._wake = anyio.Event()

    def wake(self) -> None:
        self._wake.set()

    # --- one pass ---------------------------------------------------------------------------------

    async def _pass(self) -> None:
        started = time.monotonic()
        self.gate.pass_started(started)
        report = PassReport(started_at=utcnow().isoformat(timespec="seconds"))
        try:
            await self._wedge_if_asked()
            await self._pass_body(report)
        except TinyTaskError as exc:
            self._fail(report, f"TinyTask: {exc}")
        except OSError as exc:
            self._fail(report, f"{exc.strerror or exc} ({exc.filename or 'file system'})")
        except Exception as exc:  # a pass must never end the daemon; the traceback goes to the log
            log.exception("pass_crashed")
            self._fail(report, f"{type(exc).__name__}: {exc}")
        finally:
            finished = time.monotonic()
            self.gate.pass_finished(finished)
            report.duration_sec = round(finished - started, 3)
            report.busy = sum(run.holds_slot for run in self.runs.values())
            report.slots = sum(self.config.limits.values())
            report.counters = dict(self.counters)
            report.consecutive_failures = 0 if report.ok else self.report.consecutive_failures + 1
            self.report = report
            self._publish(report)

    def _fail(self, report: PassReport, error: str) -> None:
        report.ok = False
        report.error = error
        self._count("pass_errors")
        log.error("pass_failed", error=error, consecutive=self.report.consecutive_failures + 1)

    async def _pass_body(self, report: PassReport) -> None:
        client = await self._client()
        s = self.config.settings
        config = self._plan_config(client)
        gathered = await gather(
            client,
            config,
            self.store,
            now=utcnow(),
            host=self.host,
            instance_id=self.instance_id,
            boot_id=self.boot_id,
            supervised=frozenset(self.runs) | frozenset(self.reclaiming),
            in_flight={task_id: run.agent for task_id, run in self.runs.items() if run.holds_slot},
            not_before=self.attempts.not_before_all(),
        )
        for problem in gathered.problems:
            log.warning(
                "task_malformed",
                task_id=problem.task_id,
                field=problem.field,
                reason=problem.message,
                where=problem.where,
            )
        self._note_quarantined(gathered.quarantined)
        result = plan(gathered.snapshot, config)
        report.queued, report.blocked = queued_and_blocked(gathered.snapshot)
        report.malformed = len(gathered.problems)
        for decision in result.reclaims:
            report.reclaimed += 1
            self._start_reclaim(decision, gathered)
        if self.stopping:
            return
        if not s.enabled:
            log.warning("not_starting", reason="TINYSCHEDULER_ENABLED is false (reloaded); runs in flight continue")
            return
        await self._act(result, report)

    def _plan_config(self, client: TinyTaskClient) -> PlanConfig:
        s = self.config.settings
        return plan_config(
            self.config.limits,
            self.config.registry,
            client.features,
            disable_blocking=s.disable_blocking,
            heartbeat_sec=s.heartbeat_sec,
            max_runtime_sec=s.max_runtime_sec,
        )

    async def _act(self, result: Plan, report: PassReport) -> None:
        client = await self._client()
        lost: set[int] = set()
        read_back: dict[int, Task] = {}
        for assignment in result.assignments:
            try:
                await client.assign(assignment.task_id, assignment.agent)
                # Assignment is last-writer-wins on the server: read back before starting.
                task = await client.get_task(assignment.task_id)
            except TinyTaskError as exc:
                lost.add(assignment.task_id)
                log.warning("assign_failed", task_id=assignment.task_id, agent=assignment.agent, reason=str(exc))
                continue
            if task.assigned_to != assignment.agent:
                lost.add(assignment.task_id)
                log.warning(
                    "assign_lost",
                    task_id=task.id,
                    agent=assignment.agent,
                    winner=task.assigned_to,
                    reason="another writer assigned the task at the same time",
                )
                continue
            read_back[task.id] = task
            report.assigned += 1
            self.events.record(
                "assigned", task_id=task.id, agent=assignment.agent, queue=assignment.queue, reason=assignment.reason
            )
            log.info(
                "assigned", task_id=task.id, agent=assignment.agent, queue=assignment.queue, reason=assignment.reason
            )
        for start in result.starts:
            # A reclaim in flight may still requeue the task and remove its lease: a run started now
            # would have its task set idle and its lease deleted under it. The reclaim wakes a pass.
            if start.task_id in lost or start.task_id in self.runs or start.task_id in self.reclaiming:
                continue
            try:
                recipe = agent_recipe_path(start.agent, self.config.registry, self.config.settings)
            except RegistryError as exc:
                log.error("start_refused", task_id=start.task_id, agent=start.agent, reason="; ".join(exc.problems))
                continue
            recipe_name = str(recipe.relative_to(self.config.settings.recipes_dir))
            self._start_run(RunRequest(start.task_id, start.agent, recipe_name), read_back.get(start.task_id))
            report.started += 1

    def _start_run(self, request: RunRequest, fresh_task: Task | None) -> None:
        assert self._group is not None
        run = Run(
            request,
            self._run_policy(),
            client=self.client,
            leases=self.store,
            attempts=self.attempts,
            environ=self.environ,
            on_event=self._on_run_event,
            fresh_task=fresh_task,
            on_exit=self.wake,
        )
        self.runs[request.task_id] = run
        self._group.start_soon(self._supervise, run)

    async def _supervise(self, run: Run) -> None:
        try:
            result = await run.execute()
            self._count(f"runs_{result.outcome}")
            if result.spawn_failed:
                self._count("spawn_errors")
        except Exception:  # a bug in one run must not take the others down
            log.exception("run_crashed", task_id=run.task_id, agent=run.agent)
            self._count("runs_crashed")
        finally:
            self.runs.pop(run.task_id, None)
            self.wake()

    def _on_run_event(self, event: str, fields: dict[str, Any]) -> None:
        self.events.record(event, **fields)

    def _run_policy(self) -> RunPolicy:
        s = self.config.settings
        return RunPolicy(
            goose_bin=s.goose_bin,
            goose_args=tuple(s.goose_argv),
            base_path=s.base_path,
            recipes_dir=s.recipes_dir,
            task_log_dir=s.task_log_dir,
            tinytask_url=s.tinytask_url,
            heartbeat_sec=s.heartbeat_sec,
            max_runtime_sec=s.max_runtime_sec,
            stop_grace_sec=s.stop_grace_sec,
            idle_timeout_sec=s.idle_timeout_sec,
            run_log_max_bytes=s.run_log_max_bytes,
            max_attempts=s.max_attempts,
            retry_base_sec=s.retry_base_sec,
            host=self.host,
            instance_id=self.instance_id,
            boot_id=self.boot_id,
        )

    async def _client(self) -> TinyTaskClient:
        # Reclaims and the pass may all need the client at start-up: connect once, not once each.
        async with self._connecting:
            if self.client is None:
                await self._connect()
        assert self.client is not None
        return self.client

    async def _connect(self) -> None:
        s = self.config.settings
        self.client = await connect(s.tinytask_url, s.tinytask_protocol)
        features = self.client.features
        log.info("tinytask_connected", url=s.tinytask_url, protocol=features.protocol)
        if not features.queues:
            log.warning(
                "tinytask_limited",
                url=s.tinytask_url,
                reason="the server has no queues or blocking (old tinytask-mcp); running legacy mode: "
                "only tasks already assigned to agents start, blocking is not checked",
            )

    # --- leases: recovery and the watcher -----------------------------------------------------------

    async def _lease_watcher(self) -> None:
        while True:
            with anyio.move_on_after(self.config.settings.heartbeat_sec):
                await self._lease_change.wait()
            self._lease_change = anyio.Event()
            try:
                await self._check_leases()
            except Exception:
                log.exception("lease_check_crashed")

    async def _watch_lease_dir(self) -> None:
        """Notice leases removed or changed by hand within a second, without inotify."""
        last = None
        while True:
            current = await anyio.to_thread.run_sync(self._lease_dir_signature)
            names = {name for name, _ in current}
            lost_own = any(
                run.lease is not None and run.lease.pid is not None and self.store.path(task_id).name not in names
                for task_id, run in self.runs.items()
            )
            if lost_own or (last is not None and current != last):
                self._lease_change.set()
            last = current
            await anyio.sleep(LEASE_DIR_POLL_SEC)

    def _lease_dir_signature(self) -> frozenset[tuple[str, int]]:
        # Our own runs rewrite their leases every heartbeat: only names count for them.
        entries = set()
        try:
            with os.scandir(self.store.running_dir) as scan:
                for entry in scan:
                    if entry.name.startswith("."):
                        continue
                    match = entry.name.removeprefix("task_").removesuffix(".json")
                    ours = match.isdigit() and int(match) in self.runs
                    try:
                        mtime = 0 if ours else entry.stat().st_mtime_ns
                    except OSError:
                        # A symlink loop, a dangling link, an entry gone meanwhile: the lease scan
                        # quarantines what is bad; here it must not end the daemon.
                        mtime = -1
                    entries.add((entry.name, mtime))
        except FileNotFoundError:
            pass
        return frozenset(entries)

    async def _check_leases(self) -> None:
        scan = await anyio.to_thread.run_sync(self.store.scan)
        self._note_quarantined(scan.quarantined)
        present = {lease.task_id: lease for lease in scan.leases}
        # What we knew of each lease: the last scan, and for our own runs what they last wrote.
        remembered = dict(self.known_leases)
        remembered.update({task_id: run.lease for task_id, run in self.runs.items() if run.lease is not None})
        for task_id, lease in remembered.items():
            if task_id in present or task_id in self.reclaiming or lease.host != self.host:
                continue
            if probe(lease, self.boot_id) is Liveness.ALIVE:
                # Removed (or mangled and quarantined) by hand while its process runs: without the
                # lease nobody would ever reclaim the task, so put it back.
                await anyio.to_thread.run_sync(self.store.write, lease)
                present[task_id] = lease
                self._count("leases_restored")
                log.warning(
                    "lease_restored",
                    task_id=task_id,
                    agent=lease.agent,
                    pid=lease.pid,
                    reason="lease file removed or damaged by hand while its process is alive",
                )
        self.known_leases = present
        snapshot = Snapshot(
            now=utcnow(),
            host=self.host,
            instance_id=self.instance_id,
            leases=tuple(present.values()),
            liveness={t: probe(lease, self.boot_id) for t, lease in present.items()},
            supervised=frozenset(self.runs) | frozenset(self.reclaiming),
        )
        config = PlanConfig(
            limits=self.config.limits,
            heartbeat_sec=self.config.settings.heartbeat_sec,
            max_runtime_sec=self.config.settings.max_runtime_sec,
        )
        for lease in present.values():
            decision = judge_lease(lease, snapshot, config)
            if decision.verdict in (LeaseVerdict.REQUEUE, LeaseVerdict.STOP):
                self._start_reclaim(decision, None)

    def _start_reclaim(self, decision: LeaseDecision, gathered: Gathered | None) -> None:
        if decision.task_id in self.reclaiming or decision.task_id in self.runs or self._group is None:
            return
        lease = self.known_leases.get(decision.task_id)
        if gathered is not None:
            lease = next((l for l in gathered.snapshot.leases if l.task_id == decision.task_id), lease)
        if lease is None:
            return
        self.reclaiming.add(decision.task_id)
        self._group.start_soon(self._reclaim, lease, decision)

    async def _reclaim(self, lease: Lease, decision: LeaseDecision) -> None:
        s = self.config.settings
        log.warning(
            "reclaiming",
            task_id=lease.task_id,
            agent=lease.agent,
            pid=lease.pid,
            verdict=decision.verdict.value,
            reason=decision.reason,
        )
        # Wake the tick only when the lease went (a slot or a task may be free now): a reclaim that
        # changed nothing would be planned again by the pass it woke, and again, without end.
        removed = False
        try:
            if decision.verdict is LeaseVerdict.STOP:
                if lease.start_ticks is None:
                    # An original-schema lease cannot prove the PID is still its process: signalling
                    # could hit an unrelated program. Wait for it to end instead.
                    log.warning(
                        "reclaim_waiting",
                        task_id=lease.task_id,
                        pid=lease.pid,
                        reason="lease has no process start time; not signalling an unverifiable PID",
                    )
                    return
                stopping = lease.with_changes(state=LeaseState.STOPPING)
                self.store.write(stopping, durable=False)
                signal_used = await stop_process_group(
                    lease.pgid or lease.pid,
                    lambda: probe(lease, self.boot_id) is not Liveness.ALIVE,
                    s.stop_grace_sec,
                    log.bind(task_id=lease.task_id, agent=lease.agent, pid=lease.pid),
                )
                log.info("reclaim_stopped", task_id=lease.task_id, pid=lease.pid, signal=signal_used)
            elif lease.pid is None:
                await self._stop_unrecorded_runs(lease)
            client = await self._client()
            comment = (
                f"tinyscheduler: run on {self.host} (pid {lease.pid}, attempt {lease.attempt}) was reclaimed: "
                f"{decision.reason}; the task is back in the queue"
            )
            try:
                requeued = await requeue_if_ours(client, lease.task_id, lease.agent, comment)
            except TaskNotFound:
                # Deleted (or archived) meanwhile: nothing left to requeue, and the lease would
                # otherwise be retried, and refused, forever.
                requeued = False
                log.warning(
                    "reclaim_task_gone",
                    task_id=lease.task_id,
                    agent=lease.agent,
                    reason="the task no longer exists in TinyTask; removing its lease",
                )
            await anyio.to_thread.run_sync(self.store.remove, lease.task_id)
            removed = True
            self.known_leases.pop(lease.task_id, None)
            self._count("leases_reclaimed")
            self.events.record(
                "reclaimed",
                task_id=lease.task_id,
                agent=lease.agent,
                pid=lease.pid,
                reason=decision.reason,
                requeued=requeued,
            )
            log.info("reclaimed", task_id=lease.task_id, agent=lease.agent, reason=decision.reason, requeued=requeued)
        except TinyTaskError as exc:
            # The lease stays: the next check retries, so the task is never forgotten while TinyTask is down.
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=f"TinyTask: {exc}")
        except OSError as exc:
            log.error("reclaim_failed", task_id=lease.task_id, agent=lease.agent, reason=str(exc))
        finally:
            self.reclaiming.discard(lease.task_id)
            if removed:
                self.wake()

    async def _stop_unrecorded_runs(self, lease: Lease) -> None:
        """Stop a run whose pid never reached its lease (the scheduler died right after spawning it).

        Requeueing without this could start a second run of the task beside the orphan.
        """
        path = self.store.path(lease.task_id)
        for pid, ticks in await anyio.to_thread.run_sync(processes_tagged, path):
            found = lease.with_changes(pid=pid, start_ticks=ticks, boot_id=self.boot_id)
            try:
                group = os.getpgid(pid)
            except ProcessLookupError:
                continue
            log.warning(
                "orphan_found",
                task_id=lease.task_id,
                agent=lease.agent,
                pid=pid,
                reason="a run whose pid was never written to its lease; stopping it before requeueing",
            )
            await stop_process_group(
                group,
                lambda found=found: probe(found, self.boot_id) is not Liveness.ALIVE,
                self.config.settings.stop_grace_sec,
                log.bind(task_id=lease.task_id, agent=lease.agent, pid=pid),
            )

    # --- systemd, signals, reload, shutdown ---------------------------------------------------------

    async def _watchdog(self) -> None:
        interval = systemd.watchdog_interval(self.environ)
        if interval is None:
            return
        while True:
            if self.gate.healthy(time.monotonic()):
                self.notifier.watchdog()
            else:
                log.error("watchdog_withheld", reason="a pass is stuck beyond its timeout; systemd will restart us")
            await anyio.sleep(interval)

    async def _wedge_if_asked(self) -> None:
        wedge = self.environ.get(WEDGE_ENV)
        if not wedge:
            return
        with anyio.CancelScope(shield=True):
            while Path(wedge).exists():
                await anyio.sleep(0.1)

    async def _handle_signals(self, signals: Any) -> None:
        async for signum in signals:
            if signum == signal.SIGHUP:
                await self.reload()
            elif self.stopping:
                log.warning(
                    "stop_hurried",
                    signal=signal.Signals(signum).name,
                    reason="second stop signal: runs are stopped now, without waiting",
                )
                self._hurry.set()
            else:
                self.request_stop(signal.Signals(signum).name)

    def request_stop(self, cause: str = "request") -> None:
        """Stop as on SIGTERM: no new runs, drain the running ones, then return from serve()."""
        if self.stopping:
            return
        log.info("stopping", cause=cause, runs=len(self.runs))
        self.stopping = True
        self.notifier.stopping()
        self.wake()

    async def reload(self) -> None:
        self.notifier.reloading()
        old = self.config
        try:
            loaded = old.loaded.reload()
            fresh = Configuration.load(self._keep_restart_only(loaded, old))
        except (ConfigError, RegistryError) as exc:
            self.reload_error = "; ".join(exc.problems)
            self._count("reload_errors")
            log.error("reload_rejected", reason=self.reload_error, kept="the previous configuration")
            self.notifier.ready()
            self._publish(self.report)
            return
        self.reload_error = None
        changes = _changes(old.settings, fresh.settings)
        if old.limits != fresh.limits:
            changes["agent limits"] = (old.limits, fresh.limits)
        self.config = fresh
        s = fresh.settings
        configure_logging(s.log_level, s.log_format, s.log_dir, s.log_keep_days)
        self.attempts.max_attempts = s.max_attempts
        self.attempts.retry_base_sec = s.retry_base_sec
        if s.log_dir != old.settings.log_dir:
            self.events = EventLog(s.log_dir, keep_days=s.log_keep_days)
        for name, (before, after) in changes.items():
            log.info("setting_changed", setting=name, old=redacted(name, before), new=redacted(name, after))
        log.info("reloaded", changed=len(changes))
        self.notifier.ready()
        self.wake()

    def _keep_restart_only(self, loaded: LoadedSettings, old: Configuration) -> LoadedSettings:
        kept = {}
        for name in RESTART_ONLY:
            before, after = getattr(old.settings, name), getattr(loaded.settings, name)
            if before != after:
                log.warning(
                    "restart_needed",
                    setting=name,
                    old=str(before),
                    new=str(after),
                    reason="this setting cannot change while running; restart to apply it",
                )
                kept[name] = before
        return loaded.with_overrides(kept) if kept else loaded

    async def _drain(self) -> None:
        """Wait for runs (the grace period, unless hurried), then stop the rest with the ladder."""
        s = self.config.settings
        if self.runs and self.stopping:
            grace = float(s.shutdown_grace_sec)
            log.info("draining", runs=len(self.runs), grace_sec=grace)
            with anyio.move_on_after(grace):
                await self._until(lambda: not self.runs, self._hurry)
            for run in list(self.runs.values()):
                run.request_stop("the scheduler is shutting down")
        await self._until(lambda: not self.runs and not self.reclaiming, None)

    async def _until(self, done: Any, interrupt: anyio.Event | None) -> None:
        """Poll a condition while keeping systemd's start or stop timeout extended."""
        ladder = 2 * self.config.settings.stop_grace_sec + 10
        while not done() and not (interrupt is not None and interrupt.is_set()):
            self.notifier.extend_timeout(ladder + 5)
            with anyio.move_on_after(1):
                await (interrupt or anyio.Event()).wait()

    def _publish(self, report: PassReport) -> None:
        s = self.config.settings
        line = systemd.status_line(
            report.busy, report.slots, report.queued, report.blocked, report.duration_sec, report.error
        )
        if self.reload_error:
            line += f"; reload rejected, previous configuration kept: {self.reload_error}"
        self.notifier.status(line)
        data = asdict(report) | {
            "pid": os.getpid(),
            "instance": self.instance_id,
            "host": self.host,
            "reload_error": self.reload_error,
            "env_file": str(self.config.loaded.env_file) if self.config.loaded.env_file else None,
            "agent_control_file": str(s.agent_control_file) if self.config.registry else None,
            "limits": self.config.limits,
        }
        try:
            write_json_atomic(s.last_pass_file, data, mode=0o644, durable=False)
        except OSError as exc:
            log.error("status_write_failed", file=str(s.last_pass_file), reason=str(exc))

    def _note_quarantined(self, records: Sequence[Quarantined]) -> None:
        for record in records:
            self._count("leases_quarantined")
            log.error(
                "lease_quarantined", file=str(record.original), moved_to=str(record.moved_to), reason=record.reason
            )

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1


def _changes(old: Settings, new: Settings) -> dict[str, tuple[Any, Any]]:
    return {
        name: (getattr(old, name), getattr(new, name))
        for name in type(old).model_fields
        if getattr(old, name) != getattr(new, name)
    }


# --- run --dry-run -----------------------------------------------------------------------------------


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
    if is_locked(s.lock_file):
        holder = read_holder(s.lock_file).split()
        instance_id = holder[holder.index("instance") + 1] if "instance" in holder else instance_id
    try:
        async with await connect(s.tinytask_url, s.tinytask_protocol) as client:
            pc = plan_config(
                config.limits,
                config.registry,
                client.features,
                disable_blocking=s.disable_blocking,
                heartbeat_sec=s.heartbeat_sec,
                max_runtime_sec=s.max_runtime_sec,
            )
            attempts = AttemptBook(
                s.attempts_file, max_attempts=s.max_attempts, retry_base_sec=s.retry_base_sec, read_only=True
            )
            gathered = await gather(
                client,
                pc,
                store,
                now=utcnow(),
                host=socket.gethostname(),
                instance_id=instance_id,
                boot_id=current_boot_id(),
                not_before=attempts.not_before_all(),
            )
            protocol = client.features.protocol
    except TinyTaskError as exc:
        print(
            mask_url_passwords(f"tinyscheduler: TinyTask at {s.tinytask_url} is unreachable or failed: {exc}"),
            file=sys.stderr,
        )
        return 1
    result = plan(gathered.snapshot, pc)
    if json_output:
        payload = {
            "dry_run": True,
            "tinytask": mask_url_passwords(s.tinytask_url),
            "protocol": protocol,
            "mode": "queue" if pc.pools else "legacy",
            **result.to_json(),
            "malformed": [str(p) for p in gathered.problems],
            "quarantine_candidates": [{"file": str(q.original), "reason": q.reason} for q in gathered.quarantined],
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        mode = f"queue mode ({len(pc.pools)} queue(s))" if pc.pools else "legacy mode (agent limits only)"
        header = (
            f"TinyScheduler dry run at {gathered.snapshot.now:%Y-%m-%d %H:%M:%S} UTC: "
            f"TinyTask {mask_url_passwords(s.tinytask_url)} ({protocol}), {mode}"
        )
        print(render_plan(result, gathered, header=header) + "\nDry run: nothing was assigned, started or written.")
    return 0


def run_command(loaded: LoadedSettings, *, once: bool, daemon: bool, json_output: bool) -> int:
    """Entry point of `tinyscheduler run` (the CLI has handled the kill switch and config errors)."""
    s = loaded.settings
    configure_logging(s.log_level, s.log_format, None if s.dry_run else s.log_dir, s.log_keep_days)
    if s.dry_run:
        return anyio.run(lambda: dry_run(loaded, json_output=json_output))

    async def serve() -> int:
        # Built inside the event loop: its events belong to that loop.
        return await Scheduler(loaded, once=once or not daemon).serve()

    try:
        return anyio.run(serve)
    except RegistryError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
