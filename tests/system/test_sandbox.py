"""The sandboxed units at work under a real systemd user manager (conftest.py): what the hardening
must leave to a run still works. Scores and `verify` are in tests/unit/test_units.py."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# The fixtures too (`fake`, `service`): this module tests more of the same units.
from test_service import SHIPPED, UNIT, Service, fake, service  # noqa: F401

from tinyscheduler.testing.fake import FakeTinyTask

from harness import wait_for

if TYPE_CHECKING:
    from conftest import UserManager

pytestmark = pytest.mark.system

ONESHOT = SHIPPED.with_name("tinyscheduler-oneshot.service")


def test_the_one_shot_unit_makes_a_pass_and_waits_for_its_runs(
    service: Service,  # noqa: F811
    user_manager: UserManager,
    fake: FakeTinyTask,  # noqa: F811
) -> None:
    service.write_settings(TINYSCHEDULER_AGENT_LIMITS="dev:2")
    service.workspace.write_recipe("dev", {"mode": "succeed", "seconds": 0.5})
    tasks = [fake.create_task(f"task {i}", assigned_to="dev") for i in range(2)]
    service.install(shipped=ONESHOT)
    try:
        user_manager.systemctl("start", ONESHOT.name)  # a oneshot: returns when the pass and its runs are done
        shown = user_manager.show(ONESHOT.name, "Result", "ExecMainStatus")
        assert shown == {"Result": "success", "ExecMainStatus": "0"}, service.log.read_text()
    finally:
        user_manager.remove(ONESHOT.name)
    assert [fake.task(t["id"])["status"] for t in tasks] == ["complete", "complete"]
    written = [p for p in (service.base / "state").rglob("*") if p.is_file()]
    assert written and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)


def goose_using_tmp(base: Path) -> Path:
    """A goose that leaves a file in /tmp, waits for `base/go`, then reads the file back."""
    script = base / "goose-tmp"
    script.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --version ] && { echo "goose-tmp 1.0"; exit 0; }\n'
        'echo "written before the restart" > "/tmp/run-$TINYSCHEDULER_TASK_ID"\n'
        f"while [ ! -e {base}/go ]; do sleep 0.1; done\n"
        f'cat "/tmp/run-$TINYSCHEDULER_TASK_ID" > {base}/seen\n'
        'echo \'{"type": "complete"}\'\n'
    )
    script.chmod(0o755)
    return script


def test_a_run_keeps_its_tmp_across_a_restart_of_the_daemon(
    service: Service,  # noqa: F811
    fake: FakeTinyTask,  # noqa: F811
) -> None:
    """systemd deletes a PrivateTmp= folder at every stop, restarts included, under the runs that go
    on; the daemon's /tmp is a tmpfs of its own instead, which lives as long as a run uses it."""
    service.write_settings(
        TINYSCHEDULER_AGENT_LIMITS="dev:1", TINYSCHEDULER_GOOSE_BIN=str(goose_using_tmp(service.base))
    )
    service.workspace.write_recipe("dev")
    task = fake.create_task("uses /tmp", assigned_to="dev")
    service.install()
    service.manager.systemctl("start", UNIT)
    service.wait(service.workspace.running_pids, "the run")
    pid = service.show("MainPID")["MainPID"]

    service.manager.systemctl("restart", UNIT)
    service.wait(lambda: service.show("MainPID")["MainPID"] not in ("0", pid), "the new daemon")
    (service.base / "go").touch()
    service.wait(lambda: fake.task(task["id"])["status"] == "complete", "the adopted run to complete")
    assert (service.base / "seen").read_text() == "written before the restart\n"
    wait_for(lambda: not service.workspace.leases(), what="the lease removed")
