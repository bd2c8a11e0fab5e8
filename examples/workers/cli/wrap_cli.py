"""Wrap a command-line tool that does not speak poolkeeper's worker protocol.

Two modes, both on top of ``examples/workers/python/poolkeeper_worker.py``.
The command to wrap comes after ``--`` and is run without a shell.

One-shot (the default): every ``execute`` runs the command once::

    wrap_cli.py [--timeout S] [--max-output BYTES] -- wc -c

    params  {"args": ["-l"], "stdin": "text", "timeout_s": 5}     (all optional)
    result  {"exit_code": 0, "stdout": "...", "stderr": "...",
             "truncated": false, "timed_out": false}

    ``args`` are appended to the command, ``stdin`` is written to its input
    (which is closed after it). Each of stdout and stderr keeps its first
    ``--max-output`` bytes (1 MiB by default; ``truncated`` says whether
    anything was dropped) and is decoded as UTF-8, bad bytes replaced. A
    command still running after ``timeout_s`` (default ``--timeout``, 30 s) is
    killed: ``timed_out`` is true and ``exit_code`` is then -9 (a negative
    ``exit_code`` is the signal that ended the tool). A non-zero exit is a
    result, not an error. The worker itself is cheap here; use this mode to
    bound and meter a tool, not to save its start-up time.

Persistent (``--persistent``): one long-running interactive process is kept
across requests, and each ``execute`` writes one line to it and reads lines
back. The warm process (its start-up, its loaded state) is what makes a pool
worth it::

    wrap_cli.py --persistent -- bc -q

    params  {"line": "x = 6 * 7", "lines": 0}      then    {"line": "x"}
    result  {"lines": []}                                   {"lines": ["42"]}

    ``line`` (no newline in it) is written to the process's stdin; ``lines``
    (default 1) lines are read back from its stdout within ``timeout_s``. The
    tool must answer each input line with exactly ``lines`` lines and flush
    its output per line (many tools do when asked: ``stdbuf -oL``,
    ``python3 -u``, ``sed -u``). Its stderr goes to poolkeeper's log. When no
    answer comes in time, or a line is longer than ``--max-output``, the
    process is restarted (its state is lost) and the request fails, so that a
    late answer is never paired with the next request. ``reset`` restarts it
    as well. Output already waiting before a request is dropped and logged.
    All client sessions on this worker share the one process.

Errors (JSON-RPC error codes): -32602 bad params; -32001 no usable answer:
none in time, or a line longer than ``--max-output`` (persistent; the process
was restarted); -32002 the process exited (persistent; started again on the
next request); -32003 the command cannot be started.
"""

from __future__ import annotations

import argparse
import os
import selectors
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

import poolkeeper_worker  # noqa: E402  (needs the path set up above)
from poolkeeper_worker import WorkerError  # noqa: E402

INVALID_PARAMS = -32602
TIMED_OUT = -32001
PROCESS_EXITED = -32002
CANNOT_START = -32003

CHUNK = 65536
MAX_LINES_PER_REQUEST = 10000


def _number(params: dict, key: str, default: float) -> float:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise WorkerError(f'"{key}" must be a positive number', code=INVALID_PARAMS)
    return float(value)


def _check_keys(params: object, allowed: set) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise WorkerError("params must be an object", code=INVALID_PARAMS)
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise WorkerError(f"unknown params: {', '.join(unknown)}; expected some of "
                          f"{', '.join(sorted(allowed))}", code=INVALID_PARAMS)
    return params


def _start(argv: list, **kwargs) -> subprocess.Popen:
    try:
        return subprocess.Popen(argv, **kwargs)
    except OSError as exc:
        raise WorkerError(f"cannot start {argv[0]!r}: {exc}", code=CANNOT_START) from exc


