"""The dry run's plan as a person reads it: slots, what would be assigned and started, lease verdicts, skips."""

from __future__ import annotations

from tinyscheduler.cli.status import printable, table
from tinyscheduler.core.planner import LeaseVerdict, Plan
from tinyscheduler.service.gather import Gathered, queued_and_blocked


def render_plan(result: Plan, gathered: Gathered, *, header: str) -> str:
    """The dry-run table: slots, what would be assigned and started, lease verdicts, skips."""
    snapshot = gathered.snapshot
    lines = [header, ""]
    queued, blocked = queued_and_blocked(snapshot)
    lines.append(f"{queued} idle task(s) seen, {blocked} blocked, {len(snapshot.leases)} lease(s) on disk")
    lines += ["", "Slots"]
    lines += (
        table(
            ["agent", "limit", "busy", "would start", "free after"],
            [[s.agent, s.limit, s.busy, s.starting, s.free_after] for s in result.slots],
        )
        if result.slots
        else ["  (no agents: set TINYSCHEDULER_AGENT_LIMITS or an agent-control file)"]
    )
    if result.assignments:
        lines += ["", f"Would assign ({len(result.assignments)})"]
        lines += table(
            ["task", "queue", "agent", "reason"], [[a.task_id, a.queue, a.agent, a.reason] for a in result.assignments]
        )
    lines += ["", f"Would start ({len(result.starts)})"]
    lines += (
        table(["task", "agent", "reason"], [[s.task_id, s.agent, s.reason] for s in result.starts])
        if result.starts
        else ["  (nothing)"]
    )
    leases = [d for d in result.leases if d.verdict is not LeaseVerdict.FOREIGN]
    if leases:
        lines += ["", f"Leases ({len(leases)})"]
        lines += table(
            ["task", "agent", "verdict", "reason"], [[d.task_id, d.agent, d.verdict.value, d.reason] for d in leases]
        )
    if result.skips:
        lines += ["", f"Not started ({len(result.skips)})"]
        lines += table(["task", "agent", "reason"], [[s.task_id, s.agent or "-", s.reason] for s in result.skips])
    if gathered.problems:
        lines += ["", f"Skipped as malformed ({len(gathered.problems)})"]
        lines += [f"  {p}" for p in gathered.problems]
    if gathered.quarantined:
        lines += ["", f"Quarantined lease files ({len(gathered.quarantined)})"]
        lines += [
            f"  {q.original} -> {q.moved_to or '(left in place: dry run)'}: {q.reason}" for q in gathered.quarantined
        ]
    return printable(lines)
