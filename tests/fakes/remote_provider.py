#!/usr/bin/env python3
"""A local fake of a paid remote browser-session provider (Anchor Browser,
Browserbase, ...) for tests of the "remote" pool driver. Python 3 stdlib only.

    remote_provider.py [--host 127.0.0.1] [--port 0] [--api-key KEY] [--state FILE]
                       [--tls-cert PEM --tls-key PEM]

KEY defaults to $FAKE_PROVIDER_KEY, else "test-key". When ready it prints one
line to stdout, "listening on HOST:PORT"; the access log goes to stderr.
SIGTERM/SIGINT: exit 0. HTTP/1.1 keep-alive; every answer is JSON with a
Content-Length.

Money is integer micro-dollars. A session costs create_fee_micros (default
10000) plus per_hour_micros (default 50000) per started second open, from
creation to deletion or loss, at the prices in force when it was created:
    cost = fee + ceil(ceil(end - created_at) * per_hour / 3600)
The clock is the wall time at start, moved on by the monotonic clock, plus
an offset that only grows (advance_s); every timestamp is UNIX seconds (float)
on it, so an advance bills the open sessions.

/v1 routes need "Authorization: Bearer KEY", else 401 {"error": "unauthorized"}.
  POST   /v1/sessions  a JSON object (empty body: {}); "platform" (a string) and
         "metadata" (an object, at most 4 KiB as JSON) are kept
         201 {"data": {"id": "sess_<16 hex>", "status": "running", "platform":
              str (default "default"), "metadata": {...}, "cdp_url":
              "ws://HOST:PORT/devtools/<id>" (not served; wss:// with TLS),
              "created_at": T}}
         400 {"error": "bad_request", "detail": str} not an object / platform
             not a string;  429 {"error": "too_many_sessions"} (max_sessions)
  GET    /v1/sessions/ID  200 {"data": SESSION}; 404 {"error": "not_found"}
  DELETE /v1/sessions/ID  200 {"data": {"id", "status": "stopped", "cost_micros"}},
         the same again once stopped or lost; 404 for an unknown ID
  GET    /v1/sessions  200 {"data": [SESSION, ...]}, every session, oldest first
  SESSION = {"id", "status": "starting"|"running"|"stopped", "platform", "metadata", "created_at": T,
             "stopped_at": T|null, "cost_micros": int (so far while running)}
A /v1 request: body read (413 over 1 MiB); faults: drop_next, else fail_next,
else fail_rate (a faulty request does nothing, not even auth); auth; the work;
the delay_ms sleep; the answer. A client timing out in the delay still had its
request take effect.

Control routes, no auth:
  GET  /_fake/health   200 {"ok": true}
  GET  /_fake/billing  200 {"open": int, "total_micros": int, "sessions": [{"id",
       "platform", "created_at", "stopped_at", "cost_micros", "lost": bool}],
       "requests": {"create", "get", "delete", "list": int}, "failed_requests": int}
       requests: /v1 requests past auth that reached a route and method, whatever
       the answer; failed_requests: injected failures and drops.
  POST /_fake/control  a JSON object (empty body: no change) with any of
       reset: true          forget sessions, counters, clock offset, settings
       advance_s: 0..1e9    move the clock forward
       create_fee_micros, per_hour_micros: int >= 0  prices of new sessions
       max_sessions: int >= 0 | null  cap on open sessions (null: none)
       fail_next: N         the next N /v1 requests answer fail_status {"error": "injected"}
       fail_rate: 0..1      then a /v1 request fails if rng.random() < fail_rate,
       seed: int (0)        rng = random.Random(seed), restarted when either is set
       fail_status: 400..599 (500)
       drop_next: N         the next N /v1 requests: connection closed, no answer
       delay_ms: 0..600000  every /v1 request answers this much later
       lose: ID             the session stops on the provider's side now: billing
                            ends, "stopped", lost: true (no-op once stopped)
       ready_after_s: 0..3600  new sessions say "starting" (create, get, list)
                            until this long after creation, then "running"
       lose_next_created: N the next N created sessions are lost at once: the
                            create answer says "running", later looks "stopped";
                            they cost just the fee
       N >= 0 is set, not added. Applied: reset, settings, advance_s, lose.
       200 with the settings in force: {"create_fee_micros", "per_hour_micros",
       "max_sessions", "fail_next", "fail_rate", "fail_status", "seed",
       "delay_ms", "drop_next", "lose_next_created", "ready_after_s", "clock_offset_s"}; 400
       bad_request for an unknown key or bad value, 404 not_found for an unknown
       lose ID, and then nothing changes.
Garbage: unknown path 404 not_found; wrong method 405 method_not_allowed (with
Allow); bad JSON 400; a body over 1 MiB 413 payload_too_large, a chunked one
411 length_required (both unread, connection closed); protocol errors answer
JSON too ({"error", "detail"}). Nothing crashes the fake.

--tls-cert/--tls-key: serve https (TLS 1.2+) with this certificate.

--state FILE: sessions and clock offset are written to FILE (temp file +
rename) after every change and read at start, so a restarted fake remembers
its sessions (open ones are billed for the downtime: the clock is wall time).
Settings and counters are not saved. An unreadable FILE: exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import signal
import ssl
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, NamedTuple
from urllib.parse import urlsplit

MAX_BODY = 1 << 20
SIGNALS = {signal.SIGTERM, signal.SIGINT}


class Reply(NamedTuple):
    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


NOT_FOUND = Reply(404, {"error": "not_found"})


def bad_request(detail: str) -> Reply:
    return Reply(400, {"error": "bad_request", "detail": detail})


def parse_object(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object ({} when empty), or None if it is not one."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


@dataclass
class Settings:
    create_fee_micros: int = 10_000
    per_hour_micros: int = 50_000
    max_sessions: int | None = None
    fail_next: int = 0
    fail_rate: float = 0.0
    fail_status: int = 500
    seed: int = 0
    delay_ms: float = 0.0
    drop_next: int = 0
    lose_next_created: int = 0
    ready_after_s: float = 0.0


@dataclass
class Session:
    id: str
    platform: str
    created_at: float
    create_fee_micros: int
    per_hour_micros: int
    stopped_at: float | None = None
    lost: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    ready_at: float = 0.0

    def status(self, now: float) -> str:
        if self.stopped_at is not None:
            return "stopped"
        return "starting" if now < self.ready_at else "running"

    def cost_micros(self, now: float) -> int:
        end = now if self.stopped_at is None else self.stopped_at
        seconds = max(0, math.ceil(end - self.created_at))
        return self.create_fee_micros + (seconds * self.per_hour_micros + 3599) // 3600

    def view(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "status": self.status(now),
                "platform": self.platform, "metadata": self.metadata,
                "created_at": self.created_at, "stopped_at": self.stopped_at,
                "cost_micros": self.cost_micros(now)}


def is_int(value: Any, low: float = 0, high: float = math.inf) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_number(value: Any, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high


CONTROL_KEYS: dict[str, Callable[[Any], bool]] = {
    "reset": lambda v: isinstance(v, bool),
    "advance_s": lambda v: is_number(v, 0, 1e9),
    "create_fee_micros": is_int,
    "per_hour_micros": is_int,
    "max_sessions": lambda v: v is None or is_int(v),
    "fail_next": is_int,
    "fail_rate": lambda v: is_number(v, 0, 1),
    "seed": lambda v: is_int(v, -math.inf),
    "fail_status": lambda v: is_int(v, 400, 599),
    "drop_next": is_int,
    "delay_ms": lambda v: is_number(v, 0, 600_000),
    "lose": lambda v: isinstance(v, str),
    "lose_next_created": is_int,
    "ready_after_s": lambda v: is_number(v, 0, 3600),
}


class Provider:
    """The provider's whole state; every public method holds the one lock."""

    def __init__(self, state_file: str | None) -> None:
        self.lock = threading.Lock()
        self.state_file = state_file
        self.address = ""  # HOST:PORT for cdp_url, set once the server is bound
        self.scheme = "ws"  # "wss" when serving https
        self._wall0 = time.time()
        self._mono0 = time.monotonic()
        self._forget()
        if state_file and os.path.exists(state_file):
            self._load(state_file)

    def _forget(self) -> None:
        self.settings = Settings()
        self.rng = random.Random(self.settings.seed)
        self.offset_s = 0.0
        self.sessions: dict[str, Session] = {}
        self.requests = dict.fromkeys(("create", "get", "delete", "list"), 0)
        self.failed_requests = 0

    def _now(self) -> float:
        return self._wall0 + (time.monotonic() - self._mono0) + self.offset_s

    def _load(self, path: str) -> None:
        with open(path) as f:
            state = json.load(f)
        self.offset_s = float(state["clock_offset_s"])
        for item in state["sessions"]:
            session = Session(**item)
            self.sessions[session.id] = session

    def _save(self) -> None:
        if not self.state_file:
            return
        state = {"clock_offset_s": self.offset_s,
                 "sessions": [asdict(s) for s in self.sessions.values()]}
        temp = self.state_file + ".tmp"
        with open(temp, "w") as f:
            json.dump(state, f)
        os.replace(temp, self.state_file)

    def _open_count(self) -> int:
        return sum(s.stopped_at is None for s in self.sessions.values())

    def begin_request(self) -> tuple[str | None, float, int]:
        """The fault for the next /v1 request ("drop", "fail" or None), the delay
        in seconds and the status of injected failures."""
        with self.lock:
            settings = self.settings
            fault = None
            if settings.drop_next > 0:
                settings.drop_next -= 1
                fault = "drop"
            elif settings.fail_next > 0:
                settings.fail_next -= 1
                fault = "fail"
            elif settings.fail_rate > 0 and self.rng.random() < settings.fail_rate:
                fault = "fail"
            if fault:
                self.failed_requests += 1
            return fault, settings.delay_ms / 1000, settings.fail_status

    def create(self, params: dict[str, Any] | None) -> Reply:
        with self.lock:
            self.requests["create"] += 1
            if params is None:
                return bad_request("the body must be a JSON object")
            platform = params.get("platform", "default")
            if not isinstance(platform, str):
                return bad_request("platform must be a string")
            metadata = params.get("metadata", {})
            if not isinstance(metadata, dict) or len(json.dumps(metadata)) > 4096:
                return bad_request("metadata must be an object of at most 4096 bytes as JSON")
            limit = self.settings.max_sessions
            if limit is not None and self._open_count() >= limit:
                return Reply(429, {"error": "too_many_sessions"})
            now = self._now()
            session = Session("sess_" + secrets.token_hex(8), platform, now,
                              self.settings.create_fee_micros, self.settings.per_hour_micros,
                              metadata=metadata, ready_at=now + self.settings.ready_after_s)
            self.sessions[session.id] = session
            if self.settings.lose_next_created > 0:
                self.settings.lose_next_created -= 1
                session.stopped_at, session.lost = now, True
            self._save()
            return Reply(201, {"data": {
                "id": session.id, "status": "starting" if self.settings.ready_after_s > 0 else "running",
                "cdp_url": f"{self.scheme}://{self.address}/devtools/{session.id}",
                "platform": platform, "metadata": metadata, "created_at": now}})

    def get(self, session_id: str) -> Reply:
        with self.lock:
            self.requests["get"] += 1
            session = self.sessions.get(session_id)
            if session is None:
                return NOT_FOUND
            return Reply(200, {"data": session.view(self._now())})

    def delete(self, session_id: str) -> Reply:
        with self.lock:
            self.requests["delete"] += 1
            session = self.sessions.get(session_id)
            if session is None:
                return NOT_FOUND
            now = self._now()
            if session.stopped_at is None:
                session.stopped_at = now
                self._save()
            return Reply(200, {"data": {"id": session.id, "status": "stopped",
                                        "cost_micros": session.cost_micros(now)}})

    def list_sessions(self) -> Reply:
        with self.lock:
            self.requests["list"] += 1
            now = self._now()
            return Reply(200, {"data": [s.view(now) for s in self.sessions.values()]})

    def billing(self) -> Reply:
        with self.lock:
            now = self._now()
            sessions = [{"id": s.id, "platform": s.platform, "created_at": s.created_at,
                         "stopped_at": s.stopped_at, "cost_micros": s.cost_micros(now),
                         "lost": s.lost} for s in self.sessions.values()]
            return Reply(200, {
                "open": self._open_count(), "sessions": sessions,
                "total_micros": sum(s["cost_micros"] for s in sessions),
                "requests": dict(self.requests), "failed_requests": self.failed_requests})

    def control(self, params: dict[str, Any] | None) -> Reply:
        if params is None:
            return bad_request("the body must be a JSON object")
        for key, value in params.items():
            check = CONTROL_KEYS.get(key)
            if check is None:
                return bad_request(f"unknown key {key!r}")
            if not check(value):
                return bad_request(f"bad value for {key}: {value!r}")
        with self.lock:
            lose = params.get("lose")
            if lose is not None and lose not in self.sessions:
                return NOT_FOUND
            if params.get("reset"):
                self._forget()
            for field in fields(Settings):
                if field.name in params:
                    setattr(self.settings, field.name, params[field.name])
            if "seed" in params or "fail_rate" in params:
                self.rng = random.Random(self.settings.seed)
            self.offset_s += params.get("advance_s", 0)
            session = self.sessions.get(lose) if lose is not None else None
            if session is not None and session.stopped_at is None:
                session.stopped_at, session.lost = self._now(), True
            self._save()
            return Reply(200, {**asdict(self.settings), "clock_offset_s": self.offset_s})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Not "HTTP/0.9": an answer to garbage keeps its status line and headers.
    default_request_version = "HTTP/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes
    server: FakeServer

    def _dispatch(self) -> None:
        try:
            self._handle()
        except ConnectionError:
            self.close_connection = True
        except Exception:  # a bug in the fake: say so, keep serving
            self.log_error("internal error:\n%s", traceback.format_exc())
            self.close_connection = True
            self._send(Reply(500, {"error": "internal"}))

    # Every method is routed; one a route does not take answers 405.
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            return
        path = urlsplit(self.path).path
        if path == "/v1" or path.startswith("/v1/"):
            self._handle_api(path, body)
        else:
            self._send(self._control_route(path, body))

    def _read_body(self) -> bytes | None:
        """The request body, or None once an error has been answered."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            error = Reply(411, {"error": "length_required"})
        else:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                length = -1
            if length < 0:
                error = bad_request("bad Content-Length")
            elif length > MAX_BODY:
                error = Reply(413, {"error": "payload_too_large"})
            else:
                return self.rfile.read(length)
        self.close_connection = True  # the body is left unread
        self._send(error)
        return None

    def _handle_api(self, path: str, body: bytes) -> None:
        fault, delay_s, fail_status = self.server.provider.begin_request()
        reply = None
        if fault == "fail":
            reply = Reply(fail_status, {"error": "injected"})
        elif fault is None:
            reply = self._api_route(path, body)
        if delay_s > 0:
            time.sleep(delay_s)
        if reply is None:
            self.log_message('"%s" dropped without an answer', self.requestline)
            self.close_connection = True
            return
        self._send(reply)

    def _api_route(self, path: str, body: bytes) -> Reply:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.server.api_key:
            return Reply(401, {"error": "unauthorized"})
        provider = self.server.provider
        if path == "/v1/sessions":
            return self._by_method({"GET": provider.list_sessions,
                                    "POST": lambda: provider.create(parse_object(body))})
        prefix = "/v1/sessions/"
        session_id = path[len(prefix):] if path.startswith(prefix) else ""
        if session_id and "/" not in session_id:
            return self._by_method({"GET": lambda: provider.get(session_id),
                                    "DELETE": lambda: provider.delete(session_id)})
        return NOT_FOUND

    def _control_route(self, path: str, body: bytes) -> Reply:
        provider = self.server.provider
        routes: dict[str, dict[str, Callable[[], Reply]]] = {
            "/_fake/health": {"GET": lambda: Reply(200, {"ok": True})},
            "/_fake/billing": {"GET": provider.billing},
            "/_fake/control": {"POST": lambda: provider.control(parse_object(body))},
        }
        methods = routes.get(path)
        return NOT_FOUND if methods is None else self._by_method(methods)

    def _by_method(self, methods: dict[str, Callable[[], Reply]]) -> Reply:
        action = methods.get(self.command)
        if action is None:
            return Reply(405, {"error": "method_not_allowed"}, (("Allow", ", ".join(methods)),))
        return action()

    def _send(self, reply: Reply) -> None:
        data = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors found by the base class (a bad request line, an
        unknown method, ...) answer JSON too, and close the connection."""
        self.log_error("code %d, message %s", code, message)
        self.close_connection = True
        name = HTTPStatus(code).phrase.lower().replace(" ", "_")
        self._send(Reply(code, {"error": name, "detail": message or ""}))


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], provider: Provider, api_key: str) -> None:
        super().__init__(address, Handler)
        self.provider = provider
        self.api_key = api_key


