"""What the daemon shows to monitoring, in-process: the metrics a pass and a run move, the run history
with tokens and cost, TinyTask errors by kind. (The HTTP listener, the page and journald have their
own tests in tests/integration/test_monitoring.py and tests/unit/test_journal.py.)"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinyscheduler.adapters.history import HistoryStore, RunRecord
from tinyscheduler.adapters.logsetup import configure_logging
from tinyscheduler.adapters.pausestore import PauseStore
from tinyscheduler.core.control import Kind, Pause, Pauses, Scope
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.service.page import gather_page, render_page
from tinyscheduler.service.scheduler import Scheduler

from harness import JournalListener
from world import World, daemon, until

PRICES = {"currency": "USD", "models": {"standin-*": {"input": 3.0, "output": 15.0}}}


def samples(scheduler: Scheduler) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the daemon's metrics, parsed by prometheus_client's own parser."""
    text = scheduler.runtime.observer.metrics.text().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def test_a_pass_and_its_run_move_the_metrics_and_the_run_history_gets_tokens_and_cost(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.recipe("dev-a", mode="succeed", seconds=0, input_tokens=1000, output_tokens=250)
    (world.base / "prices.json").write_text(json.dumps(PRICES))
    world.settings["prices"] = "prices.json"
    world.settings["goose_args"] = "--model standin-large"  # goose's stream-json does not name its model
    first = world.client.create_task("first", queue_name="dev", priority=9)["id"]
    world.client.create_task("waits for a slot", queue_name="dev")
    world.client.create_task("blocked", queue_name="dev", blocked_by_task_id=first)
    world.client.create_task("gave up", queue_name="dev", tags=[FAILED_TAG])

    scheduler = world.scheduler()
    assert await scheduler.serve() == 0

    found = samples(scheduler)
    assert value(found, "tinyscheduler_runs_started_total", agent="dev-a") == 1
    assert value(found, "tinyscheduler_runs_finished_total", agent="dev-a", outcome="succeeded") == 1
    assert value(found, "tinyscheduler_run_duration_seconds_count", agent="dev-a") == 1
    assert value(found, "tinyscheduler_tokens_total", agent="dev-a", type="input") == 1000
    assert value(found, "tinyscheduler_tokens_total", agent="dev-a", type="output") == 250
    cost = (1000 * 3.0 + 250 * 15.0) / 1e6
    assert abs(value(found, "tinyscheduler_cost_total", agent="dev-a", currency="USD") - cost) < 1e-9
    for reason in ("no_slot", "blocked", "given_up"):
        assert value(found, "tinyscheduler_tasks_waiting", queue="dev", reason=reason) == 1, reason
    assert value(found, "tinyscheduler_slots", agent="dev-a") == 1
    assert value(found, "tinyscheduler_slots_busy", agent="dev-a") == 0  # the run has ended
    assert value(found, "tinyscheduler_passes_total", result="ok") == 1
    assert value(found, "tinyscheduler_pass_duration_seconds_count") == 1
    assert value(found, "tinyscheduler_last_pass_timestamp_seconds") == world.clock.now.timestamp()
    assert value(found, "tinyscheduler_agent_available", agent="dev-a") == 1
    assert value(found, "tinyscheduler_runs_taken_over_total", how="adopted") == 0

    [run] = HistoryStore(world.base / "state" / "history.sqlite3", read_only=True).runs()
    rt = scheduler.runtime
    assert (run.task_id, run.agent, run.attempt, run.outcome, run.how) == (first, "dev-a", 1, "succeeded", "spawned")
    assert (run.input_tokens, run.output_tokens, run.total_tokens, run.model) == (1000, 250, 1250, "standin-large")
    assert run.cost == cost and run.exit_code == 0 and (run.host, run.instance) == (rt.host, rt.instance_id)
    finished = [e for e in _events(world.base) if e["event"] == "finished"]
    assert finished[0]["cost"] == cost and finished[0]["input_tokens"] == 1000
    assert all(e["host"] == rt.host and e["instance"] == rt.instance_id for e in _events(world.base))


async def test_tinytask_errors_are_counted_by_kind_and_a_failed_pass_shows(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.client.create_task("t", queue_name="dev")
    world.client.fail_next(None)

    scheduler = world.scheduler()
    assert await scheduler.serve() == 1

    found = samples(scheduler)
    assert value(found, "tinyscheduler_tinytask_errors_total", kind="unavailable") >= 1
    assert value(found, "tinyscheduler_passes_total", result="failed") == 1
    assert value(found, "tinyscheduler_last_pass_success") == 0
    assert value(found, "tinyscheduler_pass_consecutive_failures") == 1


async def test_without_a_price_table_runs_have_tokens_but_no_cost(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    task = world.client.create_task("t", queue_name="dev")["id"]
    scheduler = world.scheduler()
    await scheduler.serve()
    [run] = HistoryStore(world.base / "state" / "history.sqlite3", read_only=True).runs()
    assert run.task_id == task and run.input_tokens == 1200 and run.cost is None
    assert not any(name == "tinyscheduler_cost_total" for name, _ in samples(scheduler))


async def test_a_run_whose_history_write_was_cancelled_before_its_thread_started_is_written_at_exit(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon stopping while the writer hands a batch to its thread: the batch is not lost, the
    close at exit writes it."""
    writer = world.scheduler().runtime.observer.history
    record = RunRecord(
        datetime(2026, 11, 29, tzinfo=UTC),
        datetime(2026, 11, 29, 0, 1, tzinfo=UTC),
        "vm",
        "i",
        "dev-a",
        7,
        1,
        "succeeded",
        "exit 0",
        "completed",
        "spawned",
        0,
        60.0,
        None,
        None,
        None,
        None,
        None,
        "/x.log",
    )

    async def cancelled_before_the_thread(*_args: object, **_kwargs: object) -> bool:
        scope.cancel()
        await anyio.sleep_forever()
        raise AssertionError("not reached")

    monkeypatch.setattr(anyio.to_thread, "run_sync", cancelled_before_the_thread)
    writer.add(record)
    with anyio.CancelScope() as scope:
        await writer.run()
    monkeypatch.undo()
    writer.close()
    assert [run.task_id for run in HistoryStore(world.base / "state" / "history.sqlite3", read_only=True).runs()] == [7]


def _events(base: Path) -> list[dict[str, object]]:
    return [json.loads(line) for path in (base / "state" / "logs").glob("events_*.jsonl") for line in path.open()]


async def test_under_journald_a_tasks_entries_are_selected_by_its_id(world: World, tmp_path: Path) -> None:
    """What `journalctl -u tinyscheduler TASK_ID=<id>` shows, against a socket speaking journald's protocol."""
    journal = JournalListener(tmp_path / "journal.socket")
    configure_logging("info", "journal", stream=io.StringIO(), journal_socket=str(journal.path))
    try:
        world.registry([("dev-a", "dev", 1)])
        task = world.client.create_task("t", queue_name="dev")["id"]
        scheduler = world.scheduler()
        await scheduler.serve()
        entries = journal.matching(TASK_ID=str(task))
    finally:
        configure_logging("info", "console", stream=io.StringIO())
        journal.close()
    events = [e["TINYSCHEDULER_EVENT"] for e in entries]
    assert {"run_started", "run_finished"} <= set(events)
    [started] = [e for e in entries if e["TINYSCHEDULER_EVENT"] == "run_started"]
    assert "queue=dev" in started["MESSAGE"], "the queue its claim assigned the task from"
    [finished] = [e for e in entries if e["TINYSCHEDULER_EVENT"] == "run_finished"]
    rt = scheduler.runtime
    assert (finished["AGENT"], finished["ATTEMPT"], finished["OUTCOME"]) == ("dev-a", "1", "succeeded")
    assert (finished["HOST"], finished["TINYSCHEDULER_INSTANCE"]) == (rt.host, rt.instance_id)
    assert finished["PRIORITY"] == "6" and finished["MESSAGE"].startswith("event=run_finished ")


async def test_the_metrics_go_to_a_textfile_for_node_exporter_after_each_pass(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    world.client.create_task("t", queue_name="dev")
    world.settings["metrics_textfile"] = "textfile/tinyscheduler.prom"
    (world.base / "textfile").mkdir()
    await world.scheduler().serve()
    path = world.base / "textfile" / "tinyscheduler.prom"
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # node_exporter runs as another user
    families = {f.name for f in text_string_to_metric_families(path.read_text())}
    assert {"tinyscheduler_passes", "tinyscheduler_slots", "tinyscheduler_tasks_waiting"} <= families
    assert list((world.base / "textfile").iterdir()) == [path]  # written atomically: no temporary left


async def test_pauses_and_the_drain_show_in_the_metrics_and_on_the_status_page(world: World) -> None:
    world.registry([("dev-a", "dev", 1), ("qa-a", "qa", 1)])
    world.client.create_task("t", queue_name="dev")
    since = datetime(2026, 11, 29, 9, 30, tzinfo=UTC)
    pauses = (
        Pause(Scope.AGENT, "dev-a", "alice", since, "flaky provider <b>"),
        Pause(Scope.HOST, "", "bob", since, "kernel update", Kind.DRAIN),
    )
    (world.base / "state").mkdir()
    PauseStore(world.base / "state" / "pauses.json").save(Pauses(pauses))

    scheduler = world.scheduler()
    assert await scheduler.serve() == 0

    found = samples(scheduler)
    paused_at = since.timestamp()
    assert value(found, "tinyscheduler_pause_since_timestamp_seconds", scope="agent", target="dev-a", kind="pause") == (
        paused_at
    )
    assert (
        value(found, "tinyscheduler_pause_since_timestamp_seconds", scope="host", target="", kind="drain") == paused_at
    )
    assert value(found, "tinyscheduler_draining") == 1
    assert not any(
        name == "tinyscheduler_pause_since_timestamp_seconds" and ("target", "qa-a") in labels for name, labels in found
    )

    page = render_page(await gather_page(scheduler.runtime))
    listed = page.split('<ul id="pauses">')[1].split("</ul>")[0]
    assert listed.count('<li class="pause">') == 2
    assert "agent dev-a paused by alice since 2026-11-29T09:30:00.000Z: flaky provider &lt;b&gt;" in listed
    assert "host draining by bob since 2026-11-29T09:30:00.000Z: kernel update" in listed


async def test_with_no_pause_the_page_says_none_and_nothing_drains(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    scheduler = world.scheduler()
    assert await scheduler.serve() == 0
    assert value(samples(scheduler), "tinyscheduler_draining") == 0
    assert '<p class="none" id="pauses">none</p>' in render_page(await gather_page(scheduler.runtime))


async def test_runs_the_history_could_not_take_are_written_once_it_can(world: World) -> None:
    world.registry([("dev-a", "dev", 1)])
    first = world.client.create_task("first", queue_name="dev")["id"]
    blocker = world.base / "state" / "history.sqlite3"
    blocker.mkdir(parents=True)  # a folder where the history file belongs: it cannot be opened

    async with daemon(world) as scheduler:
        writer = scheduler.runtime.observer.history
        await until(lambda: writer._failing is not None, "the history refused")
        blocker.rmdir()
        second = world.client.create_task("second", queue_name="dev")["id"]
        scheduler.runtime.tick.set()
        await until(lambda: writer._failing is None and not writer._pending, "the history written")

    tasks = [run.task_id for run in HistoryStore(blocker, read_only=True).runs()]
    assert sorted(tasks) == [first, second], "the run that ended while the file was broken is not lost"


async def test_runs_that_end_within_a_second_of_a_write_reach_the_history_in_the_next_one(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write is a worker-thread hand-off and an SQLite transaction: with a hundred slots of short
    tasks, one per run cost the daemon more CPU than the run's own bookkeeping. The first run after
    a quiet spell is written at once."""
    world.registry([("dev-a", "dev", 1), ("dev-b", "dev", 1), ("dev-c", "dev", 1)])
    for agent, seconds in (("dev-a", 0), ("dev-b", 0.3), ("dev-c", 0.6)):
        world.recipe(agent, mode="succeed", seconds=seconds)
    tasks = [world.client.create_task(f"t{n}", queue_name="dev")["id"] for n in range(3)]
    writes: list[int] = []
    append = HistoryStore.append

    def counted(self: HistoryStore, records: Sequence[RunRecord]) -> None:
        writes.append(len(records))
        append(self, records)

    monkeypatch.setattr(HistoryStore, "append", counted)

    assert await world.serve() == 0

    assert writes == [1, 2], "the three runs ended 0.3 s apart: the first at once, the next two together"
    runs = HistoryStore(world.base / "state" / "history.sqlite3", read_only=True).runs()
    assert sorted(run.task_id for run in runs) == tasks
