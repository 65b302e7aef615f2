"""What the daemon shows to monitoring, fed from a few well-delimited hooks of the service layer.

One `Observer` per daemon (`runtime.observer`). Its hooks, each one line where it is called:

- `run_event(event, fields)` (service.runner, every run lifecycle event): runs started; for `finished`,
  the cost from the price table, the metrics (outcome, duration, tokens, cost) and a history row;
- `pass_finished(report)` (service.passes, after every pass): pass metrics, tasks waiting, the
  node_exporter textfile;
- `tinytask_error(exc)` (the counting client of service.runtime's connection): errors by kind.

Everything else (slots, breakers, counters, the watchdog) is read at each scrape from the runtime.
History rows are written by `HistoryWriter.run`, a task of the daemon's task group, in a worker
thread: a run's end is never slowed by SQLite, and what is not written yet at exit is written then.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import structlog

from tinyscheduler.adapters.history import HistoryError, HistoryStore, RunRecord
from tinyscheduler.adapters.tinytask import (
    SCHEDULER_NAME,
    ServerFeatures,
    Task,
    TaskBatch,
    TaskNotFound,
    TinyTaskBadReply,
    TinyTaskClient,
    TinyTaskError,
    TinyTaskRejected,
    TinyTaskUnavailable,
)
from tinyscheduler.core.cost import run_cost
from tinyscheduler.core.goose import model_of
from tinyscheduler.core.outcomes import Usage
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.watchdog import WatchdogGate
from tinyscheduler.service.metrics import Live, Metrics

if TYPE_CHECKING:
    from tinyscheduler.service.runtime import Runtime
    from tinyscheduler.service.statusfile import PassReport

log = structlog.get_logger("tinyscheduler.daemon")

T = TypeVar("T")

#: How often the history is pruned to its retention, at most.
PRUNE_EVERY_SEC = 3600.0
#: The history is written at most this often: a run that ends within this time of the last write
#: waits for the next, with every other run that ends meanwhile, in one hand-off to a worker thread
#: and one SQLite transaction, not one each (with a hundred slots of short tasks, that was a few
#: tenths of a millisecond of the daemon's CPU per run). A run that ends after a quiet spell is
#: written at once; what is pending when the daemon stops is written then.
HISTORY_BATCH_SEC = 1.0


def error_kind(exc: BaseException) -> str:
    """The `kind` label of a TinyTask error."""
    if isinstance(exc, TaskNotFound):
        return "not_found"
    if isinstance(exc, TinyTaskRejected):
        return "rejected"
    if isinstance(exc, TinyTaskUnavailable):
        return "unavailable"
    if isinstance(exc, TinyTaskBadReply):
        return "bad_reply"
    return "other"


#: Runs kept in memory while the history cannot be written; beyond, the oldest are dropped.
MAX_PENDING_RUNS = 10_000


class HistoryWriter:
    """Appends run records to the history file in a worker thread, and prunes it to its retention."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._pending: list[RunRecord] = []
        self._store: HistoryStore | None = None
        self._wake = anyio.Event()
        self._pruned_at = -PRUNE_EVERY_SEC
        self._written_at = -HISTORY_BATCH_SEC
        self._failing: str | None = None

    def add(self, record: RunRecord) -> None:
        self._pending.append(record)
        self._wake.set()

    async def run(self) -> None:
        """Write what comes, a batch at most every HISTORY_BATCH_SEC (a task of the daemon's task group)."""
        while True:
            with anyio.move_on_after(PRUNE_EVERY_SEC):
                await self._wake.wait()
            if self._pending:
                await anyio.sleep(max(0.0, self._written_at + HISTORY_BATCH_SEC - time.monotonic()))
                self._written_at = time.monotonic()
            self._wake = anyio.Event()
            # Left in place until written: cancelled before its thread starts (the daemon stopping),
            # the batch is still there for close() to write.
            batch = list(self._pending)
            if await anyio.to_thread.run_sync(self._write, batch):
                del self._pending[: len(batch)]
            else:  # kept for the next try (a locked or full file may come back), the newest first
                self._pending = self._pending[-MAX_PENDING_RUNS:]

    def close(self) -> None:
        """Write what is left (at exit: the task above is cancelled by then), then close the file."""
        batch, self._pending = self._pending, []
        if batch:
            self._write(batch)
        if self._store is not None:
            self._store.close()

    def _write(self, batch: list[RunRecord]) -> bool:
        """Append `batch` (in a worker thread); False when the history could not be written."""
        s = self.runtime.config.settings
        try:
            if self._store is None or self._store.path != s.history_file:
                if self._store is not None:
                    self._store.close()
                self._store = HistoryStore(s.history_file)
            if batch:
                self._store.append(batch)
            if time.monotonic() - self._pruned_at >= PRUNE_EVERY_SEC:
                self._pruned_at = time.monotonic()
                self._store.prune(self.runtime.clock() - timedelta(days=s.history_keep_days))
        except HistoryError as exc:
            # Said once until it changes (a full disk says it on every run otherwise); the runs go on.
            if str(exc) != self._failing:
                log.error("history_write_failed", reason=str(exc), runs_waiting=len(batch))
            self._failing = str(exc)
            return False
        self._failing = None
        return True


