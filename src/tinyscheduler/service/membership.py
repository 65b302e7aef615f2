"""A host among the others: joining the cluster and leaving it (`ClusterMode`), what it does for the
cluster every heartbeat (`tend`), and the requeue of the tasks a dead host left `working` (`sweep`).

A life of a host is dead when its record (`hosts/<host>/<lease>`) has no member of the same lease:
its lease expired or was revoked, and every claim bound to it went with it. One survivor sweeps it
(`sweeps/<host>/<lease>`, created only if absent and bound to the sweeper's lease; the sweeper
dying lets another take over): for each agent of that life, every task still `working` for it is
claimed for the requeue (`claims/<task>`, the same key runs claim: a task some host runs now is
never touched), read again, and written as core.cluster.requeue says: back to its queue unassigned
when live hosts serve that queue, else idle for its agent, with a comment. The record goes once
all its tasks are done; a sweep cut short is taken up again at the next heartbeat.

The host itself sweeps an earlier life of its own like any other host, except the tasks it still
has a lease file for: their outcome is known here, and the lease watcher reports it.
"""

from __future__ import annotations

import contextlib

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters import etcd
from tinyscheduler.adapters.etcd import EtcdError
from tinyscheduler.adapters.tinytask import TinyTaskClient, TinyTaskError
from tinyscheduler.core.cluster import Member, Phase, Purpose, dead_lives, live_pools, requeue
from tinyscheduler.service.cluster import FENCE_POLL_BEATS, Cluster, NotRegistered, connect
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.cluster")


class ClusterMode:
    """What the scheduler does with the cluster mode: join, follow a reload, leave. The scheduler
    imports this module only when etcd endpoints are set, so one host loads nothing of etcd."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    @classmethod
    def connect(cls, runtime: Runtime) -> ClusterMode | None:
        cluster = connect(runtime)
        return cls(cluster) if cluster is not None else None

    async def join(self, group: anyio.abc.TaskGroup) -> str | None:
        """Register before the recovery (adopted runs keep their claims), then keep the lease alive,
        fence and tend, in the scheduler's task group. Etcd unreachable for a TTL: go on fenced (start
        nothing) and register once it answers. A refused registration (the host id or an agent held by
        another live host) is returned as its one line: the daemon does not start."""
        cluster = self.cluster
        with anyio.move_on_after(cluster.ttl):
            while True:
                try:
                    await cluster.register()
                    break
                except NotRegistered as exc:
                    log.error("not_started", reason=str(exc))
                    return str(exc)
                except EtcdError as exc:
                    log.warning("cluster_not_registered", reason=str(exc), detail="trying again; starting nothing")
                    await anyio.sleep(cluster.heartbeat * FENCE_POLL_BEATS)
        cluster.runtime.claims = cluster.claims
        group.start_soon(cluster.keep_alive)
        group.start_soon(cluster.enforce)
        group.start_soon(tend, cluster)
        return None

    async def hold_new_agents(self, names: set[str]) -> str | None:
        """The agents a reload adds, held in etcd before the reload applies; why not, in one line."""
        try:
            await self.cluster.hold_agents(sorted(names))
        except NotRegistered as exc:
            return str(exc)
        except EtcdError as exc:
            return f"cannot hold the new agents in etcd: {exc}"
        return None

    async def reconfigure(self, before: set[str]) -> None:
        """After a reload (its new agents already held): let go of the agents it removed."""
        try:
            await self.cluster.reconfigure(before)
        except EtcdError as exc:
            log.warning("cluster_reconfigure_failed", reason=str(exc), detail="removed agents stay held in etcd")

    async def leave(self) -> None:
        """A clean stop ends the lease at once (a hand-off keeps it for the next instance's runs)."""
        rt = self.cluster.runtime
        leases = await anyio.to_thread.run_sync(rt.store.scan)
        await self.cluster.leave(nothing_left=not rt.runs and not leases.leases)

    async def aclose(self) -> None:
        await self.cluster.client.aclose()


async def tend(cluster: Cluster) -> None:
    """Every heartbeat while the lease is fine: publish slots, retry releases, retire earlier lives,
    sweep dead ones. A failure is logged and tried again at the next beat."""
    while True:
        await anyio.sleep(cluster.heartbeat)
        if cluster.phase() is not Phase.OK:
            continue
        try:
            await cluster.publish()
            await cluster.claims.retry_releases()
            await cluster.retire_earlier()
            await sweep(cluster)
        except (EtcdError, TinyTaskError) as exc:
            log.warning("cluster_tend_failed", reason=str(exc))


async def sweep(cluster: Cluster) -> int:
    """Requeue the tasks of every dead life that no other host is sweeping; how many were requeued."""
    client = cluster.client
    records = [m for kv in await client.get_prefix(cluster.keys.folder("hosts")) if (m := Member.decode(kv.value))]
    members = [m for kv in await client.get_prefix(cluster.keys.folder("members")) if (m := Member.decode(kv.value))]
    requeued = 0
    for dead in dead_lives(records, ((m.host, m.lease) for m in members)):
        if dead.lease == cluster.lease:
            continue
        key = cluster.keys.sweep(dead.host, dead.lease)
        mine = etcd.put(key, cluster.host, cluster.lease)
        if not (await client.txn([etcd.absent(key)], [mine], [])).succeeded:
            continue  # another survivor is on it
        try:
            left, _ = await client.time_to_live(dead.lease)
            if left > 0:
                continue  # alive after all (its member key was removed by hand): not ours to sweep
            tinytask = await cluster.runtime.connection.client()
            done, count = await _requeue_life(cluster, tinytask, dead, live_pools(members))
            requeued += count
            if done:
                await client.txn([], [etcd.delete(cluster.keys.record(dead.host, dead.lease))], [])
                log.info("cluster_life_swept", host=dead.host, lease=f"{dead.lease:x}", requeued=count)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(EtcdError):
                await client.txn([etcd.lease_is(key, cluster.lease)], [etcd.delete(key)], [])
    return requeued


async def _requeue_life(
    cluster: Cluster, tinytask: TinyTaskClient, dead: Member, pools: dict[str, set[str]]
) -> tuple[bool, int]:
    """(every task of the life handled, how many were requeued)."""
    rt = cluster.runtime
    done, count = True, 0
    for agent in dead.agents:
        batch = await tinytask.list_tasks(status=["working"], assigned_to=agent.name)
        for task in batch.tasks:
            if dead.host == cluster.host and (task.id in rt.busy or rt.store.path(task.id).exists()):
                done = False  # our own earlier life: the lease watcher reports what we know
                continue
            claimed = await cluster.claims.claim(task.id, agent.name, starting=True, purpose=Purpose.REQUEUE)
            if not claimed.ok:
                done = done and claimed.taken  # a host runs it now; else try again next beat
                continue
            try:
                fresh = await tinytask.get_task(task.id)
                decision = requeue(fresh, dead, pools, by=cluster.host)
                if decision is not None:
                    await tinytask.update_task(task.id, **decision.fields)
                    await tinytask.add_comment(task.id, decision.comment)
                    count += 1
                    rt.counters.add("cluster_requeued")
                    reason = f"host {dead.host} lost its etcd lease"
                    rt.events.record("requeued", task_id=task.id, agent=agent.name, queue=decision.queue, reason=reason)
                    log.warning("cluster_requeued", task_id=task.id, agent=agent.name, dead_host=dead.host)
            finally:
                await cluster.claims.release(task.id)
    return done, count
