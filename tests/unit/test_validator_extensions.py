"""Extensions against their definitions: core R4 ones, supplied ones, and the unknown."""

from __future__ import annotations

from typing import Any

from fhir_gateway.validation.extensions import unresolved_urls
from fhir_gateway.validation.validator import validate

BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"  # valueDateTime
IDENTITY = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-genderIdentity"  # not core R4
NAME_ASSEMBLY = "http://hl7.org/fhir/StructureDefinition/humanname-assembly-order"  # valueCode
CITIZENSHIP = "http://hl7.org/fhir/StructureDefinition/patient-citizenship"  # complex: code, period


def _findings(resource: dict[str, Any], **options: Any) -> list[tuple[str, str, list[str]]]:
    return [
        (i.severity, i.diagnostics, i.expression)
        for i in validate(resource, **options)
        if i.severity in ("error", "warning") and "dom-6" not in i.diagnostics
    ]


def _patient(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def test_core_extensions_with_their_value_types_are_valid() -> None:
    patient = _patient(
        birthDate="2020-01-01",
        _birthDate={"extension": [{"url": BIRTH_TIME, "valueDateTime": "2020-01-01T10:00:00Z"}]},
        extension=[
            {"url": CITIZENSHIP, "extension": [{"url": "code", "valueCodeableConcept": {"text": "NL"}}]}
        ],
    )
    assert _findings(patient) == []


def test_an_unknown_extension_is_an_error_or_what_the_caller_asks() -> None:
    patient = _patient(extension=[{"url": IDENTITY, "extension": [{"url": "text", "valueString": "x"}]}])
    text = f"The extension {IDENTITY} could not be found so is not allowed here"
    assert _findings(patient) == [("error", text, ["Patient.extension[0]"])]
    assert _findings(patient, unknown_extensions="warning") == [("warning", text, ["Patient.extension[0]"])]
    supplied = {IDENTITY: {"resourceType": "StructureDefinition", "url": IDENTITY, "type": "Extension"}}
    assert _findings(patient, structure_definitions=supplied) == []
    # a supplied profile of another type does not define the extension
    profile = {IDENTITY: {"resourceType": "StructureDefinition", "url": IDENTITY, "type": "Patient"}}
    assert _findings(patient, structure_definitions=profile)[0][1] == text


def test_extensions_accepted_unseen_as_the_reference_validator_does() -> None:
    for url in (
        "http://nema.org/fhir/extensions#0010:1010",
        "http://hl7.org/fhir/tools/StructureDefinition/xml-name",
        "http://hl7.org/fhir/5.0/StructureDefinition/extension-Patient.link.type",
    ):
        assert _findings(_patient(extension=[{"url": url, "valueString": "x"}])) == [], url


def test_a_value_type_the_definition_does_not_allow() -> None:
    patient = _patient(extension=[{"url": BIRTH_TIME, "valueString": "ten o'clock"}])
    assert _findings(patient) == [
        (
            "error",
            f"The type 'string' is not allowed for the extension {BIRTH_TIME} (allowed: dateTime)",
            ["Patient.extension[0].value.ofType(string)"],
        )
    ]
    name = {"family": "Ng", "extension": [{"url": NAME_ASSEMBLY, "valueCodeableConcept": {"text": "x"}}]}
    [(severity, _, where)] = _findings(_patient(name=[name]))
    assert severity == "error" and where == ["Patient.name[0].extension[0].value.ofType(CodeableConcept)"]


def test_a_complex_extension_has_no_value() -> None:
    patient = _patient(extension=[{"url": CITIZENSHIP, "valueCode": "NL"}])
    assert _findings(patient) == [
        (
            "error",
            f"The extension {CITIZENSHIP} is a complex extension: it has extensions, not a value",
            ["Patient.extension[0].value.ofType(code)"],
        )
    ]


def test_modifier_extensions_go_in_modifier_extension() -> None:
    plain_as_modifier = _patient(modifierExtension=[{"url": BIRTH_TIME, "valueDateTime": "2020-01-01"}])
    [(_, text, where)] = _findings(plain_as_modifier)
    assert "labelled as a modifier, but the underlying extension is not" in text
    assert where == ["Patient.modifierExtension[0]"]
    do_not_perform = "http://hl7.org/fhir/StructureDefinition/request-doNotPerform"  # a core modifier
    order = {"resourceType": "NutritionOrder", "status": "active", "intent": "order"}
    order |= {
        "patient": {"reference": "Patient/1"},
        "dateTime": "2024-01-01",
        "oralDiet": {"instruction": "x"},
    }
    extension = [{"url": do_not_perform, "valueBoolean": True}]
    [(_, text, where)] = _findings(order | {"extension": extension})
    assert "not labelled as a modifier, but the underlying extension is" in text
    assert where == ["NutritionOrder.extension[0]"]
    assert _findings(order | {"modifierExtension": extension}) == []


def test_unresolved_urls_lists_what_a_server_should_look_up() -> None:
    patient = _patient(
        extension=[
            {"url": IDENTITY, "extension": [{"url": "text", "valueString": "x"}]},
            {"url": BIRTH_TIME},
        ],
        name=[{"extension": [{"url": "http://hospital.example.net/ext", "valueString": "y"}, "junk"]}],
        contact=[{"modifierExtension": [{"url": IDENTITY}]}],
    )
    assert unresolved_urls(patient) == [IDENTITY, "http://hospital.example.net/ext"]


def test_the_extensions_the_gateway_writes_are_known() -> None:
    from fhir_gateway.crypto.fields import MARKER_URL
    from fhir_gateway.gateway import FEED_CURSOR, FEED_POSITION
    from fhir_gateway.ingest.dicom.imaging_study import BLOB_EXTENSION
    from fhir_gateway.ingest.hl7v2.mapping.observation import ANALYSIS_TIME
    from fhir_gateway.pipeline.authority import CLAIM_URL
    from fhir_gateway.privacy.consent import MASK_EXTENSION

    written = (
        CLAIM_URL,
        MARKER_URL,
        FEED_POSITION,
        FEED_CURSOR,
        MASK_EXTENSION,
        BLOB_EXTENSION,
        ANALYSIS_TIME,
    )
    patient = _patient(extension=[{"url": url, "valueString": "x"} for url in written])
    assert _findings(patient) == []
