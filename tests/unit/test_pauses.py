"""Operator control from plain data (core.control), what the planner does with pauses, the counted
stop of `cancel --fail` (core.outcomes, core.policy), and the pause file and control socket adapters
against real files and sockets."""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tinyscheduler.adapters import controlsocket
from tinyscheduler.adapters.lock import InstanceLock
from tinyscheduler.adapters.pausestore import DaemonRunning, PauseStore, PausesUnreadable, without_daemon
from tinyscheduler.core.control import (
    MAX_REASON_CHARS,
    Action,
    Change,
    Kind,
    Pause,
    Pauses,
    Refusal,
    Request,
    RequestError,
    Scope,
    change_pauses,
    parse_request,
    runs_to_stop,
    summary,
)
from tinyscheduler.core.outcomes import DEFAULT_EVIDENCE, Outcome, ProcessEnd, RunVerdict, StopCause, classify
from tinyscheduler.core.planner import PlanConfig, Snapshot, plan, refill
from tinyscheduler.core.policy import Intent, report_intent
from tinyscheduler.core.tasks import Task

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
AGENTS = {"dev-a", "dev-b", "qa-a"}
QUEUES = {"dev": ["dev-a", "dev-b"], "qa": ["qa-a"]}


def pause(scope: Scope, target: str = "", kind: Kind = Kind.PAUSE, reason: str = "maintenance") -> Pause:
    return Pause(scope, target, "alice", NOW, reason, kind)


def apply(pauses: Pauses, data: dict[str, Any]) -> Change | Refusal:
    request = parse_request(data)
    return change_pauses(pauses, request, user="bob", now=NOW + timedelta(hours=1), agents=AGENTS, queues=QUEUES)


# --- pauses and their file format -----------------------------------------------------------------


def test_a_pause_says_who_when_and_why() -> None:
    assert pause(Scope.AGENT, "dev-a").text == "agent dev-a paused by alice since 2026-11-29T12:00:00.000Z: maintenance"
    assert pause(Scope.HOST, kind=Kind.DRAIN, reason="").text == "host draining by alice since 2026-11-29T12:00:00.000Z"


def test_pauses_round_trip_through_their_json() -> None:
    pauses = Pauses((pause(Scope.AGENT, "dev-a"), pause(Scope.QUEUE, "qa"), pause(Scope.HOST, kind=Kind.DRAIN)))
    assert Pauses.from_json(json.loads(json.dumps(pauses.to_json()))) == pauses


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], 'expected an object with a "pauses" list'),
        ({"pauses": [{"scope": "planet", "user": "a", "since": "2026-01-01T00:00:00Z"}]}, "pauses[0]: scope: 'planet'"),
        ({"pauses": [{"scope": "agent", "target": "../x", "user": "a", "since": "2026-01-01"}]}, "pauses[0]: target"),
        ({"pauses": [{"scope": "agent", "target": "a", "user": "a", "since": "soon"}]}, "since: 'soon' is not"),
        ({"pauses": [{"scope": "agent", "target": "a", "user": "", "since": "2026-01-01"}]}, "user: empty"),
        (
            {"pauses": [{"scope": "agent", "target": "a", "user": "a", "since": "2026-01-01", "kind": "drain"}]},
            "only the host drains",
        ),
    ],
)
def test_a_bad_pause_file_is_refused_with_one_line_naming_the_entry(data: object, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        Pauses.from_json(data)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_widest_pause_holds_a_task_host_then_queue_then_agent() -> None:
    agent, queue, host = pause(Scope.AGENT, "dev-a"), pause(Scope.QUEUE, "dev"), pause(Scope.HOST)
    assert Pauses((agent,)).holding("dev-a", "dev") is agent
    assert Pauses((agent, queue)).holding("dev-a", "dev") is queue
    assert Pauses((agent, queue, host)).holding("dev-b", None) is host
    assert Pauses((agent, queue)).holding("dev-b", "qa") is None


# --- requests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("pause", "expected a JSON object"),
        ({"action": "explode"}, "action: 'explode' is not one of pause, resume, drain, cancel, status"),
        ({"action": "pause", "scope": "agent", "target": "a b"}, "target: 'a b' is not a agent name"),
        ({"action": "pause", "scope": "agent"}, "target: '' is not"),
        ({"action": "pause", "scope": "host", "reason": "x" * (MAX_REASON_CHARS + 1)}, "reason: 301 characters"),
        ({"action": "pause", "scope": "host", "reason": "two\nlines"}, "control characters"),
        ({"action": "pause", "scope": "host", "reason": 7}, "reason: expected text, got int"),
        ({"action": "pause", "scope": "host", "stop_runs": "yes"}, "stop_runs: expected true or false"),
        ({"action": "cancel", "task_id": True}, "task_id: True is not a task id"),
        ({"action": "cancel", "task_id": -4}, "task_id: -4 is not a task id"),
        ({"action": "cancel", "task_id": 2**70}, "is not a task id"),
        ({"action": ["pause"]}, "action: ['pause'] is not one of"),
    ],
)
def test_a_malformed_request_is_refused_with_one_line(data: object, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_request(data)
    assert message in str(caught.value)


def test_a_request_round_trips_through_its_json() -> None:
    for request in (
        Request(Action.PAUSE, Scope.QUEUE, "qa", "flaky", stop_runs=True),
        Request(Action.RESUME, Scope.HOST),
        Request(Action.CANCEL, task_id=42, reason="looping", fail=True),
        Request(Action.DRAIN, Scope.HOST, wait=True),
        Request(Action.STATUS),
    ):
        assert parse_request(json.loads(json.dumps(request.to_json()))) == request


# --- applying requests to the pauses ---------------------------------------------------------------


def test_pause_then_resume_an_agent() -> None:
    paused = apply(Pauses(), {"action": "pause", "scope": "agent", "target": "dev-a", "reason": "flaky"})
    assert isinstance(paused, Change)
    [made] = paused.pauses.items
    assert (made.user, made.since, made.reason) == ("bob", NOW + timedelta(hours=1), "flaky")
    assert paused.message == "agent dev-a paused by bob since 2026-11-29T13:00:00.000Z: flaky"
    resumed = apply(paused.pauses, {"action": "resume", "scope": "agent", "target": "dev-a"})
    assert isinstance(resumed, Change) and resumed.pauses == Pauses()
    assert resumed.message.startswith("resumed agent dev-a (agent dev-a paused by bob since ")


@pytest.mark.parametrize(
    ("pauses", "data", "message"),
    [
        (Pauses(), {"action": "pause", "scope": "agent", "target": "ops-z"}, "unknown agent 'ops-z' (known: dev-a,"),
        (Pauses(), {"action": "pause", "scope": "queue", "target": "ops"}, "unknown queue 'ops' (known: dev, qa)"),
        (
            Pauses((pause(Scope.AGENT, "dev-a"),)),
            {"action": "pause", "scope": "agent", "target": "dev-a"},
            "already paused: agent dev-a paused by alice since 2026-11-29T12:00:00.000Z: maintenance",
        ),
        (Pauses(), {"action": "resume", "scope": "queue", "target": "qa"}, "queue qa is not paused"),
        (Pauses(), {"action": "resume", "scope": "host"}, "host is not paused"),
        (
            Pauses((pause(Scope.HOST, kind=Kind.DRAIN),)),
            {"action": "drain"},
            "already host draining by alice since",
        ),
        (Pauses((pause(Scope.HOST, kind=Kind.DRAIN),)), {"action": "pause", "scope": "host"}, "already paused: host"),
    ],
)
def test_refusals_say_why(pauses: Pauses, data: dict[str, Any], message: str) -> None:
    result = apply(pauses, data)
    assert isinstance(result, Refusal) and result.message.startswith(message)


def test_a_stale_pause_of_an_agent_no_longer_configured_can_still_be_resumed() -> None:
    result = apply(Pauses((pause(Scope.AGENT, "gone"),)), {"action": "resume", "scope": "agent", "target": "gone"})
    assert isinstance(result, Change) and result.pauses == Pauses()


def test_a_drain_replaces_a_host_pause_and_a_waiting_drain_joins_one_in_progress() -> None:
    result = apply(Pauses((pause(Scope.HOST),)), {"action": "drain", "reason": "kernel update"})
    assert isinstance(result, Change)
    assert result.pauses.draining is not None and result.pauses.draining.user == "bob"
    assert result.message.endswith("(was host paused by alice since 2026-11-29T12:00:00.000Z: maintenance)")
    joined = apply(result.pauses, {"action": "drain", "wait": True})
    assert isinstance(joined, Change) and not joined.changed and joined.pauses == result.pauses
    ended = apply(result.pauses, {"action": "resume", "scope": "host"})
    assert isinstance(ended, Change) and ended.pauses.draining is None


def test_stop_runs_picks_the_agents_the_queues_pool_or_every_run() -> None:
    runs = {1: "dev-a", 2: "dev-b", 3: "qa-a", 4: "dev-a"}
    assert runs_to_stop(pause(Scope.AGENT, "dev-a"), runs, QUEUES) == [1, 4]
    assert runs_to_stop(pause(Scope.QUEUE, "dev"), runs, QUEUES) == [1, 2, 4]
    assert runs_to_stop(pause(Scope.HOST), runs, QUEUES) == [1, 2, 3, 4]


def test_the_status_line_says_the_drain_first_and_the_pauses_otherwise() -> None:
    drain = pause(Scope.HOST, kind=Kind.DRAIN)
    assert summary(Pauses((pause(Scope.AGENT, "dev-a"), drain)), 3) == "draining: 3 runs left"
    assert summary(Pauses((drain,)), 1) == "draining: 1 run left"
    assert summary(Pauses((drain,)), 0) == "draining: 0 runs left, idle"
    assert (
        summary(Pauses((pause(Scope.AGENT, "dev-a"), pause(Scope.QUEUE, "qa"))), 2) == "paused: agent dev-a, queue qa"
    )
    assert summary(Pauses(), 2) is None


# --- the planner ----------------------------------------------------------------------------------


def task(task_id: int, *, agent: str | None = None, queue: str | None = "dev") -> Task:
    return Task(
        id=task_id, status="idle", assigned_to=agent, queue_name=queue, created_at=NOW + timedelta(minutes=task_id)
    )


CONFIG = PlanConfig(limits={"dev-a": 2, "dev-b": 2, "qa-a": 2}, pools=QUEUES)


def planned(pauses: Pauses, **lists: Any) -> tuple[dict[int, str], dict[int, str]]:
    snapshot = Snapshot(now=NOW, host="h", instance_id="i", pauses=pauses, **lists)
    result = plan(snapshot, CONFIG)
    return {s.task_id: s.agent for s in result.starts}, {s.task_id: s.reason for s in result.skips}


def test_a_paused_agent_gets_no_queue_task_and_starts_none_of_its_own() -> None:
    paused = pause(Scope.AGENT, "dev-a")
    starts, skips = planned(
        Pauses((paused,)),
        queue_tasks={"dev": [task(1), task(2), task(3)]},
        agent_tasks={"dev-a": [task(4, agent="dev-a")]},
    )
    assert starts == {1: "dev-b", 2: "dev-b"}, "the pool's other agent takes the queue"
    assert skips == {3: "no free slot in pool dev", 4: paused.text}


def test_a_pool_whose_agents_are_all_paused_says_so() -> None:
    pauses = Pauses((pause(Scope.AGENT, "dev-a"), pause(Scope.AGENT, "dev-b")))
    starts, skips = planned(pauses, queue_tasks={"dev": [task(1)]})
    assert starts == {}
    assert skips[1] == "no agent of pool dev available: " + "; ".join(p.text for p in pauses.items)


def test_a_paused_queue_is_neither_assigned_nor_started_while_other_queues_run() -> None:
    paused = pause(Scope.QUEUE, "dev", reason="")
    starts, skips = planned(
        Pauses((paused,)),
        queue_tasks={"dev": [task(1)], "qa": [task(2, queue="qa")]},
        agent_tasks={"dev-a": [task(3, agent="dev-a")], "qa-a": [task(4, agent="qa-a", queue="qa")]},
    )
    assert starts == {2: "qa-a", 4: "qa-a"}
    assert skips == {1: "queue dev paused by alice since 2026-11-29T12:00:00.000Z", 3: paused.text}


def test_a_paused_or_draining_host_starts_nothing_and_every_task_says_why() -> None:
    for kind in Kind:
        host = pause(Scope.HOST, kind=kind)
        starts, skips = planned(
            Pauses((pause(Scope.AGENT, "qa-a"), host)),
            queue_tasks={"dev": [task(1)], "qa": [task(2, queue="qa")]},
            agent_tasks={"qa-a": [task(3, agent="qa-a", queue="qa")]},
        )
        assert starts == {}
        assert skips == dict.fromkeys((1, 2, 3), host.text)


def test_paused_work_never_waits_for_a_freed_slot() -> None:
    """A slot that frees between passes takes a waiting task (core.planner.refill): a paused queue's
    tasks and a paused agent's own tasks must not be there, or a refill would start them."""
    snapshot = Snapshot(
        now=NOW,
        host="h",
        instance_id="i",
        pauses=Pauses((pause(Scope.QUEUE, "qa"), pause(Scope.AGENT, "dev-b"))),
        queue_tasks={"dev": [task(i) for i in range(1, 8)], "qa": [task(10, queue="qa")]},
        agent_tasks={"dev-b": [task(20, agent="dev-b")], "dev-a": [task(30, agent="dev-a")]},
    )
    result = plan(snapshot, CONFIG)
    assert {s.task_id for s in result.starts} == {1, 2}  # dev-a's two slots; dev-b is paused
    assert [t.id for t in result.waiting.queues["dev"]] == [3, 4, 5, 6, 7]
    assert "qa" not in result.waiting.queues
    assert "dev-b" not in result.waiting.agents
    assert [t.id for t in result.waiting.agents["dev-a"]] == [30]
    for agent in ("qa-a", "dev-b"):
        found = refill(result.waiting, agent, taken=set(), not_before={}, now=NOW)
        assert found is None or (found[1].queue_name != "qa" and found[1].assigned_to != "dev-b")


# --- cancel --fail: a stop that counts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cause", "intent"), [(StopCause.REQUEST, Intent.REQUEUE), (StopCause.REQUEST_COUNTED, Intent.FAIL)]
)
def test_a_stop_on_request_is_requeued_unless_it_is_counted(cause: StopCause, intent: Intent) -> None:
    end = ProcessEnd(-2, 4.0, cause, "SIGINT", "", "cancelled by bob: looping")
    verdict = classify(end, DEFAULT_EVIDENCE)
    assert verdict == RunVerdict(
        Outcome.KILLED, "stopped on request (cancelled by bob: looping), stopped with SIGINT after 4.0s"
    )
    assert report_intent(verdict, cause) is intent


