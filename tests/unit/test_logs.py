"""logs.py: what each format writes, the daily files, the event log; clocks are injected."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog

from tinyscheduler.adapters.logsetup import EventLog, configure_logging, set_identity

TZ = timezone(timedelta(hours=2))  # a non-UTC zone, so "local midnight" is not UTC midnight
log = structlog.get_logger("tinyscheduler.test")


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    structlog.reset_defaults()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 14, 23, 59, 58, tzinfo=TZ))


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_journal_lines_carry_the_priority_and_no_timestamp() -> None:
    out = io.StringIO()
    configure_logging("debug", "journal", None, stream=out)
    log.debug("lease_checked", task_id=7)
    log.info("started", task_id=7, agent="dev", pid=4242, attempt=2)
    log.warning("requeued", task_id=7, reason="goose exited 1")
    log.error("reclaim_failed", task_id=7, reason="TinyTask: connection refused")
    log.critical("lock_lost")
    assert lines(out) == [
        "<7>event=lease_checked task_id=7",
        "<6>event=started task_id=7 agent=dev pid=4242 attempt=2",
        '<4>event=requeued task_id=7 reason="goose exited 1"',
        '<3>event=reclaim_failed task_id=7 reason="TinyTask: connection refused"',
        "<2>event=lock_lost",
    ]


def test_a_traceback_stays_on_its_journal_line() -> None:
    # journald makes one entry per line; a bare traceback line would lose the priority.
    out = io.StringIO()
    configure_logging("info", "journal", None, stream=out)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("pass_crashed")
    [line] = lines(out)
    assert line.startswith("<3>event=pass_crashed exception=")
    assert "RuntimeError: boom" in line


def test_library_records_come_out_in_the_same_format() -> None:
    out = io.StringIO()
    configure_logging("info", "journal", None, stream=out)
    logging.getLogger("some.library").warning("disk %s", "slow")
    assert lines(out) == ['<4>event="disk slow" logger=some.library']


def test_json_lines_keep_fields_as_fields(clock: FakeClock) -> None:
    out = io.StringIO()
    configure_logging("info", "json", None, stream=out, clock=clock)
    log.info("finished", task_id=7, agent="dev", outcome="success", duration=12.5)
    assert [json.loads(line) for line in lines(out)] == [
        {
            "event": "finished",
            "level": "info",
            "timestamp": "2026-03-14T21:59:58.000Z",
            "task_id": 7,
            "agent": "dev",
            "outcome": "success",
            "duration": 12.5,
        }
    ]


@pytest.mark.parametrize("fmt", ["json", "journal", "console"])
def test_no_line_shows_a_password_inside_a_url(fmt: str, clock: FakeClock) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, None, stream=out, clock=clock)
    log.error("pass_failed", error="TinyTask unavailable at http://ops:hunter2@tinytask.local:3000: refused")
    logging.getLogger("somelib").warning("GET http://ops:hunter2@tinytask.local:3000/health failed")
    text = out.getvalue()
    assert "hunter2" not in text and text.count("ops:***@tinytask.local") == 2


def test_console_without_a_terminal_has_no_colours(clock: FakeClock) -> None:
    out = io.StringIO()
    configure_logging("info", "console", None, stream=out, clock=clock)
    log.info("started", task_id=7, agent="dev")
    [line] = lines(out)
    assert "\x1b[" not in line
    assert line.startswith("2026-03-14T21:59:58.000Z [info")
    assert re.search(r"\bstarted\b.*\bagent=dev\b.*\btask_id=7\b", line)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stream", "environ", "coloured"),
    [
        (Terminal, {}, True),
        (Terminal, {"NO_COLOR": "1"}, False),
        (io.StringIO, {"FORCE_COLOR": "1"}, True),
        (Terminal, {"NO_COLOR": "1", "FORCE_COLOR": "1"}, False),
    ],
)
def test_no_color_and_force_color_are_honoured(
    stream: type[io.StringIO],
    environ: dict[str, str],
    coloured: bool,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("NO_COLOR", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    out = stream()
    configure_logging("info", "console", None, stream=out, clock=clock)
    log.info("started", task_id=7)
    assert ("\x1b[" in out.getvalue()) is coloured


@pytest.mark.parametrize("fmt", ["console", "journal", "json"])
def test_structured_values_are_json_in_every_format(fmt: str, clock: FakeClock) -> None:
    out = io.StringIO()
    configure_logging("info", fmt, None, stream=out, clock=clock)
    log.info("started", limits={"dev-a": 2, "qa-a": 1}, agents=["dev-a"])
    text = out.getvalue()
    assert "{'dev-a'" not in text and "['dev-a']" not in text, "no Python repr"
    if fmt == "json":
        assert json.loads(text)["limits"] == {"dev-a": 2, "qa-a": 1}
    elif fmt == "console":
        assert """limits='{"dev-a":2,"qa-a":1}'""" in text, text
    else:  # logfmt quotes the JSON text as one value
        assert 'limits="{\\"dev-a\\":2,\\"qa-a\\":1}"' in text, text


def test_auto_is_journal_only_on_the_stream_journald_gave_us(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as journal, open(tmp_path / "other", "w") as other:
        st = os.fstat(journal.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("info", "auto", None, stream=journal)
        log.info("started")
        configure_logging("info", "auto", None, stream=other)
        log.info("started")
    assert (tmp_path / "journal").read_text() == "<6>event=started\n"
    other_text = (tmp_path / "other").read_text()
    assert not other_text.startswith("<") and "started" in other_text


@pytest.mark.parametrize("value", ["", "garbage", "1:2:3", "8:"])
def test_auto_without_a_usable_journal_stream_is_console(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", value)
    out = io.StringIO()
    configure_logging("info", "auto", None, stream=out)
    log.info("started")
    assert not out.getvalue().startswith("<")


def test_calling_again_swaps_the_level_and_does_not_duplicate_lines() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("warning", "journal", None, stream=first)
    log.info("hidden")
    configure_logging("debug", "journal", None, stream=second)
    log.debug("shown")
    assert lines(first) == []
    assert lines(second) == ["<7>event=shown"]


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging("loud", "auto", None, stream=io.StringIO())
    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging("info", "xml", None, stream=io.StringIO())


def test_scheduler_file_is_json_and_switches_at_local_midnight(tmp_path: Path, clock: FakeClock) -> None:
    configure_logging("info", "console", tmp_path, stream=io.StringIO(), clock=clock)
    log.info("pass_finished", busy=1)
    clock.now += timedelta(seconds=3)  # 00:00:01 on the 15th, local time
    log.warning("pass_failed", reason="TinyTask down")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scheduler_20260314.log", "scheduler_20260315.log"]
    [before] = (tmp_path / "scheduler_20260314.log").read_text().splitlines()
    [after] = (tmp_path / "scheduler_20260315.log").read_text().splitlines()
    assert json.loads(before) == {
        "event": "pass_finished",
        "level": "info",
        "busy": 1,
        "timestamp": "2026-03-14T21:59:58.000Z",
    }
    assert json.loads(after)["reason"] == "TinyTask down"


def test_scheduler_files_older_than_keep_days_are_deleted(tmp_path: Path, clock: FakeClock) -> None:
    for name in [
        "scheduler_20260310.log",
        "scheduler_20260312.log",
        "scheduler_20260313.log",
        "scheduler_notes.log",
        "scheduler_20261399.log",
        "events_20260301.jsonl",
    ]:
        (tmp_path / name).write_text("old\n")
    configure_logging("info", "console", tmp_path, keep_days=2, stream=io.StringIO(), clock=clock)
    log.info("started")  # the 14th: keeps the 13th and the 14th
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [
            "events_20260301.jsonl",
            "scheduler_20261399.log",
            "scheduler_20260313.log",
            "scheduler_20260314.log",
            "scheduler_notes.log",
        ]
    )
    clock.now += timedelta(days=1)
    log.info("still running")  # the 15th: the 13th goes
    assert not (tmp_path / "scheduler_20260313.log").exists()
    assert (tmp_path / "scheduler_20260314.log").exists()


def test_event_log_writes_one_json_line_per_event_with_host_and_instance(tmp_path: Path, clock: FakeClock) -> None:
    set_identity(host="host-1", instance="abc123")
    events = EventLog(tmp_path, clock=clock)
    events.record("assigned", task_id=7, agent="dev", queue="dev")
    events.record("started", task_id=7, agent="dev", pid=4242, attempt=1, log_path=tmp_path / "t7.log")
    clock.now += timedelta(seconds=5)
    events.record("finished", task_id=7, agent="dev", outcome="success", duration=4.2)
    events.close()
    day1 = [json.loads(x) for x in (tmp_path / "events_20260314.jsonl").read_text().splitlines()]
    day2 = [json.loads(x) for x in (tmp_path / "events_20260315.jsonl").read_text().splitlines()]
    assert day1 == [
        {
            "timestamp": "2026-03-14T21:59:58.000Z",
            "event": "assigned",
            "host": "host-1",
            "instance": "abc123",
            "task_id": 7,
            "agent": "dev",
            "queue": "dev",
        },
        {
            "timestamp": "2026-03-14T21:59:58.000Z",
            "event": "started",
            "host": "host-1",
            "instance": "abc123",
            "task_id": 7,
            "agent": "dev",
            "pid": 4242,
            "attempt": 1,
            "log_path": str(tmp_path / "t7.log"),
        },
    ]
    assert day2 == [
        {
            "timestamp": "2026-03-14T22:00:03.000Z",
            "event": "finished",
            "host": "host-1",
            "instance": "abc123",
            "task_id": 7,
            "agent": "dev",
            "outcome": "success",
            "duration": 4.2,
        }
    ]


def test_event_log_keeps_keep_days(tmp_path: Path, clock: FakeClock) -> None:
    for day in ["20260228", "20260301", "20260314"]:
        (tmp_path / f"events_{day}.jsonl").write_text("{}\n")
    EventLog(tmp_path, clock=clock, keep_days=14).record("requeued", task_id=1, reason="stale lease")
    # 14 days up to the 14th of March, today included, start on the 1st.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events_20260301.jsonl", "events_20260314.jsonl"]
    assert len((tmp_path / "events_20260314.jsonl").read_text().splitlines()) == 2


def test_event_log_refuses_unknown_events(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'finsihed'"):
        EventLog(tmp_path).record("finsihed", task_id=1)


def test_event_log_write_failure_is_logged_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be")
    with structlog.testing.capture_logs() as captured:
        EventLog(blocker).record("gave_up", task_id=3, attempt=5)
    assert [(e["event"], e["lost_event"]) for e in captured] == [("event_log_write_failed", "gave_up")]


def test_scheduler_file_that_cannot_be_written_is_one_line_not_a_traceback_per_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A full disk or an unwritable log folder while the daemon runs: every line still reaches the
    # stream (the journal), the failure is said once, and logging prints no traceback per record.
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the folder should be")
    out = io.StringIO()
    configure_logging("info", "json", blocker, stream=out)
    log.info("pass_finished", busy=1)
    log.warning("pass_failed", reason="TinyTask down")
    events = [json.loads(line)["event"] for line in lines(out) if line.startswith("{")]
    assert events == ["pass_finished", "pass_failed"]
    said = [line for line in lines(out) if not line.startswith("{")]
    assert said == [
        f"tinyscheduler: cannot write the log file in {blocker}: File exists; "
        "log lines go to this stream only until it works"
    ]
    assert "Traceback" not in capsys.readouterr().err
