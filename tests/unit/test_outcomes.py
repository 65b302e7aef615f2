"""Outcome classification, backoff and comment texts: plain data in, plain data out."""

from __future__ import annotations

import json
import signal

import pytest

from tinyscheduler.core.attempts import retry_delay
from tinyscheduler.core.outcomes import (
    INTERRUPTED_SENTENCE,
    MAX_TURNS_SENTENCE,
    EvidenceRule,
    Outcome,
    OutputFormat,
    ProcessEnd,
    RunVerdict,
    StopCause,
    Usage,
    attempt_comment,
    classify,
    format_seconds,
    gave_up_comment,
    read_evidence,
    requeue_comment,
)


def json_document(status: str, last_text: str = "done") -> str:
    # Shaped like `goose run --output-format json`: pretty-printed, messages then metadata.
    return json.dumps(
        {
            "messages": [{"role": "assistant", "content": [{"type": "text", "text": last_text}]}],
            "metadata": {"total_tokens": 10, "input_tokens": 6, "output_tokens": 4, "status": status},
        },
        indent=2,
    )


def stream(*events: dict) -> str:
    return "\n".join(json.dumps(e) for e in events) + "\n"


MESSAGE = {"type": "message", "message": {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}}
COMPLETE = {"type": "complete", "total_tokens": 12}
#: Exit 0 alone is enough: how text output was judged before success needed evidence.
EXIT_ZERO = EvidenceRule(OutputFormat.TEXT, text_needs_output=False)
STREAM = EvidenceRule(OutputFormat.STREAM_JSON)
JSON = EvidenceRule(OutputFormat.JSON)
TEXT = EvidenceRule(OutputFormat.TEXT)


@pytest.mark.parametrize(
    ("end", "outcome", "detail"),
    [
        (ProcessEnd(0, 42.2), Outcome.SUCCEEDED, "exit 0 after 42s"),
        (ProcessEnd(0, 1.25, tail="all good\n"), Outcome.SUCCEEDED, "exit 0 after 1.2s"),
        (ProcessEnd(1, 42), Outcome.FAILED, "exit 1 after 42s"),
        (ProcessEnd(2, 3, tail="boom"), Outcome.FAILED, "exit 2 after 3.0s"),
        (
            ProcessEnd(0, 5, tail=f"working...\n{MAX_TURNS_SENTENCE}\n"),
            Outcome.INCOMPLETE,
            "stopped at the max-turns limit; exit 0 after 5.0s",
        ),
        # The turn limit with a failing exit is a failure, not merely incomplete.
        (ProcessEnd(1, 5, tail=f"{MAX_TURNS_SENTENCE}\n"), Outcome.FAILED, "exit 1 after 5.0s"),
        (ProcessEnd(0, 5, tail=json_document("completed")), Outcome.SUCCEEDED, "exit 0 after 5.0s"),
        (
            ProcessEnd(0, 5, tail=json_document("error")),
            Outcome.FAILED,
            "goose reported an error: status 'error'; exit 0 after 5.0s",
        ),
        (
            ProcessEnd(0, 5, tail=json_document("completed", MAX_TURNS_SENTENCE)),
            Outcome.INCOMPLETE,
            "stopped at the max-turns limit; exit 0 after 5.0s",
        ),
        (ProcessEnd(0, 5, tail=stream(MESSAGE, COMPLETE)), Outcome.SUCCEEDED, "exit 0 after 5.0s"),
        (
            ProcessEnd(0, 5, tail=stream(MESSAGE, {"type": "error", "error": "provider said no"})),
            Outcome.FAILED,
            "goose reported an error: provider said no; exit 0 after 5.0s",
        ),
        (
            ProcessEnd(1, 5, tail=stream(MESSAGE, {"type": "error", "error": "rate limited"})),
            Outcome.FAILED,
            "exit 1 after 5.0s: rate limited",
        ),
        (ProcessEnd(-signal.SIGKILL, 7), Outcome.KILLED, "killed by SIGKILL after 7.0s"),
        (ProcessEnd(-signal.SIGTERM, 70), Outcome.KILLED, "killed by SIGTERM after 70s"),
        (
            ProcessEnd(1, 8, tail=f"{INTERRUPTED_SENTENCE}\n"),
            Outcome.KILLED,
            "interrupted by a SIGINT from elsewhere after 8.0s",
        ),
        (
            ProcessEnd(1, 3600, StopCause.MAX_RUNTIME, "SIGTERM", tail=f"{INTERRUPTED_SENTENCE}\n"),
            Outcome.TIMED_OUT,
            "max runtime reached, stopped with SIGTERM after 3600s",
        ),
        # Our stop decides even if the process managed to exit 0 while dying.
        (
            ProcessEnd(0, 20, StopCause.IDLE, "SIGINT"),
            Outcome.IDLE_TIMEOUT,
            "no output for too long, stopped with SIGINT after 20s",
        ),
        (
            ProcessEnd(-signal.SIGKILL, 12, StopCause.REQUEST, "SIGKILL", stop_reason="daemon shutdown"),
            Outcome.KILLED,
            "stopped on request (daemon shutdown), stopped with SIGKILL after 12s",
        ),
    ],
)
def test_classify(end: ProcessEnd, outcome: Outcome, detail: str) -> None:
    assert classify(end, EXIT_ZERO) == RunVerdict(outcome, detail)


