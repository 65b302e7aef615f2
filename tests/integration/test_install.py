"""The README's "Install for real use", line by line, after a `pip install` of the built wheel into a
fresh virtual environment, in an empty folder: what `tinyscheduler init` writes comes from the wheel's own
package data, and `validate-config`, the dry run and the daemon work on it.

No network: the wheel is built from a copy of the source with the development environment's setuptools,
and the fresh environment finds the dependencies (not tinyscheduler) in the development environment's
site-packages through a .pth file. Where the README says to edit `.env` (the TinyTask URL, the goose
program), the test sets the same two variables in the environment: the fake TinyTask and the stand-in.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tinyscheduler.testing.fake import FakeTinyTask

from harness import STANDIN, wait_for

ROOT = Path(__file__).resolve().parents[2]


def install_block() -> list[list[str]]:
    """The commands of the README's install section after `pip install`, as argv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Install for real use") : readme.index("## Day to day")]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    assert blocks[0].strip() == "pip install tinyscheduler"
    return [shlex.split(line) for line in blocks[1].splitlines() if line.strip()]


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(source)], check=True
    )
    [wheel] = (work / "dist").glob("tinyscheduler-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies, from the development environment (its tinyscheduler is an editable install whose
    # hook lives in a .pth file, which a path added this way does not run).
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], check=True)
    return venv


@pytest.fixture
def tinytask() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        server.create_task("build it", queue_name="dev")
        yield server


def test_the_readme_install_steps_work_word_for_word_after_pip_install(fresh_venv, tinytask, tmp_path):
    folder = tmp_path / "agents"
    folder.mkdir()
    bin_dir = fresh_venv / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TINYSCHEDULER_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env.update(
        PATH=f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}",
        TINYSCHEDULER_MCP_ENDPOINT=tinytask.url,
        TINYSCHEDULER_GOOSE_BIN=STANDIN,
    )

    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=60)

    where = run(["python", "-c", "import tinyscheduler; print(tinyscheduler.__file__)"])
    assert where.stdout.startswith(str(fresh_venv)), "tinyscheduler comes from the installed wheel"
    steps = install_block()
    assert steps[0][:2] == ["tinyscheduler", "init"]
    for argv in steps:
        assert argv[0] == "tinyscheduler", argv
        if argv[1:] == ["run", "--daemon"]:
            daemon_runs_and_stops(argv, folder, env, run, lambda: tinytask.task(1)["assigned_to"] == "developer")
            continue
        result = run(argv)
        assert result.returncode == 0, f"{shlex.join(argv)}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
        if argv[1] == "init":
            assert "created" in result.stdout and (folder / ".env").is_file()
            assert (folder / "systemd" / "tinyscheduler.service").read_text().count(str(bin_dir / "tinyscheduler")) == 1
    again = run(["tinyscheduler", "init"])
    actions = [line.split()[0] for line in again.stdout.splitlines() if line.startswith(("created", "kept"))]
    assert actions == ["kept"] * 9, again.stdout  # run again, it changes nothing
    assert tinytask.task(1)["assigned_to"] == "developer", "the daemon did the work of the example registry"


def daemon_runs_and_stops(argv: list[str], folder: Path, env: dict[str, str], run, worked) -> None:  # type: ignore[no-untyped-def]
    daemon = subprocess.Popen(argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: run(["tinyscheduler", "status"]).returncode == 0, what="status: running and healthy")
        # status is healthy from the lock on, before the first pass: stopped then, the daemon did no work.
        wait_for(worked, what="the daemon's first pass to assign the task")
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
