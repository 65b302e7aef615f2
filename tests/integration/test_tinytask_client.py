"""The TinyTask client transports against real HTTP on 127.0.0.1: the project's fake server, and
tiny stdlib servers for the failure modes the fake does not produce (5xx, garbage, silence)."""

from __future__ import annotations

import asyncio
import json
import queue
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

import pytest

from tinyscheduler.adapters.tinytask import (
    SCHEDULER_NAME,
    TaskNotFound,
    TaskProblem,
    TinyTaskBadReply,
    TinyTaskRejected,
    TinyTaskUnavailable,
    _http11,
    _transport,
    mcp,
)
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.adapters.tinytask.mcp import McpHttpClient, McpSseClient
from tinyscheduler.adapters.tinytask.rest import RestClient
from tinyscheduler.testing.fake import FakeTinyTask

from runbench import eventually


class Naps:
    """Injected `sleep`: records the backoff delays instead of waiting them out."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: str = "[]"
    content_type: str = "application/json"
    #: Hold the reply until the test ends: the client sees a read timeout.
    hang: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    #: Send the body without a length and keep the connection open until the test ends.
    keep_open: bool = False


class _Served:
    """A test server on 127.0.0.1 served from a thread while the `with` block runs."""

    server: socketserver.TCPServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class ScriptedServer(_Served):
    """A real HTTP server answering each request with the next scripted reply (the last repeats)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen: list[tuple[str, str]] = []
        #: (request headers, decoded JSON body or None) per request
        self.received: list[tuple[dict[str, str], object]] = []
        self.release = threading.Event()
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                script.seen.append((self.command, self.path))
                script.received.append((dict(self.headers), json.loads(raw) if raw else None))
                reply = script.replies.pop(0) if len(script.replies) > 1 else script.replies[0]
                if reply.hang:
                    script.release.wait(30)
                body = reply.body.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.keep_open:
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    script.release.wait(30)
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        super().__exit__(*exc_info)


@pytest.fixture
def fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask() as server:
        yield server


