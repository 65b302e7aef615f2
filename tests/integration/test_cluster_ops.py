"""What an operator of several hosts meets: refusals at start, `status --cluster`, and etcd that cannot
be reached at start (a dead port and a member that accepts and never answers): the daemon starts
nothing, says so once and in `status`, keeps its loop and its watchdog going, asks etcd no more than
once a heartbeat or so, and joins as soon as etcd answers."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinyscheduler.testing.fake import FakeTinyTask

from etcd_harness import EtcdCluster, Hosts, TcpProxy, free_port
from harness import DaemonProcess, NotifyListener, wait_for

EXIT_REFUSED = 2


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


def phase(hosts: Hosts, host: str) -> str | None:
    cluster = hosts.last_pass(host).get("cluster") or {}
    return cluster.get("phase")


def scrape(daemon: DaemonProcess) -> dict[str, float]:
    """The daemon's /metrics, unlabelled samples by name."""
    [address] = [e["addr"] for e in daemon.log_events() if e.get("event") == "http_listening"]
    text = httpx.get(f"http://{address}/metrics", timeout=10).text
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def refusal(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("tinyscheduler: not started")]


def test_an_agent_in_the_registries_of_two_live_hosts_is_refused_in_one_line_naming_both(
    fake: FakeTinyTask, hosts: Hosts
) -> None:
    hosts.add("h0", [("dev-x", "dev", 1)])
    hosts.add("h1", [("dev-y", "dev", 1), ("dev-x", "dev", 1)])
    hosts.start("h0")
    wait_for(lambda: phase(hosts, "h0") == "ok", what="h0 registered")
    second = hosts.start("h1")
    assert second.wait(30) == EXIT_REFUSED
    assert refusal(second.output()) == [
        "tinyscheduler: not started: agent dev-x is in the registries of two live hosts: h0 and h1; "
        "an agent runs on one host only (remove it from one registry)"
    ]
    view = json.loads(hosts.cli("h0", "status", "--cluster", "--json").stdout)
    assert [h["host"] for h in view["hosts"]] == ["h0"], "the refused host left nothing live behind"
    assert view["ended"] == [], "nor a life to sweep"


def test_a_second_daemon_with_the_same_host_id_is_refused(fake: FakeTinyTask, hosts: Hosts) -> None:
    hosts.add("h0", [("dev-a", "dev", 1)])
    hosts.add("twin", [("dev-b", "dev", 1)], TINYSCHEDULER_HOST_ID="h0")
    hosts.start("h0")
    wait_for(lambda: phase(hosts, "h0") == "ok", what="h0 registered")
    twin = hosts.start("twin")
    assert twin.wait(30) == EXIT_REFUSED
    [line] = refusal(twin.output())
    assert line.startswith(
        f"tinyscheduler: not started: host id h0 is in use by another live daemon (base path {hosts.root / 'h0'}"
    )
    assert line.endswith("give each host its own TINYSCHEDULER_HOST_ID")
    assert phase(hosts, "h0") == "ok"


def test_status_cluster_shows_the_hosts_their_agents_and_free_slots_heartbeats_and_claims(
    fake: FakeTinyTask, hosts: Hosts
) -> None:
    hosts.add("h0", [("dev-0", "dev", 2)])
    hosts.add("h1", [("ops-1", "ops", 3)])
    for agent in ("dev-0", "ops-1"):
        hosts.workspaces["h0" if agent == "dev-0" else "h1"].write_recipe(agent, {"mode": "hang"})
    dev = fake.create_task("dev work", queue_name="dev")["id"]
    ops = [fake.create_task(f"ops work {i}", queue_name="ops")["id"] for i in range(2)]
    hosts.start("h0")
    hosts.start("h1")

    def view() -> dict[str, Any]:
        return json.loads(hosts.cli("h0", "status", "--cluster", "--json").stdout)

    def busy(seen: dict[str, Any]) -> dict[str, tuple[int, int]]:
        return {a["agent"]: (a["busy"], a["free"]) for h in seen["hosts"] for a in h["agents"]}

    def settled() -> dict[str, Any] | None:
        seen = view()
        return seen if busy(seen) == {"dev-0": (1, 1), "ops-1": (2, 1)} else None

    seen = wait_for(settled, what="the runs' slots published")
    assert [(h["host"], h["heartbeat_age_sec"] <= 3) for h in seen["hosts"]] == [("h0", True), ("h1", True)]
    claims = {c["task_id"]: (c["host"], c["agent"], c["purpose"]) for c in seen["claims"]}
    assert claims == {dev: ("h0", "dev-0", "run"), ops[0]: ("h1", "ops-1", "run"), ops[1]: ("h1", "ops-1", "run")}
    assert seen["problems"] == [] and seen["cluster"] == "test"

    text = hosts.cli("h1", "status", "--cluster")
    assert text.returncode == 0, text.stdout + text.stderr
    assert "Hosts (2)" in text.stdout and "Claims (3)" in text.stdout and "No problems found." in text.stdout
    row = next(line.split() for line in text.stdout.splitlines() if line.strip().startswith("h1 "))
    assert row[-2:] == ["ops-1", "2/3"] and row[-3] == "1", row  # one slot free

    alone = hosts.cli("h0", "status", "--cluster", TINYSCHEDULER_ETCD_ENDPOINTS="")
    assert alone.returncode == 1 and "the cluster mode is off" in alone.stdout


