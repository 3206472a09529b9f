"""Security labelling: the rules table, never-lower, exactly one confidentiality, version, propagation."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.privacy.labels import (
    ACT_CODE_SYSTEM,
    CONFIDENTIALITY_SYSTEM,
    HANDLING_CODES,
    LABEL_RULES_SYSTEM,
    POLICY_CODES,
    SENSITIVITY_CODES,
    LabelRulesError,
    LabelSet,
    LabelStage,
    RuleSet,
    high_water_mark,
    labels_stage,
    read_labels,
    write_labels,
)
from fhir_gateway.settings import load_settings

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
REST = RequestContext(subject="u", roles=("clinician",))
STAGE = labels_stage(load_settings(None, environ={}))


def coded(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def condition(system: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Condition", "id": "c1", "code": coded(system, code), **extra}


def observation(system: str, code: str, res_id: str = "o1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": res_id,
        "status": "final",
        "code": coded(system, code),
        **extra,
    }


def security(resource: dict[str, Any]) -> list[tuple[str, str]]:
    return [(c["system"].rsplit("-", 1)[-1], c["code"]) for c in resource["meta"]["security"]]


def confidentiality(resource: dict[str, Any]) -> list[str]:
    return [c["code"] for c in resource["meta"]["security"] if _system(c) == CONFIDENTIALITY_SYSTEM]


def _system(coding: Any) -> Any:
    return coding.get("system") if isinstance(coding, dict) else None


def act_codes(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource["meta"]["security"] if _system(c) == ACT_CODE_SYSTEM}


async def label(
    resource: dict[str, Any],
    ctx: RequestContext = REST,
    bundle: dict[str, Any] | None = None,
    stage: LabelStage = STAGE,
    additions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if bundle is None:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": resource}]}
    change = Change("POST", resource["resourceType"], resource["id"], resource, None, bundle, 0)
    change.additions.extend(additions or [])
    await stage(change, ctx)
    return resource


RULES_TABLE = [
    # (name, resource, confidentiality, act codes that must be present)
    ("plain condition", condition(ICD10CM, "J45.909"), "N", set()),
    ("HIV disease ICD-10-CM", condition(ICD10CM, "B20"), "R", {"HIV", "NORDSCLCD"}),
    ("HIV range end, WHO ICD-10", condition(ICD10, "B24"), "R", {"HIV"}),
    ("asymptomatic HIV carrier", condition(ICD10CM, "Z21"), "R", {"HIV"}),
    ("HIV in pregnancy, dotted subcode", condition(ICD10CM, "O98.72"), "R", {"HIV"}),
    ("B25 is not HIV", condition(ICD10CM, "B25.0"), "N", set()),
    ("HIV SNOMED", condition(SNOMED, "86406008"), "R", {"HIV"}),
    ("HIV antibody test LOINC", observation(LOINC, "7917-8"), "R", {"HIV"}),
    ("HIV viral load LOINC", observation(LOINC, "20447-9"), "R", {"HIV"}),
    ("schizophrenia F20", condition(ICD10CM, "F20.0"), "R", {"PSY"}),
    ("PTSD F43.1", condition(ICD10CM, "F43.10"), "R", {"PSY"}),
    ("range end F48", condition(ICD10CM, "F48.8"), "R", {"PSY"}),
    ("F49 is outside the range", condition(ICD10CM, "F49"), "N", set()),
    ("depression SNOMED", condition(SNOMED, "35489007"), "R", {"PSY"}),
    ("alcohol use disorder", condition(ICD10CM, "F10.20"), "R", {"SUD", "ETH", "ETHUD", "42CFRPart2"}),
    ("opioid use disorder", condition(ICD10CM, "f11.20"), "R", {"SUD", "OPIOIDUD", "42CFRPart2"}),
    ("cannabis use disorder", condition(ICD10CM, "F12.10"), "R", {"SUD", "NORDSCLCD"}),
    ("domestic violence T74", condition(ICD10CM, "T74.11XA"), "R", {"SDV"}),
    ("alleged rape exam Z04.41", condition(ICD10CM, "Z04.41"), "R", {"SDV"}),
    ("syphilis A51", condition(ICD10CM, "A51.0"), "R", {"STD"}),
    ("contraception Z30", condition(ICD10CM, "Z30.011"), "R", {"SEX"}),
    ("Down syndrome Q90", condition(ICD10CM, "Q90.9"), "R", {"GDIS"}),
    (
        "medication for an HIV reason",
        {"resourceType": "MedicationRequest", "id": "m", "reasonCode": [coded(ICD10CM, "B20")]},
        "R",
        {"HIV"},
    ),
    (
        "encounter with a psychiatric diagnosis code",
        {"resourceType": "Encounter", "id": "e", "reasonCode": [coded(SNOMED, "58214004")]},
        "R",
        {"PSY"},
    ),
    (
        "sexual orientation in social history",
        observation(LOINC, "76690-7", category=[coded(OBS_CATEGORY, "social-history")]),
        "R",
        {"SEX"},
    ),
    ("sexual orientation without the category", observation(LOINC, "76690-7"), "N", set()),
    ("HIV LOINC code on a Condition is not a lab rule", condition(LOINC, "7917-8"), "N", set()),
    ("a code in meta is not content", {"resourceType": "Basic", "id": "b", "meta": {"tag": [
        {"system": ICD10CM, "code": "B20"}]}}, "N", set()),
]  # fmt: skip


@pytest.mark.parametrize(("name", "resource", "conf", "codes"), RULES_TABLE, ids=[r[0] for r in RULES_TABLE])
async def test_rules_table(name: str, resource: dict[str, Any], conf: str, codes: set[str]) -> None:
    labelled = await label(json.loads(json.dumps(resource)))
    assert confidentiality(labelled) == [conf]
    assert codes <= act_codes(labelled)
    if not codes:
        assert act_codes(labelled) == set()


async def test_rules_never_lower_a_higher_client_label_and_keep_client_codes() -> None:
    sent = [
        {"system": CONFIDENTIALITY_SYSTEM, "code": "V"},
        {"system": ACT_CODE_SYSTEM, "code": "CEL"},
        {"system": "http://example.org/local-labels", "code": "VIP"},
    ]
    labelled = await label(condition(ICD10CM, "F20.0", meta={"security": sent}))
    assert confidentiality(labelled) == ["V"]  # R from the rule does not lower the client's V
    assert {"CEL", "PSY"} <= act_codes(labelled)
    assert {"system": "http://example.org/local-labels", "code": "VIP"} in labelled["meta"]["security"]


async def test_rules_raise_a_lower_client_label() -> None:
    sent = [{"system": CONFIDENTIALITY_SYSTEM, "code": "L"}]
    labelled = await label(condition(ICD10CM, "B20", meta={"security": sent}))
    assert confidentiality(labelled) == ["R"]


async def test_exactly_one_confidentiality_code() -> None:
    sent = [
        {"system": CONFIDENTIALITY_SYSTEM, "code": "N"},
        {"system": CONFIDENTIALITY_SYSTEM, "code": "R"},
        {"system": CONFIDENTIALITY_SYSTEM, "code": "bogus"},
        {"system": CONFIDENTIALITY_SYSTEM, "code": "PSY"},  # R4's legacy spelling: becomes ActCode PSY
        "not a coding",
    ]
    labelled = await label(condition(ICD10CM, "J45", meta={"security": sent}))
    assert confidentiality(labelled) == ["R"]
    assert act_codes(labelled) == {"PSY"}
    assert labelled["meta"]["security"][0]["display"] == "restricted"
    assert "not a coding" in labelled["meta"]["security"]


async def test_unlabelled_resource_gets_the_default_and_the_version_tag() -> None:
    labelled = await label(condition(ICD10CM, "J45", meta="garbage"))
    assert security(labelled) == [("Confidentiality", "N")]
    assert labelled["meta"]["tag"] == [{"system": LABEL_RULES_SYSTEM, "code": "labels-v1"}]


async def test_version_tag_replaces_an_older_one_and_keeps_other_tags() -> None:
    tags = [{"system": LABEL_RULES_SYSTEM, "code": "labels-v0"}, {"system": "http://x", "code": "keep"}]
    labelled = await label(condition(ICD10CM, "J45", meta={"tag": tags}))
    assert labelled["meta"]["tag"] == [
        {"system": "http://x", "code": "keep"},
        {"system": LABEL_RULES_SYSTEM, "code": "labels-v1"},
    ]


async def test_relabelling_is_idempotent() -> None:
    once = await label(condition(ICD10CM, "F10.20"))
    first = json.dumps(once["meta"])
    twice = await label(once)
    assert json.dumps(twice["meta"]) == first


async def test_delete_changes_nothing() -> None:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": []}
    change = Change("DELETE", "Condition", "c1", None, None, bundle, 0)
    await STAGE(change, REST)
    assert change.resource is None


def bundle_of(*entries: tuple[str | None, dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": url, "resource": res, "request": {"method": "POST", "url": res["resourceType"]}}
            if url
            else {"resource": res, "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}}
            for url, res in entries
        ],
    }


async def test_diagnostic_report_inherits_from_its_results_in_the_bundle() -> None:
    psy = observation(SNOMED, "35489007", "o-psy")
    plain = observation(LOINC, "2345-7", "o-plain")
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": coded(LOINC, "11502-2"),
        "result": [{"reference": "Observation/o-plain"}, {"reference": "urn:uuid:psy"}],
    }
    # the report comes first, before its results were labelled themselves
    bundle = bundle_of(("urn:uuid:r", report), ("urn:uuid:psy", psy), ("urn:uuid:plain", plain))
    labelled = await label(report, bundle=bundle)
    assert confidentiality(labelled) == ["R"]
    assert "PSY" in act_codes(labelled)


async def test_inheritance_through_absolute_and_versioned_references() -> None:
    hiv = observation(LOINC, "7917-8", "o9")
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r2",
        "result": [{"reference": "https://ehr.example/fhir/Observation/o9/_history/3"}],
    }
    bundle = bundle_of((None, hiv), ("https://ehr.example/fhir/DiagnosticReport/r2", report))
    assert "HIV" in act_codes(await label(report, bundle=bundle))


async def test_inheritance_follows_chains_and_survives_cycles() -> None:
    sud = condition(ICD10CM, "F11.20", id="c-sud")
    panel = observation(LOINC, "1-1", "panel", derivedFrom=[{"reference": "Condition/c-sud"}])
    panel["hasMember"] = [{"reference": "Observation/top"}]  # a cycle back to the top
    top = observation(LOINC, "2-2", "top", hasMember=[{"reference": "Observation/panel"}])
    report = {"resourceType": "DiagnosticReport", "id": "r3", "result": [{"reference": "Observation/top"}]}
    bundle = bundle_of((None, sud), (None, panel), (None, top), (None, report))
    labelled = await label(report, bundle=bundle)
    assert {"SUD", "OPIOIDUD", "42CFRPart2"} <= act_codes(labelled)


async def test_client_labels_of_a_source_are_inherited() -> None:
    vip = {"resourceType": "Observation", "id": "o-v", "meta": {"security": [
        {"system": CONFIDENTIALITY_SYSTEM, "code": "V"}]}}  # fmt: skip
    provenance = {"resourceType": "Provenance", "id": "p1", "target": [{"reference": "Observation/o-v"}]}
    labelled = await label(provenance, bundle=bundle_of((None, vip), (None, provenance)))
    assert confidentiality(labelled) == ["V"]


async def test_references_to_nothing_in_the_bundle_inherit_nothing() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "id": "r4",
        "result": [{"reference": "Observation/elsewhere"}, {"display": "no reference"}],
        "basedOn": {"reference": "ServiceRequest/x"},
    }
    bundle = bundle_of((None, report), (None, {"resourceType": "Basic", "id": "b"}))
    bundle["entry"].append("garbage")
    bundle["entry"].append({"resource": "garbage"})
    labelled = await label(report, bundle=bundle)
    assert confidentiality(labelled) == ["N"]


async def test_provenance_added_by_an_earlier_stage_takes_the_labels() -> None:
    resource = condition(ICD10CM, "A54.0", id="c-std")
    provenance = {"resourceType": "Provenance", "target": [{"reference": "Condition/c-std/_history/1"}]}
    unrelated = {"resourceType": "Provenance", "target": [{"reference": "Condition/other"}]}
    await label(resource, additions=[provenance, unrelated])
    assert "STD" in act_codes(provenance)
    assert confidentiality(provenance) == ["R"]
    assert "meta" not in unrelated  # it targets something else


def custom(rules: list[dict[str, Any]], **extra: Any) -> LabelStage:
    data = {
        "version": "test-v9",
        "systems": {"local": {"urls": ["http://local/codes"]}},
        "rules": rules,
        **extra,
    }
    return LabelStage(RuleSet.from_mapping(data))


async def test_source_rules_use_the_request_context() -> None:
    stage = custom(
        [
            {
                "id": "bh-feed",
                "when": {"sources": [{"channel": "hl7v2", "system": "BHCLINIC^*"}]},
                "assign": {"confidentiality": "R", "sensitivity": ["BH"]},
            },
            {
                "id": "any-dicom",
                "when": {"sources": [{"channel": "dicom"}]},
                "assign": {"handling": ["ENCRYPT"]},
            },
        ]
    )
    bh = RequestContext.system("hl7v2", "BHCLINIC^SITE1")
    other = RequestContext.system("hl7v2", "LAB^SITE1")
    unnamed = RequestContext.system("hl7v2")
    assert "BH" in act_codes(await label(condition(ICD10CM, "J45"), bh, stage=stage))
    assert act_codes(await label(condition(ICD10CM, "J45"), other, stage=stage)) == set()
    assert act_codes(await label(condition(ICD10CM, "J45"), unnamed, stage=stage)) == set()
    assert act_codes(await label(condition(ICD10CM, "J45"), RequestContext.system("dicom"), stage=stage)) == {
        "ENCRYPT"
    }
    tagged = await label(condition(ICD10CM, "J45"), bh, stage=stage)
    assert tagged["meta"]["tag"][-1]["code"] == "test-v9"


async def test_resource_type_and_exact_code_conditions() -> None:
    stage = custom(
        [
            {
                "id": "local",
                "when": {"resource_types": ["Observation"], "codes": {"local": ["X1"]}},
                "assign": {"confidentiality": "V"},
            }
        ],
        default_confidentiality="M",
    )
    assert confidentiality(await label(observation("http://local/codes", "X1"), stage=stage)) == ["V"]
    assert confidentiality(await label(condition("http://local/codes", "X1"), stage=stage)) == ["M"]
    assert confidentiality(await label(observation("http://local/codes", "X10"), stage=stage)) == ["M"]


R = {"confidentiality": "R"}
ICD = {"i": {"urls": ["u"], "hierarchical": True}}


def rule(when: Any = None, assign: Any = R, **extra: Any) -> dict[str, Any]:
    return {"id": "r", **({} if when is None else {"when": when}), "assign": assign, **extra}


def rules(*items: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": "v", "rules": list(items), **top}


BAD_RULE_FILES = [
    ([], "top level"),
    ({"rules": []}, "version"),
    ({"version": "v", "extra": 1}, "unknown key"),
    ({"version": "v", "default_confidentiality": "Q"}, "default_confidentiality"),
    ({"version": "v", "rules": {}}, "must be a list"),
    ({"version": "v", "rules": ["x"]}, r"rules\[0\]"),
    ({"version": "v", "systems": []}, "systems"),
    ({"version": "v", "systems": {"a": {"urls": []}}}, "urls"),
    ({"version": "v", "propagate": {"DiagnosticReport": "result"}}, "propagate"),
    (rules(rule(colour=1)), "unknown key"),
    (rules(rule(when=[])), "unknown key"),
    (rules(rule(when={"codes": []})), "codes"),
    (rules(rule(when={"codes": {"nope": ["1"]}})), "alias"),
    (rules(rule(when={"codes": {"i": "1"}}), systems=ICD), "must be a list"),
    (rules(rule(when={"codes": {"i": ["F48..F20"]}}), systems=ICD), "range"),
    (rules(rule(when={"codes": {"i": ["F20..G01"]}}), systems=ICD), "range"),
    (rules(rule(when={"categories": ["nobar"]})), "system|code"),
    (rules(rule(when={"sources": [{"chanel": "x"}]})), "source"),
    (rules({"id": "r"}), "at least one"),
    (rules(rule(assign={"colour": "R"})), "unknown key"),
    (rules(rule(assign={"confidentiality": "X"})), "U L M N R V"),
    (rules(rule(assign={"sensitivity": ["FLU"]})), "FLU"),
    (rules(rule(assign={"handling": "MASK"})), "handling"),
    (rules(rule(), rule(assign={"confidentiality": "V"})), "duplicate"),
]


@pytest.mark.parametrize(("data", "message"), BAD_RULE_FILES)
def test_bad_rule_files_fail_with_a_message(data: Any, message: str) -> None:
    with pytest.raises(LabelRulesError, match=message):
        RuleSet.from_mapping(data)


def test_rule_files_from_disk(tmp_path: Path) -> None:
    good = tmp_path / "rules.yaml"
    good.write_text("version: site-v2\nrules:\n  - id: all\n    assign: {confidentiality: R}\n")
    assert RuleSet.load(good).version == "site-v2"
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: [unclosed")
    with pytest.raises(LabelRulesError, match="not valid YAML"):
        RuleSet.load(bad)
    with pytest.raises(LabelRulesError, match="cannot read"):
        RuleSet.load(tmp_path / "missing.yaml")


def test_stage_factory_reads_a_configured_rule_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("version: site-v3\n")

    class Privacy:
        label_rules = str(path)

    class FakeSettings:  # Settings has no `privacy` section yet; the factory reads it when present
        privacy = Privacy()

    assert labels_stage(FakeSettings()).rules.version == "site-v3"  # type: ignore[arg-type]


def test_high_water_mark_reveals_only_confidentiality() -> None:
    labelled = [
        {"meta": {"security": [{"system": CONFIDENTIALITY_SYSTEM, "code": "N"}]}},
        {"meta": {"security": [{"system": CONFIDENTIALITY_SYSTEM, "code": "R"}, {"system": ACT_CODE_SYSTEM,
                                                                                 "code": "PSY"}]}},
        {"resourceType": "Patient"},
    ]  # fmt: skip
    assert high_water_mark(labelled) == {
        "system": CONFIDENTIALITY_SYSTEM,
        "code": "R",
        "display": "restricted",
    }
    assert high_water_mark([{"resourceType": "Patient"}]) is None


def test_label_set_union_and_reading() -> None:
    a = LabelSet("N", frozenset({"PSY"}))
    b = LabelSet(None, frozenset(), frozenset({"42CFRPart2"}), frozenset({"NOAUTH"}))
    both = a | b
    assert both == LabelSet("N", frozenset({"PSY"}), frozenset({"42CFRPart2"}), frozenset({"NOAUTH"}))
    assert (b | a).confidentiality == "N"
    resource = {"meta": {"security": both.codings()}}
    assert read_labels(resource) == (both, [])


def _actcode_hierarchy() -> dict[str, list[str]]:
    """code → its ancestors in FHIR R4's v3-ActCode."""
    source = Path("/work/shared/fhir-r4/v3-codesystems.json.gz")
    if not source.exists():
        pytest.skip("the R4 v3 code systems are not available here")
    with gzip.open(source) as stream:
        bundle = json.loads(stream.read())
    [actcode] = [e["resource"] for e in bundle["entry"] if e["resource"].get("url") == ACT_CODE_SYSTEM]
    ancestry: dict[str, list[str]] = {}

    def walk(concepts: list[dict[str, Any]], path: list[str]) -> None:
        for concept in concepts:
            ancestry[concept["code"]] = path
            walk(concept.get("concept", []), [*path, concept["code"]])

    walk(actcode["concept"], [])
    return ancestry


