"""Which agents may start runs: their breakers (core.circuit) moved by what happens, said once per change.

- goose is checked (adapters.goose_probe) at start, on reload, and again once its breaker's wait is
  over; while it is missing no agent starts anything, and the daemon goes on (leases, reports);
- a run that could not start opens its agent's breaker at once, failed runs in a row open it too,
  a start or a success closes it again;
- every opening and closing is one log line, and the open breakers are problems in `status` and
  in the sd_notify STATUS until they close.
"""

from __future__ import annotations

from datetime import datetime

import anyio
import structlog

from tinyscheduler.adapters.goose_probe import GooseCheck, check_goose
from tinyscheduler.config.settings import Settings
from tinyscheduler.core.circuit import (
    Breaker,
    CircuitPolicy,
    Unavailable,
    run_failed,
    start_failed,
    started,
    succeeded,
)
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.core.text import iso
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")

#: Outcomes that say the agent's run did not do its work (a stop on request is not one of them).
FAILED_RUNS = frozenset({Outcome.FAILED, Outcome.INCOMPLETE, Outcome.TIMED_OUT, Outcome.IDLE_TIMEOUT, Outcome.LOST})


def circuit_policy(runtime: Runtime) -> CircuitPolicy:
    """Breakers wait one loop interval at first: never less than a pass would anyway."""
    return CircuitPolicy(base_sec=float(runtime.config.settings.loop_interval_sec))


async def probe_goose(runtime: Runtime, settings: Settings) -> GooseCheck:
    """What `settings`' goose is (in a thread: it runs `goose --version`)."""
    return await anyio.to_thread.run_sync(check_goose, settings.goose_bin, runtime.environ)


async def check_goose_now(runtime: Runtime) -> bool:
    """Check the configured goose and move its breaker; True when it can run."""
    return apply_goose_check(runtime, await probe_goose(runtime, runtime.config.settings))


def apply_goose_check(runtime: Runtime, found: GooseCheck) -> bool:
    """Move goose's breaker by what a check found (said once per change); True when it can run."""
    s = runtime.config.settings
    circuits = runtime.circuits
    before = circuits.goose
    if found.problem is None:
        circuits.goose = Breaker()
        if before.failing:
            log.info("goose_available", program=s.goose_bin, path=str(found.path), version=found.version)
        return True
    reason = f"goose {s.goose_bin!r} {found.problem}"
    circuits.goose = start_failed(before, reason, runtime.clock(), circuit_policy(runtime))
    runtime.counters.add("goose_check_errors")
    if before.failing:  # said when it became unavailable; each check again is a quieter line
        log.info("goose_still_unavailable", reason=reason, until=_iso(circuits.goose.open_until))
    else:
        _said_open("goose_unavailable", circuits.goose, reason=reason, detail="no run can start until it is there")
    return False


async def recheck_goose_if_due(runtime: Runtime) -> None:
    if runtime.circuits.goose_due(runtime.clock()):
        await check_goose_now(runtime)


def note_start_failed(runtime: Runtime, agent: str, reason: str, *, goose: bool = False) -> None:
    """A run of `agent` could not start (goose itself, when `goose`): its breaker opens at once."""
    circuits = runtime.circuits
    runtime.counters.add("start_errors")
    now, policy = runtime.clock(), circuit_policy(runtime)
    if goose:
        circuits.goose = start_failed(circuits.goose, reason, now, policy)
        _said_open("goose_unavailable", circuits.goose, reason=reason, detail="no run can start until it is there")
        return
    breaker = start_failed(circuits.agent(agent), reason, now, policy)
    circuits.put(agent, breaker)
    _said_open(
        "agent_unavailable", breaker, agent=agent, reason=reason, detail="no run of this agent starts until then"
    )


def note_claim_unconfirmed(runtime: Runtime, reason: str) -> None:
    """TinyTask did not confirm a claim (no reply, a server error): no agent starts for a while."""
    circuits = runtime.circuits
    runtime.counters.add("start_errors")
    circuits.tinytask = start_failed(circuits.tinytask, reason, runtime.clock(), circuit_policy(runtime))
    _said_open(
        "tinytask_writes_failing", circuits.tinytask, reason=reason, detail="no run starts until a claim goes through"
    )


