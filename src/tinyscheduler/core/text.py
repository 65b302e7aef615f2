"""Text from outside (task titles, agent names, server errors, paths) made safe to print.

A terminal obeys control characters: ESC starts sequences that clear the screen, move the cursor or
set the window title (OSC, ended by BEL), and a newline starts what looks like a new table row or
log line. `escaped` shows every one of them as a visible escape instead (`\\x1b`, `\\n`), so what is
printed is exactly one line of inert text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

#: C0 controls, DEL and C1 controls (0x9b is a one-byte CSI on some terminals).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The same but for newline and tab: a block of lines stays a block of lines.
_CONTROL_IN_BLOCK = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _visible(match: re.Match[str]) -> str:
    char = match[0]
    return _NAMED.get(char) or f"\\x{ord(char):02x}"


def escaped(text: str, *, keep_lines: bool = False) -> str:
    """`text` with every control character shown as an escape; idempotent (escaping it again is a
    no-op). `keep_lines` keeps newlines and tabs, for a block of output shown as it was printed."""
    return (_CONTROL_IN_BLOCK if keep_lines else _CONTROL).sub(_visible, text)


def markdown_cell(text: str) -> str:
    """`text` as one Markdown table cell: escaped, and a `|` cannot end the cell."""
    return escaped(text).replace("|", "\\|")


def iso(moment: datetime) -> str:
    """The one timestamp format a person or a script reads (logs, events, status, JSON, comments,
    lease files): RFC 3339, UTC, milliseconds, `2026-11-29T12:00:00.123Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wants_color(isatty: bool, environ: Mapping[str, str]) -> bool:
    """Colour on a terminal, unless NO_COLOR is set (no-color.org); FORCE_COLOR asks for it anywhere."""
    if environ.get("NO_COLOR"):
        return False
    if environ.get("FORCE_COLOR"):
        return True
    return isatty


def format_age(seconds: float) -> str:
    """A duration as a person reads it: 4.2s, 42s, 5m03s, 2h07m, 3d04h."""
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
