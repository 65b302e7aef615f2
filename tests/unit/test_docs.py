"""The README, the env example and the examples cannot rot: they are checked against the code.

- the README's configuration table and `.env.tinyscheduler.example` list exactly the settings of
  `config.Settings`, with their real defaults;
- every `tinyscheduler` command line in the README parses, and the ones that finish are run
  (against the fake TinyTask, in a folder set up from the examples);
- the example registries and recipes pass `validate-config`'s checks;
- docs/operations.md lists every event the program logs, at its level, and no other.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.adapters.logsetup import LIFECYCLE_EVENTS
from tinyscheduler.cli.main import build_parser
from tinyscheduler.cli.validate import run_checks
from tinyscheduler.config.registry import load_registry
from tinyscheduler.config.settings import SETTINGS, SettingInfo, load_settings
from tinyscheduler.core.outcomes import Outcome
from tinyscheduler.testing.fake import FakeTinyTask

from harness import STANDIN

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
ENV_EXAMPLE = ROOT / ".env.tinyscheduler.example"
EXAMPLES = ROOT / "examples"

#: README lines that are parsed but not run here: the daemon never ends; the demo has its own tests
#: (tests/integration/test_demo.py runs it to the end and interrupts it as a person would); cancel
#: needs a daemon with a run in flight (tests/integration/test_control.py).
NOT_RUN = ("run --daemon", "demo", "cancel")


def shell_lines(text: str) -> list[str]:
    """Lines of the ```sh blocks, in order."""
    return [
        line.strip()
        for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S)
        for line in block.splitlines()
        if line.strip()
    ]


def commands(text: str) -> list[list[str]]:
    """Every `tinyscheduler ...` / `./tinyscheduler ...` line as argv, comments dropped."""
    return [shlex.split(line, comments=True) for line in shell_lines(text) if re.match(r"(\./)?tinyscheduler\s", line)]


def default_text(info: SettingInfo) -> str:
    if info.name == "base_path":
        return "current directory"
    if isinstance(info.default, bool):
        return str(info.default).lower()
    return "(none)" if info.default in (None, "", {}) else str(info.default)


def readme_table() -> list[list[str]]:
    start = README.index("| variable | flag | default | meaning |")
    rows = []
    for line in README[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_demo_is_the_first_command_and_ci_runs_the_documented_checks():
    lines = shell_lines(README)
    assert lines[0] == "./tinyscheduler demo"
    assert "python3 tests/run.py" in lines
    assert "python3 tests/run.py --fast" in lines
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 ")]
    assert ci == ["python3 tests/run.py --lint", "python3 tests/run.py --types", "python3 tests/run.py --cov"]
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for command in [*ci, "python3 tests/run.py", "python3 tests/run.py --fast"]:
        assert f"`{command}`" in contributing, f"CONTRIBUTING.md does not give `{command}`"


def test_readme_configuration_table_lists_every_setting_with_flag_and_default():
    rows = readme_table()
    assert [row[0] for row in rows] == [f"`{info.env_var}`" for info in SETTINGS], "same settings, same order"
    for (_, flag, default, meaning), info in zip(rows, SETTINGS, strict=True):
        assert f"`{info.flag}" in flag, info.name
        if info.is_bool:
            assert f"`--no-{info.flag[2:]}`" in flag, info.name
        assert default == f"`{default_text(info)}`", info.name
        assert meaning, info.name


def test_env_example_lists_every_setting_with_its_true_default(tmp_path):
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    entries = [line[2:] for line in lines if line.startswith("# TINYSCHEDULER_")]
    names = [entry.split("=", 1)[0] for entry in entries]
    assert len(names) == len(set(names)) and set(names) == {info.env_var for info in SETTINGS}
    for number, line in enumerate(lines):
        if line.startswith("# TINYSCHEDULER_"):
            above = lines[number - 1]
            assert above.startswith("# ") and not above.startswith("# TINYSCHEDULER_"), f"{line}: no comment above"

    uncommented = tmp_path / "all.env"
    uncommented.write_text("\n".join(entries) + "\n")
    every = load_settings(env_file=uncommented, cli={}, environ={}, cwd=tmp_path)
    defaults = load_settings(env_file=None, cli={}, environ={}, cwd=tmp_path)
    assert set(every.sources.values()) == {"env-file"}
    for info in SETTINGS:
        assert getattr(every.settings, info.name) == getattr(defaults.settings, info.name), info.env_var


def test_configuration_doc_explains_every_setting():
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [info.env_var for info in SETTINGS if f"`{info.env_var}`" not in text]
    assert missing == []


def test_documents_the_readme_links_to_exist():
    for target in re.findall(r"\]\(((?:docs|examples|deploy)/[^)#]+)\)", README):
        assert (ROOT / target).exists(), target
    for mentioned in re.findall(r"`((?:deploy|examples|docs)/[\w./-]+)`", README):
        assert (ROOT / mentioned).exists(), mentioned


def test_every_readme_command_line_parses():
    lines = commands(README)
    assert len(lines) >= 10
    parser = build_parser()
    for argv in lines:
        try:
            parser.parse_args(argv[1:])
        except SystemExit:
            pytest.fail(f"README command does not parse: {shlex.join(argv)}")


