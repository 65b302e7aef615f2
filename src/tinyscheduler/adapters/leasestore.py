"""The lease folder: `<running_dir>/task_<id>.json`, one file per run in flight on this host.

Written atomically with mode 0600 in a 0700 folder, whenever the run's state changes: a spare file
filled and swapped with the lease in one step (adapters.spares: no inode created or freed per write);
the first write of a lease is also fsynced. A heartbeat only sets
the file's modification time (`touch`, no rewrite), so a lease's heartbeat, as every reader here
sees it, is the later of its `heartbeat` field and its file's mtime. A file that cannot be read as
a lease is moved to the quarantine folder, never deleted and never allowed to crash a pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tinyscheduler.adapters.files import json_text, make_private_folder, write_private
from tinyscheduler.adapters.reading import FileTooLarge, NotRegularFile, read_file
from tinyscheduler.adapters.spares import SpareFiles
from tinyscheduler.core.leases import LEASE_NAME, MAX_LEASE_BYTES, Lease, LeaseFormatError, lease_from_json


@dataclass(frozen=True)
class Quarantined:
    """A file moved out of the lease folder, and why."""

    original: Path
    #: None when the store is read-only (a dry run reports the file but leaves it in place).
    moved_to: Path | None
    reason: str


@dataclass(frozen=True)
class LeaseScan:
    leases: tuple[Lease, ...]
    quarantined: tuple[Quarantined, ...]


class LeaseStore:
    """The lease folder of this host. All methods are plain blocking file I/O on small files."""

    def __init__(self, running_dir: Path, quarantine_dir: Path, *, read_only: bool = False) -> None:
        self.running_dir = running_dir
        self.quarantine_dir = quarantine_dir
        self.read_only = read_only
        #: Host of an original-schema lease that names none: it was written on this host.
        self.host = socket.gethostname()
        self.spares = SpareFiles(running_dir)
        self._folder = str(running_dir)

    def ensure(self) -> None:
        make_private_folder(self.running_dir)
        os.chmod(self.running_dir, 0o700)  # also an existing one: lease files are the scheduler's alone
        self.spares.adopt()

    def path(self, task_id: int) -> Path:
        return self.running_dir / f"task_{task_id}.json"

    def _name(self, task_id: int) -> str:
        """`path()` as text, for the writes on every run's path (a Path costs more to make than its use)."""
        return f"{self._folder}/task_{task_id}.json"

    def write(self, lease: Lease, *, durable: bool = True) -> None:
        """Atomically; `durable` for a lease's first write, which must outlive a power loss (else a
        task set `working` could be left with nothing to reconcile it). Rewrites need not be."""
        self.spares.rewrite(self._name(lease.task_id), json_text(lease.to_json()).encode(), durable=durable)
        self.touch(lease.task_id, lease.heartbeat)  # the field holds whole seconds, the mtime the rest

    def touch(self, task_id: int, moment: datetime) -> None:
        """A heartbeat: the lease file's mtime set to `moment`, its content unchanged (microseconds,
        where a rewrite costs a temp file, a JSON dump and a rename). Raises FileNotFoundError when
        the file is gone (the caller writes it again)."""
        stamp = _ns(moment)
        os.utime(self._name(task_id), ns=(stamp, stamp), follow_symlinks=False)

    def remove(self, task_id: int) -> None:
        self.spares.retire(self._name(task_id))

    def read(self, task_id: int) -> Lease | None:
        """One lease; None if absent. A bad file is quarantined (and None returned)."""
        path = self.path(task_id)
        try:
            return self._parse(path)
        except FileNotFoundError:
            return None
        except (OSError, LeaseFormatError) as exc:
            self._quarantine(path, str(exc))
            return None

    def scan(self, known: Mapping[int, Lease] | None = None) -> LeaseScan:
        """Every lease in the folder; anything unreadable is moved to quarantine and listed.

        `known`: leases whose content the caller holds (the runs it supervises wrote them): their
        files are listed, not read."""
        leases: list[Lease] = []
        quarantined: list[Quarantined] = []
        try:
            names = sorted(os.listdir(self.running_dir))
        except FileNotFoundError:
            return LeaseScan((), ())
        for name in names:
            if name.startswith("."):
                continue  # temp files of a write in progress
            path = self.running_dir / name
            match = LEASE_NAME.fullmatch(name)
            held = known.get(int(match.group(1))) if known and match else None
            if held is not None:
                leases.append(held)
                continue
            try:
                if not match:
                    raise LeaseFormatError("file name is not task_<id>.json")
                lease = self._parse(path)
                if lease.task_id != int(match.group(1)):
                    raise LeaseFormatError(f"field task_id: {lease.task_id} does not match the file name")
                leases.append(lease)
            except FileNotFoundError:
                continue  # removed by its run while we listed
            except (OSError, LeaseFormatError) as exc:
                record = self._quarantine(path, str(exc))
                if record:
                    quarantined.append(record)
        return LeaseScan(tuple(leases), tuple(quarantined))

    def quarantined_files(self) -> list[Path]:
        try:
            return sorted(p for p in self.quarantine_dir.iterdir() if not p.name.endswith(".reason"))
        except FileNotFoundError:
            return []

    def _parse(self, path: Path) -> Lease:
        # Non-blocking and regular files only: a FIFO with a lease's name must not hang the pass.
        try:
            raw, info = read_file(path, MAX_LEASE_BYTES)
        except (NotRegularFile, IsADirectoryError):
            raise LeaseFormatError("not a regular file") from None
        except FileTooLarge:
            raise LeaseFormatError(f"file is over {MAX_LEASE_BYTES} bytes") from None
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LeaseFormatError(f"not JSON: {exc}") from None
        except RecursionError:
            raise LeaseFormatError("not JSON: nested too deeply") from None
        lease = lease_from_json(data, self.host)
        touched = _moment(info.st_mtime_ns)
        return lease.with_changes(heartbeat=touched) if touched > lease.heartbeat else lease

    def _quarantine(self, path: Path, reason: str) -> Quarantined | None:
        if self.read_only:
            return Quarantined(path, None, reason)
        try:
            make_private_folder(self.quarantine_dir)
            os.chmod(self.quarantine_dir, 0o700)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            base = f"{path.name}.{stamp}.{os.getpid()}"
            # Never overwrite an earlier quarantined file (same name again within the same second).
            target = self.quarantine_dir / base
            serial = 1
            while os.path.lexists(target):
                target = self.quarantine_dir / f"{base}.{serial}"
                serial += 1
            os.replace(path, target)
        except FileNotFoundError:
            if not os.path.lexists(path):
                return None  # removed by its run meanwhile
            return Quarantined(path, None, f"{reason} (could not quarantine: quarantine folder missing)")
        except OSError as exc:
            # Left in place and reported again next pass; never lost, never a crash.
            return Quarantined(path, None, f"{reason} (could not quarantine: {exc})")
        with contextlib.suppress(OSError):
            write_private(target.parent / f"{target.name}.reason", f"{path}: {reason}\n", exclusive=True)
        return Quarantined(path, target, reason)


def _ns(moment: datetime) -> int:
    """A moment as nanoseconds since the epoch, exactly (a float loses the microseconds)."""
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _moment(ns: int) -> datetime:
    return _EPOCH + timedelta(microseconds=ns // 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
