"""Lease values: which runs are in flight on a host, as plain data.

A lease is one run's record (`task_<id>.json` in the lease folder, see adapters.leasestore). The
original schema (task_id, agent, pid, recipe, started_at, heartbeat, host, state) stays readable;
the extra fields (pgid, boot_id, start_ticks, owner, attempt, log_path) make liveness exact across
PID reuse, reboots and restarts of the scheduler. Parsing is pure: a bad document raises
`LeaseFormatError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tinyscheduler.core.text import iso

MAX_LEASE_BYTES = 1024 * 1024
LEASE_NAME = re.compile(r"task_(\d+)\.json")


class LeaseState(enum.StrEnum):
    #: Written before the task is claimed and the process exists; pid is still unknown.
    STARTING = "starting"
    RUNNING = "running"
    #: The process is being stopped by the SIGINT -> SIGTERM -> SIGKILL ladder.
    STOPPING = "stopping"
    #: The process has ended; its outcome is being reported to TinyTask. It holds no slot.
    FINISHING = "finishing"


@dataclass(frozen=True)
class Lease:
    task_id: int
    agent: str
    pid: int | None
    recipe: str
    started_at: datetime
    heartbeat: datetime
    host: str
    state: LeaseState = LeaseState.RUNNING
    pgid: int | None = None
    boot_id: str | None = None
    start_ticks: int | None = None
    owner: str | None = None
    attempt: int = 1
    log_path: str | None = None
    #: The process that holds the run's output pipe open (adapters.runlog), and its start ticks.
    keeper_pid: int | None = None
    keeper_ticks: int | None = None
    #: The run's own cgroup, when systemd delegated one (adapters.containment).
    cgroup: str | None = None
    #: How the run ended, once its process has (state FINISHING): reported from here after a crash.
    outcome: str | None = None
    outcome_detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        # Field by field: dataclasses.asdict deep-copies every value, a third of a lease write's CPU.
        data = {name: getattr(self, name) for name in _FIELDS}
        data["state"] = self.state.value
        data["started_at"] = iso(self.started_at)
        data["heartbeat"] = iso(self.heartbeat)
        return data

    def with_changes(self, **changes: Any) -> Lease:
        # A copy of the fields with the changes: dataclasses.replace does the same through every
        # field's spec and __init__, ten times the work, and a lease changes at every heartbeat.
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"Lease has no field {', '.join(sorted(unknown))}")
        changed = object.__new__(Lease)
        changed.__dict__.update(self.__dict__, **changes)
        return changed


_FIELDS = tuple(spec.name for spec in dataclasses.fields(Lease))
_FIELD_SET = frozenset(_FIELDS)


class LeaseFormatError(ValueError):
    """A lease file's content is not a lease; the message names the field."""


def _moment(value: Any, field: str) -> datetime:
    # The original wrote ISO strings; epoch seconds are accepted as well.
    if isinstance(value, bool):
        raise LeaseFormatError(f"field {field}: expected a timestamp, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=UTC)
        except (OverflowError, ValueError, OSError):  # NaN, infinity, beyond year 9999
            raise LeaseFormatError(f"field {field}: epoch timestamp {value!r} is out of range") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise LeaseFormatError(f"field {field}: expected an ISO 8601 timestamp, got {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise LeaseFormatError(f"field {field}: expected a timestamp, got {value!r}")


def _optional_int(data: dict[str, Any], field: str, *, digits_ok: bool = False) -> int | None:
    value = data.get(field)
    if value is None:
        return None
    if digits_ok and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LeaseFormatError(f"field {field}: expected an integer, got {value!r}")
    return value


def _int(data: dict[str, Any], field: str, *, digits_ok: bool = False) -> int:
    value = _optional_int(data, field, digits_ok=digits_ok)
    if value is None:
        raise LeaseFormatError(f"field {field}: expected an integer, got None")
    return value


def _optional_str(data: dict[str, Any], field: str) -> str | None:
    value = data.get(field)
    if value is not None and not isinstance(value, str):
        raise LeaseFormatError(f"field {field}: expected a string, got {value!r}")
    return value


def _str(data: dict[str, Any], field: str) -> str:
    value = _optional_str(data, field)
    if value is None:
        raise LeaseFormatError(f"field {field}: missing")
    return value


def lease_from_json(data: Any, default_host: str = "") -> Lease:
    """A lease from its decoded JSON; `default_host` stands in for an original-schema lease without one."""
    if not isinstance(data, dict):
        raise LeaseFormatError(f"expected a JSON object, got {type(data).__name__}")
    state_text = _optional_str(data, "state")
    try:
        state = LeaseState.RUNNING if state_text is None else LeaseState(state_text)
    except ValueError:
        allowed = ", ".join(s.value for s in LeaseState)
        raise LeaseFormatError(f"field state: expected one of {allowed}, got {state_text!r}") from None
    started_at = _moment(data.get("started_at"), "started_at")
    heartbeat = _moment(data["heartbeat"], "heartbeat") if data.get("heartbeat") is not None else started_at
    host = _optional_str(data, "host")
    return Lease(
        # The original scheduler wrote the task id as a JSON string ("42").
        task_id=_int(data, "task_id", digits_ok=True),
        agent=_str(data, "agent"),
        pid=_optional_int(data, "pid"),
        recipe=_optional_str(data, "recipe") or "",
        started_at=started_at,
        heartbeat=heartbeat,
        host=default_host if host is None else host,
        state=state,
        pgid=_optional_int(data, "pgid"),
        boot_id=_optional_str(data, "boot_id"),
        start_ticks=_optional_int(data, "start_ticks"),
        owner=_optional_str(data, "owner"),
        attempt=_optional_int(data, "attempt") or 1,
        log_path=_optional_str(data, "log_path"),
        keeper_pid=_optional_int(data, "keeper_pid"),
        keeper_ticks=_optional_int(data, "keeper_ticks"),
        cgroup=_optional_str(data, "cgroup"),
        outcome=_optional_str(data, "outcome"),
        outcome_detail=_optional_str(data, "outcome_detail"),
    )


class Liveness(enum.StrEnum):
    ALIVE = "alive"
    DEAD = "dead"
    #: The PID is alive but belongs to another process (start time differs): the run is gone.
    REUSED = "reused"
    #: The lease was written before the process existed (no pid yet).
    NO_PROCESS = "no_process"
