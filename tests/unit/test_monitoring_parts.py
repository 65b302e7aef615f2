"""The parts of monitoring that need no daemon: the price table and costs, the history file, the end of
a huge log read without reading the log, the listener's Host rule."""

from __future__ import annotations

import json
import os
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tinyscheduler.adapters.history import Filter, HistoryError, HistoryStore, RunRecord
from tinyscheduler.config.prices import load_prices
from tinyscheduler.config.settings import ConfigError
from tinyscheduler.core.cost import Price, PriceTable, format_cost, run_cost
from tinyscheduler.core.goose import model_of
from tinyscheduler.core.outcomes import Usage
from tinyscheduler.core.text import format_age
from tinyscheduler.service.metrics import Live, Metrics
from tinyscheduler.service.page import read_tail
from tinyscheduler.service.web import host_allowed

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def test_a_model_is_priced_exactly_then_by_its_most_specific_pattern_then_by_the_fallback() -> None:
    table = PriceTable(
        (("*", Price(1, 1)), ("claude-*", Price(2, 2)), ("claude-sonnet-4*", Price(3, 15)), ("gpt-4o", Price(2.5, 10)))
    )
    assert table.price_of("gpt-4o") == Price(2.5, 10)
    assert table.price_of("claude-sonnet-4-20250514") == Price(3, 15)
    assert table.price_of("claude-haiku") == Price(2, 2)
    assert table.price_of("llama") == Price(1, 1) and table.price_of(None) == Price(1, 1)
    assert run_cost(Usage(1_000_000, 100_000, None, "claude-sonnet-4"), table) == 4.5
    assert run_cost(Usage(None, 10, 10, "gpt-4o"), table) is None  # goose did not say its input
    assert run_cost(Usage(10, 10, 20, "x"), PriceTable((("gpt-4o", Price(1, 1)),))) is None
    assert (format_cost(0.00675, "USD"), format_cost(12.0, ""), format_cost(None, "USD")) == ("0.00675 USD", "12", "-")


def test_the_model_of_a_run_comes_from_its_arguments_or_goose_model() -> None:
    assert model_of(["--model", "gpt-4o"], {"GOOSE_MODEL": "x"}) == "gpt-4o"
    assert model_of(["--model=claude-sonnet-4"], {}) == "claude-sonnet-4"
    assert model_of([], {"GOOSE_MODEL": "claude-haiku"}) == "claude-haiku"
    assert model_of(["--max-turns", "5"], {}) is None


def test_the_price_table_loads_and_each_problem_is_one_line_naming_the_entry(tmp_path: Path) -> None:
    good = tmp_path / "prices.json"
    good.write_text(json.dumps({"currency": "USD", "models": {"gpt-4o": {"input": 2.5, "output": 10}}}))
    assert load_prices(good) == PriceTable((("gpt-4o", Price(2.5, 10.0)),), "USD")
    assert load_prices(None) == PriceTable()
    cases = {
        "{": "invalid JSON at line 1 column 2",
        "[]": 'expected an object with "models"',
        '{"models": {"a": {"input": -1, "output": 1}}}': 'models["a"].input: expected a price per million tokens',
        '{"models": {"a": {"input": NaN, "output": 1}}}': 'models["a"].input',
        '{"models": {"a": {"input": 1, "output": true}}}': 'models["a"].output',
        '{"models": {"": {"input": 1, "output": 1}}}': "expected a model name",
        '{"models": {"a": 3}}': 'models["a"]: expected {"input": N, "output": N}',
        '{"currency": 5, "models": {}}': "currency: expected a short name",
    }
    for text, wanted in cases.items():
        good.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_prices(good)
        [line] = caught.value.problems
        assert line.startswith(f"price table {good}: ") and wanted in line, line
    with pytest.raises(ConfigError, match="not found"):
        load_prices(tmp_path / "missing.json")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(ConfigError, match="FIFO"):
        load_prices(tmp_path / "fifo.json")


def record(task_id: int, agent: str, ended: datetime, **changes: object) -> RunRecord:
    values: dict[str, object] = {
        "started_at": ended - timedelta(seconds=60),
        "ended_at": ended,
        "host": "h",
        "instance": "i",
        "agent": agent,
        "task_id": task_id,
        "attempt": 1,
        "outcome": "succeeded",
        "reason": "exit 0 after 60s",
        "report": "completed",
        "how": "spawned",
        "exit_code": 0,
        "duration_sec": 60.0,
        "input_tokens": 100,
        "output_tokens": 10,
        "total_tokens": 110,
        "model": "m",
        "cost": 0.5,
        "log_path": "/l",
    }
    values.update(changes)
    return RunRecord(**values)  # type: ignore[arg-type]


