"""`fhir-gateway serve --workers 2` as a real subprocess: both workers answer, the MLLP listener is
bound once (by the primary), every request is audited into one unbroken hash chain, and
`fhir-gateway audit verify` passes after a clean stop — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import fhir_gateway
from tests.conftest import database_url

READS = 60
CLI = [sys.executable, "-m", "fhir_gateway.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workers_of(pid: int) -> list[int]:
    """The worker processes (multiprocessing spawn children) of the supervisor `pid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        if ppid == pid and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with database_url(request.param, tmp_path, "workers") as found:
        yield found


async def _wait_until_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError("the server exited during start-up")
            try:
                if (await client.get(f"{base}/metadata", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("the server did not start")


async def _mllp(port: int, message: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"\x0b" + message.encode() + b"\x1c\r")
    await writer.drain()
    ack = (await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 20)).decode()
    writer.close()
    return ack


async def test_two_workers_share_one_port_one_listener_and_one_audit_chain(url: str, tmp_path: Path) -> None:
    port, mllp_port = _free_port(), _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(fhir_gateway.__file__).parents[1]),  # this tree's package, from any cwd
        "FHIR_GATEWAY_SECURITY__ALLOW_ANONYMOUS": "true",
        "FHIR_GATEWAY_WORKERS": "2",
    }
    args = ["serve", "--port", str(port), "--database-url", url, "--mllp-port", str(mllp_port)]
    output = tmp_path / "server.log"  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(
        [*CLI, *args], cwd=tmp_path, env=env, stdout=output.open("wb"), stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        await _wait_until_up(base, proc)
        assert len(_workers_of(proc.pid)) == 2  # FHIR_GATEWAY_WORKERS=2 was read
        async with httpx.AsyncClient(base_url=base, headers={"Accept": "application/fhir+json"}) as c:
            created = await c.post("/Patient", json={"resourceType": "Patient"})
            assert created.status_code == 201
            pid = created.json()["id"]

        async def read_on_a_new_connection() -> httpx.Response:
            async with httpx.AsyncClient(base_url=base) as fresh:  # spread over both workers
                return await fresh.get(f"/Patient/{pid}")

        answers = await asyncio.gather(*(read_on_a_new_connection() for _ in range(READS)))
        assert {r.status_code for r in answers} == {200}
        assert {r.headers["etag"] for r in answers} == {'W/"1"'}
        ack = await _mllp(
            mllp_port,
            "MSH|^~\\&|ADT|HOSP|GW|GW|20240101120000||ADT^A01|M1|P|2.5\rPID|1||9^^^HOSP^MR||Roe^Ann\r",
        )
        assert "MSA|AA|M1" in ack
        assert len(_workers_of(proc.pid)) == 2  # no worker died binding the MLLP port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    log = output.read_text(errors="replace")
    assert proc.returncode == 0 and "worker_died" not in log, log[-2000:]
    verify = subprocess.run(
        [*CLI, "audit", "verify", "--database-url", url], capture_output=True, text=True, env=env
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    count = int(re.search(r"intact: (\d+) event", verify.stdout).group(1))  # type: ignore[union-attr]
    assert count >= READS + 1  # every read and the create, from both workers, none lost at stop
