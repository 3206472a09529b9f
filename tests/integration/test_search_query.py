"""Search conformance table: query strings against a small realistic data set, on SQLite and PostgreSQL.

Each case runs the real pipeline below the HTTP layer: parse_search -> where_clause/order_by ->
SQL -> ids, with index rows written by extract() exactly as the store writes them. The expected
sets follow R4 search.html (prefix semantics on ranges, string matching, modifiers, chaining,
_has, _include/_revinclude with :iterate).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl

import orjson
import pytest
from sqlalchemy import ColumnElement, FromClause, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from fhir_gateway.fhir.dates import date_range
from fhir_gateway.store.engine import create_engine
from fhir_gateway.store.schema import INDEX_TABLES, metadata, resources
from fhir_gateway.store.search import values
from fhir_gateway.store.search.extract import extract
from fhir_gateway.store.search.params import parse_search
from fhir_gateway.store.search.query import Visible, include_step, order_by, where_clause

PG_URL = os.environ.get("FHIR_GATEWAY_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
MRN = "http://hospital.example/mrn"
DEFAULT_UPDATED = "2024-01-01T00:00:00Z"
NOW = date_range("2026-11-23T00:00:00Z")[0]  # `ap` widens by distance to now: pin now so cases stay true


def _qty(
    value: float, code: str | None, unit: str | None = None, system: str | None = UCUM
) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "unit": unit or code}
    if code is not None:
        q.update(system=system, code=code)
    return q


def _concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code, **({"display": display} if display else {})}
    return {"coding": [coding], **({"text": text} if text else {})}


def _ref(target: str) -> dict[str, str]:
    return {"reference": target}


ORGANIZATIONS: list[dict[str, Any]] = [
    {
        "id": "org-1",
        "name": "Acme Health",
        "active": True,
        "identifier": [{"system": "http://org.example", "value": "ACME"}],
    },
    {"id": "org-2", "name": "Beta Clinic", "partOf": _ref("Organization/org-1")},
]
PATIENTS: list[dict[str, Any]] = [
    {
        "id": "pat-1",
        "meta": {
            "tag": [{"system": "http://example.org/tags", "code": "vip"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "profile": ["http://example.org/fhir/StructureDefinition/my-patient"],
        },
        "active": True,
        "name": [{"family": "Müller", "given": ["Jürgen"]}],
        "gender": "male",
        "birthDate": "1980-05-12",
        "identifier": [{"type": _concept(V2_0203, "MR"), "system": MRN, "value": "MRN001"}],
        "telecom": [{"system": "email", "value": "jm@example.org"}],
        "address": [{"city": "São Paulo"}],
        "managingOrganization": _ref("Organization/org-1"),
    },
    {
        "id": "pat-2",
        "name": [{"family": "Parker", "given": ["Peter"]}],
        "gender": "male",
        "birthDate": "1990",
        "identifier": [
            {
                "type": _concept(V2_0203, "SS"),
                "system": "http://hl7.org/fhir/sid/us-ssn",
                "value": "123-45-6789",
            }
        ],
        "managingOrganization": _ref("Organization/org-2"),
    },
    {
        "id": "pat-3",
        "name": [{"family": "Ångström", "given": ["Zoë"]}],
        "gender": "female",
        "birthDate": "2001-02",
    },
    {
        "id": "pat-4",
        "name": [{"family": "Peterson", "given": ["Anna", "Maria"]}],
        "gender": "female",
        "birthDate": "2000-12-31",
        "identifier": [{"system": MRN, "value": "MRN004"}],
    },
]
LAST_UPDATED = {
    "pat-1": "2024-05-01T12:00:00Z",
    "pat-2": "2024-05-02T00:00:00Z",
    "pat-3": "2023-12-31T23:59:59Z",
    "pat-4": "2024-05-01T00:00:00Z",
}
ENCOUNTERS: list[dict[str, Any]] = [
    {
        "id": "enc-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": _ref("Patient/pat-1"),
        "period": {"start": "2021-03-01T08:00:00Z", "end": "2021-03-01T12:00:00Z"},
        "length": _qty(240, "min"),
        "serviceProvider": _ref("Organization/org-1"),
    },
    {
        "id": "enc-2",
        "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": _ref("Patient/pat-2"),
        "period": {"start": "2022-06-01T10:00:00Z"},
        "serviceProvider": _ref("Organization/org-2"),
    },
]
VITALS = [_concept("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")]
OBSERVATIONS: list[dict[str, Any]] = [
    {
        "id": "obs-1",
        "status": "final",
        "category": VITALS,
        "code": _concept(LOINC, "8480-6", "Systolic blood pressure", "Systolic BP"),
        "subject": _ref("Patient/pat-1"),
        "encounter": _ref("Encounter/enc-1"),
        "performer": [_ref("Organization/org-1")],
        "effectiveDateTime": "2021-03-01T09:30:00Z",
        "valueQuantity": _qty(120, "mm[Hg]", "mmHg"),
    },
    {
        "id": "obs-2",
        "status": "final",
        "category": VITALS,
        "code": _concept(LOINC, "85354-9", "Blood pressure panel"),
        "subject": _ref("Patient/pat-2"),
        "effectivePeriod": {"start": "2022-06-01T10:00:00Z", "end": "2022-06-01T11:00:00Z"},
        "component": [
            {"code": _concept(LOINC, "8480-6"), "valueQuantity": _qty(55, "mm[Hg]")},
            {"code": _concept(LOINC, "8462-4"), "valueQuantity": _qty(40, "mm[Hg]")},
        ],
    },
    {
        "id": "obs-3",
        "status": "preliminary",
        "code": _concept(LOINC, "2339-0", "Glucose"),
        "subject": _ref("Patient/pat-1"),
        "effectiveDateTime": "2023",
        "valueQuantity": _qty(5.4, "mmol/L"),
    },
    {
        "id": "obs-4",
        "status": "final",
        "code": _concept(LOINC, "8302-2", "Body height"),
        "subject": _ref("Patient/pat-3"),
        "effectiveDateTime": "2020-02-15",
        "valueQuantity": {"value": 180, "unit": "cm"},
    },
    {
        "id": "obs-5",
        "status": "final",
        "code": _concept(LOINC, "80382-5", "Influenza virus A Ag"),
        "subject": _ref("http://external.example/fhir/Patient/ext-9"),
        "effectiveDateTime": "2019-12-24",
        "valueCodeableConcept": _concept("http://snomed.info/sct", "10828004", "Positive", "Positive"),
    },
    {
        "id": "obs-6",
        "status": "cancelled",
        "code": _concept("http://example.org/codes", "note", text="Free text only"),
        "effectiveDateTime": "2024-03-10T08:00:00+02:00",
        "valueString": "Needs repeat measurement",
    },
    {
        "id": "obs-7",
        "status": "final",
        "code": _concept(LOINC, "8480-6"),
        "subject": _ref("Patient/pat-del"),
        "valueQuantity": _qty(130, "mm[Hg]"),
    },
    {
        "id": "obs-8",
        "status": "final",
        "code": _concept(LOINC, "21112-8", "Birth date"),
        "subject": _ref("Patient/pat-4"),
        "valueDateTime": "2000-12-31",
    },
]
RISKS: list[dict[str, Any]] = [
    {
        "id": f"ra-{n}",
        "status": "final",
        "subject": _ref("Patient/pat-1"),
        "prediction": [{"probabilityDecimal": p}],
    }
    for n, p in ((1, 100), (2, 99.6), (3, 150), (4, 0.25))
]
VALUE_SETS: list[dict[str, Any]] = [
    {"id": "vs-1", "status": "active", "url": "http://example.org/fhir/ValueSet/colors"},
    {"id": "vs-2", "status": "active", "url": "http://example.org/fhir/ValueSet/colors-extended"},
    {"id": "vs-3", "status": "active", "url": "http://other.org/ValueSet/x"},
]
OTHERS: list[dict[str, Any]] = [
    {
        "resourceType": "Provenance",
        "id": "prov-1",
        "target": [_ref("Observation/obs-1")],
        "recorded": "2021-03-01T10:00:00Z",
        "agent": [{"who": _ref("Organization/org-1")}],
    },
    {
        "resourceType": "DocumentReference",
        "id": "doc-1",
        "status": "current",
        "relatesTo": [{"code": "replaces", "target": _ref("DocumentReference/doc-0")}],
        "content": [{"attachment": {"contentType": "text/plain"}}],
    },
    {
        "resourceType": "MolecularSequence",
        "id": "seq-1",
        "coordinateSystem": 0,
        "referenceSeq": {
            "chromosome": _concept("http://terminology.hl7.org/CodeSystem/chromosome-human", "1")
        },
        "variant": [{"start": 100, "end": 101}],
    },
]


def all_resources() -> list[dict[str, Any]]:
    typed = [
        *({"resourceType": "Organization", **r} for r in ORGANIZATIONS),
        *({"resourceType": "Patient", **r} for r in PATIENTS),
        *({"resourceType": "Encounter", **r} for r in ENCOUNTERS),
        *({"resourceType": "Observation", **r} for r in OBSERVATIONS),
        *({"resourceType": "RiskAssessment", **r} for r in RISKS),
        *({"resourceType": "ValueSet", **r} for r in VALUE_SETS),
        *OTHERS,
    ]
    for resource in typed:
        updated = LAST_UPDATED.get(resource["id"], DEFAULT_UPDATED)
        resource["meta"] = {**resource.get("meta", {}), "versionId": "1", "lastUpdated": updated}
    return typed


async def load(url: str, *, schema: str | None = None) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            if schema is not None:
                await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
                await conn.execute(text(f'SET search_path TO "{schema}"'))
            await conn.run_sync(metadata.create_all)
            for resource in all_resources():
                await _insert(conn, resource)
            await conn.execute(
                insert(resources).values(
                    res_type="Patient",
                    res_id="pat-del",
                    version_id=2,
                    last_updated=date_range(DEFAULT_UPDATED)[0],
                    deleted=True,
                    content=None,
                )
            )
    finally:
        await engine.dispose()


async def _insert(conn: AsyncConnection, resource: dict[str, Any]) -> None:
    result = await conn.execute(
        insert(resources)
        .values(
            res_type=resource["resourceType"],
            res_id=resource["id"],
            version_id=1,
            last_updated=date_range(resource["meta"]["lastUpdated"])[0],
            deleted=False,
            content=orjson.dumps(resource),
        )
        .returning(resources.c.pk)
    )
    pk = result.scalar_one()
    rows = extract(resource)
    for attr, table in INDEX_TABLES.items():
        batch = getattr(rows, attr)
        if batch:
            values = [
                {
                    "res_pk": pk,
                    "res_type": resource["resourceType"],
                    **{name: getattr(r, name) for name in r.__slots__},
                }
                for r in batch
            ]
            await conn.execute(insert(table), values)


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One loaded database per dialect for the whole module (the data is read-only)."""
    if request.param == "sqlite":
        path: Path = tmp_path_factory.mktemp("search") / "search.db"
        url = f"sqlite+aiosqlite:///{path}"
        asyncio.run(load(url))
        yield url
        return
    schema = f"t_search_{uuid.uuid4().hex[:10]}"
    asyncio.run(load(PG_URL, schema=schema))
    try:
        yield f"{PG_URL}?search_path={schema}"
    finally:
        asyncio.run(_drop_schema(schema))


