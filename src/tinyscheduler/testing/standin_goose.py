"""STAND-IN for the goose CLI, for tests and demos. It is not goose and runs no AI agent.

`tinyscheduler-standin-goose run --recipe R --params task_id=N --params agent=A --no-session ...`
accepts goose's arguments and ends the way goose ends (exit codes, `json` / `stream-json` output,
the max-turns sentence, `Headless run interrupted` on SIGINT, death on SIGTERM), doing what the
recipe's `standin:` mapping says instead of running a model:

    standin: {mode: succeed, seconds: 0.5, complete_task: false}

A task tag `standin:<mode>` or `standin:<mode>:<arg>` overrides the recipe for one task (read over
REST from $TINYTASK_ENDPOINT); <arg> is the seconds, or the megabytes for `flood`, or the target
agent for `transfer`. See MODES. With $TINYSCHEDULER_STANDIN_RECORD set, a JSON line is appended
to that file at start and at end so tests can check concurrency. Standard library and PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn

import yaml

# Goose's own words, spelled out here independently of outcomes.py so that a typo on either side
# shows up in the tests instead of agreeing with itself.
MAX_TURNS_TEXT = (
    "I've reached the maximum number of actions I can do without user input. Would you like me to continue?"
)
INTERRUPTED_TEXT = "Headless run interrupted"

MODES = {
    "succeed": "print some output and exit 0 after <seconds> (complete_task: true also completes the task)",
    "fail": "exit 1 after <seconds>",
    "fail-once": "fail on attempt 1 ($TINYSCHEDULER_ATTEMPT), succeed on later attempts",
    "hang": "never end; SIGINT -> 'Headless run interrupted', exit 1; SIGTERM kills",
    "stubborn": "never end and ignore SIGINT and SIGTERM (only SIGKILL stops it)",
    "flood": "print <megabytes> MB as fast as possible, then exit 0",
    "max-turns": "print the max-turns sentence and exit 0 (work incomplete)",
    "stream-json": "emit stream-json events ending with complete, or with error when `error:` is set",
    "transfer": "hand the task to the agent <to> over REST, then exit 0 after <seconds>",
}


@dataclass(frozen=True)
class Behaviour:
    mode: str = "succeed"
    seconds: float = 0.0
    megabytes: float = 1.0
    to: str | None = None
    complete_task: bool = False
    error: str | None = None


class Failure(Exception):
    """Ends the run like goose's own errors: message on stderr, exit 1."""


