"""Lease files: which runs are in flight on this host.

`<running_dir>/task_<id>.json`, one per run, written atomically (temp file in the same folder,
fsync, os.replace, fsync the folder) with mode 0600 in a 0700 folder. The original schema
(task_id, agent, pid, recipe, started_at, heartbeat, host, state) stays readable; the extra fields
(pgid, boot_id, start_ticks, owner, attempt, log_path) make liveness exact across PID reuse,
reboots and restarts of the scheduler. A file that cannot be read as a lease is moved to the
quarantine folder, never deleted and never allowed to crash a pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MAX_LEASE_BYTES = 1024 * 1024
LEASE_NAME = re.compile(r"task_(\d+)\.json")


class LeaseState(str, enum.Enum):
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

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["started_at"] = _iso(self.started_at)
        data["heartbeat"] = _iso(self.heartbeat)
        return data

    def with_changes(self, **changes: Any) -> "Lease":
        return dataclasses.replace(self, **changes)


class LeaseFormatError(ValueError):
    """A lease file's content is not a lease; the message names the field."""


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _moment(value: Any, field: str) -> datetime:
    # The original wrote ISO strings; epoch seconds are accepted as well.
    if isinstance(value, bool):
        raise LeaseFormatError(f"field {field}: expected a timestamp, got {value!r}")
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(value, tz=timezone.utc)
        except (OverflowError, ValueError, OSError):  # NaN, infinity, beyond year 9999
            raise LeaseFormatError(f"field {field}: epoch timestamp {value!r} is out of range") from None
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise LeaseFormatError(f"field {field}: expected an ISO 8601 timestamp, got {value!r}") from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    raise LeaseFormatError(f"field {field}: expected a timestamp, got {value!r}")


def _int(data: dict[str, Any], field: str, *, optional: bool, digits_ok: bool = False) -> int | None:
    value = data.get(field)
    if value is None and optional:
        return None
    if digits_ok and isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise LeaseFormatError(f"field {field}: expected an integer, got {value!r}")
    return value


def _str(data: dict[str, Any], field: str, *, optional: bool, default: str = "") -> str | None:
    value = data.get(field)
    if value is None:
        if optional:
            return default or None
        raise LeaseFormatError(f"field {field}: missing")
    if not isinstance(value, str):
        raise LeaseFormatError(f"field {field}: expected a string, got {value!r}")
    return value


