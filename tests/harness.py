"""Test harness for the real daemon: a base folder, the stand-in goose, a daemon subprocess.

Every process a test starts is stopped in a finalizer, the daemon and every Goose run it left
(runs live in sessions of their own, so they are found by the lease path in their environment).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import yaml

from tinyscheduler.testing.standin_goose import write_launcher

#: A daemon whose passes block while a file exists (see wedged_daemon.py).
WEDGED_DAEMON = [sys.executable, str(Path(__file__).with_name("wedged_daemon.py"))]
#: A daemon whose every start of goose raises ValueError (see faulty_daemon.py).
FAULTY_DAEMON = [sys.executable, str(Path(__file__).with_name("faulty_daemon.py"))]

#: The stand-in goose as a program (a plain install puts none on PATH), beside the test interpreter:
#: not under /tmp, which the system tests' units see privately (PrivateTmp=yes).
STANDIN = str(write_launcher(Path(sys.executable).parent / "goose-standin"))


class Deadline:
    """A test's patience: `check()` fails naming what was awaited once `timeout` seconds are up."""

    def __init__(self, timeout: float, what: str) -> None:
        self.at = time.monotonic() + timeout
        self.message = f"timed out after {timeout}s waiting for {what}"

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise AssertionError(self.message)


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll until `predicate()` is truthy; fail with `what` after `timeout` seconds. The default is
    generous: a green test returns at once, and a daemon that starts in 3 s alone took 16 s with
    the whole suite, coverage and other work sharing two CPUs."""
    deadline = Deadline(timeout, what)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


@dataclass
class Workspace:
    base: Path
    tinytask_url: str
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)

    @property
    def records_file(self) -> Path:
        return self.base / "standin-records.jsonl"

    @property
    def running_dir(self) -> Path:
        return self.base / "state" / "running"

    def write_recipe(self, agent: str, standin: dict[str, Any] | None = None) -> Path:
        recipe = {
            "title": f"{agent} test recipe",
            "description": "recipe for the stand-in goose",
            "prompt": "Work on task {{ task_id }} as {{ agent }}.",
            "parameters": [
                {"key": "task_id", "input_type": "string", "requirement": "required", "description": "task"},
                {"key": "agent", "input_type": "string", "requirement": "required", "description": "agent"},
            ],
            "standin": standin or {"mode": "succeed", "seconds": 0.2},
        }
        path = self.base / "recipes" / f"{agent}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(recipe))
        return path

    def write_registry(self, agents: Iterable[tuple[str, str, int]]) -> Path:
        entries = [{"agentName": name, "agentType": queue, "slots": slots} for name, queue, slots in agents]
        path = self.base / "agent-control.json"
        path.write_text(json.dumps(entries, indent=2))
        return path

    def cli(self, *args: str, umask: int = -1, **env: str) -> subprocess.CompletedProcess[str]:
        """`tinyscheduler ARGS` run in this workspace with the daemon's environment (and `env`)."""
        return subprocess.run(
            [sys.executable, "-m", "tinyscheduler", *args],
            cwd=self.base,
            env=self.daemon_env(**env),
            capture_output=True,
            text=True,
            timeout=60,
            umask=umask,
        )

    def daemon_env(self, **overrides: str) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("TINYSCHEDULER_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        env.update(
            {
                "TINYSCHEDULER_BASE_PATH": str(self.base),
                "TINYSCHEDULER_MCP_ENDPOINT": self.tinytask_url,
                "TINYSCHEDULER_TINYTASK_PROTOCOL": "rest",
                "TINYSCHEDULER_GOOSE_BIN": STANDIN,
                "TINYSCHEDULER_LOOP_INTERVAL_SEC": "1",
                "TINYSCHEDULER_HEARTBEAT_SEC": "1",
                "TINYSCHEDULER_STOP_GRACE_SEC": "0.5",
                "TINYSCHEDULER_RETRY_BASE_SEC": "1",
                "TINYSCHEDULER_LOG_FORMAT": "json",
                "TINYSCHEDULER_STANDIN_RECORD": str(self.records_file),
            }
        )
        env.update(self.env)
        env.update(overrides)
        return env

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.records_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def leases(self) -> list[Path]:
        return sorted(self.running_dir.glob("task_*.json")) if self.running_dir.exists() else []

    def running_pids(self) -> list[int]:
        """Pids named by the leases now (a lease is written before its process exists)."""
        pids = []
        for path in self.leases():
            try:
                pid = json.loads(path.read_text()).get("pid")
            except FileNotFoundError:
                continue  # the run ended between the listing and the read
            if pid:
                pids.append(pid)
        return pids


