"""The claim gate: the one place where a run asks whether this host may take a task, and later
whether it may still write the task's outcome.

On one host the answer is always yes (`NoClaims`: no I/O, and nothing of etcd is even imported). In
cluster mode (service.cluster's `EtcdClaims`) a claim is an etcd key created only if absent and
bound to the host's lease, so exactly one host goes on:

- before a run writes anything for its task (service.run: its lease, then the one update that
  assigns the task and sets it `working`; for the pass's starts and the refills alike), with
  `starting=True`: refused as soon as the host cannot renew its lease. Once won, the run reads the
  task again (`shared`): the list it was planned from may predate another host's run of it;
- when a run of a previous daemon is adopted or settled, and right before an outcome is written,
  with `starting=False`: the claim is kept, or taken back from an earlier life of this host, and
  refused when another host holds it (taken over: hands off) or when this host cannot prove its
  lease alive (fenced: the outcome waits in the lease file);
- released once the outcome has been written and the lease file removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Claimed:
    """The gate's answer."""

    ok: bool
    #: Another host holds the task: this host must neither run nor report it.
    taken: bool = False
    #: Why not, for the log and the run's reason.
    reason: str = ""


CLAIMED = Claimed(True)


class ClaimGate(Protocol):
    #: Whether other hosts work on the same tasks: a task as listed before the claim may have changed
    #: since (run and completed elsewhere), so a run reads it again once its claim is won.
    shared: bool

    def refusing_starts(self) -> str | None:
        """Why this host may start nothing now (it cannot renew its lease), or None."""

    def refusing_reports(self) -> str | None:
        """Why this host may write no outcome now (its lease may expire any moment), or None."""

    async def claim(self, task_id: int, agent: str, *, starting: bool) -> Claimed: ...

    async def release(self, task_id: int) -> None:
        """The run is over and its lease file gone: the task is free for any host."""

    def problems(self) -> list[str]:
        """What keeps this host from working with the others, for `status` and STATUS= (one line each)."""

    def summary(self) -> dict[str, Any] | None:
        """This host in its cluster, for last_pass.json; None on one host."""


class NoClaims:
    """One host alone: every claim is granted, nothing is stored anywhere."""

    shared = False

    def refusing_starts(self) -> str | None:
        return None

    def refusing_reports(self) -> str | None:
        return None

    async def claim(self, task_id: int, agent: str, *, starting: bool) -> Claimed:
        return CLAIMED

    async def release(self, task_id: int) -> None:
        return None

    def problems(self) -> list[str]:
        return []

    def summary(self) -> dict[str, Any] | None:
        return None
