"""Sync with systems of record, end to end on SQLite and PostgreSQL: the `$changes` feed (order,
cursor, paging, the PDP, concurrent commits) and a system of record going down and coming back
(a real HTTP receiver on 127.0.0.1 that is switched to failing and back)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from fhir_gateway.api.app import create_app
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.auth.tokens import mint_token
from fhir_gateway.context import RequestContext
from fhir_gateway.pipeline.tables import change_feed
from fhir_gateway.routing import availability
from fhir_gateway.routing.outbox import messages, release
from fhir_gateway.store.store import Transaction
from tests.conftest import make_settings, put_bundle
from tests.integration.test_provenance import PIPELINE, Database

LAB = "http://terminology.hl7.org/CodeSystem/observation-category"
CURSOR = "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-cursor"
POSITION = "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-position"
LIS = RequestContext.system("hl7v2", "LIS^HOSP")  # the laboratory's system: SoR for lab-results
RULES = f"""
version: sync-v1
policy: http://example.org/authority
categories:
  lab-results:
    match: [{{resource_types: [Observation, DiagnosticReport], categories: ["{LAB}|laboratory"]}}]
    authoritative: [{{channel: hl7v2, system: "LIS^*"}}]
    contributors: [{{channel: rest}}, {{channel: hl7v2}}]
    elements: [status, valueQuantity]
    non_authoritative: accept-secondary
  demographics:
    match: [{{resource_types: [Patient]}}]
    authoritative: [{{role: registration}}]
    contributors: [{{}}]
"""


@pytest.fixture
def db(tmp_path: Path, any_db_url: str) -> Database:
    return tmp_path, any_db_url


@asynccontextmanager
async def serve(db: Database, **authority: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    tmp_path, url = db
    rules = tmp_path / "authority.yaml"
    rules.write_text(RULES)
    settings = make_settings(url, pipeline=PIPELINE, authority={"rules": str(rules), **authority})
    app = create_app(settings)
    runtime: Runtime = app.state.runtime
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.headers["Accept"] = "application/fhir+json"
            yield client, runtime


def lab(res_id: str, patient: str = "p1", value: float = 13.5, **more: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": res_id,
        "status": "final",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}],
        "code": {"text": "Hb"},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": value, "unit": "g/dL"},
        **more,
    }


async def as_lis(runtime: Runtime, *resources: dict[str, Any]) -> None:
    gateway = await runtime.ready_gateway()
    await gateway.submit(put_bundle(*resources), LIS)


async def patients(client: httpx.AsyncClient, *ids: str) -> None:
    for pid in ids:
        r = await client.put(f"/fhir/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        assert r.status_code in (200, 201), r.text


async def pull(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    r = await client.get("/fhir/$changes", params={"category": "lab-results", **params})
    assert r.status_code == 200, r.text
    return dict(r.json())


def cursor_of(bundle: dict[str, Any]) -> int:
    [ext] = bundle["meta"]["extension"]
    assert ext["url"] == CURSOR
    return int(ext["valueString"])


def changed(bundle: dict[str, Any]) -> list[str]:
    """`Type/id/version` of each entry, in feed order."""
    return [f"{e['fullUrl'].split('/fhir/')[1]}/{e['response']['etag'][3:-1]}" for e in bundle["entry"]]


def positions(bundle: dict[str, Any]) -> list[int]:
    return [int(e["extension"][0]["valueString"]) for e in bundle["entry"]]


async def probed(runtime: Runtime) -> None:
    """Wait (bounded) for the start-up health probe to have recorded the SoR's status."""
    for _ in range(200):
        if "sor-lis" in await availability.statuses(runtime.store):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the health probe did not run")


# --- the change feed ----------------------------------------------------------------------------


