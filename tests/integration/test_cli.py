"""The CLI as a real subprocess: exit codes, help, config sources, global options, kill switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.config.settings import SETTINGS


def tinyscheduler(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A clean environment: the developer's TINYSCHEDULER_* variables must not leak in.
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    return subprocess.run(
        [sys.executable, "-m", "tinyscheduler", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def shown(result: subprocess.CompletedProcess[str]) -> dict[str, dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)["settings"]}


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["config", "--help"], ["validate-config", "--help"]])
def test_help_at_every_level(tmp_path: Path, args: list[str]) -> None:
    result = tinyscheduler(tmp_path, *args)
    assert result.returncode == 0
    assert "usage: tinyscheduler" in result.stdout
    assert "--env-file" in result.stdout and "--base-path" in result.stdout


@pytest.mark.parametrize(
    ("args", "answers"),
    [
        (["demo", "--help"], "number of tasks, 5 to 500"),
        (["logs", "--help"], "TASK_ID the TinyTask task id"),
        (["report", "--help"], "table (default), json"),
    ],
)
def test_operator_command_help_explains_every_argument(tmp_path: Path, args: list[str], answers: str) -> None:
    result = tinyscheduler(tmp_path, *args)
    assert result.returncode == 0
    assert answers in " ".join(result.stdout.split())


def test_run_help_describes_every_setting_flag_with_variable_and_default(tmp_path: Path) -> None:
    text = " ".join(tinyscheduler(tmp_path, "run", "--help").stdout.split())
    for info in SETTINGS:
        assert info.flag in text and info.env_var in text, info.name
    assert "TINYSCHEDULER_LOOP_INTERVAL_SEC; default: 60)" in text
    for flag in ("--once", "--daemon", "--json"):
        assert flag in text


def test_no_subcommand_is_a_usage_error(tmp_path: Path) -> None:
    result = tinyscheduler(tmp_path)
    assert result.returncode == 2
    assert "required: SUBCOMMAND" in result.stderr


def test_a_usage_error_is_one_line_pointing_at_help(tmp_path: Path) -> None:
    result = tinyscheduler(tmp_path, "logs", "abc")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "tinyscheduler logs: error: argument TASK_ID: invalid int value: 'abc' (see `tinyscheduler logs --help`)"
    ]


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    result = tinyscheduler(
        tmp_path, "run", "--once", "--max-runtime", "soon", env={"TINYSCHEDULER_LOOP_INTERVAL_SEC": "abc"}
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: TINYSCHEDULER_LOOP_INTERVAL_SEC='abc': expected a whole number of seconds from 1 to 86400",
        "error: --max-runtime='soon': expected a whole number of seconds from 1 to 604800",
    ]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_missing_env_file_exits_2(tmp_path: Path) -> None:
    result = tinyscheduler(tmp_path, "--env-file", "absent.env", "config", "--show")
    assert result.returncode == 2
    assert result.stderr == f"error: env file {tmp_path / 'absent.env'}: not found\n"


def test_config_show_json_reports_each_source(tmp_path: Path) -> None:
    (tmp_path / "site.env").write_text("TINYSCHEDULER_HEARTBEAT_SEC=5\nTINYSCHEDULER_MAX_RUNTIME_SEC=100\n")
    result = tinyscheduler(
        tmp_path,
        "config",
        "--show",
        "--json",
        "--env-file",
        "site.env",
        "--loop-interval",
        "7",
        env={"TINYSCHEDULER_MAX_RUNTIME_SEC": "200"},
    )
    rows = shown(result)
    assert json.loads(result.stdout)["env_file"] == str(tmp_path / "site.env")
    assert (rows["loop_interval_sec"]["value"], rows["loop_interval_sec"]["source"]) == (7, "cli")
    assert (rows["max_runtime_sec"]["value"], rows["max_runtime_sec"]["source"]) == (200, "env")
    assert (rows["heartbeat_sec"]["value"], rows["heartbeat_sec"]["source"]) == (5, "env-file")
    assert (rows["default_slots"]["value"], rows["default_slots"]["source"]) == (1, "default")
    assert rows["running_dir"]["env_var"] == "TINYSCHEDULER_RUNNING_DIR"


def test_dot_env_in_the_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TINYSCHEDULER_DRY_RUN=true\n")
    rows = shown(tinyscheduler(tmp_path, "config", "--json"))
    assert (rows["dry_run"]["value"], rows["dry_run"]["source"]) == (True, "env-file")


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_before_or_after_the_subcommand(tmp_path: Path, where: str) -> None:
    options = ["--base-path", "srv", "--log-level", "debug", "--log-format", "json"]
    args = [*options, "config", "--json"] if where == "before" else ["config", "--json", *options]
    rows = shown(tinyscheduler(tmp_path, *args))
    assert rows["base_path"]["value"] == str(tmp_path / "srv")
    assert rows["running_dir"]["value"] == str(tmp_path / "srv/state/running")
    assert (rows["log_level"]["value"], rows["log_level"]["source"]) == ("DEBUG", "cli")
    assert rows["log_format"]["value"] == "json"


def test_global_option_after_the_subcommand_wins(tmp_path: Path) -> None:
    rows = shown(tinyscheduler(tmp_path, "--log-level", "error", "config", "--json", "--log-level", "warning"))
    assert rows["log_level"]["value"] == "WARNING"


def test_config_show_human(tmp_path: Path) -> None:
    result = tinyscheduler(
        tmp_path, "config", "--show", "--agent-limit", "dev=2", env={"TINYSCHEDULER_GOOSE_BIN": "/opt/goose"}
    )
    assert result.returncode == 0
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert lines["agent_limits"] == ["agent_limits", '{"dev":', "2}", "cli", "TINYSCHEDULER_AGENT_LIMITS"]
    assert lines["goose_bin"] == ["goose_bin", "/opt/goose", "env", "TINYSCHEDULER_GOOSE_BIN"]
    assert result.stdout.splitlines()[0] == "env file: none"


@pytest.mark.parametrize(
    ("args", "env", "origin"),
    [
        (["run", "--once"], {"TINYSCHEDULER_ENABLED": "false"}, "TINYSCHEDULER_ENABLED=false in the environment"),
        (["run", "--daemon", "--no-enabled"], {}, "--no-enabled"),
    ],
)
def test_kill_switch_refuses_to_run_and_touches_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], origin: str
) -> None:
    result = tinyscheduler(tmp_path, *args, env=env)
    assert result.returncode == 0
    assert result.stderr == f"tinyscheduler: disabled by {origin}; nothing was done (a --dry-run still works)\n"
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_kill_switch_from_the_env_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "off.env").write_text("TINYSCHEDULER_ENABLED=no\n")
    result = tinyscheduler(tmp_path, "run", "--once", "--env-file", "off.env")
    assert result.returncode == 0
    assert f"TINYSCHEDULER_ENABLED=false in {tmp_path / 'off.env'}" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["off.env"]


def test_validate_config_exit_codes_and_fix(tmp_path: Path) -> None:
    unreachable = {"TINYSCHEDULER_MCP_ENDPOINT": "http://127.0.0.1:9"}
    goose = tmp_path / "goose"
    goose.write_text("#!/bin/sh\n")
    goose.chmod(0o755)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes/example-agent.yaml").write_text(
        "title: t\ndescription: d\nprompt: 'task {{ task_id }}'\nparameters:\n  - key: task_id\n"
    )
    before = tinyscheduler(tmp_path, "validate-config", "--goose-bin", "./goose", env=unreachable)
    assert before.returncode == 1
    assert f"FAIL  paths: running dir {tmp_path / 'state/running'} does not exist" in before.stdout
    fixed = tinyscheduler(tmp_path, "validate-config", "--fix", "--goose-bin", "./goose", env=unreachable)
    assert fixed.returncode == 0, fixed.stdout
    assert f"PASS  fix: created running dir {tmp_path / 'state/running'}" in fixed.stdout
    assert "WARN  tinytask: http://127.0.0.1:9/health unreachable" in fixed.stdout
    assert fixed.stdout.splitlines()[-1] == "0 error(s), 2 warning(s)"


@pytest.mark.parametrize(
    ("args", "env", "origin"),
    [
        (["run", "--once", "--base-path", "nowhere"], {}, "--base-path"),
        (["run", "--daemon"], {"TINYSCHEDULER_BASE_PATH": "nowhere"}, "TINYSCHEDULER_BASE_PATH"),
        (["run", "--once", "--dry-run"], {"TINYSCHEDULER_BASE_PATH": "nowhere"}, "TINYSCHEDULER_BASE_PATH"),
    ],
)
def test_run_refuses_a_base_path_that_does_not_exist_and_creates_nothing(
    tmp_path: Path, args: list[str], env: dict[str, str], origin: str
) -> None:
    # A typo in the base path must not turn into a fresh empty tree that a daemon runs in.
    result = tinyscheduler(tmp_path, *args, env={"TINYSCHEDULER_MCP_ENDPOINT": "http://127.0.0.1:9", **env})
    assert result.returncode == 2
    assert result.stderr == f"error: {origin}={str(tmp_path / 'nowhere')!r}: not an existing folder\n"
    assert list(tmp_path.iterdir()) == []


def test_run_with_a_state_folder_it_cannot_use_says_so_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file where the state folder belongs\n")
    result = tinyscheduler(
        tmp_path,
        "run",
        "--once",
        env={"TINYSCHEDULER_MCP_ENDPOINT": "http://127.0.0.1:9", "TINYSCHEDULER_LOG_DIR": "logs"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith(f"error: cannot use {tmp_path / 'state'}/") and line.endswith(": Not a directory")


@pytest.mark.parametrize("args", [["config", "--show"], ["status"]])
def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path, args: list[str]) -> None:
    # As `tinyscheduler config | head -1` once head has exited: the reader is gone before we write.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "tinyscheduler", *args],
            cwd=tmp_path,
            # Configured, so no "no configuration found" note on stderr.
            env={**os.environ, "TINYSCHEDULER_BASE_PATH": str(tmp_path)},
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


#: What `--help` and `status` need not load: validation, HTTP, logging and event-loop libraries.
HEAVY = ("pydantic", "pydantic_core", "pydantic_settings", "httpx", "h11", "structlog", "anyio", "asyncio", "rich")


@pytest.mark.parametrize("args", [["--help"], ["status"], ["status", "--json"]])
def test_help_and_status_load_no_heavy_library(tmp_path: Path, args: list[str]) -> None:
    """They start fast because they import only what they use (counted as modules, not timed)."""
    code = (
        "import sys\n"
        "from tinyscheduler.cli.main import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('LOADED', sorted(name for name in {HEAVY!r} if name in sys.modules), file=sys.stderr)\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("TINYSCHEDULER_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=base, capture_output=True, text=True, timeout=60
    )
    assert "LOADED []" in result.stderr, result.stderr[-2000:]
