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
