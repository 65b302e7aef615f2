"""Operator control of the running daemon: the actions (pause, resume, drain, cancel, status) and
the Unix socket they arrive on.

The server belongs to the daemon's task group and handles each connection in a task group of its
own, with a size limit (adapters.controlsocket), a read deadline and a cap on connections at once
(beyond it, connections wait in the socket's backlog until a slot frees): garbage, a huge request,
a client that never sends or never reads, or a crowd of them cost a refusal and a closed
connection, never a blocked loop. The request is read before any reply, even one refused: a socket
closed with unread data resets the client, which would then lose the refusal. Only the daemon's own
user gets through (the socket file is 0600, and the kernel's peer credentials are checked). A
change is answered once it is applied: the pauses written to `state/pauses.json`, the runs asked
to stop, the event recorded.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import structlog

from tinyscheduler.adapters import controlsocket
from tinyscheduler.adapters.controlsocket import MAX_REQUEST_BYTES, Peer, peer_of, user_name
from tinyscheduler.adapters.pausestore import PauseStore
from tinyscheduler.core.control import (
    Action,
    Refusal,
    Request,
    RequestError,
    change_pauses,
    parse_request,
    runs_to_stop,
    summary,
)
from tinyscheduler.service.configuration import Configuration
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.control")

#: A client has this long to send its request once connected.
READ_TIMEOUT_SEC = 5.0
#: A reply is small and the socket's buffer empty: a client that does not read loses it after this.
WRITE_TIMEOUT_SEC = 1.0
#: What a client sent beyond its request is read (and dropped) up to this much, for this long, before
#: the connection is closed: closed with unread data, the socket would reset the client.
LINGER_BYTES = 64 * 1024
LINGER_SEC = 0.5
#: Connections handled at once; more wait to be accepted.
MAX_CONNECTIONS = 16
#: A refused user is logged once per this many seconds, not once per connection.
REFUSED_LOG_EVERY_SEC = 60.0

Reply = dict[str, Any]


def known_targets(config: Configuration) -> tuple[set[str], dict[str, list[str]]]:
    """The agents (with a limit or in the registry) and the queues (with their pool) configured."""
    pools: dict[str, list[str]] = {}
    if config.registry is not None:
        pools = {queue: config.registry.pool(queue) for queue in config.registry.queues()}
    return set(config.limits) | {agent for pool in pools.values() for agent in pool}, pools


def event_fields(request: Request, peer: Peer) -> dict[str, Any]:
    """The `control` event of an applied request: what, on what, why, who (the kernel's word)."""
    fields: dict[str, Any] = {
        "action": request.action.value,
        "target": request.target_text,
        "reason": request.reason,
        "user": peer.user,
        "uid": peer.uid,
        "pid": peer.pid,
    }
    if peer.login_uid is not None and peer.login_uid != peer.uid:
        fields["login_user"] = user_name(peer.login_uid)
    if request.action is Action.CANCEL:
        fields |= {"task_id": request.task_id, "fail": request.fail}
    if request.action is Action.PAUSE:
        fields["stop_runs"] = request.stop_runs
    return fields


def refused(message: str) -> Reply:
    return {"ok": False, "message": message}


class Controls:
    """What each control request does to the daemon."""

    def __init__(self, runtime: Runtime, on_change: Callable[[], None]) -> None:
        self.runtime = runtime
        #: Publishes the STATUS= line and wakes a pass (a resume starts runs within one pass).
        self.on_change = on_change
        self.store = PauseStore(runtime.config.settings.pauses_file)
        #: Changes of the pauses one at a time: each writes the file from the one before.
        self._changing = anyio.Lock()
        #: Runs an operator cancelled, by task id: the run (a requeued task may run again) and who and why.
        self._cancelled: dict[int, tuple[object, str]] = {}

    async def apply(self, request: Request, peer: Peer) -> Reply:
        if request.action is Action.STATUS:
            return self.status()
        if request.action is Action.CANCEL:
            return self._cancel(request, peer)
        if self.runtime.stopping and request.action is not Action.RESUME:
            return refused("the daemon is stopping: it starts nothing new anyway")
        async with self._changing:
            return await self._change_pauses(request, peer)

    def status(self) -> Reply:
        rt = self.runtime
        runs = sorted(rt.busy)  # runs in flight, and leases being recovered
        draining = rt.pauses.draining
        return {
            "ok": True,
            "message": summary(rt.pauses, len(runs)) or "not paused",
            "runs": runs,
            "draining": draining.to_json() if draining else None,
            "pauses": [pause.to_json() for pause in rt.pauses.items],
            "stopping": rt.stopping,
        }

    async def _change_pauses(self, request: Request, peer: Peer) -> Reply:
        rt = self.runtime
        agents, pools = known_targets(rt.config)
        result = change_pauses(rt.pauses, request, user=peer.operator, now=rt.clock(), agents=agents, queues=pools)
        if isinstance(result, Refusal):
            return self._refuse(request, peer, result.message)
        message = result.message
        if result.changed:
            try:
                # fsynced: a worker thread, the loop goes on.
                await anyio.to_thread.run_sync(self.store.save, result.pauses)
            except OSError as exc:
                return self._refuse(request, peer, f"cannot record it in {self.store.path}: {exc.strerror or exc}")
            rt.pauses = result.pauses
            if request.action is Action.PAUSE and request.stop_runs:
                message += self._stop_paused_runs(request, pools)
            self._record(request, peer)
            self.on_change()
        return self.status() | {"message": message}

    def _stop_paused_runs(self, request: Request, pools: dict[str, list[str]]) -> str:
        rt = self.runtime
        assert request.scope is not None
        pause = rt.pauses.find(request.scope, request.target)
        assert pause is not None
        in_flight = {task_id: run.agent for task_id, run in rt.runs.items() if run.holds_slot}
        stopping = runs_to_stop(pause, in_flight, pools)
        for task_id in stopping:
            rt.runs[task_id].request_stop(pause.text)
        if not stopping:
            return "; no run in flight to stop"
        tasks = ", ".join(map(str, stopping))
        return f"; stopping {len(stopping)} run(s) in flight (tasks {tasks}): requeued, not counted as failed attempts"

    def _cancel(self, request: Request, peer: Peer) -> Reply:
        rt = self.runtime
        task_id = request.task_id
        assert task_id is not None
        self._cancelled = {tid: seen for tid, seen in self._cancelled.items() if rt.runs.get(tid) is seen[0]}
        run = rt.runs.get(task_id)
        if run is None:
            if task_id in rt.reclaiming:
                return self._refuse(request, peer, f"task {task_id}: its lease is being recovered; try again shortly")
            return self._refuse(request, peer, f"task {task_id} has no run on this host")
        if task_id in self._cancelled:
            return self._refuse(request, peer, f"task {task_id}: already being stopped ({self._cancelled[task_id][1]})")
        if not run.holds_slot:
            return self._refuse(request, peer, f"task {task_id}: its run has ended; its outcome is being reported")
        by = f"cancelled by {peer.operator}" + (f": {request.reason}" if request.reason else "")
        self._cancelled[task_id] = (run, by)
        run.request_stop(by, counted=request.fail)
        self._record(request, peer)
        self.on_change()
        then = "it counts as a failed attempt"
        if not request.fail:
            then = "the task is requeued, not counted as a failed attempt"
        pid = f", pid {run.pid}" if run.pid else ""
        return self.status() | {"message": f"task {task_id} ({run.agent}{pid}): stopping its run; {then}"}

    def _record(self, request: Request, peer: Peer) -> None:
        fields = event_fields(request, peer)
        self.runtime.events.record("control", **fields)
        log.info("control", **fields)

    def _refuse(self, request: Request, peer: Peer, message: str) -> Reply:
        fields = {"action": request.action.value, "target": request.target_text, "user": peer.user}
        log.info("control_refused", **fields, reason=message)
        return refused(message)


class ControlServer:
    """Accepts connections on the control socket until its task is cancelled."""

    def __init__(self, controls: Controls, path: Path, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.controls = controls
        self.path = path
        self.max_connections = max_connections
        self.read_timeout = READ_TIMEOUT_SEC
        self._refused_logged: dict[int, float] = {}

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            sock = controlsocket.bind(self.path, backlog=self.max_connections)
        except OSError as exc:
            # The daemon runs on without it; the command line then says the socket does not answer.
            log.error("control_unavailable", socket=str(self.path), reason=str(exc.strerror or exc))
            task_status.started()
            return
        listener = await anyio.abc.SocketListener.from_socket(sock)
        log.info("control_listening", socket=str(self.path))
        task_status.started()
        try:
            async with anyio.create_task_group() as group:
                await self._accept(listener, group)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
            controlsocket.remove(self.path)

    async def _accept(self, listener: anyio.abc.SocketListener, group: anyio.abc.TaskGroup) -> None:
        slots = anyio.Semaphore(self.max_connections)
        while True:
            await slots.acquire()
            try:
                stream = await listener.accept()
            except OSError as exc:  # out of descriptors, say: wait a moment rather than spin
                slots.release()
                log.warning("control_accept_failed", reason=str(exc))
                await anyio.sleep(0.1)
                continue
            group.start_soon(self._handle, stream, slots)

    async def _handle(self, stream: anyio.abc.SocketStream, slots: anyio.Semaphore) -> None:
        try:
            reply = await self._answer(stream)
            with anyio.move_on_after(WRITE_TIMEOUT_SEC):
                await self._send(stream, reply)
            await self._linger(stream)
        except Exception:  # one connection's trouble must never reach the daemon
            log.exception("control_connection_failed")
        finally:
            slots.release()
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _answer(self, stream: anyio.abc.SocketStream) -> Reply:
        peer = peer_of(stream.extra(anyio.abc.SocketAttribute.raw_socket))
        data: bytes | None = None
        with anyio.move_on_after(self.read_timeout):
            data = await self._read(stream)
        if peer.uid != os.geteuid():
            self._log_refused_user(peer)
            return refused(f"only the scheduler's user ({user_name(os.geteuid())}) may control it")
        if data is None:
            return refused(f"no complete request within {self.read_timeout:g}s")
        if len(data) > MAX_REQUEST_BYTES:
            return refused(f"request larger than {MAX_REQUEST_BYTES} bytes")
        try:
            request = parse_request(_json(data))
        except RequestError as exc:
            log.info("control_refused", user=peer.user, reason=f"malformed request: {exc}")
            return refused(f"malformed request: {exc}")
        return await self.controls.apply(request, peer)

    async def _read(self, stream: anyio.abc.SocketStream) -> bytes:
        """One line (or everything up to the end of the stream), stopping past the size limit."""
        data = b""
        while b"\n" not in data and len(data) <= MAX_REQUEST_BYTES:
            try:
                data += await stream.receive(MAX_REQUEST_BYTES + 1)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                break
        return data.split(b"\n", 1)[0]

    async def _linger(self, stream: anyio.abc.SocketStream) -> None:
        left = LINGER_BYTES
        with anyio.move_on_after(LINGER_SEC), contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
            while left > 0:
                left -= len(await stream.receive(left))

    async def _send(self, stream: anyio.abc.SocketStream, reply: Reply) -> None:
        # A client that left has nothing to be told.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await stream.send(controlsocket.encode(reply))

    def _log_refused_user(self, peer: Peer) -> None:
        now = time.monotonic()
        if now - self._refused_logged.get(peer.uid, -REFUSED_LOG_EVERY_SEC) >= REFUSED_LOG_EVERY_SEC:
            self._refused_logged[peer.uid] = now
            why = "not the scheduler's user"
            log.warning("control_refused", user=peer.user, uid=peer.uid, pid=peer.pid, reason=why)


def _json(data: bytes) -> object:
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(f"not one JSON object on a line ({type(exc).__name__})") from None
