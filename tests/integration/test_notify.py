"""The daemon as systemd sees it: a real SOCK_DGRAM socket as NOTIFY_SOCKET, the daemon a subprocess."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from harness import WEDGED_DAEMON, DaemonProcess, NotifyListener, max_concurrency, wait_for


@pytest.fixture
def listener(tmp_path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify.sock")
    yield notify
    notify.close()


@pytest.fixture
def daemon_factory(workspace, listener) -> Iterator:
    started: list[DaemonProcess] = []

    def start(program: list[str] | None = None, **env: str) -> DaemonProcess:
        daemon = DaemonProcess(
            workspace,
            "run",
            "--daemon",
            env=workspace.daemon_env(NOTIFY_SOCKET=str(listener.path), **env),
            program=program,
        ).start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def test_ready_status_stopping_and_no_systemd_variables_for_goose(fake, workspace, listener, daemon_factory):
    workspace.write_registry([("dev-a", "dev", 2)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.2})
    task = fake.create_task("one", queue_name="dev")
    daemon = daemon_factory(WATCHDOG_USEC="60000000", LISTEN_FDS="0", TINYSCHEDULER_SHUTDOWN_GRACE_SEC="0")
    wait_for(lambda: "READY=1" in listener.texts(), what="READY=1")
    wait_for(lambda: fake.task(task["id"])["status"] == "complete", what="task done")
    wait_for(lambda: len(listener.statuses()) >= 2, what="STATUS after passes")
    assert re.fullmatch(r"\d+/2 slots busy, \d+ queued, \d+ blocked, last pass \d+\.\d\d s ok", listener.statuses()[-1])

    workspace.write_recipe("dev-a", {"mode": "hang"})
    hanging = fake.create_task("two", queue_name="dev")
    lease = workspace.running_dir / f"task_{hanging['id']}.json"
    pid = wait_for(lambda: lease.exists() and json.loads(lease.read_text()).get("pid"), what="a running goose")
    environ = psutil.Process(pid).environ()
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS"} & set(environ)
    assert environ["TINYSCHEDULER_TASK_ID"] == str(hanging["id"]) and environ["GOOSE_MODE"] == "auto"
    lock = workspace.base / "state" / "tinyscheduler.lock"
    assert str(lock) not in {f.path for f in psutil.Process(pid).open_files()}, "goose never holds the daemon's lock"

    daemon.signal(signal.SIGTERM)
    assert daemon.wait() == 0
    wait_for(lambda: "STOPPING=1" in listener.texts(), timeout=5, what="STOPPING=1 (the listener's thread stores it)")
    assert listener.texts().index("READY=1") < listener.texts().index("STOPPING=1")


def test_status_names_the_error_when_tinytask_is_down(workspace, listener, daemon_factory):
    workspace.tinytask_url = "http://127.0.0.1:9"
    workspace.write_registry([("dev-a", "dev", 1)])
    daemon_factory(TINYSCHEDULER_ALLOW_STANDIN="1")  # no fake to vouch for the stand-in goose
    wait_for(lambda: any("last pass failed: TinyTask" in s for s in listener.statuses()), what="error in STATUS")


def test_watchdog_pings_at_half_the_interval(fake, workspace, listener, daemon_factory):
    workspace.write_registry([("dev-a", "dev", 1)])
    daemon_factory(WATCHDOG_USEC="400000")  # ping every 0.2 s
    wait_for(lambda: len(listener.times_of("WATCHDOG=1")) >= 6, what="watchdog pings")
    times = listener.times_of("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 0.1 < sorted(gaps)[len(gaps) // 2] < 0.4, gaps


def test_watchdog_pings_stop_while_a_pass_is_stuck(fake, workspace, listener, daemon_factory, tmp_path):
    workspace.write_registry([("dev-a", "dev", 1)])
    wedge = tmp_path / "wedge"
    daemon_factory(
        WEDGED_DAEMON,
        WATCHDOG_USEC="400000",
        TINYSCHEDULER_PASS_TIMEOUT_SEC="1",
        TINYSCHEDULER_TEST_WEDGE_FILE=str(wedge),
        TINYSCHEDULER_LOOP_INTERVAL_SEC="1",
    )
    wait_for(lambda: len(listener.times_of("WATCHDOG=1")) >= 3, what="pings while healthy")
    wedge.touch()

    # Once the stuck pass is past its 1 s timeout no ping may arrive: wait for a 1.5 s silence.
    def silent() -> bool:
        pings = listener.times_of("WATCHDOG=1")
        return bool(pings) and time.monotonic() - pings[-1] > 1.5

    wait_for(silent, timeout=15, what="pings withheld")
    wedge.unlink()
    count = len(listener.times_of("WATCHDOG=1"))
    wait_for(lambda: len(listener.times_of("WATCHDOG=1")) > count + 2, what="pings resume after the pass ends")


def test_sighup_reload_good_then_bad(fake, workspace, listener, daemon_factory):
    registry = workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.6})
    daemon = daemon_factory()
    wait_for(lambda: "READY=1" in listener.texts(), what="READY=1")

    registry.write_text(json.dumps([{"agentName": "dev-a", "agentType": "dev", "slots": 3}]))
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: any(t.startswith("RELOADING=1") for t in listener.texts()), what="RELOADING")
    reloading = next(t for t in listener.texts() if t.startswith("RELOADING=1"))
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", reloading), "one datagram with both fields"
    texts = listener.texts()
    wait_for(lambda: listener.texts()[texts.index(reloading) :].count("READY=1") >= 1, what="READY after reload")
    wait_for(lambda: any(e.get("event") == "reloaded" for e in daemon.log_events()), what="reloaded")

    tasks = [fake.create_task(f"t{i}", queue_name="dev") for i in range(6)]
    wait_for(lambda: all(fake.task(t["id"])["status"] == "complete" for t in tasks), timeout=60, what="tasks done")
    # Tasks created one by one may meet a pass that sees only some of them: the peak shows the old
    # limit of 1 is gone and the new one holds; the pass's own report names the limit in force.
    assert 2 <= max_concurrency(workspace.records())["dev-a"] <= 3, "the raised limit applies to the next passes"
    assert limits_in_force(workspace) == {"dev-a": 3}

    registry.write_text('[{"agentName": "dev-a",')  # broken JSON
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: any("reload rejected" in s for s in listener.statuses()), what="rejection in STATUS")
    rejected = next(e for e in daemon.log_events() if e.get("event") == "reload_rejected")
    assert "agent-control.json" in rejected["reason"] and "line 1" in rejected["reason"]
    assert daemon.proc.poll() is None, "a bad reload never stops the daemon"

    more = [fake.create_task(f"u{i}", queue_name="dev") for i in range(6)]
    wait_for(lambda: all(fake.task(t["id"])["status"] == "complete" for t in more), timeout=60, what="more done")
    later = [r for r in workspace.records() if r["task_id"] in {t["id"] for t in more}]
    assert 2 <= max_concurrency(later)["dev-a"] <= 3, "the old (good) limits stay after a bad reload"
    assert limits_in_force(workspace) == {"dev-a": 3}


def limits_in_force(workspace: Any) -> Any:
    """The slots per agent the daemon's last pass planned with (last_pass.json)."""
    return json.loads((workspace.base / "state" / "last_pass.json").read_text())["limits"]


