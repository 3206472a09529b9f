"""Audit trail throughput: AuditEvents/s through AuditLog (build, seal, group commit, hash chain,
search index) against the raw floor: the same event bytes inserted straight into SQLite with
sqlite3 executemany in the same batch size, measured in the same run.

    python benchmarks/bench_audit.py [--n 20000] [--clients 200] [--batch 500]

Also printed: what `record()` costs the request that calls it (p50/p99), which is what the audit
adds to a response's critical path. The last line is the ratio: AuditLog cost per event / raw floor.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fhir_gateway.audit.chain import seal, verify  # noqa: E402
from fhir_gateway.audit.config import AuditSettings  # noqa: E402
from fhir_gateway.audit.events import AuditSource, Interaction, rest_event  # noqa: E402
from fhir_gateway.audit.writer import AuditLog  # noqa: E402
from fhir_gateway.context import RequestContext  # noqa: E402
from fhir_gateway.store.store import Store  # noqa: E402

SOURCE = AuditSource(site="bench", observer="bench-gw")


def build(i: int) -> dict[str, object]:
    ctx = RequestContext(
        subject=f"user-{i % 50}",
        roles=("clinician",),
        purpose_of_use=("TREAT",),
        fhir_user=f"Practitioner/{i % 50}",
        jti=f"jti-{i}",
    )
    return rest_event(
        ctx,
        SOURCE,
        Interaction.READ,
        resources=[f"Observation/obs-{i}"],
        patients=[f"pat-{i % 1000}"],
        client_address="10.0.0.7",
    )


async def through_audit_log(n: int, clients: int, batch: int, work: Path) -> tuple[float, list[float]]:
    store = Store(f"sqlite+aiosqlite:///{work}/audit.db")
    await store.upgrade()
    log = AuditLog(store, AuditSettings(batch_size=batch, spill_path=str(work / "spill")))
    await log.start()
    costs: list[float] = []
    events = [build(i) for i in range(n)]  # built by the request handlers; not what is measured

    async def client(k: int) -> None:
        for i in range(k, n, clients):
            started = time.perf_counter()
            await log.record(events[i])
            costs.append(time.perf_counter() - started)
            await asyncio.sleep(0)  # a request does other work between audits

    started = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    await log.flush()
    elapsed = time.perf_counter() - started
    await log.stop()
    result = await verify(store)
    assert result.ok and result.checked == n, result
    await store.dispose()
    return elapsed, costs


def raw_floor(n: int, batch: int, work: Path) -> float:
    """Seconds to insert the same serialised events with sqlite3 executemany, batch by batch."""
    bodies = [seal(build(i)).body for i in range(n)]
    conn = sqlite3.connect(work / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, event BLOB NOT NULL)")
    started = time.perf_counter()
    for offset in range(0, n, batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO events (seq, event) VALUES (?, ?)",
            [(offset + k + 1, body) for k, body in enumerate(bodies[offset : offset + batch])],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


async def main(n: int, clients: int, batch: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp:
        work = Path(tmp)
        elapsed, costs = await through_audit_log(n, clients, batch, work)
        floor = raw_floor(n, batch, work)
    costs.sort()
    p50 = statistics.median(costs) * 1e6
    p99 = costs[int(len(costs) * 0.99)] * 1e6
    print(
        f"AuditLog   {n / elapsed:>8.0f} events/s  ({elapsed / n * 1e6:.0f} µs per event, {clients} clients)"
    )
    print(f"record()   p50 {p50:.0f} µs  p99 {p99:.0f} µs on the caller's path (no I/O awaited)")
    print(f"raw floor  {n / floor:>8.0f} events/s  ({floor / n * 1e6:.0f} µs per row, sqlite3 direct)")
    print(f"AuditLog cost per event / raw insert floor = {elapsed / floor:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.clients, args.batch))
