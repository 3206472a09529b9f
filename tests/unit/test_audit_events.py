"""AuditEvent builders: BALP shapes per kind of event, and no PHI (names, token contents) in any."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any, cast

import orjson
import pytest

from fhir_gateway.audit.chain import canonical, facts, seal
from fhir_gateway.audit.config import AuditSettings, audit_settings, audit_site
from fhir_gateway.audit.events import (
    ACT_REASON,
    AUDIT_EVENT_TYPE,
    BALP_AUTHZ_SUBTYPE,
    BALP_ENTITY_TYPE,
    DCM,
    RESTFUL_INTERACTION,
    AuditSource,
    Interaction,
    action_for,
    break_glass_event,
    consent_event,
    denied_event,
    login_failure_event,
    outcome_for_status,
    per_patient,
    rest_event,
)
from fhir_gateway.context import RequestContext
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

SOURCE = AuditSource(site="https://gw.example.org/fhir", observer="gw-1")


def clinician(**extra: Any) -> RequestContext:
    return RequestContext(
        subject="u-123",
        roles=("clinician", "nurse"),
        purpose_of_use=("TREAT",),
        fhir_user="Practitioner/p1",
        jti="jti-abc",
        request_id="req-1",
        claims={"iss": "https://idp.example.org", "name": "Alice Smith", "given_name": "Alice", **extra},
    )


def agent_of(event: dict[str, Any], code: str) -> dict[str, Any]:
    return next(a for a in event["agent"] if a["type"]["coding"][0]["code"] == code)


def entities(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e.get("role", {}).get("code") == role]


def test_read_event_follows_balp() -> None:
    event = rest_event(
        clinician(),
        SOURCE,
        Interaction.READ,
        resources=["Observation/o1/_history/2"],
        patients=["pat-9"],
        client_address="10.1.2.3",
        recorded=1_700_000_000.0,
    )
    assert event["resourceType"] == "AuditEvent"
    assert event["type"] == {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
    assert event["subtype"] == [{"system": RESTFUL_INTERACTION, "code": "read"}]
    assert (event["action"], event["outcome"], event["outcomeDesc"]) == ("R", "0", "OK")
    assert event["recorded"] == "2023-11-14T22:13:20.000+00:00"
    user = agent_of(event, "IRCP")
    assert user["requestor"] is True
    assert user["who"] == {
        "reference": "Practitioner/p1",
        "identifier": {"system": "https://idp.example.org", "value": "u-123"},
    }
    assert [r["coding"][0]["code"] for r in user["role"]] == ["clinician", "nurse"]
    assert user["purposeOfUse"] == [{"coding": [{"system": ACT_REASON, "code": "TREAT"}]}]
    assert user["policy"] == ["urn:ietf:params:oauth:jti:jti-abc"]
    assert user["network"] == {"address": "10.1.2.3", "type": "2"}
    server = agent_of(event, "110152")
    assert server["requestor"] is False and server["who"]["identifier"]["value"] == "gw-1"
    assert event["source"]["site"] == "https://gw.example.org/fhir"
    assert event["source"]["observer"] == {"identifier": {"value": "gw-1"}}
    [domain] = entities(event, "4")
    assert domain["what"] == {"reference": "Observation/o1/_history/2"}
    [patient] = entities(event, "1")
    assert patient["what"] == {"reference": "Patient/pat-9"} and patient["type"]["code"] == "1"
    [request] = [e for e in event["entity"] if e["type"]["system"] == BALP_ENTITY_TYPE]
    assert request["what"]["identifier"]["value"] == "req-1"


def test_search_lists_every_id_returned_the_query_and_each_patient() -> None:
    page = ["Observation/a", "Observation/b", "Patient/p1", "Patient/p1/_history/3", "Observation/a"]
    event = rest_event(
        clinician(),
        SOURCE,
        Interaction.SEARCH_TYPE,
        resources=page,
        patients=["p2", "Patient/p1"],
        query="code=1234-5&_count=10",
    )
    assert event["action"] == "E"
    assert [e["what"]["reference"] for e in entities(event, "4")] == ["Observation/a", "Observation/b"]
    assert [e["what"]["reference"] for e in entities(event, "1")] == ["Patient/p1", "Patient/p2"]
    [query] = entities(event, "24")
    assert base64.b64decode(query["query"]) == b"code=1234-5&_count=10"
    # An empty page still records the query (BALP: every query is audited with what was asked).
    empty = rest_event(clinician(), SOURCE, Interaction.SEARCH_TYPE, query=b"")
    assert entities(empty, "24")[0]["query"] == ""
    assert not entities(rest_event(clinician(), SOURCE, Interaction.READ, query=""), "24")


def test_per_patient_gives_one_event_per_patient() -> None:
    event = rest_event(
        clinician(), SOURCE, Interaction.SEARCH_TYPE, resources=["Observation/a"], patients=["1", "2"]
    )
    split = per_patient(event)
    assert [entities(e, "1")[0]["what"]["reference"] for e in split] == ["Patient/1", "Patient/2"]
    assert all(len(entities(e, "1")) == 1 and entities(e, "4") for e in split)
    single = rest_event(clinician(), SOURCE, Interaction.READ, patients=["1"])
    assert per_patient(single) == [single]


@pytest.mark.parametrize(
    ("interaction", "action"),
    [
        (Interaction.CREATE, "C"),
        (Interaction.UPDATE, "U"),
        (Interaction.PATCH, "U"),
        (Interaction.DELETE, "D"),
        (Interaction.VREAD, "R"),
        (Interaction.HISTORY_INSTANCE, "E"),
        (Interaction.OPERATION, "E"),
        (Interaction.TRANSACTION, "E"),
    ],
)
def test_actions_per_interaction(interaction: Interaction, action: str) -> None:
    assert action_for(interaction).value == action
    assert rest_event(clinician(), SOURCE, interaction)["action"] == action


def test_outcomes_follow_the_status() -> None:
    assert [outcome_for_status(s).value for s in (200, 201, 304, 404, 422, 500, 503)] == [
        "0",
        "0",
        "0",
        "4",
        "4",
        "8",
        "8",
    ]
    failed = rest_event(clinician(), SOURCE, Interaction.CREATE, status=422)
    assert (failed["outcome"], failed["outcomeDesc"]) == ("4", "Unprocessable Entity")
    odd = rest_event(clinician(), SOURCE, Interaction.READ, status=418, outcome_desc=None)
    assert odd["outcomeDesc"] == "HTTP 418"


def test_operation_system_user_client_agent_and_machine_names() -> None:
    ctx = RequestContext.system("hl7v2", source_system="LAB^HOSP")
    ctx.claims = {"azp": "ehr-app"}
    event = rest_event(
        ctx, SOURCE, Interaction.OPERATION, operation="$everything", client_address="ehr.example.org"
    )
    assert event["subtype"][1]["code"] == "$everything"
    user = agent_of(event, "110150")  # a system context is an application, not a person
    assert user["who"] == {"identifier": {"value": "system:hl7v2"}}
    assert user["network"] == {"address": "ehr.example.org", "type": "1"}
    client = agent_of(event, "110153")
    assert client["who"]["identifier"]["value"] == "ehr-app" and client["network"]["type"] == "1"
    no_address = rest_event(ctx, SOURCE, Interaction.READ)
    assert "network" not in agent_of(no_address, "110153")
    anonymous = rest_event(RequestContext(request_id=""), SOURCE, Interaction.CAPABILITIES)
    assert "who" not in anonymous["agent"][0] and "entity" not in anonymous
    assert "policy" not in anonymous["agent"][0] and "network" not in anonymous["agent"][0]


def test_denied_event_names_the_rule_not_the_hidden_resource() -> None:
    event = denied_event(
        clinician(),
        SOURCE,
        Interaction.READ,
        reason="label",
        requested="Observation/secret",
        query="_id=secret",
        client_address="::1",
    )
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "Access denied (label); HTTP 403"
    assert [e["what"]["reference"] for e in entities(event, "4")] == ["Observation/secret"]
    assert not entities(event, "1")  # not the patient the hidden resource belongs to
    assert agent_of(event, "IRCP")["network"]["type"] == "2"
    bare = denied_event(clinician(), SOURCE, Interaction.SEARCH_TYPE, reason="scope")
    assert [e["type"]["system"] for e in bare["entity"]] == [BALP_ENTITY_TYPE]


def test_login_failure_keeps_nothing_from_the_token() -> None:
    event = login_failure_event(SOURCE, reason="expired", request_id="r-9", client_address="192.0.2.1")
    assert event["type"] == {"system": DCM, "code": "110114", "display": "User Authentication"}
    assert event["subtype"][0]["code"] == "110122"
    assert (event["action"], event["outcome"]) == ("E", "4")
    user = event["agent"][0]
    assert user["requestor"] is True and "who" not in user and user["network"]["address"] == "192.0.2.1"
    assert event["entity"][0]["what"]["identifier"]["value"] == "r-9"
    assert "entity" not in login_failure_event(SOURCE, reason="missing")
    assert "network" not in login_failure_event(SOURCE, reason="missing")["agent"][0]


@pytest.mark.parametrize(("permit", "outcome"), [(True, "0"), (False, "4")])
def test_consent_decision(permit: bool, outcome: str) -> None:
    event = consent_event(clinician(), SOURCE, permit=permit, patient="p7", consents=["Consent/c1"])
    assert event["type"]["code"] == "110113" and event["type"]["system"] == DCM
    assert event["subtype"] == [
        {
            "system": BALP_AUTHZ_SUBTYPE,
            "code": "AuthZ-Consent",
            "display": "Authorization Decision using Roles and Consent",
        }
    ]
    assert event["outcome"] == outcome
    assert entities(event, "1")[0]["what"]["reference"] == "Patient/p7"
    assert entities(event, "13")[0]["what"]["reference"] == "Consent/c1"


@pytest.mark.parametrize(("started", "code"), [(True, "110127"), (False, "110138")])
def test_break_glass_start_and_stop(started: bool, code: str) -> None:
    ctx = clinician()
    ctx.purpose_of_use = ("ETREAT", "BTG")
    event = break_glass_event(ctx, SOURCE, started=started, grant_id="g-1", patient="Patient/p7")
    assert event["type"]["code"] == "110113" and event["subtype"][0] == {
        "system": DCM,
        "code": code,
        "display": "Emergency Override Started" if started else "Emergency Override Stopped",
    }
    grant = entities(event, "13")[0]["what"]["identifier"]
    assert grant == {"system": "urn:fhir-gateway:break-glass", "value": "g-1"}
    user = agent_of(event, "IRCP")
    assert user["policy"] == ["urn:ietf:params:oauth:jti:jti-abc", "urn:fhir-gateway:break-glass:g-1"]
    assert [p["coding"][0]["code"] for p in user["purposeOfUse"]] == ["ETREAT", "BTG"]
    refused = break_glass_event(ctx, SOURCE, started=True, grant_id="g-2", patient="p7", status=503)
    assert refused["outcome"] == "8"


def test_no_event_carries_names_or_token_contents() -> None:
    ctx = clinician(email="alice@example.org", birthdate="1970-01-01")
    built = [
        rest_event(ctx, SOURCE, Interaction.SEARCH_TYPE, resources=["Patient/p1"], query="family=x"),
        denied_event(ctx, SOURCE, Interaction.READ, reason="consent"),
        login_failure_event(SOURCE, reason="bad signature"),
        consent_event(ctx, SOURCE, permit=False, patient="p1"),
        break_glass_event(ctx, SOURCE, started=True, grant_id="g", patient="p1"),
    ]
    for event in built:
        text = orjson.dumps(event).decode()
        for secret in ("Alice", "Smith", "alice@example.org", "1970-01-01"):
            assert secret not in text
        assert '"name"' not in text


def test_seal_assigns_id_and_meta_once_and_is_idempotent() -> None:
    event = rest_event(clinician(), SOURCE, Interaction.READ, resources=["Observation/1"], recorded=1.5)
    sealed = seal(event)
    body = orjson.loads(sealed.body)
    assert body["id"] == sealed.event_id and len(sealed.event_id) == 32
    assert body["meta"] == {"versionId": "1", "lastUpdated": "1970-01-01T00:00:01.500+00:00"}
    assert sealed.recorded == 1.5 and sealed.outcome == "0"
    assert seal(body).body == sealed.body  # reloaded from disk: the same bytes, the same hash
    assert sealed.body == canonical(body) and list(body) == sorted(body)
    assert "id" not in event  # the caller's dict is not changed
    undated = seal({"resourceType": "AuditEvent"})
    assert undated.recorded > 1.6e9
    assert seal({"resourceType": "AuditEvent", "recorded": "2024-05-06"}).recorded == 1714953600.0
    with pytest.raises(ValueError):
        seal({"resourceType": "Patient"})
    with pytest.raises(ValueError):
        seal({"resourceType": "AuditEvent", "recorded": "yesterday"})


def test_facts_for_search() -> None:
    event = rest_event(
        clinician(),
        SOURCE,
        Interaction.SEARCH_TYPE,
        resources=["Observation/a", "Patient/p1/_history/2"],
        query="x=1",
    )
    event["agent"].append({"who": {"reference": "Patient/p5"}, "requestor": False})
    found = facts(event)
    assert found.type == f"{AUDIT_EVENT_TYPE}|rest"
    assert found.subtype == f"{RESTFUL_INTERACTION}|search-type"
    assert found.action == "E"
    assert found.index == [
        ("agent", "Practitioner/p1"),
        ("agent", "u-123"),
        ("patient", "Patient/p5"),
        ("entity", "Observation/a"),
        ("patient", "Patient/p1"),
        ("entity", "req-1"),
    ]
    bare = facts({"resourceType": "AuditEvent", "subtype": [{"system": "s"}], "action": 1})
    assert (bare.type, bare.subtype, bare.action, bare.index) == (None, None, None, [])


def test_who_without_subject_and_a_configured_site() -> None:
    event = rest_event(RequestContext(fhir_user="Device/d1"), SOURCE, Interaction.READ)
    assert event["agent"][0]["who"] == {"reference": "Device/d1"}
    configured = SimpleNamespace(audit=AuditSettings(site="ward-7"), base_url="https://gw/fhir")
    assert audit_site(cast(Settings, configured)) == "ward-7"


def test_settings_section_defaults_and_site() -> None:
    settings = make_settings("sqlite+aiosqlite:///:memory:", port=9000)
    assert audit_settings(settings).chain == "main"
    assert audit_site(settings) == "127.0.0.1:9000"
    with_base = make_settings("sqlite+aiosqlite:///:memory:", base_url="https://gw/fhir")
    assert AuditSource.from_settings(with_base) == AuditSource(
        site="https://gw/fhir", observer="fhir-gateway"
    )
