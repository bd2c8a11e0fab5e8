"""Serve poolkeeper's worker protocol from a Python function.

poolkeeper's ``process`` driver talks to each worker process with
newline-delimited JSON-RPC 2.0 over the worker's stdin and stdout (see
``docs/worker-protocol.md``). This module implements that protocol so that a
worker is one function. It uses the standard library only (Python 3.11+).

Usage::

    import poolkeeper_worker

    MODEL = load_something_slow()        # done once, before the worker is ready

    def handle(params, ctx):
        # params: the client's payload, any JSON value (None when absent)
        # ctx.client_session: the client session's name, or None
        # ctx.state: a dict kept per client session in this worker's memory
        # ctx.request_id: the JSON-RPC id of this request
        if not isinstance(params, dict) or "text" not in params:
            raise poolkeeper_worker.WorkerError("expected {'text': ...}", code=-32602)
        ctx.state["calls"] = ctx.state.get("calls", 0) + 1
        return {"answer": MODEL.run(params["text"]), "calls": ctx.state["calls"]}

    if __name__ == "__main__":
        poolkeeper_worker.serve(handle)

Public API:

``serve(handler, *, reset=None, ready=True)``
    Protects the protocol stream (see below), prints the ``ready``
    notification when ``ready`` is true, then answers requests until stdin
    reaches end of input, and returns. Requests are handled one at a time, in
    the order they arrive; each is answered by its id.

    - ``ping`` is answered with ``"pong"``.
    - ``execute`` calls ``handler(params, ctx)``; its return value, which must
      be JSON-serialisable, becomes the ``result``.
    - ``reset`` calls ``reset()`` when given (its return value is ignored);
      without it the answer is error -32601, which poolkeeper treats as a
      successful reset. ``reset`` does not clear client-session state: the
      hook decides what a clean worker means.
    - Any other method gets error -32601 (method not found), a request that
      is not a JSON-RPC request gets -32600 (invalid request), and a line that
      is not UTF-8 JSON gets -32700 (parse error, id null). The worker keeps
      serving after each of these. Notifications (no ``id``) are ignored.

``WorkerError(message, code=-32000, data=None)``
    Raise it from ``handler`` or ``reset`` to answer with exactly this
    JSON-RPC error. Any other exception becomes error -32000 with
    ``message = str(exc)`` and ``data = {"type": <class name>, "traceback":
    <the last 4000 characters of the traceback>}``; the traceback also goes to
    stderr, which poolkeeper logs. A result that cannot be serialised
    (including NaN and infinities, which are not JSON) becomes error -32000
    as well.

``Context``
    The type of ``ctx``: ``client_session``, ``state``, ``request_id``.

``protect_stdio()``
    What ``serve`` does first; idempotent. Call it yourself at the top of the
    worker when imports or setup may print to stdout.

Client-session state: ``ctx.state`` is one dict per client session, kept in
this process only. At most ``MAX_CLIENT_SESSIONS`` (10000; set the module
attribute before ``serve`` to change it) are kept; the least recently used is
dropped beyond that. Without a client session ``ctx.state``
is a new empty dict on every request. poolkeeper routes a client session back
to the worker it used last, but after a crash or a recycle the next request
reaches a fresh worker with empty state: treat the state as a cache.

Stdout and stdin: only protocol lines may reach poolkeeper on stdout. The
protocol descriptors are moved to private, non-inheritable descriptors; fd 1
then points at stderr and fd 0 at /dev/null. So ``print()``, C extensions and
child processes write to poolkeeper's log instead of corrupting the protocol,
and nothing can read (steal) protocol input. ``sys.stdout`` is line buffered.

Stopping: the worker returns from ``serve`` (and so exits 0) at end of input,
which is how poolkeeper asks a worker to stop; SIGTERM keeps its default
action and ends the process. Keep each response under poolkeeper's
``max_line`` (16 MiB by default): a longer line stops the session.
"""

from __future__ import annotations

import collections
import io
import json
import os
import sys
import traceback
from typing import Any, Callable, Optional

__all__ = [
    "Context",
    "MAX_CLIENT_SESSIONS",
    "WorkerError",
    "protect_stdio",
    "serve",
]

MAX_CLIENT_SESSIONS = 10000
TRACEBACK_LIMIT = 4000

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
SERVER_ERROR = -32000


class WorkerError(Exception):
    """An error to send back as the JSON-RPC ``error`` object, unchanged.

    ``code`` is an integer, ``message`` a string, ``data`` any JSON value or
    None (then ``data`` is left out of the error).
    """

    def __init__(self, message: str, code: int = SERVER_ERROR, data: Any = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class Context:
    """What a handler knows about the request it is serving."""

    __slots__ = ("client_session", "state", "request_id")

    def __init__(self, client_session: Optional[str], state: dict, request_id: Any):
        self.client_session = client_session
        self.state = state
        self.request_id = request_id

    def __repr__(self) -> str:
        return (f"Context(client_session={self.client_session!r}, "
                f"request_id={self.request_id!r})")


_protocol_in: Optional[io.BufferedReader] = None
_protocol_out: Optional[io.BufferedWriter] = None


def protect_stdio() -> None:
    """Keep the protocol on private descriptors; point fd 1 at stderr, fd 0 at /dev/null."""
    global _protocol_in, _protocol_out
    if _protocol_out is not None:
        return
    old_stdout = sys.stdout

    out_fd = os.dup(1)
    os.set_inheritable(out_fd, False)
    in_fd = os.dup(0)
    os.set_inheritable(in_fd, False)
    os.dup2(2, 1)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null_fd, 0)
    finally:
        os.close(null_fd)

    _protocol_out = os.fdopen(out_fd, "wb")
    _protocol_in = os.fdopen(in_fd, "rb")

    # Text printed before this point may still sit in the old buffer; fd 1 is
    # stderr now, so flushing it here sends it to the log, not the protocol.
    if old_stdout is not None:
        try:
            old_stdout.flush()
        except (OSError, ValueError):
            pass
    # Line buffered so that prints show up in the log while a request runs.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8",
                      errors="backslashreplace", closefd=False)


