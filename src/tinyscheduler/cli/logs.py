"""`tinyscheduler logs TASK_ID [--attempt N] [-f]`: the Goose output of one run.

Each run writes `<task_log_dir>/<task_id>.<attempt>.log`; 2.0.0 wrote `<task_id>/<attempt>.log`, and
both are read. Without `--attempt` the latest attempt (of either) is shown. `-f` keeps printing what
the run appends for as long as its lease says it is in flight, then prints the rest and exits, so a
script can `logs -f` a run to its end. With no daemon holding the lock nobody will remove a lease,
so then the run is in flight only while its process lives.
Reads only. On a terminal, control characters in the output (other than newlines and tabs) are shown
escaped: a run prints whatever its tools print, and a terminal would obey an escape sequence in it.
"""

from __future__ import annotations

import codecs
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from tinyscheduler.adapters.leasestore import LeaseStore
from tinyscheduler.adapters.lock import is_locked
from tinyscheduler.adapters.procfs import current_boot_id, probe
from tinyscheduler.adapters.reading import open_regular
from tinyscheduler.config.settings import LoadedSettings, Settings
from tinyscheduler.core.leases import LeaseState, Liveness
from tinyscheduler.core.retention import run_log_of
from tinyscheduler.core.text import escaped

#: How often `-f` looks for new output; short enough to feel live, long enough to cost nothing.
FOLLOW_POLL_SEC = 0.2
CHUNK = 64 * 1024


class LogNotFound(Exception):
    pass


class ByteSink(Protocol):
    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...


class TerminalSafe:
    """A sink for a terminal: UTF-8 decoded across chunk boundaries, control characters escaped."""

    def __init__(self, out: ByteSink) -> None:
        self._out = out
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def write(self, data: bytes, /) -> int:
        self._out.write(escaped(self._decoder.decode(data), keep_lines=True).encode())
        return len(data)

    def flush(self) -> None:
        self._out.flush()


def attempts(settings: Settings, task_id: int) -> dict[int, Path]:
    """The attempts with a log, ascending, and where each log is: `<task>.<attempt>.log`, or else
    `<task>/<attempt>.log` (written by 2.0.0)."""
    root = settings.task_log_dir
    found = _logs_in(root / str(task_id), str(task_id), task_id)
    found.update(_logs_in(root, None, task_id))
    return dict(sorted(found.items()))


def _logs_in(folder: Path, task_folder: str | None, task_id: int) -> dict[int, Path]:
    """The task's logs in `folder`: the run log folder (`task_folder` None) or the task's own folder."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found: dict[int, Path] = {}
    for name in names:
        log = run_log_of(task_folder, name)
        if log is not None and log[0] == task_id:
            found[log[1]] = folder / name
    return found


def _looked_for(settings: Settings, task_id: int, attempt: int | None) -> str:
    number = "<attempt>" if attempt is None else str(attempt)
    root = settings.task_log_dir
    return f"looked for {root / f'{task_id}.{number}.log'} and {root / str(task_id) / f'{number}.log'}"


def in_flight(settings: Settings, task_id: int, attempt: int | None) -> bool:
    """Whether a lease says this attempt (any, if None) of the task is running on this host."""
    lease = LeaseStore(settings.running_dir, settings.quarantine_dir, read_only=True).read(task_id)
    if lease is None or (attempt is not None and lease.attempt != attempt):
        return False
    try:
        if is_locked(settings.lock_file):
            return True  # the daemon removes the lease when the run is over, or reclaims it
    except OSError:
        pass  # cannot tell: judge by the process alone
    # No daemon: the lease of a run whose process has ended stays until the next daemon starts.
    return lease.state is not LeaseState.FINISHING and probe(lease, current_boot_id()) is Liveness.ALIVE


def choose(settings: Settings, task_id: int, attempt: int | None) -> tuple[int, Path]:
    """The attempt to show and its log; raises LogNotFound naming where it looked and what exists."""
    known = attempts(settings, task_id)
    if attempt is None:
        if known:
            return max(known), known[max(known)]
        raise LogNotFound(f"no run log for task {task_id} ({_looked_for(settings, task_id, None)})")
    if attempt in known:
        return attempt, known[attempt]
    have = f"attempts with a log: {', '.join(map(str, known))}" if known else "no attempt has a log"
    looked = _looked_for(settings, task_id, attempt)
    raise LogNotFound(f"no log of attempt {attempt} of task {task_id} ({have}; {looked})")


def copy_new(path: Path, offset: int, out: ByteSink) -> int:
    """Write what `path` holds beyond `offset`; return the new offset.

    A file shorter than `offset` was cut (the run's log cap keeps the tail): start over from its
    beginning, which holds the cut marker, rather than print nothing forever.
    """
    try:
        # A FIFO in a log's place must not hang the command, nor a link make it print another file
        # (run as root, `logs` would show whatever a link in the log folder names).
        fd, info = open_regular(path, follow_links=False)
        with open(fd, "rb") as handle:
            if info.st_size < offset:
                offset = 0
            handle.seek(offset)
            while chunk := handle.read(CHUNK):
                out.write(chunk)
                offset += len(chunk)
    except FileNotFoundError:
        return offset
    out.flush()
    return offset


def follow(
    settings: Settings, task_id: int, attempt: int | None, out: ByteSink, *, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Print the log and keep printing while the run is in flight. Exit code 0, or 1 if no log."""
    if attempt is None and not attempts(settings, task_id) and in_flight(settings, task_id, None):
        # Leased but not yet writing (the lease comes before the process): wait for the file.
        while not attempts(settings, task_id) and in_flight(settings, task_id, None):
            sleep(FOLLOW_POLL_SEC)
    number, path = choose(settings, task_id, attempt)
    offset = copy_new(path, 0, out)
    while in_flight(settings, task_id, number):
        sleep(FOLLOW_POLL_SEC)
        offset = copy_new(path, offset, out)
    copy_new(path, offset, out)  # what was written between the last read and the run's end
    return 0


def logs_command(
    loaded: LoadedSettings, *, task_id: int, attempt: int | None, follow_output: bool, out: ByteSink | None = None
) -> int:
    """Entry point of `tinyscheduler logs`."""
    settings = loaded.settings
    if out is None:
        out = TerminalSafe(sys.stdout.buffer) if sys.stdout.isatty() else sys.stdout.buffer
    try:
        if follow_output:
            return follow(settings, task_id, attempt, out)
        copy_new(choose(settings, task_id, attempt)[1], 0, out)
    except LogNotFound as exc:
        print(f"tinyscheduler: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C ends a follow; that is not an error
        return 0
    except BrokenPipeError:
        # `logs ID | head`: the reader has what it wanted. Point stdout at /dev/null so the
        # interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        # Typically the run logs are private to the scheduler's user (folders 0700).
        hint = "; run logs as the scheduler's user" if isinstance(exc, PermissionError) else ""
        print(
            f"tinyscheduler: cannot read {exc.filename or settings.task_log_dir}: {exc.strerror}{hint}", file=sys.stderr
        )
        return 1
    return 0
