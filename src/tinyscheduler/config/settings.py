"""Every TINYSCHEDULER_* setting, where each value came from, and one clear line per bad value.

Precedence: CLI flag > process environment > env file > default. `load_settings` is the only
place that reads the environment and the env file: it merges the sources itself so that it can
report the source of every value (`config --show`) and name the variable, flag or file line of a
bad one. `Settings(...)` on its own therefore holds defaults plus the keyword arguments given,
which keeps tests independent of the developer's environment.

Every relative path resolves against `base_path`, so `--base-path` moves them all. `load_settings`
has no side effects (it creates nothing), so the daemon can call it again on SIGHUP.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shlex
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from tinyscheduler.adapters.reading import read_bytes, reason
from tinyscheduler.core.redact import redacted
from tinyscheduler.core.tasks import NAME_PATTERN

ENV_PREFIX = "TINYSCHEDULER_"
DEFAULT_ENV_FILE = Path(".env")
#: Names the env file when --env-file does not (a missing file is then an error, as with the flag).
ENV_FILE_VAR = "TINYSCHEDULER_ENV_FILE"
#: Where an installed host keeps its settings (docs/operations.md): the last place looked at.
SYSTEM_ENV_FILE = Path("/etc/tinyscheduler/tinyscheduler.env")

Source = Literal["default", "env-file", "env", "cli"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LogFormat = Literal["auto", "console", "json", "journal"]
Protocol = Literal["rest", "mcp", "auto"]
OutputFormatName = Literal["stream-json", "json", "text"]
TextSuccess = Literal["output", "exit"]

#: The most slots one agent may have: far beyond one host, far below what could exhaust it by mistake.
MAX_SLOTS = 1000
DAY_SEC = 86400
WEEK_SEC = 7 * DAY_SEC


class ConfigError(Exception):
    """Configuration that cannot be used; `.problems` holds one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class _Spec:
    """How one setting is given and checked: what the CLI, `config --show` and the errors need."""

    kind: Literal[
        "path", "optional_path", "text", "address", "int", "float", "bool", "choice", "limits", "urls", "name", "plain"
    ]
    flag: str
    metavar: str
    expect: str
    description: str
    low: float | None = None
    high: float | None = None
    #: The lower bound is exclusive (a number above `low`).
    above: bool = False
    choices: tuple[str, ...] = ()
    #: How a choice is written before it is compared: "upper" or "lower" (spaces around go).
    case: str = "lower"


def _setting(
    default: Any = dataclasses.MISSING,
    *,
    kind: Any,
    flag: str,
    metavar: str,
    expect: str,
    description: str,
    default_factory: Any = dataclasses.MISSING,
    **checks: Any,
) -> Any:
    # One place per setting for everything the CLI, `config --show` and error messages need.
    spec = _Spec(kind, flag, metavar, expect, description, **checks)
    return field(default=default, default_factory=default_factory, metadata={"spec": spec})


def _whole(low: int, high: int, unit: str = "") -> dict[str, Any]:
    """A whole number within [low, high]: the bounds and the words that name them in errors."""
    return {"kind": "int", "low": low, "high": high, "expect": f"expected a whole number{unit} from {low} to {high}"}


_BOOL = "expected true or false"
_PATH = "expected a path"
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
#: A whole number as the settings take it: digits (with `_` between them), perhaps a zero fraction.
_WHOLE = re.compile(r"[+-]?[0-9](?:_?[0-9])*(?:\.0*)?", re.ASCII)
_NUMBER = re.compile(r"[+-]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|nan)", re.ASCII)


#: A port of the listener: 0 asks the kernel for a free one (tests, a first try), said in the log.
_HTTP_ADDR = "expected nothing (off), PORT, HOST:PORT or [IPv6]:PORT with a port from 0 to 65535"


