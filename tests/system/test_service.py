"""The shipped unit under a real systemd user manager (conftest.py says how it is started).

Each test installs a copy of deploy/systemd/tinyscheduler.service pointed at its own base folder
and this checkout's python, talks to an in-process fake TinyTask on 127.0.0.1, and runs the
stand-in goose. What systemd itself reports (ActiveState, StatusText, Result, NRestarts) is the
evidence; everything is polled with deadlines.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import WEDGED_DAEMON, Workspace, alive, kill_everything, processes_of, wait_for

if TYPE_CHECKING:  # a runtime import of "conftest" could find tests/conftest.py instead
    from conftest import UserManager

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
#: The daemon unit as `tinyscheduler init` ships it (a template it writes for a base path).
SHIPPED = ROOT / "src" / "tinyscheduler" / "data" / "systemd" / "tinyscheduler.service"
UNIT = "tinyscheduler.service"

NOTIFY_SCRIPT = """\
import signal
from tinyscheduler.adapters.systemd import Notifier

notifier = Notifier.from_environ()
notifier.status("trivial: ready")
notifier.ready()
signal.sigwait({signal.SIGTERM})
notifier.stopping()
"""


def test_harness_runs_a_notify_unit(user_manager: UserManager, tmp_path: Path) -> None:
    """The harness itself: a Type=notify unit that reports READY through our Notifier."""
    script = tmp_path / "notify.py"
    script.write_text(NOTIFY_SCRIPT)
    user_manager.install(
        "trivial-notify.service",
        f"""\
[Service]
Type=notify
ExecStart={sys.executable} {script}
""",
    )
    try:
        # `start` of a Type=notify unit returns only once READY=1 arrived (or it failed).
        user_manager.systemctl("start", "trivial-notify.service")
        shown = user_manager.show("trivial-notify.service", "ActiveState", "SubState", "StatusText")
        assert shown == {"ActiveState": "active", "SubState": "running", "StatusText": "trivial: ready"}
        user_manager.systemctl("stop", "trivial-notify.service")
        shown = user_manager.show("trivial-notify.service", "ActiveState", "Result", "ExecMainStatus")
        assert shown == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0"}
    finally:
        user_manager.remove("trivial-notify.service")


def unit_copy(
    base: Path, *, replace: dict[str, str], add: list[str], program: str | None = None, shipped: Path = SHIPPED
) -> str:
    """A shipped unit (the daemon's by default) written for `base` (settings in base/etc, the home in
    base/home), for a user manager.

    `replace` gives new values to directives the unit has; `add` appends lines to [Service].
    """
    text = shipped.read_text()
    for old, new in [
        ("@PROGRAM@", program or f"{sys.executable} -m tinyscheduler"),
        ("@ENV_FILE@", str(base / "etc" / "tinyscheduler.env")),
        ("@BASE@/goose.env", str(base / "etc" / "goose.env")),
        ("@BASE@", str(base)),
        ("@HOME@", str(base / "home")),
    ]:
        assert old in text, f"{shipped.name} no longer mentions {old}: update this copy"
        text = text.replace(old, new)
    replace = dict(replace)
    lines: list[str] = []
    for line in text.splitlines():
        key = line.partition("=")[0]
        if key in ("User", "Group"):
            continue  # a user manager runs its units as its own user
        if key in replace:
            line = f"{key}={replace.pop(key)}"
        if line == "[Install]":
            lines.extend(add)
            add = []
        lines.append(line)
    assert not replace, f"{shipped.name} has no {', '.join(replace)} to replace"
    return "\n".join([*lines, *add]) + "\n"


@dataclass
class Service:
    """The daemon unit of one test: its base folder, settings file and systemd's view of it."""

    manager: UserManager
    workspace: Workspace

    @property
    def base(self) -> Path:
        return self.workspace.base

    @property
    def log(self) -> Path:
        return self.base / "service.log"

    def write_settings(self, **settings: str) -> None:
        """The env file the daemon reads itself (and again on reload): the harness's fast settings."""
        env = self.workspace.daemon_env(**{"TINYSCHEDULER_SHUTDOWN_GRACE_SEC": "1", **settings})
        # The unit sets the base path; the stand-in's record file is for the runs (goose.env).
        not_settings = ("TINYSCHEDULER_BASE_PATH", "TINYSCHEDULER_STANDIN_RECORD")
        (self.base / "etc" / "tinyscheduler.env").write_text(
            "".join(
                f"{key}={value}\n"
                for key, value in env.items()
                if key.startswith("TINYSCHEDULER_") and key not in not_settings
            )
        )

    def install(
        self,
        *,
        replace: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        program: str | None = None,
        shipped: Path = SHIPPED,
    ) -> None:
        """A copy of `shipped` (the daemon's unit by default), installed under the same name."""
        add = [
            # The units' own /tmp hides the real one, where pytest's folders (and maybe this
            # checkout) live; binding them keeps them visible. Elsewhere the binds change nothing.
            f"BindPaths={self.base}",
            f"BindReadOnlyPaths={ROOT} {sys.prefix}",
            # No journald here: the output goes to a file the tests can show when they fail.
            f"StandardOutput=append:{self.log}",
            "StandardError=inherit",
            *(f"Environment={key}={value}" for key, value in (environment or {}).items()),
        ]
        text = unit_copy(self.base, replace=replace or {}, add=add, program=program, shipped=shipped)
        self.manager.install(shipped.name, text)

    def show(self, *properties: str) -> dict[str, str]:
        return self.manager.show(UNIT, *properties)

    def status_text(self) -> str:
        return self.show("StatusText")["StatusText"]

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = 15) -> Any:
        """`wait_for`, and on a timeout what systemd and the daemon say at that moment."""
        try:
            return wait_for(predicate, timeout=timeout, what=what)
        except AssertionError as exc:
            shown = self.show("ActiveState", "SubState", "Result", "NRestarts", "StatusText")
            output = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else "(none)"
            raise AssertionError(f"{exc}\nsystemd: {shown}\ndaemon output:\n{output}") from None

    def cgroup_root(self) -> str:
        """The unit's cgroup folder (the daemon's own, where its per-run cgroups go)."""
        pid = int(self.show("MainPID")["MainPID"])
        own = next(line[3:] for line in run_cgroup(pid).splitlines() if line.startswith("0::"))
        mount = next(
            line.split(" - ")[0].split()[4]
            for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split(" - ")[1].startswith("cgroup2 ")
        )
        return mount + own

    def wait_status(self, pattern: str, timeout: float = 15) -> None:
        self.wait(lambda: re.search(pattern, self.status_text()), f"StatusText matching {pattern!r}", timeout)


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def service(user_manager: UserManager, tmp_path: Path, fake: FakeTinyTask) -> Iterator[Service]:
    workspace = Workspace(tmp_path, fake.url)
    for folder in ("state", "home", "etc"):
        (tmp_path / folder).mkdir()
    # goose.env is the runs' environment (systemd's EnvironmentFile=): where the stand-in records.
    (tmp_path / "task-locks").mkdir()
    (tmp_path / "etc" / "goose.env").write_text(
        f"TINYSCHEDULER_STANDIN_RECORD={workspace.records_file}\n"
        f"TINYSCHEDULER_STANDIN_LOCK_DIR={tmp_path / 'task-locks'}\n"
    )
    unit = Service(user_manager, workspace)
    unit.write_settings()
    yield unit
    user_manager.remove(UNIT)
    kill_everything(tmp_path)


