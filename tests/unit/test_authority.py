"""The system-of-record registry, conflict resolution rules, version marks, the authority stage on
its own, and the conflicts table."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.crypto.fields import MARKER_URL
from fhir_gateway.errors import Unprocessable
from fhir_gateway.fhir.json import dumps
from fhir_gateway.pipeline import conflicts
from fhir_gateway.pipeline.authority import (
    AUTHORITY_SYSTEM,
    CLAIM_URL,
    AuthorityStage,
    authority_stage,
    claim_of,
    copy_marks,
    mark,
    tags_of,
)
from fhir_gateway.pipeline.authority_config import AuthoritySettings, Subscriber
from fhir_gateway.pipeline.conflicts import Claim, differing, resolve
from fhir_gateway.pipeline.provenance import ProvenanceStage
from fhir_gateway.pipeline.registry import (
    AuthorityRulesError,
    Registry,
    authority_settings,
    subscriber_channels,
)
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.routing.outbox import WebhookChannel
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store, StoredVersion

ADT = RequestContext.system("hl7v2", source_system="ADT^HOSP")
REG = RequestContext.system("hl7v2", source_system="REG^HOSP")
REST = RequestContext(subject="u1", roles=("clinician",))
LAB = "http://terminology.hl7.org/CodeSystem/observation-category"
HEAD = "version: v\npolicy: p\ncategories: "
RULES = """
version: t-v1
policy: http://example.org/auth/
categories:
  demographics:
    match: [{resource_types: [Patient]}]
    authoritative: [{channel: hl7v2, system: "ADT^*"}, {role: registration}]
    contributors: [{channel: hl7v2}, {channel: rest}]
    elements: [birthDate]
    non_authoritative: %s
  labs:
    match:
      - {resource_types: [Observation], categories: ["%s|laboratory"]}
    authoritative: [{channel: hl7v2, system: "LIS^*"}]