def parse_http_addr(value: str) -> tuple[str, int] | None:
    """TINYSCHEDULER_HTTP_ADDR as (host, port); None when empty (off). A bare port binds 127.0.0.1."""
    text = value.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not re.fullmatch(r"[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(_HTTP_ADDR)
    if not host or not re.fullmatch(r"[A-Za-z0-9.:_-]{1,253}", host):
        raise ValueError(_HTTP_ADDR)
    return host, int(port)


def expand_user(path: Path) -> Path:
    """`~` and `~user` expanded; ValueError (not RuntimeError) when there is no such home folder."""
    try:
        return path.expanduser()
    except RuntimeError:
        raise ValueError(f"cannot expand {str(path).split('/')[0]!r}: no such user or home folder") from None


@dataclass(frozen=True)
class _Where:
    """The settings that say where things are: paths, agents, goose, TinyTask (the first sections of
    `Settings`, declared apart only to keep each class short)."""

    # --- paths: where things are; every relative path resolves against the base path, which comes
    # first (the others are checked against it).
    base_path: Path = _setting(
        default_factory=Path.cwd,
        kind="path",
        flag="--base-path",
        metavar="PATH",
        expect=_PATH,
        description="folder every relative path resolves against",
    )
    running_dir: Path = _setting(
        Path("state/running"),
        kind="path",
        flag="--running-dir",
        metavar="PATH",
        expect=_PATH,
        description="lease files of the runs in flight",
    )
    log_dir: Path = _setting(
        Path("state/logs"),
        kind="path",
        flag="--log-dir",
        metavar="PATH",
        expect=_PATH,
        description="scheduler logs; run output goes to its tasks/ subfolder",
    )
    recipes_dir: Path = _setting(
        Path("recipes"),
        kind="path",
        flag="--recipes-dir",
        metavar="PATH",
        expect=_PATH,
        description="Goose recipes, <agent>.yaml unless the registry names one",
    )
    agent_control_file: Path = _setting(
        Path("agent-control.json"),
        kind="path",
        flag="--agent-control-file",
        metavar="PATH",
        expect=_PATH,
        description="agent registry; legacy mode (agent limits only) when this is unset and the file absent; "
        "named explicitly, it must exist",
    )
    # --- agents: which agents run, and how many runs each may have at once.
    agent_limits: dict[str, int] = _setting(
        default_factory=dict,
        kind="limits",
        flag="--agent-limit",
        metavar="NAME=N",
        expect="expected a JSON object of agent name to slots, or NAME:N pairs such as a:1,b:2",
        description="slots per agent, overriding the registry (the flag repeats; "
        "the variable takes JSON or a:1,b:2); replaces the whole map of a lower source",
    )
    default_slots: int = _setting(
        1,
        flag="--default-slots",
        metavar="N",
        **_whole(0, MAX_SLOTS),
        description="slots of a registry agent whose slots are set nowhere else",
    )
    # --- goose: how a run is started and what proves that it succeeded.
    goose_bin: str = _setting(
        "goose",
        kind="text",
        flag="--goose-bin",
        metavar="PATH",
        expect="expected a program name or path",
        description="goose executable: a bare name is looked up on PATH, a path resolves against the base path",
    )
    goose_args: str = _setting(
        "",
        kind="text",
        flag="--goose-args",
        metavar="ARGS",
        expect="expected shell-style arguments",
        description="extra arguments for `goose run`, shell-style quoting",
    )
    goose_output_format: OutputFormatName = _setting(
        "stream-json",
        kind="choice",
        choices=("stream-json", "json", "text"),
        flag="--goose-output-format",
        metavar="FORMAT",
        expect="expected stream-json, json or text",
        description="goose's --output-format for runs: stream-json (success needs its complete event), json "
        "(needs status completed) or text; an --output-format in the goose args wins",
    )
    text_success: TextSuccess = _setting(
        "output",
        kind="choice",
        choices=("output", "exit"),
        flag="--text-success",
        metavar="RULE",
        expect="expected output or exit",
        description="with text output, what proves success: output (exit 0 and some output) or exit (exit 0 alone)",
    )
    # --- TinyTask: where the tasks are.
    mcp_endpoint: str = _setting(
        "http://127.0.0.1:3000",
        kind="text",
        flag="--mcp-endpoint",
        metavar="URL",
        expect="expected an http:// or https:// URL such as http://127.0.0.1:3000",
        description="TinyTask base URL (a trailing /mcp is accepted)",
    )
    tinytask_protocol: Protocol = _setting(
        "auto",
        kind="choice",
        choices=("rest", "mcp", "auto"),
        flag="--tinytask-protocol",
        metavar="PROTOCOL",
        expect="expected rest, mcp or auto",
        description="how to talk to TinyTask: rest, mcp, or auto (REST if the server has it)",
    )


_URLS = "expected comma-separated http:// or https:// URLs such as http://10.0.0.1:2379,http://10.0.0.2:2379"
_NAME = "expected 1-64 letters, digits, '_', '.', '-'"


def parse_endpoints(value: str) -> list[str]:
    """TINYSCHEDULER_ETCD_ENDPOINTS as a list of base URLs (empty: no cluster)."""
    urls = [item.strip().rstrip("/") for item in value.split(",") if item.strip()]
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{url!r} is not a base URL; {_URLS}")
    return urls


@dataclass(frozen=True)
class _Cluster(_Where):
    """Several hosts serving one TinyTask: where etcd is and who this host is in it (docs/cluster.md;
    all off without endpoints, all read at start)."""

    etcd_endpoints: str = _setting(
        "",
        kind="urls",
        flag="--etcd-endpoints",
        metavar="URLS",
        expect=_URLS,
        description="etcd client URLs, comma-separated: turns the cluster mode on (claims and membership "
        "in etcd); empty = this host alone, no etcd (read at start)",
    )
    host_id: str = _setting(
        "",
        kind="name",
        flag="--host-id",
        metavar="NAME",
        expect=_NAME,
        description="this host's name in the cluster; empty = the hostname (read at start)",
    )
    cluster: str = _setting(
        "default",
        kind="name",
        flag="--cluster-name",
        metavar="NAME",
        expect=_NAME,
        description="the cluster's name: its keys live under /tinyscheduler/<name>/, so several clusters "
        "can share one etcd (read at start)",
    )
    cluster_heartbeat_sec: int = _setting(
        5,
        flag="--cluster-heartbeat",
        metavar="SECONDS",
        **_whole(1, 60, " of seconds"),
        description="seconds between renewals of the host's etcd lease, whose TTL is 3 of them: a host "
        "cut off from etcd stops its runs within 2.5 of them (read at start)",
    )
    etcd_ca_file: Path | None = _setting(
        None,
        kind="optional_path",
        flag="--etcd-ca-file",
        metavar="PATH",
        expect=_PATH,
        description="CA certificate that signs etcd's server certificates (https endpoints); empty = the system's CAs",
    )
    etcd_cert_file: Path | None = _setting(
        None,
        kind="optional_path",
        flag="--etcd-cert-file",
        metavar="PATH",
        expect=_PATH,
        description="this host's client certificate for etcd (with --etcd-key-file)",
    )
    etcd_key_file: Path | None = _setting(
        None,
        kind="optional_path",
        flag="--etcd-key-file",
        metavar="PATH",
        expect=_PATH,
        description="the private key of the client certificate",
    )
    etcd_user: str = _setting(
        "",
        kind="plain",
        flag="--etcd-user",
        metavar="NAME",
        expect="expected a user name",
        description="etcd user (auth on)",
    )
    etcd_password: str = _setting(
        "",
        kind="plain",
        flag="--etcd-password",
        metavar="TEXT",
        expect="expected a password",
        description="the etcd user's password (never shown, never passed to runs)",
    )

    @property
    def etcd_urls(self) -> list[str]:
        return parse_endpoints(self.etcd_endpoints)

    @property
    def clustered(self) -> bool:
        return bool(self.etcd_endpoints)


def _cluster_check(name: str, spec: _Spec, value: Any, checked: Mapping[str, Any]) -> Any:
    """The cluster's settings (kinds urls, name, plain) and the pairs they go in."""
    if not isinstance(value, str):
        raise ValueError(spec.expect)
    if spec.kind == "urls":
        return ",".join(parse_endpoints(value))
    if spec.kind == "name":
        value = value.strip()
        if (value or name == "cluster") and not NAME_PATTERN.fullmatch(value):
            raise ValueError(_NAME)
        return value
    if name == "etcd_password" and value and not checked.get("etcd_user"):
        raise ValueError("a password needs TINYSCHEDULER_ETCD_USER")
    return value


@dataclass(frozen=True)
class Settings(_Cluster):
    """The resolved configuration of one daemon instance (immutable; a reload builds a new one).

    Built from raw values (the strings of the environment, an env file or the command line, or
    typed values) and checked as a whole when constructed: `SettingsInvalid` names every setting
    that is wrong. The fields come in sections (paths, agents, goose, TinyTask, timing, logging,
    switches), which is also their order in `config --show`, the README and the example env file.
    Plain Python on purpose: `--help` and `status` start without a validation library.
    """

    # --- timing: how often and for how long: passes, heartbeats, runs, retries, shutdown.
    loop_interval_sec: int = _setting(
        60,
        flag="--loop-interval",
        metavar="SECONDS",
        **_whole(1, DAY_SEC, " of seconds"),
        description="seconds between passes (a run's end or a reload triggers one at once)",
    )
    heartbeat_sec: int = _setting(
        15,
        flag="--heartbeat-interval",
        metavar="SECONDS",
        **_whole(1, 3600, " of seconds"),
        description="seconds between lease heartbeats and lease checks",
    )
    pass_timeout_sec: int = _setting(
        120,
        flag="--pass-timeout",
        metavar="SECONDS",
        **_whole(1, DAY_SEC, " of seconds"),
        description="a pass running longer is stuck: systemd watchdog pings stop so systemd restarts "
        "the daemon (read at start)",
    )
    max_runtime_sec: int = _setting(
        3600,
        flag="--max-runtime",
        metavar="SECONDS",
        **_whole(1, WEEK_SEC, " of seconds"),
        description="a run older than this is stopped",
    )
    stop_grace_sec: float = _setting(
        10.0,
        kind="float",
        flag="--stop-grace",
        metavar="SECONDS",
        expect="expected a number of seconds above 0, at most 3600",
        low=0,
        above=True,
        high=3600,
        description="wait between SIGINT, SIGTERM and SIGKILL when stopping a run",
    )
    idle_timeout_sec: int = _setting(
        0,
        flag="--idle-timeout",
        metavar="SECONDS",
        **_whole(0, WEEK_SEC, " of seconds"),
        description="stop a run that printed nothing for this long; 0 = off",
    )
    run_log_max_bytes: int = _setting(
        10 * 1024 * 1024,
        flag="--run-log-max-bytes",
        metavar="BYTES",
        **_whole(1024, 2**40, " of bytes"),
        description="cap of one run's output log; beyond it the tail is kept",
    )
    retry_base_sec: int = _setting(
        60,
        flag="--retry-base",
        metavar="SECONDS",
        **_whole(0, DAY_SEC, " of seconds"),
        description="backoff before the first retry of a failed run, doubling, capped at 1 h",
    )
    max_attempts: int = _setting(
        3,
        flag="--max-attempts",
        metavar="N",
        **_whole(1, 1000),
        description="failed attempts before a task is tagged tinyscheduler:failed",
    )
    shutdown_grace_sec: int = _setting(
        30,
        flag="--shutdown-grace",
        metavar="SECONDS",
        **_whole(0, DAY_SEC, " of seconds"),
        description="on SIGTERM, wait this long for runs before stopping them",
    )
    # --- logging: what the daemon says, and where.
    log_level: LogLevel = _setting(
        "INFO",
        kind="choice",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        case="upper",
        flag="--log-level",
        metavar="LEVEL",
        expect="expected DEBUG, INFO, WARNING or ERROR",
        description="DEBUG, INFO, WARNING or ERROR",
    )
    log_format: LogFormat = _setting(
        "auto",
        kind="choice",
        choices=("auto", "console", "json", "journal"),
        flag="--log-format",
        metavar="FORMAT",
        expect="expected auto, console, json or journal",
        description="auto, console, json or journal (auto: journal under journald, else console)",
    )
    log_keep_days: int = _setting(
        14,
        flag="--log-keep-days",
        metavar="DAYS",
        **_whole(1, 3650, " of days"),
        description="days of scheduler log files to keep",
    )
    state_keep_days: int = _setting(
        14,
        flag="--state-keep-days",
        metavar="DAYS",
        **_whole(1, 3650, " of days"),
        description="days to keep run logs, quarantined lease files and the attempt records of tasks no "
        "longer tried; the daemon prunes hourly, never a run in flight",
    )
    state_max_bytes: int = _setting(
        1024**3,
        flag="--state-max-bytes",
        metavar="BYTES",
        **_whole(1024 * 1024, 2**50, " of bytes"),
        description="most disk the run logs and quarantined files may use together; beyond it the oldest go first",
    )
    # --- monitoring: what the daemon shows to monitoring: metrics, the status page, run history, costs.
    http_addr: str = _setting(
        "",
        kind="address",
        flag="--http-addr",
        metavar="ADDR",
        expect=_HTTP_ADDR,
        description="address of the metrics and status page listener: PORT (on 127.0.0.1), HOST:PORT or "
        "[IPv6]:PORT; empty = off (read at start)",
    )
    metrics_textfile: Path | None = _setting(
        None,
        kind="optional_path",
        flag="--metrics-textfile",
        metavar="PATH",
        expect=_PATH,
        description="also write the metrics to this file after every pass, for node_exporter's textfile "
        "collector (name it *.prom); empty = off",
    )
    prices: Path | None = _setting(
        None,
        kind="optional_path",
        flag="--prices",
        metavar="PATH",
        expect=_PATH,
        description="price table (JSON): model -> prices per million input and output tokens; with it every "
        "run has a cost",
    )
    history_keep_days: int = _setting(
        90,
        flag="--history-keep-days",
        metavar="DAYS",
        **_whole(1, 3650, " of days"),
        description="days of run history to keep",
    )
    # --- switches.
    dry_run: bool = _setting(
        False,
        kind="bool",
        flag="--dry-run",
        metavar="",
        expect=_BOOL,
        description="print the plan, change nothing anywhere",
    )
    enabled: bool = _setting(
        True,
        kind="bool",
        flag="--enabled",
        metavar="",
        expect=_BOOL,
        description="kill switch: when false, `run` (unless a dry run) does nothing and exits 0",
    )
    disable_blocking: bool = _setting(
        False,
        kind="bool",
        flag="--disable-blocking",
        metavar="",
        expect=_BOOL,
        description="ignore task blockers and keep the server's order",
    )
    lock_file: Path = _setting(
        Path("state/tinyscheduler.lock"),
        kind="path",
        flag="--lock-file",
        metavar="PATH",
        expect=_PATH,
        description="single-instance lock",
    )

    def __post_init__(self) -> None:
        checked: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for spec_field in dataclasses.fields(self):
            name = spec_field.name
            try:
                checked[name] = _check(name, spec_field.metadata["spec"], getattr(self, name), checked)
            except ValueError as exc:
                problems[name] = str(exc)
        if problems:
            raise SettingsInvalid(problems)
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    # Derived locations: one definition, so no module builds these paths by hand.
    @property
    def state_dir(self) -> Path:
        return self.running_dir.parent

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def attempts_file(self) -> Path:
        """The attempt book's journal (adapters.attempt_book; the old attempts.json is read too)."""
        return self.state_dir / "attempts.jsonl"

    @property
    def last_pass_file(self) -> Path:
        return self.state_dir / "last_pass.json"

    @property
    def pauses_file(self) -> Path:
        return self.state_dir / "pauses.json"

    @property
    def control_socket(self) -> Path:
        return self.state_dir / "control.sock"

    @property
    def task_log_dir(self) -> Path:
        return self.log_dir / "tasks"

    @property
    def history_file(self) -> Path:
        return self.state_dir / "history.sqlite3"

    @property
    def goose_argv(self) -> list[str]:
        """TINYSCHEDULER_GOOSE_ARGS as an argument list (validated at load, so this cannot fail)."""
        return shlex.split(self.goose_args)

    @property
    def tinytask_url(self) -> str:
        """The TinyTask base URL: mcp_endpoint without a trailing /mcp."""
        return self.mcp_endpoint.removesuffix("/mcp")

    @property
    def mcp_url(self) -> str:
        return f"{self.tinytask_url}/mcp"

    def goose_executable(self, search_path: str | None = None) -> Path | None:
        """The goose program that would run, or None when it is missing or not executable.

        `search_path` is the PATH to search (default: the process's PATH).
        """
        found = shutil.which(self.goose_bin, path=search_path)
        return Path(found) if found else None


class SettingsInvalid(ValueError):
    """Values `Settings` refused: what is wrong with each, by setting name."""

    def __init__(self, problems: Mapping[str, str]) -> None:
        self.problems = dict(problems)
        super().__init__("; ".join(f"{name}: {detail}" for name, detail in self.problems.items()))


#: Settings given as free text (paths, the program, its arguments, the URL): no NUL byte in them.
_TEXT_SETTINGS = frozenset(
    {"base_path", "running_dir", "log_dir", "recipes_dir", "agent_control_file", "lock_file", "metrics_textfile"}
    | {"prices", "http_addr", "etcd_endpoints", "etcd_ca_file", "etcd_cert_file", "etcd_key_file"}
    | {"host_id", "cluster", "etcd_user", "etcd_password"}
    | {"goose_bin", "goose_args", "mcp_endpoint"}
)


def _check(name: str, spec: _Spec, value: Any, checked: Mapping[str, Any]) -> Any:
    """One setting's value as the daemon uses it; ValueError with the words that say what is wrong."""
    if name in _TEXT_SETTINGS and isinstance(value, (str, Path)) and "\0" in str(value):
        # No file name, argument or URL can hold one; refused here, it cannot fail a run later.
        raise ValueError("contains a NUL byte")
    kind = spec.kind
    if kind == "path":
        return _path(name, value, checked.get("base_path"))
    if kind == "optional_path":  # empty means off
        empty = value is None or (isinstance(value, str) and not value.strip())
        if name == "etcd_key_file" and empty != (checked.get("etcd_cert_file") is None):
            raise ValueError("the client certificate and its key go together: set both or neither")
        return None if empty else _path(name, value, checked.get("base_path"))
    if kind in ("urls", "name", "plain"):
        return _cluster_check(name, spec, value, checked)
    if kind == "address":
        if not isinstance(value, str):
            raise ValueError(spec.expect)
        parse_http_addr(value)
        return value.strip()
    if kind == "text":
        return _text(name, spec, value, checked.get("base_path"))
    if kind in ("int", "float"):
        number = _whole_number(value, spec.expect) if kind == "int" else _real(value, spec.expect)
        below = spec.low is not None and (number <= spec.low if spec.above else number < spec.low)
        if below or (spec.high is not None and number > spec.high):
            raise ValueError(spec.expect)
        return number
    if kind == "bool":
        return _boolean(value)
    if kind == "choice":
        text = value.strip() if isinstance(value, str) else value
        text = text.upper() if isinstance(text, str) and spec.case == "upper" else text
        text = text.lower() if isinstance(text, str) and spec.case == "lower" else text
        if text not in spec.choices:
            raise ValueError(spec.expect)
        return text
    return _limits(value, spec.expect)


def _path(name: str, value: Any, base: Any) -> Path:
    if isinstance(value, str) and not value.strip():
        raise ValueError(_PATH)  # an empty value would silently mean "the base path itself"
    if not isinstance(value, (str, Path)):
        raise ValueError(_PATH)
    path = expand_user(Path(value))
    if name == "base_path":
        return Path.cwd() / path
    # Without a valid base path its own error is reported; this value stays as given.
    return base / path if isinstance(base, Path) else Path(value)


def _text(name: str, spec: _Spec, value: Any, base: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(spec.expect)
    if name == "goose_bin":
        if not value.strip():
            raise ValueError(spec.expect)
        return str(base / expand_user(Path(value))) if "/" in value and isinstance(base, Path) else value
    if name == "goose_args":
        try:
            shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"expected shell-style arguments ({exc})") from None
        return value
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(spec.expect)
    return url


def _whole_number(value: Any, expect: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _WHOLE.fullmatch(text := value.strip()):
        return int(text.partition(".")[0].replace("_", ""))
    raise ValueError(expect)


def _real(value: Any, expect: str) -> float:
    if isinstance(value, (bool, int, float)):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.fullmatch(text := value.strip().lower()):
        number = float(text)
    else:
        raise ValueError(expect)
    if math.isnan(number) or math.isinf(number):
        raise ValueError(expect)
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueError(_BOOL)


def _limits(value: Any, expect: str) -> dict[str, int]:
    if isinstance(value, str):
        return parse_agent_limits(value)
    if isinstance(value, (list, tuple)):
        return _merge_limit_items(value)
    if isinstance(value, Mapping):
        return {_agent_name(k): _slot_count(v, k) for k, v in value.items()}
    raise ValueError(expect)


def parse_agent_limits(text: str) -> dict[str, int]:
    """TINYSCHEDULER_AGENT_LIMITS: a JSON object `{"a": 1}` or pairs `a:1,b:2` (blank = none)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON at column {exc.colno}: {exc.msg}") from None
        except RecursionError:
            raise ValueError("invalid JSON: nested too deeply") from None
        return {_agent_name(k): _slot_count(v, k) for k, v in data.items()}
    return _merge_limit_items([item for item in text.split(",") if item.strip()])


def _merge_limit_items(items: Iterable[Any]) -> dict[str, int]:
    limits: dict[str, int] = {}
    for item in items:
        name, count = parse_limit_item(item)
        limits[name] = count
    return limits


def parse_limit_item(item: Any) -> tuple[str, int]:
    """One `NAME=N` (the flag) or `NAME:N` (the variable) pair."""
    match = re.fullmatch(r"\s*([^=:]*?)\s*[=:]\s*(.*?)\s*", item) if isinstance(item, str) else None
    if match is None:
        raise ValueError(f"expected NAME=N or NAME:N, got {item!r}")
    name, count = match.groups()
    return _agent_name(name), _slot_count(count, name)


def _agent_name(name: Any) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"agent name {name!r} is not 1-64 letters, digits, '_', '.', '-'")
    return name


def _slot_count(value: Any, name: Any) -> int:
    count: int | None = None
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,7}", value.strip()):
        count = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        count = value
    if count is None or not 0 <= count <= MAX_SLOTS:
        raise ValueError(f"slots of agent {name!r} must be a whole number from 0 to {MAX_SLOTS}, got {value!r}")
    return count


def env_var(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


@dataclass(frozen=True)
class SettingInfo:
    """What a person needs to know about one setting (CLI help, docs, `config --show`)."""

    name: str
    env_var: str
    flag: str
    metavar: str
    expect: str
    help: str
    default: Any  # None when the default is computed at load (base_path: the current directory)
    is_bool: bool
    #: The lowest and highest value a numeric setting accepts (a lower bound may be exclusive: see
    #: `expect`); None for the others.
    range: tuple[float, float] | None = None


def _info(spec_field: dataclasses.Field[Any]) -> SettingInfo:
    spec: _Spec = spec_field.metadata["spec"]
    has_default = spec_field.default is not dataclasses.MISSING
    default_factory = spec_field.default_factory
    default = spec_field.default if has_default else None
    if default is None and default_factory is dict:
        default = {}
    bounds = (spec.low, spec.high) if spec.low is not None and spec.high is not None else None
    return SettingInfo(
        name=spec_field.name,
        env_var=env_var(spec_field.name),
        flag=spec.flag,
        metavar=spec.metavar,
        expect=spec.expect,
        help=spec.description,
        default=default,
        is_bool=spec.kind == "bool",
        range=bounds,
    )


SETTINGS: tuple[SettingInfo, ...] = tuple(_info(spec_field) for spec_field in dataclasses.fields(Settings))
_BY_NAME = {info.name: info for info in SETTINGS}
_BY_ENV = {info.env_var: info for info in SETTINGS}


def display_value(name: str, value: Any) -> Any:
    """A setting's value as JSON-friendly data, secrets redacted."""
    if isinstance(value, Path):
        value = str(value)
    elif isinstance(value, Mapping):
        value = dict(value)
    return redacted(name, value)


@dataclass(frozen=True)
class _Raw:
    """A value before validation and how an error message names where it came from."""

    value: Any
    source: Source
    where: str


@dataclass(frozen=True)
class LoadedSettings:
    """Settings plus the source of every value, and the inputs that produced them (for reloads)."""

    settings: Settings
    sources: dict[str, Source]
    #: The env file actually read, or None.
    env_file: Path | None
    #: TINYSCHEDULER_* names in the env file that are no setting (likely typos), "file line N: NAME".
    unknown_keys: tuple[str, ...] = ()
    #: The env file a reload reads: the one this load found (absolute), None when there was none.
    env_file_arg: Path | None = None
    #: The CLI values given to load_settings.
    cli: Mapping[str, Any] = field(default_factory=dict)
    #: The working directory relative paths resolved against.
    cwd: Path | None = None
    #: How the env file was found (--env-file, TINYSCHEDULER_ENV_FILE, ./.env, the system file); "" for none.
    env_file_origin: str = ""
    #: The places looked at for an env file, in order.
    searched: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        """Anything beyond the defaults: an env file, a TINYSCHEDULER_* variable or a flag."""
        return any(source != "default" for source in self.sources.values())

    def where_looked(self) -> str:
        """One line for a command that found no configuration at all."""
        return f"no configuration found (looked at: {', '.join(self.searched)}; no TINYSCHEDULER_* variable set)"

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": info.name,
                "env_var": info.env_var,
                "value": display_value(info.name, getattr(self.settings, info.name)),
                "source": self.sources[info.name],
            }
            for info in SETTINGS
        ]

    def reload(self, *, environ: Mapping[str, str] | None = None) -> LoadedSettings:
        """Load again from the same env file, CLI values and working directory (SIGHUP)."""
        return load_settings(env_file=self.env_file_arg, cli=self.cli, environ=environ, cwd=self.cwd)

    def with_overrides(self, values: Mapping[str, Any]) -> LoadedSettings:
        """A copy with `values` (validated) in place, e.g. settings that only a restart may change.

        Their sources are left as they were: the caller takes the values from an earlier load.
        """
        settings = dataclasses.replace(self.settings, **values)
        return dataclasses.replace(self, settings=settings)