def max_concurrency(
    records: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any] = lambda r: r["agent"]
) -> dict[Any, int]:
    """Highest number of runs in flight at once, per key, from start/end records (others ignored)."""
    live: dict[Any, int] = {}
    peak: dict[Any, int] = {}
    runs = [r for r in records if r["event"] in ("start", "end")]
    for record in sorted(runs, key=lambda r: (r["t"], r["event"] == "start")):
        k = key(record)
        live[k] = live.get(k, 0) + (1 if record["event"] == "start" else -1)
        peak[k] = max(peak.get(k, 0), live[k])
    return peak


def overlapping_runs_of_one_task(records: list[dict[str, Any]]) -> list[int]:
    """Task ids that ever had two runs at once (by start/end records of distinct pids)."""
    return [task for task, peak in max_concurrency(records, key=lambda r: r["task_id"]).items() if peak > 1]


def processes_of(base: Path) -> list[psutil.Process]:
    """Every live process started for this workspace: daemon runs carry their lease path in env."""
    found = []
    marker = str(base)
    for proc in psutil.process_iter(["pid"]):
        try:
            env = proc.environ()
        except (psutil.Error, OSError):
            continue
        ours = env.get("TINYSCHEDULER_LEASE", "").startswith(marker) or env.get("TINYSCHEDULER_BASE_PATH") == marker
        if ours and proc.pid != os.getpid() and _alive(proc):
            found.append(proc)
    return found


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False  # it ended between the scan and this look


def alive(pids: Iterable[int]) -> list[int]:
    """Those of `pids` still running (a zombie has ended)."""
    found = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if _alive(psutil.Process(pid)):
                found.append(pid)
    return found


def kill_everything(base: Path) -> None:
    for proc in processes_of(base):
        with contextlib.suppress(psutil.Error):
            proc.kill()


class DaemonProcess:
    """`python -m tinyscheduler ...` as a real subprocess, with its output captured to files."""

    def __init__(
        self, workspace: Workspace, *args: str, env: dict[str, str] | None = None, program: list[str] | None = None
    ) -> None:
        self.workspace = workspace
        self.args = args
        #: What runs the daemon: `python -m tinyscheduler`, or a test launcher that injects a hook.
        self.program = program or [sys.executable, "-m", "tinyscheduler"]
        self.env = env or workspace.daemon_env()
        self.out = workspace.base / f"daemon-{time.monotonic_ns()}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        with open(self.out, "wb") as sink:
            self.proc = subprocess.Popen(
                [*self.program, *self.args],
                cwd=self.workspace.base,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.output().splitlines():
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(item, dict):
                events.append(item)
        return events

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"daemon did not exit within {timeout}s; output:\n{self.output()[-4000:]}") from None

    def kill(self) -> None:
        """End the daemon and its process group.

        A daemon still running gets SIGTERM twice first (the second skips the drain), so it exits
        through its own shutdown and a measured run (`tests/run.py --cov`) keeps its coverage
        data; SIGKILL follows if it has not exited within a few seconds.
        """
        if self.proc is None or self.proc.poll() is not None:
            return
        for patience in (0.5, 3.0):
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(patience)
                break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


class NotifyListener:
    """Collects every datagram the daemon sends, with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        with self._lock:
            return [text for _, text in self.messages]

    def times_of(self, text: str) -> list[float]:
        with self._lock:
            return [at for at, message in self.messages if message == text]

    def statuses(self) -> list[str]:
        return [t.removeprefix("STATUS=") for t in self.texts() if t.startswith("STATUS=")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


class JournalListener:
    """A socket that speaks journald's native protocol: each datagram is one entry of `KEY=value`
    lines, a value with a newline as the key, a newline, its 64-bit little-endian length and the
    bytes; an entry too large for a datagram comes as a memfd passed with SCM_RIGHTS."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.settimeout(0.05)
        self.entries: list[dict[str, str]] = []

    def receive(self) -> list[dict[str, str]]:
        """Every entry that arrived so far (kept in `entries`)."""
        while True:
            try:
                data, ancillary, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4))
            except TimeoutError:
                return self.entries
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = int.from_bytes(payload[:4], sys.byteorder)
                    with os.fdopen(fd, "rb") as memfd:
                        memfd.seek(0)  # journald maps the whole file, whatever the sender's offset
                        data = memfd.read()
            self.entries.append(parse_journal_entry(data))

    def matching(self, **fields: str) -> list[dict[str, str]]:
        """The entries with these field values, as `journalctl FIELD=value` selects them."""
        return [e for e in self.receive() if all(e.get(k) == v for k, v in fields.items())]

    def close(self) -> None:
        self.sock.close()


def parse_journal_entry(data: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            at = end + 1
        else:
            key, size = line, int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            assert data[end + 9 + size : end + 10 + size] == b"\n", "binary field not ended by a newline"
            at = end + 10 + size
        fields[key.decode()] = value.decode()
    return fields
