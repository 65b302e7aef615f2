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
import os
import signal
import time

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters import etcd
from tinyscheduler.adapters.etcd import EtcdError
from tinyscheduler.adapters.procfs import verified_group
from tinyscheduler.adapters.tinytask import TinyTaskClient, TinyTaskError
from tinyscheduler.core.cluster import Member, Phase, Purpose, dead_lives, live_pools, requeue
from tinyscheduler.service.cluster import FENCE_POLL_BEATS, Cluster, NotRegistered, connect
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.cluster")

#: How long a starting daemon tries to register before it goes on fenced (starting nothing) and
#: keeps trying in the background.
JOIN_PATIENCE_SEC = 30.0


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
        fence and tend, in the scheduler's task group. Etcd unreachable for a TTL (30 s at most): go
        on fenced (start nothing) and register once it answers, backing off. A refused registration
        (the host id or an agent held by another live host) is returned as its one line: the daemon
        does not start."""
        cluster = self.cluster
        # Within systemd's start timeout (90 s by default) whatever the heartbeat.
        with anyio.move_on_after(min(cluster.ttl, JOIN_PATIENCE_SEC)):
            while True:
                try:
                    if await cluster.try_register():
                        break
                except NotRegistered as exc:
                    log.error("not_started", reason=str(exc))
                    return str(exc)
                await anyio.sleep(cluster.retry_after())
        cluster.runtime.claims = cluster.claims
        group.start_soon(cluster.keep_alive)
        group.start_soon(fence_runs, cluster)
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


async def fence_runs(cluster: Cluster) -> None:
    """Stop the runs at STOP, kill them at KILL: gone before the lease can expire."""
    stopped: set[int] = set()
    while True:
        phase = cluster.phase()
        if phase >= Phase.STOP:
            for run in list(cluster.runtime.runs.values()):
                if run.task_id not in stopped:
                    stopped.add(run.task_id)
                    run.request_stop("fenced: this host cannot renew its etcd lease")
        else:
            stopped.clear()
        if phase >= Phase.KILL:
            _kill_runs(cluster)
        now = time.monotonic()
        wait = FENCE_POLL_BEATS * cluster.heartbeat
        if cluster.fence is not None:
            wait = min(wait, cluster.fence.next_change(now))
        with anyio.move_on_after(max(wait, 0.01)):
            await cluster.changed.wait()
        cluster.changed = anyio.Event()


def _kill_runs(cluster: Cluster) -> None:
    for run in list(cluster.runtime.runs.values()):
        lease = run.lease
        group = verified_group(lease, cluster.runtime.boot_id) if lease is not None else None
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
                log.warning("fence_killed", task_id=run.task_id, agent=run.agent, pgid=group)


async def tend(cluster: Cluster) -> None:
    """Every heartbeat while the lease is fine: publish slots, retry releases, retire earlier lives,
    sweep dead ones. A failure is logged once until a beat goes well, and tried again at the next."""
    said: str | None = None
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
            if isinstance(exc, EtcdError):
                cluster.unreachable(exc)
            if said != type(exc).__name__:
                said = type(exc).__name__
                log.warning("cluster_tend_failed", reason=str(exc))
            continue
        said = None


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
