"""The TinyTask client interface the planner's shell and the daemon use.

Transports (REST, MCP over streamable HTTP, MCP over legacy SSE) implement `TinyTaskClient`;
callers never know which one is in use. Every method raises only the types in `errors`.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

from tinyscheduler.adapters.tinytask.models import ServerFeatures, TaskBatch
from tinyscheduler.core.tasks import Task

#: Name written as `created_by` on comments the scheduler adds.
SCHEDULER_NAME = "tinyscheduler"
#: Rows per page of a list: few requests (2,000 idle tasks come in one), a bounded reply each.
PAGE_SIZE = 5000


class TinyTaskClient(abc.ABC):
    """Async access to one TinyTask server. Use as `async with`; one pooled connection set."""

    features: ServerFeatures
    #: Rows per page of `list_tasks` (a pass counts its requests with it: core.listing).
    page_size: int = PAGE_SIZE

    async def __aenter__(self) -> TinyTaskClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    async def health(self) -> dict[str, Any]:
        """The server's health document (REST `/health`); raises TinyTaskUnavailable if down."""

    @abc.abstractmethod
    async def list_queues(self) -> list[str]: ...

    @abc.abstractmethod
    async def list_tasks(
        self,
        *,
        status: Sequence[str] | None = None,
        assigned_to: str | None = None,
        queue_name: str | None = None,
    ) -> TaskBatch:
        """Every matching task (all pages), server order: priority desc, created_at asc."""

    async def idle_unassigned(self, queue_name: str) -> TaskBatch:
        """Idle tasks of a queue with nobody assigned (the server has no such filter)."""
        batch = await self.list_tasks(status=["idle"], queue_name=queue_name)
        return TaskBatch(tuple(t for t in batch.tasks if t.assigned_to is None), batch.problems)

    async def idle_assigned(self, agent: str) -> TaskBatch:
        return await self.list_tasks(status=["idle"], assigned_to=agent)

    @abc.abstractmethod
    async def get_task(self, task_id: int) -> Task:
        """One task; raises TaskNotFound."""

    @abc.abstractmethod
    async def update_task(self, task_id: int, **fields: Any) -> Task:
        """Partial update (`status`, `assigned_to` with None meaning unassign, `tags`, ...)."""

    async def assign(self, task_id: int, agent: str) -> Task:
        return await self.update_task(task_id, assigned_to=agent)

    async def unassign(self, task_id: int) -> Task:
        return await self.update_task(task_id, assigned_to=None)

    async def set_status(self, task_id: int, status: str) -> Task:
        return await self.update_task(task_id, status=status)

    @abc.abstractmethod
    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None: ...
