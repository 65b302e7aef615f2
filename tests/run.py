#!/usr/bin/env python3
"""The one command for the whole suite on a fresh clone: `python3 tests/run.py [pytest args]`.

Bootstraps .venv with the test extras through the ./tinyscheduler launcher, then runs pytest.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

loader = importlib.machinery.SourceFileLoader("tinyscheduler_launcher", str(ROOT / "tinyscheduler"))
spec = importlib.util.spec_from_loader(loader.name, loader)
launcher = importlib.util.module_from_spec(spec)
loader.exec_module(launcher)

python = launcher.ensure_venv(("test",))
os.chdir(ROOT)
os.execv(str(python), [str(python), "-m", "pytest", *sys.argv[1:]])
