"""This host in a cluster of schedulers (TINYSCHEDULER_ETCD_ENDPOINTS): its etcd lease, its
membership, its claims, and the fence that stops its runs when it can no longer renew the lease.

- **Register** (before the recovery, so adopted runs can keep their claims): grant a lease with a
  TTL of 3 heartbeats; write `members/<host>` and this life's record `hosts/<host>/<lease>` in one
  transaction, refused when a live daemon elsewhere uses the host id; hold `agents/<name>` for
  every agent of the registry, refused with one line naming both hosts when another live host
  holds one. An earlier life of this daemon (same boot, same base path) is taken over, and its
  lease revoked once the recovery has taken its claims back.
- **Keep alive** every heartbeat. A renewal that fails makes the fence (core.cluster.Fence) hold
  starts at once; runs are asked to stop at 2 heartbeats, killed at 2.5, and at 3 (the TTL) the
  lease counts as lost: a new one is granted once etcd answers, and the old life is requeued by
  whichever host sweeps it first (service.sweep).
- **Claims** (service.claims' gate): `claims/<task>` created only if absent, bound to the lease.
- **Tend** every heartbeat: publish the agents' free slots when they changed, retry releases that
  failed, retire earlier lives, sweep dead lives.

Every loop here is a task of the scheduler's task group; nothing is fire-and-forget.
"""

from __future__ import annotations

import contextlib
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import anyio
import structlog

from tinyscheduler.adapters import etcd
from tinyscheduler.adapters.etcd import EtcdClient, EtcdError, EtcdUnavailable
from tinyscheduler.config.settings import Settings
from tinyscheduler.core.attempts import retry_delay
from tinyscheduler.core.cluster import (
    AgentSlots,
    Claim,
    ClaimVerdict,
    Fence,
    Keys,
    Member,
    Phase,
    Purpose,
    agent_conflict,
    host_conflict,
    judge_claim,
    ttl_of,
)
from tinyscheduler.core.text import iso
from tinyscheduler.service.claims import CLAIMED, Claimed
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.cluster")

#: How often the fence looks at the clock at least, and how soon a failed renewal is tried again,
#: in heartbeats.
FENCE_POLL_BEATS = 0.25
#: Registrations that failed in a row are retried after 1/4, 1/2, 1, 2, 2 ... heartbeats (times a
#: jitter of 0.5-1, so hosts that lost etcd together do not come back in step): while etcd is down a
#: host sends it no more than it does when all is well.
REGISTER_BACKOFF_CAP_BEATS = 2.0


class NotRegistered(Exception):
    """Registration was refused; the message is the one line that says why."""


