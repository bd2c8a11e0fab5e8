#!/usr/bin/env python3
"""Tests for the fake remote provider (remote_provider.py).

Each fake runs as a real subprocess on port 0 and is spoken to over HTTP on
loopback. Every wait has a generous deadline; nothing waits a fixed time to
synchronise. Run from the repository root with:

    python3 tests/fakes/remote_provider_test.py
"""

from __future__ import annotations

import http.client
import json
import math
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

FAKE = Path(__file__).resolve().parent / "remote_provider.py"
KEY = "suite-key-0123"
DEADLINE_S = 60.0
MAX_BODY = 1 << 20
FEE, PER_HOUR = 10_000, 50_000


def expected_cost(created_at: float, end: float, fee: int = FEE, per_hour: int = PER_HOUR) -> int:
    """The documented formula, on the timestamps the fake reported."""
    return fee + (math.ceil(end - created_at) * per_hour + 3599) // 3600


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@dataclass
class Answer:
    status: int
    body: Any
    headers: http.client.HTTPMessage


def read_answer(response: http.client.HTTPResponse) -> Answer:
    data = response.read()
    return Answer(response.status, json.loads(data) if data else None, response.headers)


def raw_exchange(port: int, data: bytes) -> Answer:
    """Sends raw bytes on a fresh connection and parses the one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return read_answer(response)


class FakeProcess:
    """One remote_provider.py subprocess; its log goes to a temporary file."""

    def __init__(self, *extra: str, key: str | None = KEY, env: dict[str, str] | None = None):
        command = [sys.executable, str(FAKE), "--port", "0", *extra]
        if key is not None:
            command += ["--api-key", key]
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self.log,
                                     env=env, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.append(self.proc.stdout.readline()))
        reader.start()
        reader.join(DEADLINE_S)
        if reader.is_alive():
            self.proc.kill()
            reader.join(DEADLINE_S)
        match = re.fullmatch(r"listening on 127\.0\.0\.1:(\d+)\n", lines[0] if lines else "")
        if not match:
            log = self.stderr()
            self.kill()
            raise AssertionError(f"the fake did not start: {lines!r}\n{log}")
        self.port = int(match[1])

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, signum: int = signal.SIGTERM) -> tuple[int, str]:
        """Signals the fake and returns its exit status and the rest of its stdout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        rest = self.proc.stdout.read()
        self.proc.stdout.close()
        return self.proc.wait(DEADLINE_S), rest

    def kill(self) -> None:
        """Kills the fake if it still runs, and frees its pipe and log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(DEADLINE_S)
        self.proc.stdout.close()
        self.log.close()

    def connect(self, timeout: float = DEADLINE_S) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def call(self, method: str, path: str, body: Any = None, *, key: str | None = KEY,
             raw: bytes | None = None, timeout: float = DEADLINE_S) -> Answer:
        headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self.connect(timeout)
        try:
            conn.request(method, path, body=raw, headers=headers)
            return read_answer(conn.getresponse())
        finally:
            conn.close()

    def create(self, **params: Any) -> dict[str, Any]:
        answer = self.call("POST", "/v1/sessions", params)
        assert answer.status == 201, (answer.status, answer.body)
        return answer.body["data"]

    def session(self, session_id: str) -> dict[str, Any]:
        answer = self.call("GET", f"/v1/sessions/{session_id}")
        assert answer.status == 200, (answer.status, answer.body)
        return answer.body["data"]

    def delete(self, session_id: str) -> dict[str, Any]:
        answer = self.call("DELETE", f"/v1/sessions/{session_id}")
        assert answer.status == 200, (answer.status, answer.body)
        return answer.body["data"]

    def billing(self) -> dict[str, Any]:
        answer = self.call("GET", "/_fake/billing", key=None)
        assert answer.status == 200, (answer.status, answer.body)
        return answer.body

    def control(self, **settings: Any) -> dict[str, Any]:
        answer = self.call("POST", "/_fake/control", settings, key=None)
        assert answer.status == 200, (answer.status, answer.body)
        return answer.body


class SharedFakeTest(unittest.TestCase):
    """Tests sharing one fake, reset before each test."""

    fake: FakeProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.fake = FakeProcess()

    @classmethod
    def tearDownClass(cls) -> None:
        status, rest = cls.fake.stop()
        log = cls.fake.stderr()
        cls.fake.kill()
        assert status == 0 and rest == "", (status, rest, log)

    def setUp(self) -> None:
        self.fake.control(reset=True)

    def assert_error(self, answer: Answer, status: int, error: str) -> None:
        self.assertEqual(answer.status, status, answer.body)
        self.assertEqual(answer.body["error"], error)
        self.assertIsNotNone(answer.headers["Content-Length"])


class ApiTest(SharedFakeTest):
    def test_health_needs_no_key(self) -> None:
        answer = self.fake.call("GET", "/_fake/health", key=None)
        self.assertEqual((answer.status, answer.body), (200, {"ok": True}))

    def test_every_v1_route_needs_the_key_and_a_refused_request_does_nothing(self) -> None:
        session = self.fake.create()
        routes = [("POST", "/v1/sessions"), ("GET", "/v1/sessions"),
                  ("GET", f"/v1/sessions/{session['id']}"),
                  ("DELETE", f"/v1/sessions/{session['id']}"), ("GET", "/v1/nope")]
        for method, path in routes:
            for key in (None, "wrong-key", ""):
                with self.subTest(method=method, path=path, key=key):
                    answer = self.fake.call(method, path, key=key)
                    self.assertEqual((answer.status, answer.body), (401, {"error": "unauthorized"}))
        basic = self.fake.connect()
        basic.request("GET", "/v1/sessions", headers={"Authorization": f"Basic {KEY}"})
        self.assertEqual(basic.getresponse().status, 401)
        basic.close()
        billing = self.fake.billing()
        self.assertEqual(billing["open"], 1)
        self.assertEqual(billing["requests"], {"create": 1, "get": 0, "delete": 0, "list": 0})

    def test_create_answers_a_running_session(self) -> None:
        before = time.time()
        session = self.fake.create()
        self.assertEqual(set(session),
                         {"id", "status", "cdp_url", "platform", "metadata", "created_at"})
        self.assertEqual(session["metadata"], {})
        self.assertRegex(session["id"], r"^sess_[0-9a-f]{16}$")
        self.assertEqual(session["status"], "running")
        self.assertEqual(session["platform"], "default")
        self.assertEqual(session["cdp_url"],
                         f"ws://127.0.0.1:{self.fake.port}/devtools/{session['id']}")
        self.assertIsInstance(session["created_at"], float)
        self.assertLess(abs(session["created_at"] - before), 300)  # UNIX seconds
        self.assertEqual(self.fake.create(platform="chrome-linux", extra=[1])["platform"],
                         "chrome-linux")
        empty = self.fake.call("POST", "/v1/sessions", raw=b"")
        self.assertEqual((empty.status, empty.body["data"]["platform"]), (201, "default"))
        self.assertEqual(self.fake.billing()["open"], 3)

    def test_create_keeps_metadata_and_lists_it(self) -> None:
        tag = {"poolkeeper": "abc/pool/7", "n": [1, 2]}
        session = self.fake.create(metadata=tag)
        self.assertEqual(session["metadata"], tag)
        self.assertEqual(self.fake.session(session["id"])["metadata"], tag)
        listed = self.fake.call("GET", "/v1/sessions").body["data"]
        self.assertEqual([s["metadata"] for s in listed], [tag])
        for bad in ([1], "text", 7, {"big": "x" * 5000}):
            with self.subTest(metadata=str(bad)[:20]):
                self.assert_error(self.fake.call("POST", "/v1/sessions", {"metadata": bad}),
                                  400, "bad_request")
        self.assertEqual(self.fake.billing()["open"], 1)

    def test_create_refuses_a_body_that_is_not_a_json_object(self) -> None:
        bodies = [b"[]", b"42", b'"text"', b"null", b"{", b"not json", b"\xff\xfe\x00",
                  b"[" * 100_000, b'{"platform": 7}', b'{"platform": null}']
        for raw in bodies:
            with self.subTest(raw=raw[:20]):
                self.assert_error(self.fake.call("POST", "/v1/sessions", raw=raw),
                                  400, "bad_request")
        billing = self.fake.billing()
        self.assertEqual((billing["open"], billing["sessions"]), (0, []))
        self.assertEqual(billing["requests"]["create"], len(bodies))

    def test_get_reports_a_session_running_then_stopped(self) -> None:
        session = self.fake.create()
        running = self.fake.session(session["id"])
        self.assertEqual(set(running), {"id", "status", "platform", "metadata", "created_at",
                                        "stopped_at", "cost_micros"})
        self.assertEqual((running["id"], running["status"], running["stopped_at"]),
                         (session["id"], "running", None))
        self.assertEqual(running["created_at"], session["created_at"])
        self.assertGreaterEqual(running["cost_micros"], FEE)
        deleted = self.fake.delete(session["id"])
        stopped = self.fake.session(session["id"])
        self.assertEqual(stopped["status"], "stopped")
        self.assertGreaterEqual(stopped["stopped_at"], stopped["created_at"])
        self.assertEqual(stopped["cost_micros"], deleted["cost_micros"])
        self.assert_error(self.fake.call("GET", "/v1/sessions/sess_0000000000000000"),
                          404, "not_found")

    def test_delete_is_idempotent_and_bills_started_seconds(self) -> None:
        session = self.fake.create()
        first = self.fake.delete(session["id"])
        self.assertEqual(set(first), {"id", "status", "cost_micros"})
        self.assertEqual((first["id"], first["status"]), (session["id"], "stopped"))
        stopped_at = self.fake.session(session["id"])["stopped_at"]
        self.assertEqual(first["cost_micros"], expected_cost(session["created_at"], stopped_at))
        self.fake.control(advance_s=3600)
        self.assertEqual(self.fake.delete(session["id"]), first)
        self.assertEqual(self.fake.session(session["id"])["stopped_at"], stopped_at)
        self.assert_error(self.fake.call("DELETE", "/v1/sessions/sess_nope"), 404, "not_found")

    def test_list_shows_every_session_oldest_first(self) -> None:
        ids = [self.fake.create()["id"] for _ in range(3)]
        self.fake.delete(ids[1])
        answer = self.fake.call("GET", "/v1/sessions")
        self.assertEqual(answer.status, 200)
        listed = answer.body["data"]
        self.assertEqual([s["id"] for s in listed], ids)
        self.assertEqual([s["status"] for s in listed], ["running", "stopped", "running"])
        for item in listed:
            now = self.fake.session(item["id"])
            self.assertEqual(item, now | {"cost_micros": item["cost_micros"]})

    def test_sessions_are_billed_per_started_second_at_their_creation_prices(self) -> None:
        old = self.fake.create()
        settings = self.fake.control(create_fee_micros=0, per_hour_micros=3_600_000)
        self.assertEqual((settings["create_fee_micros"], settings["per_hour_micros"]),
                         (0, 3_600_000))
        new = self.fake.create()
        self.fake.control(advance_s=3600)
        running = self.fake.session(old["id"])
        self.assertGreaterEqual(running["cost_micros"], FEE + PER_HOUR)
        old_cost, new_cost = self.fake.delete(old["id"]), self.fake.delete(new["id"])
        old_end = self.fake.session(old["id"])["stopped_at"]
        new_end = self.fake.session(new["id"])["stopped_at"]
        self.assertGreaterEqual(old_end - old["created_at"], 3600)
        self.assertEqual(old_cost["cost_micros"], expected_cost(old["created_at"], old_end))
        self.assertEqual(new_cost["cost_micros"],
                         expected_cost(new["created_at"], new_end, 0, 3_600_000))
        # One hour plus the few real seconds the test took, rounded up.
        self.assertGreaterEqual(new_cost["cost_micros"], 3601 * 1000)
        self.assertLess(new_cost["cost_micros"], (3600 + DEADLINE_S) * 1000)
        self.assertLess(old_cost["cost_micros"], FEE + PER_HOUR + PER_HOUR * DEADLINE_S / 3600 + 1)

    def test_the_clock_only_moves_forward_and_stamps_unix_seconds(self) -> None:
        first = self.fake.create()["created_at"]
        self.assertEqual(self.fake.control(advance_s=1000)["clock_offset_s"], 1000)
        self.assertEqual(self.fake.control(advance_s=0.5)["clock_offset_s"], 1000.5)
        second = self.fake.create()["created_at"]
        self.assertGreaterEqual(second - first, 1000.5)
        self.assertLess(second - first, 1000.5 + DEADLINE_S)
        self.assert_error(self.fake.call("POST", "/_fake/control", {"advance_s": -1}, key=None),
                          400, "bad_request")

    def test_billing_reports_sessions_counts_and_totals(self) -> None:
        kept, deleted, lost = (self.fake.create(platform=p)["id"] for p in ("a", "b", "c"))
        self.fake.delete(deleted)
        self.fake.control(lose=lost)
        self.fake.session(kept)
        self.fake.call("GET", "/v1/sessions")
        self.fake.call("GET", "/v1/sessions/sess_unknown")
        self.fake.control(fail_next=1)
        self.assert_error(self.fake.call("GET", "/v1/sessions"), 500, "injected")
        billing = self.fake.billing()
        self.assertEqual(set(billing), {"open", "sessions", "total_micros", "requests",
                                        "failed_requests"})
        self.assertEqual(billing["open"], 1)
        self.assertEqual(billing["requests"], {"create": 3, "get": 2, "delete": 1, "list": 1})
        self.assertEqual(billing["failed_requests"], 1)
        sessions = billing["sessions"]
        self.assertEqual([(s["id"], s["platform"], s["lost"]) for s in sessions],
                         [(kept, "a", False), (deleted, "b", False), (lost, "c", True)])
        for item in sessions:
            self.assertEqual(set(item), {"id", "platform", "created_at", "stopped_at",
                                         "cost_micros", "lost"})
            self.assertEqual(item["stopped_at"] is None, item["id"] == kept)
        for item in sessions[1:]:
            self.assertEqual(item["cost_micros"],
                             expected_cost(item["created_at"], item["stopped_at"]))
        self.assertEqual(billing["total_micros"], sum(s["cost_micros"] for s in sessions))

    def test_keep_alive_serves_many_answers_on_one_connection(self) -> None:
        conn = self.fake.connect()
        self.addCleanup(conn.close)
        auth = {"Authorization": f"Bearer {KEY}"}
        requests = [("POST", "/v1/sessions", b"{}", auth, 201),
                    ("GET", "/v1/sessions", None, auth, 200),
                    ("GET", "/v1/sessions/sess_x", None, auth, 404),
                    ("GET", "/v1/sessions", None, {}, 401),
                    ("PUT", "/v1/sessions", b"{}", auth, 405),
                    ("POST", "/v1/sessions", b"[", auth, 400),
                    ("GET", "/nope", None, {}, 404),
                    ("GET", "/_fake/billing", None, {}, 200)]
        sock = None
        for method, path, body, headers, status in requests:
            with self.subTest(method=method, path=path):
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                answer = read_answer(response)
                self.assertEqual(answer.status, status)
                self.assertEqual(int(answer.headers["Content-Length"]),
                                 len(json.dumps(answer.body).encode()))
                self.assertEqual(answer.headers["Content-Type"], "application/json")
                self.assertFalse(response.will_close)
                sock = sock or conn.sock
                self.assertIs(conn.sock, sock)


class FaultTest(SharedFakeTest):
    def test_fail_next_answers_injected_errors_that_do_nothing(self) -> None:
        self.assertEqual(self.fake.control(fail_next=3)["fail_next"], 3)
        self.assert_error(self.fake.call("POST", "/v1/sessions", {}), 500, "injected")
        self.assert_error(self.fake.call("POST", "/v1/sessions", {}, key=None), 500, "injected")
        self.assert_error(self.fake.call("GET", "/v1/whatever"), 500, "injected")
        self.assertEqual(self.fake.call("POST", "/v1/sessions", {}).status, 201)
        billing = self.fake.billing()
        self.assertEqual((billing["open"], billing["failed_requests"]), (1, 3))
        self.assertEqual(billing["requests"]["create"], 1)
        self.assertEqual(self.fake.control()["fail_next"], 0)

    def test_fail_status_sets_the_injected_status(self) -> None:
        self.fake.control(fail_next=1, fail_status=503)
        self.assert_error(self.fake.call("GET", "/v1/sessions"), 503, "injected")
        self.assertEqual(self.fake.call("GET", "/v1/sessions").status, 200)

    def test_fail_rate_follows_the_seeded_sequence(self) -> None:
        rng = random.Random(42)
        expected = [500 if rng.random() < 0.3 else 200 for _ in range(60)]
        self.assertIn(500, expected)
        self.assertIn(200, expected)
        self.fake.control(fail_rate=0.3, seed=42)
        first = [self.fake.call("GET", "/v1/sessions").status for _ in expected]
        self.fake.control(seed=42)  # restarts the sequence
        second = [self.fake.call("GET", "/v1/sessions").status for _ in expected]
        self.assertEqual(first, expected)
        self.assertEqual(second, expected)
        billing = self.fake.billing()
        self.assertEqual(billing["failed_requests"], 2 * expected.count(500))
        self.assertEqual(billing["requests"]["list"], 2 * expected.count(200))
        self.fake.control(fail_rate=1)
        self.assert_error(self.fake.call("GET", "/v1/sessions"), 500, "injected")
        self.fake.control(fail_rate=0)
        self.assertEqual(self.fake.call("GET", "/v1/sessions").status, 200)

    def test_drop_next_closes_the_connection_without_an_answer(self) -> None:
        conn = self.fake.connect()
        self.addCleanup(conn.close)
        auth = {"Authorization": f"Bearer {KEY}"}
        conn.request("GET", "/v1/sessions", headers=auth)
        self.assertEqual(conn.getresponse().read(), b'{"data": []}')
        self.fake.control(drop_next=2)
        conn.request("POST", "/v1/sessions", body=b"{}", headers=auth)
        with self.assertRaises(http.client.RemoteDisconnected):
            conn.getresponse()
        conn.close()
        with self.assertRaises(http.client.RemoteDisconnected):
            self.fake.call("POST", "/v1/sessions", {})
        self.assertEqual(self.fake.call("POST", "/v1/sessions", {}).status, 201)
        billing = self.fake.billing()
        self.assertEqual((billing["open"], billing["failed_requests"]), (1, 2))
        self.assertEqual(billing["requests"]["create"], 1)

    def test_drop_next_comes_before_fail_next(self) -> None:
        self.fake.control(drop_next=1, fail_next=1)
        with self.assertRaises(http.client.RemoteDisconnected):
            self.fake.call("GET", "/v1/sessions")
        self.assert_error(self.fake.call("GET", "/v1/sessions"), 500, "injected")
        self.assertEqual(self.fake.call("GET", "/v1/sessions").status, 200)

    def test_delay_ms_delays_every_v1_answer_but_not_control_routes(self) -> None:
        self.fake.control(delay_ms=250)
        for key in (KEY, None):  # served and refused alike
            start = time.monotonic()
            self.fake.call("GET", "/v1/sessions", key=key)
            self.assertGreaterEqual(time.monotonic() - start, 0.25)
        self.fake.control(delay_ms=300_000, fail_next=1)
        with self.assertRaises(TimeoutError):
            self.fake.call("GET", "/v1/sessions", timeout=1.0)
        # Control routes answer at once (a 300 s wait would outlast DEADLINE_S).
        wait_until(lambda: self.fake.billing()["failed_requests"] == 1, "the injected failure")
        self.assertEqual(self.fake.call("GET", "/_fake/health", key=None).status, 200)

    def test_a_delayed_create_takes_effect_before_its_answer(self) -> None:
        self.fake.control(delay_ms=300_000)
        with self.assertRaises(TimeoutError):
            self.fake.call("POST", "/v1/sessions", {}, timeout=1.0)
        wait_until(lambda: self.fake.billing()["open"] == 1, "the timed-out create to show")

    def test_lose_stops_a_session_on_the_provider_side(self) -> None:
        session = self.fake.create()
        other = self.fake.create()
        self.fake.control(lose=session["id"])
        lost = self.fake.session(session["id"])
        self.assertEqual(lost["status"], "stopped")
        self.assertEqual(lost["cost_micros"], expected_cost(lost["created_at"], lost["stopped_at"]))
        self.fake.control(advance_s=3600, lose=session["id"])  # billing has ended; no-op
        self.assertEqual(self.fake.session(session["id"]), lost)
        self.assertEqual(self.fake.delete(session["id"]),
                         {"id": session["id"], "status": "stopped",
                          "cost_micros": lost["cost_micros"]})
        billing = self.fake.billing()
        self.assertEqual(billing["open"], 1)
        self.assertEqual([s["lost"] for s in billing["sessions"]], [True, False])
        self.assertEqual(self.fake.session(other["id"])["status"], "running")

    def test_lose_of_an_unknown_id_changes_nothing(self) -> None:
        answer = self.fake.call("POST", "/_fake/control", {"lose": "sess_nope", "fail_next": 2},
                                key=None)
        self.assert_error(answer, 404, "not_found")
        self.assertEqual(self.fake.control()["fail_next"], 0)

    def test_lose_next_created_loses_sessions_right_after_creating_them(self) -> None:
        self.fake.control(lose_next_created=2)
        first, second = self.fake.create(), self.fake.create()
        kept = self.fake.create()
        for session in (first, second):
            self.assertEqual(session["status"], "running")
            seen = self.fake.session(session["id"])
            self.assertEqual((seen["status"], seen["stopped_at"], seen["cost_micros"]),
                             ("stopped", session["created_at"], FEE))
        self.assertEqual(self.fake.session(kept["id"])["status"], "running")
        billing = self.fake.billing()
        self.assertEqual([s["lost"] for s in billing["sessions"]], [True, True, False])
        self.assertEqual((billing["open"], self.fake.control()["lose_next_created"]), (1, 0))

    def test_ready_after_s_says_starting_until_then(self) -> None:
        self.fake.control(ready_after_s=30)
        session = self.fake.create()
        self.assertEqual(session["status"], "starting")
        self.assertEqual(self.fake.session(session["id"])["status"], "starting")
        self.fake.control(advance_s=31)
        self.assertEqual(self.fake.session(session["id"])["status"], "running")
        self.fake.delete(session["id"])
        self.assertEqual(self.fake.session(session["id"])["status"], "stopped")

    def test_max_sessions_caps_open_sessions(self) -> None:
        self.fake.control(max_sessions=2)
        first, second = self.fake.create(), self.fake.create()
        self.assert_error(self.fake.call("POST", "/v1/sessions", {}), 429, "too_many_sessions")
        self.fake.delete(first["id"])
        third = self.fake.create()
        self.fake.control(lose=third["id"])
        self.fake.create()
        self.assert_error(self.fake.call("POST", "/v1/sessions", {}), 429, "too_many_sessions")
        self.fake.control(max_sessions=None)
        self.fake.create()
        billing = self.fake.billing()
        self.assertEqual((billing["open"], len(billing["sessions"])), (3, 5))
        self.assertEqual(billing["requests"]["create"], 7)
        self.assertEqual(self.fake.session(second["id"])["status"], "running")

    def test_concurrent_creates_respect_max_sessions(self) -> None:
        self.fake.control(max_sessions=5)
        barrier = threading.Barrier(20, timeout=DEADLINE_S)

        def create(_: int) -> int:
            barrier.wait()
            return self.fake.call("POST", "/v1/sessions", {}).status

        with ThreadPoolExecutor(20) as pool:
            statuses = sorted(pool.map(create, range(20)))
        self.assertEqual(statuses, [201] * 5 + [429] * 15)
        self.assertEqual(self.fake.billing()["open"], 5)

    def test_concurrent_clients_get_distinct_sessions(self) -> None:
        def create_many(_: int) -> list[str]:
            conn = self.fake.connect()
            ids = []
            for _ in range(25):
                conn.request("POST", "/v1/sessions", body=b"{}",
                             headers={"Authorization": f"Bearer {KEY}"})
                ids.append(read_answer(conn.getresponse()).body["data"]["id"])
            conn.close()
            return ids

        with ThreadPoolExecutor(8) as pool:
            ids = [i for batch in pool.map(create_many, range(8)) for i in batch]
        self.assertEqual(len(set(ids)), 200)
        billing = self.fake.billing()
        self.assertEqual((billing["open"], billing["requests"]["create"]), (200, 200))


class ControlTest(SharedFakeTest):
    DEFAULTS = {"create_fee_micros": FEE, "per_hour_micros": PER_HOUR, "max_sessions": None,
                "fail_next": 0, "fail_rate": 0, "fail_status": 500, "seed": 0, "delay_ms": 0,
                "drop_next": 0, "lose_next_created": 0, "ready_after_s": 0, "clock_offset_s": 0}

    def test_control_answers_the_settings_in_force(self) -> None:
        self.assertEqual(self.fake.control(), self.DEFAULTS)
        changes = {"create_fee_micros": 1, "per_hour_micros": 2, "max_sessions": 3,
                   "fail_next": 4, "fail_rate": 0.5, "fail_status": 502, "seed": 6,
                   "delay_ms": 7.5, "drop_next": 8, "lose_next_created": 9,
                   "ready_after_s": 10}
        self.assertEqual(self.fake.control(**changes), self.DEFAULTS | changes)
        answer = self.fake.call("POST", "/_fake/control", raw=b"", key=None)
        self.assertEqual(answer.body, self.DEFAULTS | changes)

    def test_a_bad_control_request_changes_nothing(self) -> None:
        self.fake.control(fail_next=1)
        before = self.fake.control()
        bad = [{"bogus": 1}, {"fail_next": 2, "bogus": 1}, {"fail_next": "2"},
               {"fail_next": -1}, {"fail_next": True}, {"fail_next": 1.5}, {"fail_rate": 1.5},
               {"fail_status": 200}, {"fail_status": 600}, {"delay_ms": -1},
               {"delay_ms": 600_001}, {"max_sessions": -1}, {"max_sessions": "3"},
               {"advance_s": "1"}, {"seed": 1.0}, {"lose": 3}, {"reset": "yes"},
               {"create_fee_micros": -5}, {"per_hour_micros": None}, {"drop_next": []},
               {"lose_next_created": {}}, {"ready_after_s": -1}, {"ready_after_s": 3601}]
        for body in bad:
            with self.subTest(body=body):
                self.assert_error(self.fake.call("POST", "/_fake/control", body, key=None),
                                  400, "bad_request")
        for raw in (b"[]", b"{", b"7", b"[" * 100_000):
            self.assert_error(self.fake.call("POST", "/_fake/control", raw=raw, key=None),
                              400, "bad_request")
        nan = self.fake.call("POST", "/_fake/control", raw=b'{"advance_s": NaN}', key=None)
        self.assert_error(nan, 400, "bad_request")
        self.assertEqual(self.fake.control(), before)

    def test_reset_forgets_everything(self) -> None:
        session = self.fake.create()
        self.fake.control(fail_rate=0.5, seed=3, max_sessions=1, advance_s=50, fail_next=1)
        self.fake.call("GET", "/v1/sessions")
        self.assertEqual(self.fake.control(reset=True), self.DEFAULTS)
        self.assertEqual(self.fake.billing(), {
            "open": 0, "sessions": [], "total_micros": 0, "failed_requests": 0,
            "requests": {"create": 0, "get": 0, "delete": 0, "list": 0}})
        self.assert_error(self.fake.call("GET", f"/v1/sessions/{session['id']}"), 404, "not_found")


class GarbageTest(SharedFakeTest):
    def tearDown(self) -> None:
        self.assertEqual(self.fake.call("GET", "/_fake/health", key=None).status, 200)

    def test_unknown_paths_answer_404(self) -> None:
        for path, key in [("/", None), ("/nope", None), ("/_fake/nope", None), ("/v1", KEY),
                          ("/v1/nope", KEY), ("/v1/sessions/", KEY), ("/v1/sessions/a/b", KEY),
                          ("/devtools/sess_0", None), ("/v2/sessions", KEY)]:
            with self.subTest(path=path):
                self.assert_error(self.fake.call("GET", path, key=key), 404, "not_found")

    def test_wrong_methods_answer_405_with_allow(self) -> None:
        for method, path, allow in [("PUT", "/v1/sessions", "GET, POST"),
                                    ("DELETE", "/v1/sessions", "GET, POST"),
                                    ("POST", "/v1/sessions/sess_1", "GET, DELETE"),
                                    ("PATCH", "/v1/sessions/sess_1", "GET, DELETE"),
                                    ("OPTIONS", "/v1/sessions", "GET, POST"),
                                    ("POST", "/_fake/billing", "GET"),
                                    ("GET", "/_fake/control", "POST"),
                                    ("DELETE", "/_fake/health", "GET")]:
            with self.subTest(method=method, path=path):
                answer = self.fake.call(method, path)
                self.assert_error(answer, 405, "method_not_allowed")
                self.assertEqual(answer.headers["Allow"], allow)
        self.assertEqual(self.fake.billing()["requests"]["create"], 0)

    def test_protocol_garbage_answers_json_and_closes(self) -> None:
        cases = [(b"garbage\r\n\r\n", 400), (b"GET / HTTP/9.9\r\n\r\n", 505),
                 (b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n", 501),
                 (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
                 (b"POST /v1/sessions HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
                 (b"POST /v1/sessions HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
                 (b"POST /v1/sessions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411)]
        for data, status in cases:
            with self.subTest(data=data[:24]):
                answer = raw_exchange(self.fake.port, data)
                self.assertEqual(answer.status, status)
                self.assertIsInstance(answer.body["error"], str)
                self.assertEqual(answer.headers["Connection"], "close")
        self.assertEqual(self.fake.billing()["open"], 0)

    def test_a_client_that_hangs_up_does_no_harm(self) -> None:
        address = ("127.0.0.1", self.fake.port)
        for data in (b"", b"GET /v1/sess",
                     b"POST /v1/sessions HTTP/1.1\r\nContent-Length: 10\r\n\r\n{"):
            with socket.create_connection(address, timeout=DEADLINE_S) as sock:
                sock.sendall(data)
        self.assertEqual(self.fake.billing()["open"], 0)

    def test_bodies_are_capped_at_one_mebibyte(self) -> None:
        padded = b"{}" + b" " * (MAX_BODY - 2)
        self.assertEqual(self.fake.call("POST", "/v1/sessions", raw=padded).status, 201)
        head = (f"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
        answer = raw_exchange(self.fake.port, head)  # answered without reading the body
        self.assert_error(answer, 413, "payload_too_large")
        self.assertEqual(answer.headers["Connection"], "close")
        self.assertEqual(self.fake.billing()["requests"]["create"], 1)


class ProcessTest(unittest.TestCase):
    """Command line, signals and --state: each test starts its own fakes."""

    def start(self, *extra: str, **kwargs: Any) -> FakeProcess:
        fake = FakeProcess(*extra, **kwargs)
        self.addCleanup(fake.kill)
        return fake

    def temp_dir(self) -> Path:
        temp = tempfile.TemporaryDirectory()
        self.addCleanup(temp.cleanup)
        return Path(temp.name)

    def assert_stops_cleanly(self, fake: FakeProcess, signum: int = signal.SIGTERM) -> None:
        status, rest = fake.stop(signum)
        self.assertEqual((status, rest), (0, ""), fake.stderr())

    def test_sigterm_and_sigint_exit_0_even_with_busy_connections(self) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            with self.subTest(signal=signum):
                fake = self.start()
                idle = fake.connect()
                idle.request("GET", "/_fake/health")
                idle.getresponse().read()
                fake.control(delay_ms=300_000)
                stuck = fake.connect()
                stuck.request("GET", "/v1/sessions", headers={"Authorization": f"Bearer {KEY}"})
                wait_until(lambda: fake.billing()["requests"]["list"] == 1, "the stuck request")
                self.assert_stops_cleanly(fake, signum)
                idle.close()
                stuck.close()

    def test_tls_serves_https_with_the_given_certificate(self) -> None:
        folder = self.temp_dir()
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=DEADLINE_S)
        fake = self.start("--tls-cert", str(cert), "--tls-key", str(key))
        context = ssl.create_default_context(cafile=str(cert))
        https = http.client.HTTPSConnection("127.0.0.1", fake.port, timeout=DEADLINE_S,
                                            context=context)
        https.request("POST", "/v1/sessions", body="{}",
                      headers={"Authorization": f"Bearer {KEY}"})
        answer = read_answer(https.getresponse())
        self.assertEqual(answer.status, 201)
        self.assertTrue(answer.body["data"]["cdp_url"].startswith(f"wss://127.0.0.1:{fake.port}/"))
        https.close()
        # Not trusted without the certificate; plain HTTP gets no answer.
        with self.assertRaises(ssl.SSLCertVerificationError):
            untrusted = http.client.HTTPSConnection("127.0.0.1", fake.port, timeout=DEADLINE_S,
                                                    context=ssl.create_default_context())
            untrusted.request("GET", "/_fake/health")
        with self.assertRaises((http.client.HTTPException, OSError)):
            plain = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=DEADLINE_S)
            plain.request("GET", "/_fake/health")
            plain.getresponse()
        self.assert_stops_cleanly(fake)

    def test_the_key_comes_from_the_flag_else_the_environment_else_a_default(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "FAKE_PROVIDER_KEY"}
        for flag, env_key, good in [(None, None, "test-key"), (None, "env-key", "env-key"),
                                    ("flag-key", "env-key", "flag-key")]:
            with self.subTest(flag=flag, env=env_key):
                extra = {"FAKE_PROVIDER_KEY": env_key} if env_key else {}
                fake = self.start(key=flag, env=env | extra)
                self.assertEqual(fake.call("GET", "/v1/sessions", key=good).status, 200)
                for bad in {"test-key", "env-key", "flag-key"} - {good}:
                    self.assertEqual(fake.call("GET", "/v1/sessions", key=bad).status, 401)
                self.assert_stops_cleanly(fake)

    def test_a_restarted_fake_remembers_sessions_and_clock(self) -> None:
        state = self.temp_dir() / "state.json"
        first = self.start("--state", str(state))
        kept, deleted, lost = (first.create(platform=p)["id"] for p in ("a", "b", "c"))
        first.delete(deleted)
        first.control(lose=lost, advance_s=100, fail_next=5)
        before = {s["id"]: s for s in first.billing()["sessions"]}
        self.assert_stops_cleanly(first)
        self.assertEqual(sorted(p.name for p in state.parent.iterdir()), ["state.json"])
        saved = json.loads(state.read_text())
        self.assertEqual(saved["clock_offset_s"], 100)
        self.assertEqual([s["id"] for s in saved["sessions"]], [kept, deleted, lost])

        second = self.start("--state", str(state))
        settings = second.control()
        self.assertEqual((settings["clock_offset_s"], settings["fail_next"]), (100, 0))
        after = {s["id"]: s for s in second.billing()["sessions"]}
        for session_id in (deleted, lost):
            self.assertEqual(after[session_id], before[session_id])
        self.assertEqual(after[kept] | {"cost_micros": 0}, before[kept] | {"cost_micros": 0})
        self.assertGreaterEqual(after[kept]["cost_micros"], before[kept]["cost_micros"])
        self.assertEqual(second.session(kept)["status"], "running")
        self.assertEqual(second.billing()["open"], 1)
        final = second.delete(kept)["cost_micros"]
        self.assert_stops_cleanly(second)

        third = self.start("--state", str(state))
        self.assertEqual(third.delete(kept)["cost_micros"], final)
        third.control(reset=True)
        self.assert_stops_cleanly(third)
        self.assertEqual(json.loads(state.read_text()), {"clock_offset_s": 0, "sessions": []})

    def test_the_state_file_is_always_whole(self) -> None:
        state = self.temp_dir() / "state.json"
        fake = self.start("--state", str(state))
        fake.create()
        done = threading.Event()

        def create_many() -> None:
            try:
                for _ in range(50):
                    fake.create()
            finally:
                done.set()

        writer = threading.Thread(target=create_many)
        writer.start()
        reads = 0
        while not done.is_set():
            json.loads(state.read_text())  # never half written
            reads += 1
        writer.join(DEADLINE_S)
        self.assertGreater(reads, 0)
        self.assertEqual(len(json.loads(state.read_text())["sessions"]), 51)
        self.assert_stops_cleanly(fake)

    def test_an_unreadable_state_file_exits_2(self) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".json") as state:
            state.write("{not json")
            state.flush()
            proc = subprocess.run([sys.executable, str(FAKE), "--port", "0", "--state", state.name],
                                  capture_output=True, text=True, timeout=DEADLINE_S)
        self.assertEqual((proc.returncode, proc.stdout), (2, ""))
        self.assertIn("cannot load --state", proc.stderr)


if __name__ == "__main__":
    unittest.main()
