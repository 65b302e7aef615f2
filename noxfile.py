"""nox sessions for the project's checks: `nox -s lint`, `types`, `fast`, `full`.

The commands come from tests/run.py, which runs the same checks without nox
(`python3 tests/run.py --lint` and so on); CI uses that one, so nox stays optional.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("tests_run", ROOT / "tests" / "run.py")
assert _spec is not None
assert _spec.loader is not None
checks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checks)

nox.options.sessions = ["lint", "types", "full"]
nox.options.reuse_existing_virtualenvs = True


def _install(session: nox.Session) -> None:
    session.install("--editable", ".[dev]")


def _run_all(session: nox.Session, commands: list[list[str]]) -> None:
    for command in commands:
        session.run(*command)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    _install(session)
    _run_all(session, checks.COMMANDS["lint"])


@nox.session
def types(session: nox.Session) -> None:
    """mypy --strict on src/."""
    _install(session)
    _run_all(session, checks.COMMANDS["types"])


@nox.session
def fast(session: nox.Session) -> None:
    """The fast layer: tests/unit and tests/service, in-process (at most 30 s)."""
    _install(session)
    session.run("pytest", *checks.fast_args(session.posargs))


@nox.session
def full(session: nox.Session) -> None:
    """The whole suite with coverage, subprocesses included; fails under the floor in pyproject.toml."""
    _install(session)
    _run_all(session, checks.coverage_commands(session.posargs))
