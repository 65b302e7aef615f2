"""The agent registry (`agent-control.json`): which agents serve which TinyTask queue.

Format of the original tool: a JSON array of `{"agentName": str, "agentType": str}` where
agentType is the queue; several agents of one type form a pool. Optional per entry: `slots`
(non-negative int) and `recipe` (a file under the recipes folder). Other keys, such as
`"comment"`, are ignored. No file means legacy mode: agents come from the agent limits only.

One validator serves `validate-config`, the daemon and reloads: every problem is reported at once,
each naming the file, the entry index (as in `jq '.[2]'`) and the field.
"""

from __future__ import annotations

import json
import os
import posixpath
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyscheduler.adapters.reading import FileTooLarge, read_bytes, reason
from tinyscheduler.config.settings import MAX_SLOTS, ConfigError, LoadedSettings, Settings
from tinyscheduler.core.tasks import NAME_PATTERN

MAX_REGISTRY_BYTES = 1024 * 1024
#: A refused reload is one log line: a file with thousands of bad entries names the first ones.
MAX_PROBLEMS_SHOWN = 20


class RegistryError(ConfigError):
    """The registry cannot be used; `.problems` holds one line per problem."""


@dataclass(frozen=True)
class AgentEntry:
    name: str
    queue: str
    slots: int | None
    recipe: str | None


@dataclass(frozen=True)
class Registry:
    path: Path
    entries: tuple[AgentEntry, ...]

    def agents(self) -> list[str]:
        """Agent names, in file order."""
        return [entry.name for entry in self.entries]

    def entry(self, name: str) -> AgentEntry | None:
        return next((entry for entry in self.entries if entry.name == name), None)

    def pool(self, queue: str) -> list[str]:
        """Names of the agents serving `queue`, in file order."""
        return [entry.name for entry in self.entries if entry.queue == queue]

    def queues(self) -> list[str]:
        """Queue names, each once, in order of first appearance."""
        return list(dict.fromkeys(entry.queue for entry in self.entries))


