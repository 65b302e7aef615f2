"""A real systemd user manager for the system tests, private to the test session.

Started as root on a machine where systemd is not PID 1: the manager only checks for
/run/systemd/system when it starts, so the folder is created if absent and removed again as
soon as the manager answers (left in place, Debian's package scripts take systemd for PID 1
and `apt-get install` breaks). The manager gets its own D-Bus session bus, runtime folder and
unit folder (`$XDG_CONFIG_HOME/systemd/user`) and a minimal environment, so nothing from this
process or the host leaks in. Teardown stops the manager and the bus by PID, always.
"""

from __future__ import annotations

import os
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
        return "a systemd user manager without a booted systemd needs root (to create /run/systemd/system)"
    return None


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
    created = False
    try:
        if not RUN_SYSTEMD_SYSTEM.exists():
            RUN_SYSTEMD_SYSTEM.mkdir(parents=True)
            created = True
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
            with open(manager.log, "wb") as log:
                process = subprocess.Popen(
                    [str(SYSTEMD), "--user"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )

            def answers() -> bool:
                assert process is not None
                if process.poll() is not None:
                    raise AssertionError(
                        f"systemd --user exited {process.returncode}: {manager.log.read_text(errors='replace')[-2000:]}"
                    )
                state = manager.systemctl("is-system-running", check=False).stdout.strip()
                return state in ("running", "degraded")

            wait_for(answers, timeout=30, what="the systemd user manager to answer")
        finally:
            if created:
                RUN_SYSTEMD_SYSTEM.rmdir()
        yield manager
    finally:
        if process is not None:
            # On SIGTERM the manager stops its units, then exits.
            manager_process = process
            _terminate(manager_process.pid, lambda: manager_process.poll() is not None, 30)
        if dbus_pid is not None:
            bus_pid = dbus_pid
            _terminate(bus_pid, lambda: _zombie_or_gone(bus_pid), 10)
        shutil.rmtree(runtime)
