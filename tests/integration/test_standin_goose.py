"""The stand-in goose behaves like goose where the scheduler can tell: arguments, exit codes, output
formats, signals; and does what its recipe or a task tag says. Real processes, the fake TinyTask."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tinyscheduler.core.outcomes import MAX_TURNS_SENTENCE, EvidenceRule, Outcome, OutputFormat, ProcessEnd, classify
from tinyscheduler.testing.fake import FakeTinyTask
from tinyscheduler.testing.standin_goose import MODES, STANDIN_MARKER

from harness import STANDIN


class Goose:
    """Starts stand-ins in a folder of their own; kills whatever is left when the test ends."""

    def __init__(self, root: Path, url: str | None) -> None:
        self.root = root
        self.record = root / "record.jsonl"
        self.env = {**os.environ, "TINYSCHEDULER_STANDIN_RECORD": str(self.record)}
        if url:
            self.env["TINYTASK_ENDPOINT"] = url
        self.started: list[subprocess.Popen[str]] = []

    def recipe(self, **standin: Any) -> str:
        path = self.root / f"recipe-{len(list(self.root.glob('recipe-*')))}.yaml"
        path.write_text(
            yaml.safe_dump({"title": "t", "description": "d", "prompt": "p {{ task_id }}", "standin": standin})
        )
        return str(path)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [STANDIN, *args], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=30
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [STANDIN, *args],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.started.append(process)
        deadline = time.monotonic() + 10
        while not self.records():  # the start record is written once signal handling is set up
            assert process.poll() is None and time.monotonic() < deadline, "the stand-in did not start"
            time.sleep(0.01)
        return process

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines()] if self.record.exists() else []


@pytest.fixture
def goose(tmp_path: Path) -> Iterator[Goose]:
    g = Goose(tmp_path, None)
    yield g
    _kill(g)


@pytest.fixture
def served_goose(tmp_path: Path, fake: FakeTinyTask) -> Iterator[Goose]:
    g = Goose(tmp_path, fake.url)
    yield g
    _kill(g)


def _kill(g: Goose) -> None:
    for process in g.started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()


def test_help_says_it_is_a_stand_in_and_lists_every_mode(goose: Goose) -> None:
    done = goose.run("--help")
    assert done.returncode == 0 and "STAND-IN for the goose CLI" in done.stdout
    assert all(mode in done.stdout for mode in MODES)


@pytest.mark.parametrize("flag", ["--version", "-V"])
def test_version_names_it_unmistakably(goose: Goose, flag: str) -> None:
    done = goose.run(flag)
    assert done.returncode == 0 and STANDIN_MARKER == "tinyscheduler stand-in goose (not goose)"
    assert STANDIN_MARKER in done.stdout.splitlines()[0]


@pytest.mark.parametrize(
    "args", [("run",), ("run", "--recipe", "x.yaml", "-t", "hello"), ("run", "-i", "-", "-t", "x")]
)
def test_exactly_one_input_is_required(goose: Goose, args: tuple[str, ...]) -> None:
    done = goose.run(*args)
    assert done.returncode == 1 and "Must provide exactly one of" in done.stderr
    assert goose.records() == []


def test_unreadable_instructions_file_fails_like_goose(goose: Goose) -> None:
    missing = goose.run("run", "-i", str(goose.root / "nope.txt"), "--no-session")
    assert missing.returncode == 1 and "Instruction file not found" in missing.stderr
    assert goose.records() == []
    instructions = goose.root / "do.txt"
    instructions.write_text("do the work\n")
    assert goose.run("run", "-i", str(instructions), "--no-session").returncode == 0


def test_render_recipe_and_explain_exit_without_running(goose: Goose) -> None:
    recipe = goose.recipe(mode="hang")
    rendered = goose.run("run", "--recipe", recipe, "--params", "task_id=7", "--render-recipe")
    assert rendered.returncode == 0 and "prompt: p 7" in rendered.stdout
    explained = goose.run("run", "--recipe", recipe, "--explain")
    assert explained.returncode == 0 and "Title: t" in explained.stdout
    assert goose.records() == []


def test_missing_recipe_and_unknown_mode_fail_like_goose(goose: Goose) -> None:
    missing = goose.run("run", "--recipe", str(goose.root / "nope.yaml"))
    assert missing.returncode == 1 and "cannot read recipe" in missing.stderr
    unknown = goose.run("run", "--recipe", goose.recipe(mode="dance"))
    assert unknown.returncode == 1 and "unknown standin mode 'dance'" in unknown.stderr


def test_records_start_and_end_with_pid_and_exit(goose: Goose) -> None:
    done = goose.run(
        "run", "--recipe", goose.recipe(mode="fail"), "--params", "task_id=5", "--params", "agent=a", "--no-session"
    )
    assert done.returncode == 1
    start, end = goose.records()
    assert (start["event"], start["task_id"], start["agent"]) == ("start", 5, "a")
    assert (end["event"], end["exit"], end["pid"]) == ("end", 1, start["pid"])
    assert start["t"] <= end["t"]


@pytest.mark.parametrize(
    ("standin", "fmt", "outcome"),
    [
        ({"mode": "succeed"}, "text", Outcome.SUCCEEDED),
        ({"mode": "succeed"}, "json", Outcome.SUCCEEDED),
        ({"mode": "succeed"}, "stream-json", Outcome.SUCCEEDED),
        ({"mode": "fail"}, "json", Outcome.FAILED),
        ({"mode": "max-turns"}, "text", Outcome.INCOMPLETE),
        ({"mode": "max-turns"}, "json", Outcome.INCOMPLETE),
        ({"mode": "stream-json"}, "stream-json", Outcome.SUCCEEDED),
        ({"mode": "stream-json", "error": "provider down"}, "stream-json", Outcome.FAILED),
        ({"mode": "stream-error"}, "stream-json", Outcome.FAILED),
        ({"mode": "no-complete"}, "stream-json", Outcome.FAILED),
        # Exit 0 with no evidence at all is not a success, whatever the format.
        ({"mode": "silent-success"}, "stream-json", Outcome.FAILED),
        ({"mode": "silent-success"}, "text", Outcome.FAILED),
        ({"mode": "setsid-child", "linger": 0}, "stream-json", Outcome.SUCCEEDED),
    ],
)
def test_output_reads_as_goose_output(goose: Goose, standin: dict[str, Any], fmt: str, outcome: Outcome) -> None:
    done = goose.run("run", "--recipe", goose.recipe(**standin), "--output-format", fmt)
    rule = EvidenceRule(OutputFormat(fmt))
    assert classify(ProcessEnd(done.returncode, 1.0, tail=done.stdout + done.stderr), rule).outcome is outcome


def test_max_turns_text_is_goose_s_sentence(goose: Goose) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="max-turns"))
    assert done.returncode == 0 and done.stdout.rstrip().endswith(MAX_TURNS_SENTENCE)


def test_fail_once_fails_only_the_first_attempt(goose: Goose) -> None:
    recipe = goose.recipe(mode="fail-once")
    assert goose.run("run", "--recipe", recipe, env={"TINYSCHEDULER_ATTEMPT": "1"}).returncode == 1
    assert goose.run("run", "--recipe", recipe, env={"TINYSCHEDULER_ATTEMPT": "2"}).returncode == 0


def test_flood_prints_the_megabytes_asked_for(goose: Goose) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="flood", megabytes=2))
    assert done.returncode == 0 and 2 * 1024 * 1024 - 200 <= len(done.stdout) <= 2 * 1024 * 1024 + 200
    assert done.stdout.endswith("flood: end of output\n")


def test_hang_ends_on_sigint_like_goose(goose: Goose) -> None:
    process = goose.start("run", "--recipe", goose.recipe(mode="hang"))
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 1 and "Headless run interrupted" in stderr
    assert goose.records()[-1]["exit"] == 1


def test_hang_dies_on_sigterm_like_goose(goose: Goose) -> None:
    process = goose.start("run", "--recipe", goose.recipe(mode="hang"))
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGTERM


def _ignored_signals(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:")), 16)


def test_stubborn_ignores_sigint_and_sigterm(goose: Goose) -> None:
    process = goose.start("run", "--recipe", goose.recipe(mode="stubborn"))
    ignored = _ignored_signals(process.pid)
    assert ignored & (1 << (signal.SIGINT - 1)) and ignored & (1 << (signal.SIGTERM - 1))
    os.killpg(process.pid, signal.SIGINT)
    os.killpg(process.pid, signal.SIGTERM)
    assert process.poll() is None
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL


def test_task_tag_overrides_the_recipe(served_goose: Goose, fake: FakeTinyTask) -> None:
    hang = served_goose.recipe(mode="hang")
    quick = fake.create_task("t", assigned_to="a", tags=["other", "standin:succeed:0"])["id"]
    assert served_goose.run("run", "--recipe", hang, "--params", f"task_id={quick}").returncode == 0
    failing = fake.create_task("t", assigned_to="a", tags=["standin:fail"])["id"]
    ok = served_goose.recipe(mode="succeed")
    assert served_goose.run("run", "--recipe", ok, "--params", f"task_id={failing}").returncode == 1


def test_transfer_hands_the_task_to_another_agent(served_goose: Goose, fake: FakeTinyTask) -> None:
    task_id = fake.create_task("t", assigned_to="dev", status="working")["id"]
    done = served_goose.run(
        "run",
        "--recipe",
        served_goose.recipe(mode="transfer", to="qa"),
        "--params",
        f"task_id={task_id}",
        "--params",
        "agent=dev",
    )
    assert done.returncode == 0, done.stderr
    task = fake.task(task_id)
    assert (task["status"], task["assigned_to"]) == ("idle", "qa")
    assert [c["created_by"] for c in fake.comments(task_id)] == ["dev"]


def test_complete_task_completes_its_own_task(served_goose: Goose, fake: FakeTinyTask) -> None:
    task_id = fake.create_task("t", assigned_to="dev", status="working")["id"]
    done = served_goose.run(
        "run", "--recipe", served_goose.recipe(mode="succeed", complete_task=True), "--params", f"task_id={task_id}"
    )
    assert done.returncode == 0 and fake.task(task_id)["status"] == "complete"


def test_unreachable_tinytask_falls_back_to_the_recipe(goose: Goose) -> None:
    done = goose.run(
        "run",
        "--recipe",
        goose.recipe(mode="succeed"),
        "--params",
        "task_id=1",
        env={"TINYTASK_ENDPOINT": "http://127.0.0.1:9/mcp"},
    )
    assert done.returncode == 0 and "could not read the task's tags" in done.stderr


# -- output formats and token accounting -----------------------------------------------------------


def test_json_output_is_one_document_with_the_recipe_s_token_figures(goose: Goose) -> None:
    recipe = goose.recipe(mode="succeed", input_tokens=2000, output_tokens=345)
    done = goose.run("run", "--recipe", recipe, "--output-format", "json")
    document = json.loads(done.stdout)
    assert document["metadata"] == {
        "total_tokens": 2345,
        "input_tokens": 2000,
        "output_tokens": 345,
        "status": "completed",
    }
    assert [m["role"] for m in document["messages"]] == ["assistant", "assistant"]
    failed = json.loads(goose.run("run", "--recipe", goose.recipe(mode="fail"), "--output-format", "json").stdout)
    assert failed["metadata"]["status"] == "error" and failed["metadata"]["total_tokens"] == 1500  # defaults


def stream_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_stream_json_is_messages_then_complete_with_token_totals(goose: Goose) -> None:
    done = goose.run(
        "run", "--recipe", goose.recipe(mode="stream-json", output_tokens=7), "--output-format", "stream-json"
    )
    events = stream_events(done.stdout)
    assert done.returncode == 0 and {e["type"] for e in events[:-1]} == {"message", "notification"}
    assert events[-1] == {"type": "complete", "total_tokens": 1207, "input_tokens": 1200, "output_tokens": 7}


def test_stream_error_ends_with_an_error_event_and_exit_1(goose: Goose) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="stream-error", error="rate limited"))
    events = stream_events(done.stdout)
    assert done.returncode == 1 and events[-1] == {"type": "error", "error": "rate limited"}
    assert all(e["type"] != "complete" for e in events)


def test_no_complete_exits_0_without_a_complete_event(goose: Goose) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="no-complete"), "--output-format", "json")
    events = stream_events(done.stdout)  # stream-json whatever was asked
    assert done.returncode == 0 and events and {e["type"] for e in events} <= {"message", "notification"}


def test_silent_success_prints_nothing_at_all(goose: Goose) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="silent-success", seconds=30), "--params", "task_id=4")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert [r["event"] for r in goose.records()] == ["start", "end"]


def test_text_banner_names_the_model_unless_quiet(goose: Goose) -> None:
    recipe = goose.recipe(mode="succeed", model="model-under-test")
    assert "model: model-under-test" in goose.run("run", "--recipe", recipe).stdout.splitlines()[0]
    assert "model: flag-model" in goose.run("run", "--recipe", recipe, "--model", "flag-model").stdout
    assert "starting session" not in goose.run("run", "--recipe", recipe, "-q").stdout


@pytest.mark.parametrize(
    ("standin", "message"),
    [
        ({"seconds": -1}, "standin seconds: must not be negative"),
        ({"input_tokens": 1.5}, "standin input_tokens: unexpected value 1.5"),
        ({"linger": "long"}, "standin linger: unexpected value 'long'"),
        ({"colour": "blue"}, "unknown standin key 'colour'"),
    ],
)
def test_bad_standin_values_fail_with_one_clear_line(goose: Goose, standin: dict[str, Any], message: str) -> None:
    done = goose.run("run", "--recipe", goose.recipe(mode="succeed", **standin))
    assert done.returncode == 1 and message in done.stderr and len(done.stderr.splitlines()) == 1


def test_tag_argument_sets_the_mode_s_own_field(served_goose: Goose, fake: FakeTinyTask) -> None:
    recipe = served_goose.recipe(mode="succeed", flood_seconds=0.3)
    task_id = fake.create_task("t", assigned_to="a", tags=["standin:flood-rate:2"])["id"]
    done = served_goose.run("run", "--recipe", recipe, "--params", f"task_id={task_id}")
    assert done.returncode == 0 and len(done.stdout) <= 2 * 1024 * 1024 * 0.3 + 70_000  # 2 MB/s for 0.3 s
