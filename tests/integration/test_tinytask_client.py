"""The TinyTask client transports against real HTTP on 127.0.0.1: the project's fake server, and
tiny stdlib servers for the failure modes the fake does not produce (5xx, garbage, silence)."""
from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tinyscheduler.tinytask import (
    TinyTaskBadReply,
    TinyTaskRejected,
    TinyTaskUnavailable,
)
from tinyscheduler.tinytask.rest import RestClient


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


class ScriptedServer:
    """A real HTTP server answering each request with the next scripted reply (the last repeats)."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.seen: list[tuple[str, str]] = []
        self.release = threading.Event()
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                script.seen.append((self.command, self.path))
                reply = script.replies.pop(0) if len(script.replies) > 1 else script.replies[0]
                if reply.hang:
                    script.release.wait(30)
                body = reply.body.encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "ScriptedServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


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
    with ScriptedServer(Reply(400, '{"error":"Invalid status: done. Must be one of: idle, working, complete"}')) as server:
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