def note_run_ended(runtime: Runtime, agent: str, outcome: Outcome, reason: str) -> None:
    """A run of `agent` started and ended: it started, so what kept runs from starting is gone; a
    success closes the breaker, failed runs in a row open it."""
    circuits = runtime.circuits
    if circuits.tinytask.failing:  # this run's claim went through
        circuits.tinytask = Breaker()
        log.info("tinytask_writes_working", reason=f"a claim of {agent} went through")
    before = circuits.agent(agent)
    after = started(before)
    if outcome is Outcome.SUCCEEDED:
        after = succeeded(after)
    elif outcome in FAILED_RUNS:
        opens = after.opens
        after = run_failed(after, reason, runtime.clock(), circuit_policy(runtime))
        if after.opens > opens:
            _said_open("agent_unavailable", after, agent=agent, reason=after.reason, detail="its runs keep failing")
    circuits.put(agent, after)
    if before.opens and not after.opens:
        log.info("agent_available", agent=agent, reason=f"a run {outcome.value}")


def unavailable(runtime: Runtime, agents: set[str]) -> dict[str, Unavailable]:
    return runtime.circuits.unavailable(agents, runtime.clock())


def problems(runtime: Runtime) -> list[str]:
    """What `status` and STATUS say while breakers are open (goose's stands for every agent)."""
    circuits, now = runtime.circuits, runtime.clock()
    if circuits.goose.failing:
        return [f"goose unavailable{_until(circuits.goose, now)}: {circuits.goose.reason}; no run can start"]
    lines = []
    if circuits.tinytask.failing:
        claims = circuits.tinytask.start_failures
        lines.append(
            f"TinyTask did not confirm {claims} claim{'s' if claims != 1 else ''} in a row"
            f"{_until(circuits.tinytask, now)}: {circuits.tinytask.reason}; no run starts meanwhile"
        )
    for agent in sorted(circuits.agents):
        breaker = circuits.agents[agent]
        if breaker.is_open(now):
            lines.append(f"agent {agent} unavailable{_until(breaker, now)}: {breaker.reason}")
    return lines


def published(runtime: Runtime) -> dict[str, dict[str, str]]:
    """The agents unavailable now, as last_pass.json keeps them for a dry run to read."""
    agents = set(runtime.config.limits) | set(runtime.circuits.agents)
    return {
        agent: {"until": iso(entry.until), "reason": entry.reason}
        for agent, entry in unavailable(runtime, agents).items()
    }


def from_published(data: object, now: datetime) -> dict[str, Unavailable]:
    """`published` read back (by a dry run), ignoring anything malformed or already over."""
    found: dict[str, Unavailable] = {}
    if not isinstance(data, dict):
        return found
    for agent, entry in data.items():
        try:
            until = datetime.fromisoformat(entry["until"])
            reason = str(entry["reason"])
        except (TypeError, KeyError, ValueError):
            continue
        if until.tzinfo is not None and until > now:
            found[str(agent)] = Unavailable(str(agent), until, reason)
    return found


async def goose_unavailable(
    program: str, environ: dict[str, str], agents: set[str], now: datetime
) -> dict[str, Unavailable]:
    """Every agent, when goose cannot run now (a dry run's own check)."""
    found = await anyio.to_thread.run_sync(check_goose, program, environ)
    if found.problem is None:
        return {}
    return {agent: Unavailable(agent, now, f"goose {program!r} {found.problem}") for agent in agents}


def _until(breaker: Breaker, now: datetime) -> str:
    if breaker.open_until is None or not breaker.is_open(now):
        return " (checking again now)"
    return f" until {iso(breaker.open_until)}"


def _said_open(event: str, breaker: Breaker, **fields: str) -> None:
    log.error(event, until=_iso(breaker.open_until), openings=breaker.opens, **fields)


def _iso(moment: datetime | None) -> str | None:
    return iso(moment) if moment else None
