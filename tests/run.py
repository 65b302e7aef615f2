#!/usr/bin/env python3
"""The project's checks from a fresh clone with only python3; the first run creates .venv.

    python3 tests/run.py [pytest args]   the whole suite (or what the pytest args select)
    python3 tests/run.py --fast [args]   the fast layer: tests/unit and tests/service (in-process)
    python3 tests/run.py --cov [args]    the whole suite measured by coverage, subprocesses included
    python3 tests/run.py --lint          ruff check and ruff format --check
    python3 tests/run.py --types         mypy --strict (configured in pyproject.toml)

.venv gets the project with its dev extra through the ./tinyscheduler launcher. noxfile.py runs
the same commands (COMMANDS below), each in a nox-managed environment.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LINT_PATHS = ["src", "tests", "noxfile.py"]
FAST_LAYERS = ["tests/unit", "tests/service"]
#: Line coverage every module must reach in a --cov run; the total's floor is fail_under in pyproject.toml.
MODULE_FLOOR = 70.0
COVERAGE_JSON = "coverage.json"

#: Each check as argument vectors, run from ROOT in an environment with the dev extra.
COMMANDS: dict[str, list[list[str]]] = {
    "lint": [["ruff", "check", *LINT_PATHS], ["ruff", "format", "--check", *LINT_PATHS]],
    "types": [["mypy"]],
}


def parallel(args: list[str]) -> list[str]:
    """pytest arguments with one worker per CPU (pytest-xdist), unless the caller chose otherwise:
    the suite is mostly waiting on real processes and servers, so workers overlap well."""
    chosen = any(a.startswith(("-n", "--numprocesses", "--dist")) or a == "no:xdist" for a in args)
    return args if chosen else ["-n", "auto", *args]


def fast_args(extra: list[str]) -> list[str]:
    """pytest arguments for the fast layer; a layer folder that does not exist yet is left out."""
    return [*(layer for layer in FAST_LAYERS if (ROOT / layer).is_dir()), "-m", "unit or service", *extra]


def coverage_commands(pytest_args: list[str]) -> list[list[str]]:
    """Erase, measure the suite (every Python subprocess writes its own data file), combine, report
    (failing under `fail_under` in pyproject.toml), then hold every module to MODULE_FLOOR."""
    return [
        ["coverage", "erase"],
        ["coverage", "run", "-m", "pytest", *parallel(pytest_args)],
        ["coverage", "combine", "--quiet"],
        ["coverage", "report"],
        ["coverage", "json", "--quiet", "-o", COVERAGE_JSON],
        ["python", "tests/run.py", "--module-floor", COVERAGE_JSON],
    ]


def modules_under_floor(report: dict[str, Any], floor: float = MODULE_FLOOR) -> list[str]:
    """The modules of a `coverage json` report whose line coverage is under `floor` percent."""
    return [
        f"{name}: {data['summary']['percent_covered']:.1f}% (at least {floor:.0f}% wanted)"
        for name, data in sorted(report["files"].items())
        if data["summary"]["num_statements"] and data["summary"]["percent_covered"] < floor
    ]


def _check_module_floor(path: str) -> int:
    try:
        report = json.loads((ROOT / path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"tests/run.py: cannot read the coverage report {path}: {exc}", file=sys.stderr)
        return 2
    under = modules_under_floor(report)
    for line in under:
        print(f"tests/run.py: coverage under the module floor: {line}", file=sys.stderr)
    return 1 if under else 0


def _launcher_venv() -> Path:
    loader = importlib.machinery.SourceFileLoader("tinyscheduler_launcher", str(ROOT / "tinyscheduler"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    launcher = importlib.util.module_from_spec(spec)
    loader.exec_module(launcher)
    python: Path = launcher.ensure_venv(("dev",))
    return python


def _run_all(commands: list[list[str]], bin_dir: Path) -> int:
    for command in commands:
        print(f"tests/run.py: {' '.join(command)}", file=sys.stderr, flush=True)
        code = subprocess.run([str(bin_dir / command[0]), *command[1:]], cwd=ROOT, check=False).returncode
        if code != 0:
            return code
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--module-floor"] and len(argv) == 2:
        return _check_module_floor(argv[1])
    mode = argv[0] if argv and argv[0] in ("--fast", "--cov", "--lint", "--types") else None
    rest = argv[1:] if mode else argv
    bin_dir = _launcher_venv().parent
    if mode in ("--lint", "--types"):
        return _run_all(COMMANDS[mode[2:]], bin_dir)
    if mode == "--cov":
        return _run_all(coverage_commands(rest), bin_dir)
    pytest_args = fast_args(rest) if mode == "--fast" else rest
    return _run_all([["python", "-m", "pytest", *parallel(pytest_args)]], bin_dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
