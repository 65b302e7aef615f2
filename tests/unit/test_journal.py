"""journald spoken natively (adapters.journal, the journal format of adapters.logsetup), against a
socket that speaks the native protocol, and a priority on every stderr line under journald."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from tinyscheduler.adapters.journal import PriorityLines, encode_entry
from tinyscheduler.adapters.logsetup import configure_logging, set_identity

from harness import JournalListener, parse_journal_entry


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalListener]:
    listener = JournalListener(tmp_path / "journal.socket")
    yield listener
    listener.close()
    configure_logging("info", "console", stream=io.StringIO())


def test_records_go_out_with_native_fields_so_a_task_can_be_selected(journal: JournalListener) -> None:
    set_identity(host="host-7", instance="inst-1")
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=str(journal.path))
    log = structlog.get_logger("tinyscheduler.runs").bind(task_id=42, agent="dev-a")
    log.info("run_started", attempt=1, pid=4242)
    log.warning("run_finished", attempt=1, outcome="failed", reason="exit 1 after 3s\nforged=line")
    structlog.get_logger("tinyscheduler.runs").info("run_started", task_id=43, agent="dev-b", attempt=2)

    entries = journal.matching(TASK_ID="42")
    assert [e["TINYSCHEDULER_EVENT"] for e in entries] == ["run_started", "run_finished"]
    finished = entries[1]
    assert finished["PRIORITY"] == "4" and finished["OUTCOME"] == "failed" and finished["AGENT"] == "dev-a"
    assert (
        finished["ATTEMPT"] == "1" and finished["HOST"] == "host-7" and finished["TINYSCHEDULER_INSTANCE"] == "inst-1"
    )
    assert finished["SYSLOG_IDENTIFIER"] == "tinyscheduler"
    assert finished["MESSAGE"].startswith("event=run_finished ") and "\\nforged=line" in finished["MESSAGE"]
    assert "\n" not in finished["MESSAGE"]
    assert entries[0]["PRIORITY"] == "6" and "OUTCOME" not in entries[0]
    assert [e["AGENT"] for e in journal.matching(TASK_ID="43")] == ["dev-b"]


def test_an_entry_too_large_for_a_datagram_goes_as_a_memfd(journal: JournalListener) -> None:
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=str(journal.path))
    structlog.get_logger("t").error("huge", task_id=1, detail="a long server reply " * 20_000)
    [entry] = journal.matching(TINYSCHEDULER_EVENT="huge")
    assert entry["PRIORITY"] == "3" and len(entry["MESSAGE"]) > 400_000 and entry["TASK_ID"] == "1"


def test_without_the_journal_socket_the_line_goes_to_the_stream_with_its_priority(tmp_path: Path) -> None:
    stream = io.StringIO()
    configure_logging("info", "journal", stream=stream, journal_socket=str(tmp_path / "gone.socket"))
    structlog.get_logger("t").warning("pass_failed", error="TinyTask down")
    configure_logging("info", "console", stream=io.StringIO())
    assert stream.getvalue() == '<4>event=pass_failed error="TinyTask down"\n'


def test_values_with_newlines_use_the_binary_safe_form() -> None:
    data = encode_entry({"MESSAGE": "two\nlines", "PRIORITY": "6", "bad name": "dropped"})
    assert data == b"MESSAGE\n" + (9).to_bytes(8, "little") + b"two\nlines\nPRIORITY=6\n"
    assert parse_journal_entry(data) == {"MESSAGE": "two\nlines", "PRIORITY": "6"}


def test_priority_lines_prefix_every_line_once() -> None:
    out = io.StringIO()
    stream = PriorityLines(out)  # type: ignore[arg-type]
    stream.write("error: TINYSCHEDULER_X: bad\nwarning: a typo\n<6>already said\n")
    stream.write("Traceback (most recent call last):\n")
    stream.write("  part one, ")
    stream.write("part two\n")
    assert out.getvalue().splitlines() == [
        "<3>error: TINYSCHEDULER_X: bad",
        "<4>warning: a typo",
        "<6>already said",
        "<3>Traceback (most recent call last):",
        "<3>  part one, part two",
    ]


def test_a_fatal_line_printed_before_logging_has_its_priority_under_journald(tmp_path: Path) -> None:
    """`run --once --dry-run` against an unreachable TinyTask, stderr being the journal's stream."""
    err = tmp_path / "stderr"
    with err.open("wb") as sink:
        st = os.fstat(sink.fileno())
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
        env.update(JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}", TINYSCHEDULER_MCP_ENDPOINT="http://127.0.0.1:9")
        done = subprocess.run(
            [sys.executable, "-m", "tinyscheduler", "run", "--once", "--dry-run", "--base-path", str(tmp_path)],
            stderr=sink,
            stdout=subprocess.DEVNULL,
            env=env,
            timeout=60,
            check=False,
        )
    lines = err.read_text().splitlines()
    assert done.returncode == 1 and lines
    assert all(line[:3] in ("<3>", "<4>", "<6>", "<7>") for line in lines), lines
    assert any(line.startswith("<3>tinyscheduler: TinyTask at http://127.0.0.1:9 is unreachable") for line in lines)
