"""The fake TinyTask as a real HTTP server on 127.0.0.1, in a background thread.

    with FakeTinyTask() as fake:
        fake.create_task("build", assigned_to="dev", queue_name="dev")
        httpx.get(f"{fake.url}/api/v1/tasks")

Routes `/health`, `/api/v1/...` (rest.py) and `/mcp` (mcp.py); anything else is a JSON 404, and a
bug in the fake answers 500 rather than hanging. Every request is logged in `requests` as
(method, path with query) so tests can count them.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tinyscheduler.testing.fake import js, rest
from tinyscheduler.testing.fake.mcp import McpEndpoint
from tinyscheduler.testing.fake.store import FakeError, Seeding, Store, health_document


class FakeTinyTask(Seeding):
    """A TinyTask server in a background thread; `url` is valid after `start()`.

    The tasks outlive `stop()`: starting again (same object, or a new one on the same port with
    the same seed) is how tests play a server that goes away and comes back. `legacy=True` plays
    the old tinytask-mcp 1.0: no REST, only the legacy SSE MCP transport, no queue/parent/blocking
    fields, timestamps as `YYYY-MM-DD HH:MM:SS`. `disguised=True` leaves out of `GET /health` the
    field that tells the scheduler it is the fake (core.standin): it then plays a production server,
    against which the stand-in goose is refused.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, legacy: bool = False, disguised: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.legacy = legacy
        self.disguised = disguised
        self.url = ""
        self.store = Store(legacy)
        self.mcp = McpEndpoint(self.store, legacy)
        self.requests: list[tuple[str, str]] = []
        self._requests_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def start(self) -> FakeTinyTask:
        if self._server is not None:
            raise RuntimeError("FakeTinyTask already started")
        server = _Server((self.host, self.port), _Handler)
        server.fake = self
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._started = time.monotonic()
        # A short poll interval keeps stop() (and so every test teardown) fast.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"fake-tinytask:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self.mcp.sessions.end_all()
        # Kept-alive client connections would otherwise still be served by their handler threads.
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> FakeTinyTask:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    def health(self) -> dict[str, Any]:
        uptime = time.monotonic() - self._started
        return health_document(self.legacy, uptime, len(self.mcp.sessions), marked=not self.disguised)

    # -- used by the handler -----------------------------------------------------------------

    def record(self, method: str, path: str) -> None:
        with self._requests_lock:
            self.requests.append((method, path))

    def track(self, connection: socket.socket, alive: bool) -> None:
        with self._connections_lock:
            (self._connections.add if alive else self._connections.discard)(connection)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeTinyTask

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the tests kill daemons with SIGKILL) is not the server's error.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    """Routes one request; also the `Exchange` the MCP endpoint answers through."""

    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, as clients pool connections
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms stalls

    def setup(self) -> None:
        super().setup()
        self.server.fake.track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake.track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # tests read `requests`, not stderr noise

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        fake.record(method, self.path)
        raw_body = self._read_body()
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        try:
            if path == "/health" and method == "GET":
                self.send_json(200, fake.health())
                return
            if path == "/mcp":
                fake.mcp.serve(self, method, parts.query, raw_body)
                return
            reply = None
            if path.startswith(rest.PREFIX + "/") and not fake.legacy:
                reply = rest.answer(fake.store, method, path, parts.query, raw_body)
            self.send_json(*(reply or (404, {"error": "Not found"})))
        except FakeError as exc:
            self.send_json(exc.status, {"error": exc.message})
        except Exception:  # a bug in the fake must still look like a server failure, not a hang
            self.send_json(500, {"error": "Internal server error"})

    def _read_body(self) -> bytes:
        # Always drain the body, so the next request on a kept-alive connection starts clean.
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        return self.rfile.read(length) if length > 0 else b""

    # -- Exchange ----------------------------------------------------------------------------

    def header(self, name: str) -> str:
        return self.headers.get(name) or ""

    def send_json(self, status: int, payload: Any) -> None:
        self.send(status, js.compact(payload).encode(), "application/json; charset=utf-8")

    def send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def open_stream(self) -> None:
        self.close_connection = True  # the stream has no length: it ends when the socket closes
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()

    def write(self, data: bytes) -> None:
        self.wfile.write(data)