"""


def registry(rule: str = "accept-secondary", tmp_path: Path | None = None) -> Registry:
    assert tmp_path is not None
    path = tmp_path / "rules.yaml"
    path.write_text(RULES % (rule, LAB))
    return Registry.load(path)


def stage(tmp_path: Path, rule: str = "accept-secondary", **config: Any) -> AuthorityStage:
    return AuthorityStage(registry(rule, tmp_path), AuthoritySettings(**config))


def stored(resource: dict[str, Any], version: int = 1, *, content: bytes | None = None) -> StoredVersion:
    return StoredVersion(
        resource["resourceType"], resource["id"], version, 1000.0, False, content or dumps(resource), "PUT"
    )


def patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", **elements}


async def write(
    s: AuthorityStage,
    ctx: RequestContext,
    resource: dict[str, Any] | None,
    previous: StoredVersion | None = None,
    *,
    method: str = "PUT",
    bundle: dict[str, Any] | None = None,
) -> Change:
    c = Change(method, "Patient", "p1", resource, previous, bundle or {"resourceType": "Bundle"}, 0)
    await ProvenanceStage()(c, ctx)
    await s(c, ctx)
    return c


async def sor_patient(s: AuthorityStage, **elements: Any) -> dict[str, Any]:
    c = await write(s, ADT, patient(**elements))
    assert c.resource is not None
    return c.resource


# --- registry -----------------------------------------------------------------------------------


def test_packaged_rules_cover_the_categories_of_the_design() -> None:
    packaged = Registry.load()
    assert packaged.version == "authority-v1"
    names = {c.name for c in packaged.categories}
    assert names == {
        "demographics",
        "encounters",
        "lab-results",
        "medications",
        "allergies",
        "imaging",
        "documents",
    }
    lab_obs = {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}],
    }
    report = {
        "resourceType": "DiagnosticReport",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "LAB"}]}
        ],
    }
    vitals = {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": LAB, "code": "vital-signs"}]}],
    }
    assert packaged.category_of(lab_obs).name == "lab-results"  # type: ignore[union-attr]
    assert packaged.category_of(report).name == "lab-results"  # type: ignore[union-attr]
    assert packaged.category_of(vitals) is None
    assert packaged.category_of({"resourceType": "ImagingStudy"}).name == "imaging"  # type: ignore[union-attr]
    assert packaged.get("documents").rule == "reject"  # type: ignore[union-attr]
    assert packaged.get("nope") is None


def test_sources_match_channel_system_and_role(tmp_path: Path) -> None:
    demographics = registry("reject", tmp_path).get("demographics")
    assert demographics is not None
    assert demographics.role_of(ADT) == "authoritative"
    assert demographics.role_of(REG) == "contributor"
    assert demographics.role_of(RequestContext(roles=("registration",))) == "authoritative"
    assert demographics.role_of(RequestContext.system("dicom", "AE1")) is None
    assert demographics.role_of(RequestContext.system("hl7v2")) == "contributor"  # no sending system


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[", "not valid YAML"),
        ("- 1", "expected a mapping"),
        ("version: v\npolicy: p", "`categories` must map"),
        ("version: 1\npolicy: p\ncategories: {a: {}}", "`version` and `policy`"),
        ("version: v\npolicy: p\ncategories: {a: {bogus: 1}}", "allowed keys"),
        ("version: v\npolicy: p\ncategories: {a: {match: []}}", "`match` must be"),
        ("version: v\npolicy: p\ncategories: {a: {match: [{resource_types: []}]}}", "resource_types"),
        ("version: v\npolicy: p\ncategories: {a: {match: [{x: 1}]}}", "a match clause"),
        (
            "version: v\npolicy: p\ncategories: {a: {match: [{resource_types: [P], categories: [x]}]}}",
            "system|code",
        ),
        (
            HEAD + "{a: {match: [{resource_types: [P]}], non_authoritative: maybe}}",
            "one of",
        ),
        (
            "version: v\npolicy: p\ncategories: {a: {match: [{resource_types: [P]}], elements: x}}",
            "`elements`",
        ),
        (
            "version: v\npolicy: p\ncategories: {a: {match: [{resource_types: [P]}], contributors: x}}",
            "list of sources",
        ),
        (
            HEAD + "{a: {match: [{resource_types: [P]}], contributors: [{who: x}]}}",
            "a source is",
        ),
    ],
)
def test_bad_registry_files_are_refused_with_the_key_named(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AuthorityRulesError, match=problem):
        Registry.load(path)


def test_a_missing_registry_file_is_named() -> None:
    with pytest.raises(AuthorityRulesError, match="cannot read"):
        Registry.load("/nonexistent/rules.yaml")


def test_settings_default_until_mounted_and_subscriber_channels() -> None:
    assert authority_settings(Settings()) == AuthoritySettings()
    config = AuthoritySettings(
        subscribers=(
            Subscriber(category="demographics", channel="sor-mpi", url="http://127.0.0.1:9/feed"),
            Subscriber(category="demographics", channel="log"),
        )
    )

    class Mounted:
        authority = config

    channels = subscriber_channels(Mounted(), httpx.AsyncClient())
    assert list(channels) == ["sor-mpi"] and isinstance(channels["sor-mpi"], WebhookChannel)
    assert isinstance(authority_stage(Settings()), AuthorityStage)


# --- conflict rules -----------------------------------------------------------------------------


def test_differing_ignores_meta_and_counts_absence() -> None:
    assert differing(patient(gender="f", meta={"a": 1}), patient(gender="m", birthDate="2000")) == [
        "gender",
        "birthDate",
    ]
    assert differing(patient(gender="f"), patient(gender="f", text={"div": "x"})) == []


def test_authority_then_timestamp_then_queue() -> None:
    sor, lis = Claim("hl7v2|ADT", True, 10.0), Claim("hl7v2|LIS", True, 10.0)
    reg_old, reg_new, reg_tie = (
        Claim("hl7v2|REG", False, 5.0),
        Claim("hl7v2|REG", False, 20.0),
        Claim("x", False, 10.0),
    )
    current, incoming = patient(birthDate="1980", gender="f"), patient(birthDate="1999", gender="m")
    r = resolve(current, incoming, sor, reg_new, protected={"birthDate"}, held_by_sor=True)
    assert (r.kept, r.taken, r.resource["birthDate"]) == (
        {"birthDate": "authority"},
        {"gender": "timestamp"},
        "1980",
    )
    assert r.losing(incoming) == {"birthDate": "1999"} and r.merged
    r = resolve(current, incoming, reg_new, sor, protected={"birthDate"}, held_by_sor=False)
    assert r.taken == {"birthDate": "authority", "gender": "authority"} and not r.merged
    r = resolve(current, incoming, sor, lis, protected=None, held_by_sor=True)
    assert r.queued == ["birthDate", "gender"] and r.resource == current
    r = resolve(current, incoming, Claim("a", False, 10.0), reg_old, protected=None, held_by_sor=False)
    assert r.kept == {"birthDate": "timestamp", "gender": "timestamp"}
    r = resolve(current, incoming, Claim("a", False, None), reg_tie, protected=None, held_by_sor=False)
    assert r.taken == {"birthDate": "timestamp", "gender": "timestamp"}  # no source time: arrival order
    assert resolve(current, incoming, sor, sor, protected=None, held_by_sor=True).resource == incoming
    r = resolve(patient(), patient(birthDate="1999"), sor, reg_new, protected=None, held_by_sor=True)
    assert "birthDate" not in r.resource  # the SoR had none: the contributor cannot add one


def test_marks_round_trip_and_copy() -> None:
    resource = patient(meta={"tag": [{"system": "other", "code": "x"}], "extension": [{"url": "u"}]})
    mark(resource, ["sor"], Claim("hl7v2|ADT^HOSP", True, 0.0))
    assert tags_of(resource) == {"sor"}
    assert claim_of(resource, None) == Claim("hl7v2|ADT^HOSP", True, 0.0)
    mark(resource, ["secondary"], Claim("rest|u1", False, None))
    assert tags_of(resource) == {"secondary"} and claim_of(resource, 5.0) == Claim("rest|u1", False, None)
    assert claim_of(patient(), 5.0) == Claim("unknown", False, 5.0)
    target = patient(meta={"tag": [{"system": AUTHORITY_SYSTEM, "code": "sor"}]})
    copy_marks(resource, target)
    assert tags_of(target) == {"secondary"}
    assert [e["url"] for e in target["meta"]["extension"]] == [CLAIM_URL]
    bare = patient(meta={"tag": [{"system": AUTHORITY_SYSTEM, "code": "sor"}]})
    copy_marks(patient(), bare)
    assert "meta" not in bare
    assert claim_of(
        patient(
            meta={"extension": [{"url": CLAIM_URL, "extension": [{"url": "time", "valueInstant": "bad"}]}]}
        ),
        None,
    ) == Claim("unknown", False, None)


# --- the stage ----------------------------------------------------------------------------------


async def test_creates_are_marked_and_recorded(tmp_path: Path) -> None:
    s = stage(tmp_path)
    c = await write(s, ADT, patient(birthDate="1980-02-15"))
    assert c.resource is not None and tags_of(c.resource) == {"sor"}
    assert c.additions[0]["policy"] == ["http://example.org/auth/t-v1#demographics/authoritative"]
    c = await write(s, REG, patient(birthDate="1980-02-15"))
    assert c.resource is not None and tags_of(c.resource) == {"secondary"}


async def test_ungoverned_resources_pass_untouched(tmp_path: Path) -> None:
    s = stage(tmp_path)
    vitals = {
        "resourceType": "Observation",
        "id": "o",
        "category": [{"coding": [{"system": LAB, "code": "vital-signs"}]}],
    }
    c = Change("POST", "Observation", "o", dict(vitals), None, {}, 0)
    await s(c, REST)
    assert c.resource == vitals
    c = Change("POST", "Encounter", "e", {"resourceType": "Encounter", "id": "e"}, None, {}, 0)
    await s(c, REST)
    assert "meta" not in (c.resource or {})


async def test_a_source_that_is_neither_sor_nor_contributor_is_refused(tmp_path: Path) -> None:
    lab = {
        "resourceType": "Observation",
        "id": "o",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}],
    }
    with pytest.raises(Unprocessable, match="may not write labs"):
        await stage(tmp_path)(Change("POST", "Observation", "o", lab, None, {}, 0), REST)


async def test_accept_secondary_keeps_the_sor_value_and_warns(tmp_path: Path) -> None:
    s = stage(tmp_path)
    current = await sor_patient(s, birthDate="1980-02-15", gender="female")
    c = await write(
        s, REST, patient(birthDate="1999-09-09", gender="male", meta=current["meta"]), stored(current)
    )
    assert c.resource is not None
    assert (c.resource["birthDate"], c.resource["gender"]) == ("1980-02-15", "male")
    assert tags_of(c.resource) == {"sor", "secondary"}
    assert c.warnings[0].expression == ["Patient.birthDate"]
    policy = c.additions[0]["policy"]
    assert policy == ["http://example.org/auth/t-v1#demographics/accept-secondary"]  # no queue table here
    assert "merge" in [x["code"] for x in c.additions[0]["activity"]["coding"]]


async def test_a_contributor_changing_only_sor_elements_changes_nothing(tmp_path: Path) -> None:
    s = stage(tmp_path)
    current = await sor_patient(s, birthDate="1980-02-15")
    c = await write(s, REG, patient(birthDate="1999-09-09"), stored(current))
    assert c.resource == current  # a no-op for the store: no version, no Provenance kept


async def test_identical_data_keeps_the_current_marks(tmp_path: Path) -> None:
    s = stage(tmp_path)
    current = await sor_patient(s, birthDate="1980-02-15")
    c = await write(s, REG, patient(birthDate="1980-02-15"), stored(current))
    assert c.resource is not None and c.resource["meta"] == current["meta"]
    assert "policy" not in c.additions[0]


async def test_reject_rule_answers_422_naming_the_elements(tmp_path: Path) -> None:
    s = stage(tmp_path, "reject")
    current = await sor_patient(s, birthDate="1980-02-15")
    with pytest.raises(Unprocessable) as caught:
        await write(s, REST, patient(birthDate="1999-09-09"), stored(current))
    assert caught.value.issues[0].expression == ["Patient.birthDate"]
    assert "1999" not in caught.value.issues[0].diagnostics


async def test_queue_without_a_transaction_refuses_rather_than_losing_the_proposal(tmp_path: Path) -> None:
    s = stage(tmp_path, "queue")
    current = await sor_patient(s, birthDate="1980-02-15")
    with pytest.raises(Unprocessable, match="review queue"):
        await write(s, REST, patient(birthDate="1999-09-09"), stored(current))


async def test_only_the_sor_deletes_sor_data(tmp_path: Path) -> None:
    s = stage(tmp_path)
    current = await sor_patient(s, birthDate="1980-02-15")
    with pytest.raises(Unprocessable, match="Only the system of record"):
        await write(s, REST, None, stored(current), method="DELETE")
    c = await write(s, ADT, None, stored(current), method="DELETE")
    assert c.additions[0]["policy"] == ["http://example.org/auth/t-v1#demographics/authoritative"]


async def test_sealed_current_data_without_the_hook_protects_the_sor(tmp_path: Path) -> None:
    s = stage(tmp_path)
    current = await sor_patient(s, birthDate="1980-02-15")
    marker = {"url": MARKER_URL, "valueString": "birthDate"}
    sealed = dumps(
        {**current, "meta": {**current["meta"], "extension": [*current["meta"]["extension"], marker]}}
    )
    with pytest.raises(Unprocessable):
        await write(s, REST, patient(birthDate="x"), stored(current, content=sealed))
    c = await write(s, ADT, patient(birthDate="1980-02-16"), stored(current, content=sealed))
    assert c.resource is not None and tags_of(c.resource) == {"sor"}


async def test_a_resolution_needs_a_reviewer(tmp_path: Path) -> None:
    s = stage(tmp_path, "reject")
    current = await sor_patient(s, birthDate="1980-02-15")
    bundle = {
        "resourceType": "Bundle",
        "meta": {"tag": [{"system": AUTHORITY_SYSTEM, "code": "conflict-resolution"}]},
    }
    with pytest.raises(Unprocessable):  # a forged marker from a non-reviewer changes nothing
        await write(s, REST, patient(birthDate="1999-09-09"), stored(current), bundle=bundle)
    reviewer = RequestContext(subject="boss", roles=("admin",))
    c = await write(s, reviewer, patient(birthDate="1999-09-09"), stored(current), bundle=bundle)
    assert (
        c.resource is not None and c.resource["birthDate"] == "1999-09-09" and tags_of(c.resource) == {"sor"}
    )
    assert c.additions[0]["policy"] == ["http://example.org/auth/t-v1#demographics/resolved"]


async def test_decisions_without_a_provenance_stage_are_only_marked(tmp_path: Path) -> None:
    s = stage(tmp_path)
    c = Change("PUT", "Patient", "p1", patient(), None, {}, 0)
    await s(c, ADT)
    assert c.additions == [] and c.resource is not None and tags_of(c.resource) == {"sor"}


async def test_pushes_need_the_transaction(tmp_path: Path) -> None:
    s = stage(tmp_path, subscribers=(Subscriber(category="demographics", channel="log"),))
    c = await write(s, ADT, patient())
    assert c.resource is not None  # logged, not raised: the write itself is fine


# --- the conflicts table ------------------------------------------------------------------------


async def test_conflict_rows_are_recorded_listed_and_closed_once(any_db_url: str) -> None:
    store = Store(any_db_url)
    await store.upgrade()
    try:
        claim = Claim("hl7v2|REG^HOSP", False, 5.0)
        async with store.transaction() as tx:
            first = await conflicts.record(
                tx.conn,
                status="open",
                category="demographics",
                res_type="Patient",
                res_id="p1",
                base_version=1,
                claim=claim,
                reason="queue-rule",
                proposed={"birthDate": "1999-09-09"},
                now=time.time(),
            )
            await conflicts.record(
                tx.conn,
                status="auto",
                category="demographics",
                res_type="Patient",
                res_id="p2",
                base_version=3,
                claim=claim,
                reason="authority",
                proposed={"gender": "male"},
            )
        [row] = await conflicts.open_conflicts(store, res_type="Patient", res_id="p1")
        assert (row.id, row.elements, row.proposed, row.source_time) == (
            first,
            ["birthDate"],
            {"birthDate": "1999-09-09"},
            5.0,
        )
        assert await conflicts.count(store) == 1 and await conflicts.count(store, "auto") == 1
        async with store.transaction() as tx:
            assert await conflicts.mark_resolved(
                tx.conn, first, decision={"birthDate": "current"}, by="rest|boss", result_version=None
            )
        async with store.transaction() as tx:
            assert not await conflicts.mark_resolved(tx.conn, first, decision={}, by="x", result_version=2)
        closed = await conflicts.get(store, first)
        assert closed is not None and (closed.status, closed.decision, closed.resolved_by) == (
            "resolved",
            {"birthDate": "current"},
            "rest|boss",
        )
        assert await conflicts.get(store, 999) is None
    finally:
        await store.dispose()
