"""etcd v3 through its JSON gateway (`/v3/...` over HTTP), with httpx: the keys, leases and
transactions the cluster mode needs, and nothing else.

Why the gateway and not a gRPC client: every etcd since 3.3 serves it on its client port, it needs no
generated code and no extra dependency (httpx is already the TinyTask client's), and the Python gRPC
clients for etcd are unmaintained (docs/architecture.md, *Several hosts*).

The gateway's JSON is protobuf's: keys and values are base64, 64-bit integers are strings, and a
field at its default (0, false, empty) is left out. Every reply is parsed here into plain values.

Endpoints fail over: a request goes to the endpoint that answered last, and on a connection error, a
timeout, a 5xx, a reply that is not the gateway's JSON or an etcd "unavailable" it moves on to the
next, once round all of them, before it raises `EtcdUnavailable`. A write retried on another
endpoint may have been applied by the first: callers write compare-and-set transactions whose
result they judge from what the key holds, so a repeat changes nothing. With a user, the client
authenticates and sends the token it was given; an expired token is renewed once per request.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tinyscheduler.core.redact import redacted

#: gRPC status codes that say "try another member" (unavailable, deadline exceeded, aborted).
RETRY_CODES = frozenset({4, 10, 14})
#: gRPC status code of a missing or expired auth token.
UNAUTHENTICATED = 16
_TOKEN_PROBLEMS = ("invalid auth token", "user name is empty")


class EtcdError(Exception):
    """Base of every etcd client failure."""


class EtcdUnavailable(EtcdError):
    """No endpoint answered (connection, timeout, no leader) after one round of all of them."""


class EtcdRejected(EtcdError):
    """An endpoint answered and refused the request (an etcd error with its code)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdBadReply(EtcdError):
    """An endpoint answered with something that is not what the gateway sends."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int

    def json(self) -> Any:
        """The value as JSON, or None when it is not JSON (a key written by something else)."""
        try:
            return json.loads(self.value)
        except (ValueError, RecursionError):
            return None


@dataclass(frozen=True)
class Tls:
    """TLS towards etcd: the CA that signs its certificates, and this host's client certificate."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never the password, whatever prints it
        return f"Credentials(user={self.user!r}, password={redacted('password', self.password)!r})"


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    #: The key-values read by the branch that ran (its range requests), in order.
    kvs: tuple[KeyValue, ...]
    revision: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        raise EtcdBadReply(f"expected an integer, got {value!r}") from None


