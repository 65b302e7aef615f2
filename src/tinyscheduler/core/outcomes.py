"""How a Goose run ended, decided from plain data: no I/O, no clock.

`classify` turns what the supervisor observed (exit status, whether and why it stopped the process,
the tail of the output) into an `Outcome` and a one-line detail. Exit status alone is not enough
with goose: it exits 0 when it hits the turn limit (the work is *incomplete*) and has been seen to
exit 0 after provider failures, which its `json` / `stream-json` output then reports as errors. So
success needs evidence from the run's own output (`EvidenceRule`), and a run whose exit status is
unknown (it ended while no scheduler watched) is judged from that output alone. The `*_comment`
functions are the texts a person reads on the task.
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
    #: Stopped on request (shutdown, a pause with --stop-runs, `cancel`): requeued, not counted.
    REQUEST = "request"
    #: Stopped on request, counted as a failed attempt (`cancel --fail`).
    REQUEST_COUNTED = "request_counted"


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


class OutputFormat(enum.StrEnum):
    """goose's `--output-format`."""

    TEXT = "text"
    JSON = "json"
    STREAM_JSON = "stream-json"


@dataclass(frozen=True)
class EvidenceRule:
    """What counts as proof that a run succeeded.

    stream-json: exit 0 and a `complete` event; json: exit 0 and `metadata.status` "completed";
    text (no structure to read): exit 0, and by default some output at all (`text_needs_output`).
    """

    output_format: OutputFormat = OutputFormat.STREAM_JSON
    text_needs_output: bool = True


DEFAULT_EVIDENCE = EvidenceRule()


@dataclass(frozen=True)
class Usage:
    """Token totals and the model, when goose reports them."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    model: str | None = None


@dataclass(frozen=True)
class Evidence:
    """What a run's own output says about how it ended."""

    #: A stream-json `complete` event, or a json document whose status is "completed".
    completed: bool = False
    #: The error goose reported (an `error` event, a json status other than "completed").
    error: str | None = None
    max_turns: bool = False
    interrupted: bool = False
    #: goose printed anything at all (the scheduler's own lines do not count).
    has_output: bool = False
    usage: Usage = Usage()


def read_evidence(tail: str) -> Evidence:
    """Evidence from the end of a run log (at most TAIL_BYTES of it, decoded leniently)."""
    text = "\n".join(line for line in tail.splitlines() if not line.startswith(_OWN_LINE_PREFIXES))
    ending = text.rstrip()[-4096:]
    events = _stream_events(text)
    completed, error, usage = False, None, Usage()
    if events:  # --output-format stream-json
        errors = [e for e in events if e["type"] == "error"]
        completes = [e for e in events if e["type"] == "complete"]
        error = _error_text(errors[0]) if errors else None
        completed = bool(completes) and not errors
        usage = _usage(completes[-1]) if completes else usage
    else:
        # --output-format json: one document whose flat `metadata` object ends the output. Matched,
        # not parsed, because the log tail may have cut the start of a long document.
        statuses = _METADATA_STATUS.findall(text)
        if statuses:
            completed = statuses[-1] == "completed"
            error = None if completed else f"status {statuses[-1]!r}"
            usage = _metadata_usage(text)
    return Evidence(
        completed=completed,
        error=error,
        # The turn-limit and interruption sentences are goose's last words (in text, or inside the
        # final message); earlier mentions, an agent quoting them say, do not count.
        max_turns=MAX_TURNS_SENTENCE in ending,
        interrupted=INTERRUPTED_SENTENCE in ending,
        has_output=bool(text.strip()),
        usage=usage,
    )


