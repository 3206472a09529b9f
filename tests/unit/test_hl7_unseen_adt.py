"""ADT variants the corpus lacks: PV1-2 classes without a v3 equivalent, pre-admit locations, the
PV1/PV2 fields the IG maps (PV1[Encounter], PV2[Encounter]), discharge and cancel events."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

V2_0004 = "http://terminology.hl7.org/CodeSystem/v2-0004"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def seg(name: str, **fields: str) -> str:
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join([name, *(numbered.get(i, "") for i in range(1, max(numbered) + 1))])


def adt(trigger: str, *segments: str) -> MappedMessage:
    text = "\r".join(
        [
            f"MSH|^~\\&|ADT|HOSP|EHR|HOSP|20240701090000+0200||ADT^{trigger}|ADT-{trigger}|P|2.5.1",
            f"EVN|{trigger}|20240701090000+0200",
            "PID|1||MRN9^^^HOSP^MR||White^Sam||19780808|M",
            *segments,
        ]
    )
    return mapped(text)


def encounter(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "Encounter")
    return found


@pytest.mark.parametrize(
    ("patient_class", "system", "code"),
    [
        ("E", ACT_CODE, "EMER"),
        ("O", ACT_CODE, "AMB"),
        ("P", ACT_CODE, "PRENC"),
        ("R", V2_0004, "R"),
        ("B", V2_0004, "B"),
        ("U", V2_0004, "U"),
    ],
)
def test_patient_class_follows_the_ig_concept_map(patient_class: str, system: str, code: str) -> None:
    enc = encounter(adt("A04", seg("PV1", f1="1", f2=patient_class, f19="V1^^^HOSP^VN")))
    assert (enc["class"]["system"], enc["class"]["code"]) == (system, code)


def test_a05_preadmit_with_pv1_and_pv2_details() -> None:
    pv1 = seg(
        "PV1",
        f1="1",
        f2="P",
        f3="SURG^210^1^HOSP",
        f5="PRE-55^^^HOSP",
        f15="A1^Ambulates independently^HL70009",
        f16="VIP^Very important^HL70099",
        f19="V555^^^HOSP^VN",
        f38="REG^Regular^HL70114",
        f42="4E^401^2^HOSP",
        f50="ALT-9^^^HOSP",
        f52="O400^Other^Olga",
    )
    pv2 = seg(
        "PV2",
        f3="KNEE^Knee replacement^L",
        f8="20240715070000+0200",
        f9="20240718120000+0200",
        f13="R500^Referral^Rita",
        f25="3",
    )
    enc = encounter(adt("A05", pv1, pv2))
    assert enc["status"] == "planned"
    assert [loc["status"] for loc in enc["location"]] == ["planned", "reserved"]
    assert [i["value"] for i in enc["identifier"]] == ["V555", "ALT-9"]
    hosp = enc["hospitalization"]
    assert hosp["specialArrangement"][0]["coding"][0]["code"] == "A1"
    assert hosp["specialCourtesy"][0]["coding"][0]["code"] == "VIP"
    assert hosp["dietPreference"][0]["coding"][0]["code"] == "REG"
    assert {
        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedStartDate",
        "valueDateTime": "2024-07-15T07:00:00+02:00",
    } in enc["extension"]
    assert {
        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Encounter.plannedEndDate",
        "valueDateTime": "2024-07-18T12:00:00+02:00",
    } in enc["extension"]
    roles = {p["type"][0]["coding"][0]["code"]: p["individual"]["display"] for p in enc["participant"]}
    assert roles == {"PART": "Olga Other", "REF": "Rita Referral"}
    assert enc["priority"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ActPriority",
        "code": "EL",
        "display": "elective",
    }
    assert enc["reasonCode"][0]["coding"][0]["code"] == "KNEE"


def test_a03_discharge_sets_end_destination_and_finished() -> None:
    pv1 = seg(
        "PV1",
        f1="1",
        f2="I",
        f3="4W^401^A^HOSP",
        f19="V9^^^HOSP^VN",
        f36="01^Discharged home^HL70112",
        f37="HOME^Home",
        f44="20240625100000+0200",
        f45="20240701083000+0200",
    )
    enc = encounter(adt("A03", pv1, seg("PV2", f11="6")))
    assert enc["status"] == "finished"
    assert enc["period"] == {"start": "2024-06-25T10:00:00+02:00", "end": "2024-07-01T08:30:00+02:00"}
    assert enc["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "01"
    assert enc["hospitalization"]["destination"] == {"display": "Home"}
    assert enc["length"] == {"value": 6, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}


@pytest.mark.parametrize(
    ("trigger", "status"),
    [("A08", "in-progress"), ("A11", "cancelled"), ("A12", "in-progress"), ("A13", "in-progress")],
)
def test_update_and_cancel_events(trigger: str, status: str) -> None:
    enc = encounter(adt(trigger, seg("PV1", f1="1", f2="I", f19="V9^^^HOSP^VN", f44="20240625100000+0200")))
    assert enc["status"] == status


def test_a_cancelled_discharge_leaves_the_visit_open() -> None:
    """A13 carries the discharge it cancels in PV1-45: the Encounter is in progress, with no end."""
    pv1 = seg("PV1", f1="1", f2="I", f19="V9^^^HOSP^VN", f44="20240625100000+0200", f45="20240701083000+0200")
    enc = encounter(adt("A13", pv1))
    assert (enc["status"], enc["period"]) == ("in-progress", {"start": "2024-06-25T10:00:00+02:00"})
    assert encounter(adt("A03", pv1))["period"]["end"] == "2024-07-01T08:30:00+02:00"


def test_bad_length_of_stay_is_a_warning_naming_the_field() -> None:
    result = adt("A08", seg("PV1", f1="1", f2="O", f19="V9^^^HOSP^VN"), seg("PV2", f11="six"))
    assert "length" not in encounter(result)
    assert [(i.severity, i.location) for i in result.issues] == [("W", "PV2-11")]
