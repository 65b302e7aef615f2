"""The agent registry: every validation rule, limits precedence, recipe paths."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.config.registry import (
    MAX_REGISTRY_BYTES,
    AgentEntry,
    Registry,
    RegistryError,
    agent_recipe_path,
    effective_limits,
    load_registry,
)
from tinyscheduler.config.settings import ConfigError, Settings


@pytest.fixture
def recipes(tmp_path: Path) -> Path:
    folder = tmp_path / "recipes"
    folder.mkdir()
    return folder


def write(tmp_path: Path, document: Any) -> Path:
    path = tmp_path / "agent-control.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def problems_of(tmp_path: Path, recipes: Path, document: Any) -> list[str]:
    path = write(tmp_path, document)
    with pytest.raises(RegistryError) as caught:
        load_registry(path, recipes)
    return [p.replace(str(path), "FILE") for p in caught.value.problems]


def test_original_format_with_pools(tmp_path: Path, recipes: Path) -> None:
    path = write(
        tmp_path,
        [
            {"agentName": "dev-1", "agentType": "dev"},
            {
                "agentName": "qa",
                "agentType": "qa",
                "slots": 2,
                "recipe": "sub/qa.yaml",
                "comment": "unknown keys are fine",
            },
            {"agentName": "dev-2", "agentType": "dev", "slots": 0},
        ],
    )
    registry = load_registry(path, recipes)
    assert registry is not None
    assert registry.path == path
    assert registry.agents() == ["dev-1", "qa", "dev-2"]
    assert registry.queues() == ["dev", "qa"]
    assert registry.pool("dev") == ["dev-1", "dev-2"]
    assert registry.pool("nobody") == []
    assert registry.entry("qa") == AgentEntry("qa", "qa", 2, "sub/qa.yaml")
    assert registry.entry("ghost") is None


def test_no_file_means_legacy_mode(tmp_path: Path, recipes: Path) -> None:
    assert load_registry(tmp_path / "absent.json", recipes) is None


def test_registry_error_is_a_config_error() -> None:
    assert issubclass(RegistryError, ConfigError)


def test_invalid_json_names_line_and_column(tmp_path: Path, recipes: Path) -> None:
    assert problems_of(tmp_path, recipes, '[\n  {"agentName": "a",}\n]') == [
        "FILE: invalid JSON at line 2 column 21: Expecting property name enclosed in double quotes"
    ]


def test_json_nested_too_deeply_is_a_registry_error(tmp_path: Path, recipes: Path) -> None:
    # Well under 1 MiB, but deeper than the JSON decoder recurses: one line, not a RecursionError
    # (which a reload of the daemon would not survive).
    assert problems_of(tmp_path, recipes, "[" * 100_000) == ["FILE: invalid JSON: nested too deeply"]


@pytest.mark.parametrize(("document", "kind"), [({}, "an object"), ("x", "a string"), (3, "a number")])
def test_not_an_array(tmp_path: Path, recipes: Path, document: Any, kind: str) -> None:
    assert problems_of(tmp_path, recipes, json.dumps(document)) == [
        f"FILE: expected a JSON array of agents, got {kind}"
    ]


def test_empty_array(tmp_path: Path, recipes: Path) -> None:
    assert problems_of(tmp_path, recipes, []) == [
        "FILE: the array is empty; list at least one agent, or delete the file for legacy mode"
    ]


def test_file_over_one_mebibyte(tmp_path: Path, recipes: Path) -> None:
    big = json.dumps([{"agentName": "a", "agentType": "q", "comment": "x" * MAX_REGISTRY_BYTES}])
    assert problems_of(tmp_path, recipes, big) == ["FILE: larger than 1048576 bytes (1 MiB)"]


def test_not_utf8(tmp_path: Path, recipes: Path) -> None:
    path = tmp_path / "agent-control.json"
    path.write_bytes(b'[{"agentName": "\xff"}]')
    with pytest.raises(RegistryError, match=r"not UTF-8 text"):
        load_registry(path, recipes)


def test_folder_instead_of_file(tmp_path: Path, recipes: Path) -> None:
    with pytest.raises(RegistryError, match=r"is a folder, expected a JSON file"):
        load_registry(recipes, recipes)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("dev", "FILE[0]: expected an object, got a string"),
        ({"agentType": "dev"}, "FILE[0].agentName: missing"),
        ({"agentName": "  ", "agentType": "dev"}, "FILE[0].agentName: blank"),
        ({"agentName": 7, "agentType": "dev"}, "FILE[0].agentName: expected a string, got a number"),
        (
            {"agentName": "a b", "agentType": "dev"},
            "FILE[0].agentName: 'a b' is not 1-64 letters, digits, '_', '.', '-'",
        ),
        (
            {"agentName": "a" * 65, "agentType": "dev"},
            f"FILE[0].agentName: {'a' * 65!r} is not 1-64 letters, digits, '_', '.', '-'",
        ),
        ({"agentName": "dev"}, "FILE[0].agentType: missing"),
        ({"agentName": "dev", "agentType": ""}, "FILE[0].agentType: blank"),
        (
            {"agentName": "dev", "agentType": "q", "slots": -1},
            "FILE[0].slots: -1 is out of range, expected a whole number from 0 to 1000",
        ),
        (
            {"agentName": "dev", "agentType": "q", "slots": "2"},
            "FILE[0].slots: expected a whole number from 0 to 1000, got '2'",
        ),
        (
            {"agentName": "dev", "agentType": "q", "slots": 1.5},
            "FILE[0].slots: expected a whole number from 0 to 1000, got 1.5",
        ),
        (
            {"agentName": "dev", "agentType": "q", "slots": True},
            "FILE[0].slots: expected a whole number from 0 to 1000, got True",
        ),
        ({"agentName": "dev", "agentType": "q", "recipe": ""}, "FILE[0].recipe: expected a file name, got ''"),
        (
            {"agentName": "dev", "agentType": "q", "recipe": "../secrets.yaml"},
            "FILE[0].recipe: '../secrets.yaml' escapes the recipes folder",
        ),
        (
            {"agentName": "dev", "agentType": "q", "recipe": "a/../../b.yaml"},
            "FILE[0].recipe: 'a/../../b.yaml' escapes the recipes folder",
        ),
        (
            {"agentName": "dev", "agentType": "q", "recipe": "/etc/passwd"},
            "FILE[0].recipe: '/etc/passwd' is absolute; expected a path inside the recipes folder",
        ),
    ],
)
def test_entry_rules_name_index_and_field(tmp_path: Path, recipes: Path, entry: Any, problem: str) -> None:
    assert problems_of(tmp_path, recipes, [entry]) == [problem]


def test_duplicate_agent_name_names_both_entries(tmp_path: Path, recipes: Path) -> None:
    assert problems_of(
        tmp_path,
        recipes,
        [
            {"agentName": "dev", "agentType": "a"},
            {"agentName": "qa", "agentType": "a"},
            {"agentName": "dev", "agentType": "b"},
        ],
    ) == ["FILE[2].agentName: duplicate 'dev', already at [0]"]


def test_every_problem_is_reported_at_once(tmp_path: Path, recipes: Path) -> None:
    found = problems_of(
        tmp_path,
        recipes,
        [
            {"agentName": "ok", "agentType": "q"},
            {"agentName": "", "agentType": "q", "slots": -2},
            42,
        ],
    )
    assert found == [
        "FILE[1].agentName: blank",
        "FILE[1].slots: -2 is out of range, expected a whole number from 0 to 1000",
        "FILE[2]: expected an object, got a number",
    ]


def test_recipe_symlink_leading_out_is_refused(tmp_path: Path, recipes: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (recipes / "shared").symlink_to(outside)
    assert problems_of(tmp_path, recipes, [{"agentName": "dev", "agentType": "q", "recipe": "shared/dev.yaml"}]) == [
        "FILE[0].recipe: 'shared/dev.yaml' leads out of the recipes folder through a symbolic link"
    ]


def settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(base_path=tmp_path, **values)


def registry_of(*entries: AgentEntry) -> Registry:
    return Registry(Path("agent-control.json"), entries)


def test_limits_agent_limits_over_registry_slots_over_default(tmp_path: Path) -> None:
    registry = registry_of(
        AgentEntry("a", "q", 3, None),  # registry slots
        AgentEntry("b", "q", None, None),  # default slots
        AgentEntry("c", "q", 5, None),  # overridden
        AgentEntry("d", "q", 0, None),
    )
    limits = effective_limits(registry, settings(tmp_path, default_slots=2, agent_limits={"c": 1, "outsider": 4}))
    # An agent with a limit but no registry entry is still served from its assigned tasks.
    assert limits == {"a": 3, "b": 2, "c": 1, "d": 0, "outsider": 4}


def test_limits_in_legacy_mode_are_the_agent_limits(tmp_path: Path) -> None:
    assert effective_limits(None, settings(tmp_path, agent_limits={"x": 2})) == {"x": 2}
    assert effective_limits(None, settings(tmp_path)) == {}


def test_recipe_path(tmp_path: Path) -> None:
    s = settings(tmp_path)
    registry = registry_of(AgentEntry("a", "q", None, "shared/agent.yaml"), AgentEntry("b", "q", None, None))
    assert agent_recipe_path("a", registry, s) == tmp_path / "recipes/shared/agent.yaml"
    assert agent_recipe_path("b", registry, s) == tmp_path / "recipes/b.yaml"
    assert agent_recipe_path("legacy", None, s) == tmp_path / "recipes/legacy.yaml"


def test_recipe_path_refuses_escape(tmp_path: Path) -> None:
    registry = registry_of(AgentEntry("a", "q", None, "../x.yaml"))
    with pytest.raises(RegistryError, match=r"agent 'a': recipe '../x.yaml' escapes the recipes folder"):
        agent_recipe_path("a", registry, settings(tmp_path))