def run_bounded(argv: list, stdin: bytes, timeout: float, limit: int) -> dict:
    """Runs argv to completion, keeping at most `limit` bytes of each output.

    Reads both outputs while writing the input, so a tool that writes a lot
    before reading all of its input cannot deadlock against us, and output
    beyond `limit` is read and dropped rather than held in memory.
    """
    proc = _start(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    kept = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    truncated = False
    timed_out = False
    pending = memoryview(stdin)
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        selector.register(proc.stderr, selectors.EVENT_READ)
        if pending:
            os.set_blocking(proc.stdin.fileno(), False)
            selector.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while len(selector.get_map()) > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                stream = key.fileobj
                if stream is proc.stdin:
                    try:
                        pending = pending[os.write(stream.fileno(), pending[:CHUNK]):]
                    except BlockingIOError:
                        continue
                    except BrokenPipeError:
                        pending = pending[:0]  # the tool stopped reading; fine
                    if not pending:
                        selector.unregister(stream)
                        stream.close()
                    continue
                data = os.read(stream.fileno(), CHUNK)
                if not data:
                    selector.unregister(stream)
                    continue
                room = limit - len(kept[stream])
                if len(data) > room:
                    truncated = True
                kept[stream] += data[:max(room, 0)]
    if not timed_out:
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        proc.kill()
        proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        stream.close()
    return {
        "exit_code": proc.returncode,
        "stdout": kept[proc.stdout].decode("utf-8", errors="replace"),
        "stderr": kept[proc.stderr].decode("utf-8", errors="replace"),
        "truncated": truncated,
        "timed_out": timed_out,
    }


def one_shot_handler(prefix: list, default_timeout: float, limit: int):
    def handle(params, ctx):
        params = _check_keys(params, {"args", "stdin", "timeout_s"})
        args = params.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise WorkerError('"args" must be a list of strings', code=INVALID_PARAMS)
        stdin = params.get("stdin", "")
        if not isinstance(stdin, str):
            raise WorkerError('"stdin" must be a string', code=INVALID_PARAMS)
        timeout = _number(params, "timeout_s", default_timeout)
        return run_bounded(prefix + args, stdin.encode("utf-8"), timeout, limit)
    return handle


class PersistentCli:
    """One interactive process, fed a line and read back line by line."""

    def __init__(self, argv: list, default_timeout: float, limit: int):
        self._argv = argv
        self._default_timeout = default_timeout
        self._limit = limit
        self._proc: subprocess.Popen | None = None
        self._buffer = bytearray()

    def start(self) -> None:
        self.stop()
        # stderr is inherited: it is the worker's stderr, poolkeeper's log.
        self._proc = _start(self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            bufsize=0)
        os.set_blocking(self._proc.stdin.fileno(), False)
        os.set_blocking(self._proc.stdout.fileno(), False)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        self._buffer.clear()
        if proc is None:
            return
        # Its state is being thrown away, so there is nothing to wait politely for.
        proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()

    def _log(self, text: str) -> None:
        sys.stderr.write(f"wrap_cli: {text}\n")
        sys.stderr.flush()

    def _drop_stale_output(self) -> None:
        stale = bytes(self._buffer)
        self._buffer.clear()
        try:
            while data := os.read(self._proc.stdout.fileno(), CHUNK):
                stale += data
        except BlockingIOError:
            pass
        if stale:
            self._log(f"dropped {len(stale)} bytes of output nobody asked for: {stale[:200]!r}")

    def _write(self, data: bytes, deadline: float) -> None:
        fd = self._proc.stdin.fileno()
        pending = memoryview(data)
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_WRITE)
            while pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._fail(TIMED_OUT, "the process did not take its input in time")
                try:
                    pending = pending[os.write(fd, pending[:CHUNK]):]
                except BlockingIOError:
                    continue
                except BrokenPipeError:
                    self._exited()

    def _read_lines(self, count: int, deadline: float) -> list:
        fd = self._proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while (received := self._buffer.count(b"\n")) < count:
                if len(self._buffer) - (self._buffer.rfind(b"\n") + 1) > self._limit:
                    self._fail(TIMED_OUT, f"an answer line is longer than {self._limit} bytes")
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    self._fail(TIMED_OUT, f"expected {count} line(s) in time, got {received}")
                try:
                    data = os.read(fd, CHUNK)
                except BlockingIOError:
                    continue
                if not data:
                    self._exited()
                self._buffer += data
        lines = []
        for _ in range(count):
            end = self._buffer.index(b"\n")
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[:end + 1]
            if len(line) > self._limit:
                self._fail(TIMED_OUT, f"an answer line is longer than {self._limit} bytes")
            lines.append(line.decode("utf-8", errors="replace"))
        return lines

    def _fail(self, code: int, message: str) -> None:
        # After a missed answer the process's output no longer lines up with
        # the requests; only a fresh process is in a known state.
        self._log(f"{message}; restarting {self._argv[0]}")
        self.start()
        raise WorkerError(f"{message}; the process was restarted and its state lost",
                          code=code)

    def _exited(self) -> None:
        proc, self._proc = self._proc, None
        proc.kill()
        code = proc.wait()
        proc.stdin.close()
        proc.stdout.close()
        self._buffer.clear()
        self._log(f"{self._argv[0]} exited with status {code}")
        raise WorkerError(f"the process exited with status {code}; the next request "
                          f"starts a new one", code=PROCESS_EXITED, data={"exit_code": code})

    def handle(self, params, ctx):
        params = _check_keys(params, {"line", "lines", "timeout_s"})
        line = params.get("line")
        if not isinstance(line, str) or "\n" in line or "\r" in line:
            raise WorkerError('"line" must be a string without line breaks',
                              code=INVALID_PARAMS)
        count = params.get("lines", 1)
        if (isinstance(count, bool) or not isinstance(count, int)
                or not 0 <= count <= MAX_LINES_PER_REQUEST):
            raise WorkerError(f'"lines" must be an integer from 0 to {MAX_LINES_PER_REQUEST}',
                              code=INVALID_PARAMS)
        deadline = time.monotonic() + _number(params, "timeout_s", self._default_timeout)
        if self._proc is None or self._proc.poll() is not None:
            if self._proc is not None:
                self._log(f"{self._argv[0]} exited with status {self._proc.returncode}")
            self.start()
        self._drop_stale_output()
        self._write(line.encode("utf-8") + b"\n", deadline)
        return {"lines": self._read_lines(count, deadline)}