async def test_changes_come_in_commit_order_with_a_durable_cursor_and_pages(db: Database) -> None:
    async with serve(db) as (client, runtime):
        await patients(client, "p1")
        await as_lis(runtime, lab("a"), lab("b", value=9.0))
        r = await client.put("/fhir/Observation/a", json=lab("a", note=[{"text": "haemolysed"}]))
        assert r.status_code == 200, r.text  # a contribution: a secondary version 2
        gateway = await runtime.ready_gateway()
        delete = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": "Observation/b"}}],
        }
        await gateway.submit(delete, LIS)

        first = await pull(client, _count="2")
        assert first["type"] == "history"
        assert changed(first) == ["Observation/a/1", "Observation/b/1"]  # no Patient: another category
        assert positions(first) == [1, 2] and cursor_of(first) == 2
        [nxt] = [link["url"] for link in first["link"] if link["relation"] == "next"]
        assert "_cursor=2" in nxt and "category=lab-results" in nxt
        second = await pull(client, _count="2", _cursor="2")
        assert changed(second) == ["Observation/a/2", "Observation/b/2"]
        assert [e["request"]["method"] for e in second["entry"]] == ["PUT", "DELETE"]
        assert second["entry"][0]["resource"]["note"] == [{"text": "haemolysed"}]
        assert "resource" not in second["entry"][1]  # the deletion
        # Caught up: nothing more, the cursor stays, and no next link.
        third = await pull(client, _count="2", _cursor=str(cursor_of(second)))
        assert third["entry"] == [] and cursor_of(third) == 4
        assert [link["relation"] for link in third["link"]] == ["self"]
        # A later write lands after the cursor; pulling again from the start gives the same order.
        await as_lis(runtime, lab("c"))
        assert changed(await pull(client, _cursor="4")) == ["Observation/c/1"]
        assert positions(await pull(client)) == [1, 2, 3, 4, 5]


async def test_changes_go_through_the_policy_decision_point(db: Database) -> None:
    async with serve(db) as (client, runtime):
        await patients(client, "p1", "p2")
        await as_lis(runtime, lab("mine", "p1"), lab("theirs", "p2"), lab("mine2", "p1"))
        settings = runtime.settings
        own = mint_token(
            settings,
            sub="Patient/p1",
            roles=["clinician"],
            scope="patient/*.rs",
            patient="p1",
            purpose=["TREAT"],
        )
        r = await client.get(
            "/fhir/$changes", params={"category": "lab-results"}, headers={"Authorization": f"Bearer {own}"}
        )
        assert r.status_code == 200, r.text
        assert changed(r.json()) == ["Observation/mine/1", "Observation/mine2/1"]  # not p2's
        only_patients = mint_token(settings, sub="u", roles=["clinician"], scope="user/Patient.read")
        hdr = {"Authorization": f"Bearer {only_patients}"}
        r = await client.get("/fhir/$changes", params={"category": "lab-results"}, headers=hdr)
        assert r.status_code == 403
        for bad in ({"category": "gossip"}, {}, {"category": "lab-results", "_cursor": "-1"}):
            assert (await client.get("/fhir/$changes", params=bad)).status_code == 400
        assert (
            await client.get("/fhir/$changes", params={"category": "lab-results", "_count": "0"})
        ).status_code == 400
        statement = (await client.get("/fhir/metadata")).json()
        assert "changes" in [op["name"] for op in statement["rest"][0]["operation"]]


@pytest.mark.postgres
async def test_a_transaction_that_commits_late_is_not_skipped(pg_url: str, tmp_path: Path) -> None:
    """T1 inserts its feed row first but commits last: a cursor over insertion ids would skip it."""
    async with serve((tmp_path, pg_url)) as (client, runtime):
        await patients(client, "p1")
        gateway = await runtime.ready_gateway()
        inside, release_t1 = asyncio.Event(), asyncio.Event()

        async def hold(tx: Transaction, results: Any) -> None:
            inside.set()
            await release_t1.wait()

        slow = asyncio.create_task(gateway.submit(put_bundle(lab("slow")), LIS, within=hold))
        await inside.wait()
        await as_lis(runtime, lab("fast"))  # T2: inserted after T1, committed before it
        before = await pull(client)
        assert changed(before) == ["Observation/fast/1"]  # T1 is not visible yet, and not numbered
        release_t1.set()
        await slow
        after = await pull(client, _cursor=str(cursor_of(before)))
        assert changed(after) == ["Observation/slow/1"] and positions(after) == [2]
        async with runtime.store.reader() as conn:
            rows = (await conn.execute(select(change_feed.c.res_id, change_feed.c.id))).all()
        ids: dict[str, int] = {row.res_id: row.id for row in rows}
        assert ids["slow"] < ids["fast"]  # the insertion order the feed did not follow


# --- a system of record goes down and comes back ------------------------------------------------


