"""`tinyscheduler demo`: the real daemon on a small workload, as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from harness import wait_for


def demo_env() -> dict[str, str]:
    # The demo must not pick up the developer's settings; a stray one should not matter anyway.
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")},
        "TINYSCHEDULER_LOOP_INTERVAL_SEC": "999",
    }


def processes_mentioning(folder: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and folder in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def demo_folder(output: str) -> str:
    match = re.search(r"in (/\S*tinyscheduler-demo-[^/\s]+)", output)
    assert match, output
    return match.group(1)


@pytest.fixture
def kept() -> Iterator[list[str]]:
    folders: list[str] = []
    yield folders
    for folder in folders:
        for proc in processes_mentioning(folder):
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_runs_the_workload_to_the_end_and_leaves_nothing_running(tmp_path, kept):
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "demo", "--tasks", "8", "--keep"],
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    folder = demo_folder(result.stdout)
    kept.append(folder)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "done 0/8" in out, "plain progress lines when piped"
    assert "\x1b[" not in out, "no terminal control codes when piped"
    assert re.search(r"Finished in \S+: 7 of 8 tasks complete, 1 given up \(tagged tinyscheduler:failed\)", out)
    assert re.search(r"agent\s+queue\s+slots\s+runs\s+succeeded\s+failed\s+busy time", out)
    assert "retried after a backoff and completed" in out
    assert "3 failed attempts, then tagged tinyscheduler:failed" in out
    assert "each task started only after its blocker completed" in out
    assert processes_mentioning(folder) == []
    assert Path(folder, "state", "running").is_dir() and not list(Path(folder, "state", "running").glob("task_*"))

    # The commands the demo suggests work on what it kept.
    status = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "--base-path", folder, "status"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The demo's given-up task is a problem to status, which then exits 1 (0 means nothing is wrong).
    assert status.returncode == 1 and "not running" in status.stdout, status.stderr
    assert "gave up after 3 failed attempt(s)" in status.stdout
    logs = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "--base-path", folder, "logs", "5"],
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert logs.returncode == 0 and "attempt 3" in logs.stdout, logs.stderr


def test_ctrl_c_stops_the_demo_cleanly(tmp_path):
    out = tmp_path / "demo.out"
    with open(out, "wb") as sink:
        demo = subprocess.Popen(
            [sys.executable, "-m", "tinyscheduler", "demo"],
            cwd=tmp_path,
            env=demo_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: re.search(r"running [1-9]", out.read_text()), what="runs in flight")
        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=30) == 130
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        folder = demo_folder(out.read_text())
        for proc in processes_mentioning(folder):  # only if the demo failed to stop its runs
            proc.kill()
    text = out.read_text()
    assert "Interrupted after" in text and "Traceback" not in text, text
    assert not Path(folder).exists(), "the demo folder is removed without --keep"
    assert processes_mentioning(folder) == []


def test_too_few_tasks_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tinyscheduler", "demo", "--tasks", "2"],
        cwd=tmp_path,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "tinyscheduler: --tasks 2: expected 5 to 500 (the demo's special cases need five tasks)"
    )
    assert list(tmp_path.iterdir()) == []
