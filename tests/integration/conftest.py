"""Fixtures for tests that run real parts: the fake TinyTask on 127.0.0.1, a base folder, daemons.

Whatever a test starts is stopped afterwards, also when the test fails.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, kill_everything
from runbench import RunBench, open_bench


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def workspace(tmp_path: Path, fake: FakeTinyTask) -> Iterator[Workspace]:
    ws = Workspace(tmp_path, fake.url)
    yield ws
    kill_everything(tmp_path)


@pytest.fixture
def daemons(workspace: Workspace) -> Iterator[list[DaemonProcess]]:
    """Daemons a test started (append them); each is killed with its process group at the end."""
    started: list[DaemonProcess] = []
    yield started
    for daemon in started:
        daemon.kill()


@pytest.fixture
async def bench(tmp_path: Path, fake: FakeTinyTask) -> AsyncIterator[RunBench]:
    """One Goose run's surroundings: policy, lease store, attempt book, a client to the fake."""
    async with open_bench(tmp_path, fake) as run_bench:
        yield run_bench
