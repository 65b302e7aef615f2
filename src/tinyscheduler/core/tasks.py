"""A TinyTask task as the core sees it: plain, immutable data.

The adapters validate what the server sends (adapters.tinytask.models) and hand over these values;
nothing here parses, fetches or logs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

Status = Literal["idle", "working", "complete"]
STATUSES: tuple[Status, ...] = ("idle", "working", "complete")

#: Names the scheduler acts on (agents, queues): they end up in file names and command lines.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FAILED_TAG = "tinyscheduler:failed"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One TinyTask task, as every list and update returns it."""

    id: int
    status: Status
    title: str = ""
    description: str | None = None
    assigned_to: str | None = None
    previous_assigned_to: str | None = None
    created_by: str | None = None
    priority: int = 0
    tags: tuple[str, ...] = ()
    parent_task_id: int | None = None
    queue_name: str | None = None
    blocked_by_task_id: int | None = None
    is_currently_blocked: bool = False
    created_at: datetime = EPOCH
    updated_at: datetime | None = None

    @property
    def failed_for_good(self) -> bool:
        return FAILED_TAG in self.tags