def _encode(message: dict) -> bytes:
    # allow_nan=False: NaN and Infinity are not JSON and would break the session.
    try:
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        # A lone surrogate (e.g. from a "\ud800" escape) has no UTF-8 form;
        # the ASCII form escapes it and stays valid JSON.
        text = json.dumps(message, ensure_ascii=True, separators=(",", ":"),
                          allow_nan=False)
        return text.encode("ascii") + b"\n"


def _error(request_id: Any, code: int, message: str, data: Any = None) -> dict:
    error: dict = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def _exception_error(request_id: Any, exc: BaseException) -> dict:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(text)
    sys.stderr.flush()
    return _error(request_id, SERVER_ERROR, str(exc) or type(exc).__name__,
                  {"type": type(exc).__name__, "traceback": text[-TRACEBACK_LIMIT:]})


def _worker_error(request_id: Any, exc: WorkerError) -> dict:
    code = exc.code
    if isinstance(code, bool) or not isinstance(code, int):
        code = SERVER_ERROR
    return _error(request_id, code, str(exc.message), exc.data)


def _serialised(response: dict) -> bytes:
    """Encodes a response; one that cannot be encoded becomes an error that can."""
    try:
        return _encode(response)
    except (TypeError, ValueError, RecursionError) as exc:
        request_id = response.get("id")
        if "result" in response:
            what = "result is not JSON-serialisable"
        else:
            what = "error data is not JSON-serialisable"
        fallback = _error(request_id, SERVER_ERROR, f"{what}: {exc}",
                          {"type": type(exc).__name__})
        return _encode(fallback)


class _Sessions:
    """Client-session state, least recently used dropped past a bound."""

    def __init__(self, limit: int):
        self._limit = limit
        self._states: collections.OrderedDict[str, dict] = collections.OrderedDict()

    def get(self, client_session: str) -> dict:
        state = self._states.get(client_session)
        if state is None:
            state = {}
            self._states[client_session] = state
            while len(self._states) > self._limit:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(client_session)
        return state


def _valid_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _handle_line(line: bytes, handler: Callable[[Any, Context], Any],
                 reset: Optional[Callable[[], Any]], sessions: _Sessions) -> Optional[dict]:
    """Answers one input line; None when nothing is to be sent back."""
    try:
        request = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        return _error(None, PARSE_ERROR, f"parse error: {exc}")

    if not isinstance(request, dict):
        return _error(None, INVALID_REQUEST, "invalid request: not a JSON object")
    if "id" not in request:
        return None  # a notification: JSON-RPC never answers those
    request_id = request["id"]
    if not _valid_id(request_id):
        return _error(None, INVALID_REQUEST, "invalid request: id must be an integer or a string")
    method = request.get("method")
    if not isinstance(method, str):
        return _error(request_id, INVALID_REQUEST, "invalid request: method must be a string")
    if request.get("jsonrpc", "2.0") != "2.0":
        return _error(request_id, INVALID_REQUEST, 'invalid request: jsonrpc must be "2.0"')
    client_session = request.get("client_session")
    if client_session is not None and not isinstance(client_session, str):
        return _error(request_id, INVALID_REQUEST,
                      "invalid request: client_session must be a string")

    if method == "ping":
        return {"jsonrpc": "2.0", "id": request_id, "result": "pong"}
    if method == "reset":
        if reset is None:
            return _error(request_id, METHOD_NOT_FOUND, "method not found: reset")
        try:
            reset()
        except WorkerError as exc:
            return _worker_error(request_id, exc)
        except Exception as exc:
            return _exception_error(request_id, exc)
        return {"jsonrpc": "2.0", "id": request_id, "result": {}}
    if method != "execute":
        return _error(request_id, METHOD_NOT_FOUND, f"method not found: {method}")

    state = sessions.get(client_session) if client_session is not None else {}
    ctx = Context(client_session, state, request_id)
    try:
        result = handler(request.get("params"), ctx)
    except WorkerError as exc:
        return _worker_error(request_id, exc)
    except Exception as exc:
        return _exception_error(request_id, exc)
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def serve(handler: Callable[[Any, Context], Any], *,
          reset: Optional[Callable[[], Any]] = None, ready: bool = True) -> None:
    """Answers poolkeeper's requests until end of input; see the module docstring."""
    protect_stdio()
    reader, writer = _protocol_in, _protocol_out
    sessions = _Sessions(MAX_CLIENT_SESSIONS)

    def send(data: bytes) -> bool:
        try:
            writer.write(data)
            writer.flush()
            return True
        except BrokenPipeError:
            # poolkeeper closed our stdout: nobody is listening. Point the
            # descriptor at /dev/null so that the flush at exit does not fail
            # again over the bytes still buffered.
            null_fd = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null_fd, writer.fileno(), inheritable=False)
            finally:
                os.close(null_fd)
            return False

    if ready and not send(_encode({"jsonrpc": "2.0", "method": "ready"})):
        return
    while True:
        line = reader.readline()
        if not line:
            break
        if not line.strip():
            continue
        response = _handle_line(line, handler, reset, sessions)
        if response is not None and not send(_serialised(response)):
            break
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
