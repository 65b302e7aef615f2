"""Settings: precedence and sources, path resolution, every bad-value message, redaction."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tinyscheduler.config.settings import (
    SETTINGS,
    ConfigError,
    LoadedSettings,
    Settings,
    load_settings,
)
from tinyscheduler.core.redact import redacted


def load(
    tmp_path: Path, *, env: dict[str, str] | None = None, cli: dict | None = None, env_file: Path | None = None
) -> LoadedSettings:
    return load_settings(env_file=env_file, cli=cli or {}, environ=env or {}, cwd=tmp_path)


def problems(tmp_path: Path, **kwargs) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, **kwargs)
    return caught.value.problems


def test_defaults(tmp_path: Path) -> None:
    loaded = load(tmp_path)
    s = loaded.settings
    assert s.base_path == tmp_path
    assert s.running_dir == tmp_path / "state/running"
    assert s.log_dir == tmp_path / "state/logs"
    assert s.recipes_dir == tmp_path / "recipes"
    assert s.agent_control_file == tmp_path / "agent-control.json"
    assert s.lock_file == tmp_path / "state/tinyscheduler.lock"
    assert (s.loop_interval_sec, s.heartbeat_sec, s.max_runtime_sec) == (60, 15, 3600)
    assert (s.default_slots, s.max_attempts, s.retry_base_sec, s.stop_grace_sec) == (1, 3, 60, 10)
    assert s.run_log_max_bytes == 10 * 1024 * 1024
    assert s.enabled and not s.dry_run and not s.disable_blocking
    assert s.agent_limits == {}
    assert (s.log_level, s.log_format, s.tinytask_protocol) == ("INFO", "auto", "auto")
    assert set(loaded.sources.values()) == {"default"}
    assert loaded.env_file is None


def test_derived_locations(tmp_path: Path) -> None:
    s = load(tmp_path).settings
    assert s.state_dir == tmp_path / "state"
    assert s.quarantine_dir == tmp_path / "state/quarantine"
    assert s.attempts_file == tmp_path / "state/attempts.jsonl"
    assert s.last_pass_file == tmp_path / "state/last_pass.json"
    assert s.task_log_dir == tmp_path / "state/logs/tasks"


def test_precedence_cli_over_env_over_env_file_over_default(tmp_path: Path) -> None:
    env_file = tmp_path / "sched.env"
    env_file.write_text(
        "# comment\n"
        "TINYSCHEDULER_LOOP_INTERVAL_SEC=10\n"
        "TINYSCHEDULER_HEARTBEAT_SEC=11\n"
        "export TINYSCHEDULER_MAX_RUNTIME_SEC='12'\n"
    )
    loaded = load(
        tmp_path,
        env_file=env_file,
        env={"TINYSCHEDULER_LOOP_INTERVAL_SEC": "20", "TINYSCHEDULER_HEARTBEAT_SEC": "21"},
        cli={"loop_interval_sec": "30", "default_slots": None},
    )
    s = loaded.settings
    assert (s.loop_interval_sec, s.heartbeat_sec, s.max_runtime_sec) == (30, 21, 12)
    assert loaded.sources["loop_interval_sec"] == "cli"
    assert loaded.sources["heartbeat_sec"] == "env"
    assert loaded.sources["max_runtime_sec"] == "env-file"
    assert loaded.sources["default_slots"] == "default"  # None means "flag not given"
    assert loaded.env_file == env_file


def test_dot_env_in_working_directory_is_read_when_no_env_file_is_given(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TINYSCHEDULER_DRY_RUN=true\n")
    loaded = load(tmp_path)
    assert loaded.settings.dry_run is True
    assert loaded.sources["dry_run"] == "env-file"
    assert loaded.env_file == tmp_path / ".env"


def test_explicit_env_file_replaces_dot_env(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("TINYSCHEDULER_DRY_RUN=true\n")
    (tmp_path / "other.env").write_text("TINYSCHEDULER_DEFAULT_SLOTS=4\n")
    loaded = load(tmp_path, env_file=Path("other.env"))
    assert loaded.settings.dry_run is False
    assert loaded.settings.default_slots == 4
    assert loaded.env_file == tmp_path / "other.env"


def test_missing_explicit_env_file_is_an_error(tmp_path: Path) -> None:
    assert problems(tmp_path, env_file=tmp_path / "nope.env") == [f"env file {tmp_path / 'nope.env'}: not found"]


def test_env_file_syntax(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text(
        'TINYSCHEDULER_GOOSE_ARGS="--with-builtin \\"developer\\""\n'
        "OTHER_TOOL_VAR=ignored\n"
        "; also a comment\n"
        "\n"
        "TINYSCHEDULER_GOOSE_BIN = 'bin/goose $HOME'\n"
        "TINYSCHEDULER_LOOP_INTRVAL_SEC=5\n"
    )
    loaded = load(tmp_path, env_file=env_file)
    assert loaded.settings.goose_args == '--with-builtin "developer"'
    assert loaded.settings.goose_argv == ["--with-builtin", "developer"]
    assert loaded.settings.goose_bin == str(tmp_path / "bin/goose $HOME")  # no expansion
    assert loaded.unknown_keys == (f"{env_file} line 6: TINYSCHEDULER_LOOP_INTRVAL_SEC",)


def test_env_file_bad_lines_name_file_and_line(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("just words\nTINYSCHEDULER_GOOSE_ARGS='open\nTINYSCHEDULER_HEARTBEAT_SEC=x\n")
    assert problems(tmp_path, env_file=env_file) == [
        f"{env_file} line 1: expected NAME=VALUE, got 'just words'",
        f"{env_file} line 2: TINYSCHEDULER_GOOSE_ARGS: unterminated ' quote",
        f"{env_file} line 3: TINYSCHEDULER_HEARTBEAT_SEC='x': expected a whole number of seconds from 1 to 3600",
    ]


def test_relative_paths_resolve_against_base_path(tmp_path: Path) -> None:
    loaded = load(
        tmp_path,
        env={
            "TINYSCHEDULER_RUNNING_DIR": "leases",
            "TINYSCHEDULER_LOG_DIR": "/var/log/ts",
            "TINYSCHEDULER_BASE_PATH": "srv",
        },
        cli={"recipes_dir": "my-recipes"},
    )
    s = loaded.settings
    assert s.base_path == tmp_path / "srv"  # a relative base path resolves against the cwd
    assert s.running_dir == tmp_path / "srv/leases"
    assert s.recipes_dir == tmp_path / "srv/my-recipes"
    assert s.log_dir == Path("/var/log/ts")
    assert s.state_dir == tmp_path / "srv"


def test_base_path_flag_moves_every_relative_path(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    s = load(tmp_path, cli={"base_path": str(elsewhere)}).settings
    for name in ("running_dir", "log_dir", "recipes_dir", "agent_control_file", "lock_file"):
        assert getattr(s, name).is_relative_to(elsewhere), name


def test_goose_bin_bare_name_stays_for_path_lookup_and_path_resolves(tmp_path: Path) -> None:
    assert load(tmp_path, cli={"goose_bin": "goose"}).settings.goose_bin == "goose"
    assert load(tmp_path, cli={"goose_bin": "./bin/goose"}).settings.goose_bin == str(tmp_path / "bin/goose")
    tool = tmp_path / "bin" / "goose"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    s = load(tmp_path, cli={"goose_bin": "goose"}).settings
    assert s.goose_executable(search_path=str(tool.parent)) == tool
    assert s.goose_executable(search_path=str(tmp_path)) is None


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("http://127.0.0.1:3000", "http://127.0.0.1:3000"),
        ("http://127.0.0.1:3000/", "http://127.0.0.1:3000"),
        ("http://tt.example:8080/mcp", "http://tt.example:8080"),
        ("https://tt.example/prefix/mcp/", "https://tt.example/prefix"),
    ],
)
def test_mcp_endpoint_accepts_trailing_mcp(tmp_path: Path, endpoint: str, base: str) -> None:
    s = load(tmp_path, env={"TINYSCHEDULER_MCP_ENDPOINT": endpoint}).settings
    assert s.tinytask_url == base
    assert s.mcp_url == f"{base}/mcp"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"dev": 2, "qa": 0}', {"dev": 2, "qa": 0}),
        ("dev:2,qa:0", {"dev": 2, "qa": 0}),
        (" dev : 2 , ", {"dev": 2}),
        ("", {}),
    ],
)
def test_agent_limits_formats(tmp_path: Path, value: str, expected: dict[str, int]) -> None:
    s = load(tmp_path, env={"TINYSCHEDULER_AGENT_LIMITS": value}).settings
    assert s.agent_limits == expected


def test_agent_limit_flags_replace_the_variable(tmp_path: Path) -> None:
    loaded = load(tmp_path, env={"TINYSCHEDULER_AGENT_LIMITS": "dev:1,qa:1"}, cli={"agent_limits": ["dev=3", "ops=2"]})
    assert loaded.settings.agent_limits == {"dev": 3, "ops": 2}
    assert loaded.sources["agent_limits"] == "cli"


def test_case_insensitive_choices(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        env={
            "TINYSCHEDULER_LOG_LEVEL": "debug",
            "TINYSCHEDULER_LOG_FORMAT": "JSON",
            "TINYSCHEDULER_TINYTASK_PROTOCOL": "Rest",
            "TINYSCHEDULER_ENABLED": "no",
        },
    ).settings
    assert (s.log_level, s.log_format, s.tinytask_protocol, s.enabled) == ("DEBUG", "json", "rest", False)


BAD_VALUES = [
    ("loop_interval_sec", "abc", "expected a whole number of seconds from 1 to 86400"),
    ("loop_interval_sec", "0", "expected a whole number of seconds from 1 to 86400"),
    ("heartbeat_sec", "-5", "expected a whole number of seconds from 1 to 3600"),
    ("max_runtime_sec", "1.5", "expected a whole number of seconds from 1 to 604800"),
    ("run_log_max_bytes", "10MB", "expected a whole number of bytes from 1024 to 1099511627776"),
    ("max_attempts", "0", "expected a whole number from 1 to 1000"),
    ("log_keep_days", "", "expected a whole number of days from 1 to 3650"),
    ("default_slots", "-1", "expected a whole number from 0 to 1000"),
    ("idle_timeout_sec", "soon", "expected a whole number of seconds from 0 to 604800"),
    ("retry_base_sec", "-1", "expected a whole number of seconds from 0 to 86400"),
    ("shutdown_grace_sec", "x", "expected a whole number of seconds from 0 to 86400"),
    ("stop_grace_sec", "0", "expected a number of seconds above 0, at most 3600"),
    ("stop_grace_sec", "inf", "expected a number of seconds above 0, at most 3600"),  # SIGKILL would never come
    ("dry_run", "maybe", "expected true or false"),
    ("enabled", "2", "expected true or false"),
    ("disable_blocking", "", "expected true or false"),
    ("log_level", "loud", "expected DEBUG, INFO, WARNING or ERROR"),
    ("log_format", "xml", "expected auto, console, json or journal"),
    ("tinytask_protocol", "grpc", "expected rest, mcp or auto"),
    ("mcp_endpoint", "127.0.0.1:3000", "expected an http:// or https:// URL such as http://127.0.0.1:3000"),
    ("mcp_endpoint", "ftp://host", "expected an http:// or https:// URL such as http://127.0.0.1:3000"),
    ("goose_bin", " ", "expected a program name or path"),
    ("goose_args", '--text "unclosed', "expected shell-style arguments (No closing quotation)"),
    ("running_dir", "", "expected a path"),
    ("base_path", " ", "expected a path"),
    ("agent_limits", "dev:x", "slots of agent 'dev' must be a whole number from 0 to 1000, got 'x'"),
    ("agent_limits", "dev", "expected NAME=N or NAME:N, got 'dev'"),
    ("agent_limits", "bad name:1", "agent name 'bad name' is not 1-64 letters, digits, '_', '.', '-'"),
    ("agent_limits", '{"dev": -1}', "slots of agent 'dev' must be a whole number from 0 to 1000, got -1"),
    ("agent_limits", '{"dev": true}', "slots of agent 'dev' must be a whole number from 0 to 1000, got True"),
    ("agent_limits", '{"dev": 1', "invalid JSON at column 10: Expecting ',' delimiter"),
]


@pytest.mark.parametrize(("name", "value", "detail"), BAD_VALUES)
def test_bad_value_from_env_names_variable_value_and_rule(tmp_path: Path, name: str, value: str, detail: str) -> None:
    var = f"TINYSCHEDULER_{name.upper()}"
    assert problems(tmp_path, env={var: value}) == [f"{var}={value!r}: {detail}"]


@pytest.mark.parametrize(
    ("name", "flag", "detail"),
    [
        ("loop_interval_sec", "--loop-interval", "expected a whole number of seconds from 1 to 86400"),
        ("heartbeat_sec", "--heartbeat-interval", "expected a whole number of seconds from 1 to 3600"),
        ("max_runtime_sec", "--max-runtime", "expected a whole number of seconds from 1 to 604800"),
        ("stop_grace_sec", "--stop-grace", "expected a number of seconds above 0, at most 3600"),
    ],
)
def test_bad_value_from_cli_names_the_flag(tmp_path: Path, name: str, flag: str, detail: str) -> None:
    assert problems(tmp_path, cli={name: "0"}) == [f"{flag}='0': {detail}"]


def test_bad_agent_limit_flag_names_the_occurrence(tmp_path: Path) -> None:
    assert problems(tmp_path, cli={"agent_limits": ["dev=1", "qa", "ops=-2"]}) == [
        "--agent-limit='qa': expected NAME=N or NAME:N, got 'qa'",
        "--agent-limit='ops=-2': slots of agent 'ops' must be a whole number from 0 to 1000, got '-2'",
    ]


def test_agent_limits_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    value = '{"dev": ' + "[" * 100_000
    [problem] = problems(tmp_path, env={"TINYSCHEDULER_AGENT_LIMITS": value})
    assert problem.endswith(": invalid JSON: nested too deeply")


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(
        tmp_path, env={"TINYSCHEDULER_HEARTBEAT_SEC": "x", "TINYSCHEDULER_DRY_RUN": "x"}, cli={"max_runtime_sec": "x"}
    )
    assert len(found) == 3


def test_every_setting_has_a_variable_a_flag_and_help() -> None:
    assert {info.name for info in SETTINGS} == {spec.name for spec in dataclasses.fields(Settings)}
    for info in SETTINGS:
        assert info.env_var == f"TINYSCHEDULER_{info.name.upper()}"
        assert info.flag.startswith("--") and info.help and info.expect.startswith("expected")
    assert len({info.flag for info in SETTINGS}) == len(SETTINGS)


@pytest.mark.parametrize("name", ["API_KEY", "tinytask_token", "client_secret", "db_password"])
def test_secret_names_are_redacted(name: str) -> None:
    assert redacted(name, "hunter2") == "***"


def test_other_names_are_not_redacted() -> None:
    assert redacted("mcp_endpoint", "http://x") == "http://x"
    assert redacted("api_key", "") == ""  # nothing to hide, and "unset" stays visible


def test_a_password_inside_a_url_is_masked_whatever_the_setting(tmp_path: Path) -> None:
    assert redacted("mcp_endpoint", "http://bob:s3cret@127.0.0.1:3000/mcp") == "http://bob:***@127.0.0.1:3000/mcp"
    assert redacted("mcp_endpoint", "http://127.0.0.1:3000") == "http://127.0.0.1:3000"
    loaded = load(tmp_path, env={"TINYSCHEDULER_MCP_ENDPOINT": "https://ops:hunter2@tinytask.local:8443"})
    shown = {row["name"]: row["value"] for row in loaded.describe()}
    assert shown["mcp_endpoint"] == "https://ops:***@tinytask.local:8443"


def test_describe_lists_every_setting_with_source(tmp_path: Path) -> None:
    loaded = load(tmp_path, env={"TINYSCHEDULER_AGENT_LIMITS": "dev:2"})
    rows = {row["name"]: row for row in loaded.describe()}
    assert set(rows) == {spec.name for spec in dataclasses.fields(Settings)}
    assert rows["agent_limits"] == {
        "name": "agent_limits",
        "env_var": "TINYSCHEDULER_AGENT_LIMITS",
        "value": {"dev": 2},
        "source": "env",
    }
    assert rows["running_dir"]["value"] == str(tmp_path / "state/running")


def test_load_has_no_side_effects_and_reload_repeats_it(tmp_path: Path) -> None:
    env_file = tmp_path / "x.env"
    env_file.write_text("TINYSCHEDULER_DEFAULT_SLOTS=2\n")
    loaded = load(tmp_path, env_file=Path("x.env"), cli={"dry_run": True})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.env"]
    env_file.write_text("TINYSCHEDULER_DEFAULT_SLOTS=5\n")
    again = loaded.reload(environ={})
    assert again.settings.default_slots == 5 and again.settings.dry_run is True
    assert again.settings.base_path == tmp_path
    env_file.write_text("TINYSCHEDULER_DEFAULT_SLOTS=many\n")
    with pytest.raises(ConfigError):
        loaded.reload(environ={})


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load(tmp_path).settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.dry_run = True  # type: ignore[misc]
    assert dataclasses.replace(s, dry_run=True).dry_run is True


def test_unknown_cli_key_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        load(tmp_path, cli={"loop_interval": 5})


def test_with_overrides_keeps_given_values(tmp_path: Path) -> None:
    old = load(tmp_path, cli={"lock_file": "old.lock"})
    new = load(tmp_path, cli={"lock_file": "new.lock", "default_slots": "3"})
    kept = new.with_overrides({"lock_file": old.settings.lock_file})
    assert kept.settings.lock_file == tmp_path / "old.lock"
    assert kept.settings.default_slots == 3
    assert kept.cli == new.cli