def test_the_history_appends_filters_sums_and_keeps_its_retention(tmp_path: Path) -> None:
    path = tmp_path / "state" / "history.sqlite3"
    assert not HistoryStore(path, read_only=True).exists()  # reading never creates the file
    store = HistoryStore(path)
    store.append([record(1, "a", T0), record(2, "b", T0 + timedelta(days=1), cost=None, outcome="failed")])
    store.append([record(1, "a", T0 + timedelta(days=2), attempt=2, input_tokens=None)])
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    reader = HistoryStore(path, read_only=True)
    assert [(r.task_id, r.attempt) for r in reader.runs()] == [(1, 2), (2, 1), (1, 1)]
    assert reader.runs()[0].ended_at == T0 + timedelta(days=2) and reader.runs()[0].input_tokens is None
    assert [r.agent for r in reader.runs(Filter(agent="b"))] == ["b"]
    assert len(reader.runs(Filter(task_id=1, since=T0 + timedelta(hours=1)))) == 1
    [a, b] = reader.totals("agent")
    assert (a.key, a.runs, a.succeeded, a.input_tokens, a.output_tokens, a.cost) == ("a", 2, 2, 100, 20, 1.0)
    assert (b.key, b.cost) == ("b", None)
    assert reader.count(distinct="task_id") == 2
    assert store.prune(T0 + timedelta(hours=12)) == 1
    assert reader.count() == 2
    with pytest.raises(sqlite3.OperationalError):  # the reader's connection cannot write
        reader._connect().execute("DELETE FROM runs")
    reader.close()
    store.close()


def test_a_history_file_of_a_newer_schema_or_no_database_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "history.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HistoryError, match="schema version 99 is newer"):
        HistoryStore(path).append([record(1, "a", T0)])
    path.write_bytes(b"\0garbage" * 1000)
    with pytest.raises(HistoryError, match=r"history.sqlite3: file is not a database"):
        HistoryStore(path).append([record(1, "a", T0)])


def _bytes_read() -> int:
    return int(next(line for line in Path("/proc/self/io").read_text().splitlines() if line.startswith("rchar"))[7:])


async def test_the_end_of_a_huge_log_is_read_without_reading_the_log(tmp_path: Path) -> None:
    log = tmp_path / "1.log"
    with log.open("wb") as handle:
        handle.truncate(8 * 1024**3)  # 8 GiB, sparse
        handle.seek(0, os.SEEK_END)
        handle.write(b"".join(b"line %d\n" % n for n in range(100)))
    before = _bytes_read()
    started = anyio.current_time()
    tail = await read_tail(log)
    took = anyio.current_time() - started
    read = _bytes_read() - before
    assert tail.splitlines() == [f"line {n}" for n in range(88, 100)]
    assert read < 64 * 1024 and took < 1, (read, took)
    link = tmp_path / "link.log"
    link.symlink_to(log)
    os.mkfifo(tmp_path / "fifo.log")
    assert await read_tail(link) == "" and await read_tail(tmp_path / "fifo.log") == ""
    assert await read_tail(tmp_path / "missing.log") == ""


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:9464", True),
        ("localhost:9464", True),
        ("[::1]:9464", True),
        ("10.0.0.5", True),
        ("attacker.example:9464", False),
        ("localhost.attacker.example", False),
        ("", False),
        (None, False),
    ],
)
def test_a_loopback_listener_answers_only_requests_naming_an_address(host: str | None, allowed: bool) -> None:
    assert host_allowed(host) is allowed


def exposed_names() -> set[str]:
    """Every sample name the daemon's registry can expose (all labels of the live part set)."""
    live = Live(
        host="h",
        instance="i",
        limits={"a": 1},
        busy={"a": 1},
        unavailable=frozenset(),
        goose_available=True,
        counters={},
        waiting={"q": {"blocked": 1}},
        last_pass_at=1.0,
        last_pass_ok=True,
        watchdog_healthy=True,
        cluster_fenced=False,
        pauses=(("agent", "a", "pause", 1.0),),
    )
    metrics = Metrics(lambda: live)
    metrics.runs_finished.labels(agent="a", outcome="succeeded").inc()
    metrics.run_duration.labels(agent="a").observe(1)
    metrics.tokens.labels(agent="a", type="input").inc()
    metrics.cost.labels(agent="a", currency="USD").inc()
    metrics.tinytask_errors.labels(kind="unavailable").inc()
    metrics.pass_duration.observe(0.1)
    metrics.runs_started.labels(agent="a").inc()
    text = metrics.text().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_the_example_dashboard_and_alerts_use_only_metrics_the_daemon_exposes() -> None:
    folder = Path(__file__).resolve().parents[2] / "examples" / "monitoring"
    dashboard = json.loads((folder / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((folder / "tinyscheduler-alerts.yml").read_text())["groups"][0]["rules"]
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]] + [r["expr"] for r in rules]
    used = {name for expr in expressions for name in re.findall(r"\b(?:tinyscheduler|process)_[a-z_]+", expr)}
    assert used and used <= exposed_names(), used - exposed_names()
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
    named = {rule["alert"] for rule in rules}
    wanted = {"Down", "PassesFailing", "AgentUnavailable", "HighRunFailureRate", "WatchdogWithheld", "Restarted"}
    wanted |= {"PausedForADay"}
    assert {f"TinyScheduler{name}" for name in wanted} <= named


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-1, "0.0s"), (4.24, "4.2s"), (42.9, "42s"), (303, "5m03s"), (7620, "2h07m"), (273600, "3d04h")],
)
def test_durations_read_as_a_person_says_them(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown
