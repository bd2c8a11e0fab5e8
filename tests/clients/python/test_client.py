"""The Python client against a real daemon (poolkeeper serve on port 0)."""

import json
import os
import subprocess
import sys
import tempfile
import threading
import unittest

SOURCE = os.environ["POOLKEEPER_SOURCE_DIR"]
BINARY = os.environ["POOLKEEPER_BINARY"]
sys.path.insert(0, os.path.join(SOURCE, "clients", "python"))

from poolkeeper_client import Client, PoolkeeperError  # noqa: E402

TOKEN = "client-test-token-0123456789"


class DaemonFixture:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        config = os.path.join(self.dir.name, "pk.toml")
        worker = os.path.join(SOURCE, "examples", "workers", "python", "stateful_worker.py")
        with open(config, "w") as f:
            f.write(f"""
[server]
listen = "127.0.0.1:0"
[pools.python]
command = ["python3", "{worker}"]
min = 2
max = 2
stop_grace = "500ms"
[tenants.me]
token_env = "PK_TOKEN"
""")
        env = dict(os.environ, PK_TOKEN=TOKEN)
        self.proc = subprocess.Popen([BINARY, "serve", "--config", config], env=env,
                                     stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.port = None
        ready = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.lines.append(line)
                if self.port is None and '"msg":"listening"' in line:
                    self.port = int(json.loads(line)["address"].rsplit(":", 1)[1])
                    ready.set()
            ready.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not ready.wait(60) or self.port is None:
            raise RuntimeError("the daemon did not start: " + "".join(self.lines))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(60)
        self.reader.join(10)
        self.proc.stderr.close()
        self.dir.cleanup()


class ClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.daemon = DaemonFixture()
        cls.client = Client(f"http://127.0.0.1:{cls.daemon.port}", token=TOKEN)
        # Both workers are ready once both can be leased: the daemon does the
        # waiting (with a generous deadline), the test never sleeps.
        warm = [cls.client.acquire("python", timeout=60) for _ in range(2)]
        for lease in warm:
            lease.release()

    @classmethod
    def tearDownClass(cls):
        cls.client.close()
        cls.daemon.stop()
        code = cls.daemon.proc.returncode
        assert code == 0, f"the daemon exited with {code}:\n" + "".join(cls.daemon.lines)

    def test_execute_keeps_a_client_session_on_its_worker(self):
        first = self.client.execute("python", {"op": "append", "item": "a"}, client_session="s1")
        second = self.client.execute("python", {"op": "append", "item": "b"}, client_session="s1")
        self.assertEqual(second["items"], ["a", "b"])
        self.assertEqual(first["worker_pid"], second["worker_pid"])

    def test_lease_as_a_context_manager_is_released(self):
        with self.client.acquire("python", timeout=5) as lease:
            self.assertEqual(lease.execute({"op": "get"})["items"], [])
        self.assertTrue(lease.released)
        with self.assertRaises(PoolkeeperError) as e:
            lease.execute({"op": "get"})
        self.assertEqual(e.exception.code, "lease_already_released")

    def test_errors_carry_the_api_code(self):
        with self.assertRaises(PoolkeeperError) as e:
            self.client.execute("nope", {})
        self.assertEqual((e.exception.status, e.exception.code), (404, "unknown_pool"))
        anonymous = Client(f"http://127.0.0.1:{self.daemon.port}", token="")
        with self.assertRaises(PoolkeeperError) as e:
            anonymous.pools()
        self.assertEqual(e.exception.status, 401)

    def test_acquire_timeout_says_when_to_retry(self):
        held = [self.client.acquire("python", timeout=5) for _ in range(2)]
        try:
            other = Client(f"http://127.0.0.1:{self.daemon.port}", token=TOKEN)
            with self.assertRaises(PoolkeeperError) as e:
                other.acquire("python", timeout=0.1)
            self.assertEqual(e.exception.status, 503)
            self.assertGreater(e.exception.retry_after, 0)
        finally:
            for lease in held:
                lease.release()

    def test_client_session_documents(self):
        self.client.put_client_session("doc-1", {"step": 2})
        self.assertEqual(self.client.get_client_session("doc-1")["document"], {"step": 2})
        self.client.delete_client_session("doc-1")
        with self.assertRaises(PoolkeeperError) as e:
            self.client.get_client_session("doc-1")
        self.assertEqual(e.exception.code, "unknown_client_session")

    def test_stats(self):
        pools = self.client.pools()
        self.assertEqual([p["name"] for p in pools], ["python"])
        self.assertEqual(len(self.client.sessions("python")), 2)


if __name__ == "__main__":
    unittest.main()
