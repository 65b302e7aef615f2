"""The state folder on disk, for retention: find the files `core.retention` judges, remove what it chose,
and say how much disk the state uses (`status`).

Nothing is followed: below each configured folder every folder is opened with O_NOFOLLOW relative to
its parent's descriptor, every file is judged by lstat, and a file is unlinked through its folder's
descriptor only if it is still the regular file that was judged (same inode). A symlink, a FIFO or a
folder where a file was is left alone. The walk is blocking file system work: the daemon runs it in
a worker thread (service.retention), never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from tinyscheduler.core.leases import LEASE_NAME
from tinyscheduler.core.retention import Kind, StateFile, is_quarantined_name, is_task_folder, is_temp_name, run_log_of

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_BELOW = _DIR_FLAGS | os.O_NOFOLLOW


@dataclass(frozen=True)
class Places:
    """Where the state's files are: run logs (`<log dir>/tasks`), quarantine, and the folders atomic
    writes leave temporary files in (the lease folder, the state folder)."""

    task_log_dir: Path
    quarantine_dir: Path
    temp_dirs: tuple[Path, ...]
    running_dir: Path


class StateLayout(Protocol):
    """Where the settings put the state (config.settings.Settings is one)."""

    @property
    def task_log_dir(self) -> Path: ...
    @property
    def quarantine_dir(self) -> Path: ...
    @property
    def running_dir(self) -> Path: ...
    @property
    def state_dir(self) -> Path: ...


def places_of(layout: StateLayout) -> Places:
    return Places(
        task_log_dir=layout.task_log_dir,
        quarantine_dir=layout.quarantine_dir,
        temp_dirs=(layout.running_dir, layout.state_dir),
        running_dir=layout.running_dir,
    )


@dataclass
class Removed:
    files: int = 0
    bytes: int = 0
    folders: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    #: Files that could not be removed (permissions, changed meanwhile), "path: why".
    errors: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _opened(path: Path | str, dir_fd: int | None = None) -> Iterator[int | None]:
    """A folder's descriptor, None when it is missing or not a real folder (a link below the root)."""
    try:
        fd = os.open(path, _DIR_FLAGS if dir_fd is None else _BELOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            yield None
            return
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _regular(fd: int, name: str) -> os.stat_result | None:
    try:
        st = os.lstat(name, dir_fd=fd)
    except FileNotFoundError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def _files_in(folder: Path, kind: Kind, test: object) -> Iterator[StateFile]:
    with _opened(folder) as fd:
        if fd is None:
            return
        for name in os.listdir(fd):
            if not callable(test) or not test(name):
                continue
            st = _regular(fd, name)
            if st is not None:
                yield StateFile(str(folder / name), kind, st.st_size, st.st_mtime)


def _run_logs(task_log_dir: Path) -> Iterator[StateFile]:
    """`<task>.<attempt>.log` at the top, and `<task>/<attempt>.log` as 2.0.0 wrote them."""
    with _opened(task_log_dir) as root:
        if root is None:
            return
        for name in os.listdir(root):
            if not is_task_folder(name):
                found = _run_log(root, None, name, task_log_dir)
                if found is not None:
                    yield found
                continue
            with _opened(name, dir_fd=root) as fd:
                if fd is None:
                    continue
                for log_name in os.listdir(fd):
                    found = _run_log(fd, name, log_name, task_log_dir / name)
                    if found is not None:
                        yield found


def _run_log(fd: int, folder: str | None, name: str, path: Path) -> StateFile | None:
    """`name` in the folder `fd` (at `path`), if it is a run log: one of our names, a regular file."""
    found = run_log_of(folder, name)
    st = _regular(fd, name) if found is not None else None
    if found is None or st is None:
        return None
    return StateFile(str(path / name), Kind.RUN_LOG, st.st_size, st.st_mtime, found[0])


def scan(places: Places) -> list[StateFile]:
    """Every file of ours under the state: run logs, quarantined files, leftover temporary files."""
    found = list(_run_logs(places.task_log_dir))
    found += _files_in(places.quarantine_dir, Kind.QUARANTINED, is_quarantined_name)
    for folder in dict.fromkeys(places.temp_dirs):
        found += _files_in(folder, Kind.TEMP, is_temp_name)
    return found


def leased_tasks(running_dir: Path) -> set[int]:
    """The tasks with a lease file on this host now (their runs are in flight)."""
    try:
        names = os.listdir(running_dir)
    except FileNotFoundError:
        return set()
    return {int(m.group(1)) for m in map(LEASE_NAME.fullmatch, names) if m is not None}


def remove(files: list[StateFile], places: Places, busy: set[int]) -> Removed:
    """Unlink the chosen files (each only if still the regular file judged), then the task folders
    left empty. `busy`: tasks in flight as known to the caller; the lease folder is read again
    before each folder is removed, so a run that started meanwhile keeps its folder."""
    removed = Removed()
    emptied: set[str] = set()
    for f in files:
        path = Path(f.path)
        if f.kind is Kind.RUN_LOG:
            if f.task_id in busy:
                continue
            if path.parent != places.task_log_dir:  # a task folder of 2.0.0's layout
                emptied.add(path.parent.name)
        try:
            gone = _unlink_if_same(path, f, places)
        except OSError as exc:
            removed.errors.append(f"{path}: {exc.strerror or exc}")
            continue
        if gone:
            removed.files += 1
            removed.bytes += f.size
            removed.by_kind[f.kind.value] = removed.by_kind.get(f.kind.value, 0) + 1
    removed.folders = _remove_empty(places, emptied, busy)
    return removed


def _unlink_if_same(path: Path, f: StateFile, places: Places) -> bool:
    if f.kind is Kind.RUN_LOG:
        with _opened(places.task_log_dir) as root:
            if root is None:
                return False
            if path.parent == places.task_log_dir:
                return _unlink_in(root, path.name, f)
            with _opened(path.parent.name, dir_fd=root) as fd:
                return fd is not None and _unlink_in(fd, path.name, f)
    with _opened(path.parent) as fd:
        return fd is not None and _unlink_in(fd, path.name, f)


def _unlink_in(fd: int, name: str, f: StateFile) -> bool:
    st = _regular(fd, name)
    # Still the file judged: a file put in its place meanwhile (another inode, a link) stays.
    if st is None or st.st_mtime != f.mtime or st.st_size != f.size:
        return False
    os.unlink(name, dir_fd=fd)
    return True


def _remove_empty(places: Places, folders: set[str], busy: set[int]) -> int:
    count = 0
    with _opened(places.task_log_dir) as root:
        if root is None:
            return 0
        for name in sorted(folders):
            if int(name) in busy or int(name) in leased_tasks(places.running_dir):
                continue
            with contextlib.suppress(OSError):  # not empty (a new run's log), or gone: left as it is
                os.rmdir(name, dir_fd=root)
                count += 1
    return count


@dataclass(frozen=True)
class Usage:
    """How much disk the state uses, for `status`."""

    #: Every file under the state folder and the log folder (each counted once).
    total_bytes: int
    run_log_bytes: int
    run_logs: int
    #: Tasks with a run log (named when each had its own folder; kept for `status --json` readers).
    task_folders: int
    quarantined: int
    temp_files: int

    def to_json(self) -> dict[str, int]:
        return dict(self.__dict__)


def usage(places: Places, roots: tuple[Path, ...]) -> Usage:
    """The sizes `status` shows; reads names and sizes only, follows no link."""
    files = scan(places)
    logs = [f for f in files if f.kind is Kind.RUN_LOG]
    return Usage(
        total_bytes=sum(_tree_bytes(root) for root in _outermost(roots)),
        run_log_bytes=sum(f.size for f in logs),
        run_logs=len(logs),
        task_folders=len({f.task_id for f in logs}),
        quarantined=sum(1 for f in files if f.kind is Kind.QUARANTINED and not f.path.endswith(".reason")),
        temp_files=sum(1 for f in files if f.kind is Kind.TEMP),
    )


def _outermost(roots: tuple[Path, ...]) -> list[Path]:
    # The log folder is often inside the state folder: count its files once.
    unique = sorted(set(roots), key=lambda p: len(p.parts))
    return [r for i, r in enumerate(unique) if not any(r.is_relative_to(o) for o in unique[:i])]


def _tree_bytes(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root, followlinks=False):
        for name in names:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if stat.S_ISREG(st.st_mode):
                    total += st.st_size
    return total
