"""The price table (`TINYSCHEDULER_PRICES`): what a million input and output tokens of each model cost.

A JSON object, read without blocking and only if it is a regular file of at most 1 MiB:

    {"currency": "USD",
     "models": {"claude-sonnet-4*": {"input": 3.0, "output": 15.0},
                "gpt-4o": {"input": 2.5, "output": 10.0},
                "*": {"input": 5.0, "output": 20.0}}}

A model name may be a pattern (`*`, `?`, `[...]`); `*` alone is the price of any model not listed
(core.cost). Every problem is one line naming the file and the entry; a bad table fails the start
(exit 2) or is refused on reload, like the registry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyscheduler.adapters.reading import read_bytes, reason
from tinyscheduler.config.settings import ConfigError
from tinyscheduler.core.cost import Price, PriceTable

MAX_PRICES_BYTES = 1024 * 1024
#: Far above any model's price per million tokens, far below a typo's.
MAX_PRICE = 1_000_000
MAX_NAME = 200


def load_prices(path: Path | None) -> PriceTable:
    """The table at `path` (an empty one when None); raises ConfigError naming each problem."""
    if path is None:
        return PriceTable()
    try:
        data = json.loads(read_bytes(path, MAX_PRICES_BYTES).decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"price table {path}: cannot read ({reason(exc)})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"price table {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise ConfigError([f"price table {path}: invalid JSON at {where}: {exc.msg}"]) from None
    except RecursionError:
        raise ConfigError([f"price table {path}: invalid JSON: nested too deeply"]) from None
    problems: list[str] = []
    table = _table(data, f"price table {path}", problems)
    if problems:
        raise ConfigError(problems[:20])
    return table


def currency_of(path: Path | None) -> str:
    """The table's currency for labels, "" without one; a bad table costs a listing no label."""
    try:
        return load_prices(path).currency
    except ConfigError:
        return ""


def _table(data: Any, where: str, problems: list[str]) -> PriceTable:
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        problems.append(f'{where}: expected an object with "models": {{"<model>": {{"input": N, "output": N}}}}')
        return PriceTable()
    currency = data.get("currency", "")
    if not isinstance(currency, str) or len(currency) > 10 or not currency.isprintable():
        problems.append(f"{where}: currency: expected a short name such as USD")
        currency = ""
    entries: list[tuple[str, Price]] = []
    for name, value in data["models"].items():
        price = _price(name, value, f"{where}: models[{json.dumps(name)}]", problems)
        if price is not None:
            entries.append((name, price))
    return PriceTable(tuple(entries), currency)


def _price(name: str, value: Any, where: str, problems: list[str]) -> Price | None:
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        problems.append(f"{where}: expected a model name of 1 to {MAX_NAME} printable characters")
        return None
    if not isinstance(value, dict):
        problems.append(f'{where}: expected {{"input": N, "output": N}} (prices per million tokens)')
        return None
    amounts = []
    for key in ("input", "output"):
        amount = value.get(key)
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or not 0 <= amount <= MAX_PRICE:
            problems.append(f"{where}.{key}: expected a price per million tokens from 0 to {MAX_PRICE}")
            return None
        amounts.append(float(amount))
    return Price(*amounts)
