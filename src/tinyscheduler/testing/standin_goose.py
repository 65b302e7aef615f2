"""STAND-IN for the goose CLI, for tests and demos. It is not goose and runs no AI agent.

`tinyscheduler-standin-goose run --recipe R --params task_id=N --params agent=A --no-session ...`
accepts goose's arguments and ends the way goose ends (exit codes, `text` / `json` / `stream-json`
output with token figures, the max-turns sentence, `Headless run interrupted` on SIGINT, death on
SIGTERM), doing what the recipe's `standin:` mapping says instead of running a model:

    standin: {mode: succeed, seconds: 0.5, complete_task: false, input_tokens: 1200, output_tokens: 300}

A task tag `standin:<mode>` or `standin:<mode>:<arg>` overrides the recipe for one task (read over
REST from $TINYTASK_ENDPOINT); <arg> is the seconds, or the megabytes for `flood`, the MB/s for
`flood-rate`, the lifetime of what a child mode leaves behind, or the target agent for `transfer`.
See MODES (standin_run.py). `--version` prints STANDIN_MARKER, so nobody mistakes it for goose.

Test hooks: with $TINYSCHEDULER_STANDIN_RECORD set, JSON lines are appended to that file (`start`,
`end` with the exit code, `child` with the pid of a process left behind, `overlap`); with
$TINYSCHEDULER_STANDIN_LOCK_DIR set, the run holds an flock on <dir>/task_<id>.lock and records an
`overlap` when another run of the same task holds it.

It starts fast (tests/bench/bench_standin_start.py): imports are few and lazy, PyYAML uses its C
loader. Its first act blocks SIGINT and SIGTERM: one that arrives during start-up waits until the
behaviour is known, so a stop ladder cannot race the start-up (a `stubborn` run still ignores it).
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

import os  # noqa: E402 - after the signals, on purpose
import sys  # noqa: E402

from tinyscheduler.testing.standin_recipe import load_recipe, standin_mapping  # noqa: E402
from tinyscheduler.testing.standin_run import (  # noqa: E402
    INTERRUPTED_TEXT,
    MAX_TURNS_TEXT,
    MODES,
    STREAM_MODES,
    Behaviour,
    Context,
    Failure,
    Output,
    Request,
    act,
    fail,
)

TYPE_CHECKING = False  # typing itself costs milliseconds at every start
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any

__all__ = ["INTERRUPTED_TEXT", "MAX_TURNS_TEXT", "MODES", "STANDIN_MARKER", "main", "write_launcher"]

#: In the first line of `--version`: how the daemon can tell the stand-in from goose and refuse it.
from tinyscheduler.core.standin import STANDIN_MARKER  # noqa: E402  (one definition, also read by the daemon)

#: What the <arg> of a `standin:<mode>:<arg>` tag sets, by mode (`seconds` for the others).
TAG_ARGUMENT = {
    "transfer": "to",
    "flood": "megabytes",
    "flood-rate": "rate",
    "setsid-child": "linger",
    "double-fork": "linger",
    "background-child": "linger",
    "escaped-writer": "linger",
    "untagged-child": "linger",
}


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from tinyscheduler import __version__

    parser = argparse.ArgumentParser(
        prog="tinyscheduler-standin-goose",
        description="STAND-IN for the goose CLI (tests and demos only; runs no AI agent). "
        "Behaves as the recipe's `standin:` mapping or a `standin:<mode>[:<arg>]` task tag says.",
        epilog="modes:\n" + "\n".join(f"  {name:16} {text}" for name, text in MODES.items()),
        formatter_class=_formatter,
    )
    parser.add_argument("-V", "--version", action="version", version=f"{STANDIN_MARKER} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe headless, the way `goose run` does", formatter_class=_formatter)
    run.add_argument("--recipe")
    run.add_argument("-i", "--instructions")
    run.add_argument("-t", "--text")
    run.add_argument("--params", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--no-session", action="store_true")
    run.add_argument("-n", "--name")
    run.add_argument("--max-turns", type=int, default=1000)
    run.add_argument("--output-format", choices=("text", "json", "stream-json"), default="text")
    run.add_argument("-q", "--quiet", action="store_true")
    run.add_argument("--provider")
    run.add_argument("--model")
    run.add_argument("--with-extension", action="append", default=[])
    run.add_argument("--with-builtin", action="append", default=[])
    run.add_argument("--no-profile", action="store_true")
    run.add_argument("--render-recipe", action="store_true")
    run.add_argument("--explain", action="store_true")
    return parser


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's help formatter, told the terminal's width: left to itself it imports shutil
    (some 2 ms of every start) just to ask."""
    import argparse

    try:
        columns = int(os.environ.get("COLUMNS") or os.get_terminal_size().columns)
    except (OSError, ValueError):
        columns = 80
    return argparse.RawDescriptionHelpFormatter(prog, width=max(columns, 20) - 2)


