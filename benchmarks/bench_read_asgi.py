"""One Patient read's server-side cost, with no sockets: the app driven directly over ASGI.

    python benchmarks/bench_read_asgi.py [--reads 3000]

A clinician's token, the whole stack (auth, PDP, decryption, audit) on a fresh SQLite file; the
same app's `GET /health` (routing, middleware, a tiny JSON answer) is the floor measured in the
same run. What HTTP parsing and the network add is bench_read.py's business; this isolates what
the read path itself costs per request, so a change to it shows up without load-generator noise.
The last line is the ratio read / floor.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fhir_gateway.api.app import create_app  # noqa: E402
from fhir_gateway.auth.tokens import mint_token  # noqa: E402
from fhir_gateway.settings import load_settings  # noqa: E402

WARMUP = 200


async def per_request(app: Any, path: str, headers: list[tuple[bytes, bytes]], n: int) -> float:
    """Seconds per GET of `path`, answered 200."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def one() -> None:
        status: list[int] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])

        await app(dict(scope), receive, send)
        assert status == [200], status

    for _ in range(WARMUP):
        await one()
    start = time.perf_counter()
    for _ in range(n):
        await one()
    return (time.perf_counter() - start) / n


async def main(reads: int) -> None:
    folder = tempfile.mkdtemp(prefix="bench-asgi-")
    settings = load_settings(
        overrides={"database_url": f"sqlite+aiosqlite:///{folder}/b.db", "log_level": "WARNING"}
    )
    app = create_app(settings)
    clinician = mint_token(
        settings, sub="Practitioner/1", roles=["clinician"], scope="user/*.rs", purpose=["TREAT"]
    )
    admin = mint_token(settings, sub="bench", roles=["admin"], scope="system/*.*")
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as client:
            patient = {"resourceType": "Patient", "name": [{"family": "Read"}], "birthDate": "1970-01-01"}
            auth = {"Authorization": f"Bearer {admin}", "Content-Type": "application/fhir+json"}
            pid = (
                (await client.post("/fhir/Patient", json=patient, headers=auth))
                .raise_for_status()
                .json()["id"]
            )
        headers = [(b"host", b"b"), (b"authorization", f"Bearer {clinician}".encode())]
        read = await per_request(app, f"/fhir/Patient/{pid}", headers, reads)
        floor = await per_request(app, "/health", [(b"host", b"b")], reads)
    print(f"read   {read * 1e6:7.0f} us/request  ({1 / read:6.0f}/s on one core, no sockets)")
    print(f"health {floor * 1e6:7.0f} us/request  (routing + middleware floor)")
    print(
        f"Patient read costs {read / floor:.1f}x the framework floor "
        f"({read * 1e6:.0f} us vs {floor * 1e6:.0f} us)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--reads", type=int, default=3000)
    asyncio.run(main(parser.parse_args().reads))
