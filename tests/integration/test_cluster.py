"""Several hosts, one TinyTask, through etcd: real daemons (one per host id, base path and registry),
a real 3-member etcd cluster, the fake TinyTask over HTTP and the stand-in goose, whose per-task lock
records an `overlap` whenever a task runs on two hosts at once."""

from __future__ import annotations

import json
import time
from collections import Counter

import psutil

from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.testing.fake import FakeTinyTask

from etcd_harness import EtcdCluster, Hosts, TcpProxy
from harness import kill_everything, wait_for


def test_three_hosts_sharing_one_queue_run_300_tasks_each_exactly_once(fake: FakeTinyTask, hosts: Hosts) -> None:
    """The workload: 3 daemons, each with its own host id, base path and registry, one pool spanning
    them (queue dev). Without etcd, 40 tasks of this shape had 9 run on two hosts at once."""
    for n in range(3):
        # A heartbeat of 3 s (not 1): an etcd slowed by a loaded machine must not fence a host here.
        agents = [(f"dev-{n}a", "dev", 4), (f"dev-{n}b", "dev", 4)]
        hosts.add(f"h{n}", agents, seconds=0.05, TINYSCHEDULER_CLUSTER_HEARTBEAT_SEC="3")
    ids = [fake.create_task(f"work {i}", queue_name="dev")["id"] for i in range(300)]
    fake.reset_requests()
    for n in range(3):
        hosts.start(f"h{n}")
    wait_for(lambda: all(t["status"] == "complete" for t in fake.tasks()), timeout=180, what="every task complete")
    starts = [r for r in hosts.records() if r["event"] == "start"]
    assert hosts.overlaps() == []
    assert sorted(r["task_id"] for r in starts) == sorted(ids), "each task ran exactly once, none lost"
    assert len({r["agent"][4] for r in starts}) == 3, "every host took part"

    def claims() -> list[object]:
        return json.loads(hosts.cli("h0", "status", "--cluster", "--json").stdout)["claims"]

    wait_for(lambda: claims() == [], what="every claim released after its report")
    cost = {h: hosts.last_pass(h)["cluster"]["etcd_requests_by_path"] for h in hosts.workspaces}
    txns = sum(c.get("/v3/kv/txn", 0) for c in cost.values())
    print(
        f"300 tasks: {txns} etcd transactions, {sum(sum(c.values()) for c in cost.values())} etcd requests,",
        f"{len(fake.requests)} TinyTask requests; per host: {cost}",
    )
    # A claim and its release per task (the run's own claim and its report are answered from the
    # claim held under the live lease); the claims lost to another host racing for the head of the
    # queue, and those won just after another host ran the task and let go (the run reads the task
    # again and gives the claim back): measured about 1.6 per task with 3 hosts on one queue and
    # runs of 0.05 s (refills race most when runs are short); a few per host to register.
    assert txns <= 4 * len(ids) + 3 * 10, cost


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
    print(f"h2 killed with {len(lost)} runs: its tasks requeued {recovered:.1f}s later")
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
    print(f"etcd leader killed: runs starting again {time.monotonic() - stopped_at:.1f}s later")
    assert time.monotonic() - stopped_at <= 3 * TTL
    all_done_once(fake, hosts, ids)


def test_a_host_cut_off_from_etcd_stops_its_runs_before_its_lease_expires_and_when_back_writes_nothing_twice(
    fake: FakeTinyTask, hosts: Hosts, etcd_cluster: EtcdCluster
) -> None:
    proxy = TcpProxy(etcd_cluster.members[0].client_port)
    try:
        ids = three_busy_hosts(fake, hosts, 10, 3.0, TINYSCHEDULER_ETCD_ENDPOINTS=proxy.url)
        cut = in_flight_on(hosts, {"dev-2"})
        cut_at, cut_wall = proxy.cut(), time.time()
        before = wait_for(lambda: hosts.last_pass("h2").get("cluster"), what="h2's pass")
        wait_for(lambda: not in_flight_on(hosts, {"dev-2"}), timeout=30, what="h2's runs stopped")
        stopped = time.monotonic() - cut_at
        print(f"h2 cut off from etcd: its {len(cut)} runs stopped {stopped:.1f}s later")
        assert stopped < TTL, f"h2 stopped its runs {stopped:.1f}s after the cut, after its lease could expire"
        wait_for(lambda: not working_for(fake, {"dev-2"}), timeout=30, what="h2's tasks requeued")
        print(f"h2 cut off from etcd: its tasks requeued {time.monotonic() - cut_at:.1f}s later")
        assert time.monotonic() - cut_at <= 3 * TTL
        all_done_once(fake, hosts, ids)
        daemon = hosts.daemons["h2"]
        assert daemon.proc is not None and daemon.proc.poll() is None, "h2 lives on, fenced"
        late = [
            r for r in hosts.records() if r["event"] == "start" and r["agent"] == "dev-2" and r["t"] > cut_wall + 1.5
        ]
        assert late == [], "nothing started once a renewal had failed"
        status = hosts.cli("h2", "status")
        assert status.returncode == 1 and "cluster: host h2 " in status.stdout, status.stdout
        during = hosts.last_pass("h2")["cluster"]
        asked, seconds = during["etcd_requests"] - before["etcd_requests"], time.monotonic() - cut_at
        print(f"cut off for {seconds:.1f}s: {asked} etcd requests, {during['etcd_requests_by_path']}")
        assert asked <= 4 * 2 + seconds, "renewals every quarter beat until the TTL, then backed-off registrations"

        proxy.restore()  # back: it settles what it stopped without writing to tasks the others took over
        wait_for(lambda: hosts.workspaces["h2"].leases() == [], timeout=30, what="h2's leases settled")
        for task_id in cut:
            comments = [c["content"] for c in fake.comments(task_id)]
            assert len(comments) == 1 and "presumed lost" in comments[0], comments
        for n in range(3):  # short runs from here on
            hosts.workspaces[f"h{n}"].write_recipe(f"dev-{n}", {"mode": "succeed", "seconds": 0.3})
        more = [fake.create_task(f"after {i}", queue_name="dev")["id"] for i in range(4)]
        # Two only h2 may run: the queue's tasks may all go to the others under load.
        more += [fake.create_task(f"h2's {i}", queue_name="dev", assigned_to="dev-2")["id"] for i in range(2)]
        wait_for(lambda: all(fake.task(i)["status"] == "complete" for i in more), timeout=60, what="new tasks done")
        assert hosts.overlaps() == []
        starts = Counter(r["task_id"] for r in hosts.records() if r["event"] == "start")
        assert set(starts) == set(ids + more), "none lost"
        again = {task for task, count in starts.items() if count > 1 + (task in cut)}
        if again:  # only a host that could not renew its lease stops runs (etcd slow under load): say which
            fenced = [h for h in ("h0", "h1") if "cluster_renewal_failed" in hosts.daemons[h].output()]
            assert fenced, f"tasks {sorted(again)} ran again, yet no other host was fenced"
        assert all(starts[task] >= 2 for task in cut), "the stopped runs ran again"
        assert any(r["agent"] == "dev-2" and r["task_id"] in more for r in hosts.records()), "h2 works again"
        book = read_records(hosts.workspaces["h2"].base / "state" / "attempts.jsonl")
        assert all(book[t].failures == 0 for t in cut if t in book), "stopped by the fence: no failed attempt"
    finally:
        proxy.close()
