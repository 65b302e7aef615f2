"""Several hosts, one TinyTask, through etcd: real daemons (one per host id, base path and registry),
a real 3-member etcd cluster, the fake TinyTask over HTTP and the stand-in goose, whose per-task lock
records an `overlap` whenever a task runs on two hosts at once."""

from __future__ import annotations

from tinyscheduler.testing.fake import FakeTinyTask

from etcd_harness import Hosts
from harness import wait_for


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
