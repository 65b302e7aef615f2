"""Lease files on a real file system and liveness against real processes: atomic writes, modes, the
original schema, quarantine of everything that is not a lease, PID reuse, reboots and zombies."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from tinyscheduler.adapters import files as files_module
from tinyscheduler.adapters.files import write_json_atomic
from tinyscheduler.adapters.leasestore import LeaseScan, LeaseStore
from tinyscheduler.adapters.procfs import Tagged, current_boot_id, probe, process_start_ticks, processes_tagged
from tinyscheduler.core.leases import (
    MAX_LEASE_BYTES,
    Lease,
    LeaseFormatError,
    LeaseState,
    Liveness,
    lease_from_json,
)

STARTED = datetime(2026, 11, 26, 6, 0, 0, tzinfo=UTC)
BEAT = datetime(2026, 11, 26, 6, 5, 0, tzinfo=UTC)


def make_lease(task_id: int = 7, **changes: Any) -> Lease:
    base = Lease(
        task_id=task_id,
        agent="dev-1",
        pid=1234,
        recipe="dev-1.yaml",
        started_at=STARTED,
        heartbeat=BEAT,
        host="host-a",
        state=LeaseState.RUNNING,
        pgid=1234,
        boot_id="boot-1",
        start_ticks=98765,
        owner="instance-1",
        attempt=2,
        log_path="/var/log/tinyscheduler/task_7.log",
    )
    return base.with_changes(**changes)


@pytest.fixture
def store(tmp_path: Path) -> LeaseStore:
    s = LeaseStore(tmp_path / "state" / "running", tmp_path / "state" / "quarantine")
    s.ensure()
    return s


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- writing ---------------------------------------------------------------------------------------


def test_write_then_read_round_trips(store: LeaseStore) -> None:
    lease = make_lease()
    store.write(lease)
    assert store.read(7) == lease
    assert store.scan().leases == (lease,)
    data = json.loads(store.path(7).read_text())
    assert data["started_at"] == "2026-11-26T06:00:00.000Z"
    assert data["state"] == "running"


def test_lease_file_is_0600_and_folder_0700(tmp_path: Path) -> None:
    running = tmp_path / "running"
    running.mkdir(mode=0o755)
    os.chmod(running, 0o755)
    s = LeaseStore(running, tmp_path / "quarantine")
    s.ensure()  # tightens a folder that already existed
    assert mode(running) == 0o700
    old_umask = os.umask(0o000)  # a permissive umask must not leak into lease files
    try:
        s.write(make_lease())
    finally:
        os.umask(old_umask)
    assert mode(s.path(7)) == 0o600
    s.write(make_lease(heartbeat=STARTED))  # replacing keeps the mode
    assert mode(s.path(7)) == 0o600


def test_ensure_creates_missing_parents(tmp_path: Path) -> None:
    s = LeaseStore(tmp_path / "a" / "b" / "running", tmp_path / "q")
    s.ensure()
    assert s.running_dir.is_dir() and mode(s.running_dir) == 0o700


def test_concurrent_reader_never_sees_a_torn_file(store: LeaseStore) -> None:
    # Two versions of different sizes (~200 KiB and ~20 bytes of padding) make a torn or
    # half-written file obvious; the reader hammers the path while the writer replaces it.
    big = make_lease(log_path="x" * 200_000)
    small = make_lease(log_path="y")
    expected = {json.dumps(big.to_json(), sort_keys=True), json.dumps(small.to_json(), sort_keys=True)}
    store.write(small)
    done = threading.Event()
    seen: list[str] = []
    problems: list[str] = []

    def reader() -> None:
        while not done.is_set() or len(seen) < 50:
            raw = store.path(7).read_bytes()  # never FileNotFoundError: os.replace is atomic
            try:
                seen.append(json.dumps(json.loads(raw), sort_keys=True))
            except ValueError as exc:
                problems.append(f"{len(raw)} bytes: {exc}")
            if seen and seen[-1] not in expected:
                problems.append("unexpected content")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(150):
            store.write(big if i % 2 else small)
    finally:
        done.set()
        thread.join(timeout=60)
    assert not thread.is_alive()
    assert problems == []
    assert len(seen) >= 50
    # No temp file left behind: the rest are spares, kept for the next writes (adapters.spares).
    assert [n for n in os.listdir(store.running_dir) if not n.startswith(".spare.")] == ["task_7.json"]
    assert store.spares.count() == len(os.listdir(store.running_dir)) - 1


def test_failed_write_leaves_the_old_file_and_no_temp_file(store: LeaseStore) -> None:
    store.write(make_lease())
    before = store.path(7).read_bytes()
    with pytest.raises(TypeError):
        write_json_atomic(store.path(7), {"not json": object()})
    assert store.path(7).read_bytes() == before
    assert os.listdir(store.running_dir) == ["task_7.json"]


def test_failed_replace_removes_the_temp_file(store: LeaseStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files_module.os, "rename", refuse)  # a first write renames its file into place
    with pytest.raises(OSError, match="No space"):
        store.write(make_lease())
    monkeypatch.undo()
    assert os.listdir(store.running_dir) == []


def test_remove_is_idempotent(store: LeaseStore) -> None:
    store.write(make_lease())
    store.remove(7)
    store.remove(7)
    assert store.read(7) is None
    # The removed file is kept as a spare for the next lease (adapters.spares), hidden from scans.
    assert [name.startswith(".spare.") for name in os.listdir(store.running_dir)] == [True]
    assert store.scan() == LeaseScan((), ())


# --- reading: schemas ------------------------------------------------------------------------------

ORIGINAL = {
    "task_id": 12,
    "agent": "dev-1",
    "pid": 4321,
    "recipe": "dev-1.yaml",
    "started_at": "2026-11-26T06:00:00.123456+00:00",
    "heartbeat": "2026-11-26T06:05:00Z",
    "host": "old-host",
    "state": "running",
}


def test_a_heartbeat_touches_the_file_and_every_reader_sees_it(store: LeaseStore) -> None:
    lease = make_lease()
    store.write(lease)
    inode, content = store.path(7).stat().st_ino, store.path(7).read_text()
    later = lease.heartbeat + timedelta(seconds=42, microseconds=123456)

    store.touch(7, later)

    assert (store.path(7).stat().st_ino, store.path(7).read_text()) == (inode, content), "not rewritten"
    assert store.read(7) == lease.with_changes(heartbeat=later)
    assert store.scan().leases == (lease.with_changes(heartbeat=later),)
    store.write(lease.with_changes(state=LeaseState.STOPPING))  # a rewrite says its own heartbeat
    assert store.read(7).heartbeat == lease.heartbeat


def test_a_scan_does_not_read_the_leases_the_caller_holds(store: LeaseStore) -> None:
    mine, other = make_lease(task_id=7), make_lease(task_id=8)
    store.write(mine)
    store.write(other)
    store.path(7).write_text("{ not read")

    scan = store.scan(known={7: mine})

    assert scan.leases == (mine, other) and scan.quarantined == ()


def test_original_schema_lease_is_readable(store: LeaseStore) -> None:
    store.path(12).write_text(json.dumps(ORIGINAL))
    os.utime(store.path(12), (0, 0))  # written long before its last heartbeat field says
    scan = store.scan()
    assert scan.quarantined == ()
    (lease,) = scan.leases
    assert (lease.task_id, lease.agent, lease.pid, lease.recipe, lease.host) == (
        12,
        "dev-1",
        4321,
        "dev-1.yaml",
        "old-host",
    )
    assert lease.state is LeaseState.RUNNING
    assert lease.started_at == datetime(2026, 11, 26, 6, 0, 0, 123456, tzinfo=UTC)
    assert lease.heartbeat == BEAT
    # the fields the original never wrote get their "unknown" values
    assert (lease.pgid, lease.boot_id, lease.start_ticks, lease.owner, lease.attempt, lease.log_path) == (
        None,
        None,
        None,
        None,
        1,
        None,
    )


def test_epoch_and_naive_timestamps_are_accepted() -> None:
    lease = lease_from_json(ORIGINAL | {"started_at": 1795672800, "heartbeat": 1795673100.5})
    assert lease.started_at == STARTED
    assert lease.heartbeat == datetime(2026, 11, 26, 6, 5, 0, 500000, tzinfo=UTC)
    naive = lease_from_json(ORIGINAL | {"started_at": "2026-11-26T06:00:00", "heartbeat": None})
    assert naive.started_at == STARTED
    assert naive.heartbeat == STARTED  # no heartbeat yet: the start counts as one


def test_minimal_lease_defaults() -> None:
    lease = lease_from_json({"task_id": 1, "agent": "a", "started_at": "2026-11-26T06:00:00Z"}, "thishost")
    assert lease.pid is None and lease.recipe == "" and lease.state is LeaseState.RUNNING
    assert lease.host == "thishost"  # an original-schema lease was written on the host reading it
    # Without a host to stand in, the host is empty text, not None (`Lease.host` is a str).
    assert lease_from_json({"task_id": 1, "agent": "a", "started_at": "2026-11-26T06:00:00Z"}).host == ""


def test_original_lease_with_the_task_id_as_a_string_is_read() -> None:
    lease = lease_from_json(ORIGINAL | {"task_id": "42"})
    assert lease.task_id == 42


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"task_id": "twelve"}, "task_id"),
        ({"task_id": "-12"}, "task_id"),
        ({"task_id": True}, "task_id"),
        ({"agent": None}, "agent"),
        ({"agent": 5}, "agent"),
        ({"pid": "4321"}, "pid"),
        ({"pid": 4321.0}, "pid"),
        ({"state": "paused"}, "state"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"started_at": None}, "started_at"),
        ({"started_at": True}, "started_at"),
        ({"heartbeat": [1]}, "heartbeat"),
        ({"started_at": 1e300}, "started_at"),  # past year 9999
        ({"started_at": -1e20}, "started_at"),
        ({"heartbeat": 10**30}, "heartbeat"),
    ],
)
def test_bad_fields_name_the_field(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(LeaseFormatError, match=f"field {field}"):
        lease_from_json(ORIGINAL | changes)


@pytest.mark.parametrize("data", [[1, 2], "lease", 3, None])
def test_non_object_is_a_format_error(data: Any) -> None:
    with pytest.raises(LeaseFormatError, match="expected a JSON object"):
        lease_from_json(data)


# --- quarantine ------------------------------------------------------------------------------------


def _good(store: LeaseStore) -> None:
    store.write(make_lease(1))


BAD_FILES: list[tuple[str, str, bytes, str]] = [
    # id, file name, content, words in the reason
    ("truncated", "task_5.json", json.dumps(ORIGINAL | {"task_id": 5}).encode()[:40], "not JSON"),
    ("not json", "task_5.json", b"hello, world\n", "not JSON"),
    ("empty", "task_5.json", b"", "not JSON"),
    ("not utf-8", "task_5.json", b"\xff\xfe\xfa{\x00", "not JSON"),
    ("not an object", "task_5.json", b"[1, 2, 3]", "expected a JSON object"),
    ("missing field", "task_5.json", json.dumps({"task_id": 5, "started_at": 0}).encode(), "field agent"),
    (
        "over 1 MiB",
        "task_5.json",
        json.dumps(ORIGINAL | {"task_id": 5, "recipe": "r" * MAX_LEASE_BYTES}).encode(),
        "over 1048576 bytes",
    ),
    ("deeply nested", "task_5.json", b"[" * 200_000 + b"]" * 200_000, "not JSON"),
    ("wrong name", "task_abc.json", json.dumps(ORIGINAL).encode(), "file name"),
    ("stray file", "notes.txt", b"remember the milk", "file name"),
    ("mismatched id", "task_5.json", json.dumps(ORIGINAL | {"task_id": 6}).encode(), "does not match"),
    (
        "huge epoch",
        "task_5.json",
        json.dumps(ORIGINAL | {"task_id": 5, "started_at": 1e300}).encode(),
        "field started_at",
    ),
]


@pytest.mark.parametrize(("name", "content", "words"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_file_is_quarantined_with_its_content_and_a_reason(
    store: LeaseStore, name: str, content: bytes, words: str
) -> None:
    _good(store)
    bad = store.running_dir / name
    bad.write_bytes(content)
    scan = store.scan()
    assert [lease.task_id for lease in scan.leases] == [1]  # the good lease is unaffected
    (record,) = scan.quarantined
    assert record.original == bad
    assert words in record.reason
    assert not bad.exists()
    assert record.moved_to is not None and record.moved_to.parent == store.quarantine_dir
    assert record.moved_to.read_bytes() == content  # preserved byte for byte
    reason_file = record.moved_to.parent / f"{record.moved_to.name}.reason"
    assert words in reason_file.read_text() and str(bad) in reason_file.read_text()
    assert store.quarantined_files() == [record.moved_to]
    assert store.scan().quarantined == ()  # once moved, it is not reported again


def test_unreadable_entry_is_quarantined(store: LeaseStore) -> None:
    # root reads any file whatever its mode, so "unreadable" here is a folder with a lease's name
    (store.running_dir / "task_5.json").mkdir()
    (record,) = store.scan().quarantined
    assert "not a regular file" in record.reason
    assert record.moved_to is not None and record.moved_to.is_dir()


def test_fifo_named_like_a_lease_does_not_hang_the_scan(store: LeaseStore) -> None:
    os.mkfifo(store.running_dir / "task_5.json")  # opening it for reading would wait for a writer
    (record,) = store.scan().quarantined
    assert "regular file" in record.reason


def test_read_quarantines_a_bad_file_and_returns_none(store: LeaseStore) -> None:
    store.path(5).write_text("{")
    assert store.read(5) is None
    assert not store.path(5).exists()
    assert len(store.quarantined_files()) == 1
    assert store.read(6) is None  # absent: nothing to quarantine
    assert len(store.quarantined_files()) == 1


def test_same_file_quarantined_twice_keeps_both(store: LeaseStore) -> None:
    store.path(5).write_text("first")
    store.scan()
    store.path(5).write_text("second")
    store.scan()
    contents = sorted(p.read_text() for p in store.quarantined_files())
    assert contents == ["first", "second"]


def test_quarantine_folder_is_private(store: LeaseStore) -> None:
    store.path(5).write_text("{")
    store.scan()
    assert mode(store.quarantine_dir) == 0o700


def test_read_only_store_reports_but_moves_nothing(store: LeaseStore) -> None:
    store.path(5).write_text("{")
    ro = LeaseStore(store.running_dir, store.quarantine_dir, read_only=True)
    (record,) = ro.scan().quarantined
    assert record.moved_to is None and "not JSON" in record.reason
    assert store.path(5).read_text() == "{"
    assert not store.quarantine_dir.exists()


def test_scan_ignores_temp_files_of_a_write_in_progress(store: LeaseStore) -> None:
    (store.running_dir / ".task_5.json.abc.tmp").write_text("{half")
    assert store.scan() == LeaseScan((), ())
    assert (store.running_dir / ".task_5.json.abc.tmp").exists()


def test_scan_of_a_missing_folder_is_empty(tmp_path: Path) -> None:
    scan = LeaseStore(tmp_path / "nope", tmp_path / "q").scan()
    assert scan.leases == () and scan.quarantined == ()


def test_scan_never_raises_even_when_quarantine_is_impossible(tmp_path: Path) -> None:
    blocker = tmp_path / "quarantine"
    blocker.write_text("a file where the quarantine folder should be")
    s = LeaseStore(tmp_path / "running", blocker)
    s.ensure()
    s.write(make_lease(1))
    s.path(5).write_text("{")
    scan = s.scan()
    assert [lease.task_id for lease in scan.leases] == [1]
    (record,) = scan.quarantined
    assert record.moved_to is None
    assert "not JSON" in record.reason and "could not quarantine" in record.reason
    assert s.path(5).read_text() == "{"  # left where it was, never lost


def test_scan_sorts_and_returns_every_good_lease(store: LeaseStore) -> None:
    for i in (30, 4, 100):
        store.write(make_lease(i))
    assert sorted(lease.task_id for lease in store.scan().leases) == [4, 30, 100]


# --- liveness --------------------------------------------------------------------------------------


@pytest.fixture
def child() -> Any:
    """A real child process that runs until its stdin closes (no sleeps, no timing)."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def lease_for(pid: int, **changes: Any) -> Lease:
    return make_lease(pid=pid, pgid=pid, boot_id=current_boot_id(), start_ticks=process_start_ticks(pid)).with_changes(
        **changes
    )