@pytest.mark.parametrize(
    ("rule", "end", "outcome", "detail"),
    [
        # stream-json (the default): exit 0 is success only with a complete event.
        (STREAM, ProcessEnd(0, 5, tail=stream(MESSAGE, COMPLETE)), Outcome.SUCCEEDED, "exit 0 after 5.0s"),
        (
            STREAM,
            ProcessEnd(0, 5, tail=stream(MESSAGE)),
            Outcome.FAILED,
            "exit 0 after 5.0s without a complete event in its stream-json output",
        ),
        (
            STREAM,
            ProcessEnd(0, 0.1),
            Outcome.FAILED,
            "exit 0 after 0.1s without a complete event in its stream-json output",
        ),
        # The scheduler's own lines in the log are never goose's evidence.
        (
            STREAM,
            ProcessEnd(0, 1, tail='--- tinyscheduler: {"type": "complete"}\n'),
            Outcome.FAILED,
            "exit 0 after 1.0s without a complete event in its stream-json output",
        ),
        (JSON, ProcessEnd(0, 5, tail=json_document("completed")), Outcome.SUCCEEDED, "exit 0 after 5.0s"),
        (
            JSON,
            ProcessEnd(0, 5, tail="no document"),
            Outcome.FAILED,
            'exit 0 after 5.0s without a "completed" status in its json output',
        ),
        (TEXT, ProcessEnd(0, 5, tail="did the work\n"), Outcome.SUCCEEDED, "exit 0 after 5.0s"),
        (TEXT, ProcessEnd(0, 0.2, tail="  \n"), Outcome.FAILED, "exit 0 after 0.2s with no output at all"),
        (EXIT_ZERO, ProcessEnd(0, 0.2), Outcome.SUCCEEDED, "exit 0 after 0.2s"),
        # The exit status is unknown when the run ended while no scheduler watched: output decides.
        (
            STREAM,
            ProcessEnd(None, 9, tail=stream(MESSAGE, COMPLETE)),
            Outcome.SUCCEEDED,
            "its output ends complete; exit status unknown: it ended while no scheduler watched it",
        ),
        (
            STREAM,
            ProcessEnd(None, 9, tail=stream(MESSAGE, {"type": "error", "error": "quota"})),
            Outcome.FAILED,
            "goose reported an error: quota; exit status unknown: it ended while no scheduler watched it",
        ),
        (
            STREAM,
            ProcessEnd(None, 9, tail=stream(MESSAGE)),
            Outcome.LOST,
            "outcome unknown: exit status unknown: it ended while no scheduler watched it, and its output has no "
            "complete or error event",
        ),
        (
            TEXT,
            ProcessEnd(None, 9, tail=f"{MAX_TURNS_SENTENCE}\n"),
            Outcome.INCOMPLETE,
            "stopped at the max-turns limit; exit status unknown: it ended while no scheduler watched it",
        ),
    ],
)
def test_success_needs_evidence(rule: EvidenceRule, end: ProcessEnd, outcome: Outcome, detail: str) -> None:
    assert classify(end, rule) == RunVerdict(outcome, detail)