def lease_from_json(data: Any) -> Lease:
    if not isinstance(data, dict):
        raise LeaseFormatError(f"expected a JSON object, got {type(data).__name__}")
    state_text = _str(data, "state", optional=True, default=LeaseState.RUNNING.value)
    try:
        state = LeaseState(state_text)
    except ValueError:
        allowed = ", ".join(s.value for s in LeaseState)
        raise LeaseFormatError(f"field state: expected one of {allowed}, got {state_text!r}") from None
    started_at = _moment(data.get("started_at"), "started_at")
    heartbeat = _moment(data["heartbeat"], "heartbeat") if data.get("heartbeat") is not None else started_at
    return Lease(
        # The original scheduler wrote the task id as a JSON string ("42").
        task_id=_int(data, "task_id", optional=False, digits_ok=True),  # type: ignore[arg-type]
        agent=_str(data, "agent", optional=False),  # type: ignore[arg-type]
        pid=_int(data, "pid", optional=True),
        recipe=_str(data, "recipe", optional=True, default="") or "",
        started_at=started_at,
        heartbeat=heartbeat,
        host=_str(data, "host", optional=True, default=socket.gethostname()),  # type: ignore[arg-type]
        state=state,
        pgid=_int(data, "pgid", optional=True),
        boot_id=_str(data, "boot_id", optional=True),
        start_ticks=_int(data, "start_ticks", optional=True),
        owner=_str(data, "owner", optional=True),
        attempt=_int(data, "attempt", optional=True) or 1,
        log_path=_str(data, "log_path", optional=True),
    )


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write JSON so a reader sees the old file or the new one, never a torn one.

    `durable` also survives power loss (fsync of the file and the folder, some milliseconds). A
    file whose loss at power-off costs nothing (a heartbeat, a status) skips that: after a crash of
    the machine every process it described is gone anyway.
    """
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, mode)
            json.dump(data, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if not durable:
        return
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@dataclass(frozen=True)
class Quarantined:
    """A file moved out of the lease folder, and why."""

    original: Path
    #: None when the store is read-only (a dry run reports the file but leaves it in place).
    moved_to: Path | None
    reason: str


@dataclass(frozen=True)
class LeaseScan:
    leases: tuple[Lease, ...]
    quarantined: tuple[Quarantined, ...]


class LeaseStore:
    """The lease folder of this host. All methods are plain blocking file I/O on small files."""

    def __init__(self, running_dir: Path, quarantine_dir: Path, *, read_only: bool = False) -> None:
        self.running_dir = running_dir
        self.quarantine_dir = quarantine_dir
        self.read_only = read_only

    def ensure(self) -> None:
        self.running_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.running_dir, 0o700)

    def path(self, task_id: int) -> Path:
        return self.running_dir / f"task_{task_id}.json"

    def write(self, lease: Lease, *, durable: bool = True) -> None:
        """Atomically; `durable` for a lease's first write, which must outlive a power loss (else a
        task set `working` could be left with nothing to reconcile it). Rewrites need not be."""
        write_json_atomic(self.path(lease.task_id), lease.to_json(), durable=durable)

    def remove(self, task_id: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(task_id))

    def read(self, task_id: int) -> Lease | None:
        """One lease; None if absent. A bad file is quarantined (and None returned)."""
        path = self.path(task_id)
        try:
            return self._parse(path)
        except FileNotFoundError:
            return None
        except (OSError, LeaseFormatError) as exc:
            self._quarantine(path, str(exc))
            return None

    def scan(self) -> LeaseScan:
        """Every lease in the folder; anything unreadable is moved to quarantine and listed."""
        leases: list[Lease] = []
        quarantined: list[Quarantined] = []
        try:
            names = sorted(os.listdir(self.running_dir))
        except FileNotFoundError:
            return LeaseScan((), ())
        for name in names:
            if name.startswith("."):
                continue  # temp files of a write in progress
            path = self.running_dir / name
            match = LEASE_NAME.fullmatch(name)
            try:
                if not match:
                    raise LeaseFormatError("file name is not task_<id>.json")
                lease = self._parse(path)
                if lease.task_id != int(match.group(1)):
                    raise LeaseFormatError(f"field task_id: {lease.task_id} does not match the file name")
                leases.append(lease)
            except FileNotFoundError:
                continue  # removed by its run while we listed
            except (OSError, LeaseFormatError) as exc:
                record = self._quarantine(path, str(exc))
                if record:
                    quarantined.append(record)
        return LeaseScan(tuple(leases), tuple(quarantined))

    def quarantined_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.quarantine_dir.iterdir() if not p.name.endswith(".reason"))
        except FileNotFoundError:
            return []

    def _parse(self, path: Path) -> Lease:
        # O_NONBLOCK: a FIFO with a lease's name must not hang the pass waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise LeaseFormatError("not a regular file")
            with os.fdopen(fd, "rb", closefd=False) as handle:
                raw = handle.read(MAX_LEASE_BYTES + 1)
        finally:
            os.close(fd)
        if len(raw) > MAX_LEASE_BYTES:
            raise LeaseFormatError(f"file is over {MAX_LEASE_BYTES} bytes")
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LeaseFormatError(f"not JSON: {exc}") from None
        except RecursionError:
            raise LeaseFormatError("not JSON: nested too deeply") from None
        return lease_from_json(data)

    def _quarantine(self, path: Path, reason: str) -> Quarantined | None:
        if self.read_only:
            return Quarantined(path, None, reason)
        try:
            self.quarantine_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.quarantine_dir, 0o700)
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            base = f"{path.name}.{stamp}.{os.getpid()}"
            # Never overwrite an earlier quarantined file (same name again within the same second).
            target = self.quarantine_dir / base
            serial = 1
            while os.path.lexists(target):
                target = self.quarantine_dir / f"{base}.{serial}"
                serial += 1
            os.replace(path, target)
        except FileNotFoundError:
            if not os.path.lexists(path):
                return None  # removed by its run meanwhile
            return Quarantined(path, None, f"{reason} (could not quarantine: quarantine folder missing)")
        except OSError as exc:
            # Left in place and reported again next pass; never lost, never a crash.
            return Quarantined(path, None, f"{reason} (could not quarantine: {exc})")
        with contextlib.suppress(OSError):
            (target.parent / f"{target.name}.reason").write_text(f"{path}: {reason}\n", encoding="utf-8")
        return Quarantined(path, target, reason)


# --- the operating system's view of a lease's process -------------------------------------------


class Liveness(str, enum.Enum):
    ALIVE = "alive"
    DEAD = "dead"
    #: The PID is alive but belongs to another process (start time differs): the run is gone.
    REUSED = "reused"
    #: The lease was written before the process existed (no pid yet).
    NO_PROCESS = "no_process"


def current_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None  # a zombie has finished; only its parent's wait() is missing
    return int(fields[19])


def probe(lease: Lease, boot_id: str | None) -> Liveness:
    """Is the lease's process still the one that was started for it?"""
    if lease.pid is None:
        return Liveness.NO_PROCESS
    if lease.boot_id and boot_id and lease.boot_id != boot_id:
        return Liveness.DEAD  # the host rebooted since: every process of that boot is gone
    ticks = process_start_ticks(lease.pid)
    if ticks is None:
        return Liveness.DEAD
    if lease.start_ticks is not None and ticks != lease.start_ticks:
        return Liveness.REUSED
    return Liveness.ALIVE


def processes_tagged(lease_path: Path) -> list[tuple[int, int]]:
    """(pid, start ticks) of live processes whose environment names this lease file.

    Every run is started with TINYSCHEDULER_LEASE=<its lease path>, so a run whose pid never made
    it into the lease (the scheduler died between spawn and the lease update) can still be found.
    """
    tag = f"TINYSCHEDULER_LEASE={lease_path}".encode() + b"\0"
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as handle:
                environ = handle.read() + b"\0"
        except OSError:
            continue  # gone, or not ours to read
        if environ.startswith(tag) or b"\0" + tag in environ:
            ticks = process_start_ticks(int(entry.name))
            if ticks is not None:
                found.append((int(entry.name), ticks))
    return found

