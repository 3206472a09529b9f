"""The write pipeline: stages from settings run in order on every change, can reject (nothing written)
and can add resources that commit in the same transaction."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Unprocessable
from fhir_gateway.pipeline.stage import Change, Pipeline, load_factory
from fhir_gateway.settings import Settings
from tests.conftest import make_settings, open_client

FHIR = {"Content-Type": "application/fhir+json"}
SEEN: list[str] = []


class TagStage:
    """Marks every written resource, and records the order stages ran in."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        SEEN.append(f"{self.name}:{change.interaction}:{change.res_type}")
        if change.resource is not None:
            change.resource.setdefault("meta", {}).setdefault("tag", []).append({"code": self.name})


class RejectFamily:
    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        for name in (change.resource or {}).get("name", []):
            if name.get("family") == "Reject":
                raise Unprocessable("rejected by stage", expression="Patient.name")


class AddProvenance:
    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        if change.res_type != "Provenance":
            change.additions.append(
                {
                    "resourceType": "Provenance",
                    "target": [{"reference": f"{change.res_type}/{change.res_id}"}],
                    "recorded": "2024-01-01T00:00:00Z",
                    "agent": [{"who": {"display": "test"}}],
                }
            )


def first(settings: Settings) -> TagStage:
    return TagStage("first")


def second(settings: Settings) -> TagStage:
    return TagStage("second")


def reject(settings: Settings) -> RejectFamily:
    return RejectFamily()


def provenance(settings: Settings) -> AddProvenance:
    return AddProvenance()


STAGES = [f"tests.integration.test_pipeline:{n}" for n in ("first", "second", "reject", "provenance")]


@pytest.fixture
async def staged(tmp_path: Path) -> httpx.AsyncClient:  # type: ignore[misc]
    SEEN.clear()
    async for c in open_client(make_settings(f"sqlite+aiosqlite:///{tmp_path}/p.db", pipeline=STAGES)):
        yield c


async def test_stages_run_in_order_and_edit_the_resource(staged: httpx.AsyncClient) -> None:
    r = await staged.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    assert r.status_code == 201
    assert [t["code"] for t in r.json()["meta"]["tag"]] == ["first", "second"]
    assert SEEN == ["first:create:Patient", "second:create:Patient"]
    stored = (await staged.get(f"/fhir/Patient/{r.json()['id']}")).json()
    assert [t["code"] for t in stored["meta"]["tag"]] == ["first", "second"]


async def test_additions_commit_with_the_change(staged: httpx.AsyncClient) -> None:
    r = await staged.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=FHIR)
    provs = (await staged.get("/fhir/Provenance", params={"target": f"Patient/{r.json()['id']}"})).json()
    assert provs["total"] == 1


async def test_a_rejecting_stage_rolls_back_the_whole_transaction(staged: httpx.AsyncClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "name": [{"family": "Fine"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {"resourceType": "Patient", "name": [{"family": "Reject"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    r = await staged.post("/fhir", json=bundle, headers=FHIR)
    assert r.status_code == 422
    assert r.json()["issue"][0]["diagnostics"] == "rejected by stage"
    assert (await staged.get("/fhir/Patient")).json()["total"] == 0
    assert (await staged.get("/fhir/Provenance")).json()["total"] == 0


def test_load_factory_errors_name_the_spec() -> None:
    for spec, fragment in [
        ("nocolon", "expected"),
        ("no.such.module:x", "cannot import"),
        ("tests.integration.test_pipeline:SEEN", "not a callable"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            load_factory(spec)


async def test_empty_pipeline_runs_nothing() -> None:
    change = Change("POST", "Patient", "1", {"resourceType": "Patient"}, None, {}, 0)
    await Pipeline().run(change, RequestContext())
    assert change.resource == {"resourceType": "Patient"}


async def test_commit_hook_runs_inside_the_transaction(tmp_path: Path) -> None:
    """An adapter's own record commits with the resources, or not at all."""
    from sqlalchemy import text

    from fhir_gateway.gateway import Gateway
    from fhir_gateway.store.store import Store

    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/h.db")
    store = Store(settings.database_url)
    await store.upgrade()
    gateway = Gateway(settings, store)
    seen: list[int] = []

    async def record(tx: object, results: list[object]) -> None:
        seen.append(len(results))
        await tx.conn.execute(text("CREATE TABLE IF NOT EXISTS marks (n INTEGER)"))  # type: ignore[attr-defined]
        await tx.conn.execute(text("INSERT INTO marks VALUES (1)"))  # type: ignore[attr-defined]

    async def fail(tx: object, results: list[object]) -> None:
        raise Unprocessable("the adapter could not record the message")

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}],
    }
    await gateway.submit(bundle, RequestContext.system("cli"), within=record)
    with pytest.raises(Unprocessable):
        await gateway.submit(bundle, RequestContext.system("cli"), within=fail)
    with pytest.raises(ValueError):
        await gateway.submit({**bundle, "type": "batch"}, RequestContext.system("cli"), within=record)
    async with store.transaction() as tx:
        marks = (await tx.conn.execute(text("SELECT count(*) FROM marks"))).scalar_one()
    _, total = await store.history(res_type="Patient", count=10)
    await store.dispose()
    assert seen == [1] and marks == 1 and total == 1  # the failed hook left no Patient behind
