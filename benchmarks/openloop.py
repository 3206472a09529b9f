"""An open-loop HTTP/1.1 load generator: N keep-alive connections, a fixed total request rate.

wrk (closed loop) sends the next request when the previous answer arrives, so at 1,000
connections its latency is mostly queueing (connections / throughput) and says little about the
server at a given load. Here requests are *scheduled* at a constant rate, spread evenly over the
connections, whatever the server does; each latency is measured from the request's scheduled time,
not from when it could actually be sent (a connection still waiting for an answer sends the next
request as soon as it can, and that wait counts). This is wrk2's correction for coordinated
omission: a server that stalls cannot hide the stall by slowing the client down.

Small on purpose (asyncio Protocols, no HTTP library: the answer is read by Content-Length), so
the client costs a few per cent of a core at the rates one server process reaches; it runs on the
same machine as the server, which the figures must say.

    python benchmarks/openloop.py URL --rate 500 --connections 1000 --seconds 10 [-H 'Name: value']
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit


@dataclass
class Result:
    offered: float  # requests/s scheduled
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, from the scheduled send time
    errors: int = 0  # non-2xx answers, connection failures
    unsent: int = 0  # scheduled in the window but not answered when it closed (counted as too slow)
    # how late the client itself put requests on the wire while the connection was free: when this
    # is large the client (not the server) was short of CPU and the run says little about the server
    send_lags: list[float] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, p: float) -> float:
        """Latency at percentile p in ms; requests never answered count as infinitely slow."""
        total = len(self.latencies) + self.unsent
        if total == 0:
            return float("nan")
        rank = min(total - 1, int(p / 100 * total))
        ordered = sorted(self.latencies)
        return ordered[rank] * 1000 if rank < len(ordered) else float("inf")

    def line(self) -> str:
        return (
            f"offered {self.offered:7.0f}/s  answered {self.achieved:7.0f}/s"
            f"  p50 {self.percentile(50):8.1f} ms  p99 {self.percentile(99):8.1f} ms"
            f"  p99.9 {self.percentile(99.9):8.1f} ms"
            f"  errors {self.errors}  unanswered {self.unsent}  client lag p99 {self.client_lag(99):.1f} ms"
        )

    def client_lag(self, p: float) -> float:
        if not self.send_lags:
            return 0.0
        ordered = sorted(self.send_lags)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


class _Connection(asyncio.Protocol):
    """One client connection. When the server closes it (uvicorn drops keep-alive connections idle
    for 5 s, which low rates over 1,000 connections reach), it reconnects like a real client
    would; the time that takes counts in the latency of the requests waiting for it."""

    def __init__(self, request: bytes, result: Result, address: tuple[str, int]) -> None:
        self.request = request
        self.result = result
        self.address = address
        self.window = (0.0, 0.0)  # (start, end) of the measured period, time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.waiting: deque[float] = deque()  # scheduled times not yet sent
        self.in_flight: float | None = None  # scheduled time of the request on the wire
        self.buffer = bytearray()
        self.connecting = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.connecting = False
        self._send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.buffer.clear()
        if self.in_flight is not None:  # the answer will never come: send it again
            self.waiting.appendleft(self.in_flight)
            self.in_flight = None
        if self.waiting:
            self._reconnect()

    def _reconnect(self) -> None:
        if self.connecting:
            return
        self.connecting = True
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: self, *self.address))
        task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():  # the run is over
            return
        if task.exception() is not None:
            self.connecting = False
            self.result.errors += 1
            asyncio.get_running_loop().call_later(0.05, self._reconnect)

    def fire(self, scheduled: float) -> None:
        self.waiting.append(scheduled)
        if self.transport is None:
            self._reconnect()
        elif self.in_flight is None:  # free: any delay from now on is the client's own
            if self.window[0] <= scheduled < self.window[1]:
                self.result.send_lags.append(time.monotonic() - scheduled)
            self._send_next()

    def _send_next(self) -> None:
        if not self.waiting or self.transport is None or self.in_flight is not None:
            return
        self.in_flight = self.waiting.popleft()
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).lower()
            length = 0
            marker = head.find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            status = int(head[9:12])
            del self.buffer[: end + 4 + length]
            self._answered(status)

    def _answered(self, status: int) -> None:
        scheduled, self.in_flight = self.in_flight, None
        assert scheduled is not None
        start, end = self.window
        if start <= scheduled < end:
            if 200 <= status < 300:
                self.result.latencies.append(time.monotonic() - scheduled)
            else:
                self.result.errors += 1
        self._send_next()


async def run(
    url: str, *, rate: float, connections: int, seconds: float, headers: dict[str, str], warmup: float = 2.0
) -> Result:
    """Offer `rate` GETs/s of `url` over `connections` connections; measure after `warmup` seconds."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()
    result = Result(rate, seconds)
    conns: list[_Connection] = []
    for _ in range(connections):  # connect first: connection set-up is not what is measured
        _, proto = await loop.create_connection(
            lambda: _Connection(request, result, (host, port)), host, port
        )
        conns.append(proto)
    begin = time.monotonic() + 0.1  # the clock every latency is read with
    window = (begin + warmup, begin + warmup + seconds)
    for proto in conns:
        proto.window = window
    interval = 1.0 / rate
    k = 0
    while True:  # one scheduler for all: request k is due at begin + k/rate on connection k mod N
        due = begin + k * interval
        if due >= window[1]:
            break
        delay = due - time.monotonic()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        conns[k % connections].fire(due)
        k += 1
    await asyncio.sleep(max(0.0, window[1] - time.monotonic()) + 0.5)  # answers to the last requests
    for proto in conns:
        pending = ([proto.in_flight] if proto.in_flight is not None else []) + list(proto.waiting)
        result.unsent += sum(1 for s in pending if window[0] <= s < window[1])
        proto.waiting.clear()
        if proto.transport is not None:
            proto.transport.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("-H", "--header", action="append", default=[])
    args = parser.parse_args()
    headers = dict(h.split(": ", 1) for h in args.header)
    result = run_fast(
        run(args.url, rate=args.rate, connections=args.connections, seconds=args.seconds, headers=headers)
    )
    print(result.line())


def run_fast(coro: Coroutine[Any, Any, Result]) -> Result:
    """Run on uvloop when it is installed (the client's own cost is smaller there)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


if __name__ == "__main__":
    main()
