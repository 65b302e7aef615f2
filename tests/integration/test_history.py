"""Run history and cost through the CLI: `run --once` records every run, `history` lists and sums them
(filters, JSON, bad input as one line), `report` sums tokens and cost per agent and per task."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from harness import Workspace

PRICES = {"currency": "EUR", "models": {"standin-*": {"input": 2.0, "output": 10.0}}}


def cli(workspace: Workspace, *args: str) -> subprocess.CompletedProcess[str]:
    return workspace.cli(*args, TINYSCHEDULER_PRICES="prices.json", TINYSCHEDULER_MAX_ATTEMPTS="1")


@pytest.fixture
def ran(fake, workspace) -> dict[str, int]:
    """Two successes of dev-a (1,000 + 250 tokens each, model standin-large) and a failure of qa-a."""
    (workspace.base / "prices.json").write_text(json.dumps(PRICES))
    workspace.write_registry([("dev-a", "dev", 2), ("qa-a", "qa", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1, "input_tokens": 1000, "output_tokens": 250})
    workspace.write_recipe("qa-a", {"mode": "fail", "seconds": 0.1, "input_tokens": 10, "output_tokens": 5})
    ids = {
        "dev1": fake.create_task("one", queue_name="dev")["id"],
        "dev2": fake.create_task("two", queue_name="dev")["id"],
        "qa": fake.create_task("three", queue_name="qa")["id"],
    }
    done = cli(workspace, "run", "--once", "--goose-args", "--model standin-large")
    assert done.returncode == 0, done.stderr
    return ids


def history(workspace: Workspace, *args: str) -> dict[str, Any]:
    done = cli(workspace, "history", "--json", *args)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def test_history_lists_every_run_with_tokens_and_cost_and_filters(workspace, ran):
    every = history(workspace)
    assert every["total_runs"] == 3 and every["currency"] == "EUR"
    by_task = {run["task_id"]: run for run in every["runs"]}
    dev = by_task[ran["dev1"]]
    assert (dev["agent"], dev["attempt"], dev["outcome"], dev["exit_code"], dev["how"]) == (
        "dev-a",
        1,
        "succeeded",
        0,
        "spawned",
    )
    assert (dev["input_tokens"], dev["output_tokens"], dev["total_tokens"], dev["model"]) == (
        1000,
        250,
        1250,
        "standin-large",
    )
    assert dev["cost"] == pytest.approx((1000 * 2 + 250 * 10) / 1e6)
    assert dev["host"] and dev["started_at"] <= dev["ended_at"] and dev["duration_sec"] > 0
    qa = by_task[ran["qa"]]
    assert (qa["outcome"], qa["exit_code"]) == ("failed", 1) and qa["reason"].startswith("exit 1 after")
    [dev_sums] = [a for a in every["per_agent"] if a["agent"] == "dev-a"]
    assert (dev_sums["runs"], dev_sums["input_tokens"], dev_sums["output_tokens"]) == (2, 2000, 500)
    assert dev_sums["cost"] == pytest.approx(0.009)
    assert {t["task_id"] for t in every["per_task"]} == set(ran.values())

    assert [r["agent"] for r in history(workspace, "--agent", "qa-a")["runs"]] == ["qa-a"]
    assert [r["task_id"] for r in history(workspace, "--task", str(ran["dev2"]))["runs"]] == [ran["dev2"]]
    assert history(workspace, "--since", "1d")["total_runs"] == 3
    assert history(workspace, "--since", "2099-01-01")["runs"] == []
    assert history(workspace, "--limit", "1")["total_runs"] == 3

    table = cli(workspace, "history")
    assert table.returncode == 0
    assert "Per agent" in table.stdout and "0.009 EUR" in table.stdout and "2,000" in table.stdout

    for bad in (["--since", "yesterday"], ["--limit", "-1"]):
        refused = cli(workspace, "history", *bad)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert refused.stdout == ""


def test_report_sums_tokens_and_cost_per_agent_and_per_task(workspace, ran):
    done = cli(workspace, "report", "--format", "json", "--status", "idle,working,complete")
    assert done.returncode == 0, done.stderr
    usage = json.loads(done.stdout)["usage"]
    assert usage["currency"] == "EUR"
    assert usage["per_agent"]["dev-a"]["input_tokens"] == 2000 and usage["per_agent"]["qa-a"]["runs"] == 1
    assert usage["per_agent"]["dev-a"]["cost"] == pytest.approx(0.009)
    assert usage["per_task"][str(ran["dev1"])]["output_tokens"] == 250
    table = cli(workspace, "report", "--status", "idle,working,complete")
    assert "Tokens and cost per agent (run history)" in table.stdout and "0.0045 EUR" in table.stdout


def test_history_without_a_file_says_so_and_a_broken_file_is_one_line(workspace):
    empty = cli(workspace, "history")
    assert empty.returncode == 0 and "no runs recorded yet" in empty.stderr
    state = workspace.base / "state"
    state.mkdir(parents=True, exist_ok=True)
    (state / "history.sqlite3").write_bytes(b"not a database at all" * 100)
    broken = cli(workspace, "history")
    assert broken.returncode == 1 and len(broken.stderr.splitlines()) == 1 and "history.sqlite3" in broken.stderr