def test_probe_alive_then_dead_after_exit_and_reap(child: subprocess.Popen[bytes]) -> None:
    lease = lease_for(child.pid)
    assert lease.start_ticks is not None
    assert probe(lease, current_boot_id()) is Liveness.ALIVE
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=30) == 0
    assert probe(lease, current_boot_id()) is Liveness.DEAD


def test_zombie_is_dead(child: subprocess.Popen[bytes]) -> None:
    lease = lease_for(child.pid)
    assert child.stdin is not None
    child.stdin.close()
    # wait for the exit without reaping it: the child stays a zombie
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert psutil.Process(child.pid).status() == psutil.STATUS_ZOMBIE
    assert process_start_ticks(child.pid) is None
    assert probe(lease, current_boot_id()) is Liveness.DEAD


def test_pid_reuse_is_detected_by_start_ticks(child: subprocess.Popen[bytes]) -> None:
    lease = lease_for(child.pid)
    assert lease.start_ticks is not None
    reused = lease.with_changes(start_ticks=lease.start_ticks - 1)  # the run's process started earlier
    assert probe(reused, current_boot_id()) is Liveness.REUSED


def test_original_lease_without_start_ticks_trusts_the_pid(child: subprocess.Popen[bytes]) -> None:
    lease = lease_for(child.pid, start_ticks=None, boot_id=None)
    assert probe(lease, current_boot_id()) is Liveness.ALIVE


