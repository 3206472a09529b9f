"""The emergency read path under load: `$break-glass` then the first read of that patient, p50/p99,
against a plain read of a patient measured in the same run (in-process ASGI, SQLite file).

    python benchmarks/bench_breakglass.py [--n 400] [--clients 16]

Each operation opens a grant for a fresh patient (durable start AuditEvent, grant row and outbox
row) and reads the patient. Also printed: the cost of `active_grants`, the lookup the policy
decision point makes once per request for callers with the emergency_access role.
Each is measured alone (one client: the latency of the path itself) and under `--clients`
concurrent clients (one event loop, so a request's latency includes the others' work: the
in-process read never yields, so its figure is its own service time, while the emergency path
waits for its durable audit commit and interleaves). The last line is the emergency path's p99
under load and its ratio to the plain read's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import orjson
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).parent))
from harness import Result  # noqa: E402

from fhir_gateway.api.app import fhir_router  # noqa: E402
from fhir_gateway.api.runtime import Runtime  # noqa: E402
from fhir_gateway.auth.tokens import mint_token  # noqa: E402
from fhir_gateway.logs import configure_logging  # noqa: E402
from fhir_gateway.privacy.breakglass import active_grants  # noqa: E402
from fhir_gateway.settings import load_settings  # noqa: E402

WARMUP = 10  # emergency operations before measuring: the first ones compile their SQL statements
Operation = Callable[[httpx.AsyncClient, int], Awaitable[None]]
FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


async def timed(
    name: str,
    total: int,
    clients: int,
    op: Operation,
    client: httpx.AsyncClient,
) -> Result:
    latencies: list[float] = []
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            t0 = time.perf_counter()
            await op(client, i)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return Result(name, total, time.perf_counter() - start, latencies)


async def main(n: int, clients: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-bg-"))
    settings = load_settings(
        None,
        environ={},
        overrides={
            "database_url": f"sqlite+aiosqlite:///{work}/bench.db",
            "security": {"allow_anonymous": True},
            "log_level": "ERROR",
        },
    )
    configure_logging(settings.log_level)  # as create_app does; the log channel's lines are filtered
    # The app as create_app assembles it: one AuditLog (runtime.audit) for reads and grants alike,
    # and the runtime's outbox dispatcher, both started by the router's lifespan.
    settings = settings.model_copy(
        update={"audit": settings.audit.model_copy(update={"spill_path": str(work / "spill")})}
    )
    runtime = Runtime(settings)
    app = FastAPI()
    app.include_router(fhir_router(runtime=runtime))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench/fhir", timeout=60) as client:
            for i in range(2 * n + WARMUP):
                body = orjson.dumps({"resourceType": "Patient", "id": f"p{i}", "gender": "unknown"})
                (await client.put(f"/Patient/p{i}", content=body, headers=FHIR)).raise_for_status()
            tokens = [
                {
                    **FHIR,
                    "Authorization": "Bearer "
                    + mint_token(
                        settings,
                        sub=f"dr-{w}",
                        roles=["clinician", "emergency_access"],
                        scope="user/*.rs",
                    ),
                }
                for w in range(clients)
            ]
            reason = orjson.dumps(
                {"resourceType": "Parameters", "parameter": [{"name": "reason", "valueString": "bench"}]}
            )

            async def plain(c: httpx.AsyncClient, i: int) -> None:
                (await c.get(f"/Patient/p{n + i}", headers=tokens[i % clients])).raise_for_status()

            async def emergency(c: httpx.AsyncClient, i: int) -> None:
                headers = tokens[i % clients]
                (
                    await c.post(f"/Patient/p{i}/$break-glass", content=reason, headers=headers)
                ).raise_for_status()
                (await c.get(f"/Patient/p{i}", headers=headers)).raise_for_status()

            async def phase(name: str, total: int, width: int, op: Operation) -> Result:
                # Each phase starts with the audit queue empty: a backlog of another phase's events
                # (one 400-event flush runs inline for tens of ms) would be charged to this one.
                await runtime.audit.flush(timeout=60)
                return await timed(name, total, width, op, client)

            await phase("warmup", min(50, n), clients, plain)
            await phase("warmup", WARMUP, 1, lambda c, i: emergency(c, 2 * n + i))
            read_1 = await phase("read x1", n // 4, 1, plain)
            glass_1 = await phase("emerg x1", n // 4, 1, emergency)
            read = await phase(f"read x{clients}", n, clients, plain)
            offset = n // 4
            glass = await phase(f"emerg x{clients}", n, clients, lambda c, i: emergency(c, offset + i))

            # The PDP's per-request lookup, for a caller with one live grant (the usual case).
            lookup_headers = {
                **FHIR,
                "Authorization": "Bearer "
                + mint_token(settings, sub="dr-lookup", roles=["emergency_access"], scope="user/*.rs"),
            }
            (
                await client.post(
                    f"/Patient/p{2 * n - 1}/$break-glass", content=reason, headers=lookup_headers
                )
            ).raise_for_status()
            lookups = 2000
            t0 = time.perf_counter()
            for _ in range(lookups):
                await active_grants(runtime.store, "dr-lookup")
            lookup_us = (time.perf_counter() - t0) / lookups * 1e6
    shutil.rmtree(work, ignore_errors=True)
    for result in (read_1, glass_1, read, glass):
        print(result.line())
    print(f"active_grants lookup (one live grant): {lookup_us:.0f} us per call")
    ratio = glass.percentile(99) / read.percentile(99)
    print(
        f"emergency path ($break-glass + first read), {clients} clients: p99 {glass.percentile(99):.1f} ms "
        f"(p50 {glass.percentile(50):.1f}, alone p99 {glass_1.percentile(99):.1f}) = {ratio:.1f}x "
        f"plain read p99 {read.percentile(99):.1f} ms; seed <=50 ms, aim <10 ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.clients))