def load_registry(path: Path, recipes_dir: Path, *, required: bool = False) -> Registry | None:
    """The registry at `path`; RegistryError.

    No such file means legacy mode (None) only when the path is the default one: a registry named
    explicitly (`required`, TINYSCHEDULER_AGENT_CONTROL_FILE or its flag) that is missing is an error,
    or a typo in its name would silently run legacy mode. Read without blocking, a regular file only.
    """
    try:
        data = read_bytes(path, MAX_REGISTRY_BYTES)
    except FileNotFoundError:
        if required:
            raise RegistryError(
                [
                    f"{path}: not found; the agent registry is named explicitly, so legacy mode does not apply "
                    "(leave TINYSCHEDULER_AGENT_CONTROL_FILE unset for legacy mode)"
                ]
            ) from None
        return None
    except IsADirectoryError:
        raise RegistryError([f"{path}: is a folder, expected a JSON file"]) from None
    except FileTooLarge:
        raise RegistryError([f"{path}: larger than {MAX_REGISTRY_BYTES} bytes (1 MiB)"]) from None
    except OSError as exc:
        raise RegistryError([f"{path}: cannot read: {reason(exc)}"]) from None
    try:
        document = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise RegistryError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except json.JSONDecodeError as exc:
        raise RegistryError([f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from None
    except RecursionError:
        raise RegistryError([f"{path}: invalid JSON: nested too deeply"]) from None
    return parse_registry(document, path, recipes_dir)


def configured_registry(loaded: LoadedSettings) -> Registry | None:
    """The registry the settings name: required when named explicitly, optional at its default."""
    s = loaded.settings
    required = loaded.sources.get("agent_control_file", "default") != "default"
    return load_registry(s.agent_control_file, s.recipes_dir, required=required)


def parse_registry(document: Any, path: Path, recipes_dir: Path) -> Registry:
    """Validate an already decoded registry document; RegistryError lists every problem."""
    if not isinstance(document, list):
        raise RegistryError([f"{path}: expected a JSON array of agents, got {_kind(document)}"])
    if not document:
        raise RegistryError(
            [f"{path}: the array is empty; list at least one agent, or delete the file for legacy mode"]
        )
    problems: list[str] = []
    entries: list[AgentEntry] = []
    first_index: dict[str, int] = {}
    for index, item in enumerate(document):
        where = f"{path}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected an object, got {_kind(item)}")
            continue
        before = len(problems)
        name = _name(item, "agentName", where, problems)
        queue = _name(item, "agentType", where, problems)
        slots = _slots(item, where, problems)
        recipe = _recipe(item, where, recipes_dir, problems)
        if name is not None:
            if name in first_index:
                problems.append(f"{where}.agentName: duplicate {name!r}, already at [{first_index[name]}]")
            else:
                first_index[name] = index
        if len(problems) == before and name is not None and queue is not None:
            entries.append(AgentEntry(name, queue, slots, recipe))
    if len(problems) > MAX_PROBLEMS_SHOWN:
        hidden = len(problems) - MAX_PROBLEMS_SHOWN
        problems = [*problems[:MAX_PROBLEMS_SHOWN], f"{path}: and {hidden} more problem(s)"]
    if problems:
        raise RegistryError(problems)
    return Registry(path, tuple(entries))


def effective_limits(registry: Registry | None, settings: Settings) -> dict[str, int]:
    """Slots per agent: agent_limits (env/CLI) > registry `slots` > default_slots.

    Agents with a limit but not in the registry are included: they are still served from the
    tasks already assigned to them. Legacy mode (no registry): the agent limits only.
    """
    if registry is None:
        return dict(settings.agent_limits)
    limits = {
        entry.name: entry.slots if entry.slots is not None else settings.default_slots for entry in registry.entries
    }
    limits.update(settings.agent_limits)
    return limits


def agent_recipe_name(agent: str, registry: Registry | None) -> str:
    """The recipe of `agent` relative to the recipes folder: its registry `recipe`, else `<agent>.yaml`.
    Not checked: the run checks it (service.run `resolve_recipe`), once."""
    entry = registry.entry(agent) if registry is not None else None
    return entry.recipe if entry is not None and entry.recipe else f"{agent}.yaml"


def agent_recipe_path(agent: str, registry: Registry | None, settings: Settings) -> Path:
    """The recipe file of `agent` (`agent_recipe_name`) under recipes_dir, checked."""
    name = agent_recipe_name(agent, registry)
    problem = recipe_problem(name, settings.recipes_dir)
    if problem:
        raise RegistryError([f"agent {agent!r}: recipe {name!r} {problem}"])
    return settings.recipes_dir / name


def _kind(value: Any) -> str:
    names = {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        type(None): "null",
        int: "a number",
        float: "a number",
    }
    return names.get(type(value), type(value).__name__)


def _name(item: dict[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = item.get(key)
    if key not in item:
        problems.append(f"{where}.{key}: missing")
    elif not isinstance(value, str):
        problems.append(f"{where}.{key}: expected a string, got {_kind(value)}")
    elif not value.strip():
        problems.append(f"{where}.{key}: blank")
    elif not NAME_PATTERN.fullmatch(value):
        problems.append(f"{where}.{key}: {value!r} is not 1-64 letters, digits, '_', '.', '-'")
    else:
        return value
    return None


def _slots(item: dict[str, Any], where: str, problems: list[str]) -> int | None:
    value = item.get("slots")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{where}.slots: expected a whole number from 0 to {MAX_SLOTS}, got {value!r}")
        return None
    if not 0 <= value <= MAX_SLOTS:
        problems.append(f"{where}.slots: {value} is out of range, expected a whole number from 0 to {MAX_SLOTS}")
        return None
    return value


def _recipe(item: dict[str, Any], where: str, recipes_dir: Path, problems: list[str]) -> str | None:
    value = item.get("recipe")
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}.recipe: expected a file name, got {value!r}")
        return None
    problem = recipe_problem(value, recipes_dir)
    if problem:
        problems.append(f"{where}.recipe: {value!r} {problem}")
        return None
    return value


def recipe_problem(name: str, recipes_dir: Path) -> str | None:
    """Why a recipe name may not be used (it leaves the recipes folder), or None."""
    if any(ord(char) < 32 or char == "\x7f" for char in name):
        return "contains a control character (such as a NUL byte or a newline); expected a file name"
    if posixpath.isabs(name):
        return "is absolute; expected a path inside the recipes folder"
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        return "escapes the recipes folder"
    if normal == ".":
        return "is the recipes folder itself; expected a file"
    if "/" not in normal and _plain_file(recipes_dir / normal):
        return None  # right in the folder and no link: inside (checked at every run's start)
    # A symlink inside the folder can still lead out of it.
    try:
        inside = (recipes_dir / normal).resolve().is_relative_to(recipes_dir.resolve())
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop (RuntimeError before 3.13)
        return f"cannot be resolved ({exc})"
    if not inside:
        return "leads out of the recipes folder through a symbolic link"
    return None


def _plain_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except (OSError, ValueError):
        return False