def starts(workspace: Workspace) -> list[dict[str, Any]]:
    return [r for r in workspace.records() if r["event"] == "start"]


def test_active_with_a_status_line_after_each_pass(service: Service, fake: FakeTinyTask) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:2")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 30})
    for i in range(3):
        fake.create_task(f"task {i}", assigned_to="dev")
    service.install()
    service.manager.systemctl("start", UNIT)  # returns once the daemon sent READY=1

    assert service.show("ActiveState", "SubState") == {"ActiveState": "active", "SubState": "running"}
    service.wait_status(r"^2/2 slots busy, 1 queued, 0 blocked, last pass \d+\.\d\d s ok$")


def test_reload_applies_a_changed_limit_and_keeps_the_old_one_on_a_bad_file(
    service: Service, fake: FakeTinyTask
) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:1")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 30})
    for i in range(4):
        fake.create_task(f"task {i}", assigned_to="dev")
    service.install()
    service.manager.systemctl("start", UNIT)
    service.wait_status(r"^1/1 slots busy")
    service.wait(lambda: len(starts(service.workspace)) == 1, "the first run")
    pid = service.show("MainPID")["MainPID"]

    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:3", TINYSCHEDULER_LOOP_INTERVAL_SEC="soon")
    service.manager.systemctl("reload", UNIT)
    service.wait_status(r"^1/1 slots busy.* ok; reload rejected, previous configuration kept: .*LOOP_INTERVAL")
    assert len(starts(service.workspace)) == 1, "a rejected reload changed nothing"

    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:3")
    service.manager.systemctl("reload", UNIT)
    service.wait_status(r"^3/3 slots busy, 1 queued, .* ok$")
    service.wait(lambda: len(starts(service.workspace)) == 3, "two more runs")
    assert service.show("MainPID", "NRestarts", "ActiveState") == {
        "MainPID": pid,
        "NRestarts": "0",
        "ActiveState": "active",
    }, "reloaded in place, not restarted"


def restarted_and_active(shown: dict[str, str]) -> bool:
    return int(shown["NRestarts"]) >= 1 and shown["ActiveState"] == "active"


