"""Atomic rewrites that reuse files instead of creating and deleting one per write.

Why: a lease is written three times per run and removed at its end, last_pass.json after every
pass. Written the usual way (a new
temporary file renamed over the old one), each write allocates an inode and frees another, and on
some file systems that is most of a write's cost (ext4 without a journal scans the recently freed
inodes on every allocation: 0.1-0.4 ms of kernel CPU per file, docs/performance.md).

How: a folder keeps spare files (hidden: `.spare.<random>`). A rewrite fills a spare and
swaps it with the target in one step (renameat2 RENAME_EXCHANGE): a reader sees the old content or the
new, never a mix, as with a rename; the old content, now under the spare's name, is the next spare.
Removing a target renames it to a spare. A spare is reused only once it has rested `rest_sec` (a
second): a reader that opened the old file a moment before the swap reads it whole before the inode
is written again. Where the system cannot swap (no renameat2, a file system without it) a rewrite
renames the spare over the target (still no new inode for the new content).
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import itertools
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tinyscheduler.adapters.files import open_private, sync_folder

SPARE_PREFIX = ".spare."
#: How long a file that left a target's name waits before it is written again.
REST_SEC = 1.0
#: At most this many spares are kept; more are deleted (a burst of runs ended).
KEEP = 1024

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    """libc's renameat2 (glibc 2.28+), looked up once; None where there is none."""
    import ctypes  # here: the commands that only read leases never load it

    try:
        function: Any = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


def exchange(first: str, second: str) -> bool:
    """Swap the files named `first` and `second` atomically; False where the system cannot.
    Raises FileNotFoundError when either is missing, OSError for any other failure."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    import ctypes

    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), second)


@functools.cache
def spares_in(folder: Path) -> SpareFiles:
    """The spare files of `folder` for this process's writers (taking over those an earlier one left)."""
    spares = SpareFiles(folder)
    spares.adopt()
    return spares


class SpareFiles:
    """The spare files of one folder (see the module docstring). Safe to use from several threads."""

    def __init__(self, folder: Path, *, rest_sec: float = REST_SEC, keep: int = KEEP) -> None:
        self.folder = folder
        self.rest_sec = rest_sec
        self.keep = keep
        self._resting: collections.deque[tuple[float, str]] = collections.deque()
        self._lock = threading.Lock()
        self._token = os.urandom(4).hex()
        self._serial = itertools.count()
        #: Cleared when the system refused a swap: rewrites rename over the target from then on.
        self.can_exchange = True

    def adopt(self) -> int:
        """Take the spares an earlier process left in the folder; how many."""
        try:
            names = [name for name in os.listdir(self.folder) if name.startswith(SPARE_PREFIX)]
        except OSError:
            return 0
        rested = time.monotonic() - self.rest_sec
        with self._lock:
            self._resting.extend((rested, os.path.join(self.folder, name)) for name in names)
        return len(names)

    def count(self) -> int:
        return len(self._resting)

    def take(self) -> str | None:
        """A spare that has rested, or None."""
        with self._lock:
            if self._resting and self._resting[0][0] <= time.monotonic() - self.rest_sec:
                return self._resting.popleft()[1]
        return None

    def give(self, path: str) -> None:
        """`path` is a spare from now on (deleted when enough are kept)."""
        with self._lock:
            if len(self._resting) < self.keep:
                self._resting.append((time.monotonic(), path))
                return
        with contextlib.suppress(OSError):
            os.unlink(path)

    def retire(self, target: str | Path) -> None:
        """Remove `target` by making it a spare (no inode freed); nothing if it is gone."""
        name = os.path.join(self.folder, f"{SPARE_PREFIX}{self._token}.{next(self._serial)}")
        try:
            os.rename(target, name)
        except FileNotFoundError:
            return
        self.give(name)

    def rewrite(self, target: str | Path, data: bytes, *, durable: bool) -> None:
        """Replace `target`'s content with `data` atomically; `durable` also survives power loss."""
        spare = self._filled(data, durable=durable)
        try:
            self._place(spare, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(spare)
            raise
        if durable:
            sync_folder(self.folder)

    def _filled(self, data: bytes, *, durable: bool) -> str:
        """A spare holding exactly `data` (a new file when none has rested)."""
        spare = self.take()
        fd = None
        if spare is not None:
            try:
                fd = open_private(Path(spare), os.O_WRONLY)
            except OSError:  # gone, or not a plain file of ours any more: never written through
                with contextlib.suppress(OSError):
                    os.unlink(spare)
        if fd is None:
            fd, spare = tempfile.mkstemp(prefix=SPARE_PREFIX, dir=self.folder)
        assert spare is not None
        try:
            written = 0
            while written < len(data):
                written += os.pwrite(fd, data[written:], written)
            os.ftruncate(fd, len(data))
            if durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(spare)
            raise
        os.close(fd)
        return spare

    def _place(self, spare: str, target: str | Path) -> None:
        if self.can_exchange:
            try:
                swapped = exchange(spare, os.fspath(target))
            except FileNotFoundError:
                os.rename(spare, target)  # a first write: nothing to swap with
                return
            if swapped:
                self.give(spare)  # it holds the old content now
                return
            self.can_exchange = False
        os.replace(spare, target)
