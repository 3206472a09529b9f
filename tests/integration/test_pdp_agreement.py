"""The policy decision point's two forms must agree: for any grants, the rows the SQL condition admits
are exactly the resources the per-resource decision permits (hypothesis explores the grants).

If they drifted apart, a search could count or include what a read refuses, or the reverse.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from fhir_gateway.auth.scopes import parse_scope
from fhir_gateway.context import RequestContext
from fhir_gateway.gateway import Gateway
from fhir_gateway.privacy.access import AccessPolicy, Grants
from fhir_gateway.privacy.compartment import index_rows
from fhir_gateway.privacy.consent import Provision
from fhir_gateway.privacy.scope_filter import ScopeFilter, scope_filter
from fhir_gateway.store.schema import resources
from fhir_gateway.store.store import Store, current_from_row, select_current
from tests.conftest import make_settings

ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONF = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def obs(oid: str, patient: str, code: str, *labels: tuple[str, str], **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }
    if labels:
        resource["meta"] = {"security": [{"system": s, "code": c} for s, c in labels]}
    return resource


WORLD: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1"},
    {"resourceType": "Patient", "id": "p2", "meta": {"security": [{"system": CONF, "code": "V"}]}},
    {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "Patient/p1"},
    },
    {
        "resourceType": "Encounter",
        "id": "e2",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/p2"},
    },
    {"resourceType": "Practitioner", "id": "doc"},
    obs("o1", "p1", "pulse"),
    obs("o2", "p1", "hiv", (ACT, "HIV"), encounter={"reference": "Encounter/e1"}),
    obs("o3", "p1", "note", (ACT, "PSY"), performer=[{"reference": "Practitioner/doc"}]),
    obs("o4", "p2", "pulse", (ACT, "SUD")),
    obs("o5", "p2", "hiv"),
    {
        "resourceType": "Observation",
        "id": "o6",
        "status": "preliminary",
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"code": "pulse"}]},
        "subject": {"reference": "Patient/p1"},
    },
]

LABELS = [(ACT, "HIV"), (ACT, "PSY"), (ACT, "SUD"), (CONF, "V")]
codings = st.sampled_from([(LOINC, "pulse"), (None, "hiv"), (LOINC, "note"), ("urn:other", "pulse")])
data = st.sampled_from(
    [
        ("instance", "Observation", "o1"),
        ("related", "Encounter", "e1"),
        ("authoredby", "Practitioner", "doc"),
        ("instance", "Patient", "p1"),
    ]
)


def provisions(depth: int) -> st.SearchStrategy[Provision]:
    children = st.lists(provisions(depth - 1), max_size=2) if depth > 0 else st.just([])
    return st.builds(
        lambda t, cl, co, la, da, ma, ch: Provision(
            t,
            classes=frozenset(cl),
            codes=frozenset(co),
            labels=frozenset(la),
            data=tuple(da),
            masks=("Observation.note",) if ma else (),
            children=tuple(ch),
        ),
        st.sampled_from(["permit", "deny"]),
        st.sets(st.sampled_from(["Observation", "Patient", "Encounter"]), max_size=1),
        st.sets(codings, max_size=2),
        st.sets(st.sampled_from(LABELS), max_size=1),
        st.lists(data, max_size=1),
        st.booleans(),
        children,
    )


# SMART v2 scopes narrowed by a query, every kind the PDP accepts: system|code, code, |code, system|,
# several values (OR), several parameters (AND), _id, _security.
NARROWING = [
    f"user/Observation.rs?category={CATEGORY}|laboratory",
    "user/Observation.rs?code=http://loinc.org|pulse",
    "user/Observation.rs?code=hiv,note",
    "user/Observation.rs?code=|pulse",
    "user/Observation.rs?code=http://loinc.org|",
    "user/Observation.rs?status=final&code=pulse",
    f"user/Observation.rs?_security={ACT}|PSY",
    "user/Patient.rs?_id=p1",
    "user/Encounter.rs?class=|AMB",
]


def _narrowed(texts: set[str]) -> dict[str, tuple[ScopeFilter, ...]]:
    grouped: dict[str, list[ScopeFilter]] = {}
    for text in sorted(texts):
        scope = parse_scope(text)
        assert scope is not None
        grouped.setdefault(scope.resource_type, []).append(scope_filter(scope))
    return {t: tuple(fs) for t, fs in grouped.items()}


type_sets = st.one_of(
    st.none(), st.sets(st.sampled_from(["Observation", "Patient", "Encounter"])).map(frozenset)
)
grants = st.builds(
    lambda read, search, patient, hidden, consents, default_deny, exempt, override, exceptions, narrowing: (
        Grants(
            {"read": read, "search": search},
            patient=patient,
            narrowed=_narrowed(narrowing),
            hidden=frozenset(hidden),
            consents=tuple(consents),
            consented=frozenset(p for p, _, _ in consents),
            consent_default_deny=default_deny,
            consent_exempt=frozenset(exempt),
            override=frozenset(override),
            override_exceptions=frozenset(exceptions),
        )
    ),
    type_sets,
    type_sets,
    st.sampled_from([None, "p1", "p2"]),
    st.sets(st.sampled_from(LABELS)),
    st.lists(
        st.tuples(st.sampled_from(["p1", "p2"]), st.just("c"), st.one_of(st.none(), provisions(2))),
        max_size=2,
    ),
    st.booleans(),
    st.sets(st.sampled_from(["p1", "p2"]), max_size=1),
    st.sets(st.sampled_from(["p1", "p2"]), max_size=1),
    st.sets(st.sampled_from(LABELS), max_size=1),
    st.sets(st.sampled_from(NARROWING), max_size=3),
)


@pytest.fixture(scope="module")
def store_with_world(tmp_path_factory: pytest.TempPathFactory) -> Store:
    path: Path = tmp_path_factory.mktemp("pdp") / "pdp.db"
    conf = make_settings(f"sqlite+aiosqlite:///{path}", pipeline=[], crypto={"enabled": False})

    async def build() -> None:
        store = Store(conf.database_url)
        await store.upgrade()
        gateway = Gateway(conf, store)
        entries = [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in WORLD
        ]
        await gateway.submit(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}, RequestContext.system("cli")
        )
        await store.dispose()

    asyncio.run(build())
    return Store(conf.database_url)


async def _agree(store: Store, g: Grants) -> None:
    policy = AccessPolicy(g)
    async with store.reader() as conn:
        admitted = {
            (r.res_type, r.res_id)
            for r in (await conn.execute(select(resources).where(policy.visible(resources)))).all()
        }
        rows = (await conn.execute(select_current())).all()
    permitted = set()
    for row in rows:
        version = current_from_row(row)
        index = index_rows(version.res_type, version.res_id, version.resource())
        if policy.decide(version.res_type, version.res_id, version.version_id, index).permitted:
            permitted.add((version.res_type, version.res_id))
    assert admitted == permitted, g


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(g=grants)
def test_sql_and_python_decisions_agree(store_with_world: Store, g: Grants) -> None:
    asyncio.run(_agree(store_with_world, g))


@pytest.mark.parametrize("text", NARROWING)
def test_each_narrowing_scope_admits_some_but_not_all(store_with_world: Store, text: str) -> None:
    """The model's scopes are not vacuous: each alone keeps some resources of its type and drops others."""
    g = Grants({"read": None, "search": None}, narrowed=_narrowed({text}))
    policy = AccessPolicy(g)

    async def admitted() -> set[str]:
        async with store_with_world.reader() as conn:
            found = await conn.execute(select(resources.c.res_id).where(policy.visible(resources)))
            return {r.res_id for r in found.all()}

    seen = asyncio.run(admitted())
    of_type = {r["id"] for r in WORLD if r["resourceType"] == next(iter(g.narrowed))}
    assert seen & of_type and of_type - seen
    asyncio.run(_agree(store_with_world, g))


