"""A poolkeeper worker that keeps a list per client session, to show affinity.

Each worker process keeps its own state in memory, so a client session sees
its items only while poolkeeper routes it back to the same worker (which it
does, by affinity, until that worker crashes or is recycled). ``worker_pid`` in
every answer shows which worker served the request.

Params of ``execute``:

- ``{"op": "append", "item": X}``: appends X to this client session's items;
- ``{"op": "get"}``: changes nothing.

Both answer ``{"items": [...], "count": n, "worker_pid": pid}``. Without a
client session the items start empty on every request.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import poolkeeper_worker  # noqa: E402  (needs the path set up above)
from poolkeeper_worker import WorkerError  # noqa: E402

# A list longer than this would make the answer unwieldy; refuse instead.
MAX_ITEMS = 10000


def handle(params, ctx):
    if not isinstance(params, dict):
        raise WorkerError('params must be an object like {"op": "get"}', code=-32602)
    op = params.get("op")
    items = ctx.state.setdefault("items", [])
    if op == "append":
        if "item" not in params:
            raise WorkerError('"append" needs an "item"', code=-32602)
        if len(items) >= MAX_ITEMS:
            raise WorkerError(f"at most {MAX_ITEMS} items per client session", code=-32602)
        items.append(params["item"])
    elif op != "get":
        raise WorkerError(f'unknown op {op!r}: use "append" or "get"', code=-32602)
    return {"items": items, "count": len(items), "worker_pid": os.getpid()}


if __name__ == "__main__":
    poolkeeper_worker.serve(handle)
