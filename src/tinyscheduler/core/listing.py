"""How a pass reads the idle tasks from TinyTask: all of them in one paged list, filtered here, or
one list per queue and per agent. Pure: the choice comes from what the last full list showed.

One full list costs a constant number of requests whatever the number of agents and queues (one
request per `page_size` idle tasks on the server), so it is the default. The per-queue and
per-agent lists cost one request each, but bring only the tasks of this host's queues and agents:
cheaper only when the server holds a large backlog this host does not serve, e.g. a few agents
among thousands of other teams' tasks. The rule compares the two with a measured price of one
request in task rows (`REQUEST_ROWS`, measured by tests/bench/bench_dryrun.py): the targeted lists
win when `lists x REQUEST_ROWS + their rows < pages x REQUEST_ROWS + all rows`. In targeted mode a
full list comes back every `RECHECK_PASSES` passes, to see whether that is still true.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from tinyscheduler.core.tasks import Task

#: What one more request costs, in task rows read and decoded (the client's and the server's work):
#: measured against the fake TinyTask on 127.0.0.1, rows already validated: 89-94 (tests/bench/bench_dryrun.py).
REQUEST_ROWS = 90
#: How often a full list checks the choice again while the targeted lists are in use.
RECHECK_PASSES = 10


class Listing(enum.StrEnum):
    #: Every idle task in one paged list; the queues' and agents' tasks are picked out here.
    ALL = "all"
    #: One list per pool queue and one per agent.
    TARGETED = "targeted"


@dataclass(frozen=True)
class Backlog:
    """What the last full list showed: its rows, and what the targeted lists would have returned."""

    rows: int
    targeted_rows: int
    lists: int

    def pages(self, page_size: int) -> int:
        # The paging stops at the first page shorter than page_size: a full last page costs one more.
        return self.rows // page_size + 1

    def targeted_cheaper(self, page_size: int) -> bool:
        targeted = self.lists * REQUEST_ROWS + self.targeted_rows
        full = self.pages(page_size) * REQUEST_ROWS + self.rows
        return targeted < full


def choose_listing(last: Backlog | None, passes_since_full: int, page_size: int) -> Listing:
    """ALL without a measure, when a recheck is due, or when it is the cheaper way."""
    if last is None or passes_since_full >= RECHECK_PASSES or not last.targeted_cheaper(page_size):
        return Listing.ALL
    return Listing.TARGETED


@dataclass(frozen=True)
class Picked:
    """The full list split the way the targeted lists would have returned it."""

    #: Idle tasks with nobody assigned, per pool queue, in server order.
    queue_tasks: dict[str, tuple[Task, ...]]
    #: Idle tasks assigned to each agent, in server order.
    agent_tasks: dict[str, tuple[Task, ...]]
    backlog: Backlog


def pick(tasks: Iterable[Task], queues: Sequence[str], agents: Iterable[str]) -> Picked:
    """The tasks of `queues` (unassigned) and of `agents` from a list of every idle task, and the
    rows the targeted lists would have brought (a queue's list holds its assigned tasks too)."""
    queue_rows: dict[str, list[Task]] = {queue: [] for queue in queues}
    agent_rows: dict[str, list[Task]] = {agent: [] for agent in agents}
    rows = targeted = 0
    for task in tasks:
        rows += 1
        in_queue = queue_rows.get(task.queue_name) if task.queue_name is not None else None
        if in_queue is not None:
            targeted += 1
            if task.assigned_to is None:
                in_queue.append(task)
        of_agent = agent_rows.get(task.assigned_to) if task.assigned_to is not None else None
        if of_agent is not None:
            targeted += 1
            of_agent.append(task)
    return Picked(
        {queue: tuple(found) for queue, found in queue_rows.items()},
        {agent: tuple(found) for agent, found in agent_rows.items()},
        Backlog(rows, targeted, len(queue_rows) + len(agent_rows)),
    )


def listed_tasks(
    queue_tasks: Mapping[str, Sequence[Task]], agent_tasks: Mapping[str, Sequence[Task]]
) -> dict[int, Task]:
    """Every task of a snapshot by id (the claim of a planned start uses the task as listed)."""
    found: dict[int, Task] = {}
    for tasks in (*queue_tasks.values(), *agent_tasks.values()):
        for task in tasks:
            found.setdefault(task.id, task)
    return found
