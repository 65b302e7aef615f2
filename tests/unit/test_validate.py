"""validate-config checks and --fix, on real folders, a real executable and the fake TinyTask."""

from __future__ import annotations

import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.cli.validate import PLACEHOLDER_REGISTRY, Check, recipe_problems, run_checks
from tinyscheduler.config.settings import LoadedSettings, load_settings
from tinyscheduler.testing.fake import FakeTinyTask

GOOD_RECIPE = """\
version: 1.0.0
title: Developer
description: Works on one TinyTask task
parameters:
  - key: task_id
    input_type: string
    requirement: required
    description: the task
  - key: agent
    input_type: string
    requirement: required
    description: who I am
prompt: |
  You are {{ agent }}. Work on task {{ task_id | trim }}.
"""


@pytest.fixture(scope="module")
def tinytask() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def ready_host(base: Path) -> None:
    """A base path where every check passes (with a registry of two agents)."""
    (base / "recipes").mkdir(parents=True)
    (base / "recipes" / "dev.yaml").write_text(GOOD_RECIPE)
    (base / "recipes" / "qa.yaml").write_text(GOOD_RECIPE)
    for folder in ("state/running", "state/logs", "state/quarantine"):
        (base / folder).mkdir(parents=True)
    (base / "state/running").chmod(0o700)
    goose = base / "bin" / "goose"
    goose.parent.mkdir()
    goose.write_text("#!/bin/sh\nexit 0\n")
    goose.chmod(0o755)
    write_registry(base, [{"agentName": "dev", "agentType": "dev"}, {"agentName": "qa", "agentType": "qa", "slots": 2}])


def write_registry(base: Path, entries: Any) -> None:
    (base / "agent-control.json").write_text(json.dumps(entries))


def loaded(base: Path, url: str, **cli: Any) -> LoadedSettings:
    return load_settings(
        env_file=None, environ={}, cwd=base, cli={"goose_bin": "bin/goose", "mcp_endpoint": url, **cli}
    )


def failures(checks: list[Check]) -> list[tuple[str, str, str]]:
    return [(c.level, c.name, c.detail) for c in checks if not c.ok]


def test_a_ready_host_passes(tmp_path: Path, tinytask: FakeTinyTask) -> None:
    ready_host(tmp_path)
    checks = run_checks(loaded(tmp_path, tinytask.url + "/mcp"), fix=False)
    assert failures(checks) == []
    details = [c.detail for c in checks]
    assert f"{tmp_path / 'agent-control.json'}: 2 agent(s) in 2 queue(s)" in details
    assert f"agent 'dev': {tmp_path / 'recipes/dev.yaml'}" in details
    assert f"{tinytask.url}/health healthy" in details


def test_missing_folders_and_goose_are_errors(tmp_path: Path, closed_port_url: str) -> None:
    checks = run_checks(loaded(tmp_path, closed_port_url, goose_bin="no-such-goose-binary"), fix=False)
    found = failures(checks)
    fixable = "(validate-config --fix creates it)"
    assert ("error", "paths", f"recipes dir {tmp_path / 'recipes'} does not exist {fixable}") in found
    assert (
        "error",
        "paths",
        f"running dir {tmp_path / 'state/running'} does not exist (validate-config --fix creates it)",
    ) in found
    assert ("error", "goose", "TINYSCHEDULER_GOOSE_BIN='no-such-goose-binary': not found on PATH") in found


def test_path_that_is_a_file_and_goose_not_executable(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "state/logs").rmdir()
    (tmp_path / "state/logs").write_text("")
    (tmp_path / "bin/goose").chmod(0o644)
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert ("error", "paths", f"log dir {tmp_path / 'state/logs'} is not a folder") in found
    assert (
        "error",
        "goose",
        f"TINYSCHEDULER_GOOSE_BIN={str(tmp_path / 'bin/goose')!r}: not found or not executable",
    ) in found


