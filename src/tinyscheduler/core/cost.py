"""What a run cost: its tokens priced by the model goose reported, from the operator's price table.

Pure: the table comes in as data (config.prices reads the file). A model is found by its exact name
first, then by the most specific pattern (`claude-sonnet-4*`), then by `*`, the fallback; a run whose
model has no price, or whose input or output tokens goose did not report, has no cost (None), which
is not a cost of 0.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from tinyscheduler.core.outcomes import Usage

PER = 1_000_000


@dataclass(frozen=True)
class Price:
    """Prices per million tokens, in the table's currency."""

    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class PriceTable:
    #: (model name or pattern, its price), in the order of the file.
    entries: tuple[tuple[str, Price], ...] = ()
    currency: str = ""

    def price_of(self, model: str | None) -> Price | None:
        if model is None:
            return dict(self.entries).get("*")
        exact = dict(self.entries).get(model)
        if exact is not None:
            return exact
        # The longest pattern is the most specific: `claude-sonnet-4*` before `claude-*` before `*`.
        patterns = sorted((p for p in self.entries if fnmatch.fnmatchcase(model, p[0])), key=lambda p: -len(p[0]))
        return patterns[0][1] if patterns else None


def format_cost(cost: float | None, currency: str = "") -> str:
    """A cost as a person reads it: up to 6 decimals, no trailing zeros, its currency; "-" when unknown."""
    if cost is None:
        return "-"
    amount = f"{cost:.6f}".rstrip("0").rstrip(".")
    return f"{amount} {currency}".strip()


def run_cost(usage: Usage, table: PriceTable) -> float | None:
    """The cost of a run's tokens, or None when its model has no price or its tokens are unknown."""
    price = table.price_of(usage.model)
    if price is None or usage.input_tokens is None or usage.output_tokens is None:
        return None
    cost = (usage.input_tokens * price.input_per_million + usage.output_tokens * price.output_per_million) / PER
    return round(cost, 6)
