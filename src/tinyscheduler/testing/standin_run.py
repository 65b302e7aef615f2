"""What the stand-in goose does once its run has started: the modes, goose's output formats, the
processes some modes leave behind, the test records, and its few REST calls to TinyTask.

Part of the stand-in's start-up path, so standard library only and nothing slow to import: records
and the REST calls use `os`, `json` and a plain socket (urllib costs some 20 ms to import).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

TYPE_CHECKING = False  # typing itself costs milliseconds at every start
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, ClassVar, NoReturn

# Goose's own words, spelled out here independently of core.outcomes so that a typo on either side
# shows up in the tests instead of agreeing with itself.
MAX_TURNS_TEXT = (
    "I've reached the maximum number of actions I can do without user input. Would you like me to continue?"
)
INTERRUPTED_TEXT = "Headless run interrupted"

MODES = {
    "succeed": "print some output and exit 0 after <seconds> (complete_task: true also completes the task)",
    "fail": "exit 1 after <seconds>",
    "fail-once": "fail on attempt 1 ($TINYSCHEDULER_ATTEMPT), succeed on later attempts",
    "hang": "never end; SIGINT -> 'Headless run interrupted', exit 1; SIGTERM kills",
    "stubborn": "never end and ignore SIGINT and SIGTERM (only SIGKILL stops it)",
    "flood": "print <megabytes> MB as fast as possible, then exit 0",
    "flood-rate": "print <rate> MB/s for <flood_seconds> seconds (default 3), then exit 0",
    "max-turns": "print the max-turns sentence and exit 0 (work incomplete)",
    "stream-json": "emit stream-json events ending with complete, or with error (exit 0) when `error:` is set",
    "stream-error": "emit stream-json events ending with an error event, exit 1 after <seconds>",
    "no-complete": "emit stream-json messages, exit 0 after <seconds> without a complete event",
    "silent-success": "exit 0 at once without printing anything",
    "transfer": "hand the task to the agent <to> over REST, then exit 0 after <seconds>",
    "setsid-child": "leave a child in a session of its own that sleeps <linger> s (default 300), then succeed",
    "double-fork": "leave a grandchild re-parented away (fork, setsid, fork) that sleeps <linger> s, then succeed",
    "background-child": "leave a child in goose's own process group that sleeps <linger> s, then succeed",
    "escaped-writer": "leave a setsid child writing to goose's stdout (the run log) for <linger> s, then succeed",
    "untagged-child": "like double-fork, but the grandchild execs `sleep <linger>` with an empty environment",
}

#: Seconds for each connect, send and read of a REST call to TinyTask.
REST_TIMEOUT = 5.0
#: Modes whose output is stream-json whatever --output-format says.
STREAM_MODES = ("stream-json", "stream-error", "no-complete")
#: Modes that leave a process behind, then succeed.
CHILD_MODES = ("setsid-child", "double-fork", "background-child", "escaped-writer", "untagged-child")


class Failure(Exception):
    """Ends the run like goose's own errors: message on stderr, exit 1."""


def fail(message: str) -> NoReturn:
    raise Failure(message)