async def _drop_schema(schema: str) -> None:
    engine = create_engine(PG_URL)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    finally:
        await engine.dispose()


async def search(
    url: str, resource_type: str, query: str, *, visible: Visible | None = None
) -> tuple[list[str], list[str], int]:
    """Matched ids in page order, included ids (sorted), and the total, as searching.run computes them."""
    parsed = parse_search(
        resource_type, parse_qsl(query, keep_blank_values=True), strict=True, default_count=50, max_count=100
    )
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            policy = {} if visible is None else {"visible": visible}
            where = where_clause(parsed, **policy)
            total = (
                await conn.execute(select(func.count()).select_from(resources).where(where))
            ).scalar_one()
            stmt = (
                select(resources.c.pk, resources.c.res_type, resources.c.res_id)
                .where(where)
                .order_by(*order_by(parsed))
                .limit(parsed.count)
                .offset(parsed.offset)
            )
            rows = (await conn.execute(stmt)).all()
            included: list[str] = []
            seen = {r.pk for r in rows}
            frontier = [r.pk for r in rows]
            for round_no in range(4):
                step = include_step(parsed, frontier, iterate_only=round_no > 0, **policy)
                if step is None:
                    break
                new = [r for r in (await conn.execute(step)).all() if r.pk not in seen]
                seen.update(r.pk for r in new)
                included += [f"{r.res_type}/{r.res_id}" for r in new]
                frontier = [r.pk for r in new]
    finally:
        await engine.dispose()
    return [r.res_id for r in rows], sorted(included), int(total)


