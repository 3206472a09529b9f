"""DICOM header facts → ImagingStudy / Patient / Endpoint: the pure mapping and its incremental merge."""

from __future__ import annotations

import dataclasses

import pytest
from fhir.resources.R4B.endpoint import Endpoint
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.patient import Patient

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.dicom import imaging_study as m
from fhir_gateway.ingest.dicom.part10 import InstanceHeader
from fhir_gateway.validation.validator import is_valid, validate

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SHA_A = "a" * 64
SHA_B = "b" * 64

HEADER = InstanceHeader(
    sop_class_uid=CT_IMAGE,
    sop_instance_uid=f"{STUDY}.1.1",
    study_instance_uid=STUDY,
    series_instance_uid=f"{STUDY}.1",
    transfer_syntax_uid="1.2.840.10008.1.2.1",
    patient_id="MRN-77",
    issuer_of_patient_id="hosp",
    patient_name="Doe^Jane^Q^Dr^III",
    patient_birth_date="19700131",
    patient_sex="F",
    accession_number="ACC-1",
    study_date="20240102",
    study_time="103000.25",
    timezone_offset="+0100",
    study_description="CT chest",
    referring_physician_name="Who^Doctor",
    modality="CT",
    series_number=3,
    series_description="axial",
    series_date="20240102",
    series_time="1031",
    body_part_examined="CHEST",
    laterality="L",
    instance_number=7,
)


def header(**changes: object) -> InstanceHeader:
    return dataclasses.replace(HEADER, **changes)  # type: ignore[arg-type]


def new_study(*instances: tuple[InstanceHeader, str], **kwargs: object) -> dict[str, object]:
    return m.merge_instances(None, list(instances), patient_reference="Patient/p1", **kwargs)  # type: ignore[arg-type]


def test_mapped_resources_pass_the_gateways_r4_validator() -> None:
    study = new_study((HEADER, SHA_A), endpoint_reference="Endpoint/e1", based_on=["ServiceRequest/s1"])
    for resource in (study, m.patient_resource(HEADER), m.endpoint_resource("http://h/dicomweb")):
        issues = validate(resource)
        assert is_valid(issues), [i.diagnostics for i in issues if i.severity in ("error", "fatal")]


def test_one_instance_makes_a_valid_r4_imaging_study() -> None:
    study = new_study((HEADER, SHA_A), endpoint_reference="Endpoint/e1", based_on=["ServiceRequest/s1"])
    ImagingStudy.model_validate(study)
    assert study["id"] == stable_id("ImagingStudy", None, STUDY)
    assert study["identifier"] == [
        {"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY}"},
        {"type": {"coding": [{"system": m.V2_0203, "code": "ACSN"}]}, "value": "ACC-1"},
    ]
    assert study["status"] == "available"
    assert study["subject"] == {"reference": "Patient/p1"}
    assert study["started"] == "2024-01-02T10:30:00.25+01:00"
    assert study["description"] == "CT chest"
    assert study["referrer"] == {"display": "Doctor Who"}
    assert study["endpoint"] == [{"reference": "Endpoint/e1"}]
    assert study["basedOn"] == [{"reference": "ServiceRequest/s1"}]
    assert study["modality"] == [{"system": m.DCM_SYSTEM, "code": "CT"}]
    assert (study["numberOfSeries"], study["numberOfInstances"]) == (1, 1)


def test_series_and_instance_carry_the_dicom_facts() -> None:
    series = new_study((HEADER, SHA_A))["series"][0]  # type: ignore[index]
    assert series["uid"] == f"{STUDY}.1"
    assert series["number"] == 3
    assert series["modality"] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}
    assert series["description"] == "axial"
    assert series["bodySite"] == {"system": "http://snomed.info/sct", "code": "816094009", "display": "Chest"}
    assert series["laterality"]["code"] == "419161000"
    assert series["started"] == "2024-01-02T10:31:00+01:00"
    assert series["numberOfInstances"] == 1
    instance = series["instance"][0]
    assert instance["uid"] == f"{STUDY}.1.1"
    assert instance["sopClass"] == {
        "system": "urn:ietf:rfc:3986",
        "code": f"urn:oid:{CT_IMAGE}",
        "display": "CT Image Storage",
    }
    assert instance["number"] == 7
    assert m.blob_sha256(instance) == SHA_A


def test_an_instance_arriving_later_updates_counts_series_and_modalities() -> None:
    first = new_study((HEADER, SHA_A))
    later = header(
        sop_instance_uid=f"{STUDY}.2.1",
        series_instance_uid=f"{STUDY}.2",
        modality="MR",
        sop_class_uid=MR_IMAGE,
        series_number=4,
    )
    merged = m.merge_instances(first, [(later, SHA_B)], patient_reference="Patient/other")
    assert merged["numberOfSeries"] == 2
    assert merged["numberOfInstances"] == 2
    assert [c["code"] for c in merged["modality"]] == ["CT", "MR"]
    assert merged["subject"] == {"reference": "Patient/p1"}  # the study keeps its patient
    assert first["numberOfInstances"] == 1  # the stored version is not edited in place
    again = m.merge_instances(merged, [(header(instance_number=8), SHA_B)], patient_reference="Patient/p1")
    assert again["numberOfInstances"] == 2  # a re-sent instance replaces its entry
    assert again["series"][0]["instance"][0]["number"] == 8
    assert list(m.iter_instances(again, f"{STUDY}.2")) == [(f"{STUDY}.2", f"{STUDY}.2.1", SHA_B)]