def main() -> int:
    parser = argparse.ArgumentParser(description="Fake remote browser-session provider; "
                                                 "see the module docstring.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--api-key", default=os.environ.get("FAKE_PROVIDER_KEY", "test-key"))
    parser.add_argument("--state", metavar="FILE", help="save and restore sessions in FILE")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve https with this certificate chain")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    args = parser.parse_args()
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if not args.api_key:
        parser.error("the API key must not be empty")
    try:
        provider = Provider(args.state)
    except (OSError, ValueError, KeyError, TypeError) as error:
        print(f"remote_provider: cannot load --state {args.state}: {error!r}", file=sys.stderr)
        return 2
    # Blocked before any thread starts, so every thread inherits the mask and
    # only sigwait below ever sees the two signals.
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    server = FakeServer((args.host, args.port), provider, args.api_key)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake happens on the connection's own thread, at its first read.
        server.socket = context.wrap_socket(server.socket, server_side=True,
                                            do_handshake_on_connect=False)
        provider.scheme = "wss"
    host, port = server.server_address[:2]
    provider.address = f"{host}:{port}"
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    print(f"listening on {host}:{port}", flush=True)
    signum = signal.sigwait(SIGNALS)
    print(f"remote_provider: {signal.Signals(signum).name}, exiting", file=sys.stderr)
    server.shutdown()
    server.server_close()
    provider.lock.acquire()  # held to the end: no state write is cut in half
    return 0


if __name__ == "__main__":
    sys.exit(main())
