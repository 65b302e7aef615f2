"""Secrets kept out of everything a person or a log reads: `redacted` is the one place that decides.

Masked, with REDACTED:
- the value of anything whose name says it is a secret (a setting, an environment variable, a JSON
  field, a `NAME=value` or `--name value` inside a text or a command line): a name made of words
  such as key, token, secret, password (`ANTHROPIC_API_KEY`, `access_token`, `--api-key`, `apiKey`);
- the user info of a URL, in any form (`http://TOKEN@host`, `http://user:password@host`);
- an `Authorization` credential (`Bearer ...`, `Basic ...`).
Used for `config --show` (every format), the dry run, log lines and events, the run log's header,
`status`, last_pass.json and the sd_notify STATUS line.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
#: Words that make a name secret when they are one of its words (`--max-tokens` is not: "tokens").
SECRET_WORDS = frozenset(
    {"key", "apikey", "token", "secret", "password", "passwd", "pwd", "credential", "credentials", "signature", "sig"}
)
_WORD_BREAK = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])")
# Each pattern may only begin where its run of name characters begins (the lookbehinds): without
# that, a long run with no `=` or `://` after it was rescanned from every position (20 KB: 2.5 s).
#: scheme://userinfo@ (userinfo ends the authority part, so it holds no / ? #).
_USERINFO = re.compile(r"(?<![a-z0-9+.-])([a-z][a-z0-9+.-]*://)([^/?#@\s]+)@", re.IGNORECASE)
#: NAME=value, as in a query string, an environment listing or a `--flag=value` argument.
_ASSIGNMENT = re.compile(r"(?<![A-Za-z0-9_.-])(?P<name>[A-Za-z0-9_.-]+)=(?P<value>\"[^\"]*\"|'[^']*'|[^\s&;,'\"]+)")
#: --flag value, as in a command line (a quoted value is one value).
_FLAG_VALUE = re.compile(
    r"(?P<flag>(?<!\S)--?[A-Za-z0-9][A-Za-z0-9_-]*)(?P<space>\s+)(?P<value>'[^']*'|\"[^\"]*\"|[^\s-]\S*)"
)
_AUTHORIZATION = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE)
#: Values that hold no text: returned as they are.
_SCALARS = frozenset({int, float, bool})


@functools.lru_cache(maxsize=1024)  # the same few field and variable names, in every log line
def secret_name(name: str) -> bool:
    """Whether `name` (a setting, variable, field or flag) names a secret."""
    words = [word.lower() for word in _WORD_BREAK.split(name) if word]
    return any(word in SECRET_WORDS for word in words)


def redacted(name: str, value: Any) -> Any:
    """`value` as it may be shown or logged: masked when `name` says it is a secret (a non-empty
    string), else with the secrets inside it masked. Text is searched for URLs with user info,
    `NAME=value`, `--flag value` and credentials; a list is read as a command line (`--api-key`,
    then its value); a mapping's values are judged by their keys. Other values are returned as is."""
    if isinstance(value, str):
        if value and name and secret_name(name):
            return REDACTED
        return _redacted_text(value)
    if value is None or type(value) in _SCALARS:  # most log fields; the Mapping check costs more
        return value
    if isinstance(value, Mapping):
        return {key: redacted(str(key), item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return _redacted_argv(value)
    return value


def _redacted_text(text: str) -> str:
    # Each pattern needs its literal ("://", "=", "-"): a text without it is not searched again.
    if "://" in text:
        text = _USERINFO.sub(_mask_userinfo, text)
    if "=" in text:
        text = _ASSIGNMENT.sub(lambda m: f"{m['name']}={REDACTED}" if secret_name(m["name"]) else m[0], text)
    if "-" in text:
        text = _FLAG_VALUE.sub(lambda m: f"{m['flag']}{m['space']}{REDACTED}" if secret_name(m["flag"]) else m[0], text)
    return _AUTHORIZATION.sub(lambda m: f"{m[1]} {REDACTED}", text)


def _mask_userinfo(match: re.Match[str]) -> str:
    user, colon, _ = match[2].partition(":")
    # user:password keeps the user (who it is, not how it signs in); a lone part may be a token.
    return f"{match[1]}{user}:{REDACTED}@" if colon else f"{match[1]}{REDACTED}@"


def _redacted_argv(items: list[Any] | tuple[Any, ...]) -> list[Any] | tuple[Any, ...]:
    shown: list[Any] = []
    secret_next = False
    for item in items:
        if secret_next and isinstance(item, str):
            shown.append(REDACTED)
            secret_next = False
            continue
        secret_next = isinstance(item, str) and item.startswith("-") and "=" not in item and secret_name(item)
        shown.append(redacted("", item))
    return tuple(shown) if isinstance(items, tuple) else shown