class Behaviour:
    """What one run does: these defaults, then the recipe's `standin:` mapping, then a task tag."""

    __slots__ = (
        "complete_task",
        "error",
        "flood_seconds",
        "input_tokens",
        "linger",
        "megabytes",
        "mode",
        "model",
        "output_tokens",
        "rate",
        "seconds",
        "to",
    )
    #: field -> (accepted types, default); numbers must not be negative
    FIELDS: ClassVar[dict[str, tuple[tuple[type, ...], Any]]] = {
        "mode": ((str,), "succeed"),
        "seconds": ((int, float), 0.0),
        "megabytes": ((int, float), 1.0),
        "rate": ((int, float), 100.0),
        "flood_seconds": ((int, float), 3.0),
        "linger": ((int, float), 300.0),
        "to": ((str,), None),
        "complete_task": ((bool,), False),
        "error": ((str,), None),
        "input_tokens": ((int,), 1200),
        "output_tokens": ((int,), 300),
        "model": ((str,), "standin-model"),
    }

    mode: str
    seconds: float
    megabytes: float
    rate: float
    flood_seconds: float
    linger: float
    to: str | None
    complete_task: bool
    error: str | None
    input_tokens: int
    output_tokens: int
    model: str

    def __init__(self, values: dict[str, Any], where: str) -> None:
        for key, value in values.items():
            if key not in self.FIELDS:
                fail(f"{where}: unknown standin key {key!r} (known: {', '.join(self.FIELDS)})")
            kinds, default = self.FIELDS[key]
            if value is None and default is None:
                continue
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                fail(f"{where}: standin {key}: unexpected value {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and not value >= 0:
                fail(f"{where}: standin {key}: must not be negative, got {value!r}")
        for key, (_, default) in self.FIELDS.items():
            setattr(self, key, values.get(key, default))
        if self.mode not in MODES:
            fail(f"{where}: unknown standin mode {self.mode!r} (known: {', '.join(MODES)})")

    def changed(self, where: str, **changes: Any) -> Behaviour:
        return Behaviour({**{key: getattr(self, key) for key in self.FIELDS}, **changes}, where)


class Context:
    """One run: who it is for, what it does, where it prints and records."""

    def __init__(
        self, behaviour: Behaviour, out: Output, api: str | None, task_id: str | None, agent: str | None
    ) -> None:
        self.behaviour = behaviour
        self.out = out
        self.api = api
        self.task_id = task_id
        self.agent = agent
        self.lock_fd: int | None = None  # never handed to a process this run leaves behind

    def record(self, event: str, **fields: Any) -> None:
        """A JSON line in $TINYSCHEDULER_STANDIN_RECORD (tests read them), if set."""
        path = os.environ.get("TINYSCHEDULER_STANDIN_RECORD")
        if not path:
            return
        task_id = self.task_id
        entry: dict[str, Any] = {"event": event, "task_id": int(task_id) if task_id and task_id.isdigit() else task_id}
        entry.update({"agent": self.agent, "pid": os.getpid(), "t": time.time(), **fields})
        # One write of one line on an O_APPEND descriptor: concurrent writers never interleave.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, (json.dumps(entry) + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            fail(f"cannot append to $TINYSCHEDULER_STANDIN_RECORD {path}: {exc.strerror}")

    def hold_task_lock(self) -> int | None:
        """Flock $TINYSCHEDULER_STANDIN_LOCK_DIR/task_<id>.lock for the whole run, without waiting.
        None when it is ours (or there is no lock to take); when another run of the task holds it,
        that run's pid (0 if unknown): the caller records an `overlap`, and the run still goes on."""
        folder = os.environ.get("TINYSCHEDULER_STANDIN_LOCK_DIR")
        if not folder or not (self.task_id and self.task_id.isdigit()):
            return None
        import fcntl

        path = os.path.join(folder, f"task_{self.task_id}.lock")
        try:
            os.makedirs(folder, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            fail(f"cannot open the task lock {path} ($TINYSCHEDULER_STANDIN_LOCK_DIR): {exc.strerror}")
        self.lock_fd = fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(holder) if holder.isdigit() else 0
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return None


class Output:
    """Prints like `goose run --output-format text|json|stream-json`; flushed, the log is a file."""

    def __init__(self, fmt: str, behaviour: Behaviour, model: str, quiet: bool) -> None:
        self.fmt = fmt
        self.model = model
        self.quiet = quiet
        self.tokens = {
            "total_tokens": behaviour.input_tokens + behaviour.output_tokens,
            "input_tokens": behaviour.input_tokens,
            "output_tokens": behaviour.output_tokens,
        }
        self.messages: list[dict[str, Any]] = []
        self.started = False

    def _start(self) -> None:
        # goose's session banner; only text output has one (JSON output must stay parseable).
        if not self.started and self.fmt == "text" and not self.quiet:
            print(f"starting session | provider: standin model: {self.model}", flush=True)
        self.started = True

    def message(self, text: str) -> None:
        self._start()
        message = {"role": "assistant", "created": int(time.time()), "content": [{"type": "text", "text": text}]}
        if self.fmt == "text":
            print(text, flush=True)
        elif self.fmt == "stream-json":
            print(json.dumps({"type": "message", "message": message}), flush=True)
        else:
            self.messages.append(message)

    def notification(self, text: str) -> None:
        self._start()
        if self.fmt == "stream-json":
            print(json.dumps({"type": "notification", "extension_id": "standin", "message": text}), flush=True)

    def finish(self, status: str, error: str | None = None) -> None:
        self._start()
        if self.fmt == "json":
            document = {"messages": self.messages, "metadata": {**self.tokens, "status": status}}
            print(json.dumps(document, indent=2), flush=True)
        elif self.fmt == "stream-json":
            event = {"type": "error", "error": error} if status == "error" else {"type": "complete", **self.tokens}
            print(json.dumps(event), flush=True)
        elif error:
            print(error, file=sys.stderr, flush=True)


# --- the modes -------------------------------------------------------------------------------------


def act(run: Context) -> int:
    """Do what the behaviour says; the exit code."""
    mode = run.behaviour.mode
    if mode == "silent-success":
        return 0
    if mode == "fail-once":
        mode = "fail" if _attempt() <= 1 else "succeed"
    run.out.message(f"stand-in goose: task {run.task_id} for agent {run.agent}, mode {run.behaviour.mode}")
    if mode in CHILD_MODES:
        _leave_process(run, mode)
        mode = "succeed"
    return _ACTIONS[mode](run)


def _attempt() -> int:
    text = os.environ.get("TINYSCHEDULER_ATTEMPT", "1")
    return int(text) if text.isdigit() else 1


def _succeed(run: Context) -> int:
    time.sleep(run.behaviour.seconds)
    if run.behaviour.complete_task and run.api and run.task_id:
        rest_call(run.api, "PATCH", f"/api/v1/tasks/{run.task_id}", {"status": "complete"})
    run.out.message("stand-in goose: done")
    run.out.finish("completed")
    return 0


def _fail(run: Context) -> int:
    time.sleep(run.behaviour.seconds)
    run.out.finish("error", "stand-in goose: simulated failure")
    return 1


def _hang(run: Context) -> int:
    while True:
        time.sleep(3600)


def _flood(run: Context) -> int:
    line = b"flood " + b"x" * 120 + b"\n"
    count = max(1, int(run.behaviour.megabytes * 1024 * 1024) // len(line))
    chunk = line * 512
    written = 0
    while written + 512 <= count:
        sys.stdout.buffer.write(chunk)
        written += 512
    sys.stdout.buffer.write(line * (count - written))
    sys.stdout.buffer.write(b"flood: end of output\n")
    sys.stdout.buffer.flush()
    run.out.finish("completed")
    return 0


def _flood_rate(run: Context) -> int:
    """Write at most `rate` MB per second for `flood_seconds`, in 64 KiB writes."""
    chunk = (b"flood-rate " + b"x" * 116 + b"\n") * 512
    per_second = run.behaviour.rate * 1024 * 1024
    began = time.monotonic()
    written = 0
    while (elapsed := time.monotonic() - began) < run.behaviour.flood_seconds:
        if written + len(chunk) <= elapsed * per_second:
            written += os.write(1, chunk)
        else:
            time.sleep(min(0.005, (written + len(chunk)) / per_second - elapsed))
    run.out.message(f"flood-rate: end of output, {written} bytes in {time.monotonic() - began:.2f} s")
    run.out.finish("completed")
    return 0


def _max_turns(run: Context) -> int:
    run.out.message(MAX_TURNS_TEXT)
    run.out.finish("completed")
    return 0


def _stream_json(run: Context) -> int:
    run.out.notification("stand-in goose: working")
    time.sleep(run.behaviour.seconds)
    run.out.message("stand-in goose: done")
    error = run.behaviour.error
    run.out.finish("error" if error else "completed", error)
    return 0


def _stream_error(run: Context) -> int:
    run.out.notification("stand-in goose: working")
    time.sleep(run.behaviour.seconds)
    run.out.finish("error", run.behaviour.error or "stand-in goose: simulated provider error")
    return 1


def _no_complete(run: Context) -> int:
    run.out.notification("stand-in goose: working")
    time.sleep(run.behaviour.seconds)
    run.out.message("stand-in goose: stopping without a word of completion")
    return 0


def _transfer(run: Context) -> int:
    to = run.behaviour.to
    if not (run.api and run.task_id and run.agent and to):
        fail("transfer needs TINYTASK_ENDPOINT, task_id, agent and a target agent")
    body = {"current_agent": run.agent, "new_agent": to, "comment": f"stand-in goose: handing over to {to}"}
    rest_call(run.api, "POST", f"/api/v1/tasks/{run.task_id}/transfer", body)
    run.out.message(f"transferred task {run.task_id} to {to}")
    return _succeed(run)


_ACTIONS: dict[str, Callable[[Context], int]] = {
    "succeed": _succeed,
    "fail": _fail,
    "hang": _hang,
    "stubborn": _hang,
    "flood": _flood,
    "flood-rate": _flood_rate,
    "max-turns": _max_turns,
    "stream-json": _stream_json,
    "stream-error": _stream_error,
    "no-complete": _no_complete,
    "transfer": _transfer,
}


# --- processes left behind -------------------------------------------------------------------------


def _leave_process(run: Context, mode: str) -> None:
    """Start the process `mode` leaves behind and record its pid. It inherits goose's environment
    (TINYSCHEDULER_LEASE and all), which is how cleanup finds it, except in untagged-child: that
    one is only found through the run's cgroup."""
    if mode in ("double-fork", "untagged-child"):
        pid = _double_fork(run, untagged=mode == "untagged-child")
    else:
        pid = _fork(run, new_session=mode != "background-child", writer=mode == "escaped-writer")
    run.record("child", child=pid, kind=mode)


def _fork(run: Context, *, new_session: bool, writer: bool) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            if new_session:
                os.setsid()
            _linger(run, writer)
        finally:
            os._exit(0)
    return pid


def _double_fork(run: Context, *, untagged: bool) -> int:
    """fork, setsid, fork: the grandchild is re-parented at once; its pid comes back on a pipe."""
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(read_end)
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.close(write_end)
                if untagged:
                    _exec_untagged(run)
                _linger(run, writer=False)
            else:
                os.write(write_end, str(grandchild).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(middle, 0)
    with os.fdopen(read_end, "rb") as pipe:
        return int(pipe.read())


def _exec_untagged(run: Context) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.closerange(3, 1024)
    os.execvpe("sleep", ["sleep", str(run.behaviour.linger)], {"PATH": os.defpath})


def _linger(run: Context, writer: bool) -> None:
    """A left-behind process: sleep `linger` seconds, or keep writing to stdout that long."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if run.lock_fd is not None:
        os.close(run.lock_fd)  # the task lock is the run's, not its leftovers'
    if not writer:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(run.behaviour.linger)
        return
    deadline = time.monotonic() + run.behaviour.linger
    line = f"escaped writer {os.getpid()}: still writing to goose's output\n".encode()
    while time.monotonic() < deadline:
        try:
            os.write(1, line)
        except OSError:
            return  # nobody reads that output any more
        time.sleep(0.05)


# --- REST ----------------------------------------------------------------------------------------


class Request:
    """One JSON request to TinyTask's REST API over plain HTTP/1.1 (`Connection: close`), sent when
    made and its reply read by `reply()`: the stand-in reads its recipe while the server answers.

    Deliberately small: enough for the fake TinyTask on 127.0.0.1 (replies with a length, or read
    to the end of the connection); no TLS, no redirects, no chunked replies. Failures are `Failure`.
    """

    def __init__(self, api: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        import socket

        self.what = f"{method} {path}"
        scheme, _, rest = api.partition("://")
        netloc, _, prefix = rest.partition("/")
        host, _, port = netloc.rpartition(":") if netloc.rpartition(":")[2].isdigit() else (netloc, "", "80")
        if scheme != "http" or not host:
            fail(f"{self.what}: the stand-in speaks plain http:// to TinyTask only, got {api!r}")
        payload = b"" if body is None else json.dumps(body).encode()
        target = ("/" + prefix.rstrip("/") if prefix else "") + path
        head = (
            f"{method} {target} HTTP/1.1\r\nHost: {netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        )
        try:
            self.connection = socket.create_connection((host.strip("[]"), int(port)), timeout=REST_TIMEOUT)
            self.connection.sendall(head.encode() + payload)
        except OSError as exc:
            fail(f"{self.what}: {exc}")

    def reply(self) -> Any:
        try:
            with self.connection:
                reply = b"".join(iter(lambda: self.connection.recv(65536), b""))
        except OSError as exc:
            fail(f"{self.what}: {exc}")
        return _decode(reply, self.what)


def rest_call(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return Request(api, method, path, body).reply()


def _decode(reply: bytes, what: str) -> Any:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[1].isdigit():
        fail(f"{what}: not an HTTP reply: {reply[:80]!r}")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "chunked" in headers.get("transfer-encoding", ""):
        fail(f"{what}: chunked replies are not supported by the stand-in")
    length = headers.get("content-length", "")
    if length.isdigit():
        body = body[: int(length)]
    status = int(status_line[1])
    if status >= 400:
        fail(f"{what}: HTTP {status}: {body[:200]!r}")
    try:
        return json.loads(body or b"null")
    except ValueError:
        fail(f"{what}: reply is not JSON: {body[:80]!r}")
