"""The etcd client against a real 3-member etcd cluster: leases, create-if-absent claims that exactly
one of many racing clients wins, fencing by lease, and failover when a member stops."""

from __future__ import annotations

import time

import anyio
import pytest

from tinyscheduler.adapters import etcd
from tinyscheduler.adapters.etcd import EtcdClient, EtcdUnavailable

from etcd_harness import EtcdCluster


async def test_a_lease_lives_while_renewed_and_takes_its_keys_when_revoked(etcd_cluster: EtcdCluster) -> None:
    client = EtcdClient(etcd_cluster.endpoints.split(","))
    try:
        lease, ttl = await client.grant(5)
        assert ttl == 5
        await client.put("/t/a", "x", lease)
        assert await client.keepalive(lease) == 5
        left, granted = await client.time_to_live(lease)
        assert 0 < left <= 5 and granted == 5
        await client.revoke(lease)
        assert await client.get("/t/a") is None
        assert await client.keepalive(lease) == 0
        assert (await client.time_to_live(lease))[0] == -1
        await client.revoke(lease)  # twice is no error
    finally:
        await client.aclose()


async def test_of_eight_clients_racing_for_forty_claims_exactly_one_wins_each(etcd_cluster: EtcdCluster) -> None:
    urls = etcd_cluster.endpoints.split(",")
    clients = [EtcdClient(urls[n % 3 :] + urls[: n % 3]) for n in range(8)]
    wins: dict[int, list[int]] = {task: [] for task in range(40)}
    try:
        leases = [(await c.grant(10))[0] for c in clients]

        async def race(n: int) -> None:
            for task in range(40):
                key = f"/race/claims/{task}"
                result = await clients[n].txn([etcd.absent(key)], [etcd.put(key, str(n), leases[n])], [])
                if result.succeeded:
                    wins[task].append(n)

        async with anyio.create_task_group() as group:
            for n in range(8):
                group.start_soon(race, n)
        assert all(len(winners) == 1 for winners in wins.values()), wins
        # The fencing token: only the holder's lease matches; a delete guarded by another lease does nothing.
        holder = wins[0][0]
        other = (holder + 1) % 8
        guarded = await clients[other].txn(
            [etcd.lease_is("/race/claims/0", leases[other])], [etcd.delete("/race/claims/0")], []
        )
        assert not guarded.succeeded and await clients[other].get("/race/claims/0") is not None
        kept = await clients[holder].txn(
            [etcd.lease_is("/race/claims/0", leases[holder])], [etcd.delete("/race/claims/0")], []
        )
        assert kept.succeeded and await clients[holder].get("/race/claims/0") is None
    finally:
        for client in clients:
            await client.aclose()


async def test_requests_fail_over_to_the_next_member_and_fail_clearly_when_none_answers(
    etcd_cluster: EtcdCluster,
) -> None:
    client = EtcdClient(etcd_cluster.endpoints.split(","), timeout=1.0)
    try:
        await client.put("/f/a", "1")
        etcd_cluster.stop_member(etcd_cluster.members[0])
        began = time.monotonic()
        await client.put("/f/b", "2")  # the first endpoint refuses: the next one answers
        assert [kv.key for kv in await client.get_prefix("/f/")] == ["/f/a", "/f/b"]
        assert time.monotonic() - began < 5
        etcd_cluster.stop_member(etcd_cluster.members[1])
        etcd_cluster.stop_member(etcd_cluster.members[2])
        with pytest.raises(EtcdUnavailable) as caught:
            await client.get("/f/a")
        assert str(etcd_cluster.members[0].client_port) in str(caught.value)
    finally:
        await client.aclose()
