"""Outcome classification, backoff and comment texts: plain data in, plain data out."""

from __future__ import annotations

import json
import signal

import pytest

from tinyscheduler.core.attempts import retry_delay
from tinyscheduler.core.outcomes import (
    INTERRUPTED_SENTENCE,
    MAX_TURNS_SENTENCE,
    Outcome,
    ProcessEnd,
    RunVerdict,
    StopCause,
    attempt_comment,
    classify,
    format_seconds,
    gave_up_comment,
    goose_reported_error,
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
        (
            ProcessEnd(0, 5, tail=stream(MESSAGE)),
            Outcome.FAILED,
            "goose reported an error: stream ended without a complete event; exit 0 after 5.0s",
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
        (ProcessEnd(None, 9), Outcome.LOST, "process lost, exit status unknown after 9.0s"),
    ],
)
def test_classify(end: ProcessEnd, outcome: Outcome, detail: str) -> None:
    assert classify(end) == RunVerdict(outcome, detail)


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
        # A message quoting metadata carries escaped quotes and is not goose's status.
        (json.dumps({"note": '"metadata": {"status": "error"}'}), None),
    ],
)
def test_goose_reported_error(tail: str, error: str | None) -> None:
    assert goose_reported_error(tail) == error


def test_max_turns_sentence_counts_only_at_the_end() -> None:
    quoted = f"the agent wrote: {MAX_TURNS_SENTENCE}\n" + "more work\n" * 1000 + "finished\n"
    assert classify(ProcessEnd(0, 1, tail=quoted)).outcome is Outcome.SUCCEEDED


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