@pytest.mark.parametrize(
    ("tail", "error"),
    [
        ("", None),
        ("plain text output\n", None),
        # JSON the agent printed is not goose's output format.
        ('{"answer": 42}\n', None),
        # A json document whose start the log tail cut off still tells its status.
        (json_document("error")[40:], "status 'error'"),
        (stream({"type": "notification", "x": 1}, {"type": "error", "error": {"message": "bad key"}}), "bad key"),
        (stream({"type": "error"}), "error event"),
        (stream(MESSAGE, COMPLETE) + "trailing noise\n", None),
        (stream(MESSAGE), None),
        # A message quoting metadata carries escaped quotes and is not goose's status.
        (json.dumps({"note": '"metadata": {"status": "error"}'}), None),
    ],
)
def test_reported_error(tail: str, error: str | None) -> None:
    assert read_evidence(tail).error == error


@pytest.mark.parametrize(
    ("tail", "usage"),
    [
        (
            stream(MESSAGE, {"type": "complete", "input_tokens": 100, "output_tokens": 20, "total_tokens": 120}),
            Usage(100, 20, 120),
        ),
        (
            stream({"type": "complete", "usage": {"input_tokens": 5, "output_tokens": 1}, "model": "m-1"}),
            Usage(5, 1, None, "m-1"),
        ),
        (json_document("completed"), Usage(6, 4, 10)),
        # Nonsense figures are no figures; an error stream has no usage to report.
        (stream({"type": "complete", "input_tokens": -3, "output_tokens": "many", "total_tokens": True}), Usage()),
        ("plain text\n", Usage()),
    ],
)
def test_token_usage_is_read_from_goose_output(tail: str, usage: Usage) -> None:
    assert read_evidence(tail).usage == usage


def test_max_turns_sentence_counts_only_at_the_end() -> None:
    quoted = f"the agent wrote: {MAX_TURNS_SENTENCE}\n" + "more work\n" * 1000 + "finished\n"
    assert classify(ProcessEnd(0, 1, tail=quoted), TEXT).outcome is Outcome.SUCCEEDED


@pytest.mark.parametrize(
    ("failures", "base", "delay"),
    [
        (0, 60, 0),
        (1, 60, 60),
        (2, 60, 120),
        (3, 60, 240),
        (6, 60, 1920),
        (7, 60, 3600),
        (50, 60, 3600),
        (10_000, 60, 3600),
        (1, 0.01, 0.01),
        (3, 0.5, 2.0),
        (1, 7200, 3600),
    ],
)
def test_retry_delay(failures: int, base: float, delay: float) -> None:
    assert retry_delay(failures, base) == pytest.approx(delay)


def test_retry_delay_custom_cap() -> None:
    assert retry_delay(5, 1, cap_sec=10) == 10


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0.0s"), (9.94, "9.9s"), (10, "10s"), (42.4, "42s"), (3599.6, "3600s")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


def test_comment_texts() -> None:
    verdict = RunVerdict(Outcome.FAILED, "exit 1 after 42s")
    assert attempt_comment(2, 3, verdict, "/logs/7/2.log") == (
        "tinyscheduler: attempt 2/3 failed (exit 1 after 42s); log: /logs/7/2.log"
    )
    assert gave_up_comment(3, "tinyscheduler:failed") == (
        "tinyscheduler: giving up after 3 failed attempts; tagged tinyscheduler:failed. "
        "Remove the tag to have the task started again."
    )
    assert requeue_comment("daemon shutdown", "/l/1.log") == (
        "tinyscheduler: run stopped (daemon shutdown); task requeued, not counted as a failed attempt; log: /l/1.log"
    )
    assert requeue_comment("spawn failed", None).endswith("not counted as a failed attempt")
