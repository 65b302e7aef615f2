"""Typed failures of the TinyTask client: callers decide by type, never by parsing messages."""

from __future__ import annotations


class TinyTaskError(Exception):
    """Base of every TinyTask client failure."""


class TinyTaskUnavailable(TinyTaskError):
    """The server could not be reached or failed (connection, timeout, 5xx) after retries."""


class TinyTaskRejected(TinyTaskError):
    """The server understood the request and refused it (4xx or an MCP `isError` result)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TaskNotFound(TinyTaskRejected):
    """The task does not exist (or was archived)."""


class TinyTaskBadReply(TinyTaskError):
    """The server answered with something that is not what its contract says."""