class Cluster:
    """The cluster mode of one daemon: its lease, membership and fence; `claims` is its claim gate."""

    def __init__(self, runtime: Runtime, client: EtcdClient, *, host: str, cluster: str, heartbeat_sec: float) -> None:
        self.runtime = runtime
        self.client = client
        self.host = host
        self.keys = Keys(cluster)
        self.heartbeat = heartbeat_sec
        self.ttl = ttl_of(heartbeat_sec)
        self.lease = 0
        self.fence: Fence | None = None
        self.failing = False
        #: Leases of earlier lives of this daemon: revoked once their claims were taken back.
        self.earlier: set[int] = set()
        self._published = ""
        self._said: str | None = None
        #: Registrations failed in a row (the backoff), and what is wrong since when (for `status`).
        self.register_failures = 0
        self.trouble: str | None = None
        self.trouble_since: float | None = None
        self.changed = anyio.Event()
        #: This host's claims (the runtime's gate in cluster mode).
        self.claims = EtcdClaims(self)

    # --- where we stand ----------------------------------------------------------------------------

    def phase(self) -> Phase:
        if self.fence is None or not self.lease:
            return Phase.LOST
        return self.fence.phase(time.monotonic(), failing=self.failing)

    def refusing_starts(self) -> str | None:
        phase = self.phase()
        if phase is Phase.OK:
            return None
        if phase is Phase.LOST:
            return "not registered in etcd (no live lease): starting nothing"
        return f"cannot renew its etcd lease ({phase.name.lower()}): starting nothing"

    def refusing_reports(self) -> str | None:
        phase = self.phase()
        if phase < Phase.STOP:
            return None
        return f"fenced off etcd ({phase.name.lower()}): outcomes wait in their lease files"

    # --- registration ------------------------------------------------------------------------------

    def member(self) -> Member:
        rt = self.runtime
        registry = rt.config.registry
        busy: dict[str, int] = {}
        for run in rt.runs.values():
            if run.holds_slot:
                busy[run.agent] = busy.get(run.agent, 0) + 1
        agents = []
        for name, slots in sorted(rt.config.limits.items()):
            entry = registry.entry(name) if registry is not None else None
            agents.append(AgentSlots(name, entry.queue if entry else None, slots, busy.get(name, 0)))
        return Member(
            host=self.host,
            lease=self.lease,
            agents=tuple(agents),
            boot_id=rt.boot_id or "",
            base_path=str(rt.config.settings.base_path),
            since=iso(rt.clock()),
        )

    async def register(self) -> None:
        """A new lease, this host's membership and its agents; NotRegistered, EtcdError."""
        sent = time.monotonic()
        lease, ttl = await self.client.grant(self.ttl)
        self.lease = lease
        try:
            await self._join()
            await self.hold_agents(list(self.runtime.config.limits))
        except BaseException:
            # Nothing ran under this life: its record goes with its lease, or survivors would find a
            # dead life to sweep.
            with anyio.CancelScope(shield=True), contextlib.suppress(EtcdError):
                await self.client.txn([], [etcd.delete(self.keys.record(self.host, lease))], [])
                await self.client.revoke(lease)
            self.lease = 0
            raise
        self.fence = Fence(sent, ttl, self.heartbeat)
        self._recovered()
        self._published = ""
        self.changed.set()
        log.info(
            "cluster_joined", host=self.host, lease=f"{lease:x}", ttl=ttl, agents=sorted(self.runtime.config.limits)
        )

    async def _join(self) -> None:
        me = self.member()
        key = self.keys.member(self.host)
        writes = [
            etcd.put(key, me.encode(), self.lease),
            etcd.put(self.keys.record(self.host, self.lease), me.encode()),
        ]
        result = await self.client.txn([etcd.absent(key)], writes, [etcd.get(key)])
        if result.succeeded:
            return
        found = result.kvs[0] if result.kvs else None
        earlier = Member.decode(found.value) if found else None
        refusal = host_conflict(earlier, self.host, me.boot_id, me.base_path)
        if refusal is not None:
            raise NotRegistered(refusal)
        if earlier is not None and found is not None:
            self.earlier.add(earlier.lease)
            guard = [etcd.mod_revision_is(key, found.mod_revision)]
            if not (await self.client.txn(guard, writes, [])).succeeded:
                raise NotRegistered(f"host id {self.host} changed in etcd while registering; trying again")

    async def hold_agents(self, names: list[str]) -> None:
        """Hold `agents/<name>` for each name; NotRegistered naming both hosts if another holds one."""
        for name in names:
            key = self.keys.agent(name)
            mine = etcd.put(key, self.host, self.lease)
            result = await self.client.txn([etcd.absent(key)], [mine], [etcd.get(key)])
            if result.succeeded:
                continue
            holder = result.kvs[0].value.decode(errors="replace") if result.kvs else None
            refusal = agent_conflict(name, holder, self.host)
            if refusal is not None:
                raise NotRegistered(refusal)
            await self.client.put(key, self.host, self.lease)  # ours, under an earlier lease

    async def reconfigure(self, before: set[str]) -> None:
        """After a reload: the agents it removed are let go, this life's record names the new set."""
        for name in sorted(before - set(self.runtime.config.limits)):
            key = self.keys.agent(name)
            await self.client.txn([etcd.lease_is(key, self.lease)], [etcd.delete(key)], [])
        await self.client.put(self.keys.record(self.host, self.lease), self.member().encode())
        self.changed.set()

    async def leave(self, *, nothing_left: bool) -> None:
        """A clean stop: end the lease now, so nobody waits for it to expire; with `nothing_left`
        (no run, no lease file) this life's record goes too, as there is nothing to requeue."""
        if not self.lease:
            return
        with anyio.move_on_after(self.heartbeat), contextlib.suppress(EtcdError):
            if nothing_left:
                await self.client.txn([], [etcd.delete(self.keys.record(self.host, self.lease))], [])
            await self.client.revoke(self.lease)
            log.info("cluster_left", host=self.host, lease=f"{self.lease:x}")
            self.lease = 0

    # --- keep alive, fence -------------------------------------------------------------------------

    async def try_register(self) -> bool:
        """One registration; False when etcd did not answer (said once, counted for the backoff).
        A refusal (NotRegistered) is the caller's to judge."""
        try:
            await self.register()
        except EtcdError as exc:
            self.register_failures += 1
            if (said := self._trouble("cluster_not_registered", str(exc))) is not None:
                log.warning("cluster_not_registered", **said)
            return False
        return True

    def retry_after(self) -> float:
        """Seconds before the next registration (core.attempts' doubling, capped, with jitter)."""
        base = FENCE_POLL_BEATS * self.heartbeat
        delay = retry_delay(max(1, self.register_failures), base, REGISTER_BACKOFF_CAP_BEATS * self.heartbeat)
        return delay * random.uniform(0.5, 1.0)

    async def keep_alive(self) -> None:
        while True:
            if self.phase() is Phase.LOST:
                await self._rejoin()
                wait = self.heartbeat if self.phase() is Phase.OK else self.retry_after()
            else:
                await self._renew()
                wait = (FENCE_POLL_BEATS if self.failing else 1.0) * self.heartbeat
            await anyio.sleep(wait)

    async def _renew(self) -> None:
        sent = time.monotonic()
        ttl = -1
        with anyio.move_on_after(0.75 * self.heartbeat):
            try:
                ttl = await self.client.keepalive(self.lease)
            except EtcdError as exc:
                if (said := self._trouble("cluster_renewal_failed", str(exc))) is not None:
                    log.warning("cluster_renewal_failed", **said)
        if ttl > 0:
            self.fence = Fence(sent, ttl, self.heartbeat)
            if self.failing:
                log.info("cluster_renewed", lease=f"{self.lease:x}", reason="etcd answers again")
            self._recovered()
        elif ttl == 0:  # etcd says the lease is gone: whatever the clock says, it is lost now
            self.fence = Fence(sent - self.ttl, 0, self.heartbeat)
            if (said := self._trouble("cluster_lease_lost", f"etcd no longer knows lease {self.lease:x}")) is not None:
                log.warning("cluster_lease_lost", **said)
        else:
            self.failing = True
            if (said := self._trouble("cluster_renewal_failed", "no answer from etcd in time")) is not None:
                log.warning("cluster_renewal_failed", **said)
        self.changed.set()

    async def _rejoin(self) -> None:
        if self.lease:
            self.earlier.add(self.lease)
            self.claims.held.clear()
            self.lease = 0
        try:
            await self.try_register()
        except NotRegistered as exc:
            self.register_failures += 1
            if (said := self._trouble("cluster_not_registered", str(exc))) is not None:
                log.warning("cluster_not_registered", **said)

    def unreachable(self, exc: EtcdError) -> None:
        """A request found no etcd member answering: hold starts now rather than at the next renewal."""
        if isinstance(exc, EtcdUnavailable) and self.phase() is Phase.OK:
            self.failing = True
            if (said := self._trouble("cluster_renewal_failed", str(exc))) is not None:
                log.warning("cluster_renewal_failed", **said)
            self.changed.set()

    def _recovered(self) -> None:
        self.failing, self._said = False, None
        self.register_failures = 0
        self.trouble = self.trouble_since = None

    def _trouble(self, event: str, reason: str) -> dict[str, Any] | None:
        """Note what is wrong (for `status`); the fields of its log line the first time, None after:
        once per kind of trouble until it is over, not once per try."""
        self.trouble = reason
        if self.trouble_since is None:
            self.trouble_since = time.monotonic()
        if self._said == event:
            return None
        self._said = event
        return {"host": self.host, "lease": f"{self.lease:x}", "reason": reason, "phase": self.phase().name}

    # --- publishing ----------------------------------------------------------------------------------

    async def publish(self) -> None:
        """The agents' slots and free slots, when they changed (one write, not one per run)."""
        me = self.member()
        text = me.encode().replace(f'"since":"{me.since}"', "")
        if text == self._published or self.phase() is not Phase.OK:
            return
        await self.client.put(self.keys.member(self.host), me.encode(), self.lease)
        self._published = text

    async def retire_earlier(self) -> None:
        """Revoke the leases of earlier lives of this daemon: what they still claimed is released."""
        for lease in sorted(self.earlier):
            await self.client.revoke(lease)
            self.earlier.discard(lease)
            log.info("cluster_earlier_life_retired", lease=f"{lease:x}")


