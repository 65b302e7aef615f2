# The part of sdnotify (untyped, 0.3.x) that adapters/systemd.py uses.
import socket

class SystemdNotifier:
    debug: bool
    socket: socket.socket | None
    def __init__(self, debug: bool = False) -> None: ...
    def notify(self, state: str) -> None: ...
