"""The fake TinyTask's `/mcp` endpoint: JSON-RPC for the tools, over both MCP transports.

- Streamable HTTP (TinyTask 2.x), stateless: `POST /mcp` with one JSON-RPC message; the reply is
  one SSE-framed `message` event (406 without both Accept types, 415 without a JSON body).
- Legacy SSE (tinytask-mcp 1.0, optional in 2.x): `GET /mcp` streams; its first event `endpoint`
  names `/mcp?sessionId=<uuid>`; POSTs there answer 202 and their replies go out on the stream.

The HTTP server hands each `/mcp` request over as an `Exchange`, so the framing lives here.
"""

from __future__ import annotations

import json
import queue
import threading
import uuid
from typing import Any, Protocol
from urllib.parse import parse_qsl

from tinyscheduler.testing.fake import js
from tinyscheduler.testing.fake.store import Store
from tinyscheduler.testing.fake.tools import toolset

PROTOCOL_VERSIONS = ("2025-06-18", "2025-03-26", "2024-11-05", "2024-10-07")
KEEPALIVE_SECONDS = 15.0

Events = queue.Queue[bytes | None]  # None ends the stream


class Exchange(Protocol):
    """One HTTP request/response as the `/mcp` endpoint needs it."""

    def header(self, name: str) -> str: ...

    def send(self, status: int, body: bytes, content_type: str | None, headers: dict[str, str] | None = None) -> None:
        """A complete response with a Content-Length."""

    def send_json(self, status: int, payload: Any) -> None: ...

    def open_stream(self) -> None:
        """200 text/event-stream without a length; the stream ends when the connection closes."""

    def write(self, data: bytes) -> None: ...


class JsonRpc:
    """MCP's JSON-RPC, shared by both transports; one message in, one reply (or None) out."""

    def __init__(self, store: Store, legacy: bool) -> None:
        self.store = store
        self.legacy = legacy
        self.tools = toolset(legacy)

    def handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        if "id" not in message:
            return None  # notifications (e.g. notifications/initialized) and stray responses
        request_id = message["id"]
        method = message.get("method")
        params = message.get("params") or {}
        if method == "initialize":
            wanted = params.get("protocolVersion") if isinstance(params, dict) else None
            result: dict[str, Any] = {
                "protocolVersion": wanted if wanted in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "tinytask-mcp", "version": "1.0.0"}
                if self.legacy
                else {"name": "tinytask", "version": "2.0.0"},
            }
        elif method == "ping":
            result = {}
        elif method == "tools/list":
            result = {"tools": [tool.describe() for tool in self.tools.values()]}
        elif method == "tools/call":
            if not isinstance(params, dict) or not isinstance(params.get("name"), str):
                return rpc_error(request_id, -32602, "Invalid params: tools/call needs a tool name")
            result = self._call(params["name"], params.get("arguments"))
        else:
            return rpc_error(request_id, -32601, "Method not found")
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _call(self, name: str, arguments: Any) -> dict[str, Any]:
        tool = self.tools.get(name)
        text, failed = (f"Unknown tool: {name}", True) if tool is None else tool.call(self.store, arguments)
        result: dict[str, Any] = {"content": [{"type": "text", "text": text}]}
        if failed:
            result["isError"] = True
        return result