def test_unreachable_tinytask_is_only_a_warning(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert len(found) == 1
    level, name, detail = found[0]
    assert (level, name) == ("warning", "tinytask")
    assert detail.startswith(f"{closed_port_url}/health unreachable")


def test_registry_problems_are_errors_and_skip_the_agent_checks(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    write_registry(tmp_path, [{"agentName": "dev"}, {"agentName": "dev", "agentType": "q", "slots": -1}])
    found = [f for f in failures(run_checks(loaded(tmp_path, closed_port_url), fix=False)) if f[1] != "tinytask"]
    registry = tmp_path / "agent-control.json"
    assert found == [
        ("error", "agent registry", f"{registry}[0].agentType: missing"),
        ("error", "agent registry", f"{registry}[1].slots: -1 is out of range, expected a whole number from 0 to 1000"),
        ("error", "agent registry", f"{registry}[1].agentName: duplicate 'dev', already at [0]"),
    ]


def test_zero_slots_and_their_missing_recipe_are_warnings(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    write_registry(
        tmp_path, [{"agentName": "dev", "agentType": "dev"}, {"agentName": "idle", "agentType": "dev", "slots": 0}]
    )
    found = [f for f in failures(run_checks(loaded(tmp_path, closed_port_url), fix=False)) if f[1] != "tinytask"]
    assert found == [
        ("warning", "slots", "agent 'idle' has 0 slots: it never runs"),
        ("warning", "recipe", f"agent 'idle': {tmp_path / 'recipes/idle.yaml'}: recipe not found"),
    ]


def test_missing_recipe_of_a_working_agent_is_an_error(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "recipes/qa.yaml").unlink()
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert ("error", "recipe", f"agent 'qa': {tmp_path / 'recipes/qa.yaml'}: recipe not found") in found


def test_legacy_mode_checks_the_recipes_of_the_limited_agents(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "agent-control.json").unlink()
    checks = run_checks(loaded(tmp_path, closed_port_url, agent_limits=["dev=1", "ops=1"]), fix=False)
    assert ("error", "recipe", f"agent 'ops': {tmp_path / 'recipes/ops.yaml'}: recipe not found") in failures(checks)
    assert any(c.ok and "legacy mode" in c.detail for c in checks)


def test_legacy_mode_without_limits_warns_that_nothing_runs(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "agent-control.json").unlink()
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert (
        "warning",
        "agent registry",
        "no registry and no TINYSCHEDULER_AGENT_LIMITS: no agent will ever run",
    ) in found


def test_open_running_dir_is_a_warning(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "state/running").chmod(0o755)
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert (
        "warning",
        "paths",
        f"running dir {tmp_path / 'state/running'} has mode 0755; 0700 keeps leases private",
    ) in found


def test_unknown_env_file_names_are_warnings(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / ".env").write_text("TINYSCHEDULER_LOOP_INTERVAL=5\n")
    found = failures(run_checks(loaded(tmp_path, closed_port_url), fix=False))
    assert (
        "warning",
        "settings",
        f"{tmp_path / '.env'} line 1: TINYSCHEDULER_LOOP_INTERVAL is not a setting (ignored)",
    ) in found


def test_fix_creates_state_folders_and_a_placeholder_registry(tmp_path: Path, closed_port_url: str) -> None:
    checks = run_checks(loaded(tmp_path, closed_port_url), fix=True)
    created = [c.detail for c in checks if c.name == "fix"]
    assert created == [
        f"created recipes dir {tmp_path / 'recipes'}",
        f"created running dir {tmp_path / 'state/running'}",
        f"created log dir {tmp_path / 'state/logs'}",
        f"created quarantine dir {tmp_path / 'state/quarantine'}",
        f"created placeholder agent registry {tmp_path / 'agent-control.json'}",
    ]
    assert stat.S_IMODE((tmp_path / "state/running").stat().st_mode) == 0o700
    assert json.loads((tmp_path / "agent-control.json").read_text()) == PLACEHOLDER_REGISTRY
    # The placeholder validates and keeps everything as in legacy mode: its agent never runs.
    found = failures(checks)
    assert ("warning", "slots", "agent 'example-agent' has 0 slots: it never runs") in found
    # What remains is what --fix must not invent: the goose binary (the recipes folder it makes, empty).
    assert [(name, detail) for level, name, detail in found if level == "error"] == [
        ("goose", f"TINYSCHEDULER_GOOSE_BIN={str(tmp_path / 'bin/goose')!r}: not found or not executable"),
    ]
    assert list((tmp_path / "recipes").iterdir()) == []


def test_fix_never_overwrites(tmp_path: Path, closed_port_url: str) -> None:
    ready_host(tmp_path)
    (tmp_path / "state/logs/keep.log").write_text("old")
    (tmp_path / "state/running").chmod(0o750)
    before = (tmp_path / "agent-control.json").read_text()
    checks = run_checks(loaded(tmp_path, closed_port_url), fix=True)
    assert [c for c in checks if c.name == "fix"] == []
    assert (tmp_path / "agent-control.json").read_text() == before
    assert (tmp_path / "state/logs/keep.log").read_text() == "old"
    assert stat.S_IMODE((tmp_path / "state/running").stat().st_mode) == 0o750


def test_fix_does_not_create_a_missing_base_path(tmp_path: Path, closed_port_url: str) -> None:
    checks = run_checks(loaded(tmp_path, closed_port_url, base_path="typo"), fix=True)
    assert ("error", "fix", f"base path {tmp_path / 'typo'} is not a folder; nothing created") in failures(checks)
    assert not (tmp_path / "typo").exists()


def recipe(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return [p.replace(f"{path}: ", "") for p in recipe_problems(path)]


def test_good_recipe_has_no_problems(tmp_path: Path) -> None:
    assert recipe(tmp_path, GOOD_RECIPE) == []


def test_unquoted_template_is_fine_since_goose_renders_before_parsing(tmp_path: Path) -> None:
    text = "title: t\ndescription: d\nprompt: {{ task_id }}\nparameters:\n  - key: task_id\n    requirement: required\n"
    assert recipe(tmp_path, text) == []


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            "title: t\n",
            [
                "description: missing or empty (goose needs it for a headless run)",
                "prompt: missing or empty (goose needs it for a headless run)",
            ],
        ),
        (
            "title: t\ndescription: '  '\nprompt: p\n",
            ["description: missing or empty (goose needs it for a headless run)"],
        ),
        ("- a list\n", ["expected a YAML mapping with title, description and prompt"]),
        ("title: [unclosed\n", ["invalid YAML at line 2: expected ',' or ']', but got '<stream end>'"]),
        (
            "title: t\ndescription: d\nprompt: do {{ task_id }} for {{ who }}\n"
            "parameters:\n  - key: task_id\n    requirement: required\n",
            ["{{ who }} is not a declared parameter"],
        ),
        (
            "title: t\ndescription: d\nprompt: p\nparameters:\n  - key: task_id\n    requirement: required\n",
            ["parameter 'task_id' is declared but never used (goose refuses that)"],
        ),
        (
            "title: t\ndescription: d\nprompt: '{{ repo }}'\n"
            "parameters:\n  - key: repo\n    requirement: user_prompt\n",
            ["parameters[0] 'repo': required without a default, but the scheduler passes only agent, task_id"],
        ),
        ("title: t\ndescription: d\nprompt: p\nparameters: nope\n", ["parameters: expected a list"]),
        (
            "title: t\ndescription: d\nprompt: p\nparameters:\n  - input_type: string\n",
            ["parameters[0]: expected a mapping with a key"],
        ),
    ],
)
def test_recipe_problems(tmp_path: Path, text: str, problems: list[str]) -> None:
    assert recipe(tmp_path, text) == problems


def test_recipe_defaults_and_builtins_are_fine(tmp_path: Path) -> None:
    text = (
        "title: t\ndescription: d\nprompt: '{{ repo }} in {{ recipe_dir }}'\n"
        "parameters:\n  - key: repo\n    requirement: required\n    default: main\n"
    )
    assert recipe(tmp_path, text) == []