@dataclass(frozen=True)
class EnvFileChoice:
    """Which env file a command reads, found in the documented order (`find_env_file`)."""

    #: The file to read, or None when none of the places holds one.
    path: Path | None
    #: How a person names where it came from: --env-file, TINYSCHEDULER_ENV_FILE, ./.env or the system file.
    origin: str
    #: Every place looked at, in order, for the message of a command that found nothing.
    searched: tuple[str, ...]
    #: Named by the flag or the variable: a missing file is an error rather than the next place.
    explicit: bool


def find_env_file(
    env_file: Path | None, environ: Mapping[str, str], cwd: Path, system_file: Path = SYSTEM_ENV_FILE
) -> EnvFileChoice:
    """The env file, in this order: `--env-file`, then TINYSCHEDULER_ENV_FILE, then `./.env`, then
    /etc/tinyscheduler/tinyscheduler.env. The first one named (flag, variable) or present wins."""
    named = [("--env-file", env_file), (ENV_FILE_VAR, environ.get(ENV_FILE_VAR) or None)]
    searched: list[str] = []
    for origin, value in named:
        if value is None:
            searched.append(f"{origin} (not given)")
            continue
        try:
            path = cwd / expand_user(Path(value))
        except ValueError as exc:
            raise ConfigError([f"{origin}={str(value)!r}: {exc}"]) from None
        return EnvFileChoice(path, origin, (*searched, f"{origin}={path}"), explicit=True)
    for origin, path in (("./.env", cwd / DEFAULT_ENV_FILE), (str(system_file), system_file)):
        searched.append(str(path))
        if path.is_file():
            return EnvFileChoice(path, origin, tuple(searched), explicit=False)
    return EnvFileChoice(None, "", tuple(searched), explicit=False)


