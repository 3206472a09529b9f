"""The provenance stage on its own: what each written version's Provenance says, for each source."""

from __future__ import annotations

import time
from typing import Any

from fhir_gateway.context import RequestContext
from fhir_gateway.fhir.json import dumps
from fhir_gateway.pipeline.provenance import (
    DICOM_UID_SYSTEM,
    SUBMISSION_SYSTEM,
    ProvenanceStage,
    agent_for,
    combine,
    provenance_stage,
    source_of,
    unversioned,
)
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import StoredVersion

REST = RequestContext(subject="u1", fhir_user="Practitioner/7")
HL7 = RequestContext.system("hl7v2", source_system="LAB^HOSP")
DICOM = RequestContext.system("dicom", source_system="MODALITY1")
RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}


def stored(resource: dict[str, Any], version: int = 1, *, deleted: bool = False) -> StoredVersion:
    content = None if deleted else dumps(resource)
    return StoredVersion(
        resource["resourceType"], resource["id"], version, time.time(), deleted, content, "PUT"
    )


def change(
    method: str,
    resource: dict[str, Any] | None,
    previous: StoredVersion | None = None,
    bundle: dict[str, Any] | None = None,
    *,
    res_type: str = "Observation",
    res_id: str = "o1",
) -> Change:
    return Change(method, res_type, res_id, resource, previous, bundle or {"resourceType": "Bundle"}, 0)


async def run(c: Change, ctx: RequestContext = REST) -> dict[str, Any]:
    await ProvenanceStage(clock=lambda: 0.0)(c, ctx)
    [provenance] = c.additions
    return provenance


def coding_codes(p: dict[str, Any]) -> list[str]:
    return [c["code"] for c in p["activity"]["coding"]]


async def test_a_create_targets_version_one_and_records_the_user_as_author() -> None:
    p = await run(change("POST", {"resourceType": "Observation", "id": "o1"}))
    assert p["target"] == [{"reference": "Observation/o1/_history/1"}]
    assert p["recorded"] == "1970-01-01T00:00:00.000+00:00"
    assert coding_codes(p) == ["CREATE"]
    assert p["agent"] == [
        {
            "type": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                        "code": "author",
                    }
                ]
            },
            "who": {"reference": "Practitioner/7"},
        }
    ]
    assert "entity" not in p and "occurredDateTime" not in p


async def test_an_update_targets_the_next_version_and_names_the_one_it_revises() -> None:
    previous = stored({"resourceType": "Observation", "id": "o1"}, version=3)
    p = await run(change("PUT", {"resourceType": "Observation", "id": "o1"}, previous))
    assert p["target"] == [{"reference": "Observation/o1/_history/4"}]
    assert coding_codes(p) == ["UPDATE"]
    assert p["entity"] == [{"role": "revision", "what": {"reference": "Observation/o1/_history/3"}}]


async def test_recreating_after_a_delete_continues_the_version_count() -> None:
    previous = stored({"resourceType": "Observation", "id": "o1"}, version=2, deleted=True)
    p = await run(change("PUT", {"resourceType": "Observation", "id": "o1"}, previous))
    assert p["target"] == [{"reference": "Observation/o1/_history/3"}]
    assert coding_codes(p) == ["CREATE"] and "entity" not in p


async def test_a_delete_carries_the_labels_of_what_it_deleted() -> None:
    old = {"resourceType": "Observation", "id": "o1", "meta": {"security": [RESTRICTED]}}
    p = await run(change("DELETE", None, stored(old, version=2)))
    assert coding_codes(p) == ["DELETE"]
    assert p["target"] == [{"reference": "Observation/o1/_history/3"}]
    assert p["meta"]["security"][0]["code"] == "R"


async def test_labels_of_the_written_resource_are_copied() -> None:
    p = await run(
        change("POST", {"resourceType": "Observation", "id": "o1", "meta": {"security": [RESTRICTED]}})
    )
    assert [c["code"] for c in p["meta"]["security"]] == ["R"]


async def test_provenance_and_audit_events_get_no_provenance() -> None:
    for res_type in ("Provenance", "AuditEvent"):
        c = change("POST", {"resourceType": res_type, "id": "x"}, res_type=res_type, res_id="x")
        await ProvenanceStage()(c, REST)
        assert c.additions == []


