"""The command line: global options, subcommands, exit codes.

Adding a subcommand is local: write a registration function `(subparsers, common) -> None` that
adds its parser (with `parents=common`, so the global options also work after the subcommand name)
and sets `handler=<function(args) -> int>`, then append it to SUBCOMMANDS. A handler imports what
it needs inside its body, so `--help` and the quick paths stay fast and cannot break on an import.

Exit codes: 0 success; 1 the command ran and failed (checks failed, TinyTask unreachable, a control
request refused, `status` listing problems); 2 bad arguments or bad configuration (one line per
problem on stderr, never a traceback); 3 no daemon running (`status`, as systemctl's; a control
request that needs one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

from tinyscheduler import __version__
from tinyscheduler.adapters.files import restrict_umask
from tinyscheduler.adapters.journal import prefix_stderr
from tinyscheduler.config.settings import (
    ENV_FILE_VAR,
    SETTINGS,
    SYSTEM_ENV_FILE,
    ConfigError,
    LoadedSettings,
    SettingInfo,
    load_settings,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

# argparse has no public name for it, and the class is not subscriptable at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[_Parser]"
#: Adds one subcommand: (subparsers, parents carrying the global options) -> None.
Registration: TypeAlias = "Callable[[Subparsers, list[_Parser]], None]"

#: Settings that are global options (any position); the rest are flags of the subcommands.
GLOBAL_SETTINGS = ("base_path", "log_level", "log_format")
_INFO = {info.name: info for info in SETTINGS}


def _default_text(info: SettingInfo) -> str:
    if info.name == "base_path":
        return "the current directory"
    value = info.default
    if isinstance(value, bool):
        return str(value).lower()
    if value in ("", {}, None):
        return "none"
    return str(value)


def _setting_help(info: SettingInfo) -> str:
    # '%' would be taken for a format specifier by argparse.
    text = f"{info.help} (env {info.env_var}; default: {_default_text(info)})"
    return text.replace("%", "%%")


def _add_setting(parser: argparse._ActionsContainer, info: SettingInfo, *, listed: bool = True) -> None:
    # SUPPRESS: an absent flag leaves no attribute, so it neither hides a lower source nor
    # overwrites the same option given before the subcommand.
    shown = _setting_help(info) if listed else argparse.SUPPRESS
    common: dict[str, Any] = {"dest": info.name, "default": argparse.SUPPRESS, "help": shown}
    if info.is_bool:
        parser.add_argument(info.flag, action=argparse.BooleanOptionalAction, **common)
    elif info.name == "agent_limits":
        parser.add_argument(info.flag, action="append", metavar=info.metavar, **common)
    else:
        # Values stay strings: config validates them and names the flag in its message.
        parser.add_argument(info.flag, metavar=info.metavar, **common)


def _common_options() -> _Parser:
    common = _Parser(add_help=False, allow_abbrev=False)
    group = common.add_argument_group("global options (before or after the subcommand)")
    group.add_argument(
        "--env-file",
        metavar="PATH",
        type=Path,
        default=argparse.SUPPRESS,
        help="read settings from this file; a missing file is an error (default: "
        f"${ENV_FILE_VAR} if set, else ./.env, else {SYSTEM_ENV_FILE}, the first that exists)",
    )
    for name in GLOBAL_SETTINGS:
        _add_setting(group, _INFO[name])
    return common


#: Where the state is: what every command that reads it needs.
_STATE = ("running_dir", "log_dir", "lock_file")
_AGENTS = ("agent_control_file", "recipes_dir", "agent_limits", "default_slots")
#: The settings each operator command reads (beyond the global ones): its --help lists only these.
#: `run` and `validate-config` read every setting.
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "status": (*_STATE, *_AGENTS, "loop_interval_sec", "heartbeat_sec", "max_runtime_sec"),
    "logs": ("log_dir", "running_dir"),
    "report": ("mcp_endpoint", "tinytask_protocol", "running_dir", "prices"),
    "history": ("running_dir", "prices"),
}


def add_setting_flags(
    parser: argparse.ArgumentParser, names: Sequence[str] | None = None, *, listed: bool = True
) -> None:
    """One flag per setting in `names` (default: every setting but the global ones), each
    overriding its variable; not `listed` in --help (config takes them all, to show their effect)."""
    group = parser.add_argument_group("settings (flag > environment > env file > default)")
    for info in SETTINGS:
        if info.name not in GLOBAL_SETTINGS and (names is None or info.name in names):
            _add_setting(group, info, listed=listed)


def load_from_args(args: argparse.Namespace) -> LoadedSettings:
    """Settings from the parsed arguments; raises ConfigError. A command that found no configuration
    at all says on stderr where it looked (it goes on with the defaults)."""
    cli = {info.name: getattr(args, info.name) for info in SETTINGS if hasattr(args, info.name)}
    loaded = load_settings(env_file=getattr(args, "env_file", None), cli=cli)
    if not loaded.configured:
        print(f"tinyscheduler: note: {loaded.where_looked()}; using the defaults", file=sys.stderr)
    return loaded


# --- run ------------------------------------------------------------------------------------


def _run(args: argparse.Namespace) -> int:
    loaded = load_from_args(args)
    s = loaded.settings
    if not s.enabled and not s.dry_run:
        print(
            f"tinyscheduler: disabled by {_kill_switch_origin(loaded)}; nothing was done (a --dry-run still works)",
            file=sys.stderr,
        )
        return EXIT_OK
    if not s.base_path.is_dir():
        # A mistyped base path must not become a new empty tree with the state folders in it.
        raise ConfigError([f"{_origin(loaded, 'base_path')}={str(s.base_path)!r}: not an existing folder"])
    from tinyscheduler.cli.run import run_command

    return run_command(loaded, once=args.once, daemon=args.daemon, json_output=args.json)


def _origin(loaded: LoadedSettings, name: str) -> str:
    """How an error message names where a setting's value came from."""
    info = _INFO[name]
    source = loaded.sources[name]
    if source == "cli":
        return info.flag
    if source == "env-file":
        return f"{loaded.env_file}: {info.env_var}"
    return info.env_var if source == "env" else f"{info.env_var} (default)"