def _fail(message: str) -> NoReturn:
    raise Failure(message)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinyscheduler-standin-goose",
        description="STAND-IN for the goose CLI (tests and demos only; runs no AI agent). "
        "Behaves as the recipe's `standin:` mapping or a `standin:<mode>[:<arg>]` task tag says.",
        epilog="modes:\n" + "\n".join(f"  {name:12} {text}" for name, text in MODES.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a recipe headless, the way `goose run` does")
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
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except Failure as exc:
        print(f"Error: {exc}", file=sys.stderr, flush=True)
        return 1


def _run(args: argparse.Namespace) -> int:
    if sum(x is not None for x in (args.recipe, args.instructions, args.text)) != 1:
        _fail("Must provide exactly one of --instructions (-i), --text (-t), or --recipe.")
    if args.name and args.no_session:
        _fail("--name cannot be used with --no-session")
    params = dict(_param(p) for p in args.params)
    if args.instructions not in (None, "-"):
        _read_instructions(Path(args.instructions))
    recipe = _load_recipe(Path(args.recipe)) if args.recipe else {}
    if args.render_recipe:
        print(_render(yaml.safe_dump(recipe, sort_keys=False), params), end="")
        return 0
    if args.explain:
        print(f"Title: {recipe.get('title', '')}\nDescription: {recipe.get('description', '')}")
        for parameter in recipe.get("parameters") or []:
            print(f"  parameter {parameter.get('key')}: {parameter.get('description', '')}")
        return 0

    task_id = params.get("task_id") or os.environ.get("TINYSCHEDULER_TASK_ID")
    agent = params.get("agent") or os.environ.get("TINYSCHEDULER_AGENT")
    api = _api_base(os.environ.get("TINYTASK_ENDPOINT"))
    behaviour = _behaviour(recipe.get("standin"), f"recipe {args.recipe}")
    if api and task_id:
        behaviour = _tag_override(behaviour, _tags(api, task_id))
    out = Output("stream-json" if behaviour.mode == "stream-json" else args.output_format)

    # Before the start record, which tests take as "ready for signals".
    if behaviour.mode == "stubborn":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:  # explicit, in case the parent left them ignored
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _record("start", task_id, agent)
    code = 1
    try:
        code = _act(behaviour, out, api, task_id, agent)
    except KeyboardInterrupt:  # SIGINT, as goose handles it
        print(INTERRUPTED_TEXT, file=sys.stderr, flush=True)
    finally:
        _record("end", task_id, agent, code)
    return code


def _act(b: Behaviour, out: Output, api: str | None, task_id: str | None, agent: str | None) -> int:
    out.message(f"stand-in goose: task {task_id} for agent {agent}, mode {b.mode}")

    mode = b.mode
    if mode == "fail-once":
        mode = "fail" if int(os.environ.get("TINYSCHEDULER_ATTEMPT", "1")) <= 1 else "succeed"
    if mode in ("hang", "stubborn"):
        while True:
            time.sleep(3600)
    if mode == "flood":
        _flood(b.megabytes)
        out.finish("completed")
        return 0
    if mode == "transfer":
        if not (api and task_id and agent and b.to):
            _fail("transfer needs TINYTASK_ENDPOINT, task_id, agent and a target agent")
        _call(
            api,
            "POST",
            f"/api/v1/tasks/{task_id}/transfer",
            {"current_agent": agent, "new_agent": b.to, "comment": f"stand-in goose: handing over to {b.to}"},
        )
        out.message(f"transferred task {task_id} to {b.to}")
    time.sleep(b.seconds)
    if mode == "fail":
        out.finish("error", "stand-in goose: simulated failure")
        return 1
    if mode == "max-turns":
        out.message(MAX_TURNS_TEXT)
        out.finish("completed")
        return 0
    if b.complete_task and api and task_id:
        _call(api, "PATCH", f"/api/v1/tasks/{task_id}", {"status": "complete"})
    out.message("stand-in goose: done")
    out.finish("error" if b.error else "completed", b.error)
    return 0


class Output:
    """Prints like `goose run --output-format text|json|stream-json`; flushed, the log is a file."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.messages: list[dict[str, Any]] = []

    def message(self, text: str) -> None:
        message = {"role": "assistant", "content": [{"type": "text", "text": text}]}
        if self.fmt == "text":
            print(text, flush=True)
        elif self.fmt == "stream-json":
            print(json.dumps({"type": "message", "message": message}), flush=True)
        else:
            self.messages.append(message)

    def finish(self, status: str, error: str | None = None) -> None:
        tokens = {"total_tokens": 30, "input_tokens": 20, "output_tokens": 10}
        if self.fmt == "json":
            print(
                json.dumps({"messages": self.messages, "metadata": {**tokens, "status": status}}, indent=2), flush=True
            )
        elif self.fmt == "stream-json":
            event = {"type": "error", "error": error} if status == "error" else {"type": "complete", **tokens}
            print(json.dumps(event), flush=True)
        elif error:
            print(error, file=sys.stderr, flush=True)


def _flood(megabytes: float) -> None:
    line = b"flood " + b"x" * 120 + b"\n"
    count = max(1, int(megabytes * 1024 * 1024) // len(line))
    chunk = line * 512
    written = 0
    while written + 512 <= count:
        sys.stdout.buffer.write(chunk)
        written += 512
    sys.stdout.buffer.write(line * (count - written))
    sys.stdout.buffer.write(b"flood: end of output\n")
    sys.stdout.buffer.flush()


# --- behaviour: recipe, then task tag --------------------------------------------------------------


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "mode": str,
    "seconds": (int, float),
    "megabytes": (int, float),
    "to": str,
    "complete_task": bool,
    "error": str,
}


def _behaviour(raw: Any, where: str) -> Behaviour:
    if raw is None:
        return Behaviour()
    if not isinstance(raw, dict):
        _fail(f"{where}: standin must be a mapping")
    for key, value in raw.items():
        expected = _FIELD_TYPES.get(key)
        if expected is None:
            _fail(f"{where}: unknown standin key {key!r} (known: {', '.join(_FIELD_TYPES)})")
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            _fail(f"{where}: standin {key}: unexpected value {value!r}")
    behaviour = Behaviour(**raw)
    if behaviour.mode not in MODES:
        _fail(f"{where}: unknown standin mode {behaviour.mode!r} (known: {', '.join(MODES)})")
    return behaviour


def _tag_override(behaviour: Behaviour, tags: list[str]) -> Behaviour:
    for tag in tags:
        if not tag.startswith("standin:"):
            continue
        _, mode, *rest = tag.split(":", 2)
        arg = rest[0] if rest else None
        if mode not in MODES:
            _fail(f"task tag {tag!r}: unknown standin mode {mode!r}")
        changed = replace(behaviour, mode=mode)
        if arg is None:
            return changed
        if mode == "transfer":
            return replace(changed, to=arg)
        try:
            number = float(arg)
        except ValueError:
            _fail(f"task tag {tag!r}: expected a number after the mode")
        return replace(changed, megabytes=number) if mode == "flood" else replace(changed, seconds=number)
    return behaviour


# --- files and REST ------------------------------------------------------------------------------


def _param(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        _fail(f"invalid --params {text!r}: expected KEY=VALUE")
    return key, value


def _read_instructions(path: Path) -> str:
    # goose reads the file before anything else and ends with exit 1 when it cannot.
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"Instruction file not found — did you mean to use goose run --text? ({path}: {exc})")


def _load_recipe(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"cannot read recipe {path}: {exc.strerror}")
    except yaml.YAMLError as exc:
        _fail(f"recipe {path} is not valid YAML: {exc}")
    if not isinstance(data, dict):
        _fail(f"recipe {path}: expected a mapping")
    return data


def _render(text: str, params: dict[str, str]) -> str:
    for key, value in params.items():
        text = text.replace("{{ " + key + " }}", value).replace("{{" + key + "}}", value)
    return text


def _api_base(endpoint: str | None) -> str | None:
    # The scheduler may be configured with the MCP URL; REST lives on the same port.
    if not endpoint:
        return None
    base = endpoint.rstrip("/")
    return base[: -len("/mcp")] if base.endswith("/mcp") else base


def _tags(api: str, task_id: str) -> list[str]:
    try:
        task = _call(api, "GET", f"/api/v1/tasks/{task_id}")
    except Failure as exc:  # the recipe's behaviour still applies
        print(f"stand-in goose: could not read the task's tags: {exc}", file=sys.stderr, flush=True)
        return []
    tags = task.get("tags") if isinstance(task, dict) else None
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def _call(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(api + path, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        _fail(f"{method} {path}: HTTP {exc.code}: {exc.read()[:200]!r}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        _fail(f"{method} {path}: {exc}")


def _record(event: str, task_id: str | None, agent: str | None, code: int | None = None) -> None:
    path = os.environ.get("TINYSCHEDULER_STANDIN_RECORD")
    if not path:
        return
    entry: dict[str, Any] = {
        "event": event,
        "task_id": int(task_id) if task_id and task_id.isdigit() else task_id,
        "agent": agent,
        "pid": os.getpid(),
        "t": time.time(),
    }
    if event == "end":
        entry["exit"] = code
    # One write of one line on an O_APPEND descriptor: concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main())