def load_settings(
    *,
    env_file: Path | None,
    cli: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    system_env_file: Path = SYSTEM_ENV_FILE,
) -> LoadedSettings:
    """Merge default < env file < process environment < CLI and validate; raise ConfigError.

    The env file is found by `find_env_file` (`env_file` is the --env-file argument). `cli` maps
    setting names to values; None means "not given". Relative paths (the env file, the base path)
    resolve against `cwd` (default: the current directory). Nothing is created or changed.
    """
    environ = os.environ if environ is None else environ
    try:
        cwd = Path(os.path.abspath(cwd if cwd is not None else Path.cwd()))
    except OSError as exc:
        raise ConfigError([f"the current directory is not accessible: {exc.strerror}"]) from None
    unknown_cli = sorted(set(cli) - _BY_NAME.keys())
    if unknown_cli:
        raise TypeError(f"load_settings: not settings: {', '.join(unknown_cli)}")

    choice = find_env_file(env_file, environ, cwd, system_env_file)
    raw: dict[str, _Raw] = {}
    problems: list[str] = []
    unknown: list[str] = []
    if choice.path is not None:
        for number, key, value in _parse_env_lines(_read_env_file(choice.path), choice.path, problems):
            info = _BY_ENV.get(key)
            where = f"{choice.path} line {number}: {key}"
            if info is not None:
                raw[info.name] = _Raw(value, "env-file", where)
            elif key.startswith(ENV_PREFIX):
                unknown.append(where)
    for info in SETTINGS:
        if info.env_var in environ:
            raw[info.name] = _Raw(environ[info.env_var], "env", info.env_var)
    for name, value in cli.items():
        if value is not None:
            raw[name] = _Raw(value, "cli", _BY_NAME[name].flag)

    values: dict[str, Any] = {}
    for name, item in raw.items():
        if name == "agent_limits" and item.source == "cli" and isinstance(item.value, (list, tuple)):
            values[name] = _cli_limits(item, problems)
            continue
        values[name] = item.value

    # The base path defaults to, and resolves against, `cwd` (not the process's, for reload).
    base = values.get("base_path", cwd)
    if isinstance(base, (str, Path)) and str(base).strip() and "\0" not in str(base):
        with contextlib.suppress(ValueError):  # the base path's validator words the problem
            values["base_path"] = cwd / expand_user(Path(base))
    settings: Settings | None = None
    try:
        settings = Settings(**values)
    except SettingsInvalid as exc:
        problems.extend(_problems(exc, raw))
    if problems or settings is None:
        raise ConfigError(problems)
    sources: dict[str, Source] = {info.name: "default" for info in SETTINGS}
    sources.update({name: item.source for name, item in raw.items()})
    # A reload reads the file this load read, wherever it was found (a ./.env made later must not
    # replace the system file under a running daemon).
    return LoadedSettings(
        settings,
        sources,
        choice.path,
        tuple(unknown),
        choice.path,
        dict(cli),
        cwd,
        choice.origin,
        choice.searched,
    )


