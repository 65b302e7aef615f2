"""journald, spoken natively: structured fields through its socket, and a priority on every stderr line.

- `JournalSender` sends one entry as a datagram of fields to `/run/systemd/journal/socket` (the
  native protocol of systemd.journal-fields(7)): `KEY=value` lines, and for a value holding a
  newline, the key, a newline, its length as 64-bit little-endian and the raw value. An entry too
  large for a datagram goes as a sealed memfd passed over the same socket, as libsystemd does.
  So `journalctl -u tinyscheduler TASK_ID=42` finds a task's entries.
- `PriorityLines` wraps stderr under journald: a line written without a `<N>` prefix (a one-line
  fatal error printed before logging is set up, a traceback) gets `<3>` (error), or `<4>` when it
  is a warning, so `journalctl -p` sees every line at its level.

No structlog here: the CLI installs the stderr wrapper before anything else is imported.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import io
import os
import re
import socket
import struct
import sys
from collections.abc import Mapping
from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: Field names journald accepts: upper case letters, digits, underscores, not starting with `_`.
FIELD_NAME = re.compile(r"[A-Z0-9][A-Z0-9_]{0,63}")
_PREFIX = re.compile(r"<[0-7]>")


def is_journal_stream(stream: TextIO) -> bool:
    """True when `stream` is the file systemd connected to the journal (JOURNAL_STREAM=dev:ino)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        # No JOURNAL_STREAM, a malformed one, or a stream without a file (StringIO, closed).
        return False


def encode_entry(fields: Mapping[str, str]) -> bytes:
    """One journal entry in the native protocol; names that journald would refuse are left out."""
    out = bytearray()
    for name, value in fields.items():
        if not FIELD_NAME.fullmatch(name):
            continue
        data = value.encode("utf-8", errors="replace")
        if b"\n" in data:
            out += name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += name.encode() + b"=" + data + b"\n"
    return bytes(out)


class JournalSender:
    """Sends entries to journald's native socket; `send` says whether journald took the entry."""

    def __init__(self, path: str = JOURNAL_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def available(self) -> bool:
        return os.path.exists(self.path)

    def send(self, fields: Mapping[str, str]) -> bool:
        data = encode_entry(fields)
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                self._sock.sendto(data, self.path)
            except OSError as exc:
                if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                    raise
                self._send_large(data)
        except OSError:
            return False
        return True

    def _send_large(self, data: bytes) -> None:
        # Too large for one datagram: the entry goes in a sealed memfd, its descriptor in the datagram.
        fd = os.memfd_create("tinyscheduler-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.write(fd, data)
            seals = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            assert self._sock is not None
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
            self._sock.sendmsg([], rights, 0, self.path)
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def line_priority(line: str) -> int:
    """The syslog priority of a line printed without one: a warning (4) or else an error (3)."""
    return 4 if line.lstrip().lower().startswith(("warning", "tinyscheduler: warning")) else 3


class PriorityLines(io.TextIOBase):
    """A text stream that gives every line written to `inner` a `<N>` prefix if it has none."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self._line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._line_start and piece.strip() and not _PREFIX.match(piece):
                out.append(f"<{line_priority(piece)}>")
            out.append(piece)
            self._line_start = piece.endswith("\n")
        self.inner.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def fileno(self) -> int:
        return self.inner.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.inner.encoding


def prefix_stderr() -> None:
    """Under journald, give every line this process writes to stderr a priority (`PriorityLines`)."""
    if is_journal_stream(sys.stderr) and not isinstance(sys.stderr, PriorityLines):
        with contextlib.suppress(AttributeError):
            sys.stderr = PriorityLines(sys.stderr)
