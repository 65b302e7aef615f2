"""Files written so that a reader never sees a torn one."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: Path, data: Any, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write JSON so a reader sees the old file or the new one, never a torn one.

    `durable` also survives power loss (fsync of the file and the folder, some milliseconds). A
    file whose loss at power-off costs nothing (a heartbeat, a status) skips that: after a crash of
    the machine every process it described is gone anyway.
    """
    folder = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(fd, mode)
            handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")  # one write, not one per token
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if not durable:
        return
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