@pytest.fixture(autouse=True)
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(values, "time", SimpleNamespace(time=lambda: NOW))


def ids(text: str) -> set[str]:
    return set(text.split()) if text else set()


ALL_PATIENTS = "pat-1 pat-2 pat-3 pat-4"
ALL_OBS = "obs-1 obs-2 obs-3 obs-4 obs-5 obs-6 obs-7 obs-8"

FILTER_CASES: list[tuple[str, str, str]] = [
    # --- no filter, _id, deleted resources never match
    ("Patient", "", ALL_PATIENTS),
    ("Patient", "_id=pat-1,pat-3", "pat-1 pat-3"),
    ("Patient", "_id=pat-del", ""),
    ("Patient", "_id:not=pat-1", "pat-2 pat-3 pat-4"),
    ("Patient", "_id:missing=false", ALL_PATIENTS),
    ("Patient", "_id:missing=true", ""),
    # --- string: starts-with, accent/case-insensitive, :exact, :contains, LIKE wildcards escaped
    ("Patient", "family=muller", "pat-1"),
    ("Patient", "family=MÜL", "pat-1"),
    ("Patient", "name=peter", "pat-2 pat-4"),
    ("Patient", "given=zoe", "pat-3"),
    ("Patient", "family:exact=Müller", "pat-1"),
    ("Patient", "family:exact=müller", ""),
    ("Patient", "family:exact=Mül", ""),
    ("Patient", "name:contains=NGSTR", "pat-3"),
    ("Patient", "family:contains=er", "pat-1 pat-2 pat-4"),
    ("Patient", "family=m_ller", ""),
    ("Patient", "family:contains=%25", ""),
    ("Patient", "address-city=sao", "pat-1"),
    ("Patient", "family=parker,muller", "pat-1 pat-2"),
    ("Patient", "family=peter&given=anna", "pat-4"),
    ("Patient", "family=peter&given=peter", ""),
    ("Organization", "name=acme", "org-1"),
    # --- token
    ("Patient", "gender=male", "pat-1 pat-2"),
    ("Patient", "gender:not=male", "pat-3 pat-4"),
    ("Patient", "gender=male,female", ALL_PATIENTS),
    ("Patient", "identifier=MRN001", "pat-1"),
    ("Patient", f"identifier={MRN}|", "pat-1 pat-4"),
    ("Patient", f"identifier={MRN}|MRN004", "pat-4"),
    ("Patient", "identifier=|MRN004", ""),
    ("Patient", f"identifier:of-type={V2_0203}|MR|MRN001", "pat-1"),
    ("Patient", f"identifier:of-type={V2_0203}|SS|123-45-6789", "pat-2"),
    ("Patient", f"identifier:of-type={V2_0203}|MR|123-45-6789", ""),
    ("Patient", "active=true", "pat-1"),
    ("Patient", "email=jm@example.org", "pat-1"),
    ("Patient", "_tag=http://example.org/tags|vip", "pat-1"),
    ("Patient", "_security=R", "pat-1"),
    ("Observation", f"code={LOINC}|8480-6", "obs-1 obs-7"),
    ("Observation", "code=8480-6,2339-0", "obs-1 obs-3 obs-7"),
    ("Observation", "code:text=systolic", "obs-1"),
    ("Observation", "code:text=blood pressure", "obs-1 obs-2"),
    ("Observation", "code:text=free text", "obs-6"),
    ("Observation", "status:not=final", "obs-3 obs-6"),
    ("Observation", "combo-code=8480-6", "obs-1 obs-2 obs-7"),
    ("Observation", "component-code=8462-4", "obs-2"),
    ("Observation", "value-concept=http://snomed.info/sct|10828004", "obs-5"),
    ("Observation", "category=vital-signs&status=final", "obs-1 obs-2"),
    ("Encounter", "class=AMB", "enc-1"),
    # --- :missing on every type
    ("Observation", "subject:missing=true", "obs-6"),
    ("Observation", "subject:missing=false", "obs-1 obs-2 obs-3 obs-4 obs-5 obs-7 obs-8"),
    ("Patient", "identifier:missing=true", "pat-3"),
    ("Patient", "birthdate:missing=false", ALL_PATIENTS),
    ("Patient", "family:missing=true", ""),
    ("Observation", "value-quantity:missing=true", "obs-2 obs-5 obs-6 obs-8"),
    ("Organization", "partof:missing=true", "org-1"),
    ("ValueSet", "url:missing=false", "vs-1 vs-2 vs-3"),
    ("RiskAssessment", "probability:missing=true", ""),
    ("Observation", "code-value-quantity:missing=false", "obs-1 obs-3 obs-4 obs-7"),
    ("Patient", "_lastUpdated:missing=true", ""),
    # --- reference
    ("Observation", "subject=Patient/pat-1", "obs-1 obs-3"),
    ("Observation", "subject=pat-1", "obs-1 obs-3"),
    ("Observation", "subject:Patient=pat-3", "obs-4"),
    ("Observation", "subject:Group=pat-3", ""),
    ("Observation", "patient=Patient/pat-2", "obs-2"),
    ("Observation", "subject=Patient/pat-1,Patient/pat-3", "obs-1 obs-3 obs-4"),
    ("Observation", "subject=http://external.example/fhir/Patient/ext-9", "obs-5"),
    ("Observation", "subject=ext-9", "obs-5"),
    ("Observation", "subject=http://external.example/fhir/ext-9", ""),
    ("Observation", "subject=http://elsewhere.example/fhir/Patient/pat-1", "obs-1 obs-3"),
    ("Observation", "subject=Patient/pat-1/_history/2", "obs-1 obs-3"),
    ("Patient", "organization=Organization/org-1", "pat-1"),
    ("Organization", "partof=org-1", "org-2"),
    # --- chaining (one and two levels, with and without :Type; deleted targets never match)
    ("Observation", "subject.name=peter", "obs-2 obs-8"),
    ("Observation", "subject:Patient.family=muller", "obs-1 obs-3"),
    ("Observation", "subject:Patient.birthdate=ge2000", "obs-4 obs-8"),
    ("Observation", "subject.birthdate=lt1985", "obs-1 obs-3"),
    ("Observation", "subject.family=parker", "obs-2"),
    ("Observation", "subject:Patient.organization.name=beta", "obs-2"),
    ("Observation", "encounter.status=finished", "obs-1"),
    ("Observation", "subject._id=pat-3", "obs-4"),
    ("Encounter", "service-provider.name=acme", "enc-1"),
    ("Patient", "organization.partof=org-1", "pat-2"),
    ("Patient", "organization._lastUpdated=2024-01-01", "pat-1 pat-2"),
    # --- _has (reverse chaining, nested)
    ("Patient", "_has:Observation:patient:code=8480-6", "pat-1"),
    ("Patient", "_has:Observation:subject:status=preliminary", "pat-1"),
    ("Patient", "_has:Encounter:subject:status=in-progress", "pat-2"),
    ("Patient", "_has:Observation:patient:_has:Provenance:target:agent=Organization/org-1", "pat-1"),
    ("Organization", "_has:Patient:organization:gender=male", "org-1 org-2"),
    ("Patient", "_has:Observation:patient:code=8480-6&gender=female", ""),
    ("Patient", "_has:Observation:patient:value-quantity=gt100", "pat-1 pat-3"),
    # --- date on ranges: every prefix, partial dates
    ("Patient", "birthdate=1980-05-12", "pat-1"),
    ("Patient", "birthdate=1980", "pat-1"),
    ("Patient", "birthdate=1990-06-01", ""),
    ("Patient", "birthdate=1990", "pat-2"),
    ("Patient", "birthdate=eq2001", "pat-3"),
    ("Patient", "birthdate=ne1990", "pat-1 pat-3 pat-4"),
    ("Patient", "birthdate=gt2000-12-31", "pat-3"),
    ("Patient", "birthdate=ge2000-12-31", "pat-3 pat-4"),
    ("Patient", "birthdate=lt1990", "pat-1"),
    ("Patient", "birthdate=le1990", "pat-1 pat-2"),
    ("Patient", "birthdate=lt1990-06-01", "pat-1 pat-2"),
    ("Patient", "birthdate=gt1990-06-01", "pat-2 pat-3 pat-4"),
    ("Patient", "birthdate=sa1990", "pat-3 pat-4"),
    ("Patient", "birthdate=sa1990-06-01", "pat-3 pat-4"),
    ("Patient", "birthdate=eb2000-12-31", "pat-1 pat-2"),
    ("Patient", "birthdate=eb1990-06-01", "pat-1"),
    ("Patient", "birthdate=ap1980-05-12", "pat-1"),
    ("Patient", "birthdate=ap2001-01", "pat-3 pat-4"),
    ("Patient", "birthdate=1980-05-12,1990", "pat-1 pat-2"),
    ("Patient", "birthdate=ge1980&birthdate=lt1995", "pat-1 pat-2"),
    ("Observation", "date=2021-03-01", "obs-1"),
    ("Observation", "date=2021-03-01T09:30:00Z", "obs-1"),
    ("Observation", "date=2021-03-01T10:30:00%2B01:00", "obs-1"),
    ("Observation", "date=2022-06-01T10:30:00Z", ""),
    ("Observation", "date=2022-06-01", "obs-2"),
    ("Observation", "date=gt2023-06-01", "obs-3 obs-6"),
    ("Observation", "date=2024-03-10T06:00:00Z", "obs-6"),
    ("Observation", "date=lt2020", "obs-5"),
    ("Observation", "date=sa2022-06-01T10:59:00Z", "obs-3 obs-6"),
    ("Observation", "date=ge2022-06-01T10:30:00Z", "obs-2 obs-3 obs-6"),
    ("Observation", "date=le2020-02-15", "obs-4 obs-5"),
    ("Encounter", "date=ge2023", "enc-2"),
    ("Encounter", "date=2021-03-01", "enc-1"),
    ("Encounter", "date=lt2022", "enc-1"),
    ("Encounter", "date=eb2022", "enc-1"),
    ("Encounter", "date=ne2021-03-01", "enc-2"),
    # --- _lastUpdated (a point in time: exact instants at a range boundary belong to that range)
    ("Patient", "_lastUpdated=2024-05-01", "pat-1 pat-4"),
    ("Patient", "_lastUpdated=2024-05-01T00:00:00Z", "pat-4"),
    ("Patient", "_lastUpdated=gt2024-05-01", "pat-2"),
    ("Patient", "_lastUpdated=ge2024-05-01", "pat-1 pat-2 pat-4"),
    ("Patient", "_lastUpdated=lt2024", "pat-3"),
    ("Patient", "_lastUpdated=le2024-05-01", "pat-1 pat-3 pat-4"),
    ("Patient", "_lastUpdated=ne2024-05-01", "pat-2 pat-3"),
    ("Patient", "_lastUpdated=sa2024-05-01", "pat-2"),
    ("Patient", "_lastUpdated=eb2024-05-01", "pat-3"),
    ("Patient", "_lastUpdated=ap2024-05-01", "pat-1 pat-2 pat-4"),
    # --- number: implicit precision and every prefix
    ("RiskAssessment", "probability=100", "ra-1 ra-2"),
    ("RiskAssessment", "probability=1e2", "ra-1 ra-2"),
    ("RiskAssessment", "probability=100.0", "ra-1"),
    ("RiskAssessment", "probability=0.25", "ra-4"),
    ("RiskAssessment", "probability=gt100", "ra-3"),
    ("RiskAssessment", "probability=lt100", "ra-2 ra-4"),
    ("RiskAssessment", "probability=ge100", "ra-1 ra-2 ra-3"),
    ("RiskAssessment", "probability=le100", "ra-1 ra-2 ra-4"),
    ("RiskAssessment", "probability=sa100", "ra-3"),
    ("RiskAssessment", "probability=eb100", "ra-2 ra-4"),
    ("RiskAssessment", "probability=ne100", "ra-3 ra-4"),
    ("RiskAssessment", "probability=ap100", "ra-1 ra-2"),
    ("RiskAssessment", "probability=ap140", "ra-3"),
    # --- quantity
    ("Observation", "value-quantity=120", "obs-1"),
    ("Observation", "value-quantity=gt100", "obs-1 obs-4 obs-7"),
    ("Observation", f"value-quantity=120|{UCUM}|mm[Hg]", "obs-1"),
    ("Observation", "value-quantity=120||mm[Hg]", "obs-1"),
    ("Observation", "value-quantity=120||mmHg", "obs-1"),
    ("Observation", "value-quantity=5.4||mmol/L", "obs-3"),
    ("Observation", "value-quantity=lt10", "obs-3"),
    ("Observation", "value-quantity=180||cm", "obs-4"),
    ("Observation", f"value-quantity=120|{UCUM}|cm", ""),
    ("Observation", "value-quantity=ap5", "obs-3"),
    ("Observation", f"value-quantity=le120|{UCUM}|mm[Hg]", "obs-1"),
    ("Observation", "value-quantity=ne120", "obs-3 obs-4 obs-7"),
    ("Observation", "component-value-quantity=lt60", "obs-2"),
    ("Encounter", "length=ge240", "enc-1"),
    # --- uri
    ("ValueSet", "url=http://example.org/fhir/ValueSet/colors", "vs-1"),
    ("ValueSet", "url:below=http://example.org/fhir", "vs-1 vs-2"),
    ("ValueSet", "url:below=HTTP://EXAMPLE.ORG", ""),
    ("ValueSet", "url:above=http://example.org/fhir/ValueSet/colors/sub", "vs-1"),
    ("ValueSet", "url:above=http://example.org/fhir/ValueSet/colors-extended", "vs-1 vs-2"),
    ("Patient", "_profile=http://example.org/fhir/StructureDefinition/my-patient", "pat-1"),
    # --- composite: token$quantity (with prefixes), token$token, token$date, token$string,
    #     reference$token, token$number$number
    ("Observation", f"code-value-quantity={LOINC}|8480-6$lt130", "obs-1"),
    ("Observation", "code-value-quantity=8480-6$120", "obs-1"),
    ("Observation", f"code-value-quantity={LOINC}|8480-6$gt125", "obs-7"),
    ("Observation", "code-value-quantity=8480-6$120||mm[Hg],2339-0$5.4", "obs-1 obs-3"),
    ("Observation", f"component-code-value-quantity={LOINC}|8480-6$lt60", "obs-2"),
    ("Observation", "component-code-value-quantity=8462-4$40||mm[Hg]", "obs-2"),
    ("Observation", "component-code-value-quantity=8462-4$gt50", ""),
    ("Observation", "combo-code-value-quantity=8480-6$ge55", "obs-1 obs-2 obs-7"),
    ("Observation", f"code-value-concept={LOINC}|80382-5$http://snomed.info/sct|10828004", "obs-5"),
    ("Observation", "code-value-concept=80382-5$999", ""),
    ("Observation", "code-value-date=21112-8$2000", "obs-8"),
    ("Observation", "code-value-date=21112-8$gt2001", ""),
    ("Observation", "code-value-string=http://example.org/codes|note$needs", "obs-6"),
    ("Observation", "code-value-string=note$repeat", ""),
    ("DocumentReference", "relationship=DocumentReference/doc-0$replaces", "doc-1"),
    ("DocumentReference", "relationship=DocumentReference/doc-0$appends", ""),
    ("MolecularSequence", "chromosome-variant-coordinate=1$ge100$le101", "seq-1"),
    ("MolecularSequence", "chromosome-variant-coordinate=1$gt100$le101", ""),
]