def test_journal_stream_gives_priority_prefixes_without_timestamps(fake, workspace, tmp_path):
    workspace.write_registry([("dev-a", "dev", 1)])
    out = tmp_path / "journal.out"
    with open(out, "wb") as sink:
        stat = os.fstat(sink.fileno())
        env = workspace.daemon_env(
            JOURNAL_STREAM=f"{stat.st_dev}:{stat.st_ino}",
            TINYSCHEDULER_LOG_FORMAT="auto",
            TINYSCHEDULER_MCP_ENDPOINT="http://127.0.0.1:9",
            TINYSCHEDULER_ALLOW_STANDIN="1",  # no fake to vouch for the stand-in goose
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinyscheduler", "run", "--daemon"],
            cwd=workspace.base,
            env=env,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "pass_failed" in out.read_text(), what="an error line")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    lines = [line for line in out.read_text().splitlines() if line.strip()]
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines[:5]
    error = next(line for line in lines if "pass_failed" in line)
    assert error.startswith("<3>")
    assert any(line.startswith("<6>") and "started" in line for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d", line) for line in lines)


def test_reload_reports_settings_that_need_a_restart_and_applies_the_rest(fake, workspace, listener, daemon_factory):
    workspace.write_registry([("dev-a", "dev", 1)])
    env_file = workspace.base / "tinyscheduler.env"
    env_file.write_text("TINYSCHEDULER_MAX_ATTEMPTS=3\n")
    daemon = DaemonProcess(
        workspace,
        "--env-file",
        str(env_file),
        "run",
        "--daemon",
        env=workspace.daemon_env(NOTIFY_SOCKET=str(listener.path)),
    ).start()
    try:
        wait_for(lambda: "READY=1" in listener.texts(), what="READY=1")
        env_file.write_text("TINYSCHEDULER_MAX_ATTEMPTS=5\nTINYSCHEDULER_RUNNING_DIR=elsewhere/running\n")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: any(e.get("event") == "reloaded" for e in daemon.log_events()), what="reloaded")
        events = daemon.log_events()
        restart = [e for e in events if e.get("event") == "restart_needed"]
        assert [e["setting"] for e in restart] == ["running_dir"]
        assert restart[0]["new"].endswith("elsewhere/running")
        changed = {e["setting"]: (e["old"], e["new"]) for e in events if e.get("event") == "setting_changed"}
        assert changed == {"max_attempts": (3, 5)}, "applied live; the lease folder kept its old value"
        assert daemon.proc.poll() is None
    finally:
        daemon.kill()