def classify(end: ProcessEnd, rule: EvidenceRule) -> RunVerdict:
    took = format_seconds(end.duration_sec)
    stopped = f"stopped with {end.stop_signal or 'no signal'} after {took}"
    # A stop we initiated decides the outcome: whatever the process printed while dying is noise.
    if end.stopped_by is StopCause.MAX_RUNTIME:
        return RunVerdict(Outcome.TIMED_OUT, f"max runtime reached, {stopped}")
    if end.stopped_by is StopCause.IDLE:
        return RunVerdict(Outcome.IDLE_TIMEOUT, f"no output for too long, {stopped}")
    if end.stopped_by in (StopCause.REQUEST, StopCause.REQUEST_COUNTED):
        reason = f" ({end.stop_reason})" if end.stop_reason else ""
        return RunVerdict(Outcome.KILLED, f"stopped on request{reason}, {stopped}")
    evidence = read_evidence(end.tail)
    if end.returncode is None:
        return _without_exit_status(evidence)
    if end.returncode < 0:
        return RunVerdict(Outcome.KILLED, f"killed by {_signal_name(-end.returncode)} after {took}")
    if end.returncode != 0:
        if evidence.interrupted:
            return RunVerdict(Outcome.KILLED, f"interrupted by a SIGINT from elsewhere after {took}")
        why = f": {evidence.error}" if evidence.error else ""
        return RunVerdict(Outcome.FAILED, f"exit {end.returncode} after {took}{why}")
    if evidence.error is not None:
        return RunVerdict(Outcome.FAILED, f"goose reported an error: {evidence.error}; exit 0 after {took}")
    if evidence.max_turns:
        return RunVerdict(Outcome.INCOMPLETE, f"stopped at the max-turns limit; exit 0 after {took}")
    missing = _missing_proof(evidence, rule)
    if missing:
        return RunVerdict(Outcome.FAILED, f"exit 0 after {took} {missing}")
    return RunVerdict(Outcome.SUCCEEDED, f"exit 0 after {took}")


def _missing_proof(evidence: Evidence, rule: EvidenceRule) -> str | None:
    """Why an exit 0 is not proof of success under `rule`, or None."""
    if rule.output_format is OutputFormat.STREAM_JSON and not evidence.completed:
        return "without a complete event in its stream-json output"
    if rule.output_format is OutputFormat.JSON and not evidence.completed:
        return 'without a "completed" status in its json output'
    if rule.output_format is OutputFormat.TEXT and rule.text_needs_output and not evidence.has_output:
        return "with no output at all"
    return None


def _without_exit_status(evidence: Evidence) -> RunVerdict:
    """A run that ended while no scheduler watched it (or was adopted): only its output can tell."""
    unknown = "exit status unknown: it ended while no scheduler watched it"
    if evidence.error is not None:
        return RunVerdict(Outcome.FAILED, f"goose reported an error: {evidence.error}; {unknown}")
    if evidence.max_turns:
        return RunVerdict(Outcome.INCOMPLETE, f"stopped at the max-turns limit; {unknown}")
    if evidence.completed:
        return RunVerdict(Outcome.SUCCEEDED, f"its output ends complete; {unknown}")
    return RunVerdict(Outcome.LOST, f"outcome unknown: {unknown}, and its output has no complete or error event")


#: Lines the scheduler itself writes into a run log: never evidence of what goose did.
_OWN_LINE_PREFIXES = ("--- tinyscheduler:", "[tinyscheduler:")
_METADATA_STATUS = re.compile(r'"metadata"\s*:\s*\{[^{}]*?"status"\s*:\s*"([^"]*)"')
_METADATA_OBJECT = re.compile(r'"metadata"\s*:\s*(\{[^{}]*\})')
_STREAM_TYPES = frozenset({"message", "notification", "error", "complete"})


def _stream_events(tail: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in tail.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(value, dict) and value.get("type") in _STREAM_TYPES:
            events.append(value)
    return events


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _usage(source: dict[str, Any]) -> Usage:
    """Token totals at the top of an event, or in its `usage` / `metadata` object."""
    for key in ("usage", "metadata"):
        inner = source.get(key)
        if isinstance(inner, dict) and any(k in inner for k in ("total_tokens", "input_tokens", "output_tokens")):
            source = {**inner, "model": source.get("model", inner.get("model"))}
            break
    model = source.get("model")
    return Usage(
        input_tokens=_count(source.get("input_tokens")),
        output_tokens=_count(source.get("output_tokens")),
        total_tokens=_count(source.get("total_tokens")),
        model=model if isinstance(model, str) and model else None,
    )


def _metadata_usage(text: str) -> Usage:
    found = _METADATA_OBJECT.findall(text)
    if not found:
        return Usage()
    try:
        metadata = json.loads(found[-1])
    except json.JSONDecodeError:
        return Usage()
    return _usage(metadata) if isinstance(metadata, dict) else Usage()


def _error_text(event: dict[str, Any]) -> str:
    error = event.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    return _one_line(error, 200) if isinstance(error, str) and error.strip() else "error event"


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
