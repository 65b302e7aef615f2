"""Units under a real systemd user manager (see conftest.py for how it is started)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # a runtime import of "conftest" could find tests/conftest.py instead
    from conftest import UserManager

pytestmark = pytest.mark.system

NOTIFY_SCRIPT = """\
import signal
from tinyscheduler.systemd import Notifier

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
    user_manager.install("trivial-notify.service", f"""\
[Service]
Type=notify
ExecStart={sys.executable} {script}
""")
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
