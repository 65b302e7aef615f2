"""Hostile configuration: whatever the env file, the environment or the registry holds, loading
either succeeds or raises the typed ConfigError with one line per problem. Never another exception,
never a hang (a FIFO, a device, a symlink loop), never a value outside its documented range."""

from __future__ import annotations

import json
import os
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyscheduler.adapters.reading import FileTooLarge, NotRegularFile, read_bytes
from tinyscheduler.config.registry import RegistryError, configured_registry, load_registry, parse_registry
from tinyscheduler.config.settings import SETTINGS, ConfigError, LoadedSettings, load_settings

T = TypeVar("T")
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
VARIABLES = [info.env_var for info in SETTINGS]
NUMERIC = [info for info in SETTINGS if info.range is not None]


def load(tmp_path: Path, env: dict[str, str] | None = None, env_file: Path | None = None) -> LoadedSettings:
    return load_settings(env_file=env_file, cli={}, environ=env or {}, cwd=tmp_path)


# --- the env file and the environment -------------------------------------------------------------

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["99999999999", "-1", "0", "1e400", "nan", "inf", "~nosuchuser/x", "~", "\x00", "9" * 5000]),
)
lines = st.one_of(
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from(VARIABLES), values),
    st.builds(lambda k, v: f'{k}="{v}"', st.sampled_from(VARIABLES), values),
    st.text(max_size=30),
)


@PROPERTIES
@given(content=st.one_of(st.binary(max_size=300), st.lists(lines, max_size=8).map("\n".join).map(str.encode)))
def test_any_env_file_loads_or_is_one_config_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "hostile.env"
    path.write_bytes(content)
    check(attempt(lambda: load(tmp_path, env_file=path)))


@PROPERTIES
@given(env=st.dictionaries(st.sampled_from(VARIABLES), values, max_size=6))
def test_any_environment_loads_or_is_one_config_error(tmp_path: Path, env: dict[str, str]) -> None:
    check(attempt(lambda: load(tmp_path, env=env)))


def attempt(load_it: Callable[[], T]) -> T | ConfigError:
    """What loading gave: its result, or the ConfigError it raised (any other exception fails)."""
    try:
        return load_it()
    except ConfigError as exc:
        return exc


def check(result: LoadedSettings | ConfigError) -> None:
    if isinstance(result, ConfigError):
        assert result.problems and all(problem and "\n" not in problem for problem in result.problems)
        return
    for info in NUMERIC:
        assert info.range is not None
        low, high = info.range
        assert low <= getattr(result.settings, info.name) <= high, info.name


@pytest.mark.parametrize("info", NUMERIC, ids=lambda info: info.name)
def test_every_numeric_setting_refuses_values_past_its_range(tmp_path: Path, info: Any) -> None:
    low, high = info.range
    for value in (str(int(high) + 1), str(int(high) * 1000), str(int(low) - 1)):
        with pytest.raises(ConfigError) as caught:
            load(tmp_path, env={info.env_var: value})
        (problem,) = caught.value.problems
        assert problem.startswith(f"{info.env_var}={value!r}: expected") and str(int(high)) in problem
    assert getattr(load(tmp_path, env={info.env_var: str(int(high))}).settings, info.name) == high


def test_the_measured_log_keep_days_is_refused_with_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={"TINYSCHEDULER_LOG_KEEP_DAYS": "99999999999"})
    assert caught.value.problems == [
        "TINYSCHEDULER_LOG_KEEP_DAYS='99999999999': expected a whole number of days from 1 to 3650"
    ]


def test_a_nul_byte_in_the_env_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_bytes(b'TINYSCHEDULER_GOOSE_ARGS="--a\x00b"\n')
    with pytest.raises(ConfigError, match=r"x.env: contains a NUL byte at byte 29"):
        load(tmp_path, env_file=path)


@pytest.mark.parametrize("name", ["goose_args", "goose_bin", "running_dir", "mcp_endpoint"])
def test_a_nul_byte_in_a_text_setting_is_refused(tmp_path: Path, name: str) -> None:
    var = f"TINYSCHEDULER_{name.upper()}"
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env={var: "a\x00b"})
    assert caught.value.problems == [f"{var}='a\\x00b': contains a NUL byte"]


def test_an_unknown_home_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TINYSCHEDULER_LOG_DIR='~nosuchuser-x/logs': cannot expand"):
        load(tmp_path, env={"TINYSCHEDULER_LOG_DIR": "~nosuchuser-x/logs"})


# --- files that are not files -----------------------------------------------------------------------


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def test_reading_a_fifo_does_not_block_and_names_it(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile, match="is a FIFO, expected a regular file"):
        read_bytes(fifo(tmp_path / "pipe"))


