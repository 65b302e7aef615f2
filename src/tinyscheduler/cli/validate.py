"""`validate-config`: is this host ready to schedule runs? One Check per finding.

Errors are what would make runs fail or what the daemon refuses (missing folders, a state folder
anyone can write, no goose, the stand-in goose against a real TinyTask, a bad registry, a broken
recipe); warnings are what works but is probably not meant (agents with 0 slots, TinyTask down
right now, unknown TINYSCHEDULER_* names). `--fix` creates what is missing and safe to create,
and never overwrites anything.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from tinyscheduler.adapters.files import make_private_folder
from tinyscheduler.adapters.goose_probe import check_goose
from tinyscheduler.adapters.reading import FileTooLarge, read_bytes, reason
from tinyscheduler.config.registry import (
    Registry,
    RegistryError,
    agent_recipe_path,
    configured_registry,
    effective_limits,
)
from tinyscheduler.config.settings import LoadedSettings, Settings, env_var
from tinyscheduler.core.goose import standin_allowed, standin_refusal
from tinyscheduler.service.guard import unsafe_state

HEALTH_TIMEOUT_SEC = 3.0
MAX_RECIPE_BYTES = 1024 * 1024
#: The scheduler passes these to every run (`--params task_id=<id> --params agent=<agent>`).
SCHEDULER_PARAMS = frozenset({"task_id", "agent"})
#: Template variables goose provides itself.
BUILTIN_TEMPLATE_VARS = frozenset({"recipe_dir"})
TEMPLATE_VAR = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)[^}]*\}\}")

#: Written by `--fix` when there is no registry: it validates, keeps behaviour as in legacy mode
#: (an agent with 0 slots never runs; agents with limits are still served), and says what to do.
PLACEHOLDER_REGISTRY: list[dict[str, Any]] = [
    {
        "agentName": "example-agent",
        "agentType": "example-queue",
        "slots": 0,
        "comment": "Placeholder written by `tinyscheduler validate-config --fix`. One entry per agent: "
        "agentName = the TinyTask agent, agentType = the queue it serves, optional slots "
        "and recipe (default <agentName>.yaml in the recipes folder).",
    }
]


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    level: Literal["error", "warning"] = "error"
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "level": self.level, "detail": self.detail}


def run_checks(loaded: LoadedSettings, *, fix: bool) -> list[Check]:
    s = loaded.settings
    checks = [Check("settings", True, detail=f"loaded (env file: {loaded.env_file or 'none'})")]
    checks += [
        Check("settings", False, "warning", f"{where} is not a setting (ignored)") for where in loaded.unknown_keys
    ]
    if fix:
        checks += _fix(s)
    checks += _folders(s)
    tinytask, health, why_no_health = _tinytask(s)
    checks.append(_goose(s, health, why_no_health))
    try:
        registry = configured_registry(loaded)
    except RegistryError as exc:
        checks += [Check("agent registry", False, detail=problem) for problem in exc.problems]
    else:
        checks += _registry_summary(registry, s)
        checks += _agents(registry, s)
    checks.append(tinytask)
    return checks


def _fixable_folders(s: Settings) -> list[tuple[str, Path]]:
    return [
        ("recipes dir", s.recipes_dir),
        ("running dir", s.running_dir),
        ("log dir", s.log_dir),
        ("quarantine dir", s.quarantine_dir),
        ("lock file folder", s.lock_file.parent),
    ]


def _fix(s: Settings) -> list[Check]:
    if not s.base_path.is_dir():
        return [Check("fix", False, detail=f"base path {s.base_path} is not a folder; nothing created")]
    checks = []
    for label, folder in _fixable_folders(s):
        if folder.exists():
            continue
        try:
            make_private_folder(folder)
        except OSError as exc:
            checks.append(Check("fix", False, detail=f"cannot create {label} {folder}: {exc.strerror}"))
        else:
            checks.append(Check("fix", True, detail=f"created {label} {folder}"))
    try:
        # "x": create only; an existing file, even one made a moment ago, is never replaced.
        with s.agent_control_file.open("x", encoding="utf-8") as handle:
            json.dump(PLACEHOLDER_REGISTRY, handle, indent=2)
            handle.write("\n")
    except FileExistsError:
        pass
    except OSError as exc:
        checks.append(Check("fix", False, detail=f"cannot create {s.agent_control_file}: {exc.strerror}"))
    else:
        checks.append(Check("fix", True, detail=f"created placeholder agent registry {s.agent_control_file}"))
    return checks


def _folder(label: str, path: Path, *, writable: bool, hint: str = "") -> Check:
    if not path.exists():
        return Check("paths", False, detail=f"{label} {path} does not exist{hint}")
    if not path.is_dir():
        return Check("paths", False, detail=f"{label} {path} is not a folder")
    if writable and not os.access(path, os.W_OK | os.X_OK):
        return Check("paths", False, detail=f"{label} {path} is not writable")
    return Check("paths", True, detail=f"{label} {path}")


def _folders(s: Settings) -> list[Check]:
    fixable = " (validate-config --fix creates it)"
    checks = [_folder("base path", s.base_path, writable=False)]
    checks += [
        _folder(label, folder, writable=label != "recipes dir", hint=fixable) for label, folder in _fixable_folders(s)
    ]
    unsafe = unsafe_state(s)
    if unsafe:
        checks.append(Check("paths", False, detail=f"{unsafe} (the daemon refuses to start)"))
    if s.running_dir.is_dir():
        mode = stat.S_IMODE(s.running_dir.stat().st_mode)
        if mode & 0o077:
            checks.append(
                Check(
                    "paths",
                    False,
                    "warning",
                    f"running dir {s.running_dir} has mode {mode:04o}; 0700 keeps leases private",
                )
            )
    return checks


def _goose(s: Settings, health: dict[str, Any] | None, why_no_health: str) -> Check:
    """Goose is there, runs, and is goose: the stand-in only against the in-package fake TinyTask."""
    found = check_goose(s.goose_bin, os.environ)
    if found.problem is not None:
        return Check("goose", False, detail=f"{env_var('goose_bin')}={s.goose_bin!r}: {found.problem}")
    if found.standin and not standin_allowed(os.environ):
        refusal = standin_refusal(s.goose_bin, health=health, why_no_health=why_no_health)
        if refusal is not None:
            return Check("goose", False, detail=refusal)
    version = f" ({found.version})" if found.version else ""
    return Check("goose", True, detail=f"{found.path}{version}")


def _registry_summary(registry: Registry | None, s: Settings) -> list[Check]:
    if registry is not None:
        return [
            Check(
                "agent registry",
                True,
                detail=f"{s.agent_control_file}: {len(registry.entries)} agent(s) in {len(registry.queues())} queue(s)",
            )
        ]
    checks = [
        Check(
            "agent registry",
            True,
            detail=f"{s.agent_control_file} not found: legacy mode (agents from {env_var('agent_limits')} only)",
        )
    ]
    if not s.agent_limits:
        checks.append(
            Check(
                "agent registry",
                False,
                "warning",
                f"no registry and no {env_var('agent_limits')}: no agent will ever run",
            )
        )
    return checks


def _agents(registry: Registry | None, s: Settings) -> list[Check]:
    checks = []
    for agent, limit in effective_limits(registry, s).items():
        # An agent with 0 slots never starts a run, so its recipe cannot make one fail.
        level: Literal["error", "warning"] = "warning" if limit == 0 else "error"
        if limit == 0:
            checks.append(Check("slots", False, "warning", f"agent {agent!r} has 0 slots: it never runs"))
        try:
            path = agent_recipe_path(agent, registry, s)
        except RegistryError as exc:
            checks += [Check("recipe", False, level, problem) for problem in exc.problems]
            continue
        problems = recipe_problems(path)
        checks += [Check("recipe", False, level, f"agent {agent!r}: {problem}") for problem in problems]
        if not problems:
            checks.append(Check("recipe", True, detail=f"agent {agent!r}: {path}"))
    return checks


def recipe_problems(path: Path) -> list[str]:
    """What would stop goose from running this recipe headless; [] when nothing does."""
    try:
        data = read_bytes(path, MAX_RECIPE_BYTES)
    except FileNotFoundError:
        return [f"{path}: recipe not found"]
    except FileTooLarge:
        return [f"{path}: larger than 1 MiB"]
    except OSError as exc:
        return [f"{path}: cannot read ({reason(exc)})"]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]
    try:
        # goose renders `{{ ... }}` before it parses the YAML; a stand-in word keeps the structure.
        document = yaml.safe_load(TEMPLATE_VAR.sub("template-value", text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return [f"{path}: invalid YAML{where}: {getattr(exc, 'problem', None) or exc}"]
    if not isinstance(document, dict):
        return [f"{path}: expected a YAML mapping with title, description and prompt"]
    problems = [
        f"{path}: {key}: missing or empty (goose needs it for a headless run)"
        for key in ("title", "description", "prompt")
        if not isinstance(document.get(key), str) or not document[key].strip()
    ]
    declared, parameter_problems = _parameters(document.get("parameters"))
    problems += [f"{path}: {problem}" for problem in parameter_problems]
    used = set(TEMPLATE_VAR.findall(text))
    problems += [
        f"{path}: {{{{ {name} }}}} is not a declared parameter"
        for name in sorted(used - declared - BUILTIN_TEMPLATE_VARS)
    ]
    problems += [
        f"{path}: parameter {name!r} is declared but never used (goose refuses that)"
        for name in sorted(set(declared) - used)
    ]
    return problems


def _parameters(raw: Any) -> tuple[set[str], list[str]]:
    if raw is None:
        return set(), []
    if not isinstance(raw, list):
        return set(), ["parameters: expected a list"]
    declared: set[str] = set()
    problems = []
    for index, item in enumerate(raw):
        key = item.get("key") if isinstance(item, dict) else None
        if not isinstance(key, str) or not key:
            problems.append(f"parameters[{index}]: expected a mapping with a key")
            continue
        declared.add(key)
        headless_unset = item.get("requirement") in ("required", "user_prompt") and "default" not in item
        if headless_unset and key not in SCHEDULER_PARAMS:
            problems.append(
                f"parameters[{index}] {key!r}: required without a default, but the "
                f"scheduler passes only {', '.join(sorted(SCHEDULER_PARAMS))}"
            )
    return declared, problems


def _tinytask(s: Settings) -> tuple[Check, dict[str, Any] | None, str]:
    """The check, the health document (None if there is none) and why there is none."""
    url = f"{s.tinytask_url}/health"
    try:
        reply = httpx.get(url, timeout=HEALTH_TIMEOUT_SEC)
    except httpx.HTTPError as exc:
        why = f"{url} unreachable: {exc or type(exc).__name__}"
        return Check("tinytask", False, "warning", why), None, why
    try:
        document = reply.json() if reply.status_code == 200 else None
    except ValueError:
        document = None
    if not isinstance(document, dict) or document.get("status") != "healthy":
        why = f"{url} answered {reply.status_code}, not healthy"
        return Check("tinytask", False, "warning", why), None, why
    return Check("tinytask", True, detail=f"{url} healthy"), document, ""
