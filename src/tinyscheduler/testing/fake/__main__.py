"""`python -m tinyscheduler.testing.fake [--host H] [--port P] [--seed FILE.json] [--legacy]`:
serve a fake TinyTask until SIGTERM or Ctrl-C; the first line printed is `listening on <url>`."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

from tinyscheduler.testing.fake.server import FakeTinyTask
from tinyscheduler.testing.fake.store import FakeError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tinyscheduler.testing.fake", description="A TinyTask-compatible server for tests and demos."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seed", metavar="FILE.json", help="JSON array of create_task keyword arguments")
    parser.add_argument("--legacy", action="store_true", help="behave like the old tinytask-mcp 1.0")
    args = parser.parse_args(argv)

    fake = FakeTinyTask(args.host, args.port, legacy=args.legacy)
    if args.seed:
        _seed(parser, fake, args.seed)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    fake.start()
    print(f"listening on {fake.url}", flush=True)
    try:
        done.wait()
    finally:
        fake.stop()
    return 0


def _seed(parser: argparse.ArgumentParser, fake: FakeTinyTask, path: str) -> None:
    try:
        with open(path, encoding="utf-8") as handle:
            seed = json.load(handle)
    except (OSError, ValueError) as exc:
        parser.error(f"{path}: {exc}")
    if not isinstance(seed, list):
        parser.error(f"{path}: expected a JSON array of task objects")
    for number, entry in enumerate(seed):
        try:
            fake.create_task(**entry)
        except (TypeError, FakeError) as exc:
            parser.error(f"{path}: task #{number}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
