"""The etcd client against endpoints that misbehave, on real sockets on 127.0.0.1: garbage, 500s,
replies of the wrong shape, a member that accepts and never answers, auth tokens that expire. Every
failure is one of the client's typed errors naming the endpoints, each try is counted, and a stalled
member costs one timeout, not a hang."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tinyscheduler.adapters.etcd import Credentials, EtcdBadReply, EtcdClient, EtcdRejected, EtcdUnavailable

#: (status, body) for a request path and its JSON body.
Reply = Callable[[str, dict[str, Any], dict[str, str]], tuple[int, bytes]]


class Endpoint:
    """An HTTP server on a free port answering with `reply`; every request is kept."""

    def __init__(self, reply: Reply) -> None:
        self.requests: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                headers = dict(self.headers.items())
                outer.requests.append((self.path, body, headers))
                status, data = reply(self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoints() -> Iterator[Callable[[Reply], Endpoint]]:
    started: list[Endpoint] = []

    def start(reply: Reply) -> Endpoint:
        started.append(Endpoint(reply))
        return started[-1]

    yield start
    for endpoint in started:
        endpoint.close()


@pytest.fixture
def stalled() -> Iterator[str]:
    """A member that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def fixed(status: int, body: bytes | dict[str, Any] | list[Any]) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda _path, _body, _headers: (status, data)


GOOD_RANGE = {"header": {"revision": "5"}, "kvs": [{"key": b64("/a"), "value": b64("1"), "mod_revision": "5"}]}


async def test_garbage_500s_odd_json_and_a_stalled_member_fail_over_then_fail_in_one_typed_error(
    endpoints: Callable[[Reply], Endpoint], stalled: str
) -> None:
    bad = [
        endpoints(fixed(200, b"<html>not etcd</html>")),
        endpoints(fixed(500, b"oops")),
        endpoints(fixed(503, {"error": "etcdserver: no leader", "code": 14})),
        endpoints(fixed(200, [1, 2])),
    ]
    counted: list[str] = []
    client = EtcdClient([e.url for e in bad] + [stalled], timeout=0.5, count=counted.append)
    try:
        began = time.monotonic()
        with pytest.raises(EtcdUnavailable) as caught:
            await client.get("/a")
        took = time.monotonic() - began
    finally:
        await client.aclose()
    message = str(caught.value)
    assert all(e.url in message for e in bad) and stalled in message
    assert "not JSON" in message and "no leader" in message and "not a JSON object" in message
    assert client.requests == {"/v3/kv/range": 5} and client.failures == 5
    assert counted.count("etcd_requests") == 5 and counted.count("etcd_failures") == 5
    assert took < 0.5 * 3, "the stalled member cost one timeout"


async def test_after_a_failover_the_member_that_answered_is_asked_first(endpoints: Callable[[Reply], Endpoint]) -> None:
    broken = endpoints(fixed(502, b"bad gateway"))
    good = endpoints(fixed(200, GOOD_RANGE))
    client = EtcdClient([broken.url, good.url], timeout=1)
    try:
        for _ in range(3):
            [kv] = await client.get_prefix("/")
            assert (kv.key, kv.value, kv.mod_revision) == ("/a", b"1", 5)
    finally:
        await client.aclose()
    assert (len(broken.requests), len(good.requests)) == (1, 3)


@pytest.mark.parametrize(
    "reply",
    [
        {"kvs": 5},
        {"kvs": ["x"]},
        {"kvs": [{"key": "!!not base64", "value": ""}]},
        {"kvs": [{"key": b64("/a"), "mod_revision": "soon"}]},
    ],
)
async def test_a_reply_of_the_wrong_shape_is_a_bad_reply_never_another_exception(
    endpoints: Callable[[Reply], Endpoint], reply: dict[str, Any]
) -> None:
    client = EtcdClient([endpoints(fixed(200, reply)).url], timeout=1)
    try:
        with pytest.raises(EtcdBadReply):
            await client.get("/a")
    finally:
        await client.aclose()


async def test_odd_txn_and_keepalive_replies(endpoints: Callable[[Reply], Endpoint]) -> None:
    odd = endpoints(fixed(200, {"result": "alive", "responses": 7}))
    client = EtcdClient([odd.url], timeout=1)
    try:
        with pytest.raises(EtcdBadReply):
            await client.keepalive(1)
        with pytest.raises(EtcdBadReply):
            await client.txn([], [], [])
    finally:
        await client.aclose()


async def test_a_refusal_is_not_retried_elsewhere(endpoints: Callable[[Reply], Endpoint]) -> None:
    refusing = endpoints(fixed(400, {"error": "etcdserver: request is too large", "code": 3}))
    other = endpoints(fixed(200, GOOD_RANGE))
    client = EtcdClient([refusing.url, other.url], timeout=1)
    try:
        with pytest.raises(EtcdRejected, match="request is too large") as caught:
            await client.put("/a", "x" * 10)
    finally:
        await client.aclose()
    assert caught.value.code == 3 and other.requests == []


async def test_with_auth_the_token_is_sent_and_renewed_once_when_it_expired(
    endpoints: Callable[[Reply], Endpoint],
) -> None:
    tokens = iter(["t1", "t2"])
    expired = {"t1"}

    def reply(path: str, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, bytes]:
        if path == "/v3/auth/authenticate":
            ok = body == {"name": "scheduler", "password": "s3cret"}
            return (200, json.dumps({"token": next(tokens)}).encode()) if ok else (400, b'{"code": 3}')
        if headers.get("Authorization") in expired:
            expired.discard(headers["Authorization"])
            return 401, json.dumps({"error": "etcdserver: invalid auth token", "code": 16}).encode()
        return 200, json.dumps(GOOD_RANGE).encode()

    server = endpoints(reply)
    credentials = Credentials("scheduler", "s3cret")
    assert "s3cret" not in repr(credentials)
    client = EtcdClient([server.url], timeout=1, credentials=credentials)
    try:
        assert await client.get("/a") is not None
        assert await client.get("/a") is not None
    finally:
        await client.aclose()
    paths = [(path, headers.get("Authorization")) for path, _, headers in server.requests]
    assert paths == [
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "t1"),
        ("/v3/auth/authenticate", None),
        ("/v3/kv/range", "t2"),
        ("/v3/kv/range", "t2"),
    ]
