"""The real daemon with one test hook injected: every pass blocks while the file named by
$TINYSCHEDULER_TEST_WEDGE_FILE exists. The watchdog tests run this instead of `python -m
tinyscheduler` to prove that a stuck pass stops the pings; production code reads no such variable.

Usage: python tests/wedged_daemon.py run --daemon [setting flags]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio

from tinyscheduler.cli.main import build_parser, load_from_args
from tinyscheduler.cli.run import run_command
from tinyscheduler.service.scheduler import Hooks


def main() -> int:
    wedge = Path(os.environ["TINYSCHEDULER_TEST_WEDGE_FILE"])

    async def wedged() -> None:
        # Shielded: a wedged pass ignores cancellation, as a pass stuck in a blocking call would.
        with anyio.CancelScope(shield=True):
            while wedge.exists():
                await anyio.sleep(0.1)

    args = build_parser().parse_args(sys.argv[1:])
    hooks = Hooks(before_pass=wedged)
    return run_command(load_from_args(args), once=args.once, daemon=args.daemon, json_output=args.json, hooks=hooks)


if __name__ == "__main__":
    sys.exit(main())
