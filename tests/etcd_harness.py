"""A real etcd cluster for the tests: members on loopback ports, data under a temporary folder, and a
TCP proxy a test can cut to partition one client from etcd.

Debian's `etcd-server` package provides /usr/bin/etcd (`.ci/run` installs it when missing). Ports come
from the kernel (bind to port 0), so parallel test workers never share a cluster; a member that
cannot start is reported with the end of its log.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import DaemonProcess, Workspace, kill_everything, wait_for

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each socket is held until all are taken (one at a time, the
    kernel may hand the same port out twice)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass
class EtcdCluster:
    """`size` members; `start()` waits until every member answers and the cluster has a leader."""

    base: Path
    size: int = 3
    members: list[Member] = field(default_factory=list)

    def __post_init__(self) -> None:
        ports = free_ports(2 * self.size)
        for n in range(self.size):
            name = f"m{n}"
            client, peer = ports[2 * n], ports[2 * n + 1]
            self.members.append(Member(name, client, peer, self.base / name, self.base / f"{name}.log"))

    @property
    def endpoints(self) -> str:
        return ",".join(m.client_url for m in self.members)

    def start(self) -> EtcdCluster:
        for member in self.members:
            self.start_member(member, new=True)
        for member in self.members:
            wait_for(lambda m=member: self.healthy(m), timeout=60, what=f"etcd member {member.name} healthy")
        return self

    def start_member(self, member: Member, *, new: bool = False) -> None:
        peers = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        member.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # as etcd wants it
        command = [
            ETCD,
            "--name", member.name,
            "--data-dir", str(member.data_dir),
            "--listen-client-urls", member.client_url,
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", peers,
            "--initial-cluster-state", "new" if new else "existing",
            "--initial-cluster-token", f"tinyscheduler-test-{self.base.name}",
            # Loopback: fast elections, so a stopped leader is replaced within a second.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        with open(member.log, "ab") as sink:
            member.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, member: Member) -> bool:
        if member.proc is None or member.proc.poll() is not None:
            tail = member.log.read_text(errors="replace")[-2000:] if member.log.exists() else ""
            raise AssertionError(f"etcd member {member.name} is not running; its log ends:\n{tail}")
        try:
            with urllib.request.urlopen(f"{member.client_url}/health", timeout=1) as reply:
                return bool(json.loads(reply.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def leader(self) -> Member:
        """The member that leads now (each member's status names the leader's id)."""
        for member in self.members:
            request = urllib.request.Request(f"{member.client_url}/v3/maintenance/status", data=b"{}", method="POST")
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    status = json.loads(reply.read())
            except OSError:
                continue
            if status.get("leader") == status.get("header", {}).get("member_id"):
                return member
        raise AssertionError("no etcd member says it leads")

    def stop_member(self, member: Member) -> None:
        if member.proc is not None and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait(10)

    def stop(self) -> None:
        for member in self.members:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                self.stop_member(member)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target_port`. `cut()` is a partition: every connection is dropped
    and new ones are accepted but never answered (the client's requests time out, as when packets are
    lost); `restore()` heals it. `close()` at the end of a test."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._sockets.append(client)
                if self._cut:
                    continue  # held open, never answered
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.append(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def _drop_all(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> float:
        """Partition now; the monotonic time it happened."""
        with self._lock:
            self._cut = True
        self._drop_all()
        return time.monotonic()

    def restore(self) -> None:
        self._drop_all()  # the unanswered ones
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self.listener.close()
        self._drop_all()
        self._thread.join(5)


@dataclass
class Hosts:
    """Several daemons, each with its own host id, base path and registry, sharing one TinyTask, one
    etcd, one stand-in record file and one per-task lock folder (a second run of a task anywhere
    records an `overlap`)."""

    root: Path
    tinytask_url: str
    endpoints: str
    workspaces: dict[str, Workspace] = field(default_factory=dict)
    daemons: dict[str, DaemonProcess] = field(default_factory=dict)

    @property
    def records_file(self) -> Path:
        return self.root / "records.jsonl"

    def add(self, host: str, agents: list[tuple[str, str, int]], *, seconds: float = 0.5, **env: str) -> Workspace:
        (self.root / "task-locks").mkdir(parents=True, exist_ok=True)
        workspace = Workspace(self.root / host, self.tinytask_url)
        workspace.env.update(
            {
                "TINYSCHEDULER_ETCD_ENDPOINTS": self.endpoints,
                "TINYSCHEDULER_HOST_ID": host,
                "TINYSCHEDULER_CLUSTER": "test",
                "TINYSCHEDULER_CLUSTER_HEARTBEAT_SEC": "1",
                "TINYSCHEDULER_STANDIN_RECORD": str(self.records_file),
                "TINYSCHEDULER_STANDIN_LOCK_DIR": str(self.root / "task-locks"),
                **env,
            }
        )
        workspace.write_registry(agents)
        for name, _, _ in agents:
            workspace.write_recipe(name, {"mode": "succeed", "seconds": seconds})
        self.workspaces[host] = workspace
        return workspace

    def start(self, host: str, **env: str) -> DaemonProcess:
        workspace = self.workspaces[host]
        daemon = DaemonProcess(workspace, "run", "--daemon", env=workspace.daemon_env(**env)).start()
        self.daemons[host] = daemon
        return daemon

    def cli(self, host: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`tinyscheduler ARGS` with `host`'s settings."""
        return self.workspaces[host].cli(*args, **env)

    def last_pass(self, host: str) -> dict[str, Any]:
        """`host`'s state/last_pass.json ({} before its first pass)."""
        try:
            data = json.loads((self.workspaces[host].base / "state" / "last_pass.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def records(self) -> list[dict[str, Any]]:
        try:
            lines = self.records_file.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def overlaps(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == "overlap"]

    def stop(self) -> None:
        for daemon in self.daemons.values():
            daemon.kill()
        for workspace in self.workspaces.values():
            kill_everything(workspace.base)
