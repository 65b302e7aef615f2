"""The HTTP listener of the real daemon: /metrics scraped and parsed by prometheus_client's own parser,
the status page opened in a real headless Chromium, and neither slowing a pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tinyscheduler.testing.fake import FakeTinyTask

from harness import DaemonProcess, Workspace, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECRET = "sk-live-0123456789abcdef"
PRICES = {"currency": "USD", "models": {"*": {"input": 3.0, "output": 15.0}}}


def start_listening(workspace: Workspace, daemons: list[DaemonProcess], **env: str) -> tuple[DaemonProcess, str]:
    """A daemon with its listener on a free port of 127.0.0.1; (the daemon, its base URL)."""
    (workspace.base / "prices.json").write_text(json.dumps(PRICES))
    daemon = DaemonProcess(
        workspace,
        "run",
        "--daemon",
        env=workspace.daemon_env(TINYSCHEDULER_HTTP_ADDR="127.0.0.1:0", TINYSCHEDULER_PRICES="prices.json", **env),
    ).start()
    daemons.append(daemon)

    def address() -> str | None:
        found = [e["addr"] for e in daemon.log_events() if e.get("event") == "http_listening"]
        return found[0] if found else None

    return daemon, f"http://{wait_for(address, what='the http_listening line')}"


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def sample(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float | None:
    return found.get((name, tuple(sorted(labels.items()))))


def seed(fake: FakeTinyTask, workspace: Workspace) -> dict[str, int]:
    """dev-a: two quick successes (tokens), qa-a: a run that goes on, ops-a: a failure quoting a secret."""
    workspace.write_registry([("dev-a", "dev", 2), ("qa-a", "qa", 1), ("ops-a", "ops", 1)])
    workspace.write_recipe("dev-a", {"mode": "succeed", "seconds": 0.1, "input_tokens": 1000, "output_tokens": 250})
    workspace.write_recipe("qa-a", {"mode": "hang"})
    workspace.write_recipe("ops-a", {"mode": "stream-error", "error": f"provider refused OPENAI_API_KEY={SECRET}"})
    return {
        "dev1": fake.create_task("build", queue_name="dev")["id"],
        "dev2": fake.create_task("test", queue_name="dev")["id"],
        "qa": fake.create_task("long check", queue_name="qa")["id"],
        "ops": fake.create_task("deploy", queue_name="ops")["id"],
        "blocked": fake.create_task("after the check", queue_name="dev", blocked_by_task_id=3)["id"],
    }


def test_metrics_are_served_and_parse_with_prometheus_clients_own_parser(fake, workspace, daemons):
    seed(fake, workspace)
    _, url = start_listening(workspace, daemons, TINYSCHEDULER_MAX_ATTEMPTS="1")

    def settled() -> Any:
        found = metrics(url)
        done = sample(found, "tinyscheduler_runs_finished_total", agent="dev-a", outcome="succeeded") == 2
        failed = sample(found, "tinyscheduler_runs_finished_total", agent="ops-a", outcome="failed") == 1
        busy = sample(found, "tinyscheduler_slots_busy", agent="qa-a") == 1
        return found if done and failed and busy else None

    found = wait_for(settled, what="two successes, a failure and a run in flight in the metrics")
    assert sample(found, "tinyscheduler_runs_started_total", agent="dev-a") == 2
    assert sample(found, "tinyscheduler_slots", agent="dev-a") == 2
    assert sample(found, "tinyscheduler_tokens_total", agent="dev-a", type="input") == 2000
    assert sample(found, "tinyscheduler_tokens_total", agent="dev-a", type="output") == 500
    assert sample(found, "tinyscheduler_cost_total", agent="dev-a", currency="USD") == pytest.approx(0.0135)
    assert sample(found, "tinyscheduler_run_duration_seconds_count", agent="dev-a") == 2
    assert sample(found, "tinyscheduler_tasks_waiting", queue="dev", reason="blocked") == 1
    assert (sample(found, "tinyscheduler_passes_total", result="ok") or 0) >= 1
    assert (sample(found, "tinyscheduler_pass_duration_seconds_count") or 0) >= 1
    assert abs((sample(found, "tinyscheduler_last_pass_timestamp_seconds") or 0) - time.time()) < 30
    assert sample(found, "tinyscheduler_goose_available") == 1
    assert (sample(found, "process_resident_memory_bytes") or 0) > 0
    info = [labels for (name, labels) in found if name == "tinyscheduler_info"]
    assert info and dict(info[0])["host"] == os.uname().nodename
    assert all(SECRET not in str(key) for key in found)

    # Read-only, and not for a page of another origin that reaches 127.0.0.1 through a name of its own.
    assert httpx.post(f"{url}/metrics", timeout=10).status_code == 405
    assert httpx.get(f"{url}/metrics", headers={"Host": "attacker.example:80"}, timeout=10).status_code == 421


class _Rows(HTMLParser):
    """The text of every table row, by the id of the section it is in."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self._section = ""
        self._row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        ids = dict(attrs).get("id")
        if ids:
            self._section = ids
        if tag == "tr":
            self._row = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None:
            self.rows.setdefault(self._section, []).append(" ".join(" ".join(self._row).split()))
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._row is not None:
            self._row.append(data)


