"""The single-instance lock: an flock held for the daemon's whole life.

The file is never deleted (deleting a held lock file lets a second instance lock a new inode), the
descriptor is close-on-exec so Goose runs never inherit it, and the holder's PID is written in it
only for diagnostics: the lock itself is the flock, not the PID. It is opened like every file the
scheduler writes (adapters.files.open_private): a symlink in its place is refused, not truncated.
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tinyscheduler.adapters.files import make_private_folder, open_private
from tinyscheduler.adapters.reading import read_bytes
from tinyscheduler.core.text import iso

#: Exit code of a second instance (EX_TEMPFAIL: try again later).
EXIT_LOCKED = 75
#: The holder line is short; a lock file grown huge by hand is not read whole.
HOLDER_MAX_BYTES = 4096


class LockHeld(Exception):
    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"another tinyscheduler holds {path} ({holder}); exiting")
        self.path = path
        self.holder = holder


def read_holder(path: Path) -> str:
    """What the lock file says of its holder, for messages and `status`."""
    try:
        text = read_bytes(path, HOLDER_MAX_BYTES).decode("utf-8", errors="replace").strip()
    except OSError:
        return "holder unknown"
    return text.splitlines()[0] if text else "holder unknown"


def is_locked(path: Path) -> bool:
    """True if some process holds the lock (probes without keeping it)."""
    try:
        # O_NONBLOCK: a FIFO in the lock's place must not hang `status` or a dry run.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False  # no daemon locks anything but a file
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class InstanceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, note: str = "") -> None:
        make_private_folder(self.path.parent)
        fd = open_private(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, read_holder(self.path)) from None
        since = iso(datetime.now(UTC))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}{' ' + note if note else ''}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class Scheduler:
    """A `tinyscheduler run` process of this host, as /proc shows it."""

    pid: int
    argv: tuple[str, ...]
    #: Its working folder (a relative base path resolves against it); None when not ours to read.
    cwd: str | None


def running_schedulers(proc: Path = Path("/proc")) -> list[Scheduler]:
    """Every `tinyscheduler run --daemon` or `run --once` process of this host but this one, whatever
    configuration it reads: `status` names them when the lock of its own base path is free."""
    found = []
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = tuple(a.decode("utf-8", "replace") for a in read_bytes(entry / "cmdline", 65536).split(b"\0") if a)
        except OSError:
            continue  # gone meanwhile, or hidden
        if not _is_scheduler(argv):
            continue
        try:
            cwd: str | None = os.readlink(entry / "cwd")
        except OSError:
            cwd = None
        found.append(Scheduler(int(entry.name), argv, cwd))
    return sorted(found, key=lambda s: s.pid)


def _is_scheduler(argv: tuple[str, ...]) -> bool:
    program = [i for i, a in enumerate(argv[:3]) if a.endswith("/tinyscheduler") or a == "tinyscheduler"]
    if not program:
        return False
    rest = argv[program[0] + 1 :]
    return "run" in rest and ("--daemon" in rest or "--once" in rest)
