"""The real daemon with one fault injected: starting goose raises ValueError($TINYSCHEDULER_TEST_SPAWN_ERROR),
as a NUL byte in the goose arguments once made it do. The storm tests run this instead of `python -m
tinyscheduler` to prove that any exception while starting a run is rolled back once and backed off;
production code reads no such variable.

Usage: python tests/faulty_daemon.py run --daemon [setting flags]
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import tinyscheduler.service.run
from tinyscheduler.cli.main import main


def broken_spawn(*_args: object, **_kwargs: object) -> NoReturn:
    raise ValueError(os.environ["TINYSCHEDULER_TEST_SPAWN_ERROR"])


if __name__ == "__main__":
    tinyscheduler.service.run.spawn = broken_spawn  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
