"""REST throughput: creates/s, reads/s and searches/s against a running server with N concurrent clients,
and the raw floor (the same rows inserted straight into SQLite) measured in the same run.

    python benchmarks/bench_rest.py [--n 2000] [--clients 32]

The last line is the ratio the server core must keep: per-resource create cost / raw insert cost.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from harness import Result, admin_headers, run_concurrently, running_server  # noqa: E402


def make_patient(i: int) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:bench:mrn", "value": f"MRN{i:07d}"}],
        "name": [{"family": f"Family{i % 500}", "given": ["Given", f"G{i}"]}],
        "gender": ("male", "female")[i % 2],
        "birthDate": f"19{50 + i % 50}-0{1 + i % 9}-1{i % 9}",
        "address": [{"line": [f"{i} Main St"], "city": "Springfield", "postalCode": f"{10000 + i}"}],
        "telecom": [{"system": "phone", "value": f"555-{i:04d}"}],
    }


def raw_floor(n: int) -> float:
    """Seconds per row to insert the same JSON straight into SQLite (WAL, one transaction per row)."""
    path = Path(tempfile.mkdtemp()) / "raw.db"
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute("CREATE TABLE r (id TEXT PRIMARY KEY, version INTEGER, updated REAL, content BLOB)")
    start = time.perf_counter()
    for i in range(n):
        con.execute("BEGIN")
        con.execute(
            "INSERT INTO r VALUES (?, 1, ?, ?)",
            (str(uuid.uuid4()), time.time(), orjson.dumps(make_patient(i))),
        )
        con.execute("COMMIT")
    elapsed = time.perf_counter() - start
    con.close()
    return elapsed / n


async def main(n: int, clients: int) -> None:
    with running_server() as base:
        ids: list[str] = [""] * n
        headers = {"Content-Type": "application/fhir+json"}

        async def create(client: httpx.AsyncClient, i: int) -> None:
            r = await client.post("/Patient", content=orjson.dumps(make_patient(i)), headers=headers)
            r.raise_for_status()
            ids[i] = r.json()["id"]

        async def read(client: httpx.AsyncClient, i: int) -> None:
            (await client.get(f"/Patient/{ids[i % n]}")).raise_for_status()

        async def search(client: httpx.AsyncClient, i: int) -> None:
            # names are encrypted at rest: exact search runs on their blind index
            params = {"family:exact": f"Family{i % 500}", "gender": "male"}
            (await client.get("/Patient", params=params)).raise_for_status()

        auth = admin_headers()
        results: list[Result] = [
            await run_concurrently("create", n, clients, create, base, auth),
            await run_concurrently("read", n, clients, read, base, auth),
            await run_concurrently("search", n // 2, clients, search, base, auth),
        ]
    floor = raw_floor(n)
    for r in results:
        print(r.line())
    create_cost = results[0].seconds / n
    print(f"raw floor  {1 / floor:>8.0f}/s  ({floor * 1e6:.0f} µs per row, sqlite3 direct)")
    print(
        f"create cost / raw floor = {create_cost / floor:.1f}x (target <= 10x); "
        f"reads/s = {results[1].rate:.0f} "
        f"(target >= 2000)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.clients))
