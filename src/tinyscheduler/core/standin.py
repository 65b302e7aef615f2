"""How the in-package stand-in goose (testing/standin_goose.py) names itself. It runs no agent, so a
goose that prints this for `--version` must never be taken for goose outside tests and the demo.

A module of its own, importing nothing: the stand-in reads it at every start, and it starts in ms.
"""

STANDIN_MARKER = "tinyscheduler stand-in goose (not goose)"