@pytest.fixture
def dead_url() -> Iterator[str]:
    """A port that is bound but not listening: connections are refused, deterministically."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- REST: failure modes ------------------------------------------------------------------------


async def test_unreachable_server_is_unavailable_after_backoff(dead_url: str) -> None:
    naps = Naps()
    async with RestClient(dead_url, retries=3, backoff_base=0.2, sleep=naps) as client:
        with pytest.raises(TinyTaskUnavailable) as caught:
            await client.list_queues()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{dead_url}/api/v1/queues" in message
    assert "ConnectError" in message and "4 attempts" in message
    assert len(naps.delays) == 3
    for attempt, delay in enumerate(naps.delays):
        assert 0.0 <= delay <= 0.2 * 2**attempt


async def test_server_error_then_success_is_retried() -> None:
    with ScriptedServer(Reply(500, '{"error":"Internal server error"}'), Reply(200, '["dev","qa"]')) as server:
        naps = Naps()
        async with RestClient(server.url, sleep=naps) as client:
            assert await client.list_queues() == ["dev", "qa"]
    assert server.seen == [("GET", "/api/v1/queues"), ("GET", "/api/v1/queues")]
    assert len(naps.delays) == 1


async def test_persistent_server_error_names_url_and_cause() -> None:
    with ScriptedServer(Reply(503, '{"error":"Service down"}')) as server:
        async with RestClient(server.url, retries=2, sleep=Naps()) as client:
            with pytest.raises(TinyTaskUnavailable) as caught:
                await client.list_queues()
    assert len(server.seen) == 3
    assert str(caught.value) == (
        f"TinyTask unavailable at {server.url}/api/v1/queues: HTTP 503: Service down (gave up after 3 attempts)"
    )


async def test_read_timeout_is_retried_then_unavailable() -> None:
    with ScriptedServer(Reply(hang=True)) as server:
        async with RestClient(server.url, read_timeout=0.2, retries=1, sleep=Naps()) as client:
            with pytest.raises(TinyTaskUnavailable, match="ReadTimeout"):
                await client.list_queues()
    assert len(server.seen) == 2


async def test_client_error_is_rejected_with_server_message_and_not_retried() -> None:
    with ScriptedServer(
        Reply(400, '{"error":"Invalid status: done. Must be one of: idle, working, complete"}')
    ) as server:
        naps = Naps()
        async with RestClient(server.url, sleep=naps) as client:
            with pytest.raises(TinyTaskRejected) as caught:
                await client.set_status(7, "done")
    assert caught.value.status == 400
    assert str(caught.value).startswith("Invalid status: done.")
    assert server.seen == [("PATCH", "/api/v1/tasks/7")]
    assert naps.delays == []


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (Reply(200, "<html>proxy login</html>", "text/html"), "GET /api/v1/queues: reply is not JSON"),
        (Reply(200, '{"queues": ["dev"]}'), "GET /api/v1/queues: expected a JSON array, got dict"),
        (Reply(200, '["dev", 3]'), "GET /api/v1/queues: expected a list of queue names"),
    ],
)
async def test_garbage_reply_is_bad_reply_naming_endpoint(reply: Reply, expected: str) -> None:
    with ScriptedServer(reply) as server:
        async with RestClient(server.url, sleep=Naps()) as client:
            with pytest.raises(TinyTaskBadReply, match=expected):
                await client.list_queues()
    assert len(server.seen) == 1


async def test_wrong_shaped_task_list_is_bad_reply() -> None:
    with ScriptedServer(Reply(200, json.dumps({"count": 0, "tasks": []}))) as server:
        async with RestClient(server.url, sleep=Naps()) as client:
            with pytest.raises(TinyTaskBadReply, match="GET /api/v1/tasks: expected a JSON array"):
                await client.list_tasks(status=["idle"])


# --- REST against the fake server ---------------------------------------------------------------


async def test_list_tasks_walks_every_page_in_server_order(fake: FakeTinyTask) -> None:
    for priority in (1, 5, 3, 5, 0):
        fake.create_task(f"p{priority}", priority=priority, queue_name="dev")
    fake.reset_requests()
    async with RestClient(fake.url, page_size=2) as client:
        batch = await client.list_tasks(status=["idle", "working"], queue_name="dev")
    assert [(t.title, t.priority) for t in batch.tasks] == [("p5", 5), ("p5", 5), ("p3", 3), ("p1", 1), ("p0", 0)]
    assert [t.id for t in batch.tasks][:2] == [2, 4]  # ties: insertion order
    assert batch.problems == ()
    assert fake.requests == [
        ("GET", f"/api/v1/tasks?status=idle%2Cworking&queue_name=dev&limit=2&offset={offset}") for offset in (0, 2, 4)
    ]


async def test_list_tasks_filters(fake: FakeTinyTask) -> None:
    fake.create_task("mine idle", assigned_to="dev", queue_name="dev")
    fake.create_task("mine working", assigned_to="dev", status="working", queue_name="dev")
    fake.create_task("unassigned", queue_name="dev")
    fake.create_task("other queue", queue_name="qa")
    fake.create_task("done", assigned_to="dev", status="complete", queue_name="dev")
    async with RestClient(fake.url) as client:
        idle_mine = await client.idle_assigned("dev")
        free = await client.idle_unassigned("dev")
        everything = await client.list_tasks()
        nothing = await client.list_tasks(status=[])
        queues = await client.list_queues()
    assert [t.title for t in idle_mine.tasks] == ["mine idle"]
    assert [t.title for t in free.tasks] == ["unassigned"]
    assert len(everything.tasks) == 5
    assert nothing.tasks == ()
    assert queues == ["dev", "qa"]


async def test_malformed_task_is_a_problem_not_a_failure(fake: FakeTinyTask) -> None:
    fake.create_task("good", queue_name="dev")
    bad = fake.create_task("free-text assignee", assigned_to="Jane Doe", queue_name="dev")
    async with RestClient(fake.url) as client:
        batch = await client.list_tasks(queue_name="dev")
    assert [t.title for t in batch.tasks] == ["good"]
    (problem,) = batch.problems
    assert isinstance(problem, TaskProblem)
    assert (problem.task_id, problem.field, problem.where) == (bad["id"], "assigned_to", "GET /api/v1/tasks")


async def test_get_update_comment_round_trip(fake: FakeTinyTask) -> None:
    seeded = fake.create_task("work", assigned_to="dev", queue_name="dev", tags=["x"])
    async with RestClient(fake.url) as client:
        task = await client.get_task(seeded["id"])
        working = await client.set_status(task.id, "working")
        unassigned = await client.unassign(task.id)
        await client.add_comment(task.id, "run failed: exit 3")
        health = await client.health()
    assert (task.title, task.assigned_to, task.tags) == ("work", "dev", ("x",))
    assert working.status == "working"
    assert unassigned.assigned_to is None and unassigned.previous_assigned_to == "dev"
    assert fake.task(task.id)["assigned_to"] is None
    assert [(c["content"], c["created_by"]) for c in fake.comments(task.id)] == [("run failed: exit 3", SCHEDULER_NAME)]
    assert health["status"] == "healthy"


async def test_missing_task_is_task_not_found(fake: FakeTinyTask) -> None:
    async with RestClient(fake.url, sleep=Naps()) as client:
        with pytest.raises(TaskNotFound, match="Task 99 not found") as caught:
            await client.get_task(99)
        with pytest.raises(TaskNotFound, match="Task not found: 99"):
            await client.set_status(99, "idle")
        with pytest.raises(TaskNotFound):
            await client.add_comment(99, "hello")
    assert caught.value.status == 404


async def test_invalid_update_is_rejected_once(fake: FakeTinyTask) -> None:
    task = fake.create_task("work")
    fake.reset_requests()
    async with RestClient(fake.url, sleep=Naps()) as client:
        with pytest.raises(TinyTaskRejected, match=r"Invalid status: done\. Must be one of: idle, working, complete"):
            await client.set_status(task["id"], "done")
    assert fake.requests == [("PATCH", f"/api/v1/tasks/{task['id']}")]
    assert fake.task(task["id"])["status"] == "idle"


# --- MCP streamable HTTP: reply framing and quirks, scripted ------------------------------------

TASK_7 = {
    "id": 7,
    "title": "seven",
    "status": "idle",
    "assigned_to": None,
    "priority": 2,
    "tags": [],
    "queue_name": "dev",
    "is_currently_blocked": False,
    "created_at": "2026-11-26T06:37:12Z",
}
ACCEPTED = Reply(202, "", "text/plain")


def sse_framed(message: dict[str, object]) -> str:
    """An SSE `message` event whose JSON is spread over several `data:` lines."""
    lines = json.dumps(message, indent=2).splitlines()
    return "event: message\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def rpc(ident: int, result: dict[str, object], *, framed: bool = True, session: str | None = None) -> Reply:
    message = {"jsonrpc": "2.0", "id": ident, "result": result}
    headers = (("Mcp-Session-Id", session),) if session else ()
    if framed:
        return Reply(200, sse_framed(message), "text/event-stream", headers=headers)
    return Reply(200, json.dumps(message), headers=headers)


def tool(text: str, *, error: bool = False) -> dict[str, object]:
    return {"content": [{"type": "text", "text": text}], **({"isError": True} if error else {})}


INITIALIZED = {"protocolVersion": "2025-03-26", "capabilities": {"tools": {}}, "serverInfo": {"name": "tinytask"}}


async def test_mcp_http_reads_framed_replies_and_echoes_the_session() -> None:
    script = (
        rpc(1, INITIALIZED, session="session-1"),
        ACCEPTED,
        rpc(2, tool("Task #7 loaded\n\n" + json.dumps(TASK_7, indent=2))),
        rpc(3, tool(json.dumps(TASK_7, indent=2)), framed=False),
    )
    with ScriptedServer(*script) as server:
        async with McpHttpClient(server.url, sleep=Naps()) as client:
            first = await client.get_task(7)
            second = await client.get_task(7)
    assert first == second and (first.id, first.title, first.queue_name) == (7, "seven", "dev")
    assert [path for _, path in server.seen] == ["/mcp"] * 4
    methods = [body.get("method") for _, body in server.received]  # type: ignore[union-attr]
    assert methods == ["initialize", "notifications/initialized", "tools/call", "tools/call"]
    for number, (headers, _) in enumerate(server.received):
        assert headers["Accept"] == "application/json, text/event-stream"
        assert headers["Content-Type"] == "application/json"
        assert headers.get("Mcp-Session-Id") == (None if number == 0 else "session-1")
    assert server.received[2][1]["params"] == {"name": "get_task", "arguments": {"id": 7}}  # type: ignore[index]


async def test_mcp_http_reply_stream_the_server_leaves_open_does_not_hang_the_client() -> None:
    """The spec says a server closes the stream after its reply; one that does not must not stall us."""
    framed = Reply(
        200,
        sse_framed({"jsonrpc": "2.0", "id": 2, "result": tool(json.dumps(TASK_7))}),
        "text/event-stream",
        keep_open=True,
    )
    again = Reply(
        200,
        sse_framed({"jsonrpc": "2.0", "id": 3, "result": tool(json.dumps(TASK_7))}),
        "text/event-stream",
        keep_open=True,
    )
    with ScriptedServer(rpc(1, INITIALIZED), ACCEPTED, framed, again) as server:
        async with McpHttpClient(server.url, sleep=Naps(), read_timeout=30) as client:
            first = await asyncio.wait_for(client.get_task(7), timeout=10)
            second = await asyncio.wait_for(client.get_task(7), timeout=10)
    assert first.id == second.id == 7
    assert len(server.received) == 4, "each call answered once, none retried"


async def test_mcp_http_unassign_sends_empty_string() -> None:
    script = (rpc(1, INITIALIZED), ACCEPTED, rpc(2, tool(json.dumps(TASK_7))))
    with ScriptedServer(*script) as server:
        async with McpHttpClient(server.url, sleep=Naps()) as client:
            await client.unassign(7)
    arguments = server.received[2][1]["params"]["arguments"]  # type: ignore[index]
    assert arguments == {"id": 7, "assigned_to": ""}


@pytest.mark.parametrize(
    ("text", "error"),
    [("Task not found: 7", TaskNotFound), ("Error updating task: Invalid status", TinyTaskRejected)],
)
async def test_mcp_http_error_results_are_rejections(text: str, error: type[TinyTaskRejected]) -> None:
    script = (rpc(1, INITIALIZED), ACCEPTED, rpc(2, tool(text, error=True)))
    with ScriptedServer(*script) as server:
        naps = Naps()
        async with McpHttpClient(server.url, sleep=naps) as client:
            with pytest.raises(TinyTaskRejected) as caught:
                await client.set_status(7, "idle")
    assert type(caught.value) is error
    assert str(caught.value) == f"{text} (MCP tool update_task)"
    assert len(server.seen) == 3 and naps.delays == []


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (tool("No idle tasks available in queue for agent: dev"), "MCP get_task: reply is not JSON"),
        ({"content": []}, "MCP get_task: expected text content"),
    ],
)
async def test_mcp_http_unusable_results_are_bad_replies(result: dict[str, object], expected: str) -> None:
    with ScriptedServer(rpc(1, INITIALIZED), ACCEPTED, rpc(2, result)) as server:
        async with McpHttpClient(server.url, sleep=Naps()) as client:
            with pytest.raises(TinyTaskBadReply, match=expected):
                await client.get_task(7)


async def test_mcp_http_server_error_is_retried_with_a_fresh_id() -> None:
    script = (
        rpc(1, INITIALIZED),
        ACCEPTED,
        Reply(500, '{"error":"Internal server error"}'),
        rpc(3, tool(json.dumps(TASK_7))),
    )
    with ScriptedServer(*script) as server:
        naps = Naps()
        async with McpHttpClient(server.url, sleep=naps) as client:
            task = await client.get_task(7)
    assert task.id == 7 and len(naps.delays) == 1
    assert [body["id"] for _, body in server.received[2:]] == [2, 3]  # type: ignore[index]


@pytest.mark.parametrize("transport", [McpHttpClient, McpSseClient])
async def test_mcp_unreachable_server_is_unavailable(dead_url: str, transport: type[McpHttpClient]) -> None:
    naps = Naps()
    async with transport(dead_url, retries=2, sleep=naps) as client:
        with pytest.raises(TinyTaskUnavailable) as caught:
            await client.get_task(1)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"TinyTask unavailable at {dead_url}/mcp: ")
    assert "ConnectError" in message and "3 attempts" in message
    assert len(naps.delays) == 2


# --- MCP legacy SSE: stream handling, scripted ----------------------------------------------------

#: What a `LegacyMcpServer` answer function returns to make the server drop the stream instead.
DROP = "drop"


class LegacyMcpServer:
    """The legacy MCP SSE transport in miniature: a GET stream per session; each POST is answered
    202 and its reply is written on the session's stream (queued before the 202, so it can beat
    the POST's own response to the client)."""

    def __init__(self, answer: Callable[[dict[str, object]], object]) -> None:
        self.answer = answer
        self.sessions: dict[str, queue.Queue[str | None]] = {}
        self.streams = 0
        self.methods: list[str] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                session: queue.Queue[str | None] = queue.Queue()
                name = str(uuid.uuid4())
                script.sessions[name] = session
                script.streams += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(f"event: endpoint\ndata: /mcp?sessionId={name}\n\n".encode())
                self.wfile.flush()
                while (item := session.get()) is not None:
                    self.wfile.write(f"event: message\ndata: {item}\n\n".encode())
                    self.wfile.flush()

            def do_POST(self) -> None:
                name = self.path.partition("sessionId=")[2]
                message = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                session = script.sessions.get(name)
                if session is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                script.methods.append(message["method"])
                reply = script.answer(message)
                if reply == DROP:
                    script.drop()
                elif reply is not None:
                    session.put(json.dumps(reply))
                self.send_response(202)
                self.send_header("Content-Length", "8")
                self.end_headers()
                self.wfile.write(b"Accepted")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def drop(self) -> None:
        """Close every stream and forget every session, as a restarted server would."""
        for session in self.sessions.values():
            session.put(None)
        self.sessions.clear()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LegacyMcpServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.drop()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def answer_task_7(message: dict[str, object]) -> object:
    if "id" not in message:
        return None
    result = INITIALIZED if message["method"] == "initialize" else tool(json.dumps(TASK_7))
    return {"jsonrpc": "2.0", "id": message["id"], "result": result}