class Observer:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.history = HistoryWriter(runtime)
        self.last_report: PassReport | None = None
        self.last_pass_at: datetime | None = None
        #: Why the last reload was refused (service.statusfile says it), until one succeeds.
        self.reload_error: str | None = None
        #: The watchdog's rule, when the daemon pings one (its health is a gauge).
        self.gate: WatchdogGate | None = None
        #: The address the HTTP listener is bound to (host:port), once it is.
        self.http_address: str | None = None
        # Last: registering the collector reads `live()` once, which reads the attributes above.
        self.metrics = Metrics(self.live)

    # --- hooks ------------------------------------------------------------------------------------

    def run_event(self, event: str, fields: dict[str, Any]) -> dict[str, Any]:
        """A run lifecycle event: counted; a `finished` one gets its cost and goes to the history.
        Returns the fields to record (with the cost)."""
        agent = str(fields.get("agent", ""))
        if event == "started":
            self.metrics.runs_started.labels(agent=agent).inc()
        elif event == "finished":
            fields = self._finished(agent, fields)
        return fields

    def pass_finished(self, report: PassReport) -> None:
        m = self.metrics
        m.passes.labels(result="ok" if report.ok else "failed").inc()
        m.pass_duration.observe(report.duration_sec)
        m.known_agents(set(self.runtime.config.limits))
        self.last_report = report
        self.last_pass_at = self.runtime.clock()
        textfile = self.runtime.config.settings.metrics_textfile
        if textfile is not None:
            try:
                m.write_textfile(textfile)
            except OSError as exc:
                log.error("metrics_textfile_failed", file=str(textfile), reason=exc.strerror or str(exc))

    def tinytask_error(self, exc: BaseException) -> None:
        self.metrics.tinytask_errors.labels(kind=error_kind(exc)).inc()

    def close(self) -> None:
        self.history.close()

    # --- what a scrape reads ------------------------------------------------------------------------

    def live(self) -> Live:
        rt = self.runtime
        busy: dict[str, int] = {}
        for run in rt.runs.values():
            if run.holds_slot:
                busy[run.agent] = busy.get(run.agent, 0) + 1
        agents = set(rt.config.limits) | set(rt.circuits.agents)
        report = self.last_report
        return Live(
            host=rt.host,
            instance=rt.instance_id,
            limits=rt.config.limits,
            busy=busy,
            unavailable=frozenset(rt.circuits.unavailable(agents, rt.clock())),
            goose_available=not rt.circuits.goose.failing,
            counters=rt.counters.snapshot(),
            waiting=report.waiting if report is not None else {},
            last_pass_at=self.last_pass_at.timestamp() if self.last_pass_at is not None else None,
            last_pass_ok=report.ok if report is not None else None,
            consecutive_failures=report.consecutive_failures if report is not None else 0,
            watchdog_healthy=self.gate.healthy(time.monotonic()) if self.gate is not None else None,
            cluster_fenced=bool(rt.claims.problems()) if rt.config.settings.clustered else None,
            pauses=tuple((p.scope.value, p.target, p.kind.value, p.since.timestamp()) for p in rt.pauses.items),
        )

    # --- a run's end ---------------------------------------------------------------------------------

    def _finished(self, agent: str, fields: dict[str, Any]) -> dict[str, Any]:
        rt = self.runtime
        prices = rt.config.prices
        model = fields.get("model") or model_of(rt.config.settings.goose_argv, rt.environ)
        usage = Usage(fields.get("input_tokens"), fields.get("output_tokens"), fields.get("total_tokens"), model)
        cost = run_cost(usage, prices) if prices.entries else None
        fields = {**fields, "model": model, "cost": cost}
        m = self.metrics
        outcome = str(fields.get("outcome", ""))
        duration = float(fields.get("duration") or 0.0)
        m.runs_finished.labels(agent=agent, outcome=outcome).inc()
        m.run_duration.labels(agent=agent).observe(duration)
        for kind in ("input", "output"):
            tokens = fields.get(f"{kind}_tokens")
            if tokens:
                m.tokens.labels(agent=agent, type=kind).inc(tokens)
        if cost is not None:
            m.cost.labels(agent=agent, currency=prices.currency).inc(cost)
        self.history.add(self._record(agent, fields, rt.clock(), duration))
        return fields

    def _record(self, agent: str, fields: dict[str, Any], ended: datetime, duration: float) -> RunRecord:
        rt = self.runtime
        return RunRecord(
            started_at=ended - timedelta(seconds=duration),
            ended_at=ended,
            host=rt.host,
            instance=rt.instance_id,
            agent=agent,
            task_id=int(fields["task_id"]),
            attempt=int(fields.get("attempt") or 0),
            outcome=str(fields.get("outcome", "")),
            reason=redacted("", str(fields.get("reason", ""))),
            report=str(fields.get("report", "")),
            how=str(fields.get("how", "")),
            exit_code=fields.get("exit_code"),
            duration_sec=duration,
            input_tokens=fields.get("input_tokens"),
            output_tokens=fields.get("output_tokens"),
            total_tokens=fields.get("total_tokens"),
            model=fields.get("model"),
            cost=fields.get("cost"),
            log_path=str(fields.get("log_path", "")),
        )


