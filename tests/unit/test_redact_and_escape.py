"""The two functions every output goes through: `core.redact.redacted` (secrets) and
`core.text.escaped` (terminal control characters)."""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyscheduler.cli.logs import TerminalSafe
from tinyscheduler.core.redact import (
    _ASSIGNMENT,
    _AUTHORIZATION,
    _FLAG_VALUE,
    _USERINFO,
    REDACTED,
    _mask_userinfo,
    redacted,
    secret_name,
)
from tinyscheduler.core.text import escaped, markdown_cell

SECRET = "s3cr3tPLANTED"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        # URLs: user info of any form; the user of user:password stays.
        (f"http://{SECRET}@tinytask:3000/mcp", "http://***@tinytask:3000/mcp"),
        (f"https://ops:{SECRET}@tinytask.local:8443", "https://ops:***@tinytask.local:8443"),
        (f"TinyTask unavailable at http://{SECRET}@h/api/v1/queues: refused", "at http://***@h/api/v1/queues:"),
        # Token-like query parameters.
        (f"http://h/api?access_token={SECRET}&limit=5", "access_token=***&limit=5"),
        (f"http://h/x?sig={SECRET}", "sig=***"),
        # Goose arguments: --flag value, --flag=value, NAME=value.
        (f"goose run --api-key {SECRET} --no-session", "--api-key *** --no-session"),
        (f"goose run --api-key='{SECRET} x' --max-tokens 4000", "--api-key=*** --max-tokens 4000"),
        (f"goose run --password '{SECRET} with space' --x", "--password *** --x"),
        (f"env OPENAI_API_KEY={SECRET} goose", "OPENAI_API_KEY=***"),
        (f"--secret {SECRET}", "--secret ***"),
        (f"Authorization: Bearer {SECRET}", "Bearer ***"),
    ],
)
def test_secrets_inside_text_are_masked(text: str, shown: str) -> None:
    masked = redacted("", text)
    assert SECRET not in masked
    assert shown in masked


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:3000/mcp",
        "goose run --max-tokens 4000 --no-session",
        "GOOSE_DISABLE_KEYRING=1 task_id=42 agent=dev-a",
        "mailto:someone@example.org and a@b",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redacted("", text) == text


@pytest.mark.parametrize("unit", ["a", "a.", "a-", "-", "a+", "x://", 'a="', "a='", " -a", "Bearer ", "--a "], ids=repr)
def test_long_hostile_text_is_redacted_in_linear_time_and_in_full(unit: str) -> None:
    # A task title or a goose reply is not ours to bound: 200 KB of one repeated shape took over a
    # minute when a pattern could begin anywhere inside a run (a quadratic rescan, 20 KB: 2.5 s).
    text = unit * (200_000 // len(unit)) + f" token={SECRET}"
    started = time.process_time()
    masked = redacted("", text)
    assert time.process_time() - started < 2.0, "redaction is quadratic again"
    assert SECRET not in masked and masked.endswith("token=***")


def test_names_decide_for_settings_variables_and_fields() -> None:
    for name in ("ANTHROPIC_API_KEY", "tinytask_token", "client_secret", "db_password", "apiKey", "--api-key"):
        assert secret_name(name), name
        assert redacted(name, SECRET) == REDACTED
    for name in ("goose_args", "max_tokens", "input_tokens", "GOOSE_DISABLE_KEYRING", "monkey", "log_keep_days"):
        assert not secret_name(name), name
    assert redacted("api_key", "") == ""  # nothing to hide, and "unset" stays visible


def test_commands_mappings_and_environments_are_masked_throughout() -> None:
    argv = ["goose", "run", "--api-key", SECRET, "--params", "task_id=1", f"GOOGLE_API_KEY={SECRET}"]
    assert redacted("", argv) == ["goose", "run", "--api-key", REDACTED, "--params", "task_id=1", "GOOGLE_API_KEY=***"]
    document = {
        "error": f"TinyTask unavailable at http://{SECRET}@h",
        "env": {"GITHUB_TOKEN": SECRET, "PATH": "/usr/bin"},
        "runs": [{"command": ["goose", "--token", SECRET]}],
        "input_tokens": 12,
    }
    assert SECRET not in repr(redacted("", document))
    assert redacted("", document)["env"]["PATH"] == "/usr/bin"
    assert redacted("", document)["input_tokens"] == 12


def test_control_characters_are_shown_not_obeyed() -> None:
    title = "fix\x1b[2J it\x1b]0;owned\x07\nforged | row\r\x9b31m\x7f"
    shown = escaped(title)
    assert shown == "fix\\x1b[2J it\\x1b]0;owned\\x07\\nforged | row\\r\\x9b31m\\x7f"
    assert shown.isprintable()
    assert escaped(shown) == shown, "escaping twice changes nothing"
    assert markdown_cell(title).count("|") == markdown_cell(title).count("\\|") == 1
    assert escaped("a\tb\nc\x1b", keep_lines=True) == "a\tb\nc\\x1b"


def test_run_output_on_a_terminal_keeps_its_lines_and_loses_its_escapes() -> None:
    sink = io.BytesIO()
    safe = TerminalSafe(sink)
    text = "step 1 ✓\n\x1b[2Jstep 2\x07\n".encode()
    for i in range(len(text)):  # byte by byte: a character split between two reads stays whole
        safe.write(text[i : i + 1])
    assert sink.getvalue().decode() == "step 1 ✓\n\\x1b[2Jstep 2\\x07\n"


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("aZ0_.-=:/@ \t'\"&;,BearicsK\u017f\u0130"), max_size=60))
def test_text_skipped_for_lack_of_a_pattern_literal_is_masked_the_same(text: str) -> None:
    """Text is only searched by the patterns whose literal it holds ("://", "=", "-"): the cheap
    path every log field takes must mask exactly what searching with every pattern masks."""
    everything = _AUTHORIZATION.sub(
        lambda m: f"{m[1]} {REDACTED}",
        _FLAG_VALUE.sub(
            lambda m: f"{m['flag']}{m['space']}{REDACTED}" if secret_name(m["flag"]) else m[0],
            _ASSIGNMENT.sub(
                lambda m: f"{m['name']}={REDACTED}" if secret_name(m["name"]) else m[0],
                _USERINFO.sub(_mask_userinfo, text),
            ),
        ),
    )
    assert redacted("", text) == everything
