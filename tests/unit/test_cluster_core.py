"""The cluster mode's pure decisions (core.cluster): the fence's phases against a lease's TTL, who may
take a claim, which lives are dead, where a dead host's task goes back to, and values in etcd that
are not ours (garbage is never trusted: an unreadable claim is another host's)."""

from __future__ import annotations

from typing import Any

import pytest

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
    dead_lives,
    host_conflict,
    judge_claim,
    live_pools,
    requeue,
    ttl_of,
)
from tinyscheduler.core.tasks import Task

H = 5.0  # a heartbeat


def member(host: str = "h1", lease: int = 0x10, **agents: tuple[str | None, int]) -> Member:
    slots = tuple(AgentSlots(name, queue, count) for name, (queue, count) in sorted(agents.items()))
    return Member(host, lease, slots, boot_id="boot", base_path="/srv", since="2026-11-29T10:00:00Z")


def task(**fields: Any) -> Task:
    data: dict[str, Any] = {"id": 7, "status": "working", "assigned_to": "dev-1", "queue_name": "dev"} | fields
    return Task(**data)


@pytest.mark.parametrize(
    ("after", "failing", "phase"),
    [
        (0.0, False, Phase.OK),
        (7.4, False, Phase.OK),  # a renewal is due every 5 s: one late by less than half a beat is fine
        (7.5, False, Phase.HOLD),  # a beat missed: start nothing
        (0.1, True, Phase.HOLD),  # a renewal failed: at once
        (10.0, False, Phase.STOP),  # 2 beats: ask the runs to stop
        (12.5, False, Phase.KILL),  # 2.5 beats: kill what is left
        (15.0, False, Phase.LOST),  # the TTL: the others may take over
        (99.0, True, Phase.LOST),
    ],
)
def test_the_fence_stops_everything_before_the_lease_can_expire(after: float, failing: bool, phase: Phase) -> None:
    fence = Fence(renewed_at=100.0, ttl=ttl_of(H), heartbeat=H)
    assert fence.phase(100.0 + after, failing=failing) is phase
    assert fence.kill_at < fence.expires, "runs are dead before anyone may requeue their tasks"


def test_the_fence_says_when_to_look_again() -> None:
    fence = Fence(100.0, 15, H)
    assert fence.next_change(100.0) == pytest.approx(7.5)
    assert fence.next_change(111.0) == pytest.approx(1.5)
    assert fence.next_change(200.0) == H


@pytest.mark.parametrize(("heartbeat", "ttl"), [(5, 15), (1, 3), (0.5, 2), (60, 180)])
def test_the_ttl_is_three_heartbeats_in_whole_seconds(heartbeat: float, ttl: int) -> None:
    assert ttl_of(heartbeat) == ttl


def test_a_claim_is_taken_only_when_absent_and_an_unreadable_one_is_someone_elses() -> None:
    ours = Claim("h1", "dev-1", 0x10)
    assert judge_claim(None, False, "h1", 0x10) is ClaimVerdict.FREE
    assert judge_claim(ours, True, "h1", 0x10) is ClaimVerdict.OURS
    assert judge_claim(ours, True, "h1", 0x20) is ClaimVerdict.OUR_HOST  # an earlier life of this host
    assert judge_claim(Claim("h2", "dev-2", 0x10), True, "h1", 0x10) is ClaimVerdict.TAKEN
    assert judge_claim(None, True, "h1", 0x10) is ClaimVerdict.TAKEN


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b"[]", b"{}", b'{"host": 3}', b'{"host": ""}', b"\xff\xfe", b"[" * 100_000]
)
def test_garbage_in_etcd_decodes_to_nothing(raw: bytes) -> None:
    assert Claim.decode(raw) is None
    assert Member.decode(raw) is None


def test_records_round_trip_and_odd_fields_are_dropped() -> None:
    me = member(**{"dev-1": ("dev", 2), "legacy": (None, 1)})
    assert Member.decode(me.encode()) == me
    odd = b'{"host": "h1", "lease": 16, "agents": {"a": {"queue": 5, "slots": -1, "busy": true}, "b": 3}}'
    assert Member.decode(odd) == Member("h1", 16, (AgentSlots("a", None, 0, 0),))
    claim = Claim("h1", "dev-1", 16, Purpose.REQUEUE, "2026-11-29T10:00:00Z")
    assert Claim.decode(claim.encode()) == claim
    assert Claim.decode(b'{"host": "h1", "purpose": "steal"}') == Claim("h1", "", 0, Purpose.RUN)


def test_an_agent_or_a_host_id_used_twice_is_refused_in_one_line() -> None:
    assert agent_conflict("dev-1", None, "h1") is None
    assert agent_conflict("dev-1", "h1", "h1") is None
    line = agent_conflict("dev-1", "h0", "h1")
    assert line is not None and "\n" not in line
    assert line.startswith("agent dev-1 is in the registries of two live hosts: h0 and h1;")
    assert host_conflict(None, "h1", "boot", "/srv") is None
    assert host_conflict(member(), "h1", "boot", "/srv") is None, "an earlier daemon of this very host"
    other = host_conflict(member(), "h1", "other-boot", "/srv")
    assert other is not None and other.startswith("host id h1 is in use by another live daemon (base path /srv")


def test_dead_lives_are_those_without_a_member_of_the_same_lease() -> None:
    old = member("h1", 0x10)
    new = member("h1", 0x11)
    gone = member("h2", 0x20)
    assert dead_lives([old, new, gone], [("h1", 0x11)]) == [old, gone]
    assert dead_lives([new], [("h1", 0x11)]) == []


def test_a_dead_hosts_task_goes_back_to_its_queue_if_live_hosts_serve_it_else_to_idle_for_its_agent() -> None:
    dead = member("h2", 0x20, **{"dev-1": ("dev", 2), "solo": (None, 1)})
    pools = live_pools([member("h1", 0x10, **{"dev-9": ("dev", 1), "idle": ("ops", 0)})])
    assert pools == {"dev": {"dev-9"}}, "an agent with no slot serves nothing"

    back = requeue(task(), dead, pools, by="h1")
    assert back is not None and back.queue == "dev"
    assert back.fields == {"status": "idle", "assigned_to": None}
    assert "host h2 stopped renewing its etcd lease (lease 20)" in back.comment
    assert "back in queue dev, unassigned (not counted as a failed attempt)" in back.comment

    solo = requeue(task(assigned_to="solo", queue_name=None), dead, pools, by="h1")
    assert solo is not None and solo.queue is None and solo.fields == {"status": "idle"}
    assert "back to idle for solo" in solo.comment
    unserved = requeue(task(queue_name="ops"), dead, pools, by="h1")
    assert unserved is not None and unserved.fields == {"status": "idle"}, "no live host serves ops"

    assert requeue(task(status="complete"), dead, pools, by="h1") is None
    assert requeue(task(assigned_to="dev-9"), dead, pools, by="h1") is None, "not the dead host's agent"


def test_keys_keep_clusters_apart() -> None:
    a, b = Keys("a"), Keys("b")
    assert a.claim(7) == "/tinyscheduler/a/claims/7" != b.claim(7)
    assert a.record("h1", 0x1F) == "/tinyscheduler/a/hosts/h1/1f"
    assert a.claim(7).startswith(a.folder("claims"))
