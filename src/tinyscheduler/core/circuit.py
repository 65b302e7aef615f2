"""Circuit breakers: an agent (or goose itself) that keeps failing is left alone for a while.

A task's own failures back off per task (core.attempts). What fails for every task of an agent
(goose missing, a recipe gone, an exception while starting, every run exiting at once) would
otherwise go from task to task as fast as passes come. So each agent has a breaker, and goose and
TinyTask's writes one more each that stands for all agents:

- a run that could not start opens the agent's breaker at once (goose's, when goose itself is
  missing; TinyTask's, when the claim was not confirmed), a failed run counts, and
  `RUN_FAILURES_TO_OPEN` in a row open it;
- an open breaker stays open for `base_sec`, doubling with every opening in a row, capped;
- once that time is up the agent may start one run again: a start closes the "could not start"
  count, a succeeded run closes everything; another failure opens it again, for longer.

Pure values and decisions: time is an input, the caller logs and publishes what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from tinyscheduler.core.attempts import MAX_RETRY_DELAY_SEC, retry_delay
from tinyscheduler.core.text import iso

#: Failed runs of one agent in a row (each of a task backing off on its own) that open its breaker.
RUN_FAILURES_TO_OPEN = 3


@dataclass(frozen=True)
class Breaker:
    #: Starts that failed in a row (a start that works resets it).
    start_failures: int = 0
    #: Runs that started and failed in a row (a succeeded run resets it).
    run_failures: int = 0
    #: Openings in a row: the exponent of the wait.
    opens: int = 0
    open_until: datetime | None = None
    reason: str = ""

    def is_open(self, now: datetime) -> bool:
        return self.open_until is not None and now < self.open_until

    @property
    def failing(self) -> bool:
        return self.start_failures > 0 or self.run_failures > 0


@dataclass(frozen=True)
class Unavailable:
    """Why an agent may not start a run now, and until when."""

    agent: str
    until: datetime
    reason: str

    def __str__(self) -> str:
        return f"agent {self.agent} unavailable until {iso(self.until)}: {self.reason}"


@dataclass(frozen=True)
class CircuitPolicy:
    base_sec: float
    cap_sec: float = MAX_RETRY_DELAY_SEC
    run_failures_to_open: int = RUN_FAILURES_TO_OPEN


def _opened(breaker: Breaker, reason: str, now: datetime, policy: CircuitPolicy) -> Breaker:
    opens = breaker.opens + 1
    delay = retry_delay(opens, policy.base_sec, policy.cap_sec)
    return replace(breaker, opens=opens, open_until=now + timedelta(seconds=delay), reason=reason)


def start_failed(breaker: Breaker, reason: str, now: datetime, policy: CircuitPolicy) -> Breaker:
    """A run of this agent could not start: open at once."""
    return _opened(replace(breaker, start_failures=breaker.start_failures + 1), reason, now, policy)


def run_failed(breaker: Breaker, reason: str, now: datetime, policy: CircuitPolicy) -> Breaker:
    """A run started and failed: counted; enough in a row open the breaker."""
    counted = replace(breaker, run_failures=breaker.run_failures + 1)
    if counted.run_failures < policy.run_failures_to_open:
        return counted
    why = f"{counted.run_failures} runs in a row failed (last: {reason})"
    return _opened(counted, why, now, policy)


def started(breaker: Breaker) -> Breaker:
    """A run started: whatever kept runs from starting is gone; failed runs still count."""
    if breaker.run_failures:
        return replace(breaker, start_failures=0)
    return Breaker()


def succeeded(_breaker: Breaker) -> Breaker:
    return Breaker()


@dataclass
class Circuits:
    """The breakers of every agent and of goose; plain data the service keeps between passes."""

    goose: Breaker = field(default_factory=Breaker)
    #: TinyTask's writes: a claim it did not confirm (no reply, an error) stops every agent's starts
    #: for a while, so that a server that drops its replies is not sent claim after claim.
    tinytask: Breaker = field(default_factory=Breaker)
    agents: dict[str, Breaker] = field(default_factory=dict)

    def agent(self, name: str) -> Breaker:
        return self.agents.get(name) or Breaker()

    def put(self, name: str, breaker: Breaker) -> None:
        if breaker == Breaker():
            self.agents.pop(name, None)
        else:
            self.agents[name] = breaker

    def unavailable(self, agents: Iterable[str], now: datetime) -> dict[str, Unavailable]:
        """The agents that may not start a run now, each with its reason (goose's first)."""
        found: dict[str, Unavailable] = {}
        shared = next((b for b in (self.goose, self.tinytask) if b.is_open(now)), None)
        for name in agents:
            breaker = shared or self.agent(name)
            if breaker.is_open(now):
                assert breaker.open_until is not None
                found[name] = Unavailable(name, breaker.open_until, breaker.reason)
        return found

    def goose_due(self, now: datetime) -> bool:
        """Goose failed its check and its wait is over: time to check it again."""
        return self.goose.failing and not self.goose.is_open(now)


def describe(unavailable: Mapping[str, Unavailable]) -> list[str]:
    """One line per unavailable agent, in name order."""
    return [str(unavailable[name]) for name in sorted(unavailable)]