@pytest.mark.parametrize("registry", sorted(p.name for p in (EXAMPLES / "agent-control-examples").glob("*.json")))
def test_example_registries_and_recipes_pass_validate_config(registry, tmp_path):
    loaded = load_settings(
        env_file=None,
        environ={},
        cwd=tmp_path,
        cli={
            "agent_control_file": str(EXAMPLES / "agent-control-examples" / registry),
            "recipes_dir": str(EXAMPLES / "recipes"),
            "goose_bin": STANDIN,
            "mcp_endpoint": "http://127.0.0.1:9",
        },
    )
    assert load_registry(loaded.settings.agent_control_file, loaded.settings.recipes_dir) is not None
    checks = [c for c in run_checks(loaded, fix=False) if c.name in ("agent registry", "recipe")]
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_what_init_ships_is_the_examples():
    """`tinyscheduler init` writes the package's data; the repository's examples are that same text."""
    data = ROOT / "src" / "tinyscheduler" / "data"
    assert ENV_EXAMPLE.read_bytes() == (data / "tinyscheduler.env").read_bytes()
    for shipped in (data / "recipes").iterdir():
        assert (EXAMPLES / "recipes" / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name
    assert (EXAMPLES / "agent-control-examples" / "small.json").read_bytes() == (
        data / "agent-control.json"
    ).read_bytes()


def test_every_example_recipe_is_used_and_valid():
    used = set()
    for path in (EXAMPLES / "agent-control-examples").glob("*.json"):
        registry = load_registry(path, EXAMPLES / "recipes")
        assert registry is not None
        used |= {entry.recipe or f"{entry.name}.yaml" for entry in registry.entries}
    assert used == {p.name for p in (EXAMPLES / "recipes").glob("*.yaml")}


# --- the README's command lines, run -------------------------------------------------------------


@pytest.fixture
def readme_folder(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A base folder as the README's install steps leave it, with TinyTask and a finished run."""
    shutil.copy(EXAMPLES / "agent-control-examples" / "medium.json", tmp_path / "agent-control.json")
    shutil.copytree(EXAMPLES / "recipes", tmp_path / "recipes")
    log = tmp_path / "state" / "logs" / "tasks" / "42"
    log.mkdir(parents=True)
    (log / "1.log").write_text("first attempt\n")  # as 2.0.0 wrote it
    (log.parent / "42.2.log").write_text("second attempt\n")
    with FakeTinyTask() as fake:
        fake.create_task("build it", queue_name="dev", assigned_to="dev-1", status="working")
        fake.create_task("test it", queue_name="qa")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
        env.update(TINYSCHEDULER_MCP_ENDPOINT=fake.url, TINYSCHEDULER_GOOSE_BIN=STANDIN)
        yield {"base": tmp_path, "env": env, "fake": fake}


def test_readme_command_lines_run(readme_folder):
    base, env = readme_folder["base"], readme_folder["env"]
    ran = []
    for argv in commands(README):
        line = shlex.join(argv)
        if any(skip in line for skip in NOT_RUN):
            continue
        result = subprocess.run(
            [sys.executable, "-m", "tinyscheduler", *argv[1:]],
            cwd=base,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # `status` with no daemon running exits 3, as systemctl does; every other line succeeds.
        expected = 3 if argv[1:2] == ["status"] else 0
        assert result.returncode == expected, f"{line}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr, line
        ran.append(line)
    assert any("validate-config" in line for line in ran) and any("logs 42 -f" in line for line in ran)
    assert (base / "workload.md").read_text().startswith("# TinyTask workload report")
    assert readme_folder["fake"].task(2)["assigned_to"] is None, "the README's dry run changed nothing"


# --- one event vocabulary ------------------------------------------------------------------------

LEVELS = {"debug", "info", "warning", "error", "exception", "critical"}
#: What a structlog logger is called where it logs: `log`, `self._log`, a `bound` logger.
RECEIVER = re.compile(r"(^|\.)(_?log|bound|logger)$")


def _names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _names(node.body) + _names(node.orelse)
    return []


def logged_events() -> dict[str, set[str]]:
    """Every event name the program logs (the first argument of a logger call, or of the helper that
    names a breaker's opening), with its levels (`exception` counts as error)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "src" / "tinyscheduler").rglob("*.py")):
        if "testing" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in LEVELS and RECEIVER.search(ast.unparse(func.value)):
                level = "error" if func.attr == "exception" else func.attr
            elif isinstance(func, ast.Name) and func.id == "_said_open":
                level = "error"
            else:
                continue
            for name in _names(node.args[0]):
                found.setdefault(name, set()).add(level)
    return found


def documented_events() -> tuple[dict[str, set[str]], set[str]]:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text[text.index("### Events") : text.index("## Stop")]
    files, log = section.split("The log (journal, stderr")
    logged = {
        name: {level.strip() for level in levels.split(",")}
        for name, levels in re.findall(r"^\| `(\w+)` \| ([a-z, ]+) \|", log, flags=re.M)
    }
    return logged, set(re.findall(r"^\| `(\w+)` \|", files, flags=re.M))


def test_the_docs_list_every_event_the_program_logs_and_no_other():
    logged, in_files = documented_events()
    code = logged_events()
    assert sorted(set(code) - set(logged)) == [], "logged but not in docs/operations.md (Events)"
    assert sorted(set(logged) - set(code)) == [], "in docs/operations.md but never logged"
    assert {name: levels for name, levels in logged.items() if levels != code[name]} == {}
    assert in_files == LIFECYCLE_EVENTS


def test_every_event_a_doc_shows_is_one_the_program_writes():
    """A log line shown (`event=run_started`) names a logged event and a real outcome; a query of the
    events file (`.event == "gave_up"`) names one of its events."""
    logged = set(logged_events())
    outcomes = {outcome.value for outcome in Outcome}
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        assert sorted(set(re.findall(r"\bevent=(\w+)", text)) - logged) == [], doc.name
        assert sorted(set(re.findall(r'\.event == "(\w+)"', text)) - LIFECYCLE_EVENTS) == [], doc.name
        assert sorted(set(re.findall(r"\boutcome=(\w+)", text)) - outcomes) == [], doc.name
