"""The app as a whole: database outages, the plugin router, the request context from tokens."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from fhir_gateway import create_app, fhir_router
from fhir_gateway.auth.tokens import mint_token
from tests.conftest import make_settings, open_client

FHIR = {"Content-Type": "application/fhir+json"}


async def test_database_down_gives_503_and_not_ready() -> None:
    settings = make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    async for client in open_client(settings):
        ready = await client.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["issue"][0]["code"] == "transient"
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
        assert r.status_code == 503
        assert r.json()["resourceType"] == "OperationOutcome"
        read = await client.get("/fhir/Patient/1")
        assert read.status_code == 503
        assert (await client.get("/fhir/metadata")).status_code == 200


async def test_router_mounts_in_another_app(tmp_path: Path) -> None:
    host = FastAPI()

    @host.get("/hello")
    async def hello() -> dict[str, str]:
        return {"hello": "world"}

    host.include_router(
        fhir_router(make_settings(f"sqlite+aiosqlite:///{tmp_path}/plugin.db"), prefix="/api/fhir")
    )
    async with host.router.lifespan_context(host):
        transport = httpx.ASGITransport(app=host)
        async with httpx.AsyncClient(transport=transport, base_url="http://host") as c:
            assert (await c.get("/hello")).json() == {"hello": "world"}
            r = await c.post("/api/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
            assert r.status_code == 201
            assert r.headers["location"].startswith("http://host/api/fhir/Patient/")
            bad = await c.get("/api/fhir/Patient/x", headers={"Authorization": "Basic abc"})
            assert bad.status_code == 401  # errors are OperationOutcomes inside a host app too
            assert bad.json()["resourceType"] == "OperationOutcome"


async def test_tokens_are_checked_when_present(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    good = mint_token(settings, sub="Practitioner/1", roles=["clinician"], scope="user/*.rs")
    expired = mint_token(settings, sub="u", minutes=-5)
    async for client in open_client(settings):
        assert (
            await client.get("/fhir/Patient", headers={"Authorization": f"Bearer {good}"})
        ).status_code == 200
        for header in (f"Bearer {expired}", "Bearer not.a.jwt", "Bearer ", "Token abc"):
            r = await client.get("/fhir/Patient", headers={"Authorization": header})
            assert r.status_code == 401, header
            assert r.headers["www-authenticate"] == "Bearer"


async def test_create_app_with_defaults_serves_on_embedded_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No settings, no configuration: the embedded SQLite default in the working directory."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FHIR_GATEWAY_")]:
        monkeypatch.delenv(name)
    app = create_app()
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/fhir/metadata")).json()["resourceType"] == "CapabilityStatement"
            anonymous = await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
            assert anonymous.status_code == 401  # secure by default: no token, no data
            token = mint_token(app.state.runtime.settings, sub="u", roles=["admin"], scope="system/*.*")
            auth = {**FHIR, "Authorization": f"Bearer {token}"}
            created = await c.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=auth)
            assert created.status_code == 201
    assert any(tmp_path.rglob("*.db"))


async def test_mllp_listener_runs_with_the_server(tmp_path: Path) -> None:
    import asyncio
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/mllp.db", mllp_port=port)
    message = "MSH|^~\\&|ADT|HOSP|GW|GW|20240101120000||ADT^A01|M1|P|2.5\rPID|1||9^^^HOSP^MR||Roe^Ann\r"
    async for client in open_client(settings):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x0b" + message.encode() + b"\x1c\r")
        await writer.drain()
        ack = (await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 10)).decode()
        writer.close()
        assert "MSA|AA|M1" in ack
        found = (await client.get("/fhir/Patient", params={"identifier": "9"})).json()
        assert found["total"] == 1


async def test_dicom_listener_runs_with_the_server(tmp_path: Path) -> None:
    """--dicom-port starts the C-STORE SCP with the server; a C-ECHO from a real SCU is answered."""
    import asyncio
    import socket

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/scp.db", dicom_port=port, dicom={"blob_path": str(tmp_path / "b")}
    )

    def echo() -> int:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="FHIRGW")
        assert assoc.is_established
        status = assoc.send_c_echo()
        assoc.release()
        return int(status.Status)

    async for _client in open_client(settings):
        assert await asyncio.to_thread(echo) == 0x0000
