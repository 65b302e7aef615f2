"""The tick loop and one pass: gather -> plan (pure) -> act.

A pass runs every loop interval, and at once when a run ends with nothing waiting for its slot
(service.refill), a lease is reclaimed or the configuration is reloaded, within a pass budget
(core.pacing: a burst of 5, then 5 per interval). It reads TinyTask with one paged list of the
idle tasks, or with one list per queue and per agent when that is cheaper (core.listing), and its
starts claim their tasks as listed (service.run). A pass that fails (TinyTask down, a full disk, a
bug) is logged, counted and published, and the next one comes sooner (2 s, doubling up to the loop
interval); it never ends the daemon and never acts on a partial view of TinyTask."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable

import structlog

from tinyscheduler.adapters.tinytask import TaskProblem, TinyTaskError
from tinyscheduler.core.listing import Backlog, Listing, choose_listing, listed_tasks
from tinyscheduler.core.pacing import PassPacer
from tinyscheduler.core.planner import Plan, Snapshot, plan
from tinyscheduler.core.text import iso
from tinyscheduler.core.waiting import waiting
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.availability import recheck_goose_if_due, unavailable
from tinyscheduler.service.gather import gather, planned_agents, queued_and_blocked
from tinyscheduler.service.leasewatch import note_quarantined
from tinyscheduler.service.refill import Refiller
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
        refill: bool = True,
    ) -> None:
        """`refill`: fill slots freed between passes without a pass (the daemon, not `run --once`)."""
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
        self.refiller = Refiller(runtime, runner) if refill else None
        #: What the last full list of idle tasks showed, and passes since (core.listing).
        self.backlog: Backlog | None = None
        self.passes_since_full = 0

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
            if not report.ok and self.refiller is not None:
                self.refiller.forget()
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

    async def _body(self, report: PassReport) -> None:
        rt = self.runtime
        self.runner.keepers.reap()  # those killed since the last run's end, should no run end soon
        await recheck_goose_if_due(rt)
        client = await rt.connection.client()
        config = rt.config.plan_config(client.features)
        listing = choose_listing(self.backlog, self.passes_since_full, client.page_size)
        gathered = await gather(
            client,
            config,
            rt.store,
            now=rt.clock(),
            host=rt.host,
            instance_id=rt.instance_id,
            boot_id=rt.boot_id,
            supervised=rt.busy,
            not_before=rt.attempts.not_before_all(),
            unavailable=unavailable(rt, planned_agents(config)),
            pauses=rt.pauses,
            known={task_id: run.lease for task_id, run in rt.runs.items() if run.lease is not None},
            listing=listing,
        )
        listed_at = time.monotonic()
        self._note_listing(listing, gathered.backlog)
        self.malformed.note(gathered.problems)
        note_quarantined(rt, gathered.quarantined)
        # Runs started or ended while TinyTask answered (refills) count as they are now: from here to
        # the last start nothing awaits, so the plan and the slots it fills cannot drift apart.
        snapshot = dataclasses.replace(gathered.snapshot, supervised=rt.busy, in_flight=self.runner.in_flight())
        result = plan(snapshot, config)
        report.queued, report.blocked = queued_and_blocked(snapshot)
        report.waiting = waiting(snapshot, result, blocking=not config.disable_blocking)
        report.malformed = len(gathered.problems)
        leases = {lease.task_id: lease for lease in snapshot.leases}
        for decision in result.recoveries:
            report.reclaimed += 1
            self.runner.take_over(decision, leases[decision.task_id])
        if rt.stopping:
            return
        if not rt.config.settings.enabled:
            log.warning("not_starting", reason="TINYSCHEDULER_ENABLED is false (reloaded); runs in flight continue")
            return
        if rt.claims.refusing_starts() is not None:
            return  # fenced off the cluster: said once by service.cluster, and in `status`
        self._act(result, report, snapshot)
        if self.refiller is not None:
            self.refiller.update(result, snapshot.supervised, listed_at)

    def _note_listing(self, listing: Listing, backlog: Backlog | None) -> None:
        if backlog is not None:
            self.backlog = backlog
            self.passes_since_full = 0
        elif listing is Listing.TARGETED:
            self.passes_since_full += 1

    def _act(self, result: Plan, report: PassReport, snapshot: Snapshot) -> None:
        """Start the plan's runs, each claiming its task as the list showed it (service.run)."""
        listed = listed_tasks(snapshot.queue_tasks, snapshot.agent_tasks)
        for start in result.starts:
            # A reclaim in flight may still requeue the task and remove its lease: a run started now
            # would have its task set idle and its lease deleted under it. The reclaim wakes a pass.
            if self.runner.launch(start, listed[start.task_id]):
                report.started += 1
                report.assigned += start.newly_assigned
