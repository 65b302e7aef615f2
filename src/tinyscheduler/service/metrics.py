"""The daemon's Prometheus metrics (the official client, a registry of its own per daemon).

Two kinds: instruments moved when something happens (runs started and finished, run and pass
durations, tokens, cost, TinyTask errors), and a collector that reads the daemon's state at each
scrape (slots, availability, tasks waiting, the last pass, the counters of runtime.counters), so a
gauge is never stale and needs no hook. Names follow Prometheus conventions: `tinyscheduler_`
prefix, base units (`_seconds`), `_total` for counters. Label values are agent names, outcomes,
queue names and reasons, never a task title, a path or a URL. docs/operations.md lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from tinyscheduler import __version__
from tinyscheduler.adapters.files import write_text_atomic

#: Seconds: a goose run takes minutes; the top buckets catch runs near the max runtime.
RUN_BUCKETS = (10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 7200, float("inf"))
#: Seconds: a pass takes tens of milliseconds; its timeout defaults to 120 s.
PASS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))
#: A textfile for node_exporter, which runs as another user: readable by all, and it holds no secret.
TEXTFILE_MODE = 0o644

#: runtime.counters exported as counters: (counter name, metric name, help, labels).
COUNTERS: tuple[tuple[str, str, str, dict[str, str]], ...] = (
    ("start_errors", "tinyscheduler_run_start_failures", "Runs that could not start (rolled back)", {}),
    ("leases_reclaimed", "tinyscheduler_leases_reclaimed", "Leases of runs that never started, requeued", {}),
    ("runs_adopted", "tinyscheduler_runs_taken_over", "Runs of an earlier instance taken over", {"how": "adopted"}),
    ("runs_settled", "tinyscheduler_runs_taken_over", "Runs of an earlier instance taken over", {"how": "settled"}),
    ("runs_crashed", "tinyscheduler_runs_crashed", "Runs whose supervision failed (a bug)", {}),
    ("goose_check_errors", "tinyscheduler_goose_check_failures", "Checks that found goose unable to run", {}),
    ("reload_errors", "tinyscheduler_reload_failures", "Reloads refused", {}),
    ("leases_quarantined", "tinyscheduler_leases_quarantined", "Unreadable lease files moved aside", {}),
    ("etcd_requests", "tinyscheduler_etcd_requests", "Requests sent to etcd (cluster mode)", {}),
    ("etcd_failures", "tinyscheduler_etcd_request_failures", "etcd requests that failed (cluster mode)", {}),
    ("cluster_requeued", "tinyscheduler_cluster_requeued_tasks", "Tasks of dead hosts this host requeued", {}),
)


@dataclass(frozen=True)
class Live:
    """The daemon's state at one scrape (built by the observer from the runtime)."""

    host: str
    instance: str
    limits: Mapping[str, int]
    busy: Mapping[str, int]
    unavailable: frozenset[str]
    goose_available: bool
    counters: Mapping[str, int]
    #: Tasks waiting at the last pass: queue -> reason -> count.
    waiting: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    last_pass_at: float | None = None
    last_pass_ok: bool | None = None
    consecutive_failures: int = 0
    #: Whether the watchdog is being fed (None: no watchdog).
    watchdog_healthy: bool | None = None
    #: Whether this host is fenced off its cluster, starting nothing (None: one host, no etcd).
    cluster_fenced: bool | None = None
    #: The operator's pauses: (scope, target, kind, since as Unix time); the host's target is "".
    pauses: tuple[tuple[str, str, str, float], ...] = ()


