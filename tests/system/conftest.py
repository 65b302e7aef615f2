"""A real systemd user manager for the system tests, private to the test session.

The manager gets its own D-Bus session bus, runtime folder and unit folder
(`$XDG_CONFIG_HOME/systemd/user`) and a minimal environment, so nothing from this process or
the host leaks in. Teardown stops the manager and the bus by PID, always.

As root, two things make it private to this session too, so that suites running side by side
on one machine (each installing `tinyscheduler.service`) cannot touch each other's units:
- Its own cgroup. A manager puts each unit in `<its cgroup>/app.slice/<unit>`, and one started
  in the machine's `init.scope` roots itself at `/`: two managers then share
  `/app.slice/tinyscheduler.service`, and stopping the unit in one kills the other's daemon.
  The manager starts in a fresh child of this process's cgroup instead, and teardown kills
  whatever is left in it and removes it.
- Its own mount namespace. On a machine where systemd is not PID 1 the manager refuses to start
  without /run/systemd/system. A folder created there would be seen by everyone (Debian's
  package scripts then take systemd for PID 1 and `apt-get install` breaks, and one session
  removing it could make another's manager fail to start), so the manager gets a private tmpfs
  on /run/systemd holding it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from harness import wait_for

SYSTEMD = Path("/lib/systemd/systemd")
RUN_SYSTEMD_SYSTEM = Path("/run/systemd/system")

#: Run as root through `unshare --mount`: join the private cgroups named in the arguments, give
#: the mount namespace its own /run/systemd/system if the machine has none, become the manager.
PRIVATE_START = """
systemd=$1; shift
for procs in "$@"; do echo $$ > "$procs" || exit 1; done
# On a booted system /run is a mount point; where it is not, systemd mounts an empty tmpfs on it in
# the namespace of a unit with ProtectKernelTunables= or ProtectProc=, hiding the manager's sockets.
mountpoint -q /run || mount --bind /run /run || exit 1
if [ ! -d /run/systemd/system ]; then
    mkdir -p /run/systemd && mount -t tmpfs -o mode=0755 tinyscheduler-test /run/systemd \\
        && mkdir /run/systemd/system || exit 1
    # What a booted systemd makes at start, for the sandboxing options to mount over what they hide
    # (ProtectKernelTunables=, ProtectKernelLogs=): without them such a unit fails with 226/NAMESPACE.
    mkdir -m 0755 /run/systemd/inaccessible && cd /run/systemd/inaccessible \\
        && install -m 0000 /dev/null reg && mkdir -m 0000 dir && mknod -m 0000 chr c 0 0 \\
        && mknod -m 0000 blk b 0 0 && mkfifo -m 0000 fifo && cd / || exit 1
fi
exec "$systemd" --user
"""


@dataclass
class UserManager:
    """`systemctl --user` against the session's manager, and its unit folder."""

    env: dict[str, str]
    unit_dir: Path
    log: Path

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["systemctl", "--user", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"systemctl --user {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            )
        return result

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        args = [arg for name in properties for arg in ("-p", name)]
        out = self.systemctl("show", unit, *args).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def install(self, name: str, text: str) -> None:
        (self.unit_dir / name).write_text(text)
        self.systemctl("daemon-reload")

    def remove(self, name: str) -> None:
        """Stop a unit however it is, forget its failures, delete it."""
        self.systemctl("stop", name, check=False)
        self.systemctl("reset-failed", name, check=False)
        (self.unit_dir / name).unlink(missing_ok=True)
        self.systemctl("daemon-reload")


def _missing() -> str | None:
    for program in (
        SYSTEMD,
        Path(shutil.which("dbus-daemon") or "/nonexistent/dbus-daemon"),
        Path(shutil.which("systemctl") or "/nonexistent/systemctl"),
    ):
        if not program.exists():
            return f"systemd is missing here: no {program.name}"
    if os.geteuid() != 0 and not RUN_SYSTEMD_SYSTEM.exists():
        return "a systemd user manager without a booted systemd needs root (for a private /run/systemd/system)"
    if os.geteuid() == 0 and not shutil.which("unshare"):
        return "unshare (util-linux) is missing: needed to start the manager in a mount namespace of its own"
    return None


def _systemd_cgroups() -> list[Path]:
    """This process's cgroup in each hierarchy systemd tracks processes in (cgroup2, name=systemd)."""
    ours: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            ours["cgroup2"] = path
        elif controllers == "name=systemd":
            ours["systemd"] = path
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        mount_root, mount_point = fields[3], fields[4]
        fstype, options = fields[fields.index("-") + 1], fields[fields.index("-") + 3]
        kind = "cgroup2" if fstype == "cgroup2" else "systemd" if "name=systemd" in options.split(",") else None
        if kind in ours and mount_root == "/":
            found.append(Path(mount_point) / ours[kind].lstrip("/"))
    return found


def _cgroup_processes(group: Path) -> list[int]:
    pids = []
    for procs in group.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += [int(pid) for pid in procs.read_text().split()]
    return pids


def _remove_cgroup(group: Path) -> None:
    """Kill whatever is still in `group` (the manager's leftovers), then remove it, deepest first."""
    if not group.exists():
        return
    for pid in _cgroup_processes(group):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not _cgroup_processes(group), timeout=10, what=f"{group} to empty")
    folders = [group, *(d for d in group.rglob("*") if d.is_dir())]
    for folder in sorted(folders, key=lambda d: len(d.parts), reverse=True):
        with contextlib.suppress(FileNotFoundError):  # the manager may remove its own on exit
            folder.rmdir()


