"""`tinyscheduler pause|resume|cancel|drain`: the operator's commands.

With a daemon running (it holds the instance lock), the request goes over its control socket and
the command returns once the daemon has applied it. With none, pause, resume and drain change
`state/pauses.json` themselves (holding the lock meanwhile, so no daemon starts half-way) and say
so; cancel has nothing to stop. Exit codes: 0 applied, 1 refused (one line saying why), 2 bad
arguments or configuration, 3 no daemon running (cancel, or a daemon gone while draining).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, ClassVar

from tinyscheduler.adapters.controlsocket import Peer, ask, login_uid_of, user_name
from tinyscheduler.adapters.lock import is_locked, read_holder
from tinyscheduler.adapters.logsetup import EventLog
from tinyscheduler.adapters.pausestore import DaemonRunning, PauseStore, without_daemon
from tinyscheduler.config.settings import ConfigError, LoadedSettings, Settings
from tinyscheduler.core.control import Action, Refusal, Request, RequestError, Scope, change_pauses, parse_request
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.control import event_fields, known_targets
from tinyscheduler.service.runtime import utcnow

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_NOT_RUNNING = 3

#: How long the daemon may take to answer (a pause writes and fsyncs a file).
ASK_TIMEOUT_SEC = 10.0
#: A daemon that has just taken the lock may not listen yet: try again meanwhile.
CONNECT_PATIENCE_SEC = 5.0
#: How often `drain --wait` asks how many runs are left.
POLL_SEC = 0.5


class Unreachable(Exception):
    """A daemon holds the lock but its control socket does not answer."""


def request_from(args: argparse.Namespace) -> Request:
    """The request the arguments ask for, checked as the daemon checks it; raises RequestError."""
    action = Action(args.control)
    scope, target = None, ""
    if action in (Action.PAUSE, Action.RESUME):
        scope = Scope.HOST if args.host else Scope.AGENT if args.agent is not None else Scope.QUEUE
        target = args.agent if args.agent is not None else args.queue or ""
    request = Request(
        action,
        scope,
        target,
        reason=getattr(args, "reason", None) or "",
        stop_runs=getattr(args, "stop_runs", False),
        task_id=getattr(args, "task_id", None),
        fail=getattr(args, "fail", False),
        wait=getattr(args, "wait", False),
    )
    return parse_request(request.to_json())


class _Said:
    """What the command said; with --json, collected for the one JSON document it prints at the end."""

    collecting = False
    lines: ClassVar[list[str]] = []
    refused: ClassVar[list[str]] = []


def _say(line: str) -> None:
    if _Said.collecting:
        _Said.lines.append(line)
        return
    print(line, flush=True)


def _refuse(line: str, code: int = EXIT_REFUSED) -> int:
    """One line on stderr saying why; the exit code."""
    _Said.refused.append(line)
    print(f"tinyscheduler: {line}", file=sys.stderr)
    return code


def control_command(loaded: LoadedSettings, args: argparse.Namespace) -> int:
    """Entry point of pause, resume, cancel and drain; with --json, one JSON document on stdout:
    action, ok, exit_code, the lines said and the refusal (or null)."""
    if not getattr(args, "json", False):
        return _control(loaded, args)
    _Said.collecting = True
    try:
        code = _control(loaded, args)
    finally:
        _Said.collecting = False
    document = {"action": args.control, "ok": code == EXIT_OK, "exit_code": code, "said": _Said.lines}
    print(json.dumps({**document, "refused": _Said.refused[-1] if _Said.refused else None}))
    return code


def _control(loaded: LoadedSettings, args: argparse.Namespace) -> int:
    s = loaded.settings
    try:
        request = request_from(args)
    except RequestError as exc:
        raise ConfigError([str(exc)]) from None
    problem = _not_owner(s)
    if problem:
        return _refuse(problem)
    for _ in range(3):  # a daemon may start or stop between the look at the lock and the request
        try:
            reply = _ask_daemon(s, request.to_json())
        except Unreachable as exc:
            return _refuse(str(exc))
        if reply is not None:
            return _answered(s, request, reply, args)
        if request.action is Action.CANCEL:
            return _refuse(f"no daemon running ({s.lock_file} is not locked): no run to cancel", EXIT_NOT_RUNNING)
        try:
            return _offline(loaded, request)
        except DaemonRunning:
            continue
    return _refuse("the daemon kept starting and stopping; try again")


def _not_owner(s: Settings) -> str | None:
    try:
        owner = os.stat(s.state_dir).st_uid
    except FileNotFoundError:
        raise ConfigError([f"state folder {s.state_dir} does not exist: is the base path the daemon's?"]) from None
    if owner != os.geteuid():
        return (
            f"refused: only the owner of {s.state_dir} ({user_name(owner)}) may control the scheduler, "
            f"not {user_name(os.geteuid())} (sudo -u {user_name(owner)} tinyscheduler ...)"
        )
    return None


def _ask_daemon(s: Settings, request: dict[str, Any]) -> dict[str, Any] | None:
    """The daemon's reply, or None when no daemon holds the lock; raises Unreachable."""
    patience = time.monotonic() + CONNECT_PATIENCE_SEC
    while True:
        if not is_locked(s.lock_file):
            return None
        try:
            reply = ask(s.control_socket, request, ASK_TIMEOUT_SEC)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            why = f"{s.control_socket}: {exc.strerror}"
        except TimeoutError:
            raise Unreachable(f"the daemon did not answer within {ASK_TIMEOUT_SEC:g}s ({s.control_socket})") from None
        except (OSError, ValueError) as exc:
            raise Unreachable(f"cannot talk to the daemon over {s.control_socket}: {exc}") from None
        else:
            return reply
        if time.monotonic() > patience:
            holder = read_holder(s.lock_file)
            raise Unreachable(f"the daemon ({holder}) holds the lock but its control socket does not answer: {why}")
        time.sleep(0.1)