class Receiver:
    """A real HTTP server on 127.0.0.1: answers 200 (or 503 while `failing`), keeps what was POSTed."""

    def __init__(self) -> None:
        self.failing = False
        self.received: list[dict[str, Any]] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                length = next(
                    (int(h.split(":")[1]) for h in lines if h.lower().startswith("content-length:")), 0
                )
                body = await reader.readexactly(length) if length else b""
                if self.failing:
                    status = b"503 Service Unavailable"
                else:
                    status = b"200 OK"
                    if lines[0].startswith("POST"):
                        self.received.append(orjson.loads(body))
                writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        writer.close()

    async def __aenter__(self) -> Receiver:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def sor(receiver: Receiver, **outage: Any) -> dict[str, Any]:
    return {
        "subscribers": [
            {
                "category": "lab-results",
                "channel": "sor-lis",
                "url": f"{receiver.url}/updates",
                "system_of_record": True,
                "health_url": f"{receiver.url}/health",
            }
        ],
        "outage": {"failure_threshold": 2, "status_cache_seconds": 0, "probe_seconds": 3600, **outage},
    }


async def test_outage_serves_the_last_authoritative_version_with_a_warning_and_catches_up(
    db: Database,
) -> None:
    async with Receiver() as receiver, serve(db, **sor(receiver)) as (client, runtime):
        dispatcher = runtime.breakglass.dispatcher
        await dispatcher.stop()  # this test drives the deliveries itself, pass by pass
        await probed(runtime)
        await patients(client, "p1")
        await as_lis(runtime, lab("hb"))
        assert (await client.get("/fhir/Observation/hb")).headers.get("Warning") is None

        receiver.failing = True
        note = {"text": "Sample haemolysed per Dr. Jane Doe"}
        r = await client.put("/fhir/Observation/hb", json=lab("hb", note=[note]))
        assert r.status_code == 200, r.text  # a contribution: kept as a secondary version 2
        fresh = lab("only-ours", note=[{"text": "point of care"}])
        assert (await client.put("/fhir/Observation/only-ours", json=fresh)).status_code == 201
        assert await dispatcher.deliver_due() == 0  # the SoR answers 503: one failed pass
        statuses = await availability.statuses(runtime.store)
        assert statuses["sor-lis"].available and statuses["sor-lis"].failures == 1
        await release(runtime.store, "sor-lis")  # the back-off has passed
        assert await dispatcher.deliver_due() == 0  # the second failure in a row: unavailable
        down = (await availability.statuses(runtime.store))["sor-lis"]
        assert (down.available, down.last_error) == (False, "HTTP 503")

        # A read is served the version the SoR wrote, and says so.
        r = await client.get("/fhir/Observation/hb")
        assert r.status_code == 200
        assert r.json()["meta"]["versionId"] == "1" and "note" not in r.json()
        warning = r.headers["Warning"]
        assert warning.startswith(
            '110 fhir-gateway "The system of record for lab-results is unavailable since'
        )
        assert "Jane" not in warning and "haemolysed" not in warning  # no PHI
        # Data the SoR never wrote is served as it is, with the warning that it may be stale.
        r = await client.get("/fhir/Observation/only-ours")
        assert r.json()["meta"]["versionId"] == "1" and r.headers["Warning"].startswith("199 ")
        # A search: the SoR's version, and an outcome entry naming the category.
        bundle = (await client.get("/fhir/Observation", params={"_id": "hb"})).json()
        [match] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        [outcome] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
        assert match["meta"]["versionId"] == "1"
        [issue] = outcome["issue"]
        assert (issue["severity"], issue["code"]) == ("warning", "transient")
        assert "lab-results" in issue["diagnostics"] and "Jane" not in issue["diagnostics"]
        # Another category is not affected.
        assert (await client.get("/fhir/Patient/p1")).headers.get("Warning") is None
        # $everything and a batch's GET are client reads too.
        r = await client.get("/fhir/Patient/p1/$everything")
        everything = r.json()["entry"]
        assert r.headers["Warning"].startswith("110 ")
        hb = next(e["resource"] for e in everything if e["resource"].get("id") == "hb")
        assert hb["meta"]["versionId"] == "1"
        assert any(e["search"]["mode"] == "outcome" for e in everything)
        batch = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "GET", "url": "Observation/hb"}},
                {"request": {"method": "GET", "url": "Observation?_id=hb"}},
            ],
        }
        read, searched = (await client.post("/fhir", json=batch)).json()["entry"]
        assert read["resource"]["meta"]["versionId"] == "1"
        assert searched["resource"]["entry"][0]["resource"]["meta"]["versionId"] == "1"

        # Contributions during the outage are kept: stored, and queued for the SoR.
        later = lab("hb", note=[note, {"text": "repeat requested"}])
        assert (await client.put("/fhir/Observation/hb", json=later)).status_code == 200
        queued = [m for m in await messages(runtime.store, pending_only=True) if m.channel == "sor-lis"]
        assert [m.payload["resource"] for m in queued] == [
            "Observation/hb/_history/2",
            "Observation/only-ours/_history/1",
            "Observation/hb/_history/3",
        ]
        assert {m.payload["event"] for m in queued} == {"contribution"}

        # The SoR comes back: the probe sees it, the queue is released and delivered at once.
        receiver.failing = False
        back = await runtime.availability.probe("sor-lis", f"{receiver.url}/health")
        assert back.available
        assert await dispatcher.deliver_due() == 3
        assert [p["resource"] for p in receiver.received] == [m.payload["resource"] for m in queued]
        assert await messages(runtime.store, pending_only=True) == []
        r = await client.get("/fhir/Observation/hb")
        assert r.json()["meta"]["versionId"] == "3" and "Warning" not in r.headers