async def test_mcp_sse_matches_replies_and_reconnects_after_stream_loss() -> None:
    with LegacyMcpServer(answer_task_7) as server:
        naps = Naps()
        async with McpSseClient(server.url, sleep=naps) as client:
            assert (await client.get_task(7)).title == "seven"
            assert (await client.get_task(7)).title == "seven"
            server.drop()
            assert (await client.get_task(7)).title == "seven"
    assert server.streams == 2
    # Whether the client saw the stream end first or the POST's 404 first, the new stream is
    # initialized before the call is sent again.
    assert server.methods == [
        "initialize",
        "notifications/initialized",
        "tools/call",
        "tools/call",
        "initialize",
        "notifications/initialized",
        "tools/call",
    ]


async def test_mcp_sse_call_pending_when_stream_drops_is_retried_on_a_new_stream() -> None:
    calls = 0

    def answer(message: dict[str, object]) -> object:
        nonlocal calls
        if message.get("method") == "tools/call":
            calls += 1
            if calls == 1:
                return DROP
        return answer_task_7(message)

    with LegacyMcpServer(answer) as server:
        naps = Naps()
        async with McpSseClient(server.url, sleep=naps) as client:
            assert (await client.get_task(7)).id == 7
    assert server.streams == 2 and calls == 2
    assert len(naps.delays) == 1


