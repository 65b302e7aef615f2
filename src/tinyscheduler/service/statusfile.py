"""The last pass as others see it: systemd's STATUS= line and `state/last_pass.json` for `status`,
both with secrets masked (core.redact)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from tinyscheduler.adapters.files import json_text
from tinyscheduler.adapters.spares import spares_in
from tinyscheduler.core.control import summary
from tinyscheduler.core.redact import redacted
from tinyscheduler.service.availability import problems as availability_problems
from tinyscheduler.service.availability import published
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")


@dataclass
class PassReport:
    """The last pass, as STATUS, `status` and the journal show it."""

    started_at: str = ""
    duration_sec: float = 0.0
    ok: bool = True
    error: str | None = None
    busy: int = 0
    slots: int = 0
    queued: int = 0
    blocked: int = 0
    assigned: int = 0
    started: int = 0
    reclaimed: int = 0
    malformed: int = 0
    consecutive_failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)
    #: Idle tasks the pass did not start: queue -> reason (blocked, no_slot, backing_off, given_up) -> count.
    waiting: dict[str, dict[str, int]] = field(default_factory=dict)


def status_line(report: PassReport) -> str:
    """The STATUS= text: `3/8 slots busy, 12 queued, 1 blocked, last pass 0.14 s ok`.

    With an error the pass's duration says nothing useful, so the error takes its place.
    """
    counts = f"{report.busy}/{report.slots} slots busy, {report.queued} queued, {report.blocked} blocked"
    if report.error is not None:
        return f"{counts}, last pass failed: {report.error}"
    return f"{counts}, last pass {report.duration_sec:.2f} s ok"


def publish(runtime: Runtime, report: PassReport, reload_error: str | None) -> None:
    """Say how the last pass went: the STATUS= line, and last_pass.json (never fatal)."""
    s = runtime.config.settings
    line = status_line(report)
    # An operator's pause or drain comes first: it explains every other number on the line.
    paused = summary(runtime.pauses, len(runtime.busy))
    if paused:
        line = f"{paused}; {line}"
    # A host fenced off its cluster (etcd) starts nothing: as visible as a missing goose.
    unavailable = availability_problems(runtime) + runtime.claims.problems()
    if unavailable:
        line += "; " + "; ".join(unavailable)
    if reload_error:
        line += f"; reload rejected, previous configuration kept: {reload_error}"
    runtime.observer.reload_error = reload_error
    # Error texts quote TinyTask's URL, which may carry credentials; `systemctl status` is for anyone.
    runtime.notifier.status(redacted("", line))
    data: dict[str, Any] = asdict(report) | {
        "pid": os.getpid(),
        "instance": runtime.instance_id,
        "host": runtime.host,
        "reload_error": reload_error,
        #: Open breakers (goose missing, agents that could not start runs): problems until they close.
        "unavailable": unavailable,
        "breakers": published(runtime),
        "env_file": str(runtime.config.loaded.env_file) if runtime.config.loaded.env_file else None,
        "agent_control_file": str(s.agent_control_file) if runtime.config.registry else None,
        "limits": runtime.config.limits,
        "http": runtime.observer.http_address,
        "cluster": runtime.claims.summary(),
    }
    try:
        # Through spare files: a file created and one deleted every pass make every later file
        # creation in the folder dearer on some file systems (adapters.spares).
        spares_in(s.last_pass_file.parent).rewrite(
            s.last_pass_file, json_text(redacted("", data)).encode(), durable=False
        )
    except OSError as exc:
        log.error("status_write_failed", file=str(s.last_pass_file), reason=str(exc))