def test_unrestricted_grants_filter_nothing(store_with_world: Store) -> None:
    policy = AccessPolicy(Grants.everything())
    assert not policy.restricted
    asyncio.run(_agree(store_with_world, Grants.everything()))


@pytest.mark.parametrize("default_deny", [False, True])
def test_thousands_of_patients_with_consents_still_give_one_answerable_condition(
    store_with_world: Store, default_deny: bool
) -> None:
    """A hospital has consents on file for most patients: the search condition must not grow with
    them (past ~1,000 terms SQLite refused the query: "Expression tree is too large")."""
    no_observations = Provision("permit", children=(Provision("deny", classes=frozenset({"Observation"})),))
    consents = [(f"x{n}", f"c{n}", no_observations) for n in range(3000)]
    consents += [("p1", "c-p1", no_observations), ("p2", "c-p2", None)]
    g = Grants(
        {"read": None, "search": None},
        consents=tuple(consents),
        consented=frozenset(p for p, _, _ in consents),
        consent_default_deny=default_deny,
    )
    asyncio.run(_agree(store_with_world, g))

    async def observations() -> set[str]:
        async with store_with_world.reader() as conn:
            stmt = select(resources.c.res_id).where(
                resources.c.res_type == "Observation", AccessPolicy(g).visible(resources)
            )
            return {r.res_id for r in (await conn.execute(stmt)).all()}

    of_p1 = {r["id"] for r in WORLD if r["resourceType"] == "Observation" and "p1" in str(r.get("subject"))}
    assert of_p1 and not asyncio.run(observations()) & of_p1
