"""`tinyscheduler init`: a base path from the package's data, safe to run again, `--force` to replace."""

from __future__ import annotations

import json

import pytest

from tinyscheduler.cli.init import layout_for
from tinyscheduler.cli.main import main
from tinyscheduler.cli.validate import recipe_problems
from tinyscheduler.config.registry import load_registry
from tinyscheduler.config.settings import load_settings


def init_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, list[str]]:
    assert main(["init", *args, "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out))


def test_init_writes_a_base_path_that_validates_and_keeps_what_exists(tmp_path, capsys) -> None:
    base = tmp_path / "agents"
    first = init_json(capsys, str(base))
    assert first["kept"] == [] and len(first["created"]) == 13
    loaded = load_settings(env_file=base / ".env", cli={}, environ={}, cwd=tmp_path)
    assert loaded.settings.base_path == base and loaded.sources["base_path"] == "env-file"
    registry = load_registry(base / "agent-control.json", base / "recipes")
    assert registry is not None and [e.name for e in registry.entries] == ["developer", "qa"]
    assert all(recipe_problems(base / "recipes" / f"{e.name}.yaml") == [] for e in registry.entries)
    assert "tinytask" in (base / "recipes" / "developer.yaml").read_text()  # the TinyTask MCP extension
    assert (base / "state" / "running").is_dir() and (base / "state" / "quarantine").is_dir()
    unit = (base / "systemd" / "tinyscheduler.service").read_text()
    assert f"WorkingDirectory={base}\n" in unit and f"--env-file {base / '.env'}\n" in unit
    assert "@" not in unit.replace("@system-service", "")

    (base / "agent-control.json").write_text("[]")
    again = init_json(capsys, str(base))
    assert again["created"] == [] and len(again["kept"]) == 9
    assert (base / "agent-control.json").read_text() == "[]", "never overwritten without --force"
    forced = init_json(capsys, str(base), "--force")
    assert len(forced["replaced"]) == 9 and (base / "agent-control.json").read_text() != "[]"


def test_init_refuses_to_write_through_a_link(tmp_path, capsys) -> None:
    target = tmp_path / "elsewhere.json"
    target.write_text("mine")
    base = tmp_path / "agents"
    base.mkdir()
    (base / "agent-control.json").symlink_to(target)
    assert main(["init", str(base), "--force"]) == 1
    assert target.read_text() == "mine"
    assert "agent-control.json" in capsys.readouterr().err


def test_units_are_written_for_the_user_named(tmp_path) -> None:
    layout = layout_for(tmp_path, "root")
    assert (layout.user, layout.home) == ("root", "/root")
