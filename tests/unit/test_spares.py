"""Spare files for atomic rewrites (adapters.spares): no inode created or freed per lease write,
never a torn or foreign content for a reader, and a safe fallback where files cannot be swapped."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tinyscheduler.adapters import spares as spares_module
from tinyscheduler.adapters.files import json_text
from tinyscheduler.adapters.spares import SpareFiles

RUNS = 40


def inodes(folder: Path) -> set[int]:
    return {entry.inode() for entry in os.scandir(folder)}


def run_like(pool: SpareFiles, target: Path, n: int) -> None:
    """A lease's life: written three times (starting, running, finishing), then removed."""
    for state in ("starting", "running", "finishing"):
        pool.rewrite(target, f'{{"task": {n}, "state": "{state}"}}\n'.encode(), durable=state == "starting")
        assert json.loads(target.read_bytes()) == {"task": n, "state": state}
    pool.retire(target)
    assert not target.exists()


def test_rested_spares_are_reused_so_runs_create_no_new_files(tmp_path: Path) -> None:
    pool = SpareFiles(tmp_path, rest_sec=0)
    seen: set[int] = set()
    for n in range(RUNS):
        run_like(pool, tmp_path / f"task_{n}.json", n)
        seen |= inodes(tmp_path)
    # Written the usual way (a temp file renamed over the target) these runs make 3 new files each.
    assert len(seen) <= 3, f"{len(seen)} distinct files for {RUNS} runs"
    assert all(name.startswith(".spare.") for name in os.listdir(tmp_path))


def test_a_file_that_just_left_its_name_is_not_written_again_while_it_rests(tmp_path: Path) -> None:
    pool = SpareFiles(tmp_path, rest_sec=3600)
    target = tmp_path / "task_7.json"
    pool.rewrite(target, b'{"v": 1}\n', durable=True)
    with open(target, "rb") as reader:  # a reader that opened the lease just before the swap
        pool.rewrite(target, b'{"v": 2}\n', durable=False)
        pool.rewrite(target, b'{"v": 3, "longer": true}\n', durable=False)
        pool.retire(target)
        pool.rewrite(tmp_path / "task_8.json", b'{"other": 8}\n', durable=False)
        assert reader.read() == b'{"v": 1}\n'
    assert pool.count() == 3


def test_where_files_cannot_be_swapped_a_rewrite_still_replaces_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spares_module, "_renameat2", lambda: None)
    pool = SpareFiles(tmp_path, rest_sec=0)
    for n in range(5):
        run_like(pool, tmp_path / "task_1.json", n)
    assert not pool.can_exchange
    assert all(name.startswith(".spare.") for name in os.listdir(tmp_path))


@pytest.mark.parametrize("plant", ["symlink", "fifo", "folder"])
def test_a_spare_replaced_by_something_else_is_never_written_through(tmp_path: Path, plant: str) -> None:
    pool = SpareFiles(tmp_path, rest_sec=0)
    target = tmp_path / "task_1.json"
    pool.rewrite(target, b"{}\n", durable=False)
    pool.retire(target)
    (spare,) = os.listdir(tmp_path)
    os.unlink(tmp_path / spare)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("precious\n")
    if plant == "symlink":
        os.symlink(victim, tmp_path / spare)
    elif plant == "fifo":
        os.mkfifo(tmp_path / spare)
    else:
        os.mkdir(tmp_path / spare)

    pool.rewrite(target, b'{"v": 2}\n', durable=True)

    assert target.read_bytes() == b'{"v": 2}\n'
    assert victim.read_text() == "precious\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_spares_left_by_an_earlier_daemon_are_taken_over(tmp_path: Path) -> None:
    earlier = SpareFiles(tmp_path, rest_sec=0)
    for n in range(3):
        earlier.rewrite(tmp_path / f"task_{n}.json", b"{}\n", durable=False)
    for n in range(3):
        earlier.retire(tmp_path / f"task_{n}.json")
    left = inodes(tmp_path)

    later = SpareFiles(tmp_path, rest_sec=60)
    assert later.adopt() == 3
    for n in range(3):
        later.rewrite(tmp_path / f"task_{n}.json", b"{}\n", durable=False)
    assert inodes(tmp_path) == left


def test_no_more_spares_are_kept_than_asked(tmp_path: Path) -> None:
    pool = SpareFiles(tmp_path, rest_sec=3600, keep=2)
    for n in range(6):
        pool.rewrite(tmp_path / f"task_{n}.json", b"{}\n", durable=False)
    for n in range(6):
        pool.retire(tmp_path / f"task_{n}.json")
    assert pool.count() == 2
    assert len(os.listdir(tmp_path)) == 2


def test_a_failed_write_leaves_the_target_as_it_was_and_no_file_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = SpareFiles(tmp_path, rest_sec=0)
    target = tmp_path / "task_1.json"
    pool.rewrite(target, b'{"v": 1}\n', durable=False)
    before = set(os.listdir(tmp_path))

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spares_module.os, "pwrite", full)
    with pytest.raises(OSError, match="No space"):
        pool.rewrite(target, b'{"v": 2}\n', durable=False)
    monkeypatch.undo()
    assert target.read_bytes() == b'{"v": 1}\n'
    assert set(os.listdir(tmp_path)) <= before


@pytest.mark.parametrize(
    "data",
    [
        {"task_id": 7, "pid": None, "host": 'h\u00e9te "q"\n', "ratio": 0.1, "neg": -3, "ok": True, "off": False},
        {"b": 1, "a": "x"},
        {},
        {"nested": {"a": [1, 2]}, "list": [], "s": "v"},
        [1, {"a": 2}],
    ],
)
def test_json_text_is_what_the_files_always_held(data: object) -> None:
    assert json_text(data) == json.dumps(data, indent=2, sort_keys=True) + "\n"