async def test_mcp_sse_silent_server_is_unavailable() -> None:
    def answer(message: dict[str, object]) -> object:
        return None if message.get("method") == "tools/call" else answer_task_7(message)

    with LegacyMcpServer(answer) as server:
        async with McpSseClient(server.url, read_timeout=0.2, retries=1, sleep=Naps()) as client:
            with pytest.raises(TinyTaskUnavailable, match=r"no reply on the MCP event stream within 0\.2 s"):
                await client.get_task(7)
    assert server.streams == 2  # a silent stream is given up and a new one opened for the retry


# --- connect ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/mcp", "/mcp/"])
async def test_connect_auto_prefers_rest(fake: FakeTinyTask, suffix: str) -> None:
    async with await connect(fake.url + suffix) as client:
        assert isinstance(client, RestClient)
        assert client.base_url == fake.url
        assert (client.features.protocol, client.features.queues, client.features.blocking) == ("rest", True, True)


async def test_connect_to_nothing_is_one_clear_line(dead_url: str) -> None:
    with pytest.raises(TinyTaskUnavailable) as caught:
        await connect(dead_url, sleep=Naps())
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"TinyTask unavailable at {dead_url}/api/v1/queues: ConnectError")


async def test_connect_to_a_server_that_is_not_tinytask() -> None:
    with ScriptedServer(Reply(404, '{"error":"Not found"}')) as server, pytest.raises(TinyTaskBadReply) as caught:
        await connect(server.url, sleep=Naps())
    message = str(caught.value)
    assert message.startswith(f"no TinyTask REST API or MCP endpoint at {server.url}: REST: Not found")
    assert "mcp-http: Not found (POST /mcp: HTTP 404)" in message
    assert "mcp-sse: Not found (GET /mcp: HTTP 404)" in message
    assert list(server.seen) == [("GET", "/api/v1/queues"), ("POST", "/mcp"), ("GET", "/mcp")]


