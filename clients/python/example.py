"""Try poolkeeper from Python: run `bash scripts/main.sh` first, then

    python3 clients/python/example.py

It shows affinity (a client session keeps its worker, and so its state), a
held lease, and what an error looks like.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from poolkeeper_client import Client, PoolkeeperError  # noqa: E402

pk = Client(os.environ.get("POOLKEEPER_URL", "http://127.0.0.1:8470"))

print("health:", pk.health()["status"])

# The quickstart's workers keep a list per client session, in memory.
for item in ("tea", "milk", "sugar"):
    reply = pk.execute("python", {"op": "append", "item": item}, client_session="alice")
    print(f"alice's items: {reply['items']} (worker {reply['worker_pid']})")

# Hold one worker for several requests.
with pk.acquire("python", timeout=5.0) as lease:
    print("leased", lease.id)
    print("get:", lease.execute({"op": "get"}))

try:
    pk.execute("nope", {})
except PoolkeeperError as e:
    print(f"an error: HTTP {e.status} {e.code}: {e.message}")

pool = pk.pool("python")
print(f"pool python: {pool['sessions']} sessions, {pool['acquisitions']} leases so far, "
      f"reuse rate {pool['reuse_rate']:.2f}")
