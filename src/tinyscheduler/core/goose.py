"""The goose command line and environment of one run, built from plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tinyscheduler.core.standin import ALLOW_STANDIN_ENV, FAKE_SERVER_FIELD, FAKE_SERVER_VALUE, STANDIN_MARKER

__all__ = [
    "STANDIN_MARKER",
    "base_environment",
    "goose_command",
    "is_fake_server",
    "output_format_of",
    "run_variables",
    "scrubbed_environ",
    "standin_allowed",
    "standin_refusal",
]

#: Variables systemd hands to the service itself; a child that inherits them could ping the
#: watchdog or report readiness on our behalf (NotifyAccess=all) or claim our sockets.
#: The etcd password is the scheduler's credential, not the agents': no run inherits it.
SERVICE_ONLY = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "TINYSCHEDULER_ETCD_PASSWORD")
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
    """A copy of `environ` without the variables meant for this service alone (systemd's, etcd's password)."""
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


def model_of(extra: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The model a run asked for when goose's output does not say: `--model` in the goose arguments,
    else GOOSE_MODEL in the run's environment (goose.env); None when neither says (the recipe's or
    goose's own configuration decides then)."""
    for index, arg in enumerate(extra):
        if arg.startswith("--model="):
            return arg.partition("=")[2] or None
        if arg == "--model" and index + 1 < len(extra):
            return extra[index + 1]
    return environ.get("GOOSE_MODEL") or None


def is_fake_server(health: Mapping[str, Any]) -> bool:
    """Whether a `GET /health` document is the in-package fake TinyTask's (core.standin)."""
    return health.get(FAKE_SERVER_FIELD) == FAKE_SERVER_VALUE


def standin_allowed(environ: Mapping[str, str]) -> bool:
    """Whether the test-only switch lets the stand-in goose run against any server."""
    return environ.get(ALLOW_STANDIN_ENV, "").strip().lower() in ("1", "true", "yes")


def standin_refusal(program: str, *, health: Mapping[str, Any] | None, why_no_health: str = "") -> str | None:
    """Why the stand-in goose `program` may not run here, as one line; None when the server is the
    in-package fake. `health` is the server's `GET /health` document, None when it could not be read
    (`why_no_health`). The caller has already looked at ALLOW_STANDIN_ENV (standin_allowed)."""
    if health is not None and is_fake_server(health):
        return None
    server = (
        "TinyTask is not the in-package fake"
        if health is not None
        else f"TinyTask could not be asked whether it is the in-package fake ({why_no_health or 'no answer'})"
    )
    return (
        f"TINYSCHEDULER_GOOSE_BIN={program} is the in-package stand-in goose, which runs no agent and "
        f"would report tasks done with no work done, and {server}: set it to the real goose "
        f"(in tests only: {ALLOW_STANDIN_ENV}=1 in the environment)"
    )
