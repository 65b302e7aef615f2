"""The operating system's view of a lease's process, read from /proc."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tinyscheduler.core.leases import Lease, Liveness

#: Marks a run's output keeper (adapters.runlog) among the processes tagged with its lease.
KEEPER_ENV = "TINYSCHEDULER_OUTPUT_KEEPER"


def current_boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None  # gone; or a zombie, which has finished: only its parent's wait() is missing
    return int(fields[19])


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[0] == "Z"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat from its third field (the state) on, or None when the process is gone."""
    try:
        stat = _read(f"/proc/{pid}/stat").decode()
    except (OSError, ValueError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


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


@dataclass(frozen=True)
class Tagged:
    """A live process whose environment names a lease: part of that run, or its output keeper."""

    pid: int
    start_ticks: int
    keeper: bool


def processes_tagged(lease_path: Path, among: Iterable[int] | None = None) -> list[Tagged]:
    """Live processes whose environment names this lease file (of `among`, or of all).

    Every run is started with TINYSCHEDULER_LEASE=<its lease path>, so a run whose pid never made
    it into the lease (the scheduler died between spawn and the lease update), and whatever a run
    left behind, can still be found.
    """
    tag = f"TINYSCHEDULER_LEASE={lease_path}".encode() + b"\0"
    keeper = f"{KEEPER_ENV}=1".encode() + b"\0"
    pids = among if among is not None else (int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit())
    found = []
    for pid in pids:
        try:
            environ = _read(f"/proc/{pid}/environ") + b"\0"
        except OSError:
            continue  # gone, or not ours to read
        if environ.startswith(tag) or b"\0" + tag in environ:
            ticks = process_start_ticks(pid)
            if ticks is not None:
                is_keeper = environ.startswith(keeper) or b"\0" + keeper in environ
                found.append(Tagged(pid, ticks, is_keeper))
    return found


def children(pid: int, *, leader_only: bool = False) -> list[int] | None:
    """The children of a process, from each of its threads (/proc/PID/task/TID/children), or from
    its first thread alone (`leader_only`); None when the kernel does not publish them
    (CONFIG_PROC_CHILDREN) or the process is gone."""
    try:
        threads = [str(pid)] if leader_only else os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    found: list[int] = []
    for thread in threads:
        try:
            found.extend(map(int, _read(f"/proc/{pid}/task/{thread}/children").split()))
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{thread}"):
                continue  # the thread ended meanwhile
            return None
        except OSError:
            continue
    return found


def descendants(roots: Iterable[int]) -> set[int]:
    """`roots` and everything below them, as far as /proc shows it now."""
    seen: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children(pid) or ())
    return seen


def verified_group(lease: Lease, boot_id: str | None) -> int | None:
    """The process group to signal for `lease`, or None when it cannot be proven to be the run's.

    The lease's pid must still be the process started for it (start ticks, boot id), and the group
    the lease names must be that process's own group: a planted or stale pgid never gets a signal.
    """
    if lease.pid is None or lease.start_ticks is None or probe(lease, boot_id) is not Liveness.ALIVE:
        return None
    try:
        actual = os.getpgid(lease.pid)
    except ProcessLookupError:
        return None
    expected = lease.pgid if lease.pgid is not None else lease.pid
    return actual if actual == expected else None


def _read(path: str) -> bytes:
    """A /proc file whole, in plain system calls (these are read per run: no buffering layer)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