async def test_an_hl7_message_is_the_source_and_its_evn_provenance_is_linked() -> None:
    bundle = {
        "resourceType": "Bundle",
        "identifier": {"value": "MSG1"},
        "timestamp": "2024-03-01T09:15:00+00:00",
        "entry": [
            {"resource": {"resourceType": "MessageHeader", "id": "mh1"}},
            {"resource": {"resourceType": "Observation", "id": "o1"}},
            {
                "resource": {
                    "resourceType": "Provenance",
                    "id": "evn",
                    "target": [{"reference": "Observation/o1"}],
                }
            },
        ],
    }
    p = await run(change("PUT", {"resourceType": "Observation", "id": "o1"}, bundle=bundle), HL7)
    assert coding_codes(p) == ["CREATE", "transform"]
    assert p["occurredDateTime"] == "2024-03-01T09:15:00+00:00"
    assert p["agent"][0]["who"] == {
        "identifier": {"system": "urn:fhir-gateway:source:hl7v2", "value": "LAB^HOSP"},
        "display": "LAB^HOSP",
    }
    assert p["entity"] == [
        {
            "role": "source",
            "what": {
                "reference": "MessageHeader/mh1",
                "display": "HL7v2 message",
                "identifier": {"value": "MSG1"},
            },
        },
        {"role": "source", "what": {"reference": "Provenance/evn"}},
    ]


async def test_a_submitted_bundle_is_named_by_its_identifier() -> None:
    bundle = {"resourceType": "Bundle", "identifier": {"system": "urn:x", "value": "b1"}, "entry": []}
    p = await run(change("POST", {"resourceType": "Observation", "id": "o1"}, bundle=bundle))
    assert p["entity"] == [
        {
            "role": "source",
            "what": {"identifier": {"system": "urn:x", "value": "b1"}, "display": "submitted Bundle"},
        }
    ]


async def test_every_change_of_one_bundle_shares_its_submission_tag_and_another_bundle_does_not() -> None:
    stage = ProvenanceStage()
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": []}
    first, second = (
        change("POST", {"resourceType": "Observation", "id": "a"}, bundle=bundle),
        change("POST", {"resourceType": "Observation", "id": "b"}, bundle=bundle, res_id="b"),
    )
    other = change("POST", {"resourceType": "Observation", "id": "c"}, res_id="c")
    for c in (first, second, other):
        await stage(c, REST)
    tags = [c.additions[0]["meta"]["tag"][0] for c in (first, second, other)]
    assert tags[0] == tags[1] != tags[2]
    assert tags[0]["system"] == SUBMISSION_SYSTEM


async def test_dicom_instances_are_the_source_and_only_new_ones_count_for_a_study() -> None:
    def study(*uids: str) -> dict[str, Any]:
        return {
            "resourceType": "ImagingStudy",
            "id": "s1",
            "series": [{"uid": "1.2", "instance": [{"uid": u} for u in uids]}],
        }

    bundle = {"resourceType": "Bundle", "entry": [{"resource": study("1.2.3", "1.2.4")}]}
    patient = await run(
        change(
            "PUT", {"resourceType": "Patient", "id": "p1"}, bundle=bundle, res_type="Patient", res_id="p1"
        ),
        DICOM,
    )
    assert [e["what"]["identifier"]["value"] for e in patient["entity"]] == ["urn:oid:1.2.3", "urn:oid:1.2.4"]
    assert patient["entity"][0]["what"]["identifier"]["system"] == DICOM_UID_SYSTEM
    previous = stored(study("1.2.3"), version=1)
    p = await run(
        change("PUT", study("1.2.3", "1.2.4"), previous, bundle, res_type="ImagingStudy", res_id="s1"), DICOM
    )
    uids = [e["what"]["identifier"]["value"] for e in p["entity"] if e["role"] == "source"]
    assert uids == ["urn:oid:1.2.4"]
    assert p["agent"][0]["who"]["display"] == "MODALITY1"