@pytest.mark.parametrize(
    ("resource_type", "query", "expected"), FILTER_CASES, ids=[f"{t}?{q}" for t, q, _ in FILTER_CASES]
)
async def test_filter(database: str, resource_type: str, query: str, expected: str) -> None:
    matched, _, total = await search(database, resource_type, query)
    assert set(matched) == ids(expected)
    assert total == len(matched)


SORT_CASES: list[tuple[str, str, str]] = [
    ("Patient", "_sort=birthdate", "pat-1 pat-2 pat-4 pat-3"),
    ("Patient", "_sort=-birthdate", "pat-3 pat-4 pat-2 pat-1"),
    ("Patient", "_sort=family", "pat-3 pat-1 pat-2 pat-4"),
    ("Patient", "_sort=-family", "pat-4 pat-2 pat-1 pat-3"),
    ("Patient", "_sort=gender,-birthdate", "pat-3 pat-4 pat-2 pat-1"),
    ("Patient", "_sort=-_id", "pat-4 pat-3 pat-2 pat-1"),
    ("Patient", "_sort=-_lastUpdated", "pat-2 pat-1 pat-4 pat-3"),
    ("Patient", "_sort=_lastUpdated&_count=2&_offset=1", "pat-4 pat-1"),
    ("Patient", "_sort=_id&_count=2&_offset=2", "pat-3 pat-4"),
    ("Observation", "_sort=value-quantity&status=final", "obs-1 obs-7 obs-4 obs-2 obs-5 obs-8"),
    ("Observation", "_sort=-value-quantity&status=final", "obs-4 obs-7 obs-1 obs-2 obs-5 obs-8"),
    ("RiskAssessment", "_sort=-probability", "ra-3 ra-1 ra-2 ra-4"),
    ("ValueSet", "_sort=-url", "vs-3 vs-2 vs-1"),
]


