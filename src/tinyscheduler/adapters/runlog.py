"""A run's output: goose writes into a pipe, the daemon copies it into the run log, never above its cap.

Why a pipe and not the file itself: only the daemon writes the log, so the cap holds at every instant,
whatever the run does (a flood of 1 GB/s, a process that escaped the run and keeps writing after goose
exited). A writer faster than the daemon reads is slowed down by the full pipe, not cut short.

Why a keeper: a pipe whose readers are all gone kills its writer (SIGPIPE) and drops what it buffered.
The daemon may die or restart while a run goes on, so every run has a tiny keeper process (`sleep
infinity`, in the run's session-less corner, tagged like the run) that holds the read end and does
nothing else. While no daemon reads, goose fills the pipe (1 MiB) and then waits; nothing is lost,
including the final `complete` event of a run that ends meanwhile. The next daemon opens the same
pipe through /proc/<keeper>/fd/0 and goes on. The keeper dies with the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import anyio
import structlog

from tinyscheduler.adapters.files import make_private_folder, open_private
from tinyscheduler.adapters.procfs import KEEPER_ENV
from tinyscheduler.core.outcomes import TAIL_BYTES

log = structlog.get_logger("tinyscheduler.runlog")

#: How much output waits in the pipe while no daemon reads (the most an unprivileged pipe may hold).
PIPE_BYTES = 1 << 20
#: One read of the pipe; the loop yields between reads so a flood cannot starve the other runs.
READ_BYTES = 256 * 1024
_F_SETPIPE_SZ = 1031


class RunLog:
    """The run log file. Only the daemon writes it, so it never grows past `max_bytes` (plus the
    one-line marker of a cut): over the cap, the oldest output goes and the newest half stays.

    A log that cannot be written (full disk, removed folder) is said once, never allowed to end the
    supervision of a live process.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.cut_total = 0
        self.size = 0
        #: Where this run's output starts: the file may hold an earlier run of the same attempt, whose
        #: output is no evidence of how this one ended.
        self.start = 0
        #: When the run last printed something (monotonic), for the idle timeout.
        self.last_output = time.monotonic()
        self._fd: int | None = None
        self._failed = False

    def create(self, header: str) -> None:
        """Start the log with `header`, after whatever an earlier run of the same attempt left (a
        run stopped on request is not a counted attempt, so its successor shares the number)."""
        self._fd = self._open()
        self.size = os.fstat(self._fd).st_size
        self.write(header.encode())
        self.start = self.size

    def reopen(self, header_prefix: str = "") -> None:
        """Go on appending to an existing log (an adopted run); a missing one is started afresh.

        This run's output starts after its header (`header_prefix` starts it), or after the cut
        marker when the header itself was cut.
        """
        with contextlib.suppress(OSError):
            self._fd = self._open()
            self.size = os.fstat(self._fd).st_size
            if header_prefix:
                self.start = self._run_start(os.pread(self._fd, self.size, 0), header_prefix.encode())

    def _open(self) -> int:
        # The folder is made when the daemon starts, not looked for at each run (a per-run stat and
        # mkdir were ~8% of the daemon's CPU per run on ext4). One removed since (by hand, or a task
        # folder of 2.0.0's layout pruned by the retention) is made again, once.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            return open_private(self.path, flags)
        except FileNotFoundError:
            make_private_folder(self.path.parent)
            return open_private(self.path, flags)

    @staticmethod
    def _run_start(content: bytes, header: bytes) -> int:
        found = content.rfind(header)
        if found < 0:
            found = 0 if content.startswith(b"[tinyscheduler: log capped") else -1
        if found < 0:
            return 0
        line_end = content.find(b"\n", found)
        return len(content) if line_end < 0 else line_end + 1

    def has_output(self) -> bool:
        """Whether anything follows this run's header."""
        return self.size > self.start

    def write(self, data: bytes) -> None:
        if self._fd is None or not data:
            return
        try:
            if self.max_bytes > 0 and self.size + len(data) > self.max_bytes:
                self._cut(data)
            else:
                os.write(self._fd, data)
                self.size += len(data)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                log.warning("run_log_write_failed", path=str(self.path), reason=str(exc))

    def append(self, text: str) -> None:
        """A line of the scheduler's own; a log removed by hand meanwhile is started afresh."""
        if self._fd is not None and not self._still_named():
            self.close()
            self.reopen()
        self.write(text.encode())

    def _still_named(self) -> bool:
        assert self._fd is not None
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return False

    def _cut(self, data: bytes) -> None:
        # Keep half the cap, so a flood rewrites the file once per max_bytes/2 of output.
        assert self._fd is not None
        keep = self.max_bytes // 2
        have = min(self.size, keep)
        tail = os.pread(self._fd, have, self.size - have) + data if len(data) < keep else data
        cut = self.size + len(data) - min(len(tail), keep)
        tail = tail[-keep:]
        newline = tail.find(b"\n")
        if 0 <= newline < len(tail) - 1:  # start the kept part on a whole line
            tail = tail[newline + 1 :]
            cut += newline + 1
        self.cut_total += cut
        marker = (
            f"[tinyscheduler: log capped at {self.max_bytes} bytes; {self.cut_total} bytes of "
            f"earlier output cut here]\n"
        ).encode()
        os.ftruncate(self._fd, 0)
        os.write(self._fd, marker + tail)
        self.size = len(marker) + len(tail)
        self.start = len(marker) + max(0, self.start - cut)

    def tail(self) -> str:
        """The end of the log (at most TAIL_BYTES), decoded leniently."""
        try:
            if self._fd is not None:  # what this run wrote, through its own descriptor
                size = os.fstat(self._fd).st_size
                begin = max(self.start, size - TAIL_BYTES)
                return os.pread(self._fd, size - begin, begin).decode("utf-8", errors="replace")
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                handle.seek(max(self.start, size - TAIL_BYTES))
                return handle.read().decode("utf-8", errors="replace")
        except OSError as exc:
            log.warning("run_log_read_failed", path=str(self.path), reason=str(exc))
            return ""

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def header_prefix(task_id: int, agent: str, attempt: int) -> str:
    """How the scheduler's header line of a run's log starts (the rest: the time and the command)."""
    return f"--- tinyscheduler: task {task_id}, agent {agent}, attempt {attempt}, "