def test_etcd_unreachable_at_start_the_daemon_waits_fenced_counted_and_visible_then_joins(
    fake: FakeTinyTask, hosts: Hosts, etcd_cluster: EtcdCluster, listener: NotifyListener
) -> None:
    stalled = TcpProxy(etcd_cluster.members[0].client_port)
    stalled.cut()  # accepts, never answers
    try:
        endpoints = f"http://127.0.0.1:{free_port()},{stalled.url}"  # nothing listens on the first
        hosts.add("h0", [("dev-0", "dev", 2)], seconds=0.2, TINYSCHEDULER_ETCD_ENDPOINTS=endpoints)
        ids = [fake.create_task(f"work {i}", queue_name="dev")["id"] for i in range(4)]
        daemon = hosts.start(
            "h0", NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="1000000", TINYSCHEDULER_HTTP_ADDR="127.0.0.1:0"
        )
        wait_for(lambda: "READY=1" in listener.texts(), what="READY=1 while etcd cannot be reached")
        first = wait_for(lambda: hosts.last_pass("h0") if "cluster" in hosts.last_pass("h0") else None, what="a pass")
        began = time.monotonic()
        wait_for(lambda: time.monotonic() - began > 6, what="six seconds of outage")
        later = hosts.last_pass("h0")
        window = time.monotonic() - began
        requests = later["cluster"]["etcd_requests"] - first["cluster"]["etcd_requests"]
        assert later["started_at"] != first["started_at"], "passes go on"
        assert later["cluster"]["phase"] == "lost" and daemon.proc is not None and daemon.proc.poll() is None
        assert not [r for r in hosts.records() if r["event"] == "start"], "nothing started without a claim"
        # Each registration tries both endpoints; they back off to one every 1-2 heartbeats (1 s here,
        # a jitter of 0.5-1 on a cap of 2) plus the stalled member's timeout (0.5 s). A fixed quarter
        # heartbeat between tries, as before, made 16 requests in 6 s.
        assert requests <= 2 * (window / 1.5 + 1), f"{requests} etcd requests in {window:.1f}s"
        pings = listener.times_of("WATCHDOG=1")
        assert [t for t in pings if t > began], "the watchdog is fed while etcd is away"
        gaps = [b - a for a, b in itertools.pairwise(t for t in pings if t > began)]
        assert max(gaps, default=0) < 1.0, gaps
        status = hosts.cli("h0", "status")
        assert status.returncode == 1
        said = [line for line in status.stdout.splitlines() if "cluster: host h0 not registered in etcd" in line]
        assert len(said) == 1 and "etcd unavailable" in said[0], status.stdout
        assert "Cluster:   host h0 in test, no lease, lost; 0 claims held" in status.stdout
        events = [e["event"] for e in daemon.log_events()]
        assert events.count("cluster_not_registered") == 1, "said once, not once per try"
        samples = scrape(daemon)
        assert samples["tinyscheduler_cluster_fenced"] == 1
        sent, failed = (
            samples["tinyscheduler_etcd_requests_total"],
            samples["tinyscheduler_etcd_request_failures_total"],
        )
        # Every request failed, but the one perhaps waiting now and the one cut short when the start
        # stopped waiting for etcd.
        assert failed > 0 and sent - failed <= 2, (sent, failed)

        stalled.restore()
        wait_for(lambda: phase(hosts, "h0") == "ok", timeout=30, what="h0 joined once etcd answered")
        wait_for(lambda: all(fake.task(i)["status"] == "complete" for i in ids), what="the tasks done")
        status = hosts.cli("h0", "status")
        assert status.returncode == 0 and "Cluster:   host h0 in test, lease " in status.stdout, status.stdout
        assert scrape(daemon)["tinyscheduler_cluster_fenced"] == 0
    finally:
        stalled.close()
