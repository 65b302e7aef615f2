"""The pure core: `plan(snapshot, config) -> Plan`.

No I/O, no clock reads, no logging: the time, the leases with what the OS says of their
processes, and the tasks TinyTask returned are all inputs. Every decision and every skip carries a
reason, so a dry run can show exactly why a task does or does not start.

Rules, in the order they apply:
1. Leases. Each lease of this host that no run of this daemon supervises gets a verdict: keep,
   adopt (alive and unsupervised: a previous scheduler instance started it), settle (its process
   ended while nobody watched: its outcome comes from its output), recover (written before its
   process existed), or wait (an original-schema lease that cannot be verified). Leases of other
   hosts are left alone and count for nothing here.
2. Slots. A slot is a Goose process. An agent's busy slots are its leases on this host that still
   have (or are about to have, or may have) a process: every lease except those to settle and those
   `finishing` (the process ended, its outcome is being reported), plus this instance's runs whose
   lease is not written yet. Free = limit - busy, never negative.
3. Candidates. A task can start only if it is idle, not blocked (unless blocking is disabled), not
   tagged `tinyscheduler:failed`, not already leased here, not backing off after a failure, and not
   already chosen in this plan. Blocked tasks are filtered before slots are counted, so a blocked
   task at the head of a queue never starves the rest.
4. Order. Blockers first: tasks that block the most other fetched tasks, then priority (higher
   first), then created_at (older first), then id. With blocking disabled, server order is kept.
5. Queue mode (a registry exists): for each queue (by name), its unassigned candidates go one by
   one to the pool agent with the most free slots; a tie goes to the alphabetically first name.
   Then every agent's already-assigned candidates fill its remaining slots. Agents with a limit but
   no registry entry are served from their assigned tasks only. Legacy mode (no registry) is that
   second step alone.
6. Breakers. An agent whose breaker is open (core.circuit: it could not start a run, or its runs
   keep failing, or goose is missing) has no free slot; its tasks are skipped with the reason and
   the time it may try again.
7. Pauses (core.control). An agent, a queue or the host an operator paused starts nothing: a paused
   agent gets no free slot and no queue assignment, a paused queue's tasks are neither assigned nor
   started, and a paused (or draining) host starts nothing at all. Each such task is skipped with
   the pause as its reason ("agent dev-a paused by alice since ...: ..."); the widest pause is
   named (host, then queue, then agent). Leases are judged as always: runs in flight go on.
8. Waiting. The candidates that found no free slot stay in the plan, in the order they would have
   started (`Plan.waiting`): a slot that frees before the next pass takes the first of them that
   is still free to start (`refill`), by the same rules: its pools' unassigned tasks, then its own.
   Paused work and the tasks of a held agent never wait there.
"""

from __future__ import annotations

import enum
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from tinyscheduler.core.circuit import Unavailable
from tinyscheduler.core.control import Pauses
from tinyscheduler.core.leases import Lease, LeaseState, Liveness
from tinyscheduler.core.tasks import FAILED_TAG, Task
from tinyscheduler.core.text import iso

#: A heartbeat older than this many heartbeat intervals marks a lease stale.
STALE_HEARTBEATS = 3


class LeaseVerdict(enum.StrEnum):
    KEEP = "keep"
    #: Alive and nobody of ours supervises it (a previous daemon instance started it): supervise it.
    ADOPT = "adopt"
    #: Its process ended while no scheduler watched: report the outcome its own output shows.
    SETTLE = "settle"
    #: Written before its process existed (pid unknown): find the process by its tag, else settle.
    RECOVER = "recover"
    #: Alive, but an original-schema lease that cannot prove the pid is still its process: never
    #: signalled, waited for.
    WAIT = "wait"
    FOREIGN = "foreign"  # another host's lease: not ours to judge


