"""A slot that frees between two passes is filled at once, without a pass.

A pass lists TinyTask, plans and starts what fits; the candidates that found no free slot stay in
its plan (`Plan.waiting`). When a run's process ends, its agent's slot goes to the first of them
that is still free to start (core.planner `refill`: its pools' unassigned tasks, then its own),
claimed on the task as that pass listed it: no lease scan, no list request, no planning of the other
agents on the way from one run's exit to the next spawn. Only while the list is recent
(`REFILL_MAX_AGE_SEC`): a claim trusts what the list showed, so the age of the list is how long a
change by someone else can go unseen. Otherwise, or when nothing waits, a pass comes at once, as
before. A pass also comes once a run is over unless it succeeded and its task blocked nothing the
plan saw: a run that could not start, failed (its agent's breaker may open: status says so after a
pass) or ended a blocker.
"""

from __future__ import annotations

import time

import structlog

from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.core.planner import Plan, refill
from tinyscheduler.service.availability import unavailable
from tinyscheduler.service.run import RunResult
from tinyscheduler.service.runner import Runner
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")

#: How old the last pass's list may be for a freed slot to take a waiting task without a pass.
REFILL_MAX_AGE_SEC = 2.0


class Refiller:
    def __init__(self, runtime: Runtime, runner: Runner) -> None:
        self.runtime = runtime
        self.runner = runner
        self._plan: Plan | None = None
        self._listed_at = -float("inf")
        #: Task ids started since the plan (by it or by refills): a waiting task is taken once.
        self._taken: set[int] = set()
        #: Leases the plan counted as holding a slot that no run of ours supervised, task id -> agent.
        self._outside: dict[int, str] = {}
        runner.on_slot_freed = self.slot_freed
        runner.on_run_done = self.run_done

    def update(self, plan: Plan, supervised: frozenset[int], listed_at: float) -> None:
        """The plan a pass just acted on; `listed_at`: when its list was read (monotonic)."""
        self._plan = plan
        self._listed_at = listed_at
        self._taken = {start.task_id for start in plan.starts}
        self._outside = {task: agent for task, agent in plan.holding.items() if task not in supervised}

    def forget(self) -> None:
        """No refill until the next pass (a failed pass, a reload)."""
        self._plan = None

    def slot_freed(self, agent: str) -> None:
        """A run of `agent` ended: start what waits for its slot, or wake a pass."""
        if not self._refill(agent):
            self.runtime.tick.set()

    def run_done(self, task_id: int, result: RunResult | None) -> None:
        """A run is over: a pass now, unless it succeeded and its task blocked nothing listed."""
        plan = self._plan
        quiet = result is not None and result.outcome is Outcome.SUCCEEDED and result.started
        if plan is None or not quiet or task_id in plan.waiting.blockers:
            self.runtime.tick.set()

    def _refill(self, agent: str) -> bool:
        rt = self.runtime
        plan = self._plan
        if plan is None or rt.stopping or not rt.config.settings.enabled:
            return False
        if rt.claims.refusing_starts() is not None:
            return False  # fenced off the cluster; a run that starts claims its task in etcd first (service.run)
        if time.monotonic() - self._listed_at > REFILL_MAX_AGE_SEC:
            return False
        if self._busy(agent) >= rt.config.limits.get(agent, 0) or unavailable(rt, {agent}):
            return False
        found = refill(
            plan.waiting,
            agent,
            taken=self._taken.union(rt.runs, rt.reclaiming),
            not_before=rt.attempts.not_before_all(),
            now=rt.clock(),
        )
        if found is None:
            return False
        start, task = found
        self._taken.add(start.task_id)
        rt.counters.add("refills")
        log.debug("refill", task_id=start.task_id, agent=agent, reason=start.reason)
        return self.runner.launch(start, task)

    def _busy(self, agent: str) -> int:
        """Slots of `agent` held now: its runs whose process has not ended, and the leases outside them."""
        runs = self.runtime.runs
        own = sum(1 for run in self.runtime.agent_runs.get(agent, {}).values() if run.holds_slot)
        return own + sum(1 for task, holder in self._outside.items() if holder == agent and task not in runs)
