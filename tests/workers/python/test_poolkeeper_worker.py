"""Tests for the Python worker module and the example workers.

Each test starts a worker as a real subprocess and speaks poolkeeper's worker
protocol (docs/worker-protocol.md) to it through pipes, the way the process
driver does. Reads wait on select() with generous deadlines; nothing waits a
fixed time.

Run from the repository root with either of:

    python3 -m unittest discover -s tests/workers/python -v
    python3 tests/workers/python/test_poolkeeper_worker.py
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
PYTHON_DIR = ROOT / "examples" / "workers" / "python"
ECHO_WORKER = PYTHON_DIR / "echo_worker.py"
STATEFUL_WORKER = PYTHON_DIR / "stateful_worker.py"
WRAP_CLI = ROOT / "examples" / "workers" / "cli" / "wrap_cli.py"

# Generous: a loaded CI machine must not turn a slow answer into a failure.
TIMEOUT = 10.0
LARGE_TIMEOUT = 60.0

READY = {"jsonrpc": "2.0", "method": "ready"}

# A worker exercising every path of the module; ``op`` in the params picks one.
TEST_WORKER = textwrap.dedent('''
    import os
    import subprocess
    import sys
    import threading

    import poolkeeper_worker
    from poolkeeper_worker import WorkerError

    poolkeeper_worker.protect_stdio()
    print("setup noise")  # before serve(): still kept off the protocol stream

    resets = 0

    def handle(params, ctx):
        op = params.get("op") if isinstance(params, dict) else None
        if op == "echo":
            return params.get("value")
        if op == "context":
            ctx.state["n"] = ctx.state.get("n", 0) + 1
            return {"client_session": ctx.client_session, "request_id": ctx.request_id,
                    "n": ctx.state["n"]}
        if op == "worker_error":
            raise WorkerError("bad input", code=-32042, data={"field": "x", "hints": [1, 2]})
        if op == "worker_error_bad_data":
            raise WorkerError("bad input", data=object())
        if op == "raise":
            raise ValueError(params.get("message", "boom"))
        if op == "nan":
            return {"value": float("nan")}
        if op == "unserialisable":
            return {"value": object()}
        if op == "print":
            print("noise from print")
            sys.stdout.write("noise without newline")
            os.write(1, b"noise from fd 1\\n")
            subprocess.run(["sh", "-c", "echo noise from a child"], check=True)
            return "printed"
        if op == "read_stdin":
            return {"stdin": sys.stdin.read(), "fd0": os.read(0, 100).decode()}
        if op == "resets":
            return resets
        if op == "block":
            sys.stderr.write("blocking now\\n")
            sys.stderr.flush()
            threading.Event().wait(120)
            return "unblocked"
        raise WorkerError(f"unknown op {op!r}", code=-32602)

    def reset():
        global resets
        resets += 1

    def failing_reset():
        raise RuntimeError("cannot reset")

    if "--max-sessions" in sys.argv:
        poolkeeper_worker.MAX_CLIENT_SESSIONS = int(sys.argv[sys.argv.index("--max-sessions") + 1])
    hook = None
    if "--reset" in sys.argv:
        hook = reset
    if "--failing-reset" in sys.argv:
        hook = failing_reset
    poolkeeper_worker.serve(handle, reset=hook, ready="--no-ready" not in sys.argv)
''')


def base_env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    # Keep the example directories free of __pycache__.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


class Worker:
    """A worker subprocess with line-oriented access to its protocol stream."""

    def __init__(self, argv, cwd, env=None):
        self.proc = subprocess.Popen(
            [str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd, env=env or base_env(), bufsize=0)
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stderr_cond = threading.Condition()
        self._stderr_done = False
        # Drained continuously so that a chatty worker never blocks on stderr.
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        self._writers = []

    def _drain_stderr(self):
        fd = self.proc.stderr.fileno()
        while True:
            data = os.read(fd, 65536)
            with self._stderr_cond:
                if not data:
                    self._stderr_done = True
                    self._stderr_cond.notify_all()
                    return
                self._stderr += data
                self._stderr_cond.notify_all()

    def stderr_text(self):
        with self._stderr_cond:
            return self._stderr.decode("utf-8", errors="replace")

    def wait_stderr(self, text, timeout=TIMEOUT):
        needle = text.encode()
        with self._stderr_cond:
            found = self._stderr_cond.wait_for(
                lambda: needle in self._stderr or self._stderr_done, timeout)
            if not found or needle not in self._stderr:
                raise AssertionError(f"{text!r} not on the worker's stderr within {timeout} s; "
                                     f"stderr so far:\n{self._stderr.decode(errors='replace')}")

    def stderr_complete(self, timeout=TIMEOUT):
        """All of stderr, once the worker and its children closed it."""
        with self._stderr_cond:
            if not self._stderr_cond.wait_for(lambda: self._stderr_done, timeout):
                raise AssertionError("the worker's stderr did not close")
            return self._stderr.decode("utf-8", errors="replace")

    def send_raw(self, data):
        view = memoryview(data)
        while view:
            view = view[self.proc.stdin.write(view):]

    def send(self, message):
        self.send_raw(json.dumps(message).encode() + b"\n")

    def send_in_background(self, data):
        """Writes from a thread: a large request and its answer fill both pipes at once."""
        errors = []

        def write():
            try:
                self.send_raw(data)
            except OSError as exc:
                errors.append(exc)

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        self._writers.append(thread)
        return thread, errors

    def read_line(self, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            end = self._stdout.find(b"\n")
            if end >= 0:
                line = bytes(self._stdout[:end + 1])
                del self._stdout[:end + 1]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line on stdout within {timeout} s; stderr:\n"
                                     f"{self.stderr_text()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                data = os.read(fd, 1 << 20)
                if not data:
                    raise AssertionError(f"stdout closed (exit status {self.proc.poll()}); "
                                         f"stderr:\n{self.stderr_text()}")
                self._stdout += data

    def read_message(self, timeout=TIMEOUT):
        line = self.read_line(timeout)
        return json.loads(line.decode("utf-8"))

    def read_rest_of_stdout(self, timeout=TIMEOUT):
        """Everything still to come on stdout, up to its end."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("stdout did not close")
            readable, _, _ = select.select([fd], [], [], remaining)
            if readable:
                data = os.read(fd, 1 << 20)
                if not data:
                    rest = bytes(self._stdout)
                    self._stdout.clear()
                    return rest
                self._stdout += data

    def call(self, method, params=None, request_id=1, timeout=TIMEOUT, **extra):
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        message.update(extra)
        self.send(message)
        response = self.read_message(timeout)
        assert response.get("id") == request_id, response
        assert response.get("jsonrpc") == "2.0", response
        return response

    def execute(self, params, request_id=1, timeout=TIMEOUT, **extra):
        return self.call("execute", params, request_id, timeout, **extra)

    def close_stdin_and_wait(self, timeout=TIMEOUT):
        self.proc.stdin.close()
        return self.proc.wait(timeout)

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for thread in self._writers:
            thread.join(TIMEOUT)
        self._stderr_thread.join(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass  # stdin of a dead worker may still hold bytes it never read


class WorkerTestCase(unittest.TestCase):
    def setUp(self):
        # Not the repository: the workers must find their imports from anywhere.
        self.tmp = tempfile.mkdtemp(prefix="poolkeeper-worker-test-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)

    def start(self, argv, expect_ready=True, env=None):
        worker = Worker(argv, self.tmp, env)
        self.addCleanup(worker.cleanup)
        if expect_ready:
            self.assertEqual(worker.read_message(), READY)
        return worker

    def start_test_worker(self, *flags, expect_ready=True):
        script = Path(self.tmp) / "test_worker.py"
        script.write_text(TEST_WORKER, encoding="utf-8")
        env = base_env()
        env["PYTHONPATH"] = str(PYTHON_DIR)
        return self.start([sys.executable, script, *flags],
                          expect_ready=expect_ready and "--no-ready" not in flags, env=env)

    def assert_error(self, response, code, request_id=1):
        self.assertEqual(response["id"], request_id, response)
        self.assertNotIn("result", response)
        self.assertEqual(response["error"]["code"], code, response)
        self.assertIsInstance(response["error"]["message"], str)
        return response["error"]


class StartAndPingTest(WorkerTestCase):
    def test_ready_comes_first_and_once(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        # Had ready been printed twice, the second copy would come before pong.
        self.assertEqual(worker.call("ping", request_id=1)["result"], "pong")
        self.assertEqual(worker.call("ping", request_id=2)["result"], "pong")

    def test_without_ready_the_ping_answer_comes_first(self):
        worker = self.start_test_worker("--no-ready")
        response = worker.call("ping", request_id=0)
        self.assertEqual(response, {"jsonrpc": "2.0", "id": 0, "result": "pong"})

    def test_ping_with_params_is_answered(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        self.assertEqual(worker.call("ping", params={}, request_id=3)["result"], "pong")

    def test_runs_from_any_directory_without_pythonpath(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        self.assertNotIn("PYTHONPATH", base_env())
        self.assertEqual(worker.execute({"cwd": self.tmp})["result"], {"cwd": self.tmp})


class ExecuteTest(WorkerTestCase):
    def test_echo_returns_params_unchanged(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        values = [{"a": [1, 2.5, None, True, False], "b": {"c": "d"}}, [1, "two"], "text",
                  0, -7, 3.25, None, True, {}, [], ""]
        for request_id, value in enumerate(values, start=1):
            with self.subTest(value=value):
                response = worker.execute(value, request_id=request_id)
                self.assertEqual(response["result"], value)
                self.assertNotIn("error", response)

    def test_absent_params_reach_the_handler_as_none(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.send_raw(b'{"jsonrpc":"2.0","id":5,"method":"execute"}\n')
        self.assertEqual(worker.read_message(), {"jsonrpc": "2.0", "id": 5, "result": None})

    def test_unicode_travels_as_raw_utf8(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        text = "h\u00e9llo \u2013 \u65e5\u672c\u8a9e \U0001F389 \"quoted\"\n\ttab \u0000"
        worker.send({"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"t": text}})
        line = worker.read_line()
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertIn("\u65e5\u672c\u8a9e \U0001F389".encode("utf-8"), line)
        self.assertEqual(json.loads(line.decode("utf-8", errors="strict"))["result"], {"t": text})

    def test_lone_surrogate_comes_back_as_valid_json(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"execute","params":"a\\ud800b"}\n')
        line = worker.read_line()
        self.assertEqual(json.loads(line.decode("utf-8", errors="strict"))["result"],
                         "a\ud800b")

    def test_four_mib_payload_round_trip(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        payload = {"blob": ("0123456789abcdef\u00e9" * (1 << 18))[: 4 << 20], "n": 1}
        data = json.dumps({"jsonrpc": "2.0", "id": 9, "method": "execute",
                           "params": payload}, ensure_ascii=False).encode() + b"\n"
        self.assertGreater(len(data), 4 << 20)
        thread, errors = worker.send_in_background(data)
        response = worker.read_message(timeout=LARGE_TIMEOUT)
        thread.join(LARGE_TIMEOUT)
        self.assertFalse(thread.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(response["id"], 9)
        self.assertEqual(response["result"], payload)
        self.assertEqual(worker.call("ping", request_id=10)["result"], "pong")

    def test_pipelined_requests_are_each_answered_by_id(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        count = 200
        batch = b"".join(
            json.dumps({"jsonrpc": "2.0", "id": i, "method": "execute", "params": i}).encode()
            + b"\n" for i in range(count))
        worker.send_raw(batch)
        answers = {}
        for _ in range(count):
            response = worker.read_message()
            answers[response["id"]] = response["result"]
        self.assertEqual(answers, {i: i for i in range(count)})

    def test_string_ids_are_echoed(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        self.assertEqual(worker.execute("x", request_id="req-1")["result"], "x")

    def test_context_carries_client_session_and_request_id(self):
        worker = self.start_test_worker()
        with_session = worker.execute({"op": "context"}, request_id=41, client_session="user-1")
        self.assertEqual(with_session["result"],
                         {"client_session": "user-1", "request_id": 41, "n": 1})
        without = worker.execute({"op": "context"}, request_id=42)
        self.assertEqual(without["result"], {"client_session": None, "request_id": 42, "n": 1})


class ClientSessionStateTest(WorkerTestCase):
    def test_state_is_kept_per_client_session(self):
        worker = self.start([sys.executable, STATEFUL_WORKER])
        append = lambda item, session, rid: worker.execute(  # noqa: E731
            {"op": "append", "item": item}, request_id=rid, client_session=session)["result"]
        self.assertEqual(append(1, "alice", 1)["items"], [1])
        self.assertEqual(append("\u00e9", "bob", 2)["items"], ["\u00e9"])
        second = append({"k": 2}, "alice", 3)
        self.assertEqual(second["items"], [1, {"k": 2}])
        self.assertEqual(second["count"], 2)
        self.assertEqual(second["worker_pid"], worker.proc.pid)
        alice = worker.execute({"op": "get"}, request_id=4, client_session="alice")["result"]
        bob = worker.execute({"op": "get"}, request_id=5, client_session="bob")["result"]
        self.assertEqual(alice["items"], [1, {"k": 2}])
        self.assertEqual(bob["items"], ["\u00e9"])

    def test_without_client_session_state_starts_empty_every_time(self):
        worker = self.start([sys.executable, STATEFUL_WORKER])
        first = worker.execute({"op": "append", "item": 1}, request_id=1)["result"]
        second = worker.execute({"op": "append", "item": 2}, request_id=2)["result"]
        self.assertEqual(first["items"], [1])
        self.assertEqual(second["items"], [2])
        self.assertEqual(worker.execute({"op": "get"}, request_id=3)["result"]["count"], 0)

    def test_stateful_worker_rejects_bad_params(self):
        worker = self.start([sys.executable, STATEFUL_WORKER])
        self.assert_error(worker.execute({"op": "pop"}), -32602)
        self.assert_error(worker.execute({"op": "append"}, request_id=2), -32602, 2)
        self.assert_error(worker.execute([1], request_id=3), -32602, 3)

    def test_least_recently_used_client_session_is_dropped(self):
        worker = self.start_test_worker("--max-sessions", "3")
        rid = iter(range(1, 100))

        def count(session):
            return worker.execute({"op": "context"}, request_id=next(rid),
                                  client_session=session)["result"]["n"]

        self.assertEqual([count("a"), count("b"), count("c")], [1, 1, 1])
        self.assertEqual(count("a"), 2)  # now b is the least recently used
        self.assertEqual(count("d"), 1)  # evicts b
        self.assertEqual(count("a"), 3)
        self.assertEqual(count("c"), 2)
        self.assertEqual(count("b"), 1)  # b was dropped and starts over


class ErrorTest(WorkerTestCase):
    def test_worker_error_is_sent_as_is(self):
        worker = self.start_test_worker()
        response = worker.execute({"op": "worker_error"})
        self.assertEqual(response, {"jsonrpc": "2.0", "id": 1, "error": {
            "code": -32042, "message": "bad input", "data": {"field": "x", "hints": [1, 2]}}})

    def test_exception_becomes_server_error_with_traceback(self):
        worker = self.start_test_worker()
        error = self.assert_error(worker.execute({"op": "raise", "message": "it broke"}), -32000)
        self.assertEqual(error["message"], "it broke")
        self.assertEqual(error["data"]["type"], "ValueError")
        self.assertIn("ValueError: it broke", error["data"]["traceback"])
        self.assertIn("in handle", error["data"]["traceback"])
        worker.wait_stderr("ValueError: it broke")
        self.assertEqual(worker.call("ping", request_id=2)["result"], "pong")

    def test_traceback_is_bounded(self):
        worker = self.start_test_worker()
        message = "x" * 20000
        error = self.assert_error(worker.execute({"op": "raise", "message": message}), -32000)
        self.assertEqual(len(error["data"]["traceback"]), 4000)
        self.assertTrue(error["data"]["traceback"].rstrip().endswith("x"))

    def test_nan_result_becomes_an_error_not_invalid_json(self):
        worker = self.start_test_worker()
        error = self.assert_error(worker.execute({"op": "nan"}), -32000)
        self.assertIn("not JSON-serialisable", error["message"])
        self.assertEqual(worker.execute({"op": "echo", "value": 1}, request_id=2)["result"], 1)

    def test_unserialisable_result_becomes_an_error(self):
        worker = self.start_test_worker()
        error = self.assert_error(worker.execute({"op": "unserialisable"}), -32000)
        self.assertIn("result is not JSON-serialisable", error["message"])
        self.assertEqual(error["data"]["type"], "TypeError")
        self.assertEqual(worker.call("ping", request_id=2)["result"], "pong")

    def test_unserialisable_error_data_becomes_a_plain_error(self):
        worker = self.start_test_worker()
        error = self.assert_error(worker.execute({"op": "worker_error_bad_data"}), -32000)
        self.assertIn("error data is not JSON-serialisable", error["message"])


class StreamProtectionTest(WorkerTestCase):
    def test_output_of_user_code_goes_to_stderr(self):
        worker = self.start_test_worker()
        self.assertEqual(worker.execute({"op": "print"})["result"], "printed")
        self.assertEqual(worker.execute({"op": "echo", "value": "after"}, request_id=2)["result"],
                         "after")
        self.assertEqual(worker.close_stdin_and_wait(), 0)
        self.assertEqual(worker.read_rest_of_stdout(), b"")
        stderr = worker.stderr_complete()
        for text in ("setup noise", "noise from print", "noise without newline",
                     "noise from fd 1", "noise from a child"):
            self.assertIn(text, stderr)

    def test_user_code_cannot_read_protocol_input(self):
        worker = self.start_test_worker()
        # Queued behind the read: a handler reading the real stdin would swallow it.
        worker.send_raw(
            b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"op":"read_stdin"}}\n'
            b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        self.assertEqual(worker.read_message()["result"], {"stdin": "", "fd0": ""})
        self.assertEqual(worker.read_message(), {"jsonrpc": "2.0", "id": 2, "result": "pong"})


class MalformedInputTest(WorkerTestCase):
    def test_malformed_lines_get_parse_errors_and_the_worker_goes_on(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        for line in (b"not json\n", b'{"jsonrpc":"2.0","id":\n', b"\xff\xfe{}\n",
                     b'{"id":1,"method":"execute","params":NaN}\n', b"}{\n"):
            with self.subTest(line=line):
                worker.send_raw(line)
                self.assert_error(worker.read_message(), -32700, None)
        self.assertEqual(worker.execute("still here", request_id=7)["result"], "still here")

    def test_invalid_requests_get_invalid_request(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        cases = [
            (b"[1,2]", None),
            (b'"text"', None),
            (b'{"jsonrpc":"2.0","id":3}', 3),
            (b'{"jsonrpc":"2.0","id":4,"method":5}', 4),
            (b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}', None),
            (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', None),
            (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', None),
            (b'{"jsonrpc":"1.0","id":5,"method":"ping"}', 5),
            (b'{"jsonrpc":"2.0","id":6,"method":"execute","client_session":7}', 6),
        ]
        for line, request_id in cases:
            with self.subTest(line=line):
                worker.send_raw(line + b"\n")
                self.assert_error(worker.read_message(), -32600, request_id)
        self.assertEqual(worker.call("ping", request_id=8)["result"], "pong")

    def test_unknown_method_is_method_not_found(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        error = self.assert_error(worker.call("shutdown", request_id=3), -32601, 3)
        self.assertIn("shutdown", error["message"])

    def test_notifications_and_blank_lines_get_no_answer(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.send_raw(b'{"jsonrpc":"2.0","method":"execute","params":1}\n'
                        b'{"jsonrpc":"2.0","method":"cancel"}\n\n   \n\r\n'
                        b'{"jsonrpc":"2.0","id":2,"method":"ping"}\n')
        self.assertEqual(worker.read_message(), {"jsonrpc": "2.0", "id": 2, "result": "pong"})

    def test_crlf_line_ending_is_accepted(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.send_raw(b'{"jsonrpc":"2.0","id":2,"method":"execute","params":"x"}\r\n')
        self.assertEqual(worker.read_message(), {"jsonrpc": "2.0", "id": 2, "result": "x"})


class ResetTest(WorkerTestCase):
    def test_reset_without_hook_is_method_not_found(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        self.assert_error(worker.call("reset", request_id=4), -32601, 4)
        self.assertEqual(worker.call("ping", request_id=5)["result"], "pong")

    def test_reset_calls_the_hook(self):
        worker = self.start_test_worker("--reset")
        self.assertEqual(worker.execute({"op": "resets"}, request_id=1)["result"], 0)
        response = worker.call("reset", request_id=2)
        self.assertIn("result", response)
        self.assertNotIn("error", response)
        worker.call("reset", request_id=3)
        self.assertEqual(worker.execute({"op": "resets"}, request_id=4)["result"], 2)

    def test_failing_reset_hook_is_an_error(self):
        worker = self.start_test_worker("--failing-reset")
        error = self.assert_error(worker.call("reset", request_id=2), -32000, 2)
        self.assertEqual(error["message"], "cannot reset")
        self.assertEqual(error["data"]["type"], "RuntimeError")


class StopTest(WorkerTestCase):
    def test_end_of_input_exits_zero_after_answering(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"execute","params":"last"}\n')
        self.assertEqual(worker.close_stdin_and_wait(), 0)
        self.assertEqual(worker.read_message(), {"jsonrpc": "2.0", "id": 1, "result": "last"})
        self.assertEqual(worker.read_rest_of_stdout(), b"")

    def test_end_of_input_before_ready_is_read_exits_zero(self):
        worker = self.start([sys.executable, ECHO_WORKER], expect_ready=False)
        self.assertEqual(worker.close_stdin_and_wait(), 0)
        self.assertEqual(worker.read_message(), READY)

    def test_sigterm_when_idle_ends_the_worker(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        self.assertEqual(worker.call("ping")["result"], "pong")
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(TIMEOUT), -signal.SIGTERM)

    def test_sigterm_while_busy_ends_the_worker(self):
        worker = self.start_test_worker()
        worker.send({"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"op": "block"}})
        worker.wait_stderr("blocking now")
        worker.proc.send_signal(signal.SIGTERM)
        self.assertEqual(worker.proc.wait(TIMEOUT), -signal.SIGTERM)

    def test_closed_stdout_makes_the_worker_exit(self):
        worker = self.start([sys.executable, ECHO_WORKER])
        worker.proc.stdout.close()
        worker.send_raw(b'{"jsonrpc":"2.0","id":1,"method":"ping"}\n')
        self.assertEqual(worker.proc.wait(TIMEOUT), 0)
        self.assertNotIn("Exception ignored", worker.stderr_complete())


class WrapCliOneShotTest(WorkerTestCase):
    def start_wrapper(self, *argv):
        return self.start([sys.executable, WRAP_CLI, *argv])

    def test_stdin_goes_to_the_command(self):
        worker = self.start_wrapper("--", "wc", "-c")
        text = "h\u00e9llo\nw\u00f6rld\n"
        result = worker.execute({"stdin": text})["result"]
        self.assertEqual(int(result["stdout"].strip()), len(text.encode("utf-8")))
        self.assertEqual(result["exit_code"], 0)
        self.assertFalse(result["truncated"])
        self.assertFalse(result["timed_out"])

    def test_cat_returns_its_input(self):
        worker = self.start_wrapper("--", "cat")
        text = "line one\nl\u00efne two \U0001F389\n"
        self.assertEqual(worker.execute({"stdin": text})["result"],
                         {"exit_code": 0, "stdout": text, "stderr": "", "truncated": False,
                          "timed_out": False})
        self.assertEqual(worker.execute({}, request_id=2)["result"]["stdout"], "")

    def test_args_exit_code_and_stderr(self):
        worker = self.start_wrapper("--", "sh", "-c")
        result = worker.execute({"args": ['echo out; echo "err $0" >&2; exit 3', "zero"]})
        self.assertEqual(result["result"], {"exit_code": 3, "stdout": "out\n", "stderr":
                                            "err zero\n", "truncated": False, "timed_out": False})

    def test_output_is_truncated_to_the_limit(self):
        worker = self.start_wrapper("--max-output", "1000", "--", "cat")
        result = worker.execute({"stdin": "abcd" * 1250})["result"]
        self.assertEqual(result["stdout"], ("abcd" * 1250)[:1000])
        self.assertTrue(result["truncated"])
        self.assertEqual(result["exit_code"], 0)

    def test_large_output_is_read_to_the_end_and_bounded(self):
        worker = self.start_wrapper("--", "sh", "-c", "yes | head -c 3000000; echo done >&2")
        result = worker.execute({}, timeout=LARGE_TIMEOUT)["result"]
        self.assertEqual(len(result["stdout"]), 1 << 20)
        self.assertTrue(result["truncated"])
        self.assertEqual(result["stderr"], "done\n")
        self.assertEqual(result["exit_code"], 0)

    def test_large_input_and_output_at_once_do_not_deadlock(self):
        worker = self.start_wrapper("--", "cat")
        text = "0123456789" * 300000  # far more than a pipe holds, both ways
        result = worker.execute({"stdin": text}, timeout=LARGE_TIMEOUT)["result"]
        self.assertEqual(result["stdout"], text[: 1 << 20])
        self.assertTrue(result["truncated"])

    def test_slow_command_is_killed_at_its_timeout(self):
        worker = self.start_wrapper("--", "sleep")
        started = time.monotonic()
        result = worker.execute({"args": ["60"], "timeout_s": 0.5})["result"]
        self.assertLess(time.monotonic() - started, 30)
        self.assertTrue(result["timed_out"])
        self.assertEqual(result["exit_code"], -signal.SIGKILL)

    def test_bad_params_are_invalid_params(self):
        worker = self.start_wrapper("--", "cat")
        for request_id, params in enumerate([{"args": "x"}, {"args": [1]}, {"stdin": 5},
                                             {"timeout_s": 0}, {"timeout_s": True},
                                             {"argz": []}, [1]], start=1):
            with self.subTest(params=params):
                self.assert_error(worker.execute(params, request_id=request_id), -32602,
                                  request_id)

    def test_reset_has_nothing_to_do(self):
        worker = self.start_wrapper("--", "cat")
        self.assert_error(worker.call("reset"), -32601)

    def test_missing_command_fails_the_start(self):
        worker = self.start([sys.executable, WRAP_CLI, "--", "/nonexistent/tool"],
                            expect_ready=False)
        self.assertEqual(worker.proc.wait(TIMEOUT), 127)
        self.assertEqual(worker.read_rest_of_stdout(), b"")
        self.assertIn("command not found", worker.stderr_complete())

    def test_no_command_is_a_usage_error(self):
        worker = self.start([sys.executable, WRAP_CLI, "--"], expect_ready=False)
        self.assertEqual(worker.proc.wait(TIMEOUT), 2)
        self.assertEqual(worker.read_rest_of_stdout(), b"")


class WrapCliPersistentTest(WorkerTestCase):
    def start_wrapper(self, *argv):
        return self.start([sys.executable, WRAP_CLI, "--persistent", *argv])

    def test_one_process_answers_line_by_line(self):
        worker = self.start_wrapper("--", "cat")
        self.assertEqual(worker.execute({"line": "hello"})["result"], {"lines": ["hello"]})
        self.assertEqual(worker.execute({"line": "w\u00f6rld \U0001F389"}, request_id=2)["result"],
                         {"lines": ["w\u00f6rld \U0001F389"]})

    def test_state_survives_between_requests(self):
        script = 'n=0; while read l; do n=$((n+1)); echo "$n:$l"; done'
        worker = self.start_wrapper("--", "sh", "-c", script)
        self.assertEqual(worker.execute({"line": "a"})["result"]["lines"], ["1:a"])
        self.assertEqual(worker.execute({"line": "b"}, request_id=2)["result"]["lines"], ["2:b"])
        worker.call("reset", request_id=3)
        self.assertEqual(worker.execute({"line": "c"}, request_id=4)["result"]["lines"], ["1:c"])

    def test_several_lines_and_none(self):
        script = 'while read l; do [ "$l" = quiet ] || { echo "one $l"; echo "two $l"; }; done'
        worker = self.start_wrapper("--", "sh", "-c", script)
        self.assertEqual(worker.execute({"line": "x", "lines": 2})["result"]["lines"],
                         ["one x", "two x"])
        self.assertEqual(worker.execute({"line": "quiet", "lines": 0}, request_id=2)["result"],
                         {"lines": []})
        self.assertEqual(worker.execute({"line": "y", "lines": 2}, request_id=3)["result"]["lines"],
                         ["one y", "two y"])

    def test_missing_answer_restarts_the_process(self):
        script = 'n=0; while read l; do n=$((n+1)); echo "$n:$l"; done'
        worker = self.start_wrapper("--", "sh", "-c", script)
        self.assertEqual(worker.execute({"line": "a"})["result"]["lines"], ["1:a"])
        error = self.assert_error(
            worker.execute({"line": "b", "lines": 2, "timeout_s": 0.5}, request_id=2), -32001, 2)
        self.assertIn("restarted", error["message"])
        # A fresh process: its count starts over and no late line is paired with this request.
        self.assertEqual(worker.execute({"line": "c"}, request_id=3)["result"]["lines"], ["1:c"])
        worker.wait_stderr("restarting sh")

    def test_exited_process_is_an_error_then_started_again(self):
        script = 'while read l; do [ "$l" = quit ] && exit 3; echo "got $l"; done'
        worker = self.start_wrapper("--", "sh", "-c", script)
        error = self.assert_error(worker.execute({"line": "quit"}), -32002)
        self.assertEqual(error["data"], {"exit_code": 3})
        self.assertEqual(worker.execute({"line": "x"}, request_id=2)["result"]["lines"], ["got x"])

    def test_overlong_answer_line_restarts_the_process(self):
        worker = self.start_wrapper("--max-output", "100", "--", "cat")
        self.assert_error(worker.execute({"line": "z" * 500}), -32001)
        self.assertEqual(worker.execute({"line": "ok"}, request_id=2)["result"]["lines"], ["ok"])

    def test_bad_params_are_invalid_params(self):
        worker = self.start_wrapper("--", "cat")
        for request_id, params in enumerate([{}, {"line": 1}, {"line": "a\nb"},
                                             {"line": "a", "lines": -1},
                                             {"line": "a", "lines": "2"}, {"line": "a", "x": 1},
                                             "a"], start=1):
            with self.subTest(params=params):
                self.assert_error(worker.execute(params, request_id=request_id), -32602,
                                  request_id)
        self.assertEqual(worker.execute({"line": "fine"}, request_id=99)["result"]["lines"],
                         ["fine"])

    def test_end_of_input_stops_the_process_too(self):
        worker = self.start_wrapper("--", "cat")
        self.assertEqual(worker.execute({"line": "a"})["result"]["lines"], ["a"])
        self.assertEqual(worker.close_stdin_and_wait(), 0)
        # stderr closes only once every holder of it, the cat included, is gone.
        worker.stderr_complete()

    @unittest.skipUnless(os.path.exists("/usr/bin/bc"),
                         "/usr/bin/bc is not installed (Debian package bc)")
    def test_bc_keeps_its_variables(self):
        worker = self.start_wrapper("--", "/usr/bin/bc", "-q")
        self.assertEqual(worker.execute({"line": "x = 6 * 7", "lines": 0})["result"],
                         {"lines": []})
        self.assertEqual(worker.execute({"line": "x"}, request_id=2)["result"], {"lines": ["42"]})
        self.assertEqual(worker.execute({"line": "2^100"}, request_id=3)["result"]["lines"],
                         [str(2 ** 100)])
        worker.call("reset", request_id=4)
        self.assertEqual(worker.execute({"line": "x"}, request_id=5)["result"], {"lines": ["0"]})


if __name__ == "__main__":
    unittest.main()
