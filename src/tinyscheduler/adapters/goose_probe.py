"""What the configured goose program is: present, executable, and goose rather than the stand-in.

Run at start and on reload (and by `validate-config`): `goose --version` is cheap and has no side
effects. The in-package stand-in says STANDIN_MARKER there; it runs no agent, so outside tests and
the demo it must not be taken for goose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tinyscheduler.core.standin import STANDIN_MARKER

#: `--version` of a healthy program answers in milliseconds; a program that hangs is a problem too.
VERSION_TIMEOUT_SEC = 10.0


@dataclass(frozen=True)
class GooseCheck:
    #: As configured (TINYSCHEDULER_GOOSE_BIN).
    program: str
    #: The executable that would run; None when there is none.
    path: Path | None
    #: The first line `--version` printed, if it answered.
    version: str | None = None
    #: Why it cannot run at all (missing, not executable); None when it can.
    problem: str | None = None
    #: It says it is the in-package stand-in.
    standin: bool = False


def check_goose(program: str, environ: Mapping[str, str] | None = None) -> GooseCheck:
    environ = os.environ if environ is None else environ
    found = shutil.which(program, path=environ.get("PATH", os.defpath))
    if found is None:
        where = "on PATH" if "/" not in program else "or not executable"
        return GooseCheck(program, None, problem=f"not found {where}")
    path = Path(found)
    try:
        done = subprocess.run(
            [found, "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_SEC,
            env=dict(environ),
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return GooseCheck(
            program, path, problem=f"`{found} --version` did not answer within {VERSION_TIMEOUT_SEC:.0f}s"
        )
    except OSError as exc:
        return GooseCheck(program, path, problem=f"cannot run it: {exc.strerror or exc}")
    output = (done.stdout or done.stderr).strip()
    first = output.splitlines()[0][:200] if output else None
    return GooseCheck(program, path, version=first, standin=STANDIN_MARKER in output)
