"""TinyTask client: models, errors, and the transports behind one interface."""
from tinyscheduler.tinytask.client import SCHEDULER_NAME, TinyTaskClient
from tinyscheduler.tinytask.connect import connect
from tinyscheduler.tinytask.errors import (
    TaskNotFound,
    TinyTaskBadReply,
    TinyTaskError,
    TinyTaskRejected,
    TinyTaskUnavailable,
)
from tinyscheduler.tinytask.models import (
    FAILED_TAG,
    ServerFeatures,
    Task,
    TaskBatch,
    TaskProblem,
)

__all__ = [
    "FAILED_TAG", "SCHEDULER_NAME", "ServerFeatures", "Task", "TaskBatch", "TaskNotFound",
    "TaskProblem", "TinyTaskBadReply", "TinyTaskClient", "TinyTaskError", "TinyTaskRejected",
    "TinyTaskUnavailable", "connect",
]
