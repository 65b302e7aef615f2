"""Several hosts, one TinyTask, through etcd: real daemons (one per host id, base path and registry),
a real 3-member etcd cluster, the fake TinyTask over HTTP and the stand-in goose, whose per-task lock
records an `overlap` whenever a task runs on two hosts at once."""

from __future__ import annotations

import time

import psutil

from etcd_harness import EtcdCluster, Hosts, TcpProxy
from tinyscheduler.testing.fake import FakeTinyTask

from harness import kill_everything, wait_for


def test_three_hosts_on_one_queue_run_every_task_once(fake: FakeTinyTask, hosts: Hosts) -> None:
    for n in range(3):
        hosts.add(f"h{n}", [(f"dev-{n}a", "dev", 2), (f"dev-{n}b", "dev", 2)], seconds=0.3)
    tasks = [fake.create_task(f"work {i}", queue_name="dev") for i in range(40)]
    for n in range(3):
        hosts.start(f"h{n}")
    wait_for(lambda: all(t["status"] == "complete" for t in fake.tasks()), timeout=120, what="every task complete")
    records = hosts.records()
    starts = [r for r in records if r["event"] == "start"]
    assert hosts.overlaps() == []
    assert sorted(r["task_id"] for r in starts) == sorted(t["id"] for t in tasks), "each task ran exactly once"
    assert len({r["agent"][4] for r in starts}) == 3, "every host took part"


TTL = 3.0  # TINYSCHEDULER_CLUSTER_HEARTBEAT_SEC=1 in these tests: a lease of 3 heartbeats


def working_for(fake: FakeTinyTask, agents: set[str]) -> list[int]:
    return [t["id"] for t in fake.tasks() if t["status"] == "working" and t["assigned_to"] in agents]


def in_flight_on(hosts: Hosts, agents: set[str]) -> set[int]:
    """Tasks whose stand-in run started on one of `agents` and has not ended."""
    open_runs: dict[int, int] = {}
    for record in hosts.records():
        if record["event"] == "start" and record["agent"] in agents:
            open_runs[record["pid"]] = record["task_id"]
        elif record["event"] == "end":
            open_runs.pop(record["pid"], None)
    return set(open_runs.values())


def three_busy_hosts(fake: FakeTinyTask, hosts: Hosts, tasks: int, seconds: float, **env: str) -> list[int]:
    for n in range(3):
        hosts.add(f"h{n}", [(f"dev-{n}", "dev", 2)], seconds=seconds)
    ids = [fake.create_task(f"work {i}", queue_name="dev")["id"] for i in range(tasks)]
    for n in range(3):
        hosts.start(f"h{n}", **(env if n == 2 else {}))
    wait_for(lambda: len(in_flight_on(hosts, {"dev-2"})) == 2, timeout=60, what="two runs in flight on h2")
    return ids


def all_done_once(fake: FakeTinyTask, hosts: Hosts, ids: list[int]) -> None:
    wait_for(lambda: all(fake.task(i)["status"] == "complete" for i in ids), timeout=90, what="every task complete")
    assert hosts.overlaps() == [], "a task ran on two hosts at once"
    ended_well = {r["task_id"] for r in hosts.records() if r["event"] == "end" and r.get("exit") == 0}
    assert ended_well == set(ids), "every task was really worked on"


def test_a_host_killed_with_its_runs_has_its_tasks_requeued_by_one_survivor_within_the_ttl(
    fake: FakeTinyTask, hosts: Hosts
) -> None:
    ids = three_busy_hosts(fake, hosts, 14, 2.0)
    lost = in_flight_on(hosts, {"dev-2"})
    psutil.Process(hosts.daemons["h2"].pid).kill()
    kill_everything(hosts.workspaces["h2"].base)
    killed_at = time.monotonic()
    wait_for(lambda: not working_for(fake, {"dev-2"}), timeout=30, what="h2's tasks requeued")
    recovered = time.monotonic() - killed_at
    assert recovered <= 3 * TTL, f"recovery took {recovered:.1f}s"
    all_done_once(fake, hosts, ids)
    for task_id in lost:  # back in the shared queue, said once, by one survivor
        said = [c["content"] for c in fake.comments(task_id) if "presumed lost" in c["content"]]
        assert len(said) == 1 and "back in queue dev, unassigned" in said[0], said


def test_one_etcd_member_stopped_costs_nothing(fake: FakeTinyTask, hosts: Hosts, etcd_cluster: EtcdCluster) -> None:
    ids = three_busy_hosts(fake, hosts, 18, 1.0)
    etcd_cluster.stop_member(etcd_cluster.leader())
    stopped_at = time.monotonic()
    started = len([r for r in hosts.records() if r["event"] == "start"])
    wait_for(lambda: len([r for r in hosts.records() if r["event"] == "start"]) > started + 2, what="runs starting")
    assert time.monotonic() - stopped_at <= 3 * TTL
    all_done_once(fake, hosts, ids)


def test_a_host_cut_off_from_etcd_stops_its_runs_before_its_lease_expires_and_when_back_writes_nothing_twice(
    fake: FakeTinyTask, hosts: Hosts, etcd_cluster: EtcdCluster
) -> None:
    proxy = TcpProxy(etcd_cluster.members[0].client_port)
    try:
        ids = three_busy_hosts(fake, hosts, 14, 3.0, TINYSCHEDULER_ETCD_ENDPOINTS=proxy.url)
        cut = in_flight_on(hosts, {"dev-2"})
        cut_at = proxy.cut()
        wait_for(lambda: not in_flight_on(hosts, {"dev-2"}), timeout=30, what="h2's runs stopped")
        stopped = time.monotonic() - cut_at
        assert stopped < TTL, f"h2 stopped its runs {stopped:.1f}s after the cut, after its lease could expire"
        wait_for(lambda: not working_for(fake, {"dev-2"}), timeout=30, what="h2's tasks requeued")
        assert time.monotonic() - cut_at <= 3 * TTL
        all_done_once(fake, hosts, ids)
        daemon = hosts.daemons["h2"]
        assert daemon.proc is not None and daemon.proc.poll() is None, "h2 lives on, fenced"
        assert not [
            r
            for r in hosts.records()
            if r["event"] == "start" and r["agent"] == "dev-2" and r["t"] > time.time() - stopped - 1
        ]

        proxy.restore()  # back: it settles what it stopped without writing to tasks the others took over
        wait_for(lambda: hosts.workspaces["h2"].leases() == [], timeout=30, what="h2's leases settled")
        for task_id in cut:
            comments = [c["content"] for c in fake.comments(task_id)]
            assert len(comments) == 1 and "presumed lost" in comments[0], comments
        more = [fake.create_task(f"after {i}", queue_name="dev")["id"] for i in range(6)]
        wait_for(lambda: all(fake.task(i)["status"] == "complete" for i in more), timeout=60, what="new tasks done")
        assert hosts.overlaps() == []
        starts = [r["task_id"] for r in hosts.records() if r["event"] == "start"]
        assert sorted(starts) == sorted(ids + more + list(cut)), "only the stopped runs ran again, once"
        assert any(r["agent"] == "dev-2" and r["task_id"] in more for r in hosts.records()), "h2 works again"
    finally:
        proxy.close()
