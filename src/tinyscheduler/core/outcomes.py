"""How a Goose run ended, decided from plain data: no I/O, no clock.

`classify` turns what the supervisor observed (exit status, whether and why it stopped the process,
the tail of the output) into an `Outcome` and a one-line detail. Exit status alone is not enough
with goose: it exits 0 when it hits the turn limit (the work is *incomplete*) and has been seen to
exit 0 after provider failures, which its `json` / `stream-json` output then reports as errors.
`retry_delay` is the backoff between failed attempts; the `*_comment` functions are the texts a
person reads on the task.
"""

from __future__ import annotations

import enum
import json
import re
import signal
from dataclasses import dataclass
from typing import Any

MAX_TURNS_SENTENCE = (
    "I've reached the maximum number of actions I can do without user input. Would you like me to continue?"
)
#: Goose prints this when SIGINT cancels a headless run (then exits 1).
INTERRUPTED_SENTENCE = "Headless run interrupted"
#: Upper bound of the wait between attempts, whatever the base and the count.
MAX_RETRY_DELAY_SEC = 3600.0
#: How much of the end of the output `classify` looks at (callers read this much of the log).
TAIL_BYTES = 64 * 1024


class Outcome(enum.StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: Exit 0 at the turn limit: goose stopped, the work is not done.
    INCOMPLETE = "incomplete"
    TIMED_OUT = "timed_out"
    IDLE_TIMEOUT = "idle_timeout"
    #: Ended by a signal the scheduler did not send, or stopped on request (shutdown).
    KILLED = "killed"
    #: The process is gone and its exit status cannot be known.
    LOST = "lost"
    #: The run never began (task no longer claimable, bad recipe, spawn error, TinyTask down).
    NOT_STARTED = "not_started"


class StopCause(enum.StrEnum):
    """Why the supervisor itself stopped the process, if it did."""

    NONE = "none"
    MAX_RUNTIME = "max_runtime"
    IDLE = "idle"
    REQUEST = "request"


@dataclass(frozen=True)
class ProcessEnd:
    """What the supervisor saw when the process ended."""

    #: `Popen.returncode`: negative for a signal; None when it could not be collected.
    returncode: int | None
    duration_sec: float
    stopped_by: StopCause = StopCause.NONE
    #: The last signal of the stop ladder that was needed ("SIGINT", "SIGTERM", "SIGKILL").
    stop_signal: str | None = None
    #: The end of the output (at most TAIL_BYTES), decoded leniently.
    tail: str = ""
    stop_reason: str = ""


@dataclass(frozen=True)
class RunVerdict:
    outcome: Outcome
    #: Short and specific, e.g. "exit 1 after 42s"; goes into comments and log lines.
    detail: str


def classify(end: ProcessEnd) -> RunVerdict:
    took = format_seconds(end.duration_sec)
    stopped = f"stopped with {end.stop_signal or 'no signal'} after {took}"
    # A stop we initiated decides the outcome: whatever the process printed while dying is noise.
    if end.stopped_by is StopCause.MAX_RUNTIME:
        return RunVerdict(Outcome.TIMED_OUT, f"max runtime reached, {stopped}")
    if end.stopped_by is StopCause.IDLE:
        return RunVerdict(Outcome.IDLE_TIMEOUT, f"no output for too long, {stopped}")
    if end.stopped_by is StopCause.REQUEST:
        reason = f" ({end.stop_reason})" if end.stop_reason else ""
        return RunVerdict(Outcome.KILLED, f"stopped on request{reason}, {stopped}")
    if end.returncode is None:
        return RunVerdict(Outcome.LOST, f"process lost, exit status unknown after {took}")
    if end.returncode < 0:
        return RunVerdict(Outcome.KILLED, f"killed by {_signal_name(-end.returncode)} after {took}")
    reported_error = goose_reported_error(end.tail)
    if end.returncode != 0:
        if INTERRUPTED_SENTENCE in _ending(end.tail):
            return RunVerdict(Outcome.KILLED, f"interrupted by a SIGINT from elsewhere after {took}")
        why = f": {reported_error}" if reported_error else ""
        return RunVerdict(Outcome.FAILED, f"exit {end.returncode} after {took}{why}")
    if reported_error is not None:
        return RunVerdict(Outcome.FAILED, f"goose reported an error: {reported_error}; exit 0 after {took}")
    if MAX_TURNS_SENTENCE in _ending(end.tail):
        return RunVerdict(Outcome.INCOMPLETE, f"stopped at the max-turns limit; exit 0 after {took}")
    return RunVerdict(Outcome.SUCCEEDED, f"exit 0 after {took}")


def goose_reported_error(tail: str) -> str | None:
    """The error goose's `json` or `stream-json` output ends with; None if it ended well or is text."""
    events = _stream_events(tail)
    if events:  # --output-format stream-json
        errors = [e for e in events if e["type"] == "error"]
        if errors:
            return _error_text(errors[0])
        return None if events[-1]["type"] == "complete" else "stream ended without a complete event"
    # --output-format json: one document whose flat `metadata` object ends the output. Matched, not
    # parsed, because the log tail may have cut the start of a long document.
    statuses = _METADATA_STATUS.findall(tail)
    if statuses and statuses[-1] != "completed":
        return f"status {statuses[-1]!r}"
    return None


_METADATA_STATUS = re.compile(r'"metadata"\s*:\s*\{[^{}]*?"status"\s*:\s*"([^"]*)"')
_STREAM_TYPES = frozenset({"message", "notification", "error", "complete"})


def _stream_events(tail: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in tail.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and value.get("type") in _STREAM_TYPES:
            events.append(value)
    return events


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return _one_line(error, 200) if isinstance(error, str) and error.strip() else "error event"


def _ending(tail: str, chars: int = 4096) -> str:
    # The turn-limit and interruption sentences are goose's last words (in text, or inside the
    # final message of a json document); earlier mentions, an agent quoting them say, do not count.
    return tail.rstrip()[-chars:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def format_seconds(seconds: float) -> str:
    return f"{seconds:.1f}s" if seconds < 10 else f"{round(seconds)}s"


def retry_delay(failures: int, base_sec: float, cap_sec: float = MAX_RETRY_DELAY_SEC) -> float:
    """Wait before the next attempt after `failures` failed ones: base, 2*base, 4*base ... capped."""
    if failures < 1:
        return 0.0
    # Cap the exponent too: 2**1000 would overflow a float long after the cap applies.
    return min(cap_sec, base_sec * 2.0 ** min(failures - 1, 64))


# --- texts a person reads on the task -------------------------------------------------------------


def attempt_comment(attempt: int, max_attempts: int, verdict: RunVerdict, log_path: str) -> str:
    return f"tinyscheduler: attempt {attempt}/{max_attempts} failed ({verdict.detail}); log: {log_path}"


def gave_up_comment(failures: int, tag: str) -> str:
    return (
        f"tinyscheduler: giving up after {failures} failed attempts; tagged {tag}. "
        f"Remove the tag to have the task started again."
    )


def requeue_comment(reason: str, log_path: str | None) -> str:
    where = f"; log: {log_path}" if log_path else ""
    return f"tinyscheduler: run stopped ({reason}); task requeued, not counted as a failed attempt{where}"
