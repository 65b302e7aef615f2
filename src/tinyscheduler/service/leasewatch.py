"""The lease watcher: every heartbeat interval, at start-up, and within a second of a lease file being
removed or changed by hand, judge every lease no run of ours supervises (the planner's `judge_lease`)
and take over the runs that need this daemon: adopt the live, settle the ended, recover those whose
pid was never written. A lease removed by hand while its process lives is put back (without it
nobody would ever see the run end).
"""

from __future__ import annotations

import os

import anyio
import structlog

from tinyscheduler.adapters.leasestore import Quarantined
from tinyscheduler.adapters.procfs import probe
from tinyscheduler.core.leases import Lease, Liveness
from tinyscheduler.core.planner import LeaseVerdict, PlanConfig, Snapshot, judge_lease
from tinyscheduler.service.runner import Runner
from tinyscheduler.service.runtime import Runtime

log = structlog.get_logger("tinyscheduler.daemon")

#: How often the lease folder is checked for changes made by hand.
LEASE_DIR_POLL_SEC = 1.0


def note_quarantined(runtime: Runtime, records: tuple[Quarantined, ...]) -> None:
    for record in records:
        runtime.counters.add("leases_quarantined")
        log.error("lease_quarantined", file=str(record.original), moved_to=str(record.moved_to), reason=record.reason)


class LeaseWatcher:
    def __init__(self, runtime: Runtime, runner: Runner) -> None:
        self.runtime = runtime
        self.runner = runner
        #: The leases of the last check, by task id: what to restore if one disappears.
        self.known: dict[int, Lease] = {}
        #: Leases already said to be waited for (once each, not once per check).
        self._waiting: set[int] = set()
        self._changed = anyio.Event()

    async def loop(self) -> None:
        while True:
            with anyio.move_on_after(self.runtime.config.settings.heartbeat_sec):
                await self._changed.wait()
            self._changed = anyio.Event()
            try:
                await self.check()
            except Exception:
                log.exception("lease_check_crashed")

    async def watch_folder(self) -> None:
        """Notice leases removed or changed by hand within a second, without inotify."""
        rt = self.runtime
        last = None
        while True:
            current = await anyio.to_thread.run_sync(self._signature)
            names = {name for name, _ in current}
            lost_own = any(
                run.lease is not None and run.lease.pid is not None and rt.store.path(task_id).name not in names
                for task_id, run in rt.runs.items()
            )
            if lost_own or (last is not None and current != last):
                self._changed.set()
            last = current
            await anyio.sleep(LEASE_DIR_POLL_SEC)

    def _signature(self) -> frozenset[tuple[str, int]]:
        # Our own runs rewrite their leases every heartbeat: only names count for them.
        entries = set()
        runs = self.runtime.runs
        try:
            with os.scandir(self.runtime.store.running_dir) as scan:
                for entry in scan:
                    if entry.name.startswith("."):
                        continue
                    match = entry.name.removeprefix("task_").removesuffix(".json")
                    ours = match.isdigit() and int(match) in runs
                    try:
                        mtime = 0 if ours else entry.stat().st_mtime_ns
                    except OSError:
                        # A symlink loop, a dangling link, an entry gone meanwhile: the lease scan
                        # quarantines what is bad; here it must not end the daemon.
                        mtime = -1
                    entries.add((entry.name, mtime))
        except FileNotFoundError:
            pass
        return frozenset(entries)

    async def check(self) -> None:
        rt = self.runtime
        scan = await anyio.to_thread.run_sync(rt.store.scan)
        note_quarantined(rt, scan.quarantined)
        present = {lease.task_id: lease for lease in scan.leases}
        await self._restore_removed(present)
        self.known = present
        supervised = rt.busy
        snapshot = Snapshot(
            now=rt.clock(),
            host=rt.host,
            instance_id=rt.instance_id,
            leases=tuple(present.values()),
            # The leases of our own runs are judged "supervised" without a look at their process.
            liveness={t: probe(lease, rt.boot_id) for t, lease in present.items() if t not in supervised},
            supervised=supervised,
        )
        s = rt.config.settings
        config = PlanConfig(limits=rt.config.limits, heartbeat_sec=s.heartbeat_sec, max_runtime_sec=s.max_runtime_sec)
        waiting = set()
        for lease in present.values():
            decision = judge_lease(lease, snapshot, config)
            if decision.verdict is LeaseVerdict.WAIT:
                waiting.add(lease.task_id)
                if lease.task_id not in self._waiting:
                    log.warning("lease_waiting", task_id=lease.task_id, agent=lease.agent, reason=decision.reason)
            self.runner.take_over(decision, lease)
        self._waiting = waiting

    async def _restore_removed(self, present: dict[int, Lease]) -> None:
        rt = self.runtime
        # What we knew of each lease: the last scan, and for our own runs what they last wrote.
        remembered = dict(self.known)
        remembered.update({task_id: run.lease for task_id, run in rt.runs.items() if run.lease is not None})
        for task_id, lease in remembered.items():
            if task_id in present or task_id in rt.reclaiming or lease.host != rt.host:
                continue
            if probe(lease, rt.boot_id) is Liveness.ALIVE:
                # Removed (or mangled and quarantined) by hand while its process runs.
                await anyio.to_thread.run_sync(rt.store.write, lease)
                present[task_id] = lease
                rt.counters.add("leases_restored")
                log.warning(
                    "lease_restored",
                    task_id=task_id,
                    agent=lease.agent,
                    pid=lease.pid,
                    reason="lease file removed or damaged by hand while its process is alive",
                )