@dataclass(frozen=True)
class Snapshot:
    """Everything a pass knows, gathered by the shell before planning."""

    now: datetime
    host: str
    instance_id: str
    leases: Sequence[Lease] = ()
    #: What the OS says of each lease's process, by task id (leases.probe).
    liveness: Mapping[int, Liveness] = field(default_factory=dict)
    #: Task ids whose run is supervised by this scheduler instance right now.
    supervised: frozenset[int] = frozenset()
    #: Runs of this instance whose process has not ended, by task id -> agent. They hold a slot
    #: even before their lease file exists (a run writes it only after claiming the task), so
    #: slots are never handed out twice.
    in_flight: Mapping[int, str] = field(default_factory=dict)
    #: Idle tasks with nobody assigned, per queue, in server order.
    queue_tasks: Mapping[str, Sequence[Task]] = field(default_factory=dict)
    #: Idle tasks assigned to each agent, in server order.
    agent_tasks: Mapping[str, Sequence[Task]] = field(default_factory=dict)
    #: Earliest next start of tasks backing off after a failed attempt.
    not_before: Mapping[int, datetime] = field(default_factory=dict)
    #: Agents whose breaker is open (core.circuit): they start nothing, and their tasks say why.
    unavailable: Mapping[str, Unavailable] = field(default_factory=dict)
    #: What operators paused (core.control): those agents, queues or the host start nothing.
    pauses: Pauses = field(default_factory=Pauses)


@dataclass(frozen=True)
class PlanConfig:
    limits: Mapping[str, int]
    #: queue name -> agents of that pool; empty in legacy mode.
    pools: Mapping[str, Sequence[str]] = field(default_factory=dict)
    disable_blocking: bool = False
    heartbeat_sec: float = 15
    max_runtime_sec: float = 3600


@dataclass(frozen=True)
class LeaseDecision:
    task_id: int
    agent: str
    verdict: LeaseVerdict
    reason: str


@dataclass(frozen=True)
class Assignment:
    task_id: int
    agent: str
    queue: str
    reason: str


@dataclass(frozen=True)
class Start:
    task_id: int
    agent: str
    reason: str
    #: True when this plan also assigns the task (it was unassigned in its queue).
    newly_assigned: bool = False
    #: The queue it is assigned from, when newly assigned.
    queue: str | None = None


@dataclass(frozen=True)
class Skip:
    task_id: int
    agent: str | None
    reason: str


@dataclass(frozen=True)
class AgentSlots:
    agent: str
    limit: int
    busy: int
    starting: int

    @property
    def free_after(self) -> int:
        return max(0, self.limit - self.busy - self.starting)


@dataclass(frozen=True)
class Waiting:
    """Startable tasks a plan found no free slot for, in the order they would have started."""

    #: Unassigned candidates of each pool's queue.
    queues: Mapping[str, tuple[Task, ...]] = field(default_factory=dict)
    #: Each agent's assigned candidates.
    agents: Mapping[str, tuple[Task, ...]] = field(default_factory=dict)
    #: queue -> the agents of its pool.
    pools: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: Tasks that block a listed task: once one ends, the next pass may find more to start.
    blockers: frozenset[int] = frozenset()


@dataclass(frozen=True)
class Plan:
    leases: tuple[LeaseDecision, ...]
    assignments: tuple[Assignment, ...]
    starts: tuple[Start, ...]
    skips: tuple[Skip, ...]
    slots: tuple[AgentSlots, ...]
    waiting: Waiting = field(default_factory=Waiting)
    #: Leases that hold a slot (task id -> agent), supervised ones included.
    holding: Mapping[int, str] = field(default_factory=dict)

    @property
    def recoveries(self) -> tuple[LeaseDecision, ...]:
        """Leases whose run needs this daemon: adopt, settle or recover."""
        return tuple(d for d in self.leases if d.verdict in RECOVERIES)

    def to_json(self) -> dict[str, Any]:
        return {
            "leases": [asdict(d) | {"verdict": d.verdict.value} for d in self.leases],
            "assignments": [asdict(a) for a in self.assignments],
            "starts": [asdict(s) for s in self.starts],
            "skips": [asdict(s) for s in self.skips],
            "slots": [asdict(s) | {"free_after": s.free_after} for s in self.slots],
        }


