"""Consent parsing and evaluation as pure functions, and their agreement with the SQL form.

The integration suite (tests/integration/test_consent.py) checks the scenarios through every read
route; these tests pin the rules one by one, including the malformed inputs a Consent can carry.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.privacy import consent
from fhir_gateway.privacy.consent import Facts, Provision, parse_consent
from fhir_gateway.privacy.redact import redact
from fhir_gateway.store.search.rows import IndexRows, ReferenceRow, TokenRow

PRIVACY = {"coding": [{"code": "patient-privacy"}]}
CTX = RequestContext(subject="u", roles=("clinician",), purpose_of_use=("TREAT",), fhir_user="Practitioner/1")


def make(provision: Any, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": PRIVACY,
        "patient": {"reference": "Patient/p1"},
        "provision": provision,
        **extra,
    }


def facts(
    res_type: str = "Observation", res_id: str = "o1", *, codes: Any = (), labels: Any = (), refs: Any = ()
) -> Facts:
    rows = IndexRows()
    rows.tokens.extend(TokenRow("code", s, c) for s, c in codes)
    rows.tokens.extend(TokenRow("_security", s, c) for s, c in labels)
    rows.references.extend(ReferenceRow(p, t, i) for p, t, i in refs)
    return Facts(res_type, res_id, rows)


@pytest.mark.parametrize(
    ("resource", "applies"),
    [
        (make({"type": "deny"}), True),
        (make({"type": "deny"}, status="inactive"), False),
        (make({"type": "deny"}, status="entered-in-error"), False),
        (make({"type": "deny"}, scope={"coding": [{"code": "research"}]}), False),
        (make({"type": "deny"}, scope=None), True),  # no scope stated: read as privacy
        (make({"type": "deny"}, patient={"reference": "Group/1"}), False),
        (make({"type": "deny"}, patient=None), False),
        (make("not an object"), False),
    ],
)
def test_which_consents_apply(resource: dict[str, Any], applies: bool) -> None:
    assert (parse_consent(resource) is not None) == applies


def test_parsing_reads_every_element_and_ignores_junk() -> None:
    parsed = parse_consent(
        make(
            {
                "period": {"start": "2020-01-01", "end": "2030-01-01"},
                "provision": [
                    {
                        "actor": [
                            {
                                "role": {"coding": [{"code": "IRCP"}]},
                                "reference": {"reference": "Practitioner/9"},
                            },
                            "junk",
                        ],
                        "action": [{"coding": [{"code": "access"}]}],
                        "purpose": [{"code": "HPAYMT"}, {"no": "code"}],
                        "securityLabel": [{"system": "s", "code": "PSY"}],
                        "class": [{"code": "Observation"}],
                        "code": [{"coding": [{"system": "http://loinc.org", "code": "1-1"}]}, "junk"],
                        "data": [
                            {"meaning": "related", "reference": {"reference": "Encounter/e1"}},
                            {"reference": {"reference": "nonsense"}},
                            {"reference": "not a Reference"},
                        ],
                        "extension": [{"url": consent.MASK_EXTENSION, "valueString": "Observation.note"}],
                    },
                    "junk",
                ],
            },
            dateTime="2021-05-01",
        )
    )
    assert parsed is not None and parsed.root.type == "permit"  # the base policy defaults to permit
    assert parsed.period is not None and parsed.not_before is not None
    [child] = parsed.root.children
    assert child.type == "deny"  # a nested provision flips its parent
    assert child.actor_refs == {"Practitioner/9"} and child.actor_roles == {"ircp"}
    assert child.actions == {"access"} and child.purposes == {"HPAYMT"}
    assert child.labels == {("s", "PSY")} and child.classes == {"Observation"}
    assert child.codes == {("http://loinc.org", "1-1")}
    assert child.data == (("related", "Encounter", "e1"),)
    assert child.masks == ("Observation.note",)
    assert parsed.in_force(parsed.not_before + 1) and not parsed.in_force(parsed.not_before - 1)


def test_request_side_resolution() -> None:
    tree = Provision(
        "permit",
        children=(
            Provision("deny", actor_refs=frozenset({"Practitioner/1"})),
            Provision("deny", actor_roles=frozenset({"nurse"})),
            Provision("deny", purposes=frozenset({"HPAYMT"})),
            Provision("deny", actions=frozenset({"collect"})),
            Provision("deny", period=(0.0, 1.0)),
            Provision("deny", actions=frozenset({"access"}), purposes=frozenset({"TREAT"})),
        ),
    )
    resolved = consent.for_request(tree, CTX, now=100.0)
    assert resolved is not None
    # kept: the actor by reference, and the access-for-treatment one; the rest do not hold
    assert [bool(c.actor_refs) or bool(c.actions) for c in resolved.children] == [True, True]
    assert consent.for_request(Provision("deny", period=(0.0, 1.0)), CTX, now=5.0) is None


def test_resource_side_deepest_match_wins_and_deny_beats_permit() -> None:
    pulse, hiv = ("http://loinc.org", "pulse"), ("http://loinc.org", "hiv")
    tree = Provision(
        "permit",
        children=(
            Provision(
                "deny",
                classes=frozenset({"Observation"}),
                children=(Provision("permit", codes=frozenset({pulse})),),
            ),
            Provision("permit", codes=frozenset({(None, "hiv")})),
        ),
    )
    assert consent.decide(tree, facts(codes=[pulse])) == ("permit", ())
    assert consent.decide(tree, facts(codes=[hiv])) == ("deny", ())  # deny sibling beats permit sibling
    assert consent.decide(tree, facts("Condition", codes=[hiv])) == ("permit", ())
    assert consent.decide(Provision("deny"), facts()) == ("deny", ())
    masked = Provision("deny", masks=("Patient.address",))
    assert consent.decide(masked, facts("Patient")) == ("permit", ("Patient.address",))
    parent = Provision(
        "permit", children=(Provision("deny", classes=frozenset({"Patient"}), masks=("Patient.x",)),)
    )
    assert consent.decide(parent, facts("Patient")) == ("permit", ("Patient.x",))


def test_data_labels_and_authors() -> None:
    enc = ("related", "Encounter", "e1")
    assert consent.matches_root(
        Provision("deny", data=(enc,)), facts(refs=[("encounter", "Encounter", "e1")])
    )
    assert not consent.matches_root(Provision("deny", data=(enc,)), facts(refs=[("x", "Encounter", "e2")]))
    instance = ("instance", "Observation", "o1")
    assert consent.matches_root(Provision("deny", data=(instance,)), facts())
    assert not consent.matches_root(Provision("deny", data=(instance,)), facts(res_id="o2"))
    author = ("authoredby", "Practitioner", "p9")
    assert consent.matches_root(
        Provision("deny", data=(author,)), facts(refs=[("performer", "Practitioner", "p9")])
    )
    assert not consent.matches_root(
        Provision("deny", data=(author,)), facts(refs=[("subject", "Practitioner", "p9")])
    )
    psy = Provision("deny", labels=frozenset({("s", "PSY")}))
    assert consent.matches_root(psy, facts(labels=[("s", "PSY")]))
    assert not consent.matches_root(psy, facts(labels=[("s", "HIV")]))
    assert not consent.matches_root(
        Provision("deny", codes=frozenset({("a", "b")})), facts(codes=[("a", "c")])
    )
    assert not consent.matches_root(Provision("deny", classes=frozenset({"Patient"})), facts())


def test_redaction_removes_paths_and_labels_once() -> None:
    patient = {
        "resourceType": "Patient",
        "address": [{"city": "X"}],
        "name": [{"given": ["A"], "family": "F"}, {"given": ["B"]}],
        "_birthDate": {"extension": []},
        "birthDate": "2000",
        "meta": {"security": [{"code": "REDACTED"}]},
    }
    out = redact(
        patient, ["Patient.address", "Patient.name.given", "Patient.birthDate", "Observation.value[x]"]
    )
    assert "address" not in out and "birthDate" not in out and "_birthDate" not in out
    assert out["name"] == [{"family": "F"}, {}]
    assert [c["code"] for c in out["meta"]["security"]] == ["REDACTED"]  # not twice
    assert patient["address"] == [{"city": "X"}]  # the input is never changed
    obs = redact(
        {"resourceType": "Observation", "valueQuantity": {"value": 1}, "valueless": 1},
        ["Observation.value[x]"],
    )
    assert "valueQuantity" not in obs and obs["valueless"] == 1
    untouched = redact(
        {"resourceType": "Observation", "status": "final"}, ["Observation.note", "Observation"]
    )
    assert "meta" not in untouched  # nothing removed, so no REDACTED label
    assert (
        redact({"resourceType": "Observation", "note": "text"}, ["Observation.note.text"])["note"] == "text"
    )