def _answered(s: Settings, request: Request, reply: dict[str, Any], args: argparse.Namespace) -> int:
    message = str(reply.get("message", ""))
    if not reply.get("ok"):
        return _refuse(f"refused: {message}")
    _say(message)
    if request.action is Action.DRAIN and request.wait:
        return _wait_idle(s, args.timeout)
    return EXIT_OK


def _wait_idle(s: Settings, timeout: float | None) -> int:
    """Ask how many runs are left until none is, the drain ends, or `timeout` seconds pass."""
    deadline = None if timeout is None else time.monotonic() + timeout
    said: int | None = None
    while True:
        try:
            reply = _ask_daemon(s, {"action": Action.STATUS.value})
        except Unreachable as exc:
            return _refuse(str(exc))
        if reply is None:
            return _refuse("the daemon stopped while draining", EXIT_NOT_RUNNING)
        left = len(reply.get("runs") or [])
        if reply.get("draining") is None:
            return _refuse(f"the drain was ended (resume --host) with {left} run(s) in flight")
        if left == 0:
            _say("idle: no run in flight; the daemon stays up and starts nothing until `resume --host`")
            return EXIT_OK
        if left != said:
            _say(f"draining: {left} run{'' if left == 1 else 's'} left")
            said = left
        if deadline is not None and time.monotonic() > deadline:
            return _refuse(f"timed out after {timeout:g}s: {left} run(s) still in flight; the drain goes on")
        time.sleep(POLL_SEC)


def _offline(loaded: LoadedSettings, request: Request) -> int:
    """No daemon: change state/pauses.json here, under the instance lock (raises DaemonRunning)."""
    s = loaded.settings
    agents: set[str] = set()
    queues: dict[str, list[str]] = {}
    if request.action is Action.PAUSE:
        agents, queues = known_targets(Configuration.load(loaded))  # ConfigError: exit 2 with its lines
    store = PauseStore(s.pauses_file)
    me = Peer(os.getpid(), os.geteuid(), os.getegid(), login_uid_of("self"))
    with without_daemon(s.lock_file):
        result = change_pauses(
            store.load_or_hold(utcnow()), request, user=me.operator, now=utcnow(), agents=agents, queues=queues
        )
        if isinstance(result, Refusal):
            return _refuse(f"refused: {result.message}")
        if result.changed:
            store.save(result.pauses)
            _record_offline(s, event_fields(request, me))
    _say(f"no daemon running: {result.message}; recorded in {s.pauses_file}, applied when the daemon starts")
    if request.action is Action.DRAIN and request.wait:
        _say("idle: no daemon, so no run in flight is supervised here")
    return EXIT_OK


def _record_offline(s: Settings, fields: dict[str, Any]) -> None:
    events = EventLog(s.log_dir, keep_days=s.log_keep_days)
    try:
        events.record("control", **fields, daemon=False)
    finally:
        events.close()
