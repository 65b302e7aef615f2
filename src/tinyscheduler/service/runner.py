"""The runs in flight of this daemon: starting one supervisor per run, and what they hold."""

from __future__ import annotations

from typing import Any

import anyio.abc
import structlog

from tinyscheduler.adapters.tinytask import Task
from tinyscheduler.core.goose import output_format_of
from tinyscheduler.core.outcomes import EvidenceRule, OutputFormat
from tinyscheduler.service.run import Run, RunPolicy, RunRequest
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")


def evidence_rule(goose_args: list[str], output_format: str, text_success: str) -> EvidenceRule:
    """What proves a run's success, for the output format its command line will ask goose for."""
    chosen, _ = output_format_of(goose_args, output_format)
    try:
        fmt = OutputFormat(chosen)
    except ValueError:  # a format goose does not know: goose refuses it; judge like text meanwhile
        fmt = OutputFormat.TEXT
    return EvidenceRule(fmt, text_needs_output=text_success == "output")


class Runner:
    """Starts runs in the daemon's task group and forgets them when they end."""

    def __init__(self, runtime: Runtime, group: anyio.abc.TaskGroup) -> None:
        self.runtime = runtime
        self.group = group

    def policy(self) -> RunPolicy:
        s = self.runtime.config.settings
        return RunPolicy(
            goose_bin=s.goose_bin,
            goose_args=tuple(s.goose_argv),
            base_path=s.base_path,
            recipes_dir=s.recipes_dir,
            task_log_dir=s.task_log_dir,
            tinytask_url=s.tinytask_url,
            heartbeat_sec=s.heartbeat_sec,
            max_runtime_sec=s.max_runtime_sec,
            stop_grace_sec=s.stop_grace_sec,
            idle_timeout_sec=s.idle_timeout_sec,
            run_log_max_bytes=s.run_log_max_bytes,
            host=self.runtime.host,
            instance_id=self.runtime.instance_id,
            boot_id=self.runtime.boot_id,
            blocking=not s.disable_blocking,
            evidence=evidence_rule(s.goose_argv, s.goose_output_format, s.text_success),
        )

    async def start(self, request: RunRequest, fresh_task: Task | None) -> None:
        rt = self.runtime
        run = Run(
            request,
            self.policy(),
            client=await rt.connection.client(),
            leases=rt.store,
            attempts=rt.attempts,
            clock=rt.clock,
            environ=rt.environ,
            on_event=self._record_event,
            fresh_task=fresh_task,
            on_exit=rt.tick.set,
        )
        rt.runs[request.task_id] = run
        self.group.start_soon(self._supervise, run)

    def in_flight(self) -> dict[int, str]:
        """Runs whose process has not ended (or not started yet), by task id -> agent: they hold slots."""
        return {task_id: run.agent for task_id, run in self.runtime.runs.items() if run.holds_slot}

    def stop_all(self, reason: str) -> None:
        for run in list(self.runtime.runs.values()):
            run.request_stop(reason)

    async def _supervise(self, run: Run) -> None:
        counters = self.runtime.counters
        try:
            result = await run.execute()
            counters.add(f"runs_{result.outcome}")
            if result.spawn_failed:
                counters.add("spawn_errors")
        except Exception:  # a bug in one run must not take the others down
            log.exception("run_crashed", task_id=run.task_id, agent=run.agent)
            counters.add("runs_crashed")
        finally:
            self.runtime.runs.pop(run.task_id, None)
            self.runtime.tick.set()

    def _record_event(self, event: str, fields: dict[str, Any]) -> None:
        self.runtime.events.record(event, **fields)
