"""The runs of this host that this daemon supervises: started here, or adopted, each in its own task.

Every run is owned by the daemon's task group and forgotten when it ends. The runner also answers
what they hold: slots (until a run's process has ended) and the daemon's own child processes. When
a run's process ends its slot is offered at once (`on_slot_freed`, service.refill), and when a run is
done the pass loop may want to look again (`on_run_done`); both wake a pass unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import anyio.abc
import structlog

from tinyscheduler.adapters.containment import RunCgroups, kill_tagged
from tinyscheduler.adapters.runlog import KilledKeepers
from tinyscheduler.adapters.tinytask import Task
from tinyscheduler.config.registry import agent_recipe_name
from tinyscheduler.core.goose import output_format_of
from tinyscheduler.core.leases import Lease
from tinyscheduler.core.outcomes import EvidenceRule, OutputFormat
from tinyscheduler.core.planner import LeaseDecision, LeaseVerdict, Start
from tinyscheduler.service.adopt import Host, adopt, find_unrecorded, never_started
from tinyscheduler.service.availability import note_claim_unconfirmed, note_run_ended, note_start_failed, unavailable
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.reclaim import Reclaimer
from tinyscheduler.service.run import Run, RunPolicy, RunRequest, RunResult, StartFailure
from tinyscheduler.service.runtime import Runtime
from tinyscheduler.service.session import RunDeps

log = structlog.get_logger("tinyscheduler.daemon")


class Supervised(Protocol):
    """What the daemon knows of each run it supervises, new or adopted."""

    @property
    def task_id(self) -> int: ...

    @property
    def agent(self) -> str: ...

    @property
    def pid(self) -> int | None: ...

    @property
    def lease(self) -> Lease | None: ...

    @property
    def holds_slot(self) -> bool: ...

    def request_stop(self, reason: str, *, counted: bool = False) -> None: ...

    async def execute(self) -> RunResult: ...


def evidence_rule(goose_args: list[str], output_format: str, text_success: str) -> EvidenceRule:
    """What proves a run's success, for the output format its command line will ask goose for."""
    chosen, _ = output_format_of(goose_args, output_format)
    try:
        fmt = OutputFormat(chosen)
    except ValueError:  # a format goose does not know: goose refuses it; judge like text meanwhile
        fmt = OutputFormat.TEXT
    return EvidenceRule(fmt, text_needs_output=text_success == "output")


def run_policy(runtime: Runtime) -> RunPolicy:
    """What every run needs from the current settings, as plain data."""
    s = runtime.config.settings
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
        host=runtime.host,
        instance_id=runtime.instance_id,
        boot_id=runtime.boot_id,
        blocking=not s.disable_blocking,
        evidence=evidence_rule(s.goose_argv, s.goose_output_format, s.text_success),
    )