def write_launcher(path: Path, python: str = sys.executable) -> Path:
    """An executable at `path` that runs this stand-in with `python` (the daemon needs a program
    to start, and a plain install puts no stand-in on PATH). Replaced atomically: concurrent
    writers (parallel test workers) never leave a half-written script."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(
        f"#!/bin/sh\n# STAND-IN for goose (tinyscheduler tests and demo); not an AI agent.\n"
        f'exec "{python}" -m tinyscheduler.testing.standin_goose "$@"\n',
        encoding="utf-8",
    )
    tmp.chmod(0o755)
    os.replace(tmp, path)
    _compile_own_modules()
    return path


def _compile_own_modules() -> None:
    """Byte-compile the modules the stand-in runs, as an install would: with PYTHONDONTWRITEBYTECODE
    set (as in the test environment) each start would otherwise compile them again, some 5 ms.
    Best effort: a read-only tree only makes the start slower."""
    import contextlib
    import py_compile

    import tinyscheduler
    from tinyscheduler.testing import standin_recipe, standin_run

    package = os.path.dirname(tinyscheduler.__file__)
    for source in (
        os.path.join(package, "__init__.py"),
        os.path.join(package, "testing", "__init__.py"),
        __file__,
        standin_run.__file__,
        standin_recipe.__file__,
    ):
        with contextlib.suppress(OSError, py_compile.PyCompileError):
            py_compile.compile(source, doraise=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Failure as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1


def _run(args: argparse.Namespace) -> int:
    if sum(x is not None for x in (args.recipe, args.instructions, args.text)) != 1:
        fail("Must provide exactly one of --instructions (-i), --text (-t), or --recipe.")
    if args.name and args.no_session:
        fail("--name cannot be used with --no-session")
    params = dict(_param(p) for p in args.params)
    if args.instructions not in (None, "-"):
        _read_instructions(args.instructions)
    task_id = params.get("task_id") or os.environ.get("TINYSCHEDULER_TASK_ID")
    agent = params.get("agent") or os.environ.get("TINYSCHEDULER_AGENT")
    api = _api_base(os.environ.get("TINYTASK_ENDPOINT"))
    if args.render_recipe or args.explain:
        _preflight(args, load_recipe(args.recipe) if args.recipe else {}, params)
        return 0
    asked = _ask_for_tags(api, task_id) if api and task_id else None  # answered while the recipe is read
    standin = standin_mapping(args.recipe) if args.recipe else None
    behaviour = Behaviour(_mapping(standin, f"recipe {args.recipe}"), f"recipe {args.recipe}")
    if asked is not None:
        behaviour = _tag_override(behaviour, _tags(asked))
    fmt = "stream-json" if behaviour.mode in STREAM_MODES else args.output_format
    run = Context(behaviour, Output(fmt, behaviour, args.model or behaviour.model, args.quiet), api, task_id, agent)
    return _supervised(run)


def _supervised(run: Context) -> int:
    """The run between its start and end records, with goose's signal handling in place."""
    if run.behaviour.mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards one already pending, too
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:  # explicit, in case the parent left them ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    holder = run.hold_task_lock()
    run.record("start")
    if holder is not None:  # another run of this task is in flight: the test will want to know
        run.record("overlap", holder=holder or None)
    code = 1
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a stop that came early lands here
        code = act(run)
    except KeyboardInterrupt:  # SIGINT, as goose handles it
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # a second one must not cut this short
        print(INTERRUPTED_TEXT, file=sys.stderr, flush=True)
    finally:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # the end record is always written
        run.record("end", exit=code)
    return code


def _preflight(args: argparse.Namespace, recipe: dict[str, Any], params: dict[str, str]) -> None:
    """--render-recipe / --explain: print and exit without running."""
    if args.render_recipe:
        import yaml

        text = yaml.safe_dump(recipe, sort_keys=False)
        for key, value in params.items():
            text = text.replace("{{ " + key + " }}", value).replace("{{" + key + "}}", value)
        print(text, end="")
        return
    print(f"Title: {recipe.get('title', '')}\nDescription: {recipe.get('description', '')}")
    for parameter in recipe.get("parameters") or []:
        if isinstance(parameter, dict):
            print(f"  parameter {parameter.get('key')}: {parameter.get('description', '')}")


# --- behaviour: recipe, then task tag --------------------------------------------------------------


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        fail(f"{where}: standin must be a mapping")
    return raw


def _tag_override(behaviour: Behaviour, tags: list[str]) -> Behaviour:
    for tag in tags:
        if not tag.startswith("standin:"):
            continue
        _, mode, *rest = tag.split(":", 2)
        where = f"task tag {tag!r}"
        if mode not in MODES:
            fail(f"{where}: unknown standin mode {mode!r} (known: {', '.join(MODES)})")
        if not rest:
            return behaviour.changed(where, mode=mode)
        field = TAG_ARGUMENT.get(mode, "seconds")
        if field == "to":
            return behaviour.changed(where, mode=mode, to=rest[0])
        try:
            number = float(rest[0])
        except ValueError:
            fail(f"{where}: expected a number after the mode")
        return behaviour.changed(where, mode=mode, **{field: number})
    return behaviour


# --- files and TinyTask ------------------------------------------------------------------------------


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        fail(f"invalid --params {text!r}: expected KEY=VALUE")
    return key, value


def _read_instructions(path: str) -> str:
    # goose reads the file before anything else and ends with exit 1 when it cannot.
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"Instruction file not found — did you mean to use goose run --text? ({path}: {exc})")


def _api_base(endpoint: str | None) -> str | None:
    # The scheduler may be configured with the MCP URL; REST lives on the same port.
    if not endpoint:
        return None
    base = endpoint.rstrip("/")
    return base[: -len("/mcp")] if base.endswith("/mcp") else base


def _ask_for_tags(api: str, task_id: str) -> Request | None:
    try:
        return Request(api, "GET", f"/api/v1/tasks/{task_id}")
    except Failure as exc:  # the recipe's behaviour still applies
        print(f"stand-in goose: could not read the task's tags: {exc}", file=sys.stderr, flush=True)
        return None


def _tags(asked: Request) -> list[str]:
    try:
        task = asked.reply()
    except Failure as exc:
        print(f"stand-in goose: could not read the task's tags: {exc}", file=sys.stderr, flush=True)
        return []
    tags = task.get("tags") if isinstance(task, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


if __name__ == "__main__":
    sys.exit(main())
