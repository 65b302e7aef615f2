"""The operator's pauses on disk: `state/pauses.json`, so they outlive the daemon.

Written atomically and durably (a pause must survive a power cut as well as a restart); read without
ever blocking (adapters.reading). The daemon owns the file while it runs; with no daemon, the command
line changes it while holding the instance lock, so a daemon starting meanwhile cannot read it
half-way through a change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from tinyscheduler.adapters.files import open_private, write_json_atomic
from tinyscheduler.adapters.reading import read_bytes, reason
from tinyscheduler.core.control import Pauses, RequestError

#: A pause is about 200 bytes; far more than any host needs.
MAX_PAUSES_BYTES = 1024 * 1024


class PausesUnreadable(Exception):
    def __init__(self, path: Path, why: str, errno: int | None = None) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why
        #: The OSError's errno when the file could not be read at all (EACCES: another user's).
        self.errno = errno


class PauseStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> Pauses:
        """The pauses on disk (none when there is no file); raises PausesUnreadable."""
        try:
            data = json.loads(read_bytes(self.path, MAX_PAUSES_BYTES))
        except FileNotFoundError:
            return Pauses()
        except OSError as exc:
            raise PausesUnreadable(self.path, reason(exc), exc.errno) from None
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, nested too deep
            raise PausesUnreadable(self.path, f"not valid JSON: {exc}") from None
        try:
            return Pauses.from_json(data)
        except RequestError as exc:
            raise PausesUnreadable(self.path, str(exc)) from None

    def load_or_hold(self, now: datetime) -> Pauses:
        """The pauses, or for an unreadable file a host pause that says so (core.control)."""
        try:
            return self.load()
        except PausesUnreadable as exc:
            return Pauses.unreadable(str(exc.path), exc.why, now)

    def save(self, pauses: Pauses) -> None:
        """Raises OSError (a full disk, a read-only folder): the caller refuses the change.

        Readable by all, like last_pass.json: `status` shows the pauses to whoever may read the
        state folder; only the owner changes them."""
        write_json_atomic(self.path, pauses.to_json(), durable=True)


class DaemonRunning(Exception):
    """The instance lock is held: the daemon owns the pauses."""


@contextlib.contextmanager
def without_daemon(lock_file: Path) -> Iterator[None]:
    """Hold the instance lock for a moment, so that no daemon starts while the pauses change
    (raises DaemonRunning when one holds it). The holder line in the file is left as it is."""
    fd = open_private(lock_file, os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DaemonRunning() from None
        yield
    finally:
        os.close(fd)
