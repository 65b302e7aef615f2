"""The claim (core.policy): one update, and what its reply says of another writer."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from tinyscheduler.core.attempts import AttemptRecord
from tinyscheduler.core.policy import claim_collision, claim_fields, claim_refusal, yield_fields
from tinyscheduler.core.tasks import Task

NOW = datetime(2026, 11, 29, tzinfo=UTC)


def test_one_update_assigns_and_sets_working() -> None:
    assert claim_fields("dev-a") == {"assigned_to": "dev-a", "status": "working"}


@pytest.mark.parametrize(
    ("listed_to", "listed_previous", "reply_previous", "collided"),
    [
        (None, None, None, False),  # unassigned when listed; our update replaced nobody
        (None, "old", None, False),
        (None, None, "other", True),  # someone assigned it after the list: ours replaced theirs
        ("dev-a", "old", "old", False),  # already ours: nothing changed, the old previous stays
        ("dev-a", "old", "other", True),  # reassigned to other after the list, ours took it back
        ("dev-a", None, "dev-b", True),
    ],
)
def test_the_reply_shows_whose_assignment_the_claim_replaced(
    listed_to: str | None, listed_previous: str | None, reply_previous: str | None, collided: bool
) -> None:
    listed = Task(id=1, status="idle", assigned_to=listed_to, previous_assigned_to=listed_previous)
    reply = replace(listed, status="working", assigned_to="dev-a", previous_assigned_to=reply_previous)
    found = claim_collision(listed, reply, "dev-a")
    assert (found is not None) is collided
    if collided:
        assert found == f"assigned to {reply_previous} by another writer after it was listed"
        assert yield_fields(reply) == {"assigned_to": reply_previous, "status": "idle"}


def test_a_planned_assignment_needs_the_task_still_unassigned() -> None:
    record = AttemptRecord(1)
    free = Task(id=1, status="idle")
    taken = Task(id=1, status="idle", assigned_to="other")
    assert claim_refusal(free, "dev-a", record, blocking=True, now=NOW, assigning=True) is None
    assert claim_refusal(taken, "dev-a", record, blocking=True, now=NOW, assigning=True) == (
        "assigned to other, not no one"
    )
    assert claim_refusal(free, "dev-a", record, blocking=True, now=NOW) == "assigned to no one, not dev-a"
