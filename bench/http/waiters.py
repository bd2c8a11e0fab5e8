#!/usr/bin/env python3
"""Many clients waiting on one session: what the daemon pays per waiter.

Run by `scripts/bench_http.sh --waiters N`, against a daemon whose pool has
exactly one session (max = 1) and a max_queue of at least N:

  1. one client leases the only session;
  2. the daemon's memory (VmRSS, VmHWM), threads and descriptors are read
     from /proc/PID;
  3. N clients connect (one keep-alive connection each) and ask for a lease
     with a long timeout; the pool's queue_length is polled until it is N;
  4. the same numbers are read again: memory per waiter is
     (VmRSS with the waiters - VmRSS before) / N;
  5. the held lease is released: exactly one waiter must get a lease
     (201) and the queue must be N - 1;
  6. every other waiter closes its connection: the queue must drain to 0
     (a client that goes away leaves the queue) with one cancellation each;
  7. the winner releases its lease on its own connection, and the daemon's
     descriptors go back to where they were.

With --rounds R the whole sequence runs R times on the same daemon: VmRSS
that keeps growing from round to round would be a leak, while VmRSS that
stays where the first round left it is memory the allocator keeps.

Any unexpected answer, a waiter answered early, a connection lost, or a
check that fails makes the exit status 1. Standard library only (asyncio).

  waiters.py --port PORT --pid PID [--pool echo] [--waiters 10000] [--rounds 1]
             [--timeout-ms 120000] [--connect-concurrency 500]
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import time

HOST = "127.0.0.1"


class Connection:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port):
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(reader, writer)

    def send(self, method, path, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
        self.writer.write(head.encode() + data)

    async def receive(self):
        """(status, parsed JSON body) of the next answer."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length) if length else b""
        return status, (json.loads(body) if body else None)

    async def request(self, method, path, body=None):
        self.send(method, path, body)
        await self.writer.drain()
        return await self.receive()

    async def close(self):
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def proc_numbers(pid):
    """VmRSS and VmHWM (bytes), threads and open descriptors of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out["threads"] = int(value)
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


class Failed(Exception):
    pass


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the daemon's process id")
    ap.add_argument("--pool", default="echo")
    ap.add_argument("--waiters", type=int, default=10000)
    ap.add_argument("--timeout-ms", type=int, default=120000, help="each waiter's acquire timeout")
    ap.add_argument("--connect-concurrency", type=int, default=500,
                    help="connections being opened at once")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat on the same daemon (memory that keeps growing would be a leak)")
    ap.add_argument("--phase-timeout", type=float, default=90.0,
                    help="seconds each phase may take before it counts as failed")
    args = ap.parse_args()
    n = args.waiters

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = n + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            raise Failed(f"{n} waiters need {need} descriptors; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    pool_path = f"/v1/pools/{args.pool}"
    control = await Connection.open(args.port)
    problems = []

    async def stats():
        status, body = await control.request("GET", pool_path)
        if status != 200:
            raise Failed(f"GET {pool_path}: {status} {body}")
        return body

    async def until(what, check):
        """Polls the pool's statistics until check(stats) holds; returns (stats, seconds)."""
        start = time.monotonic()
        delay = 0.005
        while True:
            s = await stats()
            if check(s):
                return s, time.monotonic() - start
            if time.monotonic() - start > args.phase_timeout:
                raise Failed(f"{what}: not within {args.phase_timeout:.0f} s "
                             f"(queue_length {s['queue_length']}, "
                             f"leased {s['sessions_by_state']['leased']})")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def one_round():
        s0, _ = await until("the pool's one session idle",
                            lambda s: s["sessions_by_state"]["idle"] == 1 and s["queue_length"] == 0)
        if s0["sessions"] != 1:
            raise Failed(f"the pool has {s0['sessions']} sessions; this measurement needs max = 1")

        # 1. Hold the only session.
        status, body = await control.request("POST", f"{pool_path}/leases", {"timeout_ms": 5000})
        if status != 201:
            raise Failed(f"the first lease: {status} {body}")
        held = body["lease"]
        before = proc_numbers(args.pid)

        # 3. N waiters, one connection each.
        answers = asyncio.Queue()
        waiters = []
        gate = asyncio.Semaphore(args.connect_concurrency)
        body_bytes = {"timeout_ms": args.timeout_ms}

        async def wait_one(i):
            async with gate:
                c = await Connection.open(args.port)
                c.send("POST", f"{pool_path}/leases", body_bytes)
                await c.writer.drain()
            waiters[i] = c
            try:
                status, answer = await c.receive()
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                await answers.put((i, None, f"connection lost: {e!r}"))
                return
            await answers.put((i, status, answer))

        waiters = [None] * n
        started = time.monotonic()
        tasks = [asyncio.create_task(wait_one(i)) for i in range(n)]
        s_full, _ = await until(f"{n} waiters queued", lambda s: s["queue_length"] >= n or not answers.empty())
        queued_s = time.monotonic() - started
        if not answers.empty():
            i, status, answer = answers.get_nowait()
            raise Failed(f"waiter {i} was answered while the session was held: {status} {answer}")
        if s_full["queue_length"] != n:
            raise Failed(f"queue_length {s_full['queue_length']}, expected {n}")
        with_waiters = proc_numbers(args.pid)

        # 5. Release the held lease: exactly one waiter gets it.
        released_at = time.monotonic()
        status, body = await control.request("DELETE", f"/v1/leases/{held}")
        if status != 200:
            raise Failed(f"releasing the held lease: {status} {body}")
        try:
            winner, status, answer = await asyncio.wait_for(answers.get(), args.phase_timeout)
        except asyncio.TimeoutError:
            raise Failed("no waiter got the released session") from None
        handoff_s = time.monotonic() - released_at
        if status != 201:
            raise Failed(f"waiter {winner}: expected a lease, got {status} {answer}")
        s_one, _ = await until("queue at N - 1 with the session leased",
                               lambda s: s["queue_length"] <= n - 1 and s["sessions_by_state"]["leased"] == 1)
        if s_one["queue_length"] != n - 1:
            problems.append(f"after the release queue_length is {s_one['queue_length']}, expected {n - 1}")
        # One more look (a full round trip later): nobody else was answered.
        await stats()
        while not answers.empty():
            i, st, a = answers.get_nowait()
            problems.append(f"waiter {i} was answered too: {st} {a}")

        # 6. Every other waiter goes away.
        closing_started = time.monotonic()
        for i, c in enumerate(waiters):
            if i == winner:
                continue
            tasks[i].cancel()
            c.writer.close()
        await asyncio.gather(*(t for i, t in enumerate(tasks) if i != winner), return_exceptions=True)
        s_drained, _ = await until("the queue drained", lambda s: s["queue_length"] == 0)
        drain_s = time.monotonic() - closing_started
        cancelled = s_drained["cancellations"] - s_full["cancellations"]
        if cancelled != n - 1:
            problems.append(f"{cancelled} cancellations counted, expected {n - 1}")
        if s_drained["sessions_by_state"]["leased"] != 1:
            problems.append(f"leased {s_drained['sessions_by_state']['leased']} after the drain, expected 1")
        while not answers.empty():
            i, st, a = answers.get_nowait()
            problems.append(f"waiter {i} was answered while going away: {st} {a}")

        # 7. The winner releases on its own connection.
        status, body = await waiters[winner].request("DELETE", f"/v1/leases/{answer['lease']}")
        if status != 200:
            problems.append(f"the winner's release: {status} {body}")
        await waiters[winner].close()
        s_end, _ = await until("the session idle again", lambda s: s["sessions_by_state"]["idle"] == 1)
        for key in ("timeouts", "rejections", "reclaimed", "start_failures"):
            if s_end[key] != s0[key]:
                problems.append(f"pool counter {key} went from {s0[key]} to {s_end[key]}")

        # The daemon's descriptors go back down as it notices the closed sockets.
        fd_deadline = time.monotonic() + args.phase_timeout
        while True:
            after = proc_numbers(args.pid)
            if after["fds"] <= before["fds"] + 1 or time.monotonic() > fd_deadline:
                break
            await asyncio.sleep(0.05)
        if after["fds"] > before["fds"] + 1:
            problems.append(f"the daemon holds {after['fds']} descriptors after the drain, "
                            f"{before['fds']} before the waiters")
        return {"before": before, "with": with_waiters, "after": after, "queued_s": queued_s,
                "handoff_s": handoff_s, "winner": winner, "drain_s": drain_s, "cancelled": cancelled}

    rounds = [await one_round() for _ in range(args.rounds)]
    await control.close()

    first = rounds[0]
    print(f"waiters: {n} (acquire timeout {args.timeout_ms} ms, one keep-alive connection each), "
          f"{len(rounds)} round(s) on one daemon")
    print()
    print(f"| round | VmRSS before | VmRSS with {n} waiting | VmRSS after they left | "
          "VmHWM with them | threads | descriptors before / with / after | "
          "memory per waiter | connect + queue | release to lease | queue drained after close |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k, r in enumerate(rounds, 1):
        b, w, a = r["before"], r["with"], r["after"]
        per = (w["VmRSS"] - b["VmRSS"]) / n
        print(f"| {k} | {mib(b['VmRSS'])} | {mib(w['VmRSS'])} | {mib(a['VmRSS'])} | {mib(w['VmHWM'])} | "
              f"{w['threads']} | {b['fds']} / {w['fds']} / {a['fds']} | {per:.0f} B | "
              f"{r['queued_s']:.2f} s | {r['handoff_s'] * 1000:.1f} ms | {r['drain_s']:.2f} s |")
    print()
    per_waiter = (first["with"]["VmRSS"] - first["before"]["VmRSS"]) / n
    print(f"memory per waiter: {per_waiter:.0f} bytes (first round: VmRSS growth / {n})")
    if problems:
        for p in problems:
            print(f"PROBLEM: {p}")
        return 1
    print("checks: passed (each round: one lease after the release, the queue drained to 0 with "
          f"{n - 1} cancellations, no unexpected answer, descriptors back to the start)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except Failed as e:
        print(f"waiters.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
