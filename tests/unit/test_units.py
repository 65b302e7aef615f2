"""The systemd units `tinyscheduler init` writes: `systemd-analyze verify` is clean, and they say what
the issue asks. They are checked as written for the documented layout (docs/operations.md): the package
in /opt/tinyscheduler, the base path in the service user's home /var/lib/tinyscheduler.

verify checks that ExecStart's program exists, so it runs on a copy whose install folder
(/opt/tinyscheduler) points at a temporary one holding an executable `tinyscheduler`.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tinyscheduler.cli.init import FILES, Layout, data_text, render
from tinyscheduler.config.settings import Settings

INSTALL = "/opt/tinyscheduler"
BASE = "/var/lib/tinyscheduler"
LAYOUT = Layout(Path(BASE), f"{INSTALL}/bin/tinyscheduler", "tinyscheduler", "tinyscheduler", BASE)


@pytest.fixture(scope="module")
def units(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("units")
    for source, target in FILES:
        if target.startswith("systemd/"):
            (folder / Path(target).name).write_text(render(data_text(source), LAYOUT))
    return folder


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order (keys may repeat in unit files)."""
    found: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found[section][key.strip()].append(value.strip())
    return found


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (no systemd here)")
@pytest.mark.parametrize("unit", ["tinyscheduler.service", "tinyscheduler-oneshot.service", "tinyscheduler.timer"])
def test_systemd_analyze_verify_is_clean(unit: str, tmp_path: Path, units: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    install = tmp_path / "install"
    program = install / "bin" / "tinyscheduler"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    copies = tmp_path / "units"
    copies.mkdir()
    # All units together: the timer's Unit= must resolve to the one-shot next to it.
    for shipped in units.iterdir():
        (copies / shipped.name).write_text(shipped.read_text().replace(INSTALL, str(install)))
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(copies / unit)], capture_output=True, text=True, timeout=60)
    # verify exits 0 on unknown keys and bad values ("..., ignoring."), so its output must be empty too.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_daemon_unit(units: Path) -> None:
    service = directives(units / "tinyscheduler.service")["Service"]
    assert service["Type"] == ["notify"]
    assert "#Type=notify-reload" in (units / "tinyscheduler.service").read_text()
    assert service["ExecStart"] == [f"{INSTALL}/bin/tinyscheduler run --daemon --env-file {BASE}/.env"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["WatchdogSec"] == ["60"]
    assert service["Restart"] == ["on-failure"]
    # Runs survive a restart or a crash of the daemon (it adopts them again); it contains them itself.
    assert service["KillMode"] == ["process"]
    assert service["Delegate"] == ["yes"]
    assert service["SyslogIdentifier"] == ["tinyscheduler"]
    assert service["WorkingDirectory"] == [BASE]
    assert service["Environment"] == [f"TINYSCHEDULER_BASE_PATH={BASE}"]
    assert service["EnvironmentFile"] == [f"-{BASE}/goose.env"]
    assert service["User"] == service["Group"] == ["tinyscheduler"]


def test_daemon_unit_stop_timeout_covers_the_drain(units: Path) -> None:
    # Default drain grace, then SIGINT -> SIGTERM -> SIGKILL with the stop grace between steps.
    fields = {spec.name: spec for spec in dataclasses.fields(Settings)}
    drain = fields["shutdown_grace_sec"].default + 2 * fields["stop_grace_sec"].default
    [timeout] = directives(units / "tinyscheduler.service")["Service"]["TimeoutStopSec"]
    assert int(timeout) > drain


SERVICES = ["tinyscheduler.service", "tinyscheduler-oneshot.service"]
#: The issue's bar for `systemd-analyze security`: "OK" starts at 3.9; 3.0 leaves room.
MAX_EXPOSURE = 3.0


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed (no systemd here)")
@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_is_low(unit: str, units: Path) -> None:
    """Both services were rated 8.6 EXPOSED before the sandbox; the score is systemd's own."""
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=true", "--no-pager", str(units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@pytest.mark.parametrize("unit", SERVICES)
def test_hardening(unit: str, units: Path) -> None:
    service = directives(units / unit)["Service"]
    assert service["NoNewPrivileges"] == ["yes"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["ProtectHome"] == ["read-only"]
    assert service["UMask"] == ["0077"]
    assert service["CapabilityBoundingSet"] == [""]
    # A filtered call fails with EPERM (tools fall back) rather than killing an agent's process.
    assert service["SystemCallErrorNumber"] == ["EPERM"]
    # State and logs live in the base path's state folder, outside the install folder.
    writable = " ".join(service["ReadWritePaths"]).split()
    assert writable == [f"{BASE}/state", BASE], "only the state and the service user's home"
    assert not any(path.startswith(INSTALL) for path in writable)


def test_daemon_sandbox_keeps_what_its_runs_and_cgroups_need(units: Path) -> None:
    service = directives(units / "tinyscheduler.service")["Service"]
    # Runs outlive a restart (KillMode=process); systemd deletes a PrivateTmp= folder and the user's
    # IPC objects at every stop, restarts included, so neither is used: /tmp is a tmpfs of its own.
    assert "PrivateTmp" not in service and "RemoveIPC" not in service
    assert [entry.split(":")[0] for entry in service["TemporaryFileSystem"][0].split()] == ["/tmp", "/var/tmp"]
    assert all("mode=1777" in entry for entry in service["TemporaryFileSystem"][0].split())
    # The daemon writes its delegated cgroup (one per run): /sys/fs/cgroup must stay writable.
    assert "ProtectControlGroups" not in service
    # D-Bus for `systemctl list-jobs` (restart or stop?) and sd_notify are AF_UNIX.
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    # A bad configuration (exit 2) is not retried every RestartSec forever.
    assert service["RestartPreventExitStatus"] == ["2"]


def test_timer_fires_the_one_shot_not_the_daemon(units: Path) -> None:
    timer = directives(units / "tinyscheduler.timer")["Timer"]
    assert timer["Unit"] == ["tinyscheduler-oneshot.service"]
    oneshot = directives(units / "tinyscheduler-oneshot.service")["Service"]
    assert oneshot["Type"] == ["oneshot"]
    assert oneshot["ExecStart"][0].split()[1:3] == ["run", "--once"]
