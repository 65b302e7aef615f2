"""The daemon's life: one event loop composing the tick, the runs, the lease watcher, the watchdog
and the signal handlers (see docs/architecture.md).

- start: take the single-instance lock, recover (stop orphans, requeue dead runs) before READY=1;
- run: the pass runner (service.passes), the lease watcher (service.leasewatch), the watchdog
  (service.watchdog), one supervisor per run (service.runner), the pruning of old state
  (service.retention); all owned by one task group;
- signals: SIGTERM/SIGINT drain and stop (a second one skips the wait), SIGHUP reloads;
- control: the operator's pauses (read from state/pauses.json at start) and the control socket
  (service.control), in the same task group;
- stop: drain the runs for the shutdown grace, stop the rest through the ladder, release the lock;
- hand-off: a SIGTERM while systemd restarts the unit (`systemctl restart`, an upgrade) leaves the runs
  running: the daemon exits at once and the next instance adopts them (service.adopt).
"""

from __future__ import annotations

import gc
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters.attempt_book import AttemptBook
from tinyscheduler.adapters.containment import RunCgroups, become_subreaper
from tinyscheduler.adapters.files import make_private_folder
from tinyscheduler.adapters.goose_probe import GooseCheck
from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.lock import EXIT_LOCKED, InstanceLock, LockHeld
from tinyscheduler.adapters.logsetup import EventLog, configure_logging, set_identity
from tinyscheduler.adapters.pausestore import PauseStore, PausesUnreadable
from tinyscheduler.adapters.procfs import current_boot_id
from tinyscheduler.adapters.systemd import Notifier, restart_in_progress, watchdog_interval
from tinyscheduler.adapters.tinytask import TinyTaskClient
from tinyscheduler.config.settings import ConfigError, LoadedSettings, parse_http_addr
from tinyscheduler.core.attempts import RetryPolicy
from tinyscheduler.core.control import Pauses
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.availability import apply_goose_check, probe_goose
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.control import Controls, ControlServer
from tinyscheduler.service.guard import EXIT_REFUSED, standin_problem, unsafe_state
from tinyscheduler.service.leasewatch import LeaseWatcher
from tinyscheduler.service.passes import Hook, PassRunner
from tinyscheduler.service.reclaim import Reclaimer
from tinyscheduler.service.retention import Pruner
from tinyscheduler.service.runner import Runner
from tinyscheduler.service.runtime import Clock, Runtime, utcnow
from tinyscheduler.service.watchdog import ping_watchdog

if TYPE_CHECKING:
    from tinyscheduler.service.membership import ClusterMode

log = structlog.get_logger("tinyscheduler.daemon")

#: How often recovery and shutdown look whether the runs and reclaims they wait for are done.
UNTIL_POLL_SEC = 0.05
#: The longest an exit waits for the keepers killed at the last runs' ends to be reaped (SIGKILL:
#: a moment).
KEEPER_REAP_SEC = 2.0
#: The cyclic collector's thresholds once the daemon runs (Python's: 700, 10, 10). A run allocates a
#: few thousand short-lived objects, almost none in cycles: at 700 the young generation was collected
#: every few runs and the older ones so often that collection took ~3% of the CPU of a run.
GC_THRESHOLDS = (10_000, 20, 20)


@dataclass(frozen=True)
class Hooks:
    """Injection points for tests; production passes none."""

    #: Awaited at the start of every pass (a test wedges a pass with it to prove the watchdog).
    before_pass: Hook | None = None


def cluster_mode(rt: Runtime) -> ClusterMode | None:
    """The cluster mode the settings ask for (TINYSCHEDULER_ETCD_ENDPOINTS), or None: etcd is loaded
    only by a daemon in a cluster."""
    if not rt.config.settings.clustered:
        return None
    from tinyscheduler.service.membership import ClusterMode

    return ClusterMode.connect(rt)