def test_agents_for_users_without_fhir_user_and_for_cli_operators() -> None:
    assert agent_for(RequestContext(subject="u9"))["who"] == {
        "identifier": {"system": "urn:fhir-gateway:subject", "value": "u9"}
    }
    assert agent_for(RequestContext())["who"]["identifier"]["value"] == "anonymous"
    cli = agent_for(RequestContext.system("cli"))
    assert cli["type"]["coding"][0]["code"] == "performer"
    assert agent_for(RequestContext(source="hl7v2"))["who"]["display"] == "unknown"


def test_sources_and_references() -> None:
    assert source_of(HL7) == "hl7v2|LAB^HOSP"
    assert source_of(REST) == "rest|Practitioner/7"
    assert source_of(RequestContext(subject="u1")) == "rest|u1"
    assert unversioned("Observation/1/_history/2") == "Observation/1"
    assert unversioned("https://x.org/fhir/Observation/1/_history/2") == "Observation/1"


def test_the_factory_needs_no_settings() -> None:
    assert isinstance(provenance_stage(Settings()), ProvenanceStage)


# --- combine: one Provenance per activity of a submit -------------------------------------------


async def built(*changes: Change, ctx: RequestContext = HL7) -> list[dict[str, Any]]:
    stage = ProvenanceStage(clock=lambda: 0.0)
    for c in changes:
        await stage(c, ctx)
    return [a for c in changes for a in c.additions]


async def test_updates_of_one_message_fold_into_one_provenance_keeping_each_revision() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "MessageHeader", "id": "mh1"}}],
    }
    old_1 = stored({"resourceType": "Observation", "id": "o1"}, 2)
    old_2 = stored({"resourceType": "Observation", "id": "o2"}, 5)
    [folded] = combine(
        await built(
            change("PUT", {"resourceType": "Observation", "id": "o1"}, old_1, bundle),
            change("PUT", {"resourceType": "Observation", "id": "o2"}, old_2, bundle, res_id="o2"),
        )
    )
    assert folded["target"] == [
        {"reference": "Observation/o1/_history/3"},
        {"reference": "Observation/o2/_history/6"},
    ]
    sources = [e for e in folded["entity"] if e["role"] == "source"]
    revisions = [e["what"]["reference"] for e in folded["entity"] if e["role"] == "revision"]
    assert len(sources) == 1 and sources[0]["what"]["reference"] == "MessageHeader/mh1"
    assert revisions == ["Observation/o1/_history/2", "Observation/o2/_history/5"]


async def test_different_operations_policies_labels_or_patients_are_not_folded() -> None:
    bundle = {"resourceType": "Bundle"}
    previous = stored({"resourceType": "Observation", "id": "o2"})
    provenances = await built(
        change("POST", {"resourceType": "Observation", "id": "o1"}, None, bundle),
        change("PUT", {"resourceType": "Observation", "id": "o2"}, previous, bundle, res_id="o2"),
        change("POST", {"resourceType": "Observation", "id": "o3"}, None, bundle, res_id="o3"),
        change(
            "POST",
            {"resourceType": "Observation", "id": "o4", "meta": {"security": [RESTRICTED]}},
            None,
            bundle,
            res_id="o4",
        ),
        change(
            "POST", {"resourceType": "Patient", "id": "p1"}, None, bundle, res_type="Patient", res_id="p1"
        ),
        change(
            "POST", {"resourceType": "Patient", "id": "p2"}, None, bundle, res_type="Patient", res_id="p2"
        ),
        change("POST", {"resourceType": "Observation", "id": "o5"}, None, bundle, res_id="o5"),
    )
    provenances[2]["policy"] = ["http://example.org/authority#primary"]  # as the authority stage records
    folded = combine(provenances)
    assert [p["id"] for p in folded] == [p["id"] for p in provenances[:6]]
    assert [t["reference"] for t in folded[0]["target"]] == [
        "Observation/o1/_history/1",
        "Observation/o5/_history/1",
    ]
    assert all(len(p["target"]) == 1 for p in folded[1:])


def test_combine_keeps_a_provenance_without_targets_or_entities() -> None:
    bare = {"resourceType": "Provenance", "id": "a", "recorded": "2024-01-01T00:00:00Z"}
    twin = {**bare, "id": "b", "entity": [{"role": "source", "what": {"reference": "Bundle/x"}}]}
    [folded] = combine([bare, twin])
    assert folded["id"] == "a" and folded["target"] == []
    assert folded["entity"] == twin["entity"]