class EtcdClaims:
    """Claims as etcd keys bound to the host's lease (cluster mode)."""

    shared = True

    def __init__(self, holder: Cluster) -> None:
        self.holder = holder
        #: Tasks claimed by this daemon, with the lease each claim is bound to.
        self.held: dict[int, int] = {}
        #: Releases etcd has not confirmed (unreachable, cut short): retried by `retry_releases`.
        self.pending: dict[int, int] = {}
        #: Tasks another host held when this one tried to start them: (until when, why), a heartbeat
        #: long. Every host plans the head of a shared queue; asking again at each refill and pass
        #: while the winner starts the run would cost etcd a transaction each time.
        self._taken: dict[int, tuple[float, str]] = {}
        self._locks: dict[int, anyio.Lock] = {}

    def refusing_starts(self) -> str | None:
        return self.holder.refusing_starts()

    def refusing_reports(self) -> str | None:
        return self.holder.refusing_reports()

    def problems(self) -> list[str]:
        return problems(self.holder)

    def summary(self) -> dict[str, Any] | None:
        return summary(self.holder)

    @contextlib.asynccontextmanager
    async def _task(self, task_id: int) -> AsyncIterator[None]:
        """One claim operation per task at a time (a claim and a release of the same task never cross)."""
        lock = self._locks.setdefault(task_id, anyio.Lock())
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(task_id, None)

    async def claim(self, task_id: int, agent: str, *, starting: bool, purpose: Purpose = Purpose.RUN) -> Claimed:
        refusal = self.refusing_starts() if starting else self.refusing_reports()
        if refusal is not None:
            return Claimed(False, reason=refusal)
        holder = self.holder
        if holder.lease and self.held.get(task_id) == holder.lease and purpose is Purpose.RUN:
            # Created under the lease still proven alive (the refusal above): a key bound to a live
            # lease stays ours until we delete it, so there is nothing to ask etcd.
            return CLAIMED
        seen = self._taken.get(task_id) if starting else None
        if seen is not None and seen[0] > time.monotonic():
            return Claimed(False, taken=True, reason=seen[1])
        async with self._task(task_id):
            self.pending.pop(task_id, None)
            try:
                return await self._claim(task_id, agent, purpose)
            except EtcdError as exc:
                holder.unreachable(exc)
                return Claimed(False, reason=f"etcd: {exc}")

    async def _claim(self, task_id: int, agent: str, purpose: Purpose) -> Claimed:
        holder = self.holder
        key = holder.keys.claim(task_id)
        lease = holder.lease
        value = Claim(holder.host, agent, lease, purpose, iso(datetime.now(UTC))).encode()
        for _ in range(3):  # a key that changes between two reads is looked at again
            result = await holder.client.txn([etcd.absent(key)], [etcd.put(key, value, lease)], [etcd.get(key)])
            found = result.kvs[0] if result.kvs else None
            claim = Claim.decode(found.value) if found else None
            verdict = (
                ClaimVerdict.OURS if result.succeeded else judge_claim(claim, found is not None, holder.host, lease)
            )
            if verdict is ClaimVerdict.OURS:
                self.held[task_id] = lease
                return CLAIMED
            if verdict is ClaimVerdict.TAKEN:
                who = f"host {claim.host} ({claim.purpose.value})" if claim else "something else"
                self._note_taken(task_id, f"claimed by {who}")
                return Claimed(False, taken=True, reason=f"claimed by {who}")
            if verdict is ClaimVerdict.OUR_HOST and found is not None:
                guard = [etcd.mod_revision_is(key, found.mod_revision)]
                if (await holder.client.txn(guard, [etcd.put(key, value, lease)], [])).succeeded:
                    self.held[task_id] = lease
                    return CLAIMED
        return Claimed(False, reason="the claim kept changing while it was read")

    def _note_taken(self, task_id: int, reason: str) -> None:
        now = time.monotonic()
        for task, (until, _) in list(self._taken.items()):
            if until <= now:
                del self._taken[task]
        self._taken[task_id] = (now + self.holder.heartbeat, reason)

    async def release(self, task_id: int) -> None:
        async with self._task(task_id):
            lease = self.held.pop(task_id, None)
            if lease is None:
                return
            # Pending until etcd confirms: a release cut short (etcd down, cancelled) is retried.
            self.pending[task_id] = lease
            with contextlib.suppress(EtcdError):
                await self._delete(task_id, lease)
                self.pending.pop(task_id, None)

    async def _delete(self, task_id: int, lease: int) -> None:
        key = self.holder.keys.claim(task_id)
        await self.holder.client.txn([etcd.lease_is(key, lease)], [etcd.delete(key)], [])

    async def retry_releases(self) -> None:
        for task_id, lease in list(self.pending.items()):
            async with self._task(task_id):
                if self.pending.get(task_id) != lease or task_id in self.held:
                    continue
                with contextlib.suppress(EtcdError):
                    await self._delete(task_id, lease)
                    self.pending.pop(task_id, None)


