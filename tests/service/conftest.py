"""The service layer in-process: the real daemon parts against the in-memory TinyTask client, an
injected clock, real files under tmp_path, and the stand-in goose as real (fast) processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyscheduler.testing.memory import InMemoryTinyTask

from harness import kill_everything
from world import World


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield World(tmp_path, InMemoryTinyTask())
    kill_everything(tmp_path)
