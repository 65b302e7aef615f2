"""TinyTask client: models, errors, and the transports behind one interface."""

from tinyscheduler.adapters.tinytask.client import SCHEDULER_NAME, TinyTaskClient
from tinyscheduler.adapters.tinytask.connect import connect
from tinyscheduler.adapters.tinytask.errors import (
    TaskNotFound,
    TinyTaskBadReply,
    TinyTaskError,
    TinyTaskRejected,
    TinyTaskUnavailable,
)
from tinyscheduler.adapters.tinytask.models import ServerFeatures, TaskBatch, TaskProblem
from tinyscheduler.core.tasks import FAILED_TAG, Task

__all__ = [
    "FAILED_TAG",
    "SCHEDULER_NAME",
    "ServerFeatures",
    "Task",
    "TaskBatch",
    "TaskNotFound",
    "TaskProblem",
    "TinyTaskBadReply",
    "TinyTaskClient",
    "TinyTaskError",
    "TinyTaskRejected",
    "TinyTaskUnavailable",
    "connect",
]