@pytest.mark.parametrize(
    ("resource_type", "query", "expected"), SORT_CASES, ids=[f"{t}?{q}" for t, q, _ in SORT_CASES]
)
async def test_sort(database: str, resource_type: str, query: str, expected: str) -> None:
    matched, _, _ = await search(database, resource_type, query)
    assert matched == expected.split()


INCLUDE_CASES: list[tuple[str, str, str]] = [
    ("Observation", "_id=obs-1&_include=Observation:subject", "Patient/pat-1"),
    (
        "Observation",
        "_id=obs-1&_include=Observation:subject&_include=Observation:encounter",
        "Encounter/enc-1 Patient/pat-1",
    ),
    ("Observation", "_id=obs-1&_include=*", "Encounter/enc-1 Organization/org-1 Patient/pat-1"),
    ("Observation", "_id=obs-1&_include=Observation:performer:Organization", "Organization/org-1"),
    ("Observation", "_id=obs-1&_include=Observation:subject:Group", ""),
    (
        "Observation",
        "_id=obs-2&_include=Observation:subject&_include:iterate=Patient:organization"
        "&_include:iterate=Organization:partof",
        "Organization/org-1 Organization/org-2 Patient/pat-2",
    ),
    ("Observation", "_id=obs-2&_include=Observation:subject&_include=Patient:organization", "Patient/pat-2"),
    ("Observation", "_id=obs-7&_include=Observation:subject", ""),
    ("Patient", "_id=pat-1&_revinclude=Observation:subject", "Observation/obs-1 Observation/obs-3"),
    ("Patient", "_id=pat-1&_revinclude=Observation:subject:Patient", "Observation/obs-1 Observation/obs-3"),
    (
        "Patient",
        "_id=pat-1&_revinclude=Observation:subject&_revinclude:iterate=Provenance:target",
        "Observation/obs-1 Observation/obs-3 Provenance/prov-1",
    ),
    (
        "Patient",
        "_id=pat-2&_revinclude=Encounter:subject&_include=Patient:organization",
        "Encounter/enc-2 Organization/org-2",
    ),
    (
        "Patient",
        "_id=pat-1&_revinclude=*",
        "Encounter/enc-1 Observation/obs-1 Observation/obs-3 RiskAssessment/ra-1 RiskAssessment/ra-2"
        " RiskAssessment/ra-3 RiskAssessment/ra-4",
    ),
    (
        "Organization",
        "_id=org-1&_revinclude:iterate=Organization:partof&_revinclude:iterate=Patient:organization",
        "Organization/org-2 Patient/pat-1 Patient/pat-2",
    ),
]