class CountingClient(TinyTaskClient):
    """The daemon's TinyTask client, counting each failed request by kind (the observer's metric)."""

    def __init__(self, client: TinyTaskClient, on_error: Callable[[BaseException], None]) -> None:
        self.inner = client
        self._on_error = on_error

    @property
    def features(self) -> ServerFeatures:  # type: ignore[override]
        return self.inner.features

    async def _counted(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except TinyTaskError as exc:
            self._on_error(exc)
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def health(self) -> dict[str, Any]:
        return await self._counted(self.inner.health())

    async def list_queues(self) -> list[str]:
        return await self._counted(self.inner.list_queues())

    async def list_tasks(
        self, *, status: Sequence[str] | None = None, assigned_to: str | None = None, queue_name: str | None = None
    ) -> TaskBatch:
        return await self._counted(self.inner.list_tasks(status=status, assigned_to=assigned_to, queue_name=queue_name))

    async def get_task(self, task_id: int) -> Task:
        return await self._counted(self.inner.get_task(task_id))

    async def update_task(self, task_id: int, **fields: Any) -> Task:
        return await self._counted(self.inner.update_task(task_id, **fields))

    async def add_comment(self, task_id: int, content: str, created_by: str = SCHEDULER_NAME) -> None:
        await self._counted(self.inner.add_comment(task_id, content, created_by))
