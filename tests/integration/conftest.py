"""Fixtures for tests that run real parts: the fake TinyTask on 127.0.0.1, a base folder, daemons, etcd.

Whatever a test starts is stopped afterwards, also when the test fails.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from etcd_harness import ETCD, EtcdCluster, Hosts
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


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """A 3-member etcd cluster on loopback ports, stopped at the end whatever happens."""
    if not os.path.exists(ETCD):
        why = "etcd is not installed (Debian: apt-get install etcd-server; .ci/run installs it)"
        if os.environ.get("TESTS_REQUIRE_ETCD"):  # .ci/run: never skipped silently in CI
            pytest.fail(why)
        pytest.skip(why)
    cluster = EtcdCluster(tmp_path / "etcd")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def hosts(tmp_path: Path, fake: FakeTinyTask, etcd_cluster: EtcdCluster) -> Iterator[Hosts]:
    """Daemons of several hosts against `fake` and `etcd_cluster`; all stopped at the end."""
    world = Hosts(tmp_path / "hosts", fake.url, etcd_cluster.endpoints)
    try:
        yield world
    finally:
        world.stop()
