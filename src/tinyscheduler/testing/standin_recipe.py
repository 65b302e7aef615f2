"""The recipe as the stand-in goose reads it, kept off its start-up path.

Importing PyYAML costs some 13 ms, a third of the stand-in's start-up, and the daemon starts the
same few recipes again and again. So a run keeps what it needs from a recipe, its `standin:`
mapping, in a private per-user cache ($TMPDIR/tinyscheduler-standin-<uid>/<dev>-<inode>.json),
valid while the file's size, mtime and ctime are unchanged (an edit, a chmod or a replacement all
change one of them). Only a recipe that parsed is cached, so the first run of a recipe reports a
broken one exactly as goose would. Cache failures of any kind only mean parsing again.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat

from tinyscheduler.testing.standin_run import fail

TYPE_CHECKING = False  # typing itself costs milliseconds at every start
if TYPE_CHECKING:
    from typing import Any

_MISSING = object()


def load_recipe(path: str) -> dict[str, Any]:
    """The whole recipe, parsed; goose's failures (unreadable, not YAML, not a mapping) as `Failure`."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read recipe {path}: {getattr(exc, 'strerror', None) or exc}")
    import yaml

    try:
        # The C loader when PyYAML has one: several times faster than the pure-Python one.
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        fail(f"recipe {path} is not valid YAML: {exc}")
    if not isinstance(data, dict):
        fail(f"recipe {path}: expected a mapping")
    return data


def standin_mapping(path: str) -> Any:
    """The recipe's `standin:` value (None when it has none), from the cache when still valid."""
    try:
        info = os.stat(path)
    except OSError as exc:
        fail(f"cannot read recipe {path}: {exc.strerror}")
    entry, key = _entry(info), [info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    cached = _read(entry, key) if entry else _MISSING
    if cached is not _MISSING:
        return cached
    value = load_recipe(path).get("standin")
    if entry:
        _write(entry, key, value)
    return value


def _entry(info: os.stat_result) -> str | None:
    """The cache file for a recipe, in a folder only this user can use; None when there is none."""
    folder = os.path.join(os.environ.get("TMPDIR") or "/tmp", f"tinyscheduler-standin-{os.getuid()}")
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, 0o700)
        own = os.lstat(folder)
    except OSError:
        return None
    if not stat.S_ISDIR(own.st_mode) or own.st_uid != os.getuid() or own.st_mode & 0o077:
        return None  # someone else's, or a symlink: no cache rather than a shared one
    return os.path.join(folder, f"{info.st_dev}-{info.st_ino}.json")


def _read(entry: str, key: list[int]) -> Any:
    try:
        fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            cached = json.loads(handle.read())
    except (OSError, ValueError):
        return _MISSING
    if not isinstance(cached, dict) or cached.get("key") != key or "standin" not in cached:
        return _MISSING
    return cached["standin"]


def _write(entry: str, key: list[int], value: Any) -> None:
    try:
        data = json.dumps({"key": key, "standin": value}).encode()
    except (TypeError, ValueError):
        return  # a YAML value JSON cannot hold (a date, say): parse every time
    tmp = f"{entry}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, entry)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