def _kill_switch_origin(loaded: LoadedSettings) -> str:
    info = _INFO["enabled"]
    return {
        "cli": "--no-enabled",
        "env": f"{info.env_var}=false in the environment",
        "env-file": f"{info.env_var}=false in {loaded.env_file}",
    }.get(loaded.sources["enabled"], info.env_var)


def _add_run(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "run",
        parents=common,
        allow_abbrev=False,
        help="schedule Goose runs",
        description="Reconcile TinyTask, the lease files and the running processes, then assign "
        "and start runs. With TINYSCHEDULER_ENABLED=false it does nothing and exits 0.",
    )
    mode = parser.add_argument_group("mode").add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="one pass, then supervise the runs it started until they end (cron, timers)"
    )
    mode.add_argument(
        "--daemon", action="store_true", help="run until stopped by SIGTERM/SIGINT; SIGHUP reloads the configuration"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="as JSON: the dry run's plan; with --once, the pass and the runs it started, once they ended",
    )
    add_setting_flags(parser)
    parser.set_defaults(handler=_run)


# --- init -----------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.init import init_command

    return init_command(args.path, user=args.user, force=args.force, json_output=args.json)


def _add_init(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "init",
        parents=common,
        allow_abbrev=False,
        help="set up a base path: settings, an example registry and recipes, state folders, systemd units",
        description="Write PATH/.env (every setting, the base path set to PATH), goose.env, an example "
        "agent-control.json with a recipe per agent (TinyTask MCP extension), the state folders, and "
        "systemd units and a cron file written for PATH and this installation. Run again, it keeps "
        "every file that exists.",
    )
    parser.add_argument("path", nargs="?", type=Path, metavar="PATH", help="the base path (default: here)")
    parser.add_argument("--force", action="store_true", help="replace the files that exist")
    parser.add_argument("--user", metavar="NAME", help="the user the units run as (default: you)")
    parser.add_argument("--json", action="store_true", help="what was created, replaced and kept, as JSON")
    parser.set_defaults(handler=_init)