def test_other_boot_id_is_dead_even_if_the_pid_is_alive(child: subprocess.Popen[bytes]) -> None:
    lease = lease_for(child.pid, boot_id="0000-another-boot")
    assert probe(lease, current_boot_id()) is Liveness.DEAD
    # an unknown current boot id (no /proc value) falls back to the process check
    assert probe(lease, None) is Liveness.ALIVE


def test_a_run_is_found_by_the_lease_path_in_its_environment_until_it_exits(tmp_path: Path) -> None:
    """How a run whose pid never reached its lease is found: only the exact lease path counts."""
    lease_path = tmp_path / "running" / "task_7.json"
    reader = [sys.executable, "-c", "import sys; sys.stdin.read()"]
    run = subprocess.Popen(reader, stdin=subprocess.PIPE, env={**os.environ, "TINYSCHEDULER_LEASE": str(lease_path)})
    longer = subprocess.Popen(
        reader, stdin=subprocess.PIPE, env={**os.environ, "TINYSCHEDULER_LEASE": f"{lease_path}.tmp"}
    )
    try:
        assert processes_tagged(lease_path) == [Tagged(run.pid, process_start_ticks(run.pid) or 0, keeper=False)]
        assert run.stdin is not None
        run.stdin.close()
        os.waitid(os.P_PID, run.pid, os.WEXITED | os.WNOWAIT)  # a zombie: its run has ended
        assert processes_tagged(lease_path) == []
    finally:
        for proc in (run, longer):
            proc.kill()
            proc.wait()


