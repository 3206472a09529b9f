"""DFT^P03 / BAR^P01/P12 finance (beyond the corpus): FT1 → ChargeItem, DG1 → Condition + Encounter.
diagnosis, IN1 → Coverage (IG DG1[Condition], DG1[Encounter], IN1[Coverage]; DiagnosisType map)."""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

PATIENT = [
    "PID|1||MRN7788^^^GENHOSP^MR||Garcia^Elena^M||19780412|F",
    "PV1|1|I|4W^401^A^GENHOSP||||||||||||||||V5566^^^GENHOSP^VN",
]


def message(kind: str, *segments: str) -> MappedMessage:
    msh = f"MSH|^~\\&|ADM|GENHOSP|BILL|GENHOSP|20240901100000-0400||{kind}|FIN5001|P|2.5.1"
    return mapped("\r".join([msh, "EVN||20240901100000-0400", *PATIENT, *segments]))


def url(result: MappedMessage, resource: dict[str, Any]) -> str:
    return next(e["fullUrl"] for e in result.bundle["entry"] if e["resource"] is resource)


def test_charge_with_cp_amount_performer_and_enterer() -> None:
    result = message(
        "DFT^P03^DFT_P03",
        "FT1|1|T-100|B-7|20240831103000-0400|20240901|CG|92928^PCI with stent^C4|||1|"
        "4200.00&USD^TP||||||||I21.4^NSTEMI^I10|5566^Cardio^Carl||||7788^Clerk^Cleo",
    )
    [charge] = of(result, "ChargeItem")
    assert charge["status"] == "billable"
    assert charge["code"]["coding"] == [
        {"system": "http://www.ama-assn.org/go/cpt", "code": "92928", "display": "PCI with stent"}
    ]
    assert charge["identifier"] == [{"value": "T-100"}]
    assert charge["occurrenceDateTime"] == "2024-08-31T10:30:00-04:00"
    assert charge["enteredDate"] == "2024-09-01"
    assert charge["quantity"] == {"value": 1}
    # CP-1 is an MO (quantity & currency); CP-2 "TP" is the price type, no currency
    assert charge["priceOverride"] == {"value": 4200.0, "currency": "USD"}
    assert charge["reason"][0]["coding"][0]["code"] == "I21.4"
    assert charge["performer"] == [
        {"actor": {"identifier": {"value": "5566"}, "type": "Practitioner", "display": "Carl Cardio"}}
    ]
    assert charge["enterer"] == {
        "identifier": {"value": "7788"},
        "type": "Practitioner",
        "display": "Cleo Clerk",
    }


def test_price_type_is_never_a_currency() -> None:
    result = message("DFT^P03", "FT1|1|T-101||20240831|20240901|CG|99213^Visit^C4|||2|150.00^UP")
    assert of(result, "ChargeItem")[0]["priceOverride"] == {"value": 150.0}


def test_amount_that_is_not_a_number_is_a_warning() -> None:
    result = message("DFT^P03", "FT1|1|T-102||20240831|20240901|CG|99213^Visit^C4|||2|lots")
    assert "priceOverride" not in of(result, "ChargeItem")[0]
    assert [(i.severity, i.location) for i in result.issues] == [("W", "FT1-11")]


def test_diagnoses_on_the_encounter_with_use_and_rank() -> None:
    result = message(
        "BAR^P01^BAR_P01",
        "DG1|1|I10|I21.4^NSTEMI^I10|Non-ST elevation myocardial infarction|20240830|A|||||||||1|"
        "5566^Cardio^Carl",
        "DG1|2|I10|E11.9^Type 2 diabetes^I10||20200101|F|||||||||2",
    )
    [encounter] = of(result, "Encounter")
    mi, diabetes = of(result, "Condition")
    assert mi["code"] == {
        "coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "I21.4", "display": "NSTEMI"}],
        "text": "Non-ST elevation myocardial infarction",
    }
    assert mi["onsetDateTime"] == "2024-08-30" and mi["asserter"]["display"] == "Carl Cardio"
    assert mi["category"][0]["coding"][0]["code"] == "encounter-diagnosis"
    assert encounter["diagnosis"] == [
        {
            "condition": {"reference": url(result, mi)},
            "use": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                        "code": "AD",
                        "display": "Admission diagnosis",
                    }
                ]
            },
            "rank": 1,
        },
        {
            "condition": {"reference": url(result, diabetes)},
            "use": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": "F"}]},
            "rank": 2,
        },
    ]


def test_deleted_diagnosis_is_entered_in_error_and_off_the_encounter() -> None:
    result = message("BAR^P12^BAR_P12", "DG1|1|I10|I21.4^NSTEMI^I10||20240830|A|||||||||1||||||D")
    [condition] = of(result, "Condition")
    assert condition["verificationStatus"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "entered-in-error"}
    ]
    assert "diagnosis" not in of(result, "Encounter")[0]


def test_bad_diagnosis_priority_is_a_warning() -> None:
    result = message("BAR^P01", "DG1|1|I10|I21.4^NSTEMI^I10||20240830|A|||||||||first")
    assert "rank" not in of(result, "Encounter")[0]["diagnosis"][0]
    assert [(i.severity, i.location) for i in result.issues] == [("W", "DG1-15")]


def test_coverage_with_an_insured_who_is_not_the_patient() -> None:
    result = message(
        "BAR^P01",
        "IN1|1|PPO-1^Gold PPO|INS-77|Acme Health||||GRP-500|Acme Employees|||20240101|20241231|||"
        "Garcia^Roberto^J|SPO|19750101|12 Main St^^Springfield^IL^62701|||1||||||||||||||POL-9988|||||||M",
    )
    [coverage] = of(result, "Coverage")
    [insured] = of(result, "RelatedPerson")
    assert coverage["payor"] == [{"display": "Acme Health", "identifier": {"value": "INS-77"}}]
    assert coverage["period"] == {"start": "2024-01-01", "end": "2024-12-31"}
    assert coverage["subscriberId"] == "POL-9988" and coverage["order"] == 1
    assert [(c["type"]["coding"][0]["code"], c["value"], c["name"]) for c in coverage["class"]] == [
        ("plan", "PPO-1", "Gold PPO"),
        ("group", "GRP-500", "Acme Employees"),
    ]
    assert coverage["relationship"]["coding"] == [
        {"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "spouse"}
    ]
    assert coverage["subscriber"] == {"reference": url(result, insured)}
    assert insured["name"] == [{"family": "Garcia", "given": ["Roberto", "J"]}]
    assert insured["relationship"][0]["coding"][0]["code"] == "SPS"
    assert (insured["birthDate"], insured["gender"]) == ("1975-01-01", "male")
    assert insured["address"][0]["city"] == "Springfield"


def test_self_insured_patient_is_the_subscriber() -> None:
    result = message("BAR^P01", "IN1|1|PPO-1|INS-77|Acme Health||||||||20240101||||Garcia^Elena|SEL")
    [coverage] = of(result, "Coverage")
    [patient] = of(result, "Patient")
    assert coverage["subscriber"] == {"reference": url(result, patient)} and not of(result, "RelatedPerson")


def test_relationship_without_a_subscriber_code_is_a_warning() -> None:
    result = message("BAR^P01", "IN1|1|PPO-1|INS-77|Acme Health||||||||||||Acme^Corp|EMR")
    assert "relationship" not in of(result, "Coverage")[0]
    assert [(i.severity, i.location) for i in result.issues] == [("W", "IN1-17")]
