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
from datetime import UTC, datetime
from pathlib import Path

from tinyscheduler.adapters.files import make_private_folder, open_private
from tinyscheduler.adapters.reading import read_bytes

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
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {since}{' ' + note if note else ''}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