# --- leases --------------------------------------------------------------------------------------


RECOVERIES = frozenset({LeaseVerdict.ADOPT, LeaseVerdict.SETTLE, LeaseVerdict.RECOVER})


def judge_lease(lease: Lease, snapshot: Snapshot, config: PlanConfig) -> LeaseDecision:
    """What to do with a lease no run of this daemon supervises.

    A run belongs to the host, not to the daemon process that started it: a live one is adopted and
    supervised like our own, an ended one is settled from the evidence of its output. Nothing is
    stopped or rerun merely because another daemon instance started it.
    """

    def decide(verdict: LeaseVerdict, reason: str) -> LeaseDecision:
        return LeaseDecision(lease.task_id, lease.agent, verdict, reason)

    if lease.host != snapshot.host:
        return decide(LeaseVerdict.FOREIGN, f"lease of host {lease.host}")
    if lease.task_id in snapshot.supervised:
        return decide(LeaseVerdict.KEEP, "supervised by this scheduler")
    liveness = snapshot.liveness.get(lease.task_id)
    if liveness is None:
        # Acting on a guess could start a second run beside a live one; wait for a probe.
        return decide(LeaseVerdict.KEEP, "process not checked yet")
    if liveness is Liveness.NO_PROCESS:
        return decide(LeaseVerdict.RECOVER, "lease written before its process started: looking for it by its tag")
    if liveness is Liveness.DEAD:
        return decide(LeaseVerdict.SETTLE, f"process {lease.pid} ended while no scheduler watched it")
    if liveness is Liveness.REUSED:
        return decide(LeaseVerdict.SETTLE, f"process {lease.pid} ended (its PID now belongs to another process)")
    if lease.start_ticks is None:
        return decide(
            LeaseVerdict.WAIT,
            f"process {lease.pid} (an original-schema lease) cannot be verified, so it is never signalled; "
            "waiting for it to end",
        )
    if lease.owner != snapshot.instance_id:
        owner = lease.owner or "unknown"
        return decide(LeaseVerdict.ADOPT, f"process {lease.pid} of a previous scheduler instance ({owner}) is alive")
    runtime = (snapshot.now - lease.started_at).total_seconds()
    if runtime > config.max_runtime_sec:
        over = f"runtime {runtime:.0f}s is over the maximum {config.max_runtime_sec:.0f}s"
        return decide(LeaseVerdict.ADOPT, f"{over} and no run of this scheduler supervises it")
    heartbeat_age = (snapshot.now - lease.heartbeat).total_seconds()
    if heartbeat_age > STALE_HEARTBEATS * config.heartbeat_sec:
        stale = f"heartbeat is {heartbeat_age:.0f}s old (stale after {STALE_HEARTBEATS * config.heartbeat_sec:.0f}s)"
        return decide(LeaseVerdict.ADOPT, f"{stale} and no run of this scheduler supervises it")
    return decide(LeaseVerdict.KEEP, f"process {lease.pid} is alive")


# --- tasks ---------------------------------------------------------------------------------------


def blocker_first_order(tasks: Iterable[Task], blocks: Mapping[int, int]) -> list[Task]:
    return sorted(tasks, key=lambda t: (-blocks.get(t.id, 0), -t.priority, t.created_at, t.id))


def count_blocked_by(snapshot: Snapshot) -> dict[int, int]:
    """How many fetched tasks each task blocks (a task fetched twice counts once)."""
    seen = {
        task.id: task.blocked_by_task_id
        for tasks in (*snapshot.queue_tasks.values(), *snapshot.agent_tasks.values())
        for task in tasks
    }
    counts: dict[int, int] = {}
    for blocker in seen.values():
        if blocker is not None:
            counts[blocker] = counts.get(blocker, 0) + 1
    return counts


