"""An in-memory TinyTask client for service tests: what the REST client does against the fake
TinyTask, without HTTP, threads or sockets.

`InMemoryTinyTask` is a `TinyTaskClient` over the fake's own `Store`, answering each call through
the fake's REST routes (`fake.rest.answer`), so it keeps the same contract and quirks as the HTTP
fake: the same core `Task` values and `TaskBatch` problems for malformed rows, the same typed
errors (TaskNotFound, TinyTaskRejected; TinyTaskUnavailable when a fault is injected), no
unassigned filter, advisory blocking, last-writer-wins assignment. Share a store with a running
`FakeTinyTask` (`InMemoryTinyTask(fake.store)`) to watch the same tasks over both.

    client = InMemoryTinyTask()
    task_id = client.create_task("build", queue_name="dev")["id"]
    client.fail_next(2, method="update_task")     # TinyTask goes away for two updates
    client.lose_reply(method="update_task")       # the next update is applied, its reply lost
    stall = client.stall("get_task")              # the next get_task waits ...
    ...; await stall.reached.wait(); stall.release.set()   # ... until the test lets it go
    assert client.count("update_task") == 4

Every call is recorded in `calls` (name and arguments, faulted calls included). A store made with
`legacy=True` plays the old tinytask-mcp: the old task shape, no queues and no blocking
(`features`), queue calls rejected as the MCP client rejects them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode

import anyio
import anyio.lowlevel

from tinyscheduler.adapters.tinytask._transport import one_task, queue_names, status_filter
from tinyscheduler.adapters.tinytask.client import SCHEDULER_NAME, TinyTaskClient
from tinyscheduler.adapters.tinytask.errors import TaskNotFound, TinyTaskRejected, TinyTaskUnavailable
from tinyscheduler.adapters.tinytask.models import ServerFeatures, TaskBatch, parse_tasks
from tinyscheduler.core.tasks import Task
from tinyscheduler.testing.fake import rest
from tinyscheduler.testing.fake.store import FakeError, Seeding, Store, health_document

TASKS = rest.PREFIX + "/tasks"
#: Where the in-memory server "is", in error messages.
ADDRESS = "memory://tinytask"

T = TypeVar("T")
FaultKind = Literal["fail", "lose-reply", "stall"]


@dataclass(frozen=True)
class ClientCall:
    """One call of the client interface, as a request count sees it."""

    name: str
    args: dict[str, Any]


@dataclass
class Stall:
    """A held call: `reached` is set when a call starts waiting, setting `release` lets it go on."""

    release: anyio.Event
    reached: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Fault:
    kind: FaultKind
    method: str | None  # None: any method
    remaining: int | None  # None: until clear_faults()
    stall: Stall | None = None

    def matches(self, kinds: tuple[FaultKind, ...], method: str) -> bool:
        live = self.remaining is None or self.remaining > 0
        return live and self.kind in kinds and self.method in (None, method)


class InMemoryTinyTask(Seeding, TinyTaskClient):
    """A TinyTask client whose server is a `Store` in this process (see the module docstring)."""

    def __init__(self, store: Store | None = None, *, legacy: bool = False) -> None:
        self.store = store if store is not None else Store(legacy)
        self.legacy = self.store.legacy
        if self.legacy:  # what detect_features() finds on tinytask-mcp 1.0
            self.features = ServerFeatures(protocol="mcp-sse", queues=False, blocking=False)
        else:
            self.features = ServerFeatures(protocol="rest")
        self.calls: list[ClientCall] = []
        self._faults: list[_Fault] = []
        self._started = time.monotonic()

    # -- what tests control and read ----------------------------------------------------------

    def count(self, method: str | None = None) -> int:
        """Calls made so far (of one method, or all)."""
        return sum(1 for call in self.calls if method is None or call.name == method)

    def reset_calls(self) -> None:
        self.calls.clear()

    def fail_next(self, count: int | None = 1, method: str | None = None) -> None:
        """The next `count` calls (of `method`, or any) raise TinyTaskUnavailable and change
        nothing; `count=None` keeps failing them until `clear_faults()` (the server is down)."""
        self._faults.append(_Fault("fail", method, count))

    def lose_reply(self, count: int | None = 1, method: str | None = None) -> None:
        """The next `count` calls are applied, then raise TinyTaskUnavailable: the reply was lost."""
        self._faults.append(_Fault("lose-reply", method, count))

    def stall(self, method: str | None = None, release: anyio.Event | None = None) -> Stall:
        """The next call (of `method`, or any) waits until `release` is set; call from async code."""
        stall = Stall(release if release is not None else anyio.Event())
        self._faults.append(_Fault("stall", method, 1, stall))
        return stall

    def clear_faults(self) -> None:
        self._faults.clear()

    # -- the client interface -----------------------------------------------------------------

    async def aclose(self) -> None:
        """Nothing to close: no connections."""

    async def health(self) -> dict[str, Any]:
        return await self._call("health", {}, lambda: health_document(self.legacy, time.monotonic() - self._started, 0))

    async def list_queues(self) -> list[str]:
        def act() -> list[str]:
            self._require_queues()
            path = f"{rest.PREFIX}/queues"
            return queue_names(self._rest("GET", path), f"GET {path}")

        return await self._call("list_queues", {}, act)

    async def list_tasks(
        self,
        *,
        status: Sequence[str] | None = None,
        assigned_to: str | None = None,
        queue_name: str | None = None,
    ) -> TaskBatch:
        def act() -> TaskBatch:
            statuses = status_filter(status)
            if queue_name is not None:
                self._require_queues()
            if statuses == []:
                return TaskBatch(())
            params = {"status": None if statuses is None else ",".join(statuses), "assigned_to": assigned_to}
            params["queue_name"] = queue_name
            rows = self._rest("GET", TASKS, params={k: v for k, v in params.items() if v is not None})
            return parse_tasks(rows, f"GET {TASKS}")

        args = {"status": status, "assigned_to": assigned_to, "queue_name": queue_name}
        return await self._call("list_tasks", args, act)

    async def get_task(self, task_id: int) -> Task:
        path = f"{TASKS}/{int(task_id)}"
        return await self._call(
            "get_task",
            {"task_id": task_id},
            lambda: one_task(self._rest("GET", path, missing=TaskNotFound), f"GET {path}"),
        )

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        path = f"{TASKS}/{int(task_id)}"

        def act() -> Task:
            return one_task(self._rest("PATCH", path, body=fields, missing=TaskNotFound), f"PATCH {path}")

        return await self._call("update_task", {"task_id": task_id, **fields}, act)

    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None:
        path = f"{TASKS}/{int(task_id)}/comments"
        body = {"content": content, "created_by": created_by}
        await self._call(
            "add_comment",
            {"task_id": task_id, **body},
            lambda: self._rest("POST", path, body=body, missing=TaskNotFound),
        )

    # -- machinery ----------------------------------------------------------------------------

    async def _call(self, name: str, args: dict[str, Any], act: Callable[[], T]) -> T:
        """Record the call, yield to the event loop as a request would, play any stall or failure
        injected for it, then `act()` on the store."""
        self.calls.append(ClientCall(name, args))
        await anyio.lowlevel.checkpoint()
        held = self._take(("stall",), name)
        if held is not None and held.stall is not None:
            held.stall.reached.set()
            await held.stall.release.wait()
        if self._take(("fail",), name) is not None:
            raise TinyTaskUnavailable(f"TinyTask unavailable at {ADDRESS}: {name} failed, as the test asked")
        losing = self._take(("lose-reply",), name) is not None
        result = act()
        if losing:
            raise TinyTaskUnavailable(f"TinyTask unavailable at {ADDRESS}: {name} was applied, its reply lost")
        return result

    def _take(self, kinds: tuple[FaultKind, ...], method: str) -> _Fault | None:
        for fault in self._faults:
            if fault.matches(kinds, method):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _require_queues(self) -> None:
        if not self.features.queues:
            raise TinyTaskRejected(
                f"the TinyTask server at {ADDRESS} has no queues (old tinytask-mcp); "
                "upgrade it to TinyTask 2.x to schedule by queue"
            )

    def _rest(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        missing: type[TinyTaskRejected] = TinyTaskRejected,
    ) -> Any:
        """A REST request answered by the fake's routes; errors typed as the REST client types them."""
        endpoint = f"{method} {path}"
        raw_body = b"" if body is None else json.dumps(body).encode()
        try:
            reply = rest.answer(self.store, method, path, urlencode(params or {}), raw_body)
        except FakeError as exc:
            cls = missing if exc.status == 404 else TinyTaskRejected
            raise cls(f"{exc.message} ({endpoint}: HTTP {exc.status})", exc.status) from None
        if reply is None:
            raise missing(f"Not found ({endpoint}: HTTP 404)", 404)
        return reply[1]
