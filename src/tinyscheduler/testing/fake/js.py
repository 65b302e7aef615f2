"""JavaScript's view of values, as the real (Node.js) server applies it to what it receives and
sends: parseInt, Number(), typeof, JSON.stringify. Shared by the REST routes and the MCP tools."""

from __future__ import annotations

import json
import math
import re
from typing import Any

_TYPE_NAMES: dict[type, str] = {str: "string", list: "array", dict: "object"}
_JS_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def parse_int(text: str) -> int | None:
    """JavaScript parseInt: a leading integer, the rest ignored ('12abc' -> 12, 'abc' -> None)."""
    match = re.match(r"\s*([+-]?\d+)", text)
    return int(match.group(1)) if match else None


def number(value: Any) -> float | int:
    """JavaScript Number(value), as zod's z.coerce.number() applies it (null -> 0, "" -> 0)."""
    if value is None or isinstance(value, bool):
        return int(bool(value))
    if isinstance(value, (int, float)):
        result: float | int = value
    elif isinstance(value, str):
        text = value.strip()
        if not text:
            return 0
        if _JS_DECIMAL.fullmatch(text):
            result = float(text)
        elif re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
            result = int(text, 16)
        else:
            return float("nan")
    else:
        return float("nan")
    if isinstance(result, float) and result.is_integer():
        return int(result)  # JSON has one number type; 3.0 is printed as 3 by the real server
    return result


def type_name(value: Any) -> str:
    """The type zod names in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "nan" if isinstance(value, float) and math.isnan(value) else "number"
    return _TYPE_NAMES.get(type(value), "unknown")


def compact(value: Any) -> str:
    """JSON as the real server (JavaScript's JSON.stringify) puts it on the wire."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def pretty(value: Any) -> str:
    """JSON.stringify(value, null, 2), as the MCP tools put it in their text."""
    return json.dumps(value, indent=2, ensure_ascii=False)