def test_no_pid_means_no_process() -> None:
    assert probe(make_lease(pid=None), current_boot_id()) is Liveness.NO_PROCESS


def test_nonexistent_pid_is_dead() -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert probe(make_lease(pid=pid_max + 1, boot_id=None), current_boot_id()) is Liveness.DEAD


def test_start_ticks_survive_a_command_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    odd = tmp_path / "x) (y z"
    odd.symlink_to(sys.executable)
    proc = subprocess.Popen([str(odd), "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert ")" in Path(f"/proc/{proc.pid}/stat").read_text().split(" ", 1)[1]
        ticks = process_start_ticks(proc.pid)
        assert ticks is not None
        clock = os.sysconf("SC_CLK_TCK")
        assert abs(psutil.boot_time() + ticks / clock - psutil.Process(proc.pid).create_time()) < 2
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)


def test_current_boot_id_is_this_boot() -> None:
    boot = current_boot_id()
    assert boot == Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def test_only_a_leases_first_write_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first write must outlive a power cut; heartbeats and other rewrites need not wait for the disk."""
    store = LeaseStore(tmp_path / "running", tmp_path / "quarantine")
    store.ensure()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    store.write(make_lease(1))
    assert len(synced) == 2, "the file and its folder"
    store.write(make_lease(1), durable=False)
    assert len(synced) == 2
    assert lease_from_json(json.loads(store.path(1).read_text())).task_id == 1


def test_a_runs_lease_writes_reuse_files_instead_of_creating_them(store: LeaseStore) -> None:
    store.spares.rest_sec = 0  # the daemon waits a second before reusing a file; not needed here
    seen: set[int] = set()
    for task_id in range(1, 31):
        lease = make_lease(task_id=task_id)
        store.write(lease)
        store.write(lease.with_changes(state=LeaseState.RUNNING, pid=123))
        store.write(lease.with_changes(state=LeaseState.FINISHING, pid=123))
        seen |= {entry.inode() for entry in os.scandir(store.running_dir)}
        assert store.read(task_id) == lease.with_changes(state=LeaseState.FINISHING, pid=123)
        store.remove(task_id)
    assert len(seen) <= 3, f"{len(seen)} files for 30 runs (a new file per write would be 90)"


def test_with_changes_is_a_new_lease_with_those_fields_and_refuses_unknown_ones() -> None:
    lease = make_lease()
    running = lease.with_changes(state=LeaseState.RUNNING, pid=99)
    assert running == dataclasses.replace(lease, state=LeaseState.RUNNING, pid=99)
    assert (lease.state, lease.pid) != (LeaseState.RUNNING, 99), "the original is unchanged"
    with pytest.raises(TypeError, match="no field colour"):
        lease.with_changes(colour="red")