class Scheduler:
    def __init__(
        self,
        loaded: LoadedSettings,
        *,
        once: bool = False,
        environ: dict[str, str] | None = None,
        hooks: Hooks | None = None,
        client: TinyTaskClient | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """`client` replaces the connection to TinyTask (the in-memory client of the service tests);
        `clock` is the wall clock every decision reads."""
        config = Configuration.load(loaded)
        s = config.settings
        environ = dict(os.environ if environ is None else environ)
        self.once = once
        self.hooks = hooks or Hooks()
        host, instance_id = socket.gethostname(), uuid.uuid4().hex[:12]
        # Every event record and journal entry says which host and which daemon instance wrote it.
        set_identity(host=host, instance=instance_id)
        self.runtime = Runtime(
            config=config,
            host=host,
            instance_id=instance_id,
            boot_id=current_boot_id(),
            environ=environ,
            store=LeaseStore(s.running_dir, s.quarantine_dir),
            attempts=AttemptBook(s.attempts_file, max_attempts=s.max_attempts, retry_base_sec=s.retry_base_sec),
            events=EventLog(s.log_dir, keep_days=s.log_keep_days),
            notifier=Notifier.from_environ(environ),
            clock=clock,
        )
        if client is not None:
            self.runtime.connection.use(client)
        # The tick loop must also keep coming back: a loop that stopped passing is as stuck as a pass.
        loop_timeout = None if once else 2 * s.loop_interval_sec + s.pass_timeout_sec
        self.gate = WatchdogGate(pass_timeout=s.pass_timeout_sec, loop_timeout=loop_timeout)
        self.passes: PassRunner | None = None
        self.pruner = Pruner(self.runtime)
        self._hurry = anyio.Event()
        #: Set by a SIGTERM of a systemd restart: exit without stopping the runs.
        self._handing_off = False
        #: The cluster mode (TINYSCHEDULER_ETCD_ENDPOINTS), None on one host.
        self.cluster: ClusterMode | None = None

    # --- for the demo and tests ------------------------------------------------------------------

    @property
    def config(self) -> Configuration:
        return self.runtime.config

    @property
    def instance_id(self) -> str:
        return self.runtime.instance_id

    def wake(self) -> None:
        self.runtime.tick.set()

    # --- the whole life ---------------------------------------------------------------------------

    async def serve(self) -> int:
        rt = self.runtime
        s = rt.config.settings
        goose = await probe_goose(rt, s)
        refused = unsafe_state(s) or await standin_problem(goose, s, rt.environ, rt.connection.lazy.health)
        if refused:
            await rt.connection.aclose()
            print(f"tinyscheduler: not started: {refused}", file=sys.stderr)
            return EXIT_REFUSED
        lock = InstanceLock(s.lock_file)
        try:
            lock.acquire(f"instance {rt.instance_id} config {rt.config.loaded.env_file or '-'}")
        except LockHeld as exc:
            print(f"tinyscheduler: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        try:
            rt.store.ensure()
            make_private_folder(s.task_log_dir)
            load_pauses(rt)
            # Orphans of the runs (a double fork, a child outliving goose) come to us, to be killed.
            subreaper = rt.subreaper = become_subreaper()
            self.cluster = cluster_mode(rt)
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                # Said once the signals are ours: a SIGHUP that follows "started" reloads, never kills.
                self._say_started(subreaper=subreaper)
                async with anyio.create_task_group() as group:
                    group.start_soon(self._handle_signals, signals)
                    refused = await self.cluster.join(group) if self.cluster is not None else None
                    if refused is not None:
                        print(f"tinyscheduler: not started: {refused}", file=sys.stderr)
                        group.cancel_scope.cancel()  # the signal handler would keep the group open
                        return EXIT_REFUSED
                    await self._live(group, goose)
                    if self.cluster is not None and not self._handing_off:  # a hand-off keeps the lease
                        await self.cluster.leave()
                    # On a hand-off this abandons the supervisors; their processes go on.
                    group.cancel_scope.cancel()
        finally:
            rt.observer.close()
            await rt.connection.aclose()
            if self.cluster is not None:
                await self.cluster.aclose()
            lock.release()
        log.info("stopped", pid=os.getpid(), instance=rt.instance_id)
        return 1 if self.once and self._once_failed() else 0

    def _once_failed(self) -> bool:
        """`run --once` fails when its pass failed, a run could not start, or goose is missing."""
        rt = self.runtime
        pass_failed = self.passes is not None and not self.passes.report.ok
        return pass_failed or rt.counters.snapshot().get("start_errors", 0) > 0 or rt.circuits.goose.failing

    async def _live(self, group: anyio.abc.TaskGroup, goose: GooseCheck) -> None:
        rt = self.runtime
        runner = Runner(rt, group, Reclaimer(rt, group), RunCgroups.detect(rt.environ))
        watcher = LeaseWatcher(rt, runner)
        self.passes = PassRunner(rt, runner, self.gate, before_pass=self.hooks.before_pass, refill=not self.once)
        # Listening before the recovery: an operator can pause or drain while runs are adopted.
        await group.start(ControlServer(Controls(rt, self._control_changed), rt.config.settings.control_socket).serve)
        # A goose that cannot run opens every agent's breaker: the daemon goes on, nothing starts.
        apply_goose_check(rt, goose)
        await self._observe(group)
        # Recovery before READY: the live runs of a previous instance adopted, the ended ones being
        # settled (a lease whose task could not be told stays for the next check).
        await watcher.check()
        await self._until(lambda: not rt.reclaiming, None)
        # What start-up made (modules, settings, the client) lives as long as the daemon: no
        # collection of the cyclic garbage collector needs to look at it again.
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        rt.notifier.ready()
        group.start_soon(ping_watchdog, rt, self.gate)
        group.start_soon(watcher.loop)
        group.start_soon(watcher.watch_folder)
        group.start_soon(self.pruner.loop)
        if self.once:
            await self.passes.run_pass()
        else:
            await self.passes.loop()
        await self._drain(runner)

    def _control_changed(self) -> None:
        """A control request changed something: say it in STATUS= now and plan again at once."""
        if self.passes is not None and self.passes.report.started_at:
            self.passes.publish()
        self.runtime.tick.set()

    async def _observe(self, group: anyio.abc.TaskGroup) -> None:
        """The run history's writer, and the HTTP listener when configured (bound before READY)."""
        rt = self.runtime
        group.start_soon(rt.observer.history.run)
        if watchdog_interval(rt.environ) is not None:
            rt.observer.gate = self.gate
        address = parse_http_addr(rt.config.settings.http_addr)
        if address is not None:
            from tinyscheduler.service.web import serve_http  # aiohttp only for a daemon that listens

            await group.start(serve_http, rt, address)

    def _say_started(self, *, subreaper: bool) -> None:
        rt = self.runtime
        s = rt.config.settings
        cgroups = RunCgroups.detect(rt.environ)
        log.info(
            "started",
            pid=os.getpid(),
            instance=rt.instance_id,
            host=rt.host,
            mode="once" if self.once else "daemon",
            limits=rt.config.limits,
            registry=str(s.agent_control_file) if rt.config.registry else None,
            containment=("cgroup per run" if cgroups else "process sweep") + (" + subreaper" if subreaper else ""),
        )
        for unknown in rt.config.loaded.unknown_keys:
            log.warning("unknown_setting", where=unknown, reason="not a TinyScheduler setting (a typo?); ignored")

    # --- signals, reload, shutdown ---------------------------------------------------------------

    async def _handle_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                await self.reload()
            elif self.runtime.stopping:
                log.warning(
                    "stop_hurried", signal=name, reason="second stop signal: runs are stopped now, without waiting"
                )
                self._hurry.set()
            elif signum == signal.SIGTERM and await anyio.to_thread.run_sync(restart_in_progress, self.runtime.environ):
                self.hand_off()
            else:
                self.request_stop(name)

    def hand_off(self) -> None:
        """Exit without stopping the runs in flight: the next instance adopts them."""
        rt = self.runtime
        log.info(
            "handing_off",
            runs=len(rt.runs),
            reason="systemd is restarting the service: runs go on and the next instance adopts them",
        )
        self._handing_off = True
        rt.stopping = True
        rt.notifier.stopping()
        rt.tick.set()

    def request_stop(self, cause: str = "request") -> None:
        """Stop as on SIGTERM: no new runs, drain the running ones, then return from serve()."""
        rt = self.runtime
        if rt.stopping:
            return
        log.info("stopping", cause=cause, runs=len(rt.runs))
        rt.stopping = True
        rt.notifier.stopping()
        rt.tick.set()

    async def reload(self) -> None:
        rt = self.runtime
        rt.notifier.reloading()
        try:
            fresh, changes = rt.config.reloaded()
        except ConfigError as exc:
            self._reload_refused("; ".join(exc.problems))
            return
        except Exception as exc:  # reload is total: whatever the files hold, the old configuration runs on
            log.exception("reload_crashed")
            self._reload_refused(f"{type(exc).__name__}: {exc}")
            return
        # Goose may have been installed (or the PATH or TINYSCHEDULER_GOOSE_BIN changed): check now.
        goose = await probe_goose(rt, fresh.settings)
        refused = await standin_problem(goose, fresh.settings, rt.environ, rt.connection.lazy.health)
        added = set(fresh.limits) - set(rt.config.limits)
        refused = refused or (await self.cluster.hold_new_agents(added) if self.cluster and added else None)
        if refused:
            self._reload_refused(refused)
            return
        if self.passes is not None:
            self.passes.reload_error = None
        old = rt.config
        rt.config = fresh
        s = fresh.settings
        configure_logging(s.log_level, s.log_format, s.log_dir, s.log_keep_days)
        rt.attempts.policy = RetryPolicy(s.max_attempts, s.retry_base_sec)
        if s.log_dir != old.settings.log_dir:
            rt.events = EventLog(s.log_dir, keep_days=s.log_keep_days)
        for name, (before, after) in changes.items():
            log.info("setting_changed", setting=name, old=redacted(name, before), new=redacted(name, after))
        log.info("reloaded", changed=len(changes))
        apply_goose_check(rt, goose)
        if self.cluster is not None:
            await self.cluster.reconfigure(set(old.limits))
        rt.notifier.ready()
        rt.tick.set()

    def _reload_refused(self, reason: str) -> None:
        rt = self.runtime
        rt.counters.add("reload_errors")
        log.error("reload_rejected", reason=reason, kept="the previous configuration")
        rt.notifier.ready()
        if self.passes is not None:
            self.passes.reload_error = reason
            self.passes.publish()

    async def _drain(self, runner: Runner) -> None:
        """Wait for runs (the grace period, unless hurried), then stop the rest with the ladder."""
        rt = self.runtime
        if self._handing_off:
            return
        if rt.runs and rt.stopping:
            grace = float(rt.config.settings.shutdown_grace_sec)
            log.info("draining", runs=len(rt.runs), grace_sec=grace)
            with anyio.move_on_after(grace):
                await self._until(lambda: not rt.runs, self._hurry)
            runner.stop_all("the scheduler is shutting down")
        await self._until(lambda: not rt.runs and not rt.reclaiming, None)
        await runner.reap_keepers(KEEPER_REAP_SEC)

    async def _until(self, done: Callable[[], bool], interrupt: anyio.Event | None) -> None:
        """Poll a condition (cheap: a few dict lookups) while keeping systemd's start or stop timeout
        extended, about once a second."""
        ladder = 2 * self.runtime.config.settings.stop_grace_sec + 10
        extended = -math.inf
        while not done() and not (interrupt is not None and interrupt.is_set()):
            if time.monotonic() - extended >= 1:
                self.runtime.notifier.extend_timeout(ladder + 5)
                extended = time.monotonic()
            with anyio.move_on_after(UNTIL_POLL_SEC):
                await (interrupt or anyio.Event()).wait()


def load_pauses(rt: Runtime) -> None:
    """The operator's pauses outlive the daemon; an unreadable file holds the host (core.control)."""
    store = PauseStore(rt.config.settings.pauses_file)
    try:
        rt.pauses = store.load()
    except PausesUnreadable as exc:
        log.error("pauses_unreadable", file=str(exc.path), reason=exc.why, detail="the host starts nothing")
        rt.pauses = Pauses.unreadable(str(exc.path), exc.why, rt.clock())
    for pause in rt.pauses.items:
        log.warning("paused", scope=pause.scope.value, target=pause.target, reason=pause.text)
