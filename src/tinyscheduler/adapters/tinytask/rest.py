"""The REST transport: TinyTask 2.x `/api/v1/...` over one pooled HTTP connection set."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinyscheduler.adapters.tinytask._transport import (
    HttpClient,
    collect_pages,
    expect_dict,
    expect_list,
    one_task,
    queue_names,
    status_filter,
)
from tinyscheduler.adapters.tinytask.client import SCHEDULER_NAME
from tinyscheduler.adapters.tinytask.errors import TaskNotFound
from tinyscheduler.adapters.tinytask.models import ServerFeatures, TaskBatch, parse_tasks
from tinyscheduler.core.tasks import Task

TASKS = "/api/v1/tasks"


class RestClient(HttpClient):
    """TinyTask over REST. Retries connection errors, timeouts and 5xx; never retries a 4xx."""

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self.features = ServerFeatures(protocol="rest")

    async def list_queues(self) -> list[str]:
        return queue_names(await self._api.request("GET", "/api/v1/queues"), "GET /api/v1/queues")

    async def list_tasks(
        self,
        *,
        status: Sequence[str] | None = None,
        assigned_to: str | None = None,
        queue_name: str | None = None,
    ) -> TaskBatch:
        endpoint = f"GET {TASKS}"
        filters: dict[str, str | int] = {}
        statuses = status_filter(status)
        if statuses is not None:
            if not statuses:
                return TaskBatch(())
            filters["status"] = ",".join(statuses)
        if assigned_to is not None:
            filters["assigned_to"] = assigned_to
        if queue_name is not None:
            filters["queue_name"] = queue_name

        async def page(limit: int, offset: int) -> list[Any]:
            reply = await self._api.request("GET", TASKS, params={**filters, "limit": limit, "offset": offset})
            return expect_list(reply, endpoint)

        return parse_tasks(await collect_pages(page, self.page_size), endpoint, self.task_cache)

    async def get_task(self, task_id: int) -> Task:
        path = f"{TASKS}/{int(task_id)}"
        return one_task(await self._api.request("GET", path, missing=TaskNotFound), f"GET {path}")

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        # REST takes JSON null for "unassign" / "unblock" as it is: no translation needed.
        path = f"{TASKS}/{int(task_id)}"
        reply = await self._api.request("PATCH", path, body=fields, missing=TaskNotFound)
        return one_task(reply, f"PATCH {path}")

    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None:
        path = f"{TASKS}/{int(task_id)}/comments"
        reply = await self._api.request(
            "POST", path, body={"content": content, "created_by": created_by}, missing=TaskNotFound
        )
        expect_dict(reply, f"POST {path}")
