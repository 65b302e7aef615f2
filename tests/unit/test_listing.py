"""How a pass reads TinyTask (core.listing): one full list by default, targeted lists only where they
cost less, and the full list split as the targeted lists would have returned it."""

from __future__ import annotations

from tinyscheduler.core.listing import RECHECK_PASSES, REQUEST_ROWS, Backlog, Listing, choose_listing, pick
from tinyscheduler.core.tasks import Task


def t(task_id: int, queue: str | None = None, agent: str | None = None) -> Task:
    return Task(id=task_id, status="idle", queue_name=queue, assigned_to=agent)


def test_the_full_list_is_split_as_the_targeted_lists_would_return_it() -> None:
    tasks = [t(1, "q"), t(2, "q", "a"), t(3, "other"), t(4, "other", "a"), t(5, None, "b"), t(6, "q", "x"), t(7)]
    picked = pick(tasks, ["q"], ["a", "c"])
    assert picked.queue_tasks == {"q": (tasks[0],)}, "a queue's unassigned tasks"
    assert picked.agent_tasks == {"a": (tasks[1], tasks[3]), "c": ()}, "an agent's tasks, whatever their queue"
    # q's list holds 1, 2 and 6; a's holds 2 and 4; c's nothing: 5 rows over 3 requests.
    assert picked.backlog == Backlog(rows=7, targeted_rows=5, lists=3)


def test_the_full_list_unless_targeted_lists_cost_less() -> None:
    page = 5000
    assert choose_listing(None, 0, page) is Listing.ALL, "nothing measured yet"
    ours_among_many = Backlog(rows=50_000, targeted_rows=40, lists=3)
    assert choose_listing(ours_among_many, 0, page) is Listing.TARGETED
    assert choose_listing(ours_among_many, RECHECK_PASSES, page) is Listing.ALL, "a full list checks again"
    # 10 queues and 50 agents over 2,000 tasks: 60 requests against one.
    assert choose_listing(Backlog(rows=2_000, targeted_rows=3_000, lists=60), 0, page) is Listing.ALL
    # Where the line is: a request is worth REQUEST_ROWS rows.
    even = Backlog(rows=1_000, targeted_rows=1_000 - REQUEST_ROWS, lists=2)
    assert choose_listing(even, 0, page) is Listing.ALL
    assert choose_listing(Backlog(rows=1_000, targeted_rows=999 - REQUEST_ROWS, lists=2), 0, page) is Listing.TARGETED