def output_pipe() -> tuple[int, int]:
    """(read end, write end), close-on-exec, as large as this user may make a pipe."""
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
    os.set_blocking(read_fd, False)
    return read_fd, write_fd


@functools.cache
def keeper_command() -> tuple[str, ...]:
    """Looked up once: the PATH search is not worth repeating for every run."""
    sleep = shutil.which("sleep")
    if sleep:
        return (sleep, "infinity")
    # No coreutils: a Python that waits for a signal does the same, at a few MB more.
    return (sys.executable, "-S", "-c", "import signal; signal.pause()")


class Keeper:
    """A keeper this daemon spawned; its exit status is the daemon's to collect."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit code once it has ended (and is reaped), else None."""
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped by someone else: ended all the same
                self.returncode = -signal.SIGKILL
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        """SIGKILL it, unless it is reaped already (its pid may be another process's by then)."""
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        """Its exit code, after at most `timeout` seconds (subprocess.TimeoutExpired if still alive)."""
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(list(keeper_command()), timeout)
            time.sleep(0.005)
        return code


class KilledKeepers:
    """Keepers killed at their run's end, collected later rather than waited for (a pidfd, a turn
    of the event loop and four system calls per run): each run's end and each pass reap those that
    have exited. Until reaped, a keeper's pid stays among the daemon's known children (`children`),
    so that it is never taken for something a run left behind."""

    def __init__(self, children: set[int] | None) -> None:
        self._children = children
        self._killed: list[Keeper] = []

    def __len__(self) -> int:
        return len(self._killed)

    def __contains__(self, keeper: object) -> bool:
        return keeper in self._killed

    def kill(self, keeper: Keeper) -> None:
        keeper.kill()
        self._killed.append(keeper)  # one already reaped leaves at the next reap, like the others

    def reap(self) -> None:
        """Collect those that have exited (without waiting)."""
        left = []
        for keeper in self._killed:
            if keeper.poll() is None:
                left.append(keeper)
            elif self._children is not None:
                self._children.discard(keeper.pid)
        self._killed = left


def spawn_keeper(read_fd: int, env: Mapping[bytes, bytes], *, enter: Callable[[list[str]], list[str]] = list) -> Keeper:
    """The process that holds the pipe open for the run's lifetime (see the module docstring);
    `enter` wraps its command (to join the run's cgroup). `env`: the run's own variables (its lease
    tag, by which it is found), not goose's environment: it needs nothing else, and carries no secret.

    posix_spawn, not subprocess: the keeper needs no working folder, umask or PATH search, and
    subprocess's set-up in Python cost the daemon ~60 us more per run. posix_spawn closes nothing
    itself: only fds 0-2 reach the keeper because every other descriptor is close-on-exec (Python
    makes its own so; those the process inherited are made so before the first keeper).
    """
    _inherited_close_on_exec()
    command = enter(list(keeper_command()))
    pid = os.posix_spawn(
        command[0],
        command,
        {**env, KEEPER_ENV.encode(): b"1"},
        file_actions=[
            (os.POSIX_SPAWN_DUP2, read_fd, 0),
            (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
        setsid=True,
        setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # what Python ignores, back to the defaults
    )
    return Keeper(pid)


@functools.cache
def _inherited_close_on_exec() -> None:
    """Once per process: the descriptors it inherited from whoever started it (fd 3 and up, a
    shell's or a supervisor's) are made close-on-exec, so that no keeper holds one for its run's
    lifetime. (Listing them costs more than the keeper's spawn: not done at each run.)"""
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):  # the listing's own fd is closed by now
                if int(name) > 2 and os.get_inheritable(int(name)):
                    os.set_inheritable(int(name), False)


def open_kept_pipe(keeper_pid: int) -> int | None:
    """The read end of a run's pipe, from its keeper (a run adopted from a previous daemon)."""
    try:
        return os.open(f"/proc/{keeper_pid}/fd/0", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None


class OutputFeed:
    """Copies the pipe into the log as output comes, until every writer has closed it (`ended`).

    The pipe's read end stays registered with the event loop, which calls back when it is readable:
    no task and no registration per read (a task waiting with anyio.wait_readable cost a task per run
    and two epoll_ctl calls per read). One read per call: a flood cannot keep the loop from the other
    runs. `close` stops reading; it must come before the pipe is closed.
    """

    def __init__(self, read_fd: int, run_log: RunLog) -> None:
        self._fd = read_fd
        self._run_log = run_log
        self.ended = anyio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(read_fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, READ_BYTES)
        except BlockingIOError:
            return
        except OSError as exc:
            log.warning("run_output_read_failed", path=str(self._run_log.path), reason=str(exc))
            data = b""
        if not data:
            self.close()
            self.ended.set()
            return
        self._run_log.write(data)
        self._run_log.last_output = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1


def drain(read_fd: int, run_log: RunLog, limit: int = 64 * READ_BYTES) -> int:
    """Copy what the pipe holds right now (at most `limit` bytes); the number of bytes copied."""
    copied = 0
    while copied < limit:
        try:
            data = os.read(read_fd, READ_BYTES)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        run_log.write(data)
        copied += len(data)
    return copied