def test_a_wedged_pass_ends_in_a_watchdog_restart(service: Service, fake: FakeTinyTask) -> None:
    wedge = service.base / "wedge"
    wedge.touch()
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:1", TINYSCHEDULER_PASS_TIMEOUT_SEC="2")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 0.2})
    fake.create_task("after the restart", assigned_to="dev")
    service.install(
        replace={"WatchdogSec": "2", "RestartSec": "3"},
        environment={"TINYSCHEDULER_TEST_WEDGE_FILE": str(wedge)},
        program=" ".join(WEDGED_DAEMON),
    )
    service.manager.systemctl("start", UNIT)
    first_pid = service.show("MainPID")["MainPID"]

    # The first pass blocks on the wedge: pings stop after the pass timeout, systemd kills the
    # daemon WatchdogSec later and waits RestartSec before starting it again.
    service.wait(
        lambda: service.show("Result", "SubState") == {"Result": "watchdog", "SubState": "auto-restart"},
        "Result=watchdog, waiting to restart",
        timeout=20,
    )
    wedge.unlink()
    # Under load the poll may first see a later round of the same loop: count restarts, not one.
    service.wait(
        lambda: restarted_and_active(service.show("NRestarts", "ActiveState")),
        "the restart",
    )
    assert service.show("MainPID")["MainPID"] != first_pid
    service.wait_status(r"last pass \d+\.\d\d s ok$")
    service.wait(lambda: fake.tasks()[0]["status"] == "complete", "the task done after the restart")


def test_stop_drains_the_runs_and_exits_cleanly(service: Service, fake: FakeTinyTask) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:2", TINYSCHEDULER_SHUTDOWN_GRACE_SEC="30")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 3, "complete_task": True})
    tasks = [fake.create_task(f"task {i}", assigned_to="dev") for i in range(2)]
    service.install()
    service.manager.systemctl("start", UNIT)
    service.wait(lambda: len(starts(service.workspace)) == 2, "both runs started")

    service.manager.systemctl("stop", UNIT)  # returns when the unit is down

    ends = [r for r in service.workspace.records() if r["event"] == "end"]
    assert sorted(r["exit"] for r in ends) == [0, 0], "the runs were allowed to finish, not stopped"
    assert [fake.task(t["id"])["status"] for t in tasks] == ["complete", "complete"]
    # Exit status 0, not 15: the daemon handled SIGTERM and exited itself, within TimeoutStopSec.
    assert service.show("ActiveState", "Result", "ExecMainStatus") == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
    }
    assert service.workspace.leases() == []
    assert processes_of(service.base) == []


def run_cgroup(pid: int) -> str:
    return Path(f"/proc/{pid}/cgroup").read_text()


def test_a_restart_leaves_the_runs_running_and_the_next_instance_adopts_them(
    service: Service, fake: FakeTinyTask
) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:3")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 4})
    tasks = [fake.create_task(f"task {i}", assigned_to="dev") for i in range(3)]
    service.install()
    service.manager.systemctl("start", UNIT)
    service.wait(lambda: len(starts(service.workspace)) == 3, "three runs started")
    runs = [r["pid"] for r in starts(service.workspace)]
    assert all("tinyscheduler-run-" in run_cgroup(pid) for pid in runs), "each run in a cgroup of its own"
    first_pid = service.show("MainPID")["MainPID"]

    service.manager.systemctl("restart", UNIT)  # returns once the new instance sent READY=1

    assert service.show("MainPID")["MainPID"] != first_pid
    assert alive(runs) == runs, "the restart killed runs in flight"
    service.wait(lambda: all(fake.task(t["id"])["status"] == "complete" for t in tasks), "every task complete", 30)
    records = service.workspace.records()
    assert len(starts(service.workspace)) == 3, "no run was started again"
    assert sorted(r["exit"] for r in records if r["event"] == "end") == [0, 0, 0]
    assert [r for r in records if r["event"] == "overlap"] == []
    log = service.log.read_text()
    assert log.count('"event": "run_adopted"') == 3 and '"event": "handing_off"' in log
    assert [fake.comments(t["id"]) for t in tasks] == [[], [], []], "each outcome reported once, quietly"
    service.wait(lambda: service.workspace.leases() == [], "no lease left")


@pytest.mark.parametrize("mode", ["setsid-child", "double-fork", "background-child", "escaped-writer"])
def test_what_a_run_started_dies_with_it_under_systemd(service: Service, fake: FakeTinyTask, mode: str) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:1")
    service.workspace.write_recipe("dev", {"mode": mode, "linger": 300})
    task = fake.create_task("leaves something behind", assigned_to="dev")
    service.install()
    service.manager.systemctl("start", UNIT)
    service.wait(lambda: fake.task(task["id"])["status"] == "complete", "the run done")
    left = [r["child"] for r in service.workspace.records() if r["event"] == "child"]
    assert left, f"the stand-in's {mode} mode left nothing to catch"
    # Killed with the run's cgroup when goose exited, before its outcome was reported.
    assert alive(left) == []
    cgroups = list(Path(service.cgroup_root()).glob("tinyscheduler-run-*"))
    assert cgroups == [], "the run's cgroup is removed with it"
