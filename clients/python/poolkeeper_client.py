"""A client for the poolkeeper daemon's HTTP API, with the standard library only.

    from poolkeeper_client import Client

    pk = Client("http://127.0.0.1:8470")              # token=... with auth = "tokens"
    print(pk.execute("python", {"op": "append", "item": "tea"}, client_session="alice"))
    with pk.acquire("python", timeout=2.0) as lease:   # released when the block ends
        print(lease.execute({"op": "get"}))

Errors raise PoolkeeperError with the API's code ("acquire_timeout", ...), the
HTTP status and, for 429 and 503, retry_after (seconds). One connection is
kept alive per Client; a Client is not thread-safe (use one per thread).
"""

import http.client
import json
import os
import urllib.parse

__all__ = ["Client", "Lease", "PoolkeeperError"]


class PoolkeeperError(Exception):
    """An error answered by the daemon (or the connection failing)."""

    def __init__(self, status, code, message, retry_after=None):
        super().__init__(f"{code}: {message}" if code else message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class Lease:
    """A held session. Use it as a context manager, or call release()."""

    def __init__(self, client, info):
        self._client = client
        self.info = info
        self.id = info["lease"]
        self.pool = info["pool"]
        self.released = False

    def execute(self, params, timeout=None):
        """Runs one request on this session; returns the worker's result.

        A worker's own error raises PoolkeeperError with code "worker_error".
        """
        body = {"params": params}
        if timeout is not None:
            body["timeout_ms"] = int(timeout * 1000)
        reply = self._client._call("POST", f"/v1/leases/{_quote(self.id)}/execute", body)
        return _result(reply)

    def release(self, broken=False):
        if self.released:
            return
        self._client._call("DELETE", f"/v1/leases/{_quote(self.id)}", {"broken": bool(broken)})
        self.released = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        # A failure inside the block may have left the session in a bad state.
        self.release(broken=exc_type is not None and not isinstance(exc, PoolkeeperError))
        return False


class Client:
    def __init__(self, url=None, token=None, timeout=60.0):
        url = url or os.environ.get("POOLKEEPER_URL", "http://127.0.0.1:8470")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http":
            raise ValueError("only http:// URLs are supported")
        self._host = parsed.hostname or "127.0.0.1"
        self._port = parsed.port or 80
        self._token = token if token is not None else os.environ.get("POOLKEEPER_TOKEN")
        self._timeout = timeout
        self._conn = None

    # -- leases and execution -------------------------------------------

    def acquire(self, pool, timeout=30.0, priority=None, client_session=None, lease_timeout=None):
        """Waits up to `timeout` seconds for a session; returns a Lease."""
        body = {"timeout_ms": int(timeout * 1000)}
        if priority is not None:
            body["priority"] = priority
        if client_session is not None:
            body["client_session"] = client_session
        if lease_timeout is not None:
            body["lease_timeout_ms"] = int(lease_timeout * 1000)
        info = self._call("POST", f"/v1/pools/{_quote(pool)}/leases", body,
                          read_timeout=timeout + self._timeout)
        return Lease(self, info)

    def execute(self, pool, params, client_session=None, timeout=30.0, priority=None):
        """Acquire, execute and release in one call; returns the worker's result."""
        body = {"params": params, "timeout_ms": int(timeout * 1000)}
        if client_session is not None:
            body["client_session"] = client_session
        if priority is not None:
            body["priority"] = priority
        reply = self._call("POST", f"/v1/pools/{_quote(pool)}/execute", body,
                           read_timeout=timeout + self._timeout)
        return _result(reply)

    # -- client sessions --------------------------------------------------

    def put_client_session(self, session_id, document, pool=None):
        return self._call("PUT", _client_session_path(session_id, pool), {"document": document})

    def get_client_session(self, session_id, pool=None):
        return self._call("GET", _client_session_path(session_id, pool))

    def delete_client_session(self, session_id, pool=None):
        return self._call("DELETE", _client_session_path(session_id, pool))

    # -- observation ------------------------------------------------------

    def health(self):
        """The /health document (also when the daemon says it is degraded)."""
        try:
            return self._call("GET", "/health")
        except PoolkeeperError as e:
            if e.status == 503 and isinstance(getattr(e, "document", None), dict):
                return e.document
            raise

    def pools(self):
        return self._call("GET", "/v1/pools")["pools"]

    def pool(self, name):
        return self._call("GET", f"/v1/pools/{_quote(name)}")

    def sessions(self, pool):
        return self._call("GET", f"/v1/pools/{_quote(pool)}/sessions")["sessions"]

    def close(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- plumbing ---------------------------------------------------------

    def _call(self, method, path, body=None, read_timeout=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        for attempt in (1, 2):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._conn.timeout = read_timeout or self._timeout
            try:
                self._conn.request(method, path, body=data, headers=headers)
                response = self._conn.getresponse()
                raw = response.read()
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                self.close()
                # A kept-alive connection the daemon closed: retry once on a new one,
                # but never a request that may have been half done.
                if attempt == 1 and method in ("GET", "PUT", "DELETE"):
                    continue
                raise PoolkeeperError(0, "connection_failed", str(e)) from e
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            break
        try:
            document = json.loads(raw) if raw else None
        except ValueError:
            document = None
        if 200 <= response.status < 300:
            return document
        error = (document or {}).get("error", {}) if isinstance(document, dict) else {}
        retry = error.get("retry_after_ms")
        exc = PoolkeeperError(response.status, error.get("code", "http_%d" % response.status),
                              error.get("message", raw.decode(errors="replace")),
                              None if retry is None else retry / 1000.0)
        exc.document = document
        raise exc


def _result(reply):
    if reply.get("ok"):
        return reply.get("result")
    error = reply.get("error") or {}
    message = error.get("message", json.dumps(error)) if isinstance(error, dict) else str(error)
    exc = PoolkeeperError(200, "worker_error", message)
    exc.worker_error = error
    raise exc


def _quote(s):
    return urllib.parse.quote(str(s), safe="")


def _client_session_path(session_id, pool):
    path = f"/v1/client-sessions/{_quote(session_id)}"
    if pool is not None:
        path += "?pool=" + _quote(pool)
    return path
