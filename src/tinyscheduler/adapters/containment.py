"""Whatever a run starts dies with it: a cgroup per run where systemd delegated one to the daemon,
the daemon as child subreaper, and a sweep of the processes tagged with the run's lease.

- cgroup: under systemd with `Delegate=yes`, the daemon owns its unit's cgroup and makes one child
  cgroup per run; goose enters it before it execs (a `sh -c` that writes its own pid first), so
  everything it starts, including what calls setsid() or double-forks, is in there, and the whole
  cgroup is killed at once (cgroup.kill). Nothing escapes a cgroup without privileges.
- subreaper: processes orphaned by a run (a double fork, a child outliving goose) are re-parented to
  the daemon instead of to init, so the daemon can find and reap them.
- sweep: every process of a run carries TINYSCHEDULER_LEASE=<its lease path> in its environment, so
  anything left of it is found through /proc even without systemd. A process that both leaves the
  session and clears its environment escapes the sweep: only the cgroup catches that. For a run this
  daemon started while it is the subreaper, everything the run left is below the daemon in the
  process tree (what goose's exit orphaned was re-parented to it): only the daemon's stray children
  and what is below them are read (`strays`), not every process of the host, and usually there are
  none to read.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil
import structlog

from tinyscheduler.adapters.procfs import Tagged, children, is_zombie, processes_tagged

log = structlog.get_logger("tinyscheduler.containment")

_PR_SET_CHILD_SUBREAPER = 36
CGROUP_PREFIX = "tinyscheduler-run-"


def become_subreaper() -> bool:
    """Make the daemon the reaper of its descendants' orphans (Linux 3.4+)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _cgroup2_mount() -> Path | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as handle:
            for line in handle:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == "cgroup2":
                    return Path(before.split()[4])
    except OSError:
        pass
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


class RunCgroups:
    """Per-run cgroups below the daemon's own, delegated cgroup."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def detect(cls, environ: Mapping[str, str]) -> RunCgroups | None:
        """The daemon's cgroup when systemd delegated it (a unit with Delegate=yes), else None.

        Outside a systemd unit nothing was delegated: the cgroup the daemon happens to be in (a
        login session, init.scope) is not its to divide.
        """
        if not environ.get("INVOCATION_ID"):
            return None
        mount, own = _cgroup2_mount(), _own_cgroup()
        if mount is None or own is None:
            return None
        root = mount / own.lstrip("/")
        if not (os.access(root, os.W_OK) and os.access(root / "cgroup.procs", os.W_OK)):
            return None
        return cls(root)

    def create(self, task_id: int, attempt: int) -> Path:
        path = self.root / f"{CGROUP_PREFIX}{task_id}-{attempt}"
        path.mkdir(exist_ok=True)
        return path

    @staticmethod
    def entering(path: Path, command: list[str]) -> list[str]:
        """`command`, run so that it joins cgroup `path` before it execs (same pid, no wrapper left)."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(path / "cgroup.procs"), *command]

    @staticmethod
    def kill(path: Path) -> int:
        """SIGKILL everything in the cgroup, then remove it; the number of processes it held."""
        pids = _cgroup_pids(path)
        try:
            (path / "cgroup.kill").write_text("1")
        except OSError:  # kernels before 5.14: one by one
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2
        while _cgroup_pids(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        with contextlib.suppress(OSError):
            path.rmdir()
        return len(pids)


def _cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def kill_tagged(lease_path: Path, spare: Iterable[int] = (), among: Iterable[int] | None = None) -> list[Tagged]:
    """SIGKILL the live processes tagged with `lease_path` (of `among`, or of all; but `spare`)."""
    spared = set(spare)
    killed = []
    for found in processes_tagged(lease_path, among):
        if found.pid in spared or found.pid == os.getpid():
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(found.pid, signal.SIGKILL)
            killed.append(found)
    return killed


def main_children() -> list[int] | None:
    """The daemon's children that matter here, from its main thread alone: the runs are spawned from
    the event loop, which runs there, and orphans go to a subreaper's first live thread, which it is.
    (Worker threads start only short commands they wait for themselves.)"""
    return children(os.getpid(), leader_only=True)


def strays(known: Iterable[int]) -> set[int] | None:
    """The daemon's children that are none of `known` (its runs' goose and keepers): as the runs'
    subreaper, what their exits orphaned. None when the kernel does not list children."""
    mine = main_children()
    return None if mine is None else set(mine).difference(known)


def reap_orphans(own: Iterable[int]) -> int:
    """Collect the exit status of orphans re-parented to the daemon (it is their subreaper); the
    daemon's own children (`own`: its runs' goose and keepers) are left to whoever waits for them."""
    keep = set(own)
    listed = main_children()
    if listed is None:
        try:
            listed = [child.pid for child in psutil.Process().children()]
        except psutil.Error:
            return 0
    reaped = 0
    for pid in listed:
        if pid in keep or not is_zombie(pid):
            continue
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
            reaped += 1
    return reaped
