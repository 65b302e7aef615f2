"""How the in-package stand-ins name themselves (core.goose decides when the stand-in may run).

The stand-in goose (testing/standin_goose.py) runs no agent: a goose that prints STANDIN_MARKER for
`--version` must never be taken for goose outside tests and the demo, or real tasks would be
reported done with no work done. It may run against the in-package fake TinyTask, whose `GET
/health` carries FAKE_SERVER_FIELD (the real server never sends it), or where ALLOW_STANDIN_ENV
says so.

A module of its own, importing nothing: the stand-in reads it at every start, and it starts in ms.
"""

STANDIN_MARKER = "tinyscheduler stand-in goose (not goose)"
#: Added by the fake TinyTask to its health document, with FAKE_SERVER_VALUE.
FAKE_SERVER_FIELD = "tinyschedulerFake"
FAKE_SERVER_VALUE = "in-package fake TinyTask (not TinyTask)"
#: Test-only switch (process environment, never a setting): let the stand-in run against any server.
ALLOW_STANDIN_ENV = "TINYSCHEDULER_ALLOW_STANDIN"
