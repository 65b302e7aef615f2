"""`tinyscheduler status --cluster [--json]`: the hosts of this host's cluster as etcd knows them.

Read-only, from etcd alone (a few range reads and one lease lookup per host): the live hosts with
their agents, slots and free slots and the age of their last heartbeat, the tasks claimed and by
whom, and the lives of hosts that ended whose tasks a survivor is still to requeue. Exit 0 when
nothing is wrong, 1 when etcd cannot be read, the cluster mode is off, or this host's daemon runs
but is not among the live hosts.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import anyio

from tinyscheduler.adapters.etcd import EtcdClient, EtcdError
from tinyscheduler.adapters.lock import is_locked
from tinyscheduler.config.settings import Settings
from tinyscheduler.core.cluster import Claim, Keys, Member, dead_lives
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.text import format_age

#: Claims listed in the text output (`--json` has them all).
SHOWN_CLAIMS = 50


@dataclass
class ClusterStatus:
    cluster: str
    this_host: str
    endpoints: list[str]
    hosts: list[dict[str, Any]] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    #: Lives of hosts whose lease is gone and whose working tasks a survivor has yet to requeue.
    ended: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _host(member: Member, ttl: tuple[int, int]) -> dict[str, Any]:
    left, granted = ttl
    return {
        "host": member.host,
        "lease": f"{member.lease:x}",
        "since": member.since,
        # etcd counts a lease's TTL down from the last renewal it received.
        "heartbeat_age_sec": max(0, granted - left) if left >= 0 else None,
        "ttl_left_sec": left if left >= 0 else None,
        "agents": [
            {"agent": a.name, "queue": a.queue, "slots": a.slots, "busy": a.busy, "free": a.free} for a in member.agents
        ],
    }


async def _read(client: EtcdClient, keys: Keys, status: ClusterStatus) -> None:
    members = [m for kv in await client.get_prefix(keys.folder("members")) if (m := Member.decode(kv.value))]
    records = [m for kv in await client.get_prefix(keys.folder("hosts")) if (m := Member.decode(kv.value))]
    for member in sorted(members, key=lambda m: m.host):
        status.hosts.append(_host(member, await client.time_to_live(member.lease)))
    for life in dead_lives(records, ((m.host, m.lease) for m in members)):
        status.ended.append({"host": life.host, "lease": f"{life.lease:x}", "since": life.since})
    prefix = keys.folder("claims")
    for kv in await client.get_prefix(prefix):
        claim = Claim.decode(kv.value)
        task = kv.key.removeprefix(prefix)
        row: dict[str, Any] = {"task_id": int(task) if task.isdigit() else task, "lease": f"{kv.lease:x}"}
        if claim is None:
            row |= {"host": None, "agent": None, "purpose": None, "since": None}
        else:
            row |= {"host": claim.host, "agent": claim.agent, "purpose": claim.purpose.value, "since": claim.at}
        status.claims.append(row)
    status.claims.sort(key=lambda row: (str(row["host"]), str(row["task_id"]).zfill(12)))


def collect(settings: Settings) -> ClusterStatus:
    from tinyscheduler.service.cluster import etcd_client, host_name

    status = ClusterStatus(settings.cluster, host_name(settings), settings.etcd_urls)
    if not settings.clustered:
        status.problems.append("the cluster mode is off: TINYSCHEDULER_ETCD_ENDPOINTS is empty")
        return status

    async def read() -> None:
        client = etcd_client(settings)
        try:
            await _read(client, Keys(settings.cluster), status)
        finally:
            await client.aclose()

    try:
        anyio.run(read)
    except EtcdError as exc:
        status.problems.append(f"cannot read the cluster from etcd: {exc}")
        return status
    try:
        running = is_locked(settings.lock_file)
    except OSError:
        running = False
    if running and status.this_host not in {h["host"] for h in status.hosts}:
        status.problems.append(
            f"this host's daemon runs but {status.this_host} is not a live host of cluster {status.cluster}: "
            "it starts nothing (see `tinyscheduler status`)"
        )
    return status


def render(status: ClusterStatus) -> list[str]:
    from tinyscheduler.cli.status import table

    lines = [
        f"Cluster {status.cluster} ({', '.join(status.endpoints) or 'no etcd'}), seen from {status.this_host}",
        "",
        f"Hosts ({len(status.hosts)})",
    ]
    rows = []
    for host in status.hosts:
        age = host["heartbeat_age_sec"]
        agents = ", ".join(f"{a['agent']} {a['busy']}/{a['slots']}" for a in host["agents"]) or "-"
        free = sum(a["free"] for a in host["agents"])
        rows.append([host["host"], host["lease"], f"{format_age(age)} ago" if age is not None else "?", free, agents])
    lines += table(["host", "lease", "heartbeat", "free", "agents (busy/slots)"], rows) if rows else ["  (none)"]
    lines += ["", f"Claims ({len(status.claims)})"]
    shown = status.claims[:SHOWN_CLAIMS]
    claim_rows = [
        [c["task_id"], c["host"] or "?", c["agent"] or "?", c["purpose"] or "?", c["since"] or "?"] for c in shown
    ]
    lines += table(["task", "host", "agent", "for", "since"], claim_rows) if claim_rows else ["  (none)"]
    if len(status.claims) > len(shown):
        lines.append(f"  ... and {len(status.claims) - len(shown)} more (--json lists them all)")
    if status.ended:
        lines += ["", f"Ended, their working tasks to be requeued by a survivor ({len(status.ended)})"]
        lines += table(["host", "lease", "since"], [[e["host"], e["lease"], e["since"]] for e in status.ended])
    lines += ["", f"Problems ({len(status.problems)})" if status.problems else "No problems found."]
    lines += [f"  - {p}" for p in status.problems]
    return lines


def cluster_status_command(settings: Settings, *, json_output: bool, out: TextIO | None = None) -> int:
    from tinyscheduler.cli.status import printable

    out = out or sys.stdout
    status = collect(settings)
    if json_output:
        out.write(json.dumps(redacted("", asdict(status)), indent=2) + "\n")
    else:
        out.write(printable(render(status)))
    return 1 if status.problems else 0
