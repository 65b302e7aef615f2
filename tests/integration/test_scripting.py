"""What a script relies on: one `--json` flag on every command whose output it may want, each printing one
JSON document on stdout (lines for people go to stderr), and `run --once --json` saying what it started."""

from __future__ import annotations

import json
from typing import Any

from tinyscheduler.cli.completion import model
from tinyscheduler.cli.main import build_parser

from harness import Workspace

#: Commands whose output is for people only or is itself data: the daemon, a run's raw output, the
#: demo, the completion script and the manual page.
NO_JSON = {"logs", "demo", "completion", "man"}


def test_every_command_a_script_reads_has_the_one_json_flag() -> None:
    _, commands = model(build_parser())
    with_json = {c.name for c in commands if any("--json" in o.flags for o in c.options)}
    assert with_json == {c.name for c in commands} - NO_JSON
    assert not any("--format-json" in o.flags for c in commands for o in c.options)


def cli(workspace: Workspace, *args: str) -> tuple[int, Any]:
    result = workspace.cli(*args)
    try:
        return result.returncode, json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"{args}: stdout is not one JSON document:\n{result.stdout}\n{result.stderr}") from None


def test_each_command_prints_one_json_document(fake, workspace) -> None:
    workspace.write_registry([("dev-a", "dev", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0})
    task = fake.create_task("build it", queue_name="dev")["id"]

    code, ran = cli(workspace, "run", "--once", "--json")
    assert code == 0 and ran["pass"]["started"] == 1
    assert [(r["task_id"], r["agent"], r["outcome"]) for r in ran["started"]] == [(task, "dev-a", "succeeded")]
    assert ran["started"][0]["started_at"].endswith("Z")

    code, status = cli(workspace, "status", "--json")
    assert code == 3 and status["daemon"]["running"] is False and status["state_usage"]["run_logs"] == 1
    code, checks = cli(workspace, "validate-config", "--fix", "--json")
    assert code == 0 and checks["ok"] is True, [c for c in checks["checks"] if not c["ok"]]
    assert {c["name"] for c in checks["checks"]} >= {"goose", "tinytask"}
    code, report = cli(workspace, "report", "--json", "--status", "complete")
    assert code == 0 and report["summary"]["total_complete"] == 1
    code, history = cli(workspace, "history", "--json")
    assert code == 0 and [r["task_id"] for r in history["runs"]] == [task]
    code, config = cli(workspace, "config", "--json")
    assert code == 0 and config["settings"]
    code, paused = cli(workspace, "pause", "--agent", "dev-a", "--json")
    assert (code, paused["ok"], paused["refused"]) == (0, True, None)
    code, again = cli(workspace, "pause", "--agent", "dev-a", "--json")
    assert (code, again["ok"]) == (1, False) and again["refused"].startswith("refused: already paused")
    code, created = cli(workspace, "init", "--json")
    assert code == 0 and str(workspace.base / ".env") in created["created"]