# --- the pause file ----------------------------------------------------------------------------------


def test_pause_file_round_trip_is_readable_by_status_and_missing_means_none(tmp_path: Path) -> None:
    store = PauseStore(tmp_path / "pauses.json")
    assert store.load() == Pauses()
    pauses = Pauses((pause(Scope.QUEUE, "qa"),))
    store.save(pauses)
    assert store.load() == pauses
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600  # private, like every file of the state


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: p.write_text("{not json"), "not valid JSON"),
        (lambda p: p.write_text('{"pauses": [{"scope": "moon"}]}'), "pauses[0]: scope"),
        (os.mkfifo, "is a FIFO"),
        (lambda p: p.write_bytes(b"\xff\xfe"), "not valid JSON"),
    ],
)
def test_an_unreadable_pause_file_holds_the_host_and_says_why(tmp_path: Path, make: Any, why: str) -> None:
    store = PauseStore(tmp_path / "pauses.json")
    make(store.path)
    with pytest.raises(PausesUnreadable) as caught:
        store.load()
    assert why in caught.value.why
    held = store.load_or_hold(NOW)
    assert held.host is not None and held.host.user == "tinyscheduler"
    assert held.host.reason.startswith(f"{store.path} is unreadable ({caught.value.why[:30]}")
    assert "`resume --host` replaces it" in held.host.reason


def test_changes_without_a_daemon_hold_the_lock_and_stop_when_one_runs(tmp_path: Path) -> None:
    lock_file = tmp_path / "tinyscheduler.lock"
    with without_daemon(lock_file), pytest.raises(Exception, match="another tinyscheduler holds"):
        InstanceLock(lock_file).acquire()
    daemon = InstanceLock(lock_file)
    daemon.acquire("instance x")
    try:
        with pytest.raises(DaemonRunning), without_daemon(lock_file):
            pass
        assert "instance x" in lock_file.read_text(), "the holder line is left as it is"
    finally:
        daemon.release()


# --- the socket -------------------------------------------------------------------------------------


def serve_once(sock: socket.socket, reply: dict[str, Any], seen: list[Any]) -> threading.Thread:
    def run() -> None:
        sock.setblocking(True)
        conn, _ = sock.accept()
        with conn:
            seen.append((controlsocket.peer_of(conn), conn.recv(4096)))
            conn.sendall(controlsocket.encode(reply))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_socket_deeper_than_a_socket_address_allows_is_bound_private_and_answers(tmp_path: Path) -> None:
    folder = tmp_path / ("d" * 60) / ("e" * 60)
    folder.mkdir(parents=True)
    path = folder / "control.sock"
    assert len(str(path)) > 108
    sock = controlsocket.bind(path, backlog=4)
    try:
        assert stat.S_ISSOCK(os.lstat(path).st_mode) and stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        seen: list[Any] = []
        thread = serve_once(sock, {"ok": True, "message": "hi"}, seen)
        assert controlsocket.ask(path, {"action": "status"}, timeout=5) == {"ok": True, "message": "hi"}
        thread.join(5)
        [(peer, data)] = seen
        assert (peer.pid, peer.uid) == (os.getpid(), os.geteuid())
        assert json.loads(data) == {"action": "status"}
    finally:
        sock.close()


def test_a_stale_socket_is_replaced_and_anything_else_in_its_place_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    controlsocket.bind(path, backlog=1).close()  # a daemon that died left it
    controlsocket.bind(path, backlog=1).close()
    controlsocket.remove(path)
    assert not path.exists()
    path.write_text("mine")
    with pytest.raises(FileExistsError, match="not a socket"):
        controlsocket.bind(path, backlog=1)
    controlsocket.remove(path)
    assert path.read_text() == "mine"


def test_a_refusal_sent_before_the_request_is_read_still_reaches_the_client(tmp_path: Path) -> None:
    path = tmp_path / "control.sock"
    sock = controlsocket.bind(path, backlog=1)

    def refuse_unread() -> None:
        sock.setblocking(True)
        conn, _ = sock.accept()
        conn.sendall(controlsocket.encode({"ok": False, "message": "not you"}))
        conn.close()  # the request is never read: the client's send breaks

    thread = threading.Thread(target=refuse_unread, daemon=True)
    thread.start()
    try:
        assert controlsocket.ask(path, {"padding": "x" * 4_000_000}, timeout=5) == {"ok": False, "message": "not you"}
    finally:
        thread.join(5)
        sock.close()


def test_the_operator_is_the_login_user_behind_a_sudo_when_the_kernel_knows_it() -> None:
    me = os.geteuid()
    assert controlsocket.operator(me, None) == controlsocket.user_name(me)
    assert controlsocket.operator(me, me) == controlsocket.user_name(me)
    other = 65534 if me != 65534 else 0
    assert controlsocket.operator(me, other) == f"{controlsocket.user_name(other)} (as {controlsocket.user_name(me)})"
    assert controlsocket.user_name(2**31 - 7) == f"uid {2**31 - 7}"
    assert controlsocket.login_uid_of(2**22 + 12345) is None, "no such process"
    unset = Path("/proc/self/loginuid").read_text().strip() == str(controlsocket.NO_LOGIN_UID)
    assert (controlsocket.login_uid_of("self") is None) is unset
