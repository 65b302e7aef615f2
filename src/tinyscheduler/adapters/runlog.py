"""A run's output file: appended to by goose, capped by the daemon, keeping the tail."""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from tinyscheduler.core.outcomes import TAIL_BYTES

log = structlog.get_logger("tinyscheduler.runlog")


class RunLog:
    """The run's output file: appended to by the child, capped by us, keeping the tail.

    The child holds the file open (O_APPEND), so capping rewrites it in place: read the tail up
    to EOF, truncate, append a cut marker and the tail in one write. Output written in the few
    microseconds between the read and the truncation is lost; the marker says there was a cut.
    Between two checks the file may overshoot the cap by what the child writes in that time;
    the cap holds exactly once the run has ended. A log that disappears (removed by hand) or cannot
    be written (full disk) is logged, never allowed to end the supervision of a live process.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        #: Where this run's output starts (the file may hold earlier runs of the same attempt).
        self.start = 0
        self.cut_total = 0

    def open_for_child(self, header: str) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, header.encode())
            self.start = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        return fd

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, text: str) -> None:
        try:
            with open(self.path, "ab") as handle:
                handle.write(text.encode())
        except OSError as exc:
            log.warning("run_log_write_failed", path=str(self.path), reason=str(exc))

    def cap(self) -> None:
        if self.max_bytes <= 0 or self.size() <= self.max_bytes:
            return
        try:
            self._cut()
        except OSError as exc:
            log.warning("run_log_cap_failed", path=str(self.path), reason=str(exc))

    def _cut(self) -> None:
        # Keep half the cap so a flood is rewritten once per max_bytes/2 of output, not on every check.
        keep = self.max_bytes // 2
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            cut = max(0, size - keep)
            # Read to EOF, output written since the stat included, within a bound a flood cannot stretch.
            chunks: list[bytes] = []
            offset = cut
            while offset < size + self.max_bytes and (chunk := os.pread(fd, 1 << 20, offset)):
                chunks.append(chunk)
                offset += len(chunk)
            tail = b"".join(chunks)
            newline = tail.find(b"\n")
            if 0 <= newline < len(tail) - 1:  # start the kept part on a whole line
                tail = tail[newline + 1 :]
                cut += newline + 1
            os.ftruncate(fd, 0)
            self.cut_total += cut
            marker = (
                f"[tinyscheduler: log capped at {self.max_bytes} bytes; {self.cut_total} bytes of "
                f"earlier output cut here]\n"
            ).encode()
            os.write(fd, marker + tail)
        finally:
            os.close(fd)
        self.start = len(marker) + max(0, self.start - cut)

    def tail(self) -> str:
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(self.start, size - TAIL_BYTES))
                return handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            log.warning("run_log_read_failed", path=str(self.path), reason=str(exc))
            return ""
