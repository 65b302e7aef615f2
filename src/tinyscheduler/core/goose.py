"""The goose command line and environment of one run, built from plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from tinyscheduler.core.standin import STANDIN_MARKER

__all__ = [
    "STANDIN_MARKER",
    "base_environment",
    "goose_command",
    "output_format_of",
    "run_variables",
    "scrubbed_environ",
]

#: Variables systemd hands to the service itself; a child that inherits them could ping the
#: watchdog or report readiness on our behalf (NotifyAccess=all) or claim our sockets.
SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
SERVICE_ONLY_PREFIX = "LISTEN_"


def goose_command(goose_bin: str, recipe: Path, task_id: int, agent: str, extra: Sequence[str]) -> list[str]:
    return [
        goose_bin,
        "run",
        "--recipe",
        str(recipe),
        "--params",
        f"task_id={task_id}",
        "--params",
        f"agent={agent}",
        "--no-session",
        *extra,
    ]


def scrubbed_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """A copy of `environ` without the variables systemd meant for this service alone."""
    return {
        key: value
        for key, value in environ.items()
        if key not in SERVICE_ONLY and not key.startswith(SERVICE_ONLY_PREFIX)
    }


def base_environment(base: Mapping[str, str]) -> dict[str, str]:
    """What every run of a daemon gets from its environment (the same for all its runs)."""
    env = scrubbed_environ(base)
    # Approval prompts fail headless runs; an operator's explicit choice still wins.
    env.setdefault("GOOSE_MODE", "auto")
    return env


def run_variables(task_id: int, agent: str, attempt: int, lease_path: Path, endpoint: str) -> dict[str, str]:
    """What each run gets of its own, on top of `base_environment`."""
    return {
        "TINYSCHEDULER_TASK_ID": str(task_id),
        "TINYSCHEDULER_AGENT": agent,
        "TINYSCHEDULER_ATTEMPT": str(attempt),
        # Every process of the run carries it: a run whose pid never reached its lease, and anything
        # it left behind, can still be found through /proc.
        "TINYSCHEDULER_LEASE": str(lease_path),
        "TINYTASK_ENDPOINT": endpoint,
    }


def output_format_of(extra: Sequence[str], configured: str) -> tuple[str, list[str]]:
    """The `--output-format` a run will use and the arguments to add for it: the operator's own
    `--output-format` in the goose arguments wins over the setting."""
    for index, arg in enumerate(extra):
        if arg.startswith("--output-format="):
            return arg.partition("=")[2], []
        if arg == "--output-format" and index + 1 < len(extra):
            return extra[index + 1], []
    return configured, ["--output-format", configured]
