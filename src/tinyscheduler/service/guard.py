"""What the scheduler refuses to run with, checked before it writes or starts anything.

- A state or log folder that every user can write, or that belongs to another user: anyone could
  plant links and files where the scheduler writes (adapters.files.unsafe_folder).
- The in-package stand-in goose against a TinyTask that is not the in-package fake: it runs no
  agent, so real tasks would be reported done with no work done (core.goose.standin_refusal).

Both are configuration mistakes, so the daemon exits with EXIT_REFUSED, which systemd does not
restart (RestartPreventExitStatus=2), and `validate-config` reports them as errors.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog

from tinyscheduler.adapters.files import unsafe_folder
from tinyscheduler.adapters.goose_probe import GooseCheck
from tinyscheduler.adapters.tinytask import TinyTaskError
from tinyscheduler.config.settings import Settings
from tinyscheduler.core.goose import standin_allowed, standin_refusal

log = structlog.get_logger("tinyscheduler.guard")

#: The exit code of a bad configuration (cli.main EXIT_USAGE).
EXIT_REFUSED = 2


def unsafe_state(s: Settings) -> str | None:
    """The first folder the scheduler writes in that is not safe to write in, said as one line."""
    folders = (s.state_dir, s.running_dir, s.quarantine_dir, s.lock_file.parent, s.log_dir, s.task_log_dir)
    for folder in dict.fromkeys(folders):
        problem = unsafe_folder(folder)
        if problem:
            return f"unsafe state folder: {problem}"
    return None


async def standin_problem(
    check: GooseCheck, s: Settings, environ: Mapping[str, str], health: Callable[[], Awaitable[dict[str, Any]]]
) -> str | None:
    """Why the goose `check` found may not run (it is the stand-in, and TinyTask is not the fake)."""
    if standin_allowed(environ) or not check.standin:
        return None
    try:
        document = await health()
    except TinyTaskError as exc:
        return standin_refusal(s.goose_bin, health=None, why_no_health=str(exc))
    refused = standin_refusal(s.goose_bin, health=document)
    if refused is None:
        log.warning("standin_goose", goose=str(check.path), reason="allowed: TinyTask is the in-package fake")
    return refused