def _zombie_or_gone(pid: int) -> bool:
    # dbus-daemon forked away from us: its new parent, not we, reaps it, so a zombie is gone.
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _terminate(pid: int, gone: Callable[[], bool], timeout: float) -> None:
    """SIGTERM `pid`, and SIGKILL it if it is still there after `timeout` seconds."""
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, signum)
            wait_for(gone, timeout=wait, what=f"process {pid} to exit")
            return
        except ProcessLookupError:
            return
        except AssertionError:
            continue


@pytest.fixture(scope="session")
def user_manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserManager]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("user-manager")
    unit_dir = root / "config" / "systemd" / "user"
    unit_dir.mkdir(parents=True)
    # Not under /tmp: the units run with PrivateTmp=yes, and the manager's notify socket lives in
    # the runtime folder, which must stay visible to them (the real one is /run/user/<uid>).
    runtime = Path(tempfile.mkdtemp(prefix="tinyscheduler-test-", dir="/run"))  # mode 0700
    bus = f"unix:path={runtime}/bus"
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(root / "config"),
        "DBUS_SESSION_BUS_ADDRESS": bus,
    }
    manager = UserManager(env=env, unit_dir=unit_dir, log=root / "manager.log")

    dbus_pid: int | None = None
    process: subprocess.Popen[bytes] | None = None
    cgroups: list[Path] = []
    try:
        started = subprocess.run(
            ["dbus-daemon", "--session", f"--address={bus}", "--fork", "--print-pid"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        dbus_pid = int(started.stdout.split()[0])
        command = [str(SYSTEMD), "--user"]
        if os.geteuid() == 0:
            # One name in every hierarchy: the manager derives its place in each from one of them.
            name = f"tinyscheduler-test-{os.getpid()}-{secrets.token_hex(4)}"
            for parent in _systemd_cgroups():
                (parent / name).mkdir()
                cgroups.append(parent / name)
            procs = [str(group / "cgroup.procs") for group in cgroups]
            command = ["unshare", "--mount", "--propagation", "private", "--"]
            command += ["/bin/sh", "-c", PRIVATE_START, "sh", str(SYSTEMD), *procs]
        with open(manager.log, "wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def answers() -> bool:
            assert process is not None
            if process.poll() is not None:
                raise AssertionError(
                    f"systemd --user exited {process.returncode}: {manager.log.read_text(errors='replace')[-2000:]}"
                )
            # Not `is-system-running`: it answers "offline" wherever this process sees no
            # /run/systemd/system, which only the manager's mount namespace has.
            state = manager.systemctl("show", "--property=SystemState", "--value", check=False).stdout.strip()
            return state in ("running", "degraded")

        wait_for(answers, timeout=30, what="the systemd user manager to answer")
        yield manager
    finally:
        if process is not None:
            # On SIGTERM the manager stops its units, then exits.
            manager_process = process
            _terminate(manager_process.pid, lambda: manager_process.poll() is not None, 30)
        if dbus_pid is not None:
            bus_pid = dbus_pid
            _terminate(bus_pid, lambda: _zombie_or_gone(bus_pid), 10)
        for group in cgroups:
            _remove_cgroup(group)
        shutil.rmtree(runtime)
