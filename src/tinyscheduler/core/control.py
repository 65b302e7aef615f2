"""Operator control from plain data: pauses, the requests that change them, and how they are said.

A pause stops new runs from starting for an agent, a queue or the whole host; a drain is a host
pause of kind drain (the host starts nothing and says how many runs are left). Runs in flight are
not touched by a pause itself. Who asked and when are inputs: nothing here reads a clock, a socket
or a file. The daemon and, with no daemon running, the command line apply requests with
`change_pauses`, so both refuse the same things with the same words.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tinyscheduler.core.tasks import NAME_PATTERN
from tinyscheduler.core.text import iso

FORMAT_VERSION = 1
#: A reason is one line a person reads in `status`, comments and skip reasons.
MAX_REASON_CHARS = 300
MAX_USER_CHARS = 64
#: The user named for a pause the daemon made itself (an unreadable pause file).
SCHEDULER_USER = "tinyscheduler"


class Scope(enum.StrEnum):
    AGENT = "agent"
    QUEUE = "queue"
    HOST = "host"


class Kind(enum.StrEnum):
    PAUSE = "pause"
    #: A host pause whose end is awaited: the host is being emptied of runs (maintenance).
    DRAIN = "drain"


class Action(enum.StrEnum):
    PAUSE = "pause"
    RESUME = "resume"
    DRAIN = "drain"
    CANCEL = "cancel"
    #: Read only: the runs in flight and the pauses (`drain --wait` polls it).
    STATUS = "status"


class RequestError(ValueError):
    """A request or a pause file that cannot be used; the message is one line naming what and why."""


def named(scope: Scope, target: str) -> str:
    """What a pause is of, as a person says it: `agent dev-a`, `queue qa`, `host`."""
    return "host" if scope is Scope.HOST else f"{scope.value} {target}"


@dataclass(frozen=True)
class Pause:
    scope: Scope
    #: The agent or queue name; empty for the host.
    target: str
    user: str
    since: datetime
    reason: str = ""
    kind: Kind = Kind.PAUSE

    @property
    def what(self) -> str:
        return named(self.scope, self.target)

    @functools.cached_property
    def text(self) -> str:
        """`agent dev-a paused by alice since 2026-11-29T12:00:00Z: flaky provider`. Said once and
        kept: the planner gives it as the reason of every task the pause holds."""
        verb = "draining" if self.kind is Kind.DRAIN else "paused"
        why = f": {self.reason}" if self.reason else ""
        return f"{self.what} {verb} by {self.user} since {iso(self.since)}{why}"

    def to_json(self) -> dict[str, Any]:
        return {
            "scope": self.scope.value,
            "target": self.target,
            "user": self.user,
            "since": iso(self.since),
            "reason": self.reason,
            "kind": self.kind.value,
        }

    @classmethod
    def from_json(cls, data: object) -> Pause:
        if not isinstance(data, dict):
            raise RequestError("expected an object")
        scope = _choice(Scope, data.get("scope"), "scope")
        kind = _choice(Kind, data.get("kind", Kind.PAUSE.value), "kind")
        target = _target(scope, data.get("target", ""))
        since_text = data.get("since")
        try:
            since = datetime.fromisoformat(str(since_text))
        except ValueError:
            raise RequestError(f"since: {since_text!r} is not an ISO 8601 time") from None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        user = _text(data.get("user"), "user", MAX_USER_CHARS)
        if not user:
            raise RequestError("user: empty")
        if kind is Kind.DRAIN and scope is not Scope.HOST:
            raise RequestError("kind: only the host drains")
        return cls(scope, target, user, since, check_reason(data.get("reason", "")), kind)


@dataclass(frozen=True)
class Pauses:
    """Every pause in force on this host, in the order they were made."""

    items: tuple[Pause, ...] = ()

    @functools.cached_property
    def _index(self) -> dict[tuple[Scope, str], Pause]:
        return {(p.scope, p.target): p for p in self.items}

    def find(self, scope: Scope, target: str = "") -> Pause | None:
        return self._index.get((scope, target))

    @property
    def host(self) -> Pause | None:
        return self.find(Scope.HOST)

    @property
    def draining(self) -> Pause | None:
        host = self.host
        return host if host is not None and host.kind is Kind.DRAIN else None

    def holding(self, agent: str | None, queue: str | None) -> Pause | None:
        """The pause that keeps a task of `queue` from starting on `agent`, if any (the widest first)."""
        if not self.items:
            return None
        host = self.host
        if host is not None:
            return host
        if queue is not None and (paused := self.find(Scope.QUEUE, queue)) is not None:
            return paused
        return self.find(Scope.AGENT, agent) if agent is not None else None

    def with_pause(self, pause: Pause) -> Pauses:
        return Pauses((*self.without(pause.scope, pause.target).items, pause))

    def without(self, scope: Scope, target: str = "") -> Pauses:
        return Pauses(tuple(p for p in self.items if not (p.scope is scope and p.target == target)))

    def to_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "pauses": [p.to_json() for p in self.items]}

    @classmethod
    def from_json(cls, data: object) -> Pauses:
        if not isinstance(data, dict) or not isinstance(data.get("pauses"), list):
            raise RequestError('expected an object with a "pauses" list')
        found: list[Pause] = []
        for index, item in enumerate(data["pauses"]):
            try:
                pause = Pause.from_json(item)
            except RequestError as exc:
                raise RequestError(f"pauses[{index}]: {exc}") from None
            found = [p for p in found if (p.scope, p.target) != (pause.scope, pause.target)] + [pause]
        return cls(tuple(found))

    @classmethod
    def unreadable(cls, where: str, why: str, now: datetime) -> Pauses:
        """What an unreadable pause file stands for: the host paused, so that nothing an operator
        paused starts by mistake, until the file is fixed or `resume --host` replaces it."""
        reason = f"{where} is unreadable ({why}); fix it, or `resume --host` replaces it and drops its pauses"
        return cls((Pause(Scope.HOST, "", SCHEDULER_USER, now, reason[:MAX_REASON_CHARS]),))


# --- requests ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    action: Action
    scope: Scope | None = None
    target: str = ""
    reason: str = ""
    #: pause: also stop the target's runs in flight through the ladder (requeued, not counted).
    stop_runs: bool = False
    #: cancel: the task whose run to stop.
    task_id: int | None = None
    #: cancel: count the stopped run as a failed attempt.
    fail: bool = False
    #: drain: the caller waits for the host to be idle (an existing drain is joined, not refused).
    wait: bool = False

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action.value}
        if self.scope is not None:
            data |= {"scope": self.scope.value, "target": self.target}
        if self.action is Action.CANCEL:
            data |= {"task_id": self.task_id, "fail": self.fail}
        return data | {"reason": self.reason, "stop_runs": self.stop_runs, "wait": self.wait}

    @property
    def target_text(self) -> str:
        """The target as the events and the log name it: `agent dev-a`, `host`, `task 42`."""
        if self.task_id is not None:
            return f"task {self.task_id}"
        return named(self.scope or Scope.HOST, self.target)


def parse_request(data: object) -> Request:
    """A request as sent on the control socket (a JSON object); raises RequestError."""
    if not isinstance(data, dict):
        raise RequestError("expected a JSON object")
    action = _choice(Action, data.get("action"), "action")
    reason = check_reason(data.get("reason", ""))
    flags = {name: _flag(data.get(name, False), name) for name in ("stop_runs", "fail", "wait")}
    if action in (Action.PAUSE, Action.RESUME):
        scope = _choice(Scope, data.get("scope"), "scope")
        return Request(action, scope, _target(scope, data.get("target", "")), reason, flags["stop_runs"])
    if action is Action.CANCEL:
        task_id = data.get("task_id")
        if not isinstance(task_id, int) or isinstance(task_id, bool) or not 0 < task_id < 2**63:
            raise RequestError(f"task_id: {task_id!r} is not a task id (a positive integer)")
        return Request(action, task_id=task_id, reason=reason, fail=flags["fail"])
    return Request(action, Scope.HOST if action is Action.DRAIN else None, reason=reason, wait=flags["wait"])


def check_reason(value: object) -> str:
    """A reason as given: one line of at most MAX_REASON_CHARS printable characters."""
    return _text(value, "reason", MAX_REASON_CHARS)


def _text(value: object, name: str, limit: int) -> str:
    if not isinstance(value, str):
        raise RequestError(f"{name}: expected text, got {type(value).__name__}")
    if len(value) > limit:
        raise RequestError(f"{name}: {len(value)} characters, at most {limit} allowed")
    if not value.isprintable():
        raise RequestError(f"{name}: control characters (a line break, an escape) are not allowed")
    return value.strip()


def _choice(kind: type[enum.StrEnum], value: object, name: str) -> Any:
    try:
        return kind(value if isinstance(value, str) else repr(value))
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise RequestError(f"{name}: {value!r} is not one of {allowed}") from None


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(f"{name}: expected true or false, got {value!r}")
    return value


def _target(scope: Scope, value: object) -> str:
    if scope is Scope.HOST:
        return ""
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise RequestError(f"target: {value!r} is not a {scope.value} name (letters, digits, . _ -; 1 to 64)")
    return value


# --- applying a request to the pauses ------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """A request that applies: the pauses after it, what to say, and whether anything changed."""

    pauses: Pauses
    message: str
    changed: bool = True


@dataclass(frozen=True)
class Refusal:
    message: str


def change_pauses(
    pauses: Pauses,
    request: Request,
    *,
    user: str,
    now: datetime,
    agents: Collection[str],
    queues: Collection[str],
) -> Change | Refusal:
    """Apply a pause, resume or drain to `pauses`; `agents` and `queues` are the ones configured."""
    scope = request.scope or Scope.HOST
    existing = pauses.find(scope, request.target)
    if request.action is Action.RESUME:
        if existing is None:
            return Refusal(f"{named(scope, request.target)} is not paused")
        return Change(pauses.without(scope, request.target), f"resumed {existing.what} ({existing.text})")
    if request.action is Action.DRAIN:
        return _drain(pauses, request, user=user, now=now)
    if request.action is not Action.PAUSE:
        return Refusal(f"{request.action.value} does not change pauses")
    unknown = _unknown(scope, request.target, agents, queues)
    if unknown:
        return Refusal(unknown)
    if existing is not None:
        return Refusal(f"already paused: {existing.text}")
    pause = Pause(scope, request.target, user, now, request.reason)
    return Change(pauses.with_pause(pause), pause.text)


def _drain(pauses: Pauses, request: Request, *, user: str, now: datetime) -> Change | Refusal:
    host = pauses.host
    if host is not None and host.kind is Kind.DRAIN:
        if request.wait:
            return Change(pauses, f"already {host.text}", changed=False)
        return Refusal(f"already {host.text}")
    drain = Pause(Scope.HOST, "", user, now, request.reason, Kind.DRAIN)
    was = f" (was {host.text})" if host is not None else ""
    return Change(pauses.with_pause(drain), drain.text + was)


def _unknown(scope: Scope, target: str, agents: Collection[str], queues: Collection[str]) -> str | None:
    known = {Scope.AGENT: agents, Scope.QUEUE: queues}.get(scope)
    if known is None or target in known:
        return None
    listed = ", ".join(sorted(known)) or "none configured"
    return f"unknown {scope.value} {target!r} (known: {listed})"


def runs_to_stop(pause: Pause, runs: Mapping[int, str], pools: Mapping[str, Sequence[str]]) -> list[int]:
    """The runs in flight (task id -> agent) a pause with --stop-runs stops: the agent's, the queue's
    pool agents', or all of them for the host."""
    if pause.scope is Scope.HOST:
        return sorted(runs)
    agents = {pause.target} if pause.scope is Scope.AGENT else set(pools.get(pause.target, ()))
    return sorted(task_id for task_id, agent in runs.items() if agent in agents)


def summary(pauses: Pauses, runs_left: int) -> str | None:
    """The pauses in the STATUS= line: `draining: 2 runs left` or `paused: agent dev-a, queue qa`."""
    drain = pauses.draining
    if drain is not None:
        return f"draining: {runs_left} run{'' if runs_left == 1 else 's'} left" + (", idle" if not runs_left else "")
    if not pauses.items:
        return None
    return "paused: " + ", ".join(pause.what for pause in pauses.items)