def test_study_level_facts_fill_gaps_but_do_not_overwrite() -> None:
    bare = new_study((header(accession_number=None, study_description=None, study_date=None), SHA_A))
    assert "started" not in bare and "description" not in bare and len(bare["identifier"]) == 1  # type: ignore[arg-type]
    filled = m.merge_instances(bare, [(header(study_description="later"), SHA_B)], patient_reference="x")
    assert filled["description"] == "later"
    assert filled["identifier"][1]["value"] == "ACC-1"
    kept = m.merge_instances(
        filled, [(header(study_description="other", accession_number="ACC-2"), SHA_B)], patient_reference="x"
    )
    assert kept["description"] == "later"
    assert [i["value"] for i in kept["identifier"]] == [f"urn:oid:{STUDY}", "ACC-1"]


def test_studies_are_never_merged() -> None:
    with pytest.raises(ValueError, match="different studies"):
        new_study((HEADER, SHA_A), (header(study_instance_uid="1.2.3"), SHA_B))
    with pytest.raises(ValueError):
        m.merge_instances(None, [], patient_reference="Patient/p")


def test_patient_id_meets_the_hl7v2_scheme_and_maps_demographics() -> None:
    patient = m.patient_resource(HEADER)
    Patient.model_validate(patient)
    # An HL7v2 ADT with PID-3 "MRN-77^^^HOSP" lands on stable_id("Patient", "HOSP", "MRN-77").
    assert patient["id"] == stable_id("Patient", "HOSP", "MRN-77")
    assert patient["identifier"][0]["value"] == "MRN-77"
    assert patient["identifier"][0]["assigner"] == {"display": "hosp"}
    assert patient["name"] == [{"family": "Doe", "given": ["Jane", "Q"], "prefix": ["Dr"], "suffix": ["III"]}]
    assert patient["birthDate"] == "1970-01-31"
    assert patient["gender"] == "female"


@pytest.mark.parametrize(
    ("sex", "gender"), [("M", "male"), ("f", "female"), ("O", "other"), ("X", "unknown")]
)
def test_patient_sex(sex: str, gender: str) -> None:
    assert m.patient_resource(header(patient_sex=sex))["gender"] == gender


def test_patient_edge_cases() -> None:
    oid = m.patient_resource(header(issuer_of_patient_id="1.2.3.4"))
    assert oid["identifier"][0]["system"] == "urn:oid:1.2.3.4"
    anonymous = m.patient_resource(header(patient_id=None, patient_name=None, patient_sex=None))
    assert anonymous["id"] == m.patient_resource_id(header(patient_id=None))
    assert anonymous["id"] != m.patient_resource_id(header(patient_id=None, study_instance_uid="9.9"))
    assert "identifier" not in anonymous and "name" not in anonymous and "gender" not in anonymous


def test_endpoint_is_a_valid_dicomweb_endpoint() -> None:
    endpoint = m.endpoint_resource("http://pacs.example/dicomweb")
    Endpoint.model_validate(endpoint)
    assert endpoint["id"] == m.endpoint_resource_id("http://pacs.example/dicomweb")
    assert endpoint["connectionType"]["code"] == "dicom-wado-rs"
    assert endpoint["address"] == "http://pacs.example/dicomweb"


@pytest.mark.parametrize(
    ("date", "time", "offset", "expected"),
    [
        ("20240102", "103000", "+0100", "2024-01-02T10:30:00+01:00"),
        ("20240102", "10", "-0500", "2024-01-02T10:00:00-05:00"),
        ("20240102", "10:30:00", "+0000", "2024-01-02T10:30:00+00:00"),
        ("20240102", "235960", "+0000", "2024-01-02T23:59:59+00:00"),
        ("20240102", "103000", None, "2024-01-02"),  # local time of unknown zone: the date only
        ("20240102", "1030x", "+0100", "2024-01-02"),
        ("20240102", "253000", "+0100", "2024-01-02"),
        ("20240102", "103000", "0100", "2024-01-02"),
        ("2024.01.02", None, None, "2024-01-02"),
        ("20241302", "103000", "+0100", None),
        ("2024", None, None, None),
        (None, "103000", "+0100", None),
    ],
)
def test_dicom_date_and_time_to_fhir(
    date: str | None, time: str | None, offset: str | None, expected: str | None
) -> None:
    assert m.fhir_datetime(date, time, offset) == expected


def test_names_and_body_sites() -> None:
    assert m.human_name("Yamada^Tarou=山田^太郎") == {"family": "Yamada", "given": ["Tarou"]}
    assert m.human_name("^^^") is None and m.human_name(None) is None
    assert m.display_name("Who^Doctor^^Dr") == "Dr Doctor Who"
    assert m.display_name("") is None
    assert m.body_site("abdomen")["code"] == "818981001"
    assert m.body_site("CSPINE") == {"display": "CSPINE"}


def test_series_without_modality_or_optional_facts() -> None:
    series = new_study(
        (
            header(
                modality=None,
                series_number=None,
                body_part_examined=None,
                laterality="U",
                instance_number=None,
            ),
            SHA_A,
        )
    )["series"][0]  # type: ignore[index]
    assert series["modality"]["code"] == "OT"
    assert not {"number", "bodySite", "laterality"} & set(series)
    assert "number" not in series["instance"][0]
    unnamed = new_study((header(sop_class_uid="1.2.3.4.5"), SHA_A))["series"][0]["instance"][0]  # type: ignore[index]
    assert "display" not in unnamed["sopClass"]
    assert m.blob_sha256({"extension": [{"url": "other"}]}) is None