async def test_deliveries_alone_mark_the_sor_back_and_the_status_is_persisted(db: Database) -> None:
    async with Receiver() as receiver, serve(db, **sor(receiver, failure_threshold=1)) as (client, runtime):
        dispatcher = runtime.breakglass.dispatcher
        await dispatcher.stop()
        await probed(runtime)
        await patients(client, "p1")
        await as_lis(runtime, lab("hb"))
        receiver.failing = True
        assert (
            await client.put("/fhir/Observation/hb", json=lab("hb", note=[{"text": "x"}]))
        ).status_code == 200
        assert await dispatcher.deliver_due() == 0
        assert not (await availability.statuses(runtime.store))["sor-lis"].available
        # A second server process (a new runtime on the same database) sees the same outage.
        async with serve(db, **sor(receiver, failure_threshold=1)) as (other, _):
            assert (await other.get("/fhir/Observation/hb")).headers["Warning"].startswith("110 ")
        receiver.failing = False
        await release(runtime.store, "sor-lis")
        assert await dispatcher.deliver_due() == 1  # delivered: the SoR is available again
        assert (await availability.statuses(runtime.store))["sor-lis"].available
        assert "Warning" not in (await client.get("/fhir/Observation/hb")).headers


async def test_concurrent_writers_and_pullers_get_every_change_once(db: Database) -> None:
    """Twenty updates racing a replica that follows its cursor (and other pullers that seal too):
    each version has exactly one position, 1..N, the replica sees every change once, and each
    resource's versions stay in sequence."""
    async with serve(db) as (client, runtime):
        await patients(client, "p1")
        seen: list[str] = []
        cursor = 0

        async def follow() -> None:
            nonlocal cursor
            bundle = await pull(client, _cursor=str(cursor), _count="3")
            seen.extend(changed(bundle))
            cursor = cursor_of(bundle)

        async def write(n: int) -> None:
            await as_lis(runtime, lab(f"o{n % 5}", value=float(n)))

        for n in range(5):  # created first: concurrent creates of one id answer 409 by design
            await write(100 + n)

        async def follower() -> None:  # one replica, pulling while the writes go on
            for _ in range(8):
                await follow()

        await asyncio.gather(*(write(n) for n in range(20)), follower(), pull(client), pull(client))
        while True:  # catch up
            before = len(seen)
            await follow()
            if len(seen) == before:
                break
        everything = await pull(client, _count="100")
        assert positions(everything) == list(range(1, 26))
        assert sorted(seen) == sorted(changed(everything)) and len(set(seen)) == 25
        for n in range(5):
            mine = [
                int(c.rsplit("/", 1)[1]) for c in changed(everything) if c.startswith(f"Observation/o{n}/")
            ]
            assert mine == [1, 2, 3, 4, 5]