@pytest.mark.parametrize(
    ("endpoint", "protocol"), [("ftp://host/", "auto"), ("tinytask:3000", "auto"), ("http://127.0.0.1:1", "grpc")]
)
async def test_connect_refuses_bad_arguments(endpoint: str, protocol: str) -> None:
    with pytest.raises(ValueError):
        await connect(endpoint, protocol)  # type: ignore[arg-type]


async def test_connect_explicit_protocols(fake: FakeTinyTask) -> None:
    async with await connect(fake.url, "mcp") as client:
        assert isinstance(client, McpHttpClient)
        assert (client.features.protocol, client.features.queues, client.features.blocking) == ("mcp-http", True, True)
    async with await connect(fake.url, "rest") as client:
        assert client.features.protocol == "rest"


# --- the old server (tinytask-mcp 1.0: legacy SSE only, no queues, no blocking) ----------------


@pytest.fixture
def old_fake() -> Iterator[FakeTinyTask]:
    with FakeTinyTask(legacy=True) as server:
        yield server


async def test_connect_to_old_server_says_what_it_lacks(old_fake: FakeTinyTask) -> None:
    first = old_fake.create_task("first", assigned_to="dev", priority=1)
    old_fake.create_task("busy", assigned_to="dev", status="working", priority=5)
    old_fake.create_task("later", assigned_to="dev", priority=1)
    async with await connect(old_fake.url + "/mcp") as client:
        assert isinstance(client, McpSseClient)
        assert (client.features.protocol, client.features.queues, client.features.blocking) == ("mcp-sse", False, False)
        both = await client.list_tasks(status=["idle", "working"], assigned_to="dev")
        idle = await client.idle_assigned("dev")
        task = await client.unassign(first["id"])
        await client.add_comment(first["id"], "note")
        with pytest.raises(TinyTaskRejected, match="has no queues \\(old tinytask-mcp\\)"):
            await client.list_queues()
        with pytest.raises(TinyTaskRejected, match="has no queues"):
            await client.idle_unassigned("dev")
        assert (await client.health())["status"] == "healthy"
    assert [t.title for t in both.tasks] == ["busy", "first", "later"]
    assert [t.title for t in idle.tasks] == ["first", "later"]
    assert (task.assigned_to, task.queue_name, task.is_currently_blocked) == (None, None, False)
    assert task.created_at.tzinfo is not None
    assert old_fake.task(first["id"])["assigned_to"] is None
    assert [c["content"] for c in old_fake.comments(first["id"])] == ["note"]


