"""A TinyTask-compatible server for the tests and the demo, and the task store behind it.

Follows the contract in the project's TinyTask reference, quirks included (limit=0 means "all",
`assigned_to=` matches nothing, REST create ignores `status`, signup ignores blocking, parent
status recomputed from children). Standard library only; served from a thread on 127.0.0.1.

- store.py: the tasks, comments and the server's rules (the contract itself);
- rest.py: the `/api/v1` routes; tools.py: the MCP tools; mcp.py: JSON-RPC and its two transports;
- server.py: the threaded HTTP server, `FakeTinyTask`; `python -m tinyscheduler.testing.fake` serves one.
"""

from tinyscheduler.testing.fake.server import FakeTinyTask
from tinyscheduler.testing.fake.store import STATUSES, FakeError, Store

__all__ = ["STATUSES", "FakeError", "FakeTinyTask", "Store"]
