"""Logging: one structlog pipeline, rendered for the stream and for the daily files.

Output goes through stdlib logging handlers, so records from libraries come out in the same
format and `configure_logging` can be called again (SIGHUP) to swap handlers and level without
touching the loggers other modules already hold.

- stream (stderr unless told): `console` (readable, colours on a terminal), `json`, or
  `journal` (no timestamp, journald adds one; `<N>` syslog priority prefix so that
  `journalctl -p warning` works; logfmt key=value). `auto` picks journal when the stream is the
  one systemd connected to the journal (JOURNAL_STREAM), else console. Under journald itself the
  journal format is sent natively instead (adapters.journal): PRIORITY, MESSAGE (the same logfmt
  text), TINYSCHEDULER_EVENT, TASK_ID, AGENT, ATTEMPT, OUTCOME, HOST, TINYSCHEDULER_INSTANCE.
- `<log_dir>/scheduler_YYYYMMDD.log`: JSON lines, a new file at local midnight.
- `<log_dir>/events_YYYYMMDD.jsonl` (`EventLog`): one JSON line per task lifecycle event, with host
  and instance.
Both daily files keep `keep_days` days, today included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import sys
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tinyscheduler.adapters.files import make_private_folder, open_private
from tinyscheduler.adapters.journal import JournalSender, is_journal_stream
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.text import escaped, iso, wants_color

log = structlog.get_logger("tinyscheduler.logs")

Clock = Callable[[], datetime]

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
FORMATS = ("auto", "console", "json", "journal")
#: sd-daemon(3) priorities, read by journald from a `<N>` line prefix.
SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
#: The task lifecycle events written to events_YYYYMMDD.jsonl, and `control`: an operator's action.
LIFECYCLE_EVENTS = frozenset({"assigned", "started", "finished", "requeued", "reclaimed", "gave_up", "control"})

# Handlers this module put on the root logger, replaced on the next call. Others (pytest's
# capture handler, say) are left alone.
_installed: list[logging.Handler] = []
#: Which host and daemon instance writes (`set_identity`): every event record and journal entry says it.
_identity: dict[str, str] = {}


def set_identity(*, host: str, instance: str) -> None:
    _identity.update(host=host, instance=instance)


def identity() -> dict[str, str]:
    """host and instance (the host alone before a daemon has set its instance)."""
    if "host" in _identity:  # set: no system call for every event
        return dict(_identity)
    return {"host": socket.gethostname(), **_identity}


def local_now() -> datetime:
    """Aware local time: file names follow the local date; timestamps are written in UTC (core.text.iso)."""
    return datetime.now().astimezone()


def _json_default(value: object) -> str:
    # Fields are often datetimes and paths; RFC 3339 text and plain paths are what a scraper expects.
    return iso(value) if isinstance(value, datetime) else str(value)


class DailyFile:
    """Appends lines to `<directory>/<prefix>_YYYYMMDD<suffix>` for the day of each line's time.

    On opening a day's file, files of the same name pattern older than `keep_days` days
    (today counts as one) are deleted.
    """

    def __init__(self, directory: Path, prefix: str, suffix: str, keep_days: int) -> None:
        if keep_days < 1:
            raise ValueError(f"keep_days must be at least 1, got {keep_days}")
        self.directory = directory
        self._prefix = prefix
        self._suffix = suffix
        self._keep_days = keep_days
        self._pattern = re.compile(re.escape(prefix) + r"_(\d{8})" + re.escape(suffix))
        self._day: date | None = None
        self._file: IO[str] | None = None

    def path_for(self, day: date) -> Path:
        return self.directory / f"{self._prefix}_{day:%Y%m%d}{self._suffix}"

    def write(self, now: datetime, line: str) -> None:
        day = now.date()
        if self._file is None or day != self._day:
            self._open(day)
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self, day: date) -> None:
        self.close()
        make_private_folder(self.directory)
        fd = open_private(self.path_for(day), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._file = os.fdopen(fd, "a", encoding="utf-8")  # kept open until the day changes
        self._day = day
        self._prune(day)

    def _prune(self, today: date) -> None:
        oldest_kept = today - timedelta(days=self._keep_days - 1)
        for path in self.directory.iterdir():
            match = self._pattern.fullmatch(path.name)
            if match is None:
                continue
            try:
                day = datetime.strptime(match.group(1), "%Y%m%d").date()
            except ValueError:
                continue  # eight digits that are no date: not a file we wrote
            if day < oldest_kept:
                path.unlink(missing_ok=True)


class _DailyFileHandler(logging.Handler):
    def __init__(self, daily: DailyFile, clock: Clock, stream: TextIO) -> None:
        super().__init__()
        self._daily = daily
        self._clock = clock
        #: Where a failure to write the file is said, once (the stream handler's stream).
        self._stream = stream
        self._failing = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._daily.write(self._clock(), self.format(record))
        except OSError as exc:
            # A full disk or an unwritable log folder: one line, not logging's traceback for every
            # record; the stream still gets every line. Said again if it recovers and fails anew.
            if not self._failing:
                self._failing = True
                with contextlib.suppress(Exception):
                    self._stream.write(
                        f"tinyscheduler: cannot write the log file in {self._daily.directory}: "
                        f"{exc.strerror or exc}; log lines go to this stream only until it works\n"
                    )
                    self._stream.flush()
        except Exception:
            self.handleError(record)
        else:
            self._failing = False

    def close(self) -> None:
        self._daily.close()
        super().close()


class EventLog:
    """`events_YYYYMMDD.jsonl` under `log_dir`: one JSON line per task lifecycle event."""

    def __init__(self, log_dir: Path, clock: Clock = local_now, keep_days: int = 14) -> None:
        self._file = DailyFile(log_dir, "events", ".jsonl", keep_days)
        self._clock = clock

    def record(self, event: str, **fields: Any) -> None:
        """Append `{"timestamp", "event", **fields}`; a write error is logged, never raised."""
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(
                f"unknown task lifecycle event {event!r}; expected one of {', '.join(sorted(LIFECYCLE_EVENTS))}"
            )
        now = self._clock()
        fields = {key: redacted(key, value) for key, value in {**identity(), **fields}.items()}
        line = json.dumps({"timestamp": iso(now), "event": event, **fields}, default=_json_default)
        try:
            self._file.write(now, line)
        except OSError as exc:
            # The events file is for scraping; losing a line must not fail the pass reporting it.
            log.warning(
                "event_log_write_failed", path=str(self._file.path_for(now.date())), error=str(exc), lost_event=event
            )

    def close(self) -> None:
        self._file.close()


def _timestamper(clock: Clock) -> Processor:
    def add_timestamp(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        event_dict.setdefault("timestamp", iso(clock()))
        return event_dict

    return add_timestamp


_logfmt = structlog.processors.LogfmtRenderer(key_order=["event"], bool_as_flag=False)
_json = structlog.processors.JSONRenderer(default=_json_default)


def _render_journal(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    # journald stamps each line itself and takes the priority from the prefix, so both go.
    level = event_dict.pop("level", "info")
    event_dict.pop("timestamp", None)
    return f"<{SYSLOG_PRIORITY.get(level, SYSLOG_PRIORITY['info'])}>{_logfmt(logger, name, event_dict)}"


#: Event fields that become journal fields of their own, for `journalctl TASK_ID=42`.
JOURNAL_FIELDS = {"task_id": "TASK_ID", "agent": "AGENT", "attempt": "ATTEMPT", "outcome": "OUTCOME"}


def journal_entry(logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
    """The fields of one journal entry, as JSON for `_JournalHandler` (a formatter returns text)."""
    fields = {name: str(event_dict[key]) for key, name in JOURNAL_FIELDS.items() if event_dict.get(key) is not None}
    ident = identity()
    fields.update(
        SYSLOG_IDENTIFIER="tinyscheduler",
        TINYSCHEDULER_EVENT=str(event_dict.get("event", "")),
        HOST=ident["host"],
        TINYSCHEDULER_INSTANCE=ident.get("instance", ""),
    )
    line = _render_journal(logger, name, dict(event_dict))
    fields["PRIORITY"], fields["MESSAGE"] = line[1], line[3:]
    return json.dumps(fields)


class _JournalHandler(logging.Handler):
    """Each record as a native journal entry; the `<N>` line on the stream when journald refuses it."""

    def __init__(self, sender: JournalSender, stream: TextIO) -> None:
        super().__init__()
        self._sender = sender
        self._stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = json.loads(self.format(record))
            if not self._sender.send(fields):
                self._stream.write(f"<{fields['PRIORITY']}>{fields['MESSAGE']}\n")
                self._stream.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._sender.close()
        super().close()


#: Fields that are no text of ours to judge: structlog renders them itself.
_NOT_REDACTED = frozenset({"exc_info", "stack_info"})


def _redact_fields(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    # A TinyTask URL with credentials, a goose command with --api-key: errors and commands quote
    # them in many lines, in every format; none may show them.
    return {key: value if key in _NOT_REDACTED else redacted(key, value) for key, value in event_dict.items()}


def _structured_as_json(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    # A mapping or a list is one JSON value in every format (`limits={"dev-a": 2}`), never a Python repr.
    return {
        key: json.dumps(value, default=_json_default, separators=(",", ":"))
        if isinstance(value, (dict, list, tuple)) and key not in _NOT_REDACTED
        else value
        for key, value in event_dict.items()
    }


def _escape_controls(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    # A terminal or the journal would obey an ESC or a newline in a server's error text (a cleared
    # screen, a forged line with its own priority); JSON escapes them itself.
    return {key: escaped(value) if isinstance(value, str) else value for key, value in event_dict.items()}


class _OncePerRecord(structlog.stdlib.ProcessorFormatter):
    """A formatter that handlers share: the text of a record is made once, whichever asks first."""

    _last: tuple[logging.LogRecord, str] | None = None

    def format(self, record: logging.LogRecord) -> str:
        last = self._last
        if last is not None and last[0] is record:
            return last[1]
        text = super().format(record)
        self._last = (record, text)
        return text


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (OSError, ValueError, AttributeError):
        return False


def _resolved(fmt: str, stream: TextIO) -> str:
    return ("journal" if is_journal_stream(stream) else "console") if fmt == "auto" else fmt


def _stream_renderer(fmt: str, stream: TextIO) -> list[Processor]:
    if fmt == "console":
        colors = wants_color(_isatty(stream), os.environ)
        return [_structured_as_json, _escape_controls, structlog.dev.ConsoleRenderer(colors=colors)]
    if fmt == "journal":
        return [structlog.processors.format_exc_info, _structured_as_json, _escape_controls, _render_journal]
    return [structlog.processors.format_exc_info, _json]


def _stream_handler(fmt: str, stream: TextIO, journal_socket: str | None) -> logging.Handler:
    if fmt == "journal":
        if journal_socket is not None:
            return _JournalHandler(JournalSender(journal_socket), stream)
        sender = JournalSender()
        if is_journal_stream(stream) and sender.available():
            return _JournalHandler(sender, stream)
    return logging.StreamHandler(stream)


def configure_logging(
    level: str,
    fmt: str = "auto",
    log_dir: Path | None = None,
    keep_days: int = 14,
    stream: TextIO | None = None,
    *,
    clock: Clock = local_now,
    journal_socket: str | None = None,
) -> None:
    """Set up (or set up again) logging to `stream` (default: sys.stderr now) and `log_dir`.

    The journal format goes to journald's native socket (fields of their own) when the stream is the
    journal's (JOURNAL_STREAM) and the socket is there, or to `journal_socket` when given (tests)."""
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r}; expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
    stream = sys.stderr if stream is None else stream
    stamp = _timestamper(clock)

    # Records from structlog loggers arrive with level and timestamp added, and redacted once for
    # every handler; records from plain stdlib loggers (libraries) get them here, plus the logger's
    # name so their source shows.
    foreign: list[Processor] = [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, stamp, _redact_fields]

    def formatter(renderer: list[Processor]) -> logging.Formatter:
        return _OncePerRecord(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
            foreign_pre_chain=foreign,
        )

    fmt = _resolved(fmt, stream)
    as_json = formatter(_stream_renderer("json", stream))
    handlers: list[logging.Handler] = [_stream_handler(fmt, stream, journal_socket)]
    if isinstance(handlers[0], _JournalHandler):
        handlers[0].setFormatter(
            formatter([structlog.processors.format_exc_info, _structured_as_json, _escape_controls, journal_entry])
        )
    else:
        handlers[0].setFormatter(as_json if fmt == "json" else formatter(_stream_renderer(fmt, stream)))
    if log_dir is not None:
        daily = _DailyFileHandler(DailyFile(log_dir, "scheduler", ".log", keep_days), clock, stream)
        daily.setFormatter(as_json)  # JSON on the stream too: each record rendered once for both
        handlers.append(daily)

    root = logging.getLogger()
    for old in _installed:
        root.removeHandler(old)
        old.close()
    _installed[:] = handlers
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(LEVELS[level.lower()])
    # No record of ours shows where it was logged from, or which thread or process logged it (the
    # renderers print structlog's fields): logging need not look them up for every record.
    logging._srcfile = None  # the logging HOWTO's way to skip the caller lookup
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # httpx logs every request at INFO and httpcore every connection step at DEBUG; a pass makes
    # several requests, and our own lines already say what failed.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # first: a debug line at info level costs next to nothing
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.processors.StackInfoRenderer(),
            stamp,
            _redact_fields,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a second call (a test's clock, say) must reach loggers already in use.
        cache_logger_on_first_use=False,
    )
