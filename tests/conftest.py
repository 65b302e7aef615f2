"""Shared fixtures: everything real (HTTP on 127.0.0.1, processes, files), nothing left running.

Each test is marked with its layer, taken from its folder, so `-m "unit or service"` selects the
fast layer whatever paths are given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
LAYERS = ("unit", "service", "integration", "system")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        layer = item.path.relative_to(TESTS).parts[0] if item.path.is_relative_to(TESTS) else ""
        if layer in LAYERS:
            item.add_marker(layer)
