"""The machine a benchmark's result line names: the CPU model, the CPUs, the load average then.

Every benchmark here imports it (they run as scripts from the repository root, so this folder is on
their path), and each result line ends with `where()`: a figure read on a busy shared machine says so.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def where() -> str:
    """`[CPU model xCPUs, load L]`, with the one-minute load average at this moment."""
    return f"[{cpu_model()} x{os.cpu_count()}, load {os.getloadavg()[0]:.2f}]"


def filesystem(path: Path) -> str:
    """The type of the file system `path` is on (the longest mount point above it), e.g. `ext4`."""
    found, best = "unknown", ""
    resolved = str(path.resolve())
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        fields = line.split()
        if len(fields) < 3 or len(fields[1]) < len(best):
            continue
        if resolved == fields[1] or resolved.startswith(fields[1].rstrip("/") + "/"):
            found, best = fields[2], fields[1]
    return found