class Runner:
    """Starts and adopts runs in the daemon's task group and forgets them when they end."""

    def __init__(
        self, runtime: Runtime, group: anyio.abc.TaskGroup, reclaimer: Reclaimer, cgroups: RunCgroups | None = None
    ) -> None:
        self.runtime = runtime
        self.group = group
        self.reclaimer = reclaimer
        self.cgroups = cgroups
        #: The daemon's own child processes in use (goose runs, keepers): the runs keep it.
        self.children: set[int] = set()
        #: Keepers killed at their run's end, reaped at a later run's end or pass.
        self.keepers = KilledKeepers(self.children)
        self._policy: tuple[Configuration, RunPolicy] | None = None
        #: A run's process ended: its agent has a free slot (by default: a pass now).
        self.on_slot_freed: Callable[[str], None] = lambda _agent: runtime.tick.set()
        #: A run is over, reported or not, with its result (None: its supervision crashed); by default
        #: a pass now.
        self.on_run_done: Callable[[int, RunResult | None], None] = lambda _task_id, _result: runtime.tick.set()

    def policy(self) -> RunPolicy:
        """What runs need from the settings, made once per configuration (a reload swaps it)."""
        config = self.runtime.config
        if self._policy is None or self._policy[0] is not config:
            self._policy = (config, run_policy(self.runtime))
        return self._policy[1]

    def deps(self, agent: str) -> RunDeps:
        rt = self.runtime
        return RunDeps(
            client=rt.connection.lazy,
            leases=rt.store,
            attempts=rt.attempts,
            clock=rt.clock,
            environ=rt.environ,
            on_event=self._record_event,
            on_exit=partial(self._slot_freed, agent),
            cgroups=self.cgroups,
            children=self.children,
            subreaper=rt.subreaper,
            keepers=self.keepers,
            held=self._held,
            claims=rt.claims,
        )

    def _held(self, agent: str, queue: str | None) -> str | None:
        pause = self.runtime.pauses.holding(agent, queue)
        return pause.text if pause is not None else None

    def launch(self, start: Start, task: Task) -> bool:
        """Start a planned run (the pass's, or a refill's) on the task as listed; False when its agent
        cannot start runs now (its breaker is open, or an operator paused it, its queue or the host),
        the host is fenced off its cluster, or the task is busy. A recipe that cannot be used is the
        run's to find (it does not start, and the agent's breaker opens)."""
        rt = self.runtime
        if start.task_id in rt.busy or start.agent in unavailable(rt, {start.agent}):
            return False
        if rt.claims.refusing_starts() is not None:
            return False  # fenced off the cluster (service.cluster): said there, once
        if self._held(start.agent, task.queue_name) is not None:
            return False  # paused by an operator since the plan was made
        recipe = agent_recipe_name(start.agent, rt.config.registry)
        self.start(RunRequest(start.task_id, start.agent, recipe, start.queue, start.reason), task)
        return True

    def start(self, request: RunRequest, listed: Task | None) -> None:
        run = Run(request, self.policy(), self.deps(request.agent), listed=listed)
        self._launch(run)

    def take_over(self, decision: LeaseDecision, lease: Lease) -> None:
        """Act on a lease no run of ours supervises (core.planner's verdict): adopt, settle, recover."""
        if lease.task_id in self.runtime.busy:
            return
        if decision.verdict is not LeaseVerdict.ADOPT and self.runtime.claims.refusing_reports():
            return  # fenced: nothing could be reported; a live run is still adopted, to be stopped
        if decision.verdict is LeaseVerdict.RECOVER:
            self.runtime.reclaiming.add(lease.task_id)
            self.group.start_soon(self.recover, lease)
        elif decision.verdict in (LeaseVerdict.ADOPT, LeaseVerdict.SETTLE):
            self.adopt(lease, alive=decision.verdict is LeaseVerdict.ADOPT)

    def adopt(self, lease: Lease, *, alive: bool) -> None:
        """Supervise a live run of a previous instance (`alive`), or settle one that ended unwatched."""
        host = Host(self.runtime.instance_id, self.runtime.boot_id)
        self.runtime.counters.add("runs_adopted" if alive else "runs_settled")
        self._launch(adopt(lease, self.policy(), self.deps(lease.agent), host, alive=alive))

    async def recover(self, lease: Lease) -> None:
        """A lease written before its pid: adopt the run found by its tag, or settle it, or requeue it."""
        rt = self.runtime
        try:
            found = await find_unrecorded(lease, rt.store.path(lease.task_id), rt.boot_id)
            if found is not None and found.pid is not None:
                log.warning("orphan_found", task_id=lease.task_id, pid=found.pid, reason="adopting the run by its tag")
                rt.reclaiming.discard(lease.task_id)
                self.adopt(found, alive=True)
                return
            if found is not None and not await anyio.to_thread.run_sync(never_started, found, self.policy()):
                rt.reclaiming.discard(lease.task_id)
                self.adopt(found, alive=False)
                return
            await anyio.to_thread.run_sync(kill_tagged, rt.store.path(lease.task_id))
        finally:
            rt.reclaiming.discard(lease.task_id)
        self.reclaimer.requeue_unstarted(lease)

    def _launch(self, run: Supervised) -> None:
        self.runtime.runs[run.task_id] = run
        self.runtime.agent_runs.setdefault(run.agent, {})[run.task_id] = run
        self.group.start_soon(self._supervise, run)

    def in_flight(self) -> dict[int, str]:
        """Runs whose process has not ended (or not started yet), by task id -> agent: they hold slots."""
        return {task_id: run.agent for task_id, run in self.runtime.runs.items() if run.holds_slot}

    async def reap_keepers(self, at_most: float) -> None:
        """Reap the keepers killed at the last runs' ends, waiting at most `at_most` seconds: the
        daemon leaves no zombie behind."""
        self.keepers.reap()
        with anyio.move_on_after(at_most):
            while len(self.keepers):
                await anyio.sleep(0.01)
                self.keepers.reap()

    def stop_all(self, reason: str) -> None:
        for run in list(self.runtime.runs.values()):
            run.request_stop(reason)

    async def _supervise(self, run: Supervised) -> None:
        rt = self.runtime
        result: RunResult | None = None
        try:
            result = await run.execute()
            rt.counters.add(f"runs_{result.outcome}")
            self._judge(run.agent, result)
        except Exception as exc:  # a bug in one run must not take the others down
            log.exception("run_crashed", task_id=run.task_id, agent=run.agent)
            rt.counters.add("runs_crashed")
            # Counted against the task (it gives up in the end) and the agent (its breaker opens):
            # whatever its lease says is settled or recovered by the lease watcher, once.
            rt.attempts.record_failure(run.task_id, "crashed", rt.clock())
            note_start_failed(rt, run.agent, f"the scheduler failed supervising a run: {type(exc).__name__}: {exc}")
        finally:
            await self._release(run.task_id)
            rt.runs.pop(run.task_id, None)
            rt.agent_runs.get(run.agent, {}).pop(run.task_id, None)
            self.on_run_done(run.task_id, result)

    def _slot_freed(self, agent: str) -> None:
        self.on_slot_freed(agent)

    async def _release(self, task_id: int) -> None:
        """The claim goes once the run is over and its lease with it (a lease left behind means the
        outcome is still to be told: the claim stays for whoever tells it)."""
        rt = self.runtime
        if not rt.claims.shared or rt.store.path(task_id).exists():
            return  # one host: no claim to release
        with anyio.CancelScope(shield=True), anyio.move_on_after(rt.config.settings.cluster_heartbeat_sec):
            await rt.claims.release(task_id)

    def _judge(self, agent: str, result: RunResult) -> None:
        """What the run's end says of its agent (and of goose): service.availability."""
        if result.start_failure is StartFailure.TINYTASK:
            note_claim_unconfirmed(self.runtime, result.reason)
        elif result.start_failure is not None:
            goose = result.start_failure is StartFailure.GOOSE
            note_start_failed(self.runtime, agent, result.reason, goose=goose)
        elif result.started:
            note_run_ended(self.runtime, agent, result.outcome, result.reason)

    def _record_event(self, event: str, fields: dict[str, Any]) -> None:
        self.runtime.events.record(event, **self.runtime.observer.run_event(event, fields))
