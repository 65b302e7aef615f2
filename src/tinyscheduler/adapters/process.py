"""Processes of a run: start goose in a session of its own, wait for its end, stop its group.

Goose is a `subprocess.Popen` child, awaited through a pidfd registered with the event loop (no
thread per child, no global child watcher). Nothing else in the daemon may reap children it did not
start (no SIGCHLD=SIG_IGN, no waitpid(-1)): a stolen exit status would look like exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio

from tinyscheduler.adapters.files import run_umask
from tinyscheduler.adapters.procfs import probe, verified_group
from tinyscheduler.core.leases import Lease, Liveness


def encoded(env: Mapping[str, str]) -> dict[bytes, bytes]:
    """An environment as the system call takes it: encoded once for the processes of a run, not
    once per process (subprocess encodes every name and value of a text one at each spawn)."""
    return {os.fsencode(name): os.fsencode(value) for name, value in env.items()}


def spawn(command: Sequence[str], *, output_fd: int, cwd: Path, env: Mapping[bytes, bytes]) -> subprocess.Popen[bytes]:
    """Start `command` with stdout and stderr on `output_fd`, in its own session and process group,
    so that it outlives the daemon and the stop ladder reaches the whole group. It gets the umask the
    daemon was started with, not the daemon's own 077 (adapters.files.run_umask)."""
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=output_fd,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
        umask=run_umask(),
    )


class RunProcess(Protocol):
    """The goose process of a run, whether the daemon spawned it or adopted it."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None:
        """The exit status; None while it runs, and always for a process that is not our child."""

    def exited(self) -> bool: ...

    def group(self) -> int | None:
        """The process group the stop ladder may signal; None when it cannot be proven to be the run's."""


class ChildProcess:
    """A goose the daemon spawned: its exit status is ours to collect."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self.popen = popen

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def group(self) -> int | None:
        return self.popen.pid  # spawned as the leader of its own session and group


class AdoptedProcess:
    """A goose a previous daemon instance spawned: alive while its pid is still the process its lease
    names (start ticks, boot id); its exit status went to its parent, so only its output tells."""

    def __init__(self, lease: Lease, boot_id: str | None) -> None:
        assert lease.pid is not None
        self.lease = lease
        self.boot_id = boot_id

    @property
    def pid(self) -> int:
        assert self.lease.pid is not None
        return self.lease.pid

    @property
    def returncode(self) -> int | None:
        return None

    def exited(self) -> bool:
        return probe(self.lease, self.boot_id) is not Liveness.ALIVE

    def group(self) -> int | None:
        return verified_group(self.lease, self.boot_id)


class ExitWatch:
    """Wakes its owner the moment a process exits: a pidfd polled by the event loop. Without pidfd
    support (Linux < 5.3) `until_exit` never returns, and the caller polls on a timeout.
    """

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        with contextlib.suppress(AttributeError, OSError):
            self._fd = os.pidfd_open(pid)

    @property
    def available(self) -> bool:
        """Whether the exit wakes the watcher (else it has to poll)."""
        return self._fd is not None

    async def until_exit(self) -> None:
        """Return once the process has exited; without a pidfd, never (the caller's timeout ends it)."""
        if self._fd is None:
            await anyio.sleep_forever()
        else:
            await anyio.wait_readable(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


async def wait_until(predicate: Callable[[], bool], at_most: float, poll_sec: float = 0.05) -> bool:
    """Poll `predicate` until it holds (True) or `at_most` seconds pass (False)."""
    deadline = time.monotonic() + at_most
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await anyio.sleep(min(poll_sec, remaining))
    return True


async def stop_process_group(
    pgid: int, is_gone: Callable[[], bool], grace: float, log: Any, *, poll_sec: float = 0.05
) -> str:
    """SIGINT, SIGTERM after `grace`, SIGKILL after `grace` more, to a whole process group.

    `is_gone` says whether the process that matters (the group leader) has ended: for a child of
    ours `lambda: proc.poll() is not None` (which also reaps it); for a process of a previous
    daemon instance `lambda: probe(lease, boot_id) is not Liveness.ALIVE`. Once it is gone, what
    is left of the group is killed. Returns the name of the last signal that was needed, "" if the
    process was gone before the first one.
    """
    last = ""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if is_gone():
            break
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        last = sig.name
        log.info("stop_signal", signal=last, pgid=pgid, grace=grace)
        # After SIGKILL only the kernel can be slow (e.g. a process in uninterruptible sleep).
        if await wait_until(is_gone, max(grace, 5.0) if sig is signal.SIGKILL else grace, poll_sec):
            break
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)  # leftovers of the group; no-op when it is empty
    return last
