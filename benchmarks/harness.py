"""Benchmark harness: start a real `fhir-gateway serve` on a free port, and time concurrent httpx clients.

Benchmarks are measurements, not tests: they print figures and never assert on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fhir_gateway_command() -> list[str]:
    exe = shutil.which("fhir-gateway")
    return [exe] if exe else [sys.executable, "-m", "fhir_gateway.cli"]


def token(*args: str) -> str:
    """A development token from `fhir-gateway token` (the same CLI a user runs)."""
    command = [*fhir_gateway_command(), "token", *args]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return out.stdout.strip()


def admin_headers() -> dict[str, str]:
    return {"Authorization": "Bearer " + token("--sub", "bench", "--role", "admin", "--scope", "system/*.*")}


@contextlib.contextmanager
def fresh_database(database_url: str | None, name: str) -> Iterator[str]:
    """An empty database for one benchmark step: a SQLite file in a folder of its own, or, given a
    PostgreSQL URL, a new schema in that database (`?search_path=`), dropped afterwards."""
    if database_url is None:
        work = tempfile.mkdtemp(prefix="bench-")
        try:
            yield f"sqlite+aiosqlite:///{work}/{name}.db"
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    asyncio.run(_postgres(database_url, f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{database_url}?search_path={schema}"
    finally:
        asyncio.run(_postgres(database_url, f'DROP SCHEMA "{schema}" CASCADE'))


async def _postgres(database_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def running_server(database_url: str | None = None, env: dict[str, str] | None = None) -> Iterator[str]:
    """A server process on a fresh SQLite file (or the given URL); yields the FHIR base URL."""
    work = tempfile.mkdtemp(prefix="bench-")
    port = free_port()
    url = database_url or f"sqlite+aiosqlite:///{work}/bench.db"
    cmd = [*fhir_gateway_command(), "serve", "--port", str(port), "--database-url", url]
    proc = subprocess.Popen(
        cmd,
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "FHIR_GATEWAY_LOG_LEVEL": "WARNING", **(env or {})},
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/metadata", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError("server did not start")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

    def line(self) -> str:
        return (
            f"{self.name:<10} {self.count:>6} ops  {self.rate:>8.0f}/s  p50 {self.percentile(50):6.1f} ms  "
            f"p99 {self.percentile(99):6.1f} ms"
        )


async def run_concurrently(
    name: str,
    total: int,
    clients: int,
    op: Callable[[httpx.AsyncClient, int], Awaitable[None]],
    base: str,
    headers: dict[str, str] | None = None,
) -> Result:
    latencies: list[float] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60, headers=headers) as client:

        async def worker() -> None:
            for i in counter:
                t0 = time.perf_counter()
                await op(client, i)
                latencies.append(time.perf_counter() - t0)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - start
    return Result(name, total, elapsed, latencies)
