"""The control socket: a Unix stream socket in the state folder, private to its user.

One request per connection: a JSON object on one line, at most MAX_REQUEST_BYTES; one JSON reply
line. The socket file is made 0600 (and only the daemon's user passes the peer check on top of
that). A socket path is limited to 107 bytes, which a deep base path exceeds, so both ends reach the
socket through the folder's descriptor (`/proc/self/fd/N/control.sock`), whatever its length.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import socket
import stat
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A request is a few hundred bytes; anything longer is refused unread.
MAX_REQUEST_BYTES = 4096
#: Replies carry the pauses and the runs in flight: small, but not tiny.
MAX_REPLY_BYTES = 1024 * 1024


#: /proc/PID/loginuid of a process outside any login session.
NO_LOGIN_UID = 2**32 - 1


@dataclass(frozen=True)
class Peer:
    """Who is at the other end of a connection (SO_PEERCRED: the kernel's word, not the client's)."""

    pid: int
    uid: int
    gid: int
    #: The uid its login session began as (the kernel's audit login uid, kept across sudo), if any.
    login_uid: int | None = None

    @property
    def user(self) -> str:
        return user_name(self.uid)

    @property
    def operator(self) -> str:
        """Who asked, as pauses and comments name them: `alice (as tinyscheduler)` after a
        `sudo -u tinyscheduler`, else the user."""
        return operator(self.uid, self.login_uid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def operator(uid: int, login_uid: int | None) -> str:
    if login_uid is None or login_uid == uid:
        return user_name(uid)
    return f"{user_name(login_uid)} (as {user_name(uid)})"


def login_uid_of(pid: int | str) -> int | None:
    """The audit login uid of a process (`self` for this one); None when unset or unknown."""
    try:
        with open(f"/proc/{pid}/loginuid", "rb") as handle:
            value = int(handle.read(16))
    except (OSError, ValueError):
        return None
    return None if value == NO_LOGIN_UID else value


def peer_of(sock: socket.socket) -> Peer:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return Peer(pid, uid, gid, login_uid_of(pid))


@contextlib.contextmanager
def _short_path(path: Path) -> Iterator[str]:
    """`path` as a name short enough for a socket address, valid while the block runs."""
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{folder}/{path.name}"
    finally:
        os.close(folder)


def bind(path: Path, backlog: int) -> socket.socket:
    """A listening socket at `path`, mode 0600. A socket left there by a daemon that died is
    replaced (the caller holds the instance lock); anything else there is an OSError."""
    with contextlib.suppress(FileNotFoundError):
        mode = os.lstat(path).st_mode
        if not stat.S_ISSOCK(mode):
            raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _short_path(path) as short:
            sock.bind(short)
        # Not the umask (process-wide: worker threads create files meanwhile). Until this chmod,
        # the mode the umask gave the file applies; the peer check refuses other users anyway.
        os.chmod(path, 0o600)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def ask(path: Path, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send one request and return the reply (a blocking client, for the command line).

    Raises OSError (ENOENT, ECONNREFUSED: nobody listens; EACCES: not ours), TimeoutError, or
    ValueError for a reply that is not one JSON object."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        with _short_path(path) as short:
            sock.connect(short)
        try:
            sock.sendall(encode(request))
            sock.shutdown(socket.SHUT_WR)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before it read the request (another user): the refusal is there to read
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_REPLY_BYTES:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                if not chunks:
                    raise
                break  # the reply came, then the reset of a request it refused unread: its end
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    reply = json.loads(b"".join(chunks)[:MAX_REPLY_BYTES].decode())
    if not isinstance(reply, dict):
        raise ValueError("the reply is not a JSON object")
    return reply
