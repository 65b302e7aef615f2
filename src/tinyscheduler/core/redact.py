"""Secrets kept out of everything a person or a log reads: one place decides what is masked."""

from __future__ import annotations

import re
from typing import Any

SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD")
#: The password part of `scheme://user:password@host` in any value.
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]*@", re.IGNORECASE)
REDACTED = "***"


def redacted(name: str, value: Any) -> Any:
    """`value`, or a mask when the setting's name says it is a secret; a password inside a URL
    (`http://user:secret@host`) is masked whatever the setting."""
    secret = any(marker in name.upper() for marker in SECRET_MARKERS)
    if secret and value not in (None, ""):
        return REDACTED
    return mask_url_passwords(value) if isinstance(value, str) else value


def mask_url_passwords(text: str) -> str:
    """`http://user:secret@host` -> `http://user:***@host`, anywhere in `text`."""
    return _URL_PASSWORD.sub(rf"\1{REDACTED}@", text)