@pytest.mark.parametrize(
    ("resource_type", "query", "expected"), INCLUDE_CASES, ids=[f"{t}?{q}" for t, q, _ in INCLUDE_CASES]
)
async def test_include(database: str, resource_type: str, query: str, expected: str) -> None:
    matched, included, _ = await search(database, resource_type, query)
    assert len(matched) == 1
    assert included == sorted(expected.split())


async def test_count_zero_still_counts(database: str) -> None:
    matched, _, total = await search(database, "Patient", "_count=0&gender=female")
    assert (matched, total) == ([], 2)


def hide(*hidden: str) -> Visible:
    def visible(res: FromClause) -> ColumnElement[bool]:
        return res.c.res_id.not_in(hidden)

    return visible


VISIBILITY_CASES: list[tuple[str, str, tuple[str, ...], str, str]] = [
    ("Patient", "", ("pat-1",), "pat-2 pat-3 pat-4", ""),
    ("Observation", "subject.family=muller", ("pat-1",), "", ""),
    ("Observation", "subject:Patient.organization.name=acme", ("org-1",), "", ""),
    ("Patient", "_has:Observation:patient:code=8480-6", ("obs-1",), "", ""),
    (
        "Patient",
        "_has:Observation:patient:_has:Provenance:target:agent=Organization/org-1",
        ("prov-1",),
        "",
        "",
    ),
    ("Observation", "_id=obs-1&_include=*", ("pat-1", "enc-1"), "obs-1", "Organization/org-1"),
    ("Patient", "_id=pat-1&_revinclude=Observation:subject", ("obs-3",), "pat-1", "Observation/obs-1"),
    (
        "Observation",
        "_id=obs-2&_include=Observation:subject&_include:iterate=Patient:organization",
        ("org-2",),
        "obs-2",
        "Patient/pat-2",
    ),
]


@pytest.mark.parametrize(("resource_type", "query", "hidden", "expected", "included"), VISIBILITY_CASES)
async def test_access_policy_reaches_every_row(
    database: str, resource_type: str, query: str, hidden: tuple[str, ...], expected: str, included: str
) -> None:
    """A hidden resource never matches, never lets another match through a chain or _has, and is
    never included."""
    matched, found, total = await search(database, resource_type, query, visible=hide(*hidden))
    assert set(matched) == ids(expected) and total == len(matched)
    assert found == sorted(included.split())
