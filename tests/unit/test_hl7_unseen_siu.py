"""SIU^S12-S26 scheduling (beyond the corpus): SCH/RGS/AIS/AIG/AIL/AIP → Appointment (IG SCH, AIS,
AIG, AIL, AIP maps; FillerStatusCodes[Appointment] concept map)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_gateway.ingest.hl7v2.messages import MappedMessage
from tests.unit.hl7_cases import mapped, of

PID = "PID|1||MRN7788^^^GENHOSP^MR||Garcia^Elena^M||19780412|F"
SCH = (
    "SCH|PL-9001^EHR|FL-4401^SCHED||||{reason}|{visit}|NORMAL^Routine^HL70277|30|MIN|"
    "^^30^20240715093000-0400{end}||||||||||||||{status}"
)


def siu(trigger: str, *segments: str) -> MappedMessage:
    msh = f"MSH|^~\\&|SCHED|GENHOSP|EHR|GENHOSP|20240701080000-0400||SIU^{trigger}^SIU_S12|SIU3001|P|2.5.1"
    return mapped("\r".join([msh, *segments]))


def sch(reason: str = "", visit: str = "", end: str = "^20240715100000-0400", status: str = "") -> str:
    return SCH.format(reason=reason, visit=visit, end=end, status=status)


def appointment(result: MappedMessage) -> dict[str, Any]:
    [found] = of(result, "Appointment")
    return found


def test_new_appointment_with_every_resource_kind() -> None:
    appt = appointment(
        siu(
            "S12",
            sch(visit="R51^Headache^I10", status="BOOKED"),
            PID,
            "RGS|1|A",
            "AIS|1|A|99213^Office visit est^C4|20240715093000-0400|||30|MIN",
            "AIG|1|A|XRAY1^X-ray room 1|EQ^Equipment||||20240715093000-0400|||15|MIN||BOOKED",
            "AIL|1|A|CLINIC^EXAM3^^GENHOSP|||20240715093000-0400|||30|min||PENDING",
            "AIP|1|A|4455^Ordering^Oscar^^^Dr|ATND^attender||20240715093000-0400|||1|H",
        )
    )
    assert appt["status"] == "booked"
    assert (appt["start"], appt["end"], appt["minutesDuration"]) == (
        "2024-07-15T09:30:00-04:00",
        "2024-07-15T10:00:00-04:00",
        30,
    )
    assert appt["identifier"] == [
        {"value": "PL-9001", "assigner": {"display": "EHR"}},
        {"value": "FL-4401", "assigner": {"display": "SCHED"}},
    ]
    assert appt["reasonCode"] == [
        {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "R51", "display": "Headache"}]}
    ]
    assert appt["appointmentType"] == {
        "coding": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0277",
                "code": "NORMAL",
                "display": "Routine schedule request type – default if not valued",
            }
        ],
        "text": "Routine",  # the sender's words, beside table 0277's display
    }
    assert appt["serviceType"][0]["coding"][0]["code"] == "99213"
    patient, room, clinic, doctor = appt["participant"]
    assert patient["status"] == "accepted" and "period" not in patient
    assert room == {
        "actor": {"display": "X-ray room 1"},
        "status": "accepted",
        "type": [{"coding": [{"code": "EQ", "display": "Equipment"}]}],
        "period": {"start": "2024-07-15T09:30:00-04:00", "end": "2024-07-15T09:45:00-04:00"},
    }
    assert clinic["actor"] == {"display": "GENHOSP CLINIC EXAM3"} and clinic["status"] == "tentative"
    assert clinic["period"] == {"start": "2024-07-15T09:30:00-04:00", "end": "2024-07-15T10:00:00-04:00"}
    assert doctor["actor"]["display"] == "Dr Oscar Ordering" and doctor["status"] == "accepted"
    assert doctor["period"] == {"start": "2024-07-15T09:30:00-04:00", "end": "2024-07-15T10:30:00-04:00"}


def test_event_reason_is_no_appointment_reason_but_a_cancellation_reason() -> None:
    booked = appointment(siu("S12", sch(reason="PATREQ^Patient request"), PID))
    assert "reasonCode" not in booked and "cancelationReason" not in booked
    cancelled = appointment(siu("S15", sch(reason="PATREQ^Patient request", visit="R51^Headache^I10"), PID))
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelationReason"] == {"coding": [{"code": "PATREQ", "display": "Patient request"}]}
    assert cancelled["reasonCode"][0]["coding"][0]["code"] == "R51"
    discontinued = appointment(siu("S16", sch(reason="DECEASED^Patient deceased"), PID))
    assert discontinued["cancelationReason"]["coding"][0]["code"] == "DECEASED"


def test_table_0276_reason_is_the_appointment_type_when_sch_8_is_empty() -> None:
    segment = (
        "SCH|PL-9002^EHR|FL-4402^SCHED|||||FOLLOWUP^Follow-up^HL70276||30|MIN|"
        "^^30^20240715093000-0400^20240715100000"
    )
    appt = appointment(siu("S12", segment, PID))
    assert appt["appointmentType"]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/v2-0276",
        "code": "FOLLOWUP",
        "display": "A follow up visit from a previous appointment",
    }
    assert "reasonCode" not in appt


def test_start_with_duration_and_no_end_gives_the_end() -> None:
    """SCH-11 with a start only: the end is start + SCH-9/SCH-10 (app-2: start and end go together),
    not the duration of the first resource booked with it."""
    appt = appointment(
        siu("S12", sch(end=""), PID, "AIG|1|A|XRAY1^X-ray room 1|EQ||||20240715093000-0400|||15|MIN")
    )
    assert (appt["start"], appt["end"]) == ("2024-07-15T09:30:00-04:00", "2024-07-15T10:00:00-04:00")


@pytest.mark.parametrize(
    ("filler", "status"),
    [
        ("STARTED", "checked-in"),  # IG FillerStatusCodes: Started → checked-in (not arrived)
        ("COMPLETE", "fulfilled"),
        ("NOSHOW", "noshow"),
        ("DELETED", "entered-in-error"),
        ("WAITLIST", "waitlist"),
        ("PENDING", "pending"),
    ],
)
def test_filler_status(filler: str, status: str) -> None:
    assert appointment(siu("S14", sch(status=filler), PID))["status"] == status


@pytest.mark.parametrize("trigger", ["S20", "S21", "S22"])
def test_removing_a_resource_leaves_the_appointment_booked(trigger: str) -> None:
    """S20-S22 cancel/discontinue/delete a service or resource, not the appointment."""
    appt = appointment(
        siu(
            trigger,
            sch(),
            PID,
            "RGS|1|D",
            "AIG|1|D|XRAY1^X-ray room 1|EQ||||20240715093000-0400|||15|MIN",
        )
    )
    assert appt["status"] == "booked"
    assert [p["status"] for p in appt["participant"]] == ["accepted", "declined"]


@pytest.mark.parametrize(
    ("trigger", "status"), [("S17", "entered-in-error"), ("S26", "noshow"), ("S13", "booked")]
)
def test_status_by_trigger(trigger: str, status: str) -> None:
    assert appointment(siu(trigger, sch(), PID))["status"] == status


def test_resource_cancelled_in_a_modification_declines() -> None:
    appt = appointment(
        siu("S14", sch(), PID, "AIP|1|U|4455^Ordering^Oscar|ATND||20240715093000-0400|||30|MIN||CANCELLED")
    )
    assert appt["status"] == "booked" and appt["participant"][1]["status"] == "declined"


def test_unknown_duration_unit_is_a_warning() -> None:
    result = siu(
        "S12",
        "SCH|PL-9003^EHR|FL-4403^SCHED|||||||30|FURLONG|^^30^20240715093000-0400",
        PID,
        "AIP|1|A|4455^Ordering^Oscar|ATND||20240715093000-0400|||30|MIN",
    )
    appt = appointment(result)
    assert "minutesDuration" not in appt
    assert (appt["start"], appt["end"]) == ("2024-07-15T09:30:00-04:00", "2024-07-15T10:00:00-04:00")
    assert [(i.severity, i.location) for i in result.issues] == [("W", "SCH-10")]