def _cli_limits(item: _Raw, problems: list[str]) -> dict[str, int]:
    # Each --agent-limit is its own flag occurrence: name the one that is wrong.
    limits: dict[str, int] = {}
    for one in item.value:
        try:
            name, count = parse_limit_item(one)
        except ValueError as exc:
            problems.append(f"{item.where}={one!r}: {exc}")
        else:
            limits[name] = count
    return limits


def _problems(exc: SettingsInvalid, raw: Mapping[str, _Raw]) -> list[str]:
    problems = []
    for name, detail in exc.problems.items():
        info = _BY_NAME[name]
        item = raw.get(name)
        if item is None:
            problems.append(f"{info.env_var} (default): {detail}")
        else:
            problems.append(f"{item.where}={_shown(name, item.value)}: {detail}")
    return problems


def _shown(name: str, value: Any) -> str:
    return repr(redacted(name, value))


#: An env file is a few dozen lines; anything larger is not one.
MAX_ENV_FILE_BYTES = 256 * 1024


def _read_env_file(path: Path) -> list[str]:
    # Read without blocking and only if it is a regular file: a FIFO in its place must not hang a reload.
    try:
        data = read_bytes(path, MAX_ENV_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError([f"env file {path}: not found"]) from None
    except IsADirectoryError:
        raise ConfigError([f"env file {path}: is a folder, expected a file"]) from None
    except OSError as exc:
        raise ConfigError([f"env file {path}: cannot read ({reason(exc)})"]) from None
    if b"\0" in data:
        raise ConfigError([f"env file {path}: contains a NUL byte at byte {data.index(0)} (a binary file?)"])
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ConfigError([f"env file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None


_ENV_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)")


def _parse_env_lines(lines: list[str], path: Path, problems: list[str]) -> list[tuple[int, str, str]]:
    """`NAME=VALUE` lines as systemd's EnvironmentFile= reads them: `#` comments, optional quotes.

    No variable expansion and no inline comments, so the file means the same to systemd and to us.
    """
    entries: list[tuple[int, str, str]] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith(("#", ";")):
            continue
        match = _ENV_LINE.fullmatch(text)
        if match is None:
            problems.append(f"{path} line {number}: expected NAME=VALUE, got {text!r}")
            continue
        key, value = match.groups()
        if value[:1] in ("'", '"'):
            quote = value[0]
            if len(value) < 2 or not value.endswith(quote):
                problems.append(f"{path} line {number}: {key}: unterminated {quote} quote")
                continue
            value = value[1:-1]
            if quote == '"':
                value = re.sub(r'\\(["\\$`])', r"\1", value)
        entries.append((number, key, value))
    return entries