# --- what `status` shows -------------------------------------------------------------------------


def summary(cluster: Cluster) -> dict[str, Any]:
    """This host in the cluster, for last_pass.json (`status`, the status page)."""
    now = time.monotonic()
    renewed = cluster.fence.renewed_at if cluster.fence is not None and cluster.lease else None
    return {
        "host": cluster.host,
        "cluster": cluster.keys.cluster,
        "lease": f"{cluster.lease:x}" if cluster.lease else None,
        "phase": cluster.phase().name.lower(),
        "heartbeat_sec": cluster.heartbeat,
        "ttl_sec": cluster.ttl,
        "renewed_sec_ago": round(now - renewed, 1) if renewed is not None else None,
        "claims_held": len(cluster.claims.held),
        "releases_pending": len(cluster.claims.pending),
        "etcd_requests": sum(cluster.client.requests.values()),
        "etcd_requests_by_path": dict(sorted(cluster.client.requests.items())),
        "etcd_failures": cluster.client.failures,
        "trouble": cluster.trouble,
        "trouble_sec": round(now - cluster.trouble_since, 1) if cluster.trouble_since is not None else None,
    }


def problems(cluster: Cluster) -> list[str]:
    """What keeps this host from working with the others, in one line (none when all is well)."""
    refusal = cluster.refusing_starts()
    if refusal is None:
        return []
    since = f" for {time.monotonic() - cluster.trouble_since:.0f}s" if cluster.trouble_since is not None else ""
    cause = f": {cluster.trouble}" if cluster.trouble else ""
    return [f"cluster: host {cluster.host} {refusal}{since}{cause}"]


def etcd_client(s: Settings, count: Callable[[str], None] | None = None) -> EtcdClient:
    """A client to the etcd the settings name (TLS, auth); `count` is told of each request and failure."""
    credentials = etcd.Credentials(s.etcd_user, s.etcd_password) if s.etcd_user else None
    tls = etcd.Tls(s.etcd_ca_file, s.etcd_cert_file, s.etcd_key_file)
    # A request must be answered well within a heartbeat, or the renewal is late anyway.
    timeout = max(0.5, min(2.0, s.cluster_heartbeat_sec / 2))
    return EtcdClient(s.etcd_urls, timeout=timeout, tls=tls, credentials=credentials, count=count)


def host_name(s: Settings) -> str:
    return s.host_id or socket.gethostname()


def connect(runtime: Runtime) -> Cluster | None:
    """The cluster mode the settings ask for; None without etcd endpoints (one host, no etcd)."""
    s = runtime.config.settings
    if not s.clustered:
        return None
    client = etcd_client(s, runtime.counters.add)
    return Cluster(runtime, client, host=host_name(s), cluster=s.cluster, heartbeat_sec=s.cluster_heartbeat_sec)
