"""Reading a file the daemon did not write itself, without ever blocking on it.

Every file the scheduler reads (the env file, the registry, the lock holder, leases, the attempt
history, last_pass.json) can be replaced by hand with something that is not a file: a FIFO, whose
plain `open()` waits for a writer forever and so freezes the event loop (heartbeats, passes,
signals, watchdog pings), a device that never ends, a folder. So the file is opened with
O_NONBLOCK (a FIFO opens at once), checked with fstat to be a regular file before a single byte is
read, and read up to a limit: one byte more than the limit tells "too large" without trusting a
size that may change meanwhile. The errors are OSErrors naming what was found, so callers that
already handle an unreadable file handle these too.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The limit of a small configuration or state file, unless the caller says otherwise.
DEFAULT_LIMIT = 1024 * 1024

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The path names a FIFO, a device or a socket, not a file."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(errno.EINVAL, f"is {kind}, expected a regular file", str(path))
        self.kind = kind


class FileTooLarge(OSError):
    """The file is larger than the reader accepts."""

    def __init__(self, path: Path, limit: int) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit} bytes", str(path))
        self.limit = limit


def describe(mode: int) -> str:
    """What a file mode names, as a person says it."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def read_bytes(path: Path, limit: int = DEFAULT_LIMIT) -> bytes:
    """The content of the regular file at `path`, at most `limit` bytes.

    Raises FileNotFoundError, IsADirectoryError, NotRegularFile, FileTooLarge, or any other
    OSError of open/read (a symlink loop: ELOOP; no permission: EACCES). Never blocks on a FIFO.
    """
    return read_file(path, limit)[0]


def open_regular(path: Path, *, follow_links: bool = True) -> tuple[int, os.stat_result]:
    """A descriptor of the regular file at `path` (read-only) and its status; the errors of `read_bytes`.
    Without `follow_links`, a symbolic link at `path` is refused (NotRegularFile) instead of read."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:
            raise NotRegularFile(path, "a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        mode = info.st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a folder, expected a file", str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, describe(mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_file(path: Path, limit: int = DEFAULT_LIMIT) -> tuple[bytes, os.stat_result]:
    """`read_bytes`, with the file's status as it was opened (its mtime, for a lease's heartbeat)."""
    fd, info = open_regular(path)
    try:
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    finally:
        os.close(fd)
    if size > limit:
        raise FileTooLarge(path, limit)
    return b"".join(chunks), info


def read_text(path: Path, limit: int = DEFAULT_LIMIT) -> str:
    """`read_bytes` decoded as UTF-8; a file that is not UTF-8 raises UnicodeDecodeError."""
    return read_bytes(path, limit).decode("utf-8")


def reason(exc: OSError) -> str:
    """One phrase for why a file could not be read: `is a FIFO, expected a regular file`."""
    if isinstance(exc, FileNotFoundError):
        return "not found"
    return str(exc.strerror or exc)
