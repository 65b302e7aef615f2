"""Several hosts, one TinyTask: the pure decisions of the cluster mode (service.cluster acts on them).

etcd holds who is alive and who claimed what, under `/tinyscheduler/<cluster>/`:

    members/<host>          the host's presence, bound to its lease: agents, slots, free slots
    hosts/<host>/<lease>    one record per life of a host (no lease: it outlives the host): its
                            agents and their queues, kept until its tasks have been requeued
    agents/<name>           the host that runs an agent (bound to that host's lease)
    claims/<task id>        who claimed a task (bound to the claimer's lease): before any write
                            that assigns or starts it, and while a survivor requeues it
    sweeps/<host>/<lease>   the one survivor requeueing a dead life's tasks (bound to its lease)

A lease is the fencing token: a claim names the lease it is bound to, and a host writes an outcome
only while its claim still names its own lease, alive. Everything here is plain data in, decisions
out; the values in etcd are JSON, and one that cannot be read is treated as absent or as another
host's, never trusted.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tinyscheduler.core.tasks import Task

#: How many heartbeats a lease lives without being renewed.
TTL_HEARTBEATS = 3


@dataclass(frozen=True)
class Keys:
    """The key layout of one cluster; `cluster` keeps several clusters apart in one etcd."""

    cluster: str

    @property
    def root(self) -> str:
        return f"/tinyscheduler/{self.cluster}/"

    def member(self, host: str) -> str:
        return f"{self.root}members/{host}"

    def record(self, host: str, lease: int) -> str:
        return f"{self.root}hosts/{host}/{lease:x}"

    def agent(self, name: str) -> str:
        return f"{self.root}agents/{name}"

    def claim(self, task_id: int) -> str:
        return f"{self.root}claims/{task_id}"

    def sweep(self, host: str, lease: int) -> str:
        return f"{self.root}sweeps/{host}/{lease:x}"

    def folder(self, name: str) -> str:
        """The prefix of one kind of key: members, hosts, agents, claims, sweeps."""
        return f"{self.root}{name}/"


def _loads(raw: bytes | str) -> dict[str, Any] | None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _dumps(data: Mapping[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), sort_keys=True)


def _text(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    return value if isinstance(value, str) else ""


def _whole(data: Mapping[str, Any], name: str) -> int:
    value = data.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(frozen=True)
class AgentSlots:
    """One agent of a host as the cluster sees it."""

    name: str
    #: The queue of its pool (None: legacy mode, assigned tasks only).
    queue: str | None
    slots: int
    busy: int = 0

    @property
    def free(self) -> int:
        return max(0, self.slots - self.busy)

    def data(self) -> dict[str, Any]:
        return {"queue": self.queue, "slots": self.slots, "busy": self.busy}


def _agents(data: Any) -> tuple[AgentSlots, ...]:
    if not isinstance(data, dict):
        return ()
    agents = []
    for name, item in sorted(data.items()):
        if isinstance(name, str) and isinstance(item, dict):
            queue = item.get("queue")
            agents.append(
                AgentSlots(name, queue if isinstance(queue, str) else None, _whole(item, "slots"), _whole(item, "busy"))
            )
    return tuple(agents)


@dataclass(frozen=True)
class Member:
    """A live host (members/<host>), or a life of one (hosts/<host>/<lease>): same shape."""

    host: str
    lease: int
    agents: tuple[AgentSlots, ...]
    #: Where the daemon runs: a daemon of the same host id elsewhere is refused.
    boot_id: str = ""
    base_path: str = ""
    since: str = ""

    def encode(self) -> str:
        return _dumps(
            {
                "host": self.host,
                "lease": self.lease,
                "boot_id": self.boot_id,
                "base_path": self.base_path,
                "since": self.since,
                "agents": {agent.name: agent.data() for agent in self.agents},
            }
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Member | None:
        data = _loads(raw)
        if data is None or not _text(data, "host") or not _whole(data, "lease"):
            return None
        return cls(
            host=_text(data, "host"),
            lease=_whole(data, "lease"),
            agents=_agents(data.get("agents")),
            boot_id=_text(data, "boot_id"),
            base_path=_text(data, "base_path"),
            since=_text(data, "since"),
        )

    def same_place(self, boot_id: str, base_path: str) -> bool:
        """Whether this is an earlier daemon of this very host (same boot, same base path)."""
        return self.boot_id == boot_id and self.base_path == base_path


class Purpose(enum.StrEnum):
    RUN = "run"
    REQUEUE = "requeue"


@dataclass(frozen=True)
class Claim:
    host: str
    agent: str
    lease: int
    purpose: Purpose = Purpose.RUN
    at: str = ""

    def encode(self) -> str:
        return _dumps(
            {"host": self.host, "agent": self.agent, "lease": self.lease, "purpose": self.purpose.value, "at": self.at}
        )

    @classmethod
    def decode(cls, raw: bytes | str) -> Claim | None:
        data = _loads(raw)
        if data is None or not _text(data, "host"):
            return None
        try:
            purpose = Purpose(_text(data, "purpose") or "run")
        except ValueError:
            purpose = Purpose.RUN
        return cls(_text(data, "host"), _text(data, "agent"), _whole(data, "lease"), purpose, _text(data, "at"))


class ClaimVerdict(enum.Enum):
    """What a host may do about a claim key it found."""

    #: Nobody holds it: create it.
    FREE = "free"
    #: Ours, bound to our lease: nothing to write.
    OURS = "ours"
    #: This host's, under the lease of an earlier life of its daemon: take it over (its runs belong
    #: to the host, and one daemon at a time runs on it).
    OUR_HOST = "our_host"
    #: Another host's: hands off.
    TAKEN = "taken"


def judge_claim(found: Claim | None, exists: bool, host: str, lease: int) -> ClaimVerdict:
    """`found`: the claim read (None when absent or unreadable); `exists`: whether the key exists."""
    if not exists:
        return ClaimVerdict.FREE
    if found is None or found.host != host:
        return ClaimVerdict.TAKEN  # unreadable counts as someone else's
    return ClaimVerdict.OURS if found.lease == lease else ClaimVerdict.OUR_HOST


def agent_conflict(agent: str, holder: str | None, host: str) -> str | None:
    """The one line refusing an agent name another live host holds, or None."""
    if holder is None or holder == host:
        return None
    return (
        f"agent {agent} is in the registries of two live hosts: {holder} and {host}; "
        "an agent runs on one host only (remove it from one registry)"
    )


def host_conflict(found: Member | None, host: str, boot_id: str, base_path: str) -> str | None:
    """The one line refusing a host id that a live daemon elsewhere uses, or None."""
    if found is None or found.same_place(boot_id, base_path):
        return None
    return (
        f"host id {host} is in use by another live daemon (base path {found.base_path or '?'}, "
        f"since {found.since or '?'}); give each host its own TINYSCHEDULER_HOST_ID"
    )


def dead_lives(records: Iterable[Member], live: Iterable[tuple[str, int]]) -> list[Member]:
    """The lives of hosts whose lease is gone (no member of the same host and lease), oldest first."""
    alive = set(live)
    return sorted((r for r in records if (r.host, r.lease) not in alive), key=lambda r: (r.since, r.host))


def live_pools(members: Iterable[Member]) -> dict[str, set[str]]:
    """queue -> the agents of live hosts serving it (with at least one slot)."""
    pools: dict[str, set[str]] = {}
    for member in members:
        for agent in member.agents:
            if agent.queue is not None and agent.slots > 0:
                pools.setdefault(agent.queue, set()).add(agent.name)
    return pools


@dataclass(frozen=True)
class Requeue:
    """What a survivor writes to a task a dead host left `working`."""

    fields: dict[str, Any]
    comment: str
    #: The queue it goes back to unassigned, or None when it stays with its agent.
    queue: str | None


def requeue(task: Task, dead: Member, pools: Mapping[str, set[str]], by: str) -> Requeue | None:
    """None unless the task is still `working` for an agent of the dead life; else where it goes:
    back to its queue unassigned when live hosts serve that queue, otherwise idle for its agent."""
    agents = {agent.name for agent in dead.agents}
    if task.status != "working" or task.assigned_to not in agents:
        return None
    lost = (
        f"tinyscheduler: host {dead.host} stopped renewing its etcd lease (lease {dead.lease:x}), so its run of "
        f"{task.assigned_to} is presumed lost; requeued by {by}"
    )
    queue = task.queue_name
    if queue and pools.get(queue):
        return Requeue(
            {"status": "idle", "assigned_to": None},
            f"{lost}: back in queue {queue}, unassigned (not counted as a failed attempt)",
            queue,
        )
    return Requeue(
        {"status": "idle"}, f"{lost}: back to idle for {task.assigned_to} (not counted as a failed attempt)", None
    )


# --- fencing -----------------------------------------------------------------------------------------


class Phase(enum.IntEnum):
    """How far a host is from losing its lease, by its own clock (ordered: worse is higher)."""

    #: Renewed in time: claim, start, report.
    OK = 0
    #: A renewal failed or is late: start nothing, report what ends.
    HOLD = 1
    #: The lease may expire soon: ask every run to stop; report nothing more (the survivors will).
    STOP = 2
    #: Kill what still runs: it must be gone before the lease can expire.
    KILL = 3
    #: The lease may have expired: everything claimed under it is another host's business now.
    LOST = 4


@dataclass(frozen=True)
class Fence:
    """When each phase begins, from the last renewal etcd acknowledged (monotonic seconds).

    The lease lives on the server at least `ttl` seconds from when the renewal was *sent* (etcd
    counts from when it received it, later), so `expires` is a time by which it certainly still
    exists. With a TTL of 3 heartbeats h: HOLD from 1.5 h after the renewal (one beat missed), STOP
    at 2 h, KILL at 2.5 h, LOST at 3 h; the last half beat is the margin for a kill to land."""

    renewed_at: float
    ttl: float
    heartbeat: float

    @property
    def expires(self) -> float:
        return self.renewed_at + self.ttl

    @property
    def kill_at(self) -> float:
        return self.expires - self.heartbeat / 2

    @property
    def stop_at(self) -> float:
        return self.kill_at - self.heartbeat / 2

    @property
    def hold_at(self) -> float:
        return min(self.renewed_at + 1.5 * self.heartbeat, self.stop_at)

    def phase(self, now: float, *, failing: bool = False) -> Phase:
        """`failing`: the last renewal failed (no need to wait for the next to be late)."""
        if now >= self.expires:
            return Phase.LOST
        if now >= self.kill_at:
            return Phase.KILL
        if now >= self.stop_at:
            return Phase.STOP
        if failing or now >= self.hold_at:
            return Phase.HOLD
        return Phase.OK

    def next_change(self, now: float) -> float:
        """Seconds until the phase may next change (for the enforcer's sleep)."""
        ahead = [at for at in (self.hold_at, self.stop_at, self.kill_at, self.expires) if at > now]
        return min(ahead) - now if ahead else self.heartbeat


def ttl_of(heartbeat_sec: float) -> int:
    """The lease TTL for a heartbeat: 3 beats, whole seconds (etcd's unit), at least 2 s."""
    return max(2, round(TTL_HEARTBEATS * heartbeat_sec))