def main(argv: list) -> int:
    if "--" not in argv:
        sys.stderr.write("usage: wrap_cli.py [--persistent] [--timeout S] "
                         "[--max-output BYTES] -- COMMAND [ARG...]\n")
        return 2
    split = argv.index("--")
    command = argv[split + 1:]
    parser = argparse.ArgumentParser(
        prog="wrap_cli.py", usage="%(prog)s [options] -- COMMAND [ARG...]",
        description="Serve poolkeeper's worker protocol around a command-line tool.")
    parser.add_argument("--persistent", action="store_true",
                        help="keep one interactive process and talk to it line by line")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="default timeout_s of a request (default 30)")
    parser.add_argument("--max-output", type=int, default=1 << 20,
                        help="bytes kept of each output, or of one answer line (default 1 MiB)")
    options = parser.parse_args(argv[:split])
    if not command:
        parser.error("no command after --")
    if options.timeout <= 0 or options.max_output <= 0:
        parser.error("--timeout and --max-output must be positive")
    # Fail the start, not every request, when the tool is missing.
    if shutil.which(command[0]) is None:
        sys.stderr.write(f"wrap_cli.py: command not found: {command[0]}\n")
        return 127

    if options.persistent:
        cli = PersistentCli(command, options.timeout, options.max_output)
        try:
            cli.start()
        except WorkerError as exc:
            sys.stderr.write(f"wrap_cli.py: {exc}\n")
            return 1
        try:
            poolkeeper_worker.serve(cli.handle, reset=cli.start)
        finally:
            cli.stop()
    else:
        poolkeeper_worker.serve(one_shot_handler(command, options.timeout, options.max_output))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
