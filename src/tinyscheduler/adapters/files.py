"""Files the scheduler writes: private to its user, never through a link, never torn.

- The process umask is 077 (`restrict_umask`, at the start of every command), and every folder and
  file is created 0700 / 0600 explicitly as well, so a umask changed elsewhere cannot widen them.
- A file opened for writing is opened with O_NOFOLLOW and must be a regular file (`open_private`): a
  symlink planted where a log or the lock goes cannot redirect the write, and a FIFO cannot block it.
- A folder the scheduler writes in must be its own and not writable by everyone (`unsafe_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import stat
import tempfile
from pathlib import Path
from typing import Any

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700
PRIVATE_UMASK = 0o077

#: The umask the process had before `restrict_umask` (empty until then): goose runs get it back (under
#: the shipped units, UMask=0077 again), so the operator, not the scheduler, decides how open an
#: agent's work files are.
_inherited_umask: list[int] = []


def restrict_umask() -> None:
    """umask 077 for this process; the one it had is kept for the runs (`run_umask`)."""
    previous = os.umask(PRIVATE_UMASK)
    if not _inherited_umask:
        _inherited_umask.append(previous)


def run_umask() -> int:
    """The umask a goose run starts with: the one this process was started with (-1: leave it)."""
    return _inherited_umask[0] if _inherited_umask else -1


def open_private(path: Path, flags: int) -> int:
    """`os.open(path, flags | O_NOFOLLOW | O_CLOEXEC)` for writing, refused unless `path` is a regular
    file (a new one is created 0600); an existing file of ours is set back to 0600. OSError names why."""
    try:
        # O_NONBLOCK: opening a FIFO for writing would wait for a reader; a regular file ignores it.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, PRIVATE_FILE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link (not followed)", str(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "is not a regular file", str(path))
        if stat.S_IMODE(st.st_mode) != PRIVATE_FILE and st.st_uid == os.geteuid():
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_private_folder(path: Path) -> None:
    """Create `path` and its missing parents, each 0700 whatever the umask; existing ones are left."""
    missing: list[Path] = []
    folder = path
    while not folder.is_dir():
        missing.append(folder)
        if folder.parent == folder:
            break
        folder = folder.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_FOLDER)
        except FileExistsError:
            if not folder.is_dir():
                raise
            continue  # made meanwhile by another process: not ours to change
        os.chmod(folder, PRIVATE_FOLDER)


def unsafe_folder(path: Path) -> str | None:
    """Why the scheduler must not write in folder `path`; None when it may (or it does not exist yet).

    A folder every user can write lets anyone plant links and files where the scheduler writes; a
    folder of another user lets that user do the same.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None  # missing (created 0700 when needed) or unreadable (that error comes on use)
    mode = stat.S_IMODE(st.st_mode)
    if mode & stat.S_IWOTH:
        return (
            f"{path} is writable by every user (mode {mode:04o}): anyone could plant files or links "
            f"where the scheduler writes; make it private: chmod 0700 {path}"
        )
    if st.st_uid != os.geteuid():
        return (
            f"{path} belongs to {_user_name(st.st_uid)}, not to {_user_name(os.geteuid())} who runs the "
            f"scheduler: run it as {_user_name(st.st_uid)}, or chown the folder"
        )
    return None


def _user_name(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name}"
    except KeyError:
        return f"uid {uid}"


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `text` to `path` (replacing what it held, or only creating it if `exclusive`), 0600."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    with os.fdopen(open_private(path, flags), "w", encoding="utf-8") as handle:
        handle.write(text)


def write_json_atomic(path: Path, data: Any, *, mode: int = PRIVATE_FILE, durable: bool = True) -> None:
    """Write JSON so a reader sees the old file or the new one, never a torn one (`write_text_atomic`)."""
    write_text_atomic(path, json_text(data), mode=mode, durable=durable)


def json_text(data: Any) -> str:
    """`data` as the scheduler's JSON files hold it: indented by 2, keys sorted, a final newline.

    A flat object (a lease, every value a string, number, boolean or null) goes through the C encoder
    with the same text as the result: `indent` alone sends json through its pure-Python encoder, about
    a hundred calls for a lease."""
    if isinstance(data, dict) and data and all(type(value) in _SCALARS for value in data.values()):
        inner = json.dumps(data, sort_keys=True, separators=(",\n  ", ": "))
        return "{\n  " + inner[1:-1] + "\n}\n"
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


_SCALARS = frozenset({str, int, float, bool, type(None)})


def write_text_atomic(path: Path, text: str, *, mode: int = PRIVATE_FILE, durable: bool = True) -> None:
    """Write `text` so a reader sees the old file or the new one, never a torn one.

    `durable` also survives power loss (fsync of the file and the folder, some milliseconds). A
    file whose loss at power-off costs nothing (a heartbeat, a status) skips that: after a crash of
    the machine every process it described is gone anyway. The temporary file is created 0600 with
    O_EXCL and O_NOFOLLOW (mkstemp), and os.replace replaces a link at `path`, never its target.
    """
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, mode)
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if durable:
        sync_folder(folder)


def sync_folder(folder: Path) -> None:
    """fsync a folder: the names created or renamed in it survive power loss."""
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