# --- config ---------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> int:
    from tinyscheduler.core.text import escaped

    loaded = load_from_args(args)
    for where in loaded.unknown_keys:
        print(escaped(f"warning: {where} is not a setting (ignored)"), file=sys.stderr)
    # Values come redacted from describe() (core.redact), in both formats.
    if args.json:
        document = {"env_file": str(loaded.env_file) if loaded.env_file else None, "settings": loaded.describe()}
        print(json.dumps(document, indent=2))
        return EXIT_OK
    print(escaped(f"env file: {loaded.env_file or 'none'}"))
    rows = [(row["name"], escaped(_text(row["value"])), row["source"], row["env_var"]) for row in loaded.describe()]
    rows.insert(0, ("SETTING", "VALUE", "SOURCE", "VARIABLE"))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[3])
    return EXIT_OK


def _text(value: Any) -> str:
    if isinstance(value, (bool, dict)):
        return json.dumps(value)
    return str(value)


def _add_config(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "config",
        parents=common,
        allow_abbrev=False,
        help="show the resolved configuration",
        description="Print every setting, its value and where it came from "
        "(default, env-file, env, cli), and which env file was read. Secret values are redacted. "
        "Any setting's flag shows its effect here (`run --help` lists them all).",
    )
    parser.add_argument("--show", action="store_true", help="show the settings (the default action)")
    parser.add_argument("--json", action="store_true", help="as JSON")
    add_setting_flags(parser, listed=False)
    parser.set_defaults(handler=_config)


# --- validate-config ------------------------------------------------------------------------