class _Planning:
    """The mutable bookkeeping of one `plan` call; never escapes it."""

    def __init__(self, snapshot: Snapshot, config: PlanConfig) -> None:
        self.snapshot = snapshot
        self.config = config
        self.leased = {lease.task_id for lease in snapshot.leases} | set(snapshot.in_flight)
        self.chosen: set[int] = set()
        self.skips: list[Skip] = []
        self.blocks = {} if config.disable_blocking else count_blocked_by(snapshot)

    def unstartable(self, task: Task) -> str | None:
        if task.status != "idle":
            return f"status is {task.status}"
        if task.id in self.leased:
            return "already running on this host"
        if task.id in self.chosen:
            return "already planned in this pass"
        if task.failed_for_good:
            return "tagged tinyscheduler:failed; remove the tag to retry"
        if not self.config.disable_blocking and task.is_currently_blocked:
            return f"blocked by task {task.blocked_by_task_id}"
        not_before = self.snapshot.not_before.get(task.id)
        if not_before is not None and not_before > self.snapshot.now:
            return f"retry backs off until {iso(not_before)}"
        return None

    def candidates(self, tasks: Sequence[Task], agent: str | None) -> list[Task]:
        ready = []
        seen: set[int] = set()
        # Locals and an inline fast path for the common startable task (10,000 tasks per pass);
        # anything else goes through unstartable(), which alone words the reasons.
        leased, chosen, not_before, now = self.leased, self.chosen, self.snapshot.not_before, self.snapshot.now
        blocking = not self.config.disable_blocking
        for task in tasks:
            task_id = task.id
            # A list may hold a task twice (offset paging over a list that changed meanwhile):
            # the first copy decides, or it would be started twice.
            if task_id in seen:
                continue
            seen.add(task_id)
            if (
                task.status == "idle"
                and task_id not in leased
                and task_id not in chosen
                and FAILED_TAG not in task.tags
                and not (blocking and task.is_currently_blocked)
                and (task_id not in not_before or not not_before[task_id] > now)
            ):
                ready.append(task)
                continue
            reason = self.unstartable(task)
            if reason is None:
                ready.append(task)
            elif reason != "already planned in this pass":
                self.skips.append(Skip(task_id, agent, reason))
        return ready if not blocking else blocker_first_order(ready, self.blocks)


def holds_slot(decision: LeaseDecision, snapshot: Snapshot) -> bool:
    """Whether a judged lease still stands for a process (or may: a lease without a pid can have
    one whose pid was never written, until the recovery has looked for it)."""
    return decision.verdict not in (LeaseVerdict.SETTLE, LeaseVerdict.FOREIGN)


