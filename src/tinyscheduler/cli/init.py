"""`tinyscheduler init [PATH]`: a working base path from the package's own data.

It writes, under PATH (default: the current folder):
- `.env`: every setting with its default (the package's `tinyscheduler.env`, the same text as the
  repository's `.env.tinyscheduler.example`), with TINYSCHEDULER_BASE_PATH set to PATH so that a
  command run from anywhere with this file works on this base path;
- `goose.env`: the environment of the Goose runs (provider, keys), read by the systemd units;
- `agent-control.json`: an example registry, and `recipes/<agent>.yaml` for each of its agents, each
  using the TinyTask MCP extension;
- the state folders (`state/running`, `state/logs`, `state/quarantine`), private (0700);
- `systemd/` (the daemon, the one-shot and its timer) and `cron/tinyscheduler.cron`, written for
  PATH, this installation's program and the user who runs init (or `--user`).

Run again, it creates what is missing and keeps every file that exists, unless `--force`.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from tinyscheduler.adapters.files import make_private_folder, write_private

#: Package data file -> where init writes it under the base path.
FILES: tuple[tuple[str, str], ...] = (
    ("tinyscheduler.env", ".env"),
    ("goose.env", "goose.env"),
    ("agent-control.json", "agent-control.json"),
    ("systemd/tinyscheduler.service", "systemd/tinyscheduler.service"),
    ("systemd/tinyscheduler-oneshot.service", "systemd/tinyscheduler-oneshot.service"),
    ("systemd/tinyscheduler.timer", "systemd/tinyscheduler.timer"),
    ("cron/tinyscheduler.cron", "cron/tinyscheduler.cron"),
)
FOLDERS = ("state/running", "state/logs", "state/quarantine", "recipes")
_BASE_LINE = re.compile(r"^# (TINYSCHEDULER_BASE_PATH)=.*$", re.M)


@dataclass(frozen=True)
class Layout:
    """What the units and the env file are written for."""

    base: Path
    #: The command that runs this installation's tinyscheduler.
    program: str
    user: str
    group: str
    home: str


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, list[str]]:
        return {"created": self.created, "replaced": self.replaced, "kept": self.kept}


def data_text(name: str) -> str:
    """A file of the package's data (`tinyscheduler/data/<name>`)."""
    return (resources.files("tinyscheduler") / "data" / name).read_text(encoding="utf-8")


def this_program() -> str:
    """How a unit starts this installation: its `tinyscheduler` script, else `python -m tinyscheduler`."""
    script = Path(sys.executable).parent / "tinyscheduler"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    return f"{sys.executable} -m tinyscheduler"


def layout_for(base: Path, user: str | None = None) -> Layout:
    """The layout of `base` for `user` (default: the user running this); KeyError for no such user."""
    entry = pwd.getpwnam(user) if user else pwd.getpwuid(os.geteuid())
    return Layout(base, this_program(), entry.pw_name, grp.getgrgid(entry.pw_gid).gr_name, entry.pw_dir)


def render(text: str, layout: Layout) -> str:
    """A unit, the cron file or the env file written for `layout` (pure)."""
    values = {
        "@PROGRAM@": layout.program,
        "@ENV_FILE@": str(layout.base / ".env"),
        "@BASE@": str(layout.base),
        "@USER@": layout.user,
        "@GROUP@": layout.group,
        "@HOME@": layout.home,
    }
    for key, value in values.items():
        text = text.replace(key, value)
    quoted = json.dumps(str(layout.base)) if re.search(r"[\s\"'\\#$`]", str(layout.base)) else str(layout.base)
    return _BASE_LINE.sub(lambda m: f"{m[1]}={quoted}", text, count=1)


def recipes_of(registry_text: str) -> list[str]:
    """The recipe file of each agent of the example registry (its `recipe`, else `<agentName>.yaml`)."""
    return [entry.get("recipe") or f"{entry['agentName']}.yaml" for entry in json.loads(registry_text)]


def init(layout: Layout, *, force: bool) -> Outcome:
    """Write the base path; OSError names what could not be made."""
    outcome = Outcome()
    base = layout.base
    make_private_folder(base)
    for folder in FOLDERS:
        if not (base / folder).is_dir():
            make_private_folder(base / folder)
            outcome.created.append(f"{base / folder}/")
    wanted = [(render(data_text(source), layout), base / target) for source, target in FILES]
    wanted += [
        (data_text(f"recipes/{name}"), base / "recipes" / name) for name in recipes_of(data_text("agent-control.json"))
    ]
    for text, path in wanted:
        existed = os.path.lexists(path)
        if existed and not force:
            outcome.kept.append(str(path))
            continue
        make_private_folder(path.parent)
        write_private(path, text)
        (outcome.replaced if existed else outcome.created).append(str(path))
    return outcome


def init_command(path: Path | None, *, user: str | None, force: bool, json_output: bool) -> int:
    base = Path(os.path.abspath(path or Path.cwd()))
    try:
        layout = layout_for(base, user)
    except KeyError:
        print(f"tinyscheduler: --user {user!r}: no such user", file=sys.stderr)
        return 2
    try:
        outcome = init(layout, force=force)
    except OSError as exc:
        print(f"tinyscheduler: cannot write {exc.filename or base}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if json_output:
        print(json.dumps({"base_path": str(base), **outcome.to_json()}, indent=2))
        return 0
    for label, paths in (("created", outcome.created), ("replaced", outcome.replaced)):
        for item in paths:
            print(f"{label}  {item}")
    for item in outcome.kept:
        print(f"kept     {item} (exists; --force replaces it)")
    print(_next_steps(base))
    return 0


def _next_steps(base: Path) -> str:
    here = Path.cwd() == base
    env = "" if here else f" --env-file {base / '.env'}"
    return (
        f"\nNext: edit {base / '.env'} (TINYSCHEDULER_MCP_ENDPOINT, TINYSCHEDULER_GOOSE_BIN) and "
        f"{base / 'goose.env'}, then\n"
        f"  tinyscheduler{env} validate-config\n"
        f"  tinyscheduler{env} run --once --dry-run\n"
        f"Under systemd: {base / 'systemd'}/ (docs/operations.md, Install)."
    )