def test_vocabularies_match_the_published_v3_actcode() -> None:
    ancestry = _actcode_hierarchy()
    assert {
        c for c, path in ancestry.items() if "_InformationSensitivityPolicy" in path and not c.startswith("_")
    } == (SENSITIVITY_CODES)
    assert {
        c for c, path in ancestry.items() if {"ObligationPolicy", "RefrainPolicy"} & set(path)
    } == HANDLING_CODES
    assert {c for c, path in ancestry.items() if "_ActUSPrivacyLaw" in path} == POLICY_CODES


def test_reading_and_writing_labels_keeps_foreign_codings_once() -> None:
    foreign = {"system": "http://local", "code": "X"}
    unknown_act = {"system": ACT_CODE_SYSTEM, "code": "NOT-A-LABEL"}
    resource: dict[str, Any] = {"meta": {"security": [foreign, dict(foreign), unknown_act]}}
    labels, others = read_labels(resource)
    assert labels == LabelSet()
    assert others == [foreign, unknown_act]
    write_labels(resource, LabelSet(sensitivity=frozenset({"HIV"})))  # no version: no tag
    assert resource["meta"] == {
        "security": [{"system": ACT_CODE_SYSTEM, "code": "HIV"}, foreign, unknown_act]
    }
    assert LabelSet().codings() == []


async def test_bundle_entries_without_ids_are_found_by_full_url() -> None:
    psy = {"resourceType": "Observation", "code": coded(ICD10CM, "F32.9")}
    report = {"resourceType": "DiagnosticReport", "id": "r5", "result": [{"reference": "urn:uuid:1"}]}
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"fullUrl": "urn:uuid:1", "resource": psy}, {"resource": report}],
    }
    assert "PSY" in act_codes(await label(report, bundle=bundle))