def plan(snapshot: Snapshot, config: PlanConfig) -> Plan:
    state = _Planning(snapshot, config)

    decisions = tuple(judge_lease(lease, snapshot, config) for lease in snapshot.leases)
    busy: dict[str, int] = {}
    finishing = {lease.task_id for lease in snapshot.leases if lease.state is LeaseState.FINISHING}
    holding = {d.task_id: d.agent for d in decisions if d.task_id not in finishing and holds_slot(d, snapshot)}
    for agent in {**holding, **snapshot.in_flight}.values():
        busy[agent] = busy.get(agent, 0) + 1
    agents = sorted(set(config.limits) | {a for pool in config.pools.values() for a in pool})
    limits = {agent: max(0, config.limits.get(agent, 0)) for agent in agents}
    free = {agent: max(0, limits[agent] - busy.get(agent, 0)) for agent in agents}
    # A paused or unavailable agent starts nothing: as if it had no free slot, with its own reason.
    pauses, unavailable = snapshot.pauses, snapshot.unavailable
    held = _held_agents(agents, pauses, unavailable)
    for agent in held:
        free[agent] = 0
    starting = dict.fromkeys(agents, 0)

    assignments: list[Assignment] = []
    starts: list[Start] = []
    waiting_queues: dict[str, list[Task]] = {}
    waiting_agents: dict[str, list[Task]] = {}

    def take(task: Task, agent: str, reason: str, queue: str | None) -> None:
        state.chosen.add(task.id)
        free[agent] -= 1
        starting[agent] += 1
        starts.append(Start(task.id, agent, reason, queue is not None, queue))

    for queue in sorted(config.pools):
        pool = sorted(set(config.pools[queue]))
        exhausted = f"no free slot in pool {queue}"
        if pool and all(agent in held for agent in pool):
            exhausted = f"no agent of pool {queue} available: " + "; ".join(held[a] for a in pool)
        queue_paused = pauses.holding(None, queue)
        if queue_paused is not None:
            exhausted = queue_paused.text
        # Free slots only go down while planning: once the pool has none, the rest of the queue
        # is skipped without looking for an agent again.
        open_pool = bool(pool) and queue_paused is None
        for task in state.candidates(snapshot.queue_tasks.get(queue, ()), None):
            if open_pool:
                # max() keeps the first of equal maxima and the pool is sorted: the most free
                # slots, ties to the alphabetically first name.
                agent = max(pool, key=free.__getitem__)
                open_pool = free[agent] > 0
            if not open_pool:
                state.skips.append(Skip(task.id, None, exhausted))
                if queue_paused is None:
                    waiting_queues.setdefault(queue, []).append(task)
                continue
            reason = f"unassigned in queue {queue}; {agent} has the most free slots ({free[agent]})"
            assignments.append(Assignment(task.id, agent, queue, reason))
            take(task, agent, reason, queue)

    for agent in agents:
        full = held.get(agent, f"no free slot ({limits[agent]} of {limits[agent]} busy or starting)")
        for task in state.candidates(snapshot.agent_tasks.get(agent, ()), agent):
            paused = pauses.holding(agent, task.queue_name) if pauses.items else None
            if paused is not None:
                state.skips.append(Skip(task.id, agent, paused.text))
                continue
            if free[agent] <= 0:
                state.skips.append(Skip(task.id, agent, full))
                if agent not in held:
                    waiting_agents.setdefault(agent, []).append(task)
                continue
            take(task, agent, f"assigned to {agent}, priority {task.priority}", None)

    slots = tuple(AgentSlots(a, limits[a], busy.get(a, 0), starting[a]) for a in agents)
    waiting = Waiting(
        {q: tuple(tasks) for q, tasks in waiting_queues.items()},
        {a: tuple(tasks) for a, tasks in waiting_agents.items()},
        {q: tuple(sorted(set(pool))) for q, pool in config.pools.items()},
        frozenset(state.blocks),
    )
    return Plan(decisions, tuple(assignments), tuple(starts), tuple(state.skips), slots, waiting, holding)


def _held_agents(agents: Iterable[str], pauses: Pauses, unavailable: Mapping[str, Unavailable]) -> dict[str, str]:
    """Agents that start nothing now, with why: paused (host or agent), or their breaker is open."""
    held: dict[str, str] = {}
    for agent in agents:
        paused = pauses.holding(agent, None) if pauses.items else None
        if paused is not None:
            held[agent] = paused.text
        elif agent in unavailable:
            held[agent] = str(unavailable[agent])
    return held


def refill(
    waiting: Waiting, agent: str, *, taken: Container[int], not_before: Mapping[int, datetime], now: datetime
) -> tuple[Start, Task] | None:
    """What a slot of `agent` that freed since the plan takes: the first waiting task that is not
    `taken` (started or planned since) nor backing off; its pools' queues first (by name), then
    its own tasks, the order in which the next pass would hand it out. None when nothing waits."""

    def ready(task: Task) -> bool:
        backoff = not_before.get(task.id)
        return task.id not in taken and (backoff is None or backoff <= now)

    for queue in sorted(q for q, pool in waiting.pools.items() if agent in pool):
        for task in waiting.queues.get(queue, ()):
            if ready(task):
                reason = f"a slot of {agent} freed; next unassigned in queue {queue}"
                return Start(task.id, agent, reason, True, queue), task
    for task in waiting.agents.get(agent, ()):
        if ready(task):
            return Start(task.id, agent, f"a slot of {agent} freed; next assigned to it", False), task
    return None
