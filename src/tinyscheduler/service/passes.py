"""The tick loop and one pass: gather -> plan (pure) -> act.

A pass runs every loop interval, and at once when a run ends, a lease is reclaimed or the
configuration is reloaded, within a pass budget (core.pacing: a burst of 5, then 5 per interval).
A pass that fails (TinyTask down, a full disk, a bug) is logged, counted and published, and the
next one comes sooner (2 s, doubling up to the loop interval); it never ends the daemon and never
acts on a partial view of TinyTask."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import structlog

from tinyscheduler.adapters.tinytask import Task, TaskProblem, TinyTaskClient, TinyTaskError
from tinyscheduler.config.registry import RegistryError, agent_recipe_path
from tinyscheduler.core.pacing import PassPacer
from tinyscheduler.core.planner import Plan, PlanConfig, plan
from tinyscheduler.core.text import iso
from tinyscheduler.core.waiting import waiting
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.availability import note_start_failed, recheck_goose_if_due, unavailable
from tinyscheduler.service.gather import gather, plan_config, planned_agents, queued_and_blocked
from tinyscheduler.service.leasewatch import note_quarantined
from tinyscheduler.service.run import RunRequest
from tinyscheduler.service.runner import Runner
from tinyscheduler.service.runtime import Runtime
from tinyscheduler.service.statusfile import PassReport, publish

log = structlog.get_logger("tinyscheduler.daemon")

#: First retry delay after a failed pass; doubles up to the loop interval.
PASS_RETRY_BASE_SEC = 2.0

Hook = Callable[[], Awaitable[None]]


class MalformedTasks:
    """Tasks TinyTask sends that cannot be used: one log line per task when it turns bad, not per pass."""

    def __init__(self) -> None:
        #: What was said, by task (its id as sent, which may be anything): the problem.
        self._said: dict[str, str] = {}

    def note(self, problems: tuple[TaskProblem, ...]) -> None:
        now: dict[str, str] = {}
        for problem in problems:
            key = repr(problem.task_id) if problem.task_id is not None else f"{problem.where} {problem.field}"
            now[key] = f"{problem.field}: {problem.message}"
            if self._said.get(key) != now[key]:
                log.warning(
                    "task_malformed",
                    task_id=problem.task_id,
                    field=problem.field,
                    reason=problem.message,
                    where=problem.where,
                    detail="skipped; said once per task until its problem changes",
                )
        # A task fixed (or gone) and broken again is said again.
        self._said = now


class PassRunner:
    def __init__(
        self,
        runtime: Runtime,
        runner: Runner,
        gate: WatchdogGate,
        *,
        before_pass: Hook | None = None,
    ) -> None:
        self.runtime = runtime
        self.runner = runner
        self.gate = gate
        #: Test hook: awaited at the start of every pass (a test wedges a pass with it).
        self.before_pass = before_pass
        self.report = PassReport()
        #: Why the last reload was refused, shown until a reload succeeds.
        self.reload_error: str | None = None
        self.malformed = MalformedTasks()
        self.pacer = PassPacer(float(runtime.config.settings.loop_interval_sec))

    async def loop(self) -> None:
        rt = self.runtime
        while not self._stopping():
            await self._paced()
            if self._stopping():
                return
            await self.run_pass()
            if self._stopping():
                return
            delay = float(rt.config.settings.loop_interval_sec)
            if not self.report.ok:
                delay = min(delay, PASS_RETRY_BASE_SEC * 2 ** (self.report.consecutive_failures - 1))
            await rt.tick.wait(delay)

    async def _paced(self) -> None:
        """Wait for the pass budget (core.pacing): whatever wakes the loop, passes never storm."""
        pacer = self.pacer
        pacer.interval_sec = float(self.runtime.config.settings.loop_interval_sec)  # a reload may change it
        while (wait := pacer.wait_sec(time.monotonic())) > 0 and not self._stopping():
            await self.runtime.tick.wait(wait)
        pacer.take(time.monotonic())

    def _stopping(self) -> bool:
        return self.runtime.stopping

    async def run_pass(self) -> None:
        rt = self.runtime
        started = time.monotonic()
        self.gate.pass_started(started)
        report = PassReport(started_at=iso(rt.clock()))
        try:
            if self.before_pass is not None:
                await self.before_pass()
            await self._body(report)
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
            report.busy = len(self.runner.in_flight())
            report.slots = sum(rt.config.limits.values())
            report.counters = rt.counters.snapshot()
            report.consecutive_failures = 0 if report.ok else self.report.consecutive_failures + 1
            self.report = report
            self.publish()
            rt.observer.pass_finished(report)

    def publish(self) -> None:
        publish(self.runtime, self.report, self.reload_error)

    def _fail(self, report: PassReport, error: str) -> None:
        report.ok = False
        report.error = error
        self.runtime.counters.add("pass_errors")
        log.error("pass_failed", error=error, consecutive=self.report.consecutive_failures + 1)

    def plan_config(self, client: TinyTaskClient) -> PlanConfig:
        c = self.runtime.config
        s = c.settings
        return plan_config(
            c.limits,
            c.registry,
            client.features,
            disable_blocking=s.disable_blocking,
            heartbeat_sec=s.heartbeat_sec,
            max_runtime_sec=s.max_runtime_sec,
        )

    async def _body(self, report: PassReport) -> None:
        rt = self.runtime
        await recheck_goose_if_due(rt)
        client = await rt.connection.client()
        config = self.plan_config(client)
        gathered = await gather(
            client,
            config,
            rt.store,
            now=rt.clock(),
            host=rt.host,
            instance_id=rt.instance_id,
            boot_id=rt.boot_id,
            supervised=rt.busy,
            in_flight=self.runner.in_flight(),
            not_before=rt.attempts.not_before_all(),
            unavailable=unavailable(rt, planned_agents(config)),
            pauses=rt.pauses,
        )
        self.malformed.note(gathered.problems)
        note_quarantined(rt, gathered.quarantined)
        result = plan(gathered.snapshot, config)
        report.queued, report.blocked = queued_and_blocked(gathered.snapshot)
        report.waiting = waiting(gathered.snapshot, result, blocking=not config.disable_blocking)
        report.malformed = len(gathered.problems)
        leases = {lease.task_id: lease for lease in gathered.snapshot.leases}
        for decision in result.recoveries:
            report.reclaimed += 1
            self.runner.take_over(decision, leases[decision.task_id])
        if rt.stopping:
            return
        if not rt.config.settings.enabled:
            log.warning("not_starting", reason="TINYSCHEDULER_ENABLED is false (reloaded); runs in flight continue")
            return
        await self._act(result, report, client)

    async def _act(self, result: Plan, report: PassReport, client: TinyTaskClient) -> None:
        lost, read_back = await self._assign(result, report, client)
        rt = self.runtime
        for start in result.starts:
            # A reclaim in flight may still requeue the task and remove its lease: a run started now
            # would have its task set idle and its lease deleted under it. The reclaim wakes a pass.
            if start.task_id in lost or start.task_id in rt.busy:
                continue
            if start.agent in unavailable(rt, {start.agent}):
                continue  # its breaker opened during this pass (another start of it failed)
            if rt.pauses.holding(start.agent, start.queue) is not None:
                continue  # paused by an operator while this pass ran
            try:
                recipe = agent_recipe_path(start.agent, rt.config.registry, rt.config.settings)
            except RegistryError as exc:
                note_start_failed(rt, start.agent, "; ".join(exc.problems))
                continue
            recipe_name = str(recipe.relative_to(rt.config.settings.recipes_dir))
            self.runner.start(RunRequest(start.task_id, start.agent, recipe_name), read_back.get(start.task_id))
            report.started += 1

    async def _assign(
        self, result: Plan, report: PassReport, client: TinyTaskClient
    ) -> tuple[set[int], dict[int, Task]]:
        """Assign the plan's unassigned queue tasks: (ids lost to another writer, tasks as read back)."""
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
            fields = {"agent": assignment.agent, "queue": assignment.queue, "reason": assignment.reason}
            self.runtime.events.record("assigned", task_id=task.id, **fields)
            log.info("assigned", task_id=task.id, **fields)
        return lost, read_back