def test_reading_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(NotRegularFile, match="is a character device"):
        read_bytes(Path("/dev/zero"))


def test_reading_past_the_limit_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    assert read_bytes(big, 101) == b"x" * 101
    with pytest.raises(FileTooLarge):
        read_bytes(big, 100)


def test_a_symlink_loop_is_an_os_error(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(OSError, match="symbolic links"):
        read_bytes(tmp_path / "a")


@pytest.mark.parametrize("kind", ["fifo", "device", "loop", "folder", "huge", "binary"])
def test_an_env_file_that_is_no_text_file_is_one_config_error(tmp_path: Path, kind: str) -> None:
    path = hostile_file(tmp_path, kind, "x.env")
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, env_file=path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"env file {path}: ")


@pytest.mark.parametrize("kind", ["fifo", "device", "loop", "folder", "huge", "binary", "deep"])
def test_a_registry_that_is_no_json_file_is_one_registry_error(tmp_path: Path, kind: str) -> None:
    path = hostile_file(tmp_path, kind, "agent-control.json")
    with pytest.raises(RegistryError) as caught:
        load_registry(path, tmp_path)
    (problem,) = caught.value.problems
    assert problem.startswith(f"{path}: ")


def hostile_file(tmp_path: Path, kind: str, name: str) -> Path:
    path = tmp_path / name
    if kind == "fifo":
        fifo(path)
    elif kind == "device":
        path.symlink_to("/dev/zero")
    elif kind == "loop":
        path.symlink_to(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge":
        path.write_bytes(b" " * (2 * 1024 * 1024))
    elif kind == "binary":
        path.write_bytes(b"\x00\xff\xfe" * 10)
    else:
        path.write_text("[" * 100_000 + "]" * 100_000)
    return path


# --- the registry -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.text(string.printable + "\x00\n\x7f", max_size=20)
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
entries = st.fixed_dictionaries(
    {},
    optional={
        "agentName": st.one_of(st.text(max_size=70), json_values),
        "agentType": st.one_of(st.text(max_size=10), json_values),
        "slots": st.one_of(st.integers(), json_values),
        "recipe": st.one_of(st.text(max_size=30), st.sampled_from(["a\x00b.yaml", "../x", "/etc/passwd", "loop/x"])),
    },
)


@PROPERTIES
@given(document=st.one_of(json_values, st.lists(entries, max_size=5)))
def test_any_registry_document_parses_or_is_one_registry_error(tmp_path: Path, document: Any) -> None:
    loop = tmp_path / "loop"
    if not loop.is_symlink():
        loop.symlink_to(loop)
    registry = attempt(lambda: parse_registry(document, tmp_path / "agent-control.json", tmp_path))
    if isinstance(registry, ConfigError):
        assert isinstance(registry, RegistryError) and registry.problems
        assert all("\n" not in problem for problem in registry.problems)
    else:
        assert all(0 <= (entry.slots or 0) <= 1000 for entry in registry.entries)


@PROPERTIES
@given(content=st.binary(max_size=300))
def test_any_registry_bytes_load_or_are_one_registry_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "agent-control.json"
    path.write_bytes(content)
    result = attempt(lambda: load_registry(path, tmp_path))
    assert not isinstance(result, ConfigError) or (isinstance(result, RegistryError) and result.problems)


def test_a_nul_byte_in_a_recipe_name_is_a_registry_error(tmp_path: Path) -> None:
    path = tmp_path / "agent-control.json"
    path.write_text(json.dumps([{"agentName": "dev", "agentType": "dev", "recipe": "dev\u0000.yaml"}]))
    with pytest.raises(RegistryError) as caught:
        load_registry(path, tmp_path)
    assert caught.value.problems == [
        f"{path}[0].recipe: 'dev\\x00.yaml' contains a control character (such as a NUL byte or a newline); "
        "expected a file name"
    ]


def test_a_registry_named_explicitly_but_missing_is_an_error(tmp_path: Path) -> None:
    named = load(tmp_path, env={"TINYSCHEDULER_AGENT_CONTROL_FILE": "agents.json"})
    with pytest.raises(RegistryError, match=r"agents.json: not found; the agent registry is named explicitly"):
        configured_registry(named)
    # Legacy mode only when the setting is absent.
    assert configured_registry(load(tmp_path)) is None


def test_the_ranges_table_in_the_docs_is_the_code() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text(encoding="utf-8")
    for info in NUMERIC:
        assert info.range is not None
        low, high = (str(int(bound)) for bound in info.range)
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{info.env_var}` |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[1].split()[-1] == low and cells[2].split()[0] == high, row