def chromium(url: str, profile: Path, *mode: str) -> str:
    """The page as headless Chromium renders it (`--dump-dom`), or a screenshot (`--screenshot=...`)."""
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
        *(mode or ("--dump-dom",)),
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def recent_rows(url: str) -> list[str]:
    rows = _Rows()
    rows.feed(httpx.get(f"{url}/", timeout=10).text)
    return rows.rows.get("recent", [])


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (.ci/run installs Debian's package)")
def test_the_status_page_renders_in_headless_chromium_with_the_expected_rows(fake, workspace, daemons, tmp_path):
    ids = seed(fake, workspace)
    _, url = start_listening(workspace, daemons, TINYSCHEDULER_MAX_ATTEMPTS="1")
    wait_for(
        lambda: (
            sample(metrics(url), "tinyscheduler_runs_finished_total", agent="dev-a", outcome="succeeded") == 2
            and sample(metrics(url), "tinyscheduler_runs_finished_total", agent="ops-a", outcome="failed") == 1
        ),
        what="the quick runs to end",
    )
    wait_for(
        lambda: sum(" dev-a " in r or " ops-a " in r for r in recent_rows(url)) == 3,
        what="the three runs in the history (written at most once a second)",
    )

    page = chromium(f"{url}/", tmp_path / "profile-dom")
    rows = _Rows()
    rows.feed(page)
    agents = rows.rows["agents"]
    assert any(r.startswith("dev-a 0 2 ") for r in agents), agents
    assert any(r.startswith("qa-a 1 1 ") for r in agents), agents
    [in_flight] = [r for r in rows.rows["runs"] if r.startswith(str(ids["qa"]))]
    assert "qa-a" in in_flight and f"stand-in goose: task {ids['qa']} for agent qa-a, mode hang" in in_flight
    recent = rows.rows["recent"]
    dev = [r for r in recent if " dev-a " in r]
    assert len(dev) == 2 and all("succeeded" in r and "1,000 in / 250 out" in r and "0.00675 USD" in r for r in dev)
    [ops] = [r for r in recent if " ops-a " in r]
    assert "failed" in ops and "OPENAI_API_KEY=***" in ops
    assert SECRET not in page
    assert '<meta http-equiv="refresh"' in page and "<script" not in page

    shot = tmp_path / "status.png"
    chromium(f"{url}/", tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_scrapes_and_page_loads_do_not_slow_the_passes(fake, workspace, daemons):
    """Eight clients load the page and the metrics without pause while passes run every second, with
    runs in flight whose logs are large: every pass still ends within 0.25 s."""
    workspace.write_registry([("dev-a", "dev", 4)])
    workspace.write_recipe("dev-a", {"mode": "flood-rate", "rate": 2, "flood_seconds": 30})
    for n in range(4):
        fake.create_task(f"chatty {n}", queue_name="dev")
    _, url = start_listening(workspace, daemons, TINYSCHEDULER_RUN_LOG_MAX_BYTES=str(200 * 1024 * 1024))
    wait_for(lambda: sample(metrics(url), "tinyscheduler_slots_busy", agent="dev-a") == 4, what="4 runs in flight")
    before = metrics(url)
    loads = 0
    with httpx.Client(timeout=10) as client:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for path in ("/", "/metrics") * 4:
                assert client.get(f"{url}{path}").status_code == 200
                loads += 1
    after = metrics(url)
    passes = (after[("tinyscheduler_pass_duration_seconds_count", ())] or 0) - before[
        ("tinyscheduler_pass_duration_seconds_count", ())
    ]
    slow = passes - (
        after[("tinyscheduler_pass_duration_seconds_bucket", (("le", "0.25"),))]
        - before[("tinyscheduler_pass_duration_seconds_bucket", (("le", "0.25"),))]
    )
    print(f"measured: {loads} loads in 4 s, {passes:.0f} passes, {slow:.0f} over 0.25 s")
    assert passes >= 2 and slow == 0