def rpc_error(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def sse_event(event: str, data: str) -> bytes:
    return f"event: {event}\ndata: {data}\n\n".encode()


class Sessions:
    """The open legacy SSE streams, by session id: each has a queue of events to send."""

    def __init__(self) -> None:
        self._streams: dict[str, Events] = {}
        self._lock = threading.Lock()

    def open(self) -> tuple[str, Events]:
        session_id, events = str(uuid.uuid4()), Events()
        with self._lock:
            self._streams[session_id] = events
        return session_id, events

    def get(self, session_id: str) -> Events | None:
        with self._lock:
            return self._streams.get(session_id)

    def close(self, session_id: str) -> None:
        with self._lock:
            self._streams.pop(session_id, None)

    def end_all(self) -> None:
        """Ask every stream to end (the server is stopping)."""
        with self._lock:
            streams = list(self._streams.values())
        for events in streams:
            events.put(None)

    def __len__(self) -> int:
        return len(self._streams)


class McpEndpoint:
    """`/mcp` of one fake server."""

    def __init__(self, store: Store, legacy: bool) -> None:
        self.legacy = legacy
        self.rpc = JsonRpc(store, legacy)
        self.sessions = Sessions()

    def serve(self, exchange: Exchange, method: str, query: str, raw_body: bytes) -> None:
        session_id = dict(parse_qsl(query)).get("sessionId") or exchange.header("X-Session-Id")
        if method == "GET":
            if not self.legacy and "text/event-stream" not in exchange.header("Accept"):
                _rpc_failure(exchange, 406, -32000, "Not Acceptable: Client must accept text/event-stream")
            else:
                self._stream(exchange)
        elif method == "POST" and (session_id or self.legacy):
            self._session_post(exchange, session_id, raw_body)
        elif method == "POST":
            self._streamable_post(exchange, raw_body)
        elif self.legacy:
            exchange.send_json(404, {"error": "Not found"})
        else:
            _rpc_failure(exchange, 405, -32000, "Method not allowed.")

    def _streamable_post(self, exchange: Exchange, raw_body: bytes) -> None:
        """Stateless streamable HTTP: one JSON-RPC message in, its reply as one SSE event out."""
        accept = exchange.header("Accept")
        if "application/json" not in accept or "text/event-stream" not in accept:
            _rpc_failure(
                exchange, 406, -32000, "Not Acceptable: Client must accept both application/json and text/event-stream"
            )
            return
        if not exchange.header("Content-Type").startswith("application/json"):
            _rpc_failure(exchange, 415, -32000, "Unsupported Media Type: Content-Type must be application/json")
            return
        try:
            message = json.loads(raw_body)
        except ValueError:
            _rpc_failure(exchange, 400, -32700, "Parse error: Invalid JSON")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            _rpc_failure(exchange, 400, -32700, "Parse error: Invalid JSON-RPC message")
            return
        reply = self.rpc.handle(message)
        if reply is None:
            exchange.send(202, b"", None)
        else:
            exchange.send(
                200, sse_event("message", js.compact(reply)), "text/event-stream", {"Cache-Control": "no-cache"}
            )

    def _session_post(self, exchange: Exchange, session_id: str | None, raw_body: bytes) -> None:
        """Legacy SSE transport: the POST is only acknowledged; the reply goes out on the stream."""
        if not session_id:
            exchange.send_json(400, {"error": "Missing session ID"})
            return
        events = self.sessions.get(session_id)
        if events is None:
            exchange.send_json(404, {"error": "Session not found"})
            return
        content_type = exchange.header("Content-Type")
        if not content_type.startswith("application/json"):
            exchange.send(400, f"Error: Unsupported content-type: {content_type}".encode(), "text/plain")
            return
        try:
            message = json.loads(raw_body)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            exchange.send(400, b"Invalid message: " + raw_body, "text/plain")
            return
        reply = self.rpc.handle(message)
        if reply is not None:
            events.put(sse_event("message", js.compact(reply)))
        exchange.send(202, b"Accepted", "text/plain; charset=utf-8")

    def _stream(self, exchange: Exchange) -> None:
        session_id, events = self.sessions.open()
        try:
            exchange.open_stream()
            exchange.write(sse_event("endpoint", f"/mcp?sessionId={session_id}"))
            while True:
                try:
                    event = events.get(timeout=KEEPALIVE_SECONDS)
                except queue.Empty:
                    event = b": keepalive\n\n"
                if event is None:  # the server is stopping
                    break
                exchange.write(event)
        except OSError:
            pass  # the client went away
        finally:
            self.sessions.close(session_id)


def _rpc_failure(exchange: Exchange, status: int, code: int, message: str) -> None:
    exchange.send_json(status, {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": None})
