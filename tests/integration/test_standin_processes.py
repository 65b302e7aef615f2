"""The stand-in goose as a process among processes: stop signals during its start-up, what its
child modes leave behind (and that test cleanup finds it), the per-task lock that reveals two runs
of one task at once, output at a given rate, and a start-up that imports only what it needs.
Real processes, signals, sockets and files."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

import tinyscheduler
from tinyscheduler.testing import standin_goose
from tinyscheduler.testing.fake import FakeTinyTask

from harness import STANDIN, kill_everything, processes_of, wait_for


class Runs:
    """Stand-ins started under `root`, their environment tagged with a lease path under it (as the
    daemon tags its runs), so kill_everything(root) finds whatever they leave behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.record = root / "record.jsonl"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TINYSCHEDULER_", "TINYTASK_"))},
            "TINYSCHEDULER_STANDIN_RECORD": str(self.record),
            "TINYSCHEDULER_LEASE": str(root / "state" / "running" / "task.json"),
        }
        self.started: list[subprocess.Popen[bytes]] = []

    def recipe(self, **standin: Any) -> str:
        path = self.root / f"recipe-{len(list(self.root.glob('recipe-*')))}.yaml"
        path.write_text(yaml.safe_dump({"title": "t", "description": "d", "prompt": "p", "standin": standin}))
        return str(path)

    def start(self, recipe: str, task_id: int = 1, log: Path | None = None, **env: str) -> subprocess.Popen[bytes]:
        sink = open(log or self.root / f"run-{len(self.started)}.log", "ab")  # noqa: SIM115 - closed below
        with sink:
            process = subprocess.Popen(
                [STANDIN, "run", "--recipe", recipe, "--params", f"task_id={task_id}", "--params", "agent=dev"],
                env={**self.env, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # as the daemon starts goose
            )
        self.started.append(process)
        return process

    def records(self, event: str | None = None) -> list[dict[str, Any]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [r for r in map(json.loads, lines) if event is None or r["event"] == event]


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    started = Runs(tmp_path)
    yield started
    kill_everything(tmp_path)
    for process in started.started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class SlowTinyTask:
    """Accepts the stand-in's request for its task's tags and answers only once `release` is set:
    while it waits, the stand-in is certainly in its start-up, past the interpreter's own."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags
        self.asked = threading.Event()
        self.release = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._answer, daemon=True)
        self.thread.start()

    def _answer(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            request = b""
            while b"\r\n\r\n" not in request:
                request += connection.recv(4096)
            self.asked.set()
            self.release.wait(30)
            body = json.dumps({"id": 1, "tags": self.tags}).encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            connection.sendall(head.encode() + body)

    def __enter__(self) -> SlowTinyTask:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.listener.close()
        self.thread.join(10)


def signal_bits(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")), 16)


STOPS = (1 << (signal.SIGINT - 1)) | (1 << (signal.SIGTERM - 1))


# -- stop signals during start-up ------------------------------------------------------------------


def test_sigint_during_start_up_is_handled_once_the_run_starts(runs: Runs) -> None:
    with SlowTinyTask(["standin:hang"]) as tinytask:
        process = runs.start(runs.recipe(mode="succeed"), TINYTASK_ENDPOINT=tinytask.url)
        assert tinytask.asked.wait(10), "the stand-in never asked for its task"
        process.send_signal(signal.SIGINT)
        tinytask.release.set()
        assert process.wait(10) == 1
    assert "Headless run interrupted" in (runs.root / "run-0.log").read_text()
    assert [(r["event"], r.get("exit")) for r in runs.records()] == [("start", None), ("end", 1)]


def test_sigterm_during_start_up_still_kills_it(runs: Runs) -> None:
    with SlowTinyTask(["standin:hang"]) as tinytask:
        process = runs.start(runs.recipe(mode="succeed"), TINYTASK_ENDPOINT=tinytask.url)
        assert tinytask.asked.wait(10)
        process.send_signal(signal.SIGTERM)
        tinytask.release.set()
        assert process.wait(10) == -signal.SIGTERM
    assert [r["event"] for r in runs.records()] == ["start"]


def test_a_stubborn_run_ignores_stops_that_came_during_its_start_up(runs: Runs) -> None:
    with SlowTinyTask(["standin:stubborn"]) as tinytask:
        process = runs.start(runs.recipe(mode="succeed"), TINYTASK_ENDPOINT=tinytask.url)
        assert tinytask.asked.wait(10)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        tinytask.release.set()
        # Started, the stop signals no longer blocked and none pending: they were discarded.
        wait_for(lambda: runs.records("start") and not signal_bits(process.pid, "SigBlk") & STOPS, 10, what="start")
        assert signal_bits(process.pid, "SigIgn") & STOPS == STOPS
        assert not (signal_bits(process.pid, "SigPnd") | signal_bits(process.pid, "ShdPnd")) & STOPS
        assert process.poll() is None
        os.killpg(process.pid, signal.SIGKILL)
        assert process.wait(10) == -signal.SIGKILL


# -- processes left behind ---------------------------------------------------------------------------


def left_behind(runs: Runs, mode: str, log: Path | None = None) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    process = runs.start(runs.recipe(mode=mode, linger=120), task_id=5, log=log)
    assert process.wait(10) == 0, "goose itself ends well"
    (child,) = runs.records("child")
    assert (child["kind"], child["pid"], child["task_id"]) == (mode, process.pid, 5)
    return process, psutil.Process(child["child"])


def test_setsid_child_lives_on_in_a_session_of_its_own(runs: Runs) -> None:
    _, child = left_behind(runs, "setsid-child")
    assert child.is_running() and os.getsid(child.pid) == child.pid  # goose's session was goose.pid
    assert child.environ()["TINYSCHEDULER_LEASE"] == runs.env["TINYSCHEDULER_LEASE"]
    assert [p.pid for p in processes_of(runs.root)] == [child.pid]


def test_double_fork_leaves_a_grandchild_re_parented_away(runs: Runs) -> None:
    goose, grandchild = left_behind(runs, "double-fork")
    assert grandchild.is_running() and grandchild.ppid() != goose.pid
    assert os.getsid(grandchild.pid) not in (goose.pid, grandchild.pid)  # the middle process's session
    assert [p.pid for p in processes_of(runs.root)] == [grandchild.pid]


def test_background_child_stays_in_goose_s_process_group(runs: Runs) -> None:
    goose, child = left_behind(runs, "background-child")
    assert child.is_running() and os.getpgid(child.pid) == goose.pid
    os.killpg(goose.pid, signal.SIGKILL)  # what a stop of goose's group does to it
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10, what="the child's end")


def test_escaped_writer_keeps_writing_to_the_run_log_after_goose_exits(runs: Runs) -> None:
    log = runs.root / "escaped.log"
    _, writer = left_behind(runs, "escaped-writer", log=log)
    assert os.getsid(writer.pid) == writer.pid
    size = log.stat().st_size
    wait_for(lambda: log.stat().st_size > size, 10, what="more output after goose's exit")
    assert f"escaped writer {writer.pid}" in log.read_text()
    kill_everything(runs.root)
    wait_for(lambda: not processes_of(runs.root), 10, what="cleanup to find and kill the writer")


# -- the per-task lock -------------------------------------------------------------------------------


def test_a_second_run_of_a_task_in_flight_is_recorded_as_an_overlap(runs: Runs) -> None:
    locks = {"TINYSCHEDULER_STANDIN_LOCK_DIR": str(runs.root / "locks")}
    first = runs.start(runs.recipe(mode="hang"), task_id=7, **locks)
    wait_for(lambda: runs.records("start"), 10, what="the first run")
    assert runs.start(runs.recipe(mode="succeed"), task_id=7, **locks).wait(10) == 0
    assert runs.start(runs.recipe(mode="succeed"), task_id=8, **locks).wait(10) == 0  # another task
    (overlap,) = runs.records("overlap")
    assert (overlap["task_id"], overlap["holder"]) == (7, first.pid) and overlap["pid"] != first.pid

    first.send_signal(signal.SIGINT)
    assert first.wait(10) == 1
    assert runs.start(runs.recipe(mode="succeed"), task_id=7, **locks).wait(10) == 0
    assert len(runs.records("overlap")) == 1, "the lock went with the run that held it"


def test_a_process_left_behind_does_not_hold_the_task_lock(runs: Runs) -> None:
    locks = {"TINYSCHEDULER_STANDIN_LOCK_DIR": str(runs.root / "locks")}
    assert runs.start(runs.recipe(mode="setsid-child", linger=120), task_id=3, **locks).wait(10) == 0
    (child,) = runs.records("child")
    assert psutil.pid_exists(child["child"])
    assert runs.start(runs.recipe(mode="succeed"), task_id=3, **locks).wait(10) == 0
    assert runs.records("overlap") == []


# -- output rate -------------------------------------------------------------------------------------


def test_flood_rate_writes_at_most_the_rate_asked_for(runs: Runs) -> None:
    log = runs.root / "flood.log"
    began = time.monotonic()
    process = runs.start(runs.recipe(mode="flood-rate", rate=20, flood_seconds=0.5), log=log)
    assert process.wait(30) == 0
    assert time.monotonic() - began >= 0.5
    size = log.stat().st_size
    assert 2 * 1024 * 1024 < size <= 20 * 1024 * 1024 * 0.5 + 4096
    assert "flood-rate: end of output" in log.read_text()[-300:]


# -- start-up ----------------------------------------------------------------------------------------


def test_start_up_imports_only_what_it_needs(runs: Runs, fake: FakeTinyTask) -> None:
    task_id = fake.create_task("t", assigned_to="dev", tags=["standin:succeed"])["id"]
    recipe = runs.recipe(mode="fail")
    endpoint = {"TINYTASK_ENDPOINT": fake.url}
    assert runs.start(recipe, task_id, **endpoint).wait(10) == 0  # the first run of a recipe parses it
    log = runs.root / "importtime.log"
    # Measured as on a host: a coverage run of the suite would load its own modules into the stand-in.
    unmeasured = {"COVERAGE_PROCESS_CONFIG": "", "COVERAGE_PROCESS_START": ""}
    assert runs.start(recipe, task_id, log=log, PYTHONPROFILEIMPORTTIME="1", **endpoint, **unmeasured).wait(10) == 0
    imported = {line.split("|")[-1].strip() for line in log.read_text().splitlines() if line.startswith("import time:")}
    ours = {name for name in imported if name.startswith("tinyscheduler")}
    assert ours <= {
        "tinyscheduler",
        "tinyscheduler.core",
        "tinyscheduler.core.standin",  # its marker only: a module that imports nothing
        "tinyscheduler.testing",
        "tinyscheduler.testing.standin_run",
        "tinyscheduler.testing.standin_recipe",
    }
    slow = {"yaml", "typing", "dataclasses", "pathlib", "shutil", "urllib.request", "http.client", "tempfile"}
    assert imported.isdisjoint(slow), imported & slow


@pytest.mark.parametrize(
    "init",
    [
        tinyscheduler.__file__,
        standin_goose.__file__.replace("standin_goose", "__init__"),
        standin_goose.__file__.replace("testing/standin_goose", "core/__init__"),
        standin_goose.__file__.replace("testing/standin_goose", "core/standin"),
    ],
)
def test_the_packages_the_stand_in_passes_through_import_nothing(init: str) -> None:
    tree = ast.parse(Path(init).read_text())
    assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def test_the_recipe_is_read_again_once_it_changes(runs: Runs) -> None:
    recipe = runs.recipe(mode="succeed")
    assert runs.start(recipe).wait(10) == 0
    Path(recipe).write_text(
        yaml.safe_dump({"title": "t", "description": "d", "prompt": "p", "standin": {"mode": "fail"}})
    )
    assert runs.start(recipe).wait(10) == 1
    Path(recipe).write_text("title: [unclosed\n")
    assert runs.start(recipe).wait(10) == 1
    assert "is not valid YAML" in (runs.root / "run-2.log").read_text()