def _list(value: Any) -> list[Any]:
    """A repeated field: absent when empty; anything else than a list is not the gateway's."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise EtcdBadReply(f"expected a list, got {type(value).__name__}")
    return value


def _kv(raw: Any) -> KeyValue:
    if not isinstance(raw, dict):
        raise EtcdBadReply(f"expected a key-value object, got {type(raw).__name__}")
    try:
        key = base64.b64decode(raw.get("key", ""), validate=True).decode()
        value = base64.b64decode(raw.get("value", ""), validate=True)
    except (ValueError, UnicodeDecodeError):
        raise EtcdBadReply("a key or value is not base64 of UTF-8") from None
    return KeyValue(key, value, _int(raw.get("create_revision")), _int(raw.get("mod_revision")), _int(raw.get("lease")))


def _prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with `prefix` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return _b64(bytes(raw))
        raw.pop()
    return _b64(b"\0")


# --- the parts of a transaction -------------------------------------------------------------------


def absent(key: str) -> dict[str, Any]:
    """Compare: the key does not exist (it was never created, or deleted, or its lease expired)."""
    return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def mod_revision_is(key: str, revision: int) -> dict[str, Any]:
    """Compare: the key was last written at `revision` (nobody wrote it since we read it)."""
    return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def lease_is(key: str, lease: int) -> dict[str, Any]:
    """Compare: the key exists bound to `lease` (the fencing token of who wrote it)."""
    return {"key": _b64(key), "target": "LEASE", "result": "EQUAL", "lease": str(lease)}


def put(key: str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def get(key: str) -> dict[str, Any]:
    return {"request_range": {"key": _b64(key)}}


def delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": _b64(key)}}


class EtcdClient:
    """A few etcd v3 calls over the JSON gateway, failing over between endpoints."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        tls: Tls | None = None,
        credentials: Credentials | None = None,
        count: Callable[[str], None] | None = None,
    ) -> None:
        """`count("etcd_requests")` for each request sent, `count("etcd_failures")` for each one that
        failed (the daemon's counters)."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        self.endpoints = [url.rstrip("/") for url in endpoints]
        self.credentials = credentials
        self._current = 0
        self._token: str | None = None
        tls = tls or Tls()
        verify: Any = str(tls.ca_file) if tls.ca_file else True
        cert = (str(tls.cert_file), str(tls.key_file)) if tls.cert_file and tls.key_file else None
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=timeout), verify=verify, cert=cert)
        #: Requests sent (each endpoint tried counts), by path: what the cluster mode costs.
        self.requests: dict[str, int] = {}
        #: Requests that failed: no answer, a 5xx, a refusal, a reply that is not the gateway's.
        self.failures = 0
        self._count = count or (lambda _name: None)

    async def aclose(self) -> None:
        await self.http.aclose()

    # --- leases ----------------------------------------------------------------------------------

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (its id, the TTL granted)."""
        reply = await self.call("/v3/lease/grant", {"TTL": str(ttl)})
        if reply.get("error"):
            raise EtcdRejected(f"lease grant refused: {reply['error']}")
        return _int(reply.get("ID")), _int(reply.get("TTL"))

    async def keepalive(self, lease: int) -> int:
        """Renew `lease`: the TTL it has again, 0 when it no longer exists (expired or revoked)."""
        reply = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        if not isinstance(result, dict):
            raise EtcdBadReply(f"lease keepalive: expected a result object, got {type(result).__name__}")
        return _int(result.get("TTL"))

    async def revoke(self, lease: int) -> None:
        """End `lease` now: every key bound to it goes with it. An unknown lease is no error."""
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdRejected as exc:
            if "not found" not in str(exc):
                raise

    async def time_to_live(self, lease: int) -> tuple[int, int]:
        """(seconds left, TTL granted); seconds left is -1 when the lease no longer exists."""
        reply = await self.call("/v3/lease/timetolive", {"ID": str(lease)})
        return _int(reply.get("TTL")), _int(reply.get("grantedTTL"))

    # --- keys ------------------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        kvs = await self._range({"key": _b64(key)})
        return kvs[0] if kvs else None

    async def get_prefix(self, prefix: str) -> list[KeyValue]:
        return await self._range({"key": _b64(prefix), "range_end": _prefix_end(prefix)})

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> None:
        await self.call("/v3/kv/put", put(key, value, lease)["request_put"])

    async def txn(
        self, compare: Sequence[dict[str, Any]], success: Sequence[dict[str, Any]], failure: Sequence[dict[str, Any]]
    ) -> TxnResult:
        reply = await self.call(
            "/v3/kv/txn", {"compare": list(compare), "success": list(success), "failure": list(failure)}
        )
        kvs: list[KeyValue] = []
        for response in _list(reply.get("responses")):
            ranged = response.get("response_range") if isinstance(response, dict) else None
            if isinstance(ranged, dict):
                kvs.extend(_kv(raw) for raw in _list(ranged.get("kvs")))
        header = reply.get("header")
        revision = _int(header.get("revision")) if isinstance(header, dict) else 0
        return TxnResult(bool(reply.get("succeeded")), tuple(kvs), revision)

    async def _range(self, body: dict[str, Any]) -> list[KeyValue]:
        reply = await self.call("/v3/kv/range", body)
        return [_kv(raw) for raw in _list(reply.get("kvs"))]

    # --- the wire --------------------------------------------------------------------------------

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` on the first endpoint that answers; the decoded reply."""
        causes: list[str] = []
        renewed = False
        count = len(self.endpoints)
        tried = 0
        while tried < count:
            url = self.endpoints[self._current]
            try:
                return await self._post(url, path, body)
            except _TryNext as exc:
                self._failed()
                causes.append(f"{url}: {exc}")
            except EtcdRejected as exc:
                self._failed()
                if exc.code != UNAUTHENTICATED or renewed or self.credentials is None:
                    raise
                renewed = True
                self._token = None  # expired: authenticate again, same endpoint
                continue
            self._current = (self._current + 1) % count
            tried += 1
        raise EtcdUnavailable(f"etcd unavailable at {path}: " + "; ".join(causes))

    def _failed(self) -> None:
        self.failures += 1
        self._count("etcd_failures")

    async def _post(self, url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        headers = {}
        if self.credentials is not None and path != "/v3/auth/authenticate":
            if self._token is None:
                self._token = await self._authenticate(url)
            headers["Authorization"] = self._token
        self.requests[path] = self.requests.get(path, 0) + 1
        self._count("etcd_requests")
        try:
            response = await self.http.post(url + path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _TryNext(_describe(exc)) from exc
        try:
            reply = response.json()
        except (ValueError, RecursionError):
            # Not the gateway talking (a proxy's error page, a half-written reply): maybe another is.
            raise _TryNext(f"HTTP {response.status_code}, reply is not JSON") from None
        if not isinstance(reply, dict):
            raise _TryNext(f"HTTP {response.status_code}, reply is not a JSON object")
        if response.status_code >= 400 or ("code" in reply and "error" in reply):
            code = reply.get("code")
            message = str(reply.get("message") or reply.get("error") or f"HTTP {response.status_code}")
            if code in RETRY_CODES or (response.status_code >= 500 and code is None):
                raise _TryNext(message)
            if code is None and any(word in message for word in _TOKEN_PROBLEMS):
                code = UNAUTHENTICATED
            raise EtcdRejected(f"etcd refused {path}: {message}", code if isinstance(code, int) else None)
        return reply

    async def _authenticate(self, url: str) -> str:
        assert self.credentials is not None
        body = {"name": self.credentials.user, "password": self.credentials.password}
        reply = await self._post(url, "/v3/auth/authenticate", body)
        token = reply.get("token")
        if not isinstance(token, str) or not token:
            raise EtcdRejected(f"etcd gave user {self.credentials.user!r} no token")
        return token


class _TryNext(Exception):
    """This endpoint failed in a way another may not."""


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