async def test_connect_rest_to_old_server_is_a_clear_refusal(old_fake: FakeTinyTask) -> None:
    with pytest.raises(TinyTaskBadReply, match=f"no TinyTask REST API at {old_fake.url}: REST: Not found"):
        await connect(old_fake.url, "rest")


# --- the HTTP/1.1 connections of the JSON requests (tinytask._http11) ---------------------------


class RawServer(_Served):
    """A socket server answering each request with the next raw reply; `closes` says whether it then
    closes the connection (without telling the client: a keep-alive connection that timed out)."""

    def __init__(self, *replies: bytes, closes: bool, drip: float = 0.0) -> None:
        """`drip`: send each reply one byte at a time, this many seconds apart (a slowloris reply)."""
        self.replies = list(replies)
        self.drip = drip
        self.stopped = threading.Event()
        self.connections = 0
        self.requests = 0
        #: Connections the server has closed (its side shut down and released).
        self.closed = 0
        script = self

        class Server(socketserver.ThreadingTCPServer):
            def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
                super().shutdown_request(request)
                script.closed += 1

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                script.connections += 1
                while True:
                    request_line = self.rfile.readline()
                    if not request_line:
                        return
                    length = 0
                    while (line := self.rfile.readline()) not in (b"\r\n", b""):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    self.rfile.read(length)
                    script.requests += 1
                    reply = script.replies.pop(0) if len(script.replies) > 1 else script.replies[0]
                    for piece in [reply[i : i + 1] for i in range(len(reply))] if script.drip else [reply]:
                        if script.stopped.wait(script.drip):
                            return
                        self.wfile.write(piece)
                        self.wfile.flush()
                    if closes:
                        return

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        super().__exit__(*exc_info)


def raw_json(body: str, *, chunked: bool = False) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if not chunked:
        return f"{head}Content-Length: {len(body)}\r\n\r\n{body}".encode()
    half = len(body) // 2
    chunks = "".join(f"{len(part):x}\r\n{part}\r\n" for part in (body[:half], body[half:]))
    return f"{head}Transfer-Encoding: chunked\r\n\r\n{chunks}0\r\n\r\n".encode()


async def test_requests_share_one_kept_alive_connection() -> None:
    with RawServer(raw_json('["dev"]'), closes=False) as server:
        async with RestClient(server.url) as client:
            for _ in range(5):
                assert await client.list_queues() == ["dev"]
    assert (server.requests, server.connections) == (5, 1)


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    with RawServer(raw_json('["dev"]'), closes=True) as server:
        naps = Naps()
        async with RestClient(server.url, sleep=naps) as client:
            for done in range(1, 4):
                assert await client.list_queues() == ["dev"]
                await eventually(lambda: server.closed == done, what="the server to close the connection")  # noqa: B023
    assert (server.requests, server.connections) == (3, 3)
    assert naps.delays == [], "no request failed on a dead connection and had to be retried"


async def test_a_chunked_reply_is_read_whole() -> None:
    with RawServer(raw_json('["dev", "qa", "ops"]', chunked=True), closes=False) as server:
        async with RestClient(server.url) as client:
            assert await client.list_queues() == ["dev", "qa", "ops"]
            assert await client.list_queues() == ["dev", "qa", "ops"]
    assert server.connections == 1


async def test_bytes_after_a_reply_are_never_taken_for_the_next_reply() -> None:
    # A reply whose Content-Length is shorter than what follows it: the rest would answer the next
    # request on the connection (before: the second request returned ["forged"]).
    lying = raw_json('["dev"]') + raw_json('["forged"]')
    with RawServer(lying, closes=False) as server:
        async with RestClient(server.url) as client:
            assert await client.list_queues() == ["dev"]
            assert await client.list_queues() == ["dev"]
    assert (server.requests, server.connections) == (2, 2)


async def test_a_reply_dripped_byte_by_byte_times_out_as_a_whole() -> None:
    # Each byte comes within the read timeout, the whole reply never would (before: a 117-byte reply
    # dripped at one byte a second under a 2 s read timeout took 117 s, and a pass or a claim with it).
    with RawServer(raw_json('["dev"' + " " * 80 + "]"), closes=False, drip=0.1) as server:
        async with RestClient(server.url, read_timeout=0.5, retries=0) as client:
            started = time.monotonic()
            with pytest.raises(TinyTaskUnavailable, match="ReadTimeout"):
                await client.list_queues()
            assert time.monotonic() - started < 2.0
    assert server.requests == 1


async def test_a_reply_larger_than_the_cap_is_refused_before_it_is_all_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # A server that sends an endless body: the reply is cut at the cap (before: a 20 s endless reply
    # grew the process by 10.8 GB; the next one had it killed for lack of memory at 23.9 GB).
    monkeypatch.setattr(_http11, "MAX_REPLY_BYTES", 1024 * 1024)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4194306\r\n\r\n"
    with RawServer(head + b"[" + b" " * 4 * 1024 * 1024 + b"]", closes=False) as server:
        async with RestClient(server.url, retries=0) as client:
            with pytest.raises(TinyTaskUnavailable, match="reply larger than 1 MiB"):
                await client.list_queues()
    assert server.requests == 1


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (Reply(200, "data: " + "x" * (3 << 20), "text/event-stream"), "reply larger than 1 MiB"),
        (Reply(200, "data: xxxxxxxx\n" * (400 << 10), "text/event-stream"), "event larger than 1 MiB"),
        (Reply(200, "[" + " " * (3 << 20) + "]"), "reply larger than 1 MiB"),
        (Reply(500, "x" * (3 << 20)), "reply larger than 1 MiB"),
    ],
    ids=["line-without-end", "event-without-end", "json-body", "error-body"],
)
async def test_mcp_replies_are_read_up_to_the_cap_whatever_their_shape(
    monkeypatch: pytest.MonkeyPatch, reply: Reply, said: str
) -> None:
    # The MCP path read with httpx's own line reader and aread(), which keep all they get: an
    # endless line, event or body grew the daemon without limit (as the REST path did).
    monkeypatch.setattr(_transport, "MAX_REPLY_BYTES", 1024 * 1024)
    monkeypatch.setattr(mcp, "MAX_REPLY_BYTES", 1024 * 1024)
    with ScriptedServer(rpc(1, INITIALIZED), ACCEPTED, reply) as server:
        async with McpHttpClient(server.url, sleep=Naps(), retries=0) as client:
            with pytest.raises(TinyTaskUnavailable, match=said):
                await client.get_task(7)
