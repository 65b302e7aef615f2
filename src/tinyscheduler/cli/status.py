"""`tinyscheduler status [--json]`: what the scheduler on this host is doing, from its files alone.

Reads the lock file, the lease folder, `last_pass.json`, the attempt history and the quarantine
folder; it never writes, moves or signals anything and never calls TinyTask, so it works with the
daemon stopped, with TinyTask down, and as any user who can read the state folder. Lease verdicts
come from the planner's own `judge_lease`, so "stale" here means what it means to the daemon.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import sys
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from tinyscheduler.adapters.attempt_journal import read_records
from tinyscheduler.adapters.leasestore import LeaseScan, LeaseStore
from tinyscheduler.adapters.lock import is_locked, read_holder
from tinyscheduler.adapters.pausestore import PauseStore, PausesUnreadable
from tinyscheduler.adapters.procfs import current_boot_id, probe
from tinyscheduler.adapters.reading import read_bytes
from tinyscheduler.config.registry import RegistryError, effective_limits, load_registry
from tinyscheduler.config.settings import LoadedSettings, Settings
from tinyscheduler.core.control import Pauses
from tinyscheduler.core.leases import Lease, LeaseState
from tinyscheduler.core.planner import LeaseDecision, LeaseVerdict, PlanConfig, Snapshot, judge_lease
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.tasks import FAILED_TAG
from tinyscheduler.core.text import escaped, format_age, iso

# What InstanceLock.acquire writes: `pid N since ISO[ instance ID][ config PATH]`.
_HOLDER = re.compile(
    r"pid (?P<pid>\d+) since (?P<since>\S+)(?: instance (?P<instance>\S+))?(?: config (?P<config>.+))?"
)
#: A daemon that has not finished a pass for this many loop intervals is reported as stuck.
STUCK_INTERVALS = 3


def utcnow() -> datetime:
    return datetime.now(UTC)


def table(headers: list[str], rows: list[list[Any]], indent: str = "  ") -> list[str]:
    """Left-aligned columns, as plain text lines; a cell cannot hold a control character (a newline
    would forge a row, an ESC would drive the terminal): it is shown escaped, and measured so."""
    cells = [headers, *[[escaped(str(c)) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]


@dataclass(frozen=True)
class DaemonInfo:
    running: bool
    lock_file: str
    #: What the lock file says; for a stopped daemon, its last holder.
    holder: str | None
    pid: int | None = None
    since: str | None = None
    instance: str | None = None
    config: str | None = None


def daemon_info(lock_file: Path) -> DaemonInfo:
    try:
        running = is_locked(lock_file)
    except OSError:
        running = False  # unreadable lock file: say what it claims, if anything, below
    holder = read_holder(lock_file) if lock_file.exists() else None
    match = _HOLDER.fullmatch(holder or "")
    if match is None:
        return DaemonInfo(running, str(lock_file), holder)
    config = match["config"]
    return DaemonInfo(
        running,
        str(lock_file),
        holder,
        int(match["pid"]),
        match["since"],
        match["instance"],
        None if config in (None, "-") else config,
    )


@dataclass(frozen=True)
class LeaseRow:
    task_id: int
    agent: str
    pid: int | None
    state: str
    host: str
    attempt: int
    started_at: str
    runtime_sec: float
    heartbeat_age_sec: float
    log_path: str | None
    owner: str | None
    verdict: str
    reason: str


@dataclass
class Status:
    now: str
    host: str
    daemon: DaemonInfo
    agents: list[dict[str, Any]] = field(default_factory=list)
    leases: list[LeaseRow] = field(default_factory=list)
    last_pass: dict[str, Any] | None = None
    last_pass_age_sec: float | None = None
    backing_off: list[dict[str, Any]] = field(default_factory=list)
    gave_up: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    #: The operator's pauses (state/pauses.json), each with the sentence that says it.
    pauses: list[dict[str, Any]] = field(default_factory=list)
    #: The host's drain, with the runs it waits for (this host's leases), or None.
    draining: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    #: How much disk the state uses (adapters.retention.Usage), None when it cannot be read.
    state_usage: dict[str, int] | None = None
    #: Other `tinyscheduler run` processes of this host, looked for when this command found no
    #: configuration and no daemon: pid, argv, folder.
    elsewhere: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(settings: Settings, *, now: datetime | None = None, registry_required: bool = False) -> Status:
    """Everything `status` shows; reads files only. `registry_required`: the registry is named
    explicitly, so its absence is a problem rather than legacy mode."""
    now = now or utcnow()
    host = socket.gethostname()
    daemon = daemon_info(settings.lock_file)
    status = Status(
        now=iso(now),
        host=host,
        daemon=daemon,
        paths={
            "base_path": str(settings.base_path),
            "running_dir": str(settings.running_dir),
            "last_pass_file": str(settings.last_pass_file),
            "attempts_file": str(settings.attempts_file),
            "task_log_dir": str(settings.task_log_dir),
            "quarantine_dir": str(settings.quarantine_dir),
        },
    )
    if not settings.base_path.is_dir():
        status.problems.append(
            f"base path {settings.base_path} is not an existing folder: is --base-path or "
            "TINYSCHEDULER_BASE_PATH the one the daemon uses?"
        )
    _read_last_pass(settings, status, now)
    _judge_first_pass(settings, status, now)
    store = LeaseStore(settings.running_dir, settings.quarantine_dir, read_only=True)
    try:
        scan = store.scan()
        quarantined = store.quarantined_files()
    except OSError as exc:
        # Typically the state folder is private to the scheduler's user (0700).
        status.problems.append(
            f"cannot read {exc.filename or settings.running_dir}: {exc.strerror}; run status as the scheduler's user"
        )
        scan, quarantined = LeaseScan((), ()), []
    _judge_leases(settings, status, scan.leases, now)
    for bad in scan.quarantined:
        status.quarantined.append({"file": str(bad.original), "reason": bad.reason, "moved": False})
        status.problems.append(f"bad lease file {bad.original}: {bad.reason} (the daemon moves it to quarantine)")
    for path in quarantined:
        reason = _quarantine_reason(path)
        status.quarantined.append({"file": str(path), "reason": reason, "moved": True})
        status.problems.append(f"quarantined lease file {path}: {reason}")
    _agents(settings, status, registry_required=registry_required)
    _read_attempts(settings, status, now)
    _read_pauses(settings, status, now)
    _measure(settings, status)
    return status


def _measure(settings: Settings, status: Status) -> None:
    from tinyscheduler.adapters.retention import places_of, usage

    try:
        status.state_usage = usage(places_of(settings), (settings.state_dir, settings.log_dir)).to_json()
    except OSError:
        status.state_usage = None  # unreadable folders are already a problem above


def look_elsewhere(status: Status) -> None:
    """No configuration found and no daemon for this base path: name the schedulers that do run on
    this host, as a problem (`status` from the wrong folder must not look like an idle host)."""
    from tinyscheduler.adapters.lock import running_schedulers

    for found in running_schedulers():
        folder = f" in {found.cwd}" if found.cwd else ""
        status.elsewhere.append({"pid": found.pid, "argv": list(found.argv), "cwd": found.cwd})
        status.problems.append(
            f"no daemon for base path {status.paths.get('base_path')}, but pid {found.pid} runs "
            f"`{' '.join(found.argv)}`{folder}: run status with its --env-file, or from its folder"
        )


def _read_last_pass(settings: Settings, status: Status, now: datetime) -> None:
    path = settings.last_pass_file
    try:
        data = json.loads(read_bytes(path))
    except FileNotFoundError:
        return
    except (OSError, ValueError, RecursionError) as exc:
        status.problems.append(f"{path}: unreadable ({exc})")
        return
    if not isinstance(data, dict):
        status.problems.append(f"{path}: expected a JSON object")
        return
    status.last_pass = data
    started = _moment(data.get("started_at"))
    if started is not None:
        status.last_pass_age_sec = round((now - started).total_seconds(), 1)
    if data.get("ok") is False:
        failures = data.get("consecutive_failures", 1)
        status.problems.append(f"last pass failed ({failures} in a row): {data.get('error')}")
    if data.get("reload_error"):
        status.problems.append(
            f"configuration reload rejected, the daemon keeps the previous one: {data['reload_error']}"
        )
    _breakers_and_bad_tasks(data, status)
    stuck_after = STUCK_INTERVALS * settings.loop_interval_sec + float(data.get("duration_sec") or 0)
    if (
        status.daemon.running
        and status.last_pass_age_sec is not None
        and status.last_pass_age_sec > stuck_after
        and data.get("pid") == status.daemon.pid
    ):
        status.problems.append(
            f"no pass finished for {format_age(status.last_pass_age_sec)} "
            f"(loop interval {settings.loop_interval_sec}s): the daemon may be stuck"
        )


def _judge_first_pass(settings: Settings, status: Status, now: datetime) -> None:
    """A running daemon with no pass of its own on record (`last_pass.json` missing, or a previous
    daemon's) is stuck once its first pass has had the pass timeout and then some."""
    daemon = status.daemon
    since = _moment(daemon.since)
    if not daemon.running or since is None or (status.last_pass or {}).get("pid") == daemon.pid:
        return
    age = (now - since).total_seconds()
    if age > STUCK_INTERVALS * settings.loop_interval_sec + settings.pass_timeout_sec:
        status.problems.append(
            f"no pass finished since the daemon started {format_age(age)} ago "
            f"(pass timeout {settings.pass_timeout_sec}s): the daemon may be stuck"
        )


def _moment(text: object) -> datetime | None:
    """An ISO timestamp from a state file as an aware datetime (UTC when it names no zone); None
    when it is missing or not one."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _breakers_and_bad_tasks(data: dict[str, Any], status: Status) -> None:
    """The running daemon's open breakers (goose missing, agents that could not start runs), and the
    tasks TinyTask sent that it had to skip."""
    if status.daemon.running and data.get("pid") == status.daemon.pid:
        unavailable = data.get("unavailable")
        if isinstance(unavailable, list):
            status.problems += [str(line) for line in unavailable]
    malformed = data.get("malformed")
    if isinstance(malformed, int) and malformed > 0:
        status.problems.append(
            f"{malformed} task(s) from TinyTask could not be used and were skipped in the last pass "
            "(each named once in the log as task_malformed)"
        )


def _judge_leases(settings: Settings, status: Status, leases: tuple[Lease, ...], now: datetime) -> None:
    boot_id = current_boot_id()
    # Leases owned by the running daemon are its own; with no daemon every live one is an orphan.
    instance = status.daemon.instance if status.daemon.running else None
    snapshot = Snapshot(
        now=now,
        host=status.host,
        instance_id=instance or "",
        leases=leases,
        liveness={lease.task_id: probe(lease, boot_id) for lease in leases},
    )
    config = PlanConfig(limits={}, heartbeat_sec=settings.heartbeat_sec, max_runtime_sec=settings.max_runtime_sec)
    for lease in sorted(leases, key=lambda lease: (lease.agent, lease.task_id)):
        decision = judge_lease(lease, snapshot, config)
        if instance and lease.owner == instance and decision.verdict in (LeaseVerdict.SETTLE, LeaseVerdict.RECOVER):
            # A lease of the running daemon without a live process is one its run is still
            # working on (the daemon judges only leases no run of its own supervises).
            if lease.state is LeaseState.FINISHING:
                decision = LeaseDecision(
                    lease.task_id,
                    lease.agent,
                    LeaseVerdict.KEEP,
                    "the process has ended; the daemon is reporting its outcome",
                )
            elif lease.state is LeaseState.STARTING:
                decision = LeaseDecision(
                    lease.task_id, lease.agent, LeaseVerdict.KEEP, "the daemon is starting the run"
                )
        status.leases.append(
            LeaseRow(
                task_id=lease.task_id,
                agent=lease.agent,
                pid=lease.pid,
                state=lease.state.value,
                host=lease.host,
                attempt=lease.attempt,
                started_at=iso(lease.started_at),
                runtime_sec=round((now - lease.started_at).total_seconds(), 1),
                heartbeat_age_sec=round((now - lease.heartbeat).total_seconds(), 1),
                log_path=lease.log_path,
                owner=lease.owner,
                verdict=decision.verdict.value,
                reason=decision.reason,
            )
        )
        problem = _unsupervised(decision, running=instance is not None)
        if problem:
            status.problems.append(
                f"unsupervised run: task {lease.task_id} ({lease.agent}): {decision.reason}; {problem}"
            )


def _unsupervised(decision: LeaseDecision, *, running: bool) -> str | None:
    """What becomes of a run no daemon supervises, said as a problem; None when all is well."""
    later = "the daemon" if running else "a daemon, once one starts,"
    if decision.verdict is LeaseVerdict.ADOPT:
        return f"{later} adopts it and supervises it to its end"
    if decision.verdict is LeaseVerdict.SETTLE:
        return f"{later} reports its outcome from its output"
    if decision.verdict is LeaseVerdict.RECOVER:
        return f"{later} looks for its process, adopts it, or requeues the task"
    return None


def _quarantine_reason(path: Path) -> str:
    try:
        return read_bytes(path.with_name(f"{path.name}.reason"), 4096).decode("utf-8", "replace").strip()
    except OSError:
        return "reason not recorded"


def _agents(settings: Settings, status: Status, *, registry_required: bool) -> None:
    last = status.last_pass or {}
    limits: dict[str, int]
    if status.daemon.running and last.get("pid") == status.daemon.pid and isinstance(last.get("limits"), dict):
        limits = {str(k): int(v) for k, v in last["limits"].items()}  # what the daemon actually runs with
    else:
        try:
            registry = load_registry(settings.agent_control_file, settings.recipes_dir, required=registry_required)
            limits = effective_limits(registry, settings)
        except RegistryError as exc:
            status.problems.extend(exc.problems)
            limits = dict(settings.agent_limits)
    busy: dict[str, int] = {}
    for row in status.leases:
        # As the planner counts: a finishing run's process has ended, only its report is left.
        if row.host == status.host and row.state != LeaseState.FINISHING.value:
            busy[row.agent] = busy.get(row.agent, 0) + 1
    for agent in sorted(set(limits) | set(busy)):
        status.agents.append({"agent": agent, "busy": busy.get(agent, 0), "limit": limits.get(agent, 0)})


def _read_attempts(settings: Settings, status: Status, now: datetime) -> None:
    # Read, never set aside or compacted (AttemptBook would): status changes nothing.
    try:
        records = list(read_records(settings.attempts_file).values())
    except (OSError, ValueError) as exc:
        status.problems.append(f"unreadable attempt history ({exc})")
        return
    for record in sorted(records, key=lambda r: r.task_id):
        entry = {
            "task_id": record.task_id,
            "failures": record.failures,
            "last_outcome": record.last_outcome,
            "not_before": iso(record.not_before) if record.not_before else None,
        }
        if record.gave_up:
            status.gave_up.append(entry)
            status.problems.append(
                f"task {record.task_id} gave up after {record.failures} failed attempt(s) "
                f"(last: {record.last_outcome}); it is tagged {FAILED_TAG}: "
                "remove the tag to try again"
            )
        elif record.not_before is not None and record.not_before > now:
            status.backing_off.append(entry)


def _read_pauses(settings: Settings, status: Status, now: datetime) -> None:
    try:
        pauses = PauseStore(settings.pauses_file).load()
    except PausesUnreadable as exc:
        if exc.errno == errno.EACCES:  # the daemon reads it; this user cannot
            status.problems.append(f"cannot read {exc}; run status as the scheduler's user")
            return
        status.problems.append(f"{exc}: the host starts nothing until it is fixed or `resume --host` replaces it")
        pauses = Pauses.unreadable(str(exc.path), exc.why, now)
    status.pauses = [pause.to_json() | {"text": pause.text} for pause in pauses.items]
    drain = pauses.draining
    if drain is not None:
        left = sum(1 for row in status.leases if row.host == status.host)
        status.draining = drain.to_json() | {"text": drain.text, "runs_left": left}


# --- rendering -------------------------------------------------------------------------------------


def render(status: Status) -> str:
    lines = [f"TinyScheduler status on {status.host} at {status.now}", ""]
    d = status.daemon
    if d.running:
        since = f" since {d.since}" if d.since else ""
        lines.append(
            f"Daemon:    running, pid {d.pid}{since}, instance {d.instance or '?'}, env file {d.config or '(none)'}"
        )
    else:
        last = f" (last holder: {d.holder})" if d.holder and d.holder != "holder unknown" else ""
        lines.append(f"Daemon:    not running{last}")
    lines.append(f"Lock file: {d.lock_file}")
    lines.append(f"Last pass: {_describe_pass(status)}")
    cluster = (status.last_pass or {}).get("cluster")
    if isinstance(cluster, dict):
        lines.append(f"Cluster:   {_describe_cluster(cluster)}")
    if status.state_usage is not None:
        lines.append(f"Disk:      {_describe_usage(status.state_usage)}")
    if status.draining is not None:
        left = status.draining["runs_left"]
        lines.append(f"Draining:  {left} run{'' if left == 1 else 's'} left ({status.draining['text']})")
    if status.pauses:
        lines += ["", f"Paused ({len(status.pauses)}): nothing new starts for these"]
        lines += [f"  - {pause['text']}" for pause in status.pauses]

    lines += ["", "Agents (busy/limit slots)"]
    if status.agents:
        lines += table(["agent", "slots"], [[a["agent"], f"{a['busy']}/{a['limit']}"] for a in status.agents])
    else:
        lines.append("  (none: no agent-control file and no TINYSCHEDULER_AGENT_LIMITS)")

    lines += ["", f"Running ({len(status.leases)})"]
    if status.leases:
        lines += table(
            ["task", "agent", "pid", "state", "runtime", "heartbeat", "attempt", "log"],
            [
                [
                    r.task_id,
                    r.agent,
                    r.pid or "-",
                    r.state if r.verdict == "keep" else f"{r.state} ({r.verdict})",
                    format_age(r.runtime_sec),
                    f"{format_age(r.heartbeat_age_sec)} ago",
                    r.attempt,
                    r.log_path or "-",
                ]
                for r in status.leases
            ],
        )
    else:
        lines.append("  (nothing)")
    if status.backing_off:
        lines += ["", f"Waiting to retry ({len(status.backing_off)})"]
        lines += table(
            ["task", "failures", "last outcome", "next attempt after"],
            [[b["task_id"], b["failures"], b["last_outcome"], b["not_before"]] for b in status.backing_off],
        )

    lines += ["", f"Problems ({len(status.problems)})" if status.problems else "No problems found."]
    lines += [f"  - {p}" for p in status.problems]
    return printable(lines)


def printable(lines: list[str]) -> str:
    """Lines made of text from files and servers, as one safe block: secrets masked, controls escaped."""
    return "".join(escaped(redacted("", line)) + "\n" for line in lines)


def _describe_usage(u: dict[str, int]) -> str:
    temp = f", {u['temp_files']} leftover temporary file(s)" if u["temp_files"] else ""
    return (
        f"{format_bytes(u['total_bytes'])} in the state and log folders; run logs "
        f"{format_bytes(u['run_log_bytes'])} in {u['run_logs']} file(s) of {u['task_folders']} task(s), "
        f"{u['quarantined']} quarantined{temp}"
    )


def format_bytes(count: int) -> str:
    """1536 -> 1.5 KiB."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _describe_pass(status: Status) -> str:
    p = status.last_pass
    if p is None:
        return "none recorded yet"
    age = f" ({format_age(status.last_pass_age_sec)} ago)" if status.last_pass_age_sec is not None else ""
    result = "ok" if p.get("ok") else f"FAILED: {p.get('error')}"
    counts = (
        f"{p.get('busy', 0)} busy of {p.get('slots', 0)} slots, {p.get('queued', 0)} queued "
        f"({p.get('blocked', 0)} blocked), {p.get('assigned', 0)} assigned, {p.get('started', 0)} started, "
        f"{p.get('reclaimed', 0)} reclaimed, {p.get('malformed', 0)} malformed"
    )
    return f"{p.get('started_at')}{age}, took {p.get('duration_sec', 0)}s, {result}; {counts}"


def _describe_cluster(c: dict[str, Any]) -> str:
    """This host in its cluster, as its daemon last wrote it (service.cluster.summary)."""
    lease = f"lease {c.get('lease')}" if c.get("lease") else "no lease"
    renewed = c.get("renewed_sec_ago")
    ago = f", renewed {format_age(float(renewed))} ago" if isinstance(renewed, (int, float)) else ""
    return (
        f"host {c.get('host')} in {c.get('cluster')}, {lease}, {c.get('phase')}{ago}; "
        f"{c.get('claims_held', 0)} claims held, {c.get('etcd_requests', 0)} etcd requests "
        f"({c.get('etcd_failures', 0)} failed); `status --cluster` shows every host"
    )


#: Exit codes of `status`, as systemctl's: healthy, problems listed, no daemon running.
EXIT_HEALTHY = 0
EXIT_PROBLEMS = 1
EXIT_NOT_RUNNING = 3


def status_command(loaded: LoadedSettings, *, json_output: bool, out: TextIO | None = None) -> int:
    """Entry point of `tinyscheduler status`: 0 a daemon runs and nothing is wrong, 1 a problem is
    listed, 3 no daemon runs for this base path (and no problem is listed)."""
    out = out or sys.stdout
    required = loaded.sources.get("agent_control_file", "default") != "default"
    status = collect(loaded.settings, registry_required=required)
    if not status.daemon.running and not loaded.configured:
        look_elsewhere(status)
    if json_output:
        out.write(json.dumps(redacted("", status.to_json()), indent=2, default=str) + "\n")
    else:
        out.write(render(status))
    return exit_code(status)


def exit_code(status: Status) -> int:
    if status.problems:
        return EXIT_PROBLEMS
    return EXIT_HEALTHY if status.daemon.running else EXIT_NOT_RUNNING
