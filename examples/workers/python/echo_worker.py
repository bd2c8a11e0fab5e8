"""A poolkeeper worker that answers each ``execute`` with its params unchanged.

The smallest useful worker, for trying a pool out and for tests:

    python3 examples/workers/python/echo_worker.py

It finds ``poolkeeper_worker`` next to itself, so it runs from any directory.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import poolkeeper_worker  # noqa: E402  (needs the path set up above)


def echo(params, ctx):
    return params


if __name__ == "__main__":
    poolkeeper_worker.serve(echo)