def _validate_config(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.status import printable
    from tinyscheduler.cli.validate import run_checks
    from tinyscheduler.core.redact import redacted

    checks = run_checks(load_from_args(args), fix=args.fix)
    errors = sum(1 for c in checks if not c.ok and c.level == "error")
    warnings = sum(1 for c in checks if not c.ok and c.level == "warning")
    if args.json:
        document = {"ok": not errors, "errors": errors, "warnings": warnings, "checks": [c.to_json() for c in checks]}
        print(json.dumps(redacted("", document), indent=2))
        return EXIT_FAILED if errors else EXIT_OK
    marks = {(True, "error"): "PASS", (True, "warning"): "PASS", (False, "error"): "FAIL", (False, "warning"): "WARN"}
    # Details quote files and the server's replies: shown escaped, secrets masked.
    print(printable([f"{marks[check.ok, check.level]}  {check.name}: {check.detail}" for check in checks]), end="")
    print(f"{errors} error(s), {warnings} warning(s)")
    return EXIT_FAILED if errors else EXIT_OK


def _add_validate_config(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "validate-config",
        parents=common,
        allow_abbrev=False,
        help="check the configuration",
        description="Check paths, the goose binary, the agent registry, recipes and TinyTask.",
        epilog="Exit status: 0 no error (warnings are fine); 1 at least one check failed; "
        "2 bad arguments or configuration.",
    )
    parser.add_argument(
        "--fix",
        action="store_true",
        help="create the state folders, the recipes folder and a placeholder agent-control file if missing; "
        "never overwrites anything",
    )
    parser.add_argument("--json", action="store_true", help="the checks as JSON")
    add_setting_flags(parser)
    parser.set_defaults(handler=_validate_config)


# --- demo, status, logs, report (operator commands; the work is in their own modules) ---------


def _demo(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.demo import demo_command

    return demo_command(keep=args.keep, tasks=args.tasks)


def _add_demo(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "demo",
        parents=common,
        allow_abbrev=False,
        help="watch the real daemon run a small workload",
        description="Start the in-package TinyTask-compatible server on 127.0.0.1, seed three queues and "
        "six agents with about 30 tasks, and run the real daemon with a stand-in goose in a "
        "throw-away folder. Uses its own settings, not yours. Under a minute; Ctrl-C stops it.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the demo folder (logs, state) afterwards")
    parser.add_argument("--tasks", type=int, default=30, metavar="N", help="number of tasks, 5 to 500 (default: 30)")
    parser.set_defaults(handler=_demo)


def _status(args: argparse.Namespace) -> int:
    if args.show_cluster:
        from tinyscheduler.cli.cluster_status import cluster_status_command

        return cluster_status_command(load_from_args(args).settings, json_output=args.json)
    from tinyscheduler.cli.status import status_command

    return status_command(load_from_args(args), json_output=args.json)


def _add_status(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "status",
        parents=common,
        allow_abbrev=False,
        help="what the scheduler on this host is doing",
        description="Daemon (lock holder), slots per agent, runs in flight, the last pass, the disk the "
        "state uses and anything wrong, from the state folder alone: works with no daemon and changes nothing.",
        epilog="Exit status, as systemctl's: 0 a daemon runs and nothing is wrong; 1 problems are listed; "
        "3 no daemon runs for this base path (and nothing else is wrong); 2 bad arguments or configuration.",
    )
    parser.add_argument("--json", action="store_true", help="as JSON")
    parser.add_argument(
        "--cluster",
        action="store_true",
        dest="show_cluster",  # `cluster` is the setting (--cluster-name)
        help="the hosts of this host's cluster instead, from etcd: agents, free slots, heartbeats, claims",
    )
    add_setting_flags(parser, COMMAND_SETTINGS["status"])
    parser.set_defaults(handler=_status)


def _logs(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.logs import logs_command

    return logs_command(load_from_args(args), task_id=args.task_id, attempt=args.attempt, follow_output=args.follow)


def _add_logs(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "logs",
        parents=common,
        allow_abbrev=False,
        help="print a run's Goose output",
        description="Print the output of a task's run (the latest attempt unless --attempt).",
    )
    parser.add_argument("task_id", type=int, metavar="TASK_ID", help="the TinyTask task id")
    parser.add_argument("--attempt", type=int, metavar="N", help="which attempt (default: the latest)")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing while the run is in flight")
    add_setting_flags(parser, COMMAND_SETTINGS["logs"])
    parser.set_defaults(handler=_logs)


def _report(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.report import parse_statuses, report_command

    try:
        statuses = parse_statuses(args.status)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return report_command(
        load_from_args(args),
        fmt="json" if args.json else args.format,
        agent=args.agent,
        statuses=statuses,
        output=args.output,
    )


def _add_report(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "report",
        parents=common,
        allow_abbrev=False,
        help="TinyTask workload report",
        description="Summary, per-agent breakdown, priority distribution, task age and the task table, "
        "from one TinyTask list request per status.",
    )
    parser.add_argument(
        "--format",
        choices=("table", "json", "markdown"),
        default="table",
        help="table (default), json (every task, the original's key names; the same as --json) or markdown",
    )
    parser.add_argument("--json", action="store_true", help="as JSON (the same as --format json)")
    parser.add_argument("--agent", metavar="A", help="only tasks assigned to this agent")
    parser.add_argument(
        "--status",
        default="idle,working",
        metavar="S[,S]",
        help="statuses to include: idle, working, complete (default: idle,working)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write to FILE instead of stdout")
    add_setting_flags(parser, COMMAND_SETTINGS["report"])
    parser.set_defaults(handler=_report)


# --- pause, resume, cancel, drain (operator control; the work is in cli/control.py) ----------


def _control(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.control import control_command

    return control_command(load_from_args(args), args)


_CONTROL_EPILOG = (
    "Sent to the running daemon over state/control.sock; with no daemon, pause, resume and drain "
    "change state/pauses.json. Exit: 0 applied, 1 refused, 2 usage, 3 no daemon running."
)


def _add_json(parser: _Parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="one JSON document on stdout: action, ok, exit_code, said, refused"
    )


def _add_scoped(sub: Subparsers, common: list[_Parser], name: str, help_text: str, description: str) -> _Parser:
    parser = sub.add_parser(
        name, parents=common, allow_abbrev=False, help=help_text, description=description, epilog=_CONTROL_EPILOG
    )
    target = parser.add_argument_group("what (one of)").add_mutually_exclusive_group(required=True)
    target.add_argument("--agent", metavar="A", help="one agent")
    target.add_argument("--queue", metavar="Q", help="one queue: its tasks are neither assigned nor started")
    target.add_argument("--host", action="store_true", help="the whole host (this scheduler)")
    _add_json(parser)
    parser.set_defaults(handler=_control, control=name)
    return parser


def _add_pause(sub: Subparsers, common: list[_Parser]) -> None:
    parser = _add_scoped(
        sub,
        common,
        "pause",
        "stop new runs of an agent, a queue or the host",
        "Start no new run for the agent, the queue or the host until `resume`; runs in flight go on "
        "(unless --stop-runs). Kept in state/pauses.json: survives restarts and reloads.",
    )
    parser.add_argument("--reason", metavar="TEXT", help="why, shown in status and the skip reasons")
    parser.add_argument(
        "--stop-runs",
        action="store_true",
        help="also stop its runs in flight (stop ladder); their tasks are requeued, not counted as failures",
    )


def _add_resume(sub: Subparsers, common: list[_Parser]) -> None:
    _add_scoped(sub, common, "resume", "undo a pause or a drain", "End a pause (`--host` also ends a drain).")


def _add_cancel(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "cancel",
        parents=common,
        allow_abbrev=False,
        help="stop one task's run",
        description="Stop the task's run through the stop ladder. The task is requeued with a comment naming "
        "you and the reason, not counted as a failed attempt (unless --fail).",
        epilog=_CONTROL_EPILOG,
    )
    parser.add_argument("task_id", type=int, metavar="TASK", help="the TinyTask task id")
    parser.add_argument("--fail", action="store_true", help="count the run as a failed attempt (backoff, give-up)")
    parser.add_argument("--reason", metavar="TEXT", help="why, in the task's comment")
    _add_json(parser)
    parser.set_defaults(handler=_control, control="cancel")


def _add_drain(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "drain",
        parents=common,
        allow_abbrev=False,
        help="start nothing new and let the runs in flight finish",
        description="Pause the host as a drain: nothing new starts, runs in flight finish, the daemon stays "
        "up. `resume --host` ends it.",
        epilog=_CONTROL_EPILOG,
    )
    parser.add_argument("--wait", action="store_true", help="return once no run is in flight (exit 0)")
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="with --wait: give up waiting after S seconds (exit 1)"
    )
    parser.add_argument("--reason", metavar="TEXT", help="why, shown in status")
    _add_json(parser)
    parser.set_defaults(handler=_control, control="drain")


def _history(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.history import history_command

    return history_command(
        load_from_args(args),
        agent=args.agent,
        task_id=args.task,
        since=args.since,
        limit=args.limit,
        json_output=args.json,
    )


def _add_history(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "history",
        parents=common,
        allow_abbrev=False,
        help="the runs that ended on this host, with tokens and cost",
        description="Every run from the run history (state/history.sqlite3): start and end, agent, task, "
        "attempt, outcome and reason, exit code, duration, tokens, cost, host; then tokens and cost per "
        "agent and per task over the same runs.",
    )
    parser.add_argument("--agent", metavar="A", help="only runs of this agent")
    parser.add_argument("--task", type=int, metavar="N", help="only runs of this task")
    parser.add_argument("--since", metavar="WHEN", help="only runs that ended since: 30m, 12h, 1d, 2w, or a date")
    parser.add_argument(
        "--limit", type=int, default=100, metavar="N", help="list the latest N runs (default: 100; 0: all)"
    )
    parser.add_argument("--json", action="store_true", help="as JSON")
    add_setting_flags(parser, COMMAND_SETTINGS["history"])
    parser.set_defaults(handler=_history)


# --- completion, man (made from this parser) --------------------------------------------------


def _completion(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.completion import SHELLS

    sys.stdout.write(SHELLS[args.shell](build_parser()))
    return EXIT_OK


def _add_completion(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "completion",
        parents=common,
        allow_abbrev=False,
        help="print shell completion for bash, zsh or fish",
        description="Print the completion script of a shell, made from this command line's own definition. "
        "bash: `tinyscheduler completion bash > /etc/bash_completion.d/tinyscheduler`; zsh: into a folder of "
        "$fpath as _tinyscheduler; fish: to ~/.config/fish/completions/tinyscheduler.fish.",
    )
    parser.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell")
    parser.set_defaults(handler=_completion)


def _man(args: argparse.Namespace) -> int:
    from tinyscheduler.cli.completion import manual

    sys.stdout.write(manual(build_parser()))
    return EXIT_OK


def _add_man(sub: Subparsers, common: list[_Parser]) -> None:
    parser = sub.add_parser(
        "man",
        parents=common,
        allow_abbrev=False,
        help="print the manual page (roff)",
        description="Print the manual page, made from this command line's own definition: "
        "`tinyscheduler man | man -l -`, or save it as man1/tinyscheduler.1 in a MANPATH folder.",
    )
    parser.set_defaults(handler=_man)


#: Every subcommand, in the order `--help` lists them.
SUBCOMMANDS: list[Registration] = [
    _add_init,
    _add_run,
    _add_config,
    _add_validate_config,
    _add_demo,
    _add_status,
    _add_pause,
    _add_resume,
    _add_cancel,
    _add_drain,
    _add_logs,
    _add_report,
    _add_history,
    _add_completion,
    _add_man,
]


class _Parser(argparse.ArgumentParser):
    """A usage error is one line naming the argument and where help is, not the whole usage block
    (with every setting's flag, that block is twenty lines above the one that matters)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def subcommand_names(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name for action in parser._actions if isinstance(action, argparse._SubParsersAction) for name in action.choices
    ]


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(
        prog="tinyscheduler",
        parents=[common],
        allow_abbrev=False,
        description="Keeps a host's Goose agents busy with the work queued for them in TinyTask.",
        epilog="Settings: flag > environment (TINYSCHEDULER_*) > env file > default. "
        "Run `tinyscheduler SUBCOMMAND --help` for a subcommand's flags.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    for register in SUBCOMMANDS:
        register(sub, [common])
    return parser


def misplaced_flag(argv: Sequence[str], commands: Sequence[str]) -> str | None:
    """The hint for a subcommand's flag given before the subcommand (argparse would only say
    "invalid choice"), or None. Global options may stand on either side."""
    first = next((i for i, arg in enumerate(argv) if arg in commands), None)
    if first is None:
        return None
    command = argv[first]
    for arg in argv[:first]:
        flag = arg.split("=", 1)[0]
        info = _FLAGS.get(flag.replace("--no-", "--", 1) if flag.startswith("--no-") else flag)
        if info is not None and info.name not in GLOBAL_SETTINGS:
            return (
                f"tinyscheduler: error: {flag} is a flag of the subcommand, not a global option: put it after "
                f"the subcommand name (tinyscheduler {command} {arg} ...); only --env-file, "
                + ", ".join(_INFO[name].flag for name in GLOBAL_SETTINGS)
                + " may come first"
            )
    return None


_FLAGS = {info.flag: info for info in SETTINGS}


def main(argv: Sequence[str] | None = None) -> int:
    # Whatever a command creates (state, logs, a report) is its user's alone, whatever the caller's umask.
    restrict_umask()
    # Under journald every line gets a priority, the one-line errors printed before logging too.
    prefix_stderr()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    hint = misplaced_flag(argv, subcommand_names(parser))
    if hint is not None:
        print(hint, file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # `tinyscheduler config | head`: the reader has what it wanted. Point stdout at /dev/null
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except OSError as exc:
        if exc.filename is None:
            raise
        # A state or log folder that cannot be used (missing parent, a file in its place,
        # read-only, another user's): name it, no traceback.
        print(f"error: cannot use {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