class _LiveCollector(Collector):
    def __init__(self, read: Callable[[], Live]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        live = self._read()
        info = InfoMetricFamily("tinyscheduler", "The daemon: version, host and instance")
        info.add_metric([], {"version": __version__, "host": live.host, "instance": live.instance})
        yield info
        yield from _slots(live)
        yield from _passes(live)
        yield from _pauses(live)
        yield from _counters(live.counters)


def _gauge(name: str, help_text: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, labels=labels)


def _slots(live: Live) -> Iterator[Metric]:
    limit = _gauge("tinyscheduler_slots", "Runs an agent may have at once", ["agent"])
    busy = _gauge("tinyscheduler_slots_busy", "Slots held by runs in flight", ["agent"])
    available = _gauge("tinyscheduler_agent_available", "1 unless the agent's breaker is open", ["agent"])
    for agent in sorted(set(live.limits) | set(live.busy)):
        limit.add_metric([agent], live.limits.get(agent, 0))
        busy.add_metric([agent], live.busy.get(agent, 0))
        available.add_metric([agent], 0 if agent in live.unavailable or not live.goose_available else 1)
    goose = _gauge("tinyscheduler_goose_available", "1 when goose can run (its last check passed)")
    goose.add_metric([], 1 if live.goose_available else 0)
    waiting = _gauge("tinyscheduler_tasks_waiting", "Idle tasks not started at the last pass", ["queue", "reason"])
    for queue, reasons in sorted(live.waiting.items()):
        for reason, count in sorted(reasons.items()):
            waiting.add_metric([queue, reason], count)
    yield from (limit, busy, available, goose, waiting)


def _passes(live: Live) -> Iterator[Metric]:
    if live.last_pass_at is not None:
        at = _gauge("tinyscheduler_last_pass_timestamp_seconds", "When the last pass ended (Unix time)")
        at.add_metric([], live.last_pass_at)
        ok = _gauge("tinyscheduler_last_pass_success", "1 when the last pass succeeded")
        ok.add_metric([], 1 if live.last_pass_ok else 0)
        yield from (at, ok)
    failures = _gauge("tinyscheduler_pass_consecutive_failures", "Passes failed in a row")
    failures.add_metric([], live.consecutive_failures)
    yield failures
    if live.watchdog_healthy is not None:
        watchdog = _gauge("tinyscheduler_watchdog_healthy", "1 while systemd's watchdog is fed")
        watchdog.add_metric([], 1 if live.watchdog_healthy else 0)
        yield watchdog
    if live.cluster_fenced is not None:
        fenced = _gauge(
            "tinyscheduler_cluster_fenced", "1 while this host cannot renew its etcd lease: it starts nothing"
        )
        fenced.add_metric([], 1 if live.cluster_fenced else 0)
        yield fenced


def _pauses(live: Live) -> Iterator[Metric]:
    # The reason is free text and stays out of the labels: status and the page say it.
    since = _gauge(
        "tinyscheduler_pause_since_timestamp_seconds",
        "When an operator paused an agent, a queue or the host, or began a drain (Unix time); absent when none",
        ["scope", "target", "kind"],
    )
    for scope, target, kind, at in live.pauses:
        since.add_metric([scope, target, kind], at)
    draining = _gauge("tinyscheduler_draining", "1 while the host drains (starts nothing, waits for its runs)")
    draining.add_metric([], 1 if any(kind == "drain" for _, _, kind, _ in live.pauses) else 0)
    yield from (since, draining)


def _counters(counts: Mapping[str, int]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for key, name, help_text, labels in COUNTERS:
        family = families.get(name)
        if family is None:
            family = families[name] = CounterMetricFamily(name, help_text, labels=list(labels))
        family.add_metric(list(labels.values()), counts.get(key, 0))
    yield from families.values()


class Metrics:
    """The registry and its instruments; `read` gives the live state at each scrape."""

    def __init__(self, read: Callable[[], Live]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs_started = Counter("tinyscheduler_runs_started", "Runs started", ["agent"], registry=r)
        self.runs_finished = Counter(
            "tinyscheduler_runs_finished", "Runs ended, by outcome", ["agent", "outcome"], registry=r
        )
        self.run_duration = Histogram(
            "tinyscheduler_run_duration_seconds", "How long runs took", ["agent"], buckets=RUN_BUCKETS, registry=r
        )
        self.tokens = Counter("tinyscheduler_tokens", "Tokens of ended runs", ["agent", "type"], registry=r)
        self.cost = Counter(
            "tinyscheduler_cost", "Cost of ended runs, in the price table's currency", ["agent", "currency"], registry=r
        )
        self.passes = Counter("tinyscheduler_passes", "Passes, by result", ["result"], registry=r)
        self.pass_duration = Histogram(
            "tinyscheduler_pass_duration_seconds", "How long passes took", buckets=PASS_BUCKETS, registry=r
        )
        self.tinytask_errors = Counter(
            "tinyscheduler_tinytask_errors", "TinyTask requests that failed, by kind", ["kind"], registry=r
        )
        for result in ("ok", "failed"):
            self.passes.labels(result=result)
        r.register(_LiveCollector(read))
        ProcessCollector(registry=r)

    def known_agents(self, agents: set[str]) -> None:
        """Series of every configured agent exist from the start (a rate over nothing is no rate)."""
        for agent in agents:
            self.runs_started.labels(agent=agent)

    def text(self) -> bytes:
        """The exposition text (Prometheus text format 0.0.4)."""
        return generate_latest(self.registry)

    def write_textfile(self, path: Path) -> None:
        write_text_atomic(path, self.text().decode("utf-8"), mode=TEXTFILE_MODE, durable=False)
