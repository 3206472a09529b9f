"""HL7 v2 tables and their FHIR counterparts, as data (HL7 v2-to-FHIR IG concept maps).

Each dict is one v2 table (number in the name) mapped to the FHIR code the IG's ConceptMap gives;
lookups are case-insensitive on the v2 side (`lookup`). Values absent here are not guessed: the
mapper keeps the v2 code in a CodeableConcept with the v2 table as its system where FHIR allows it,
or records a warning.
"""

from __future__ import annotations

import re

V2_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-{table}"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"

# Table 0001 Administrative Sex → AdministrativeGender (ConceptMap table-0001-to-administrative-gender)
SEX_0001 = {
    "M": "male",
    "F": "female",
    "O": "other",
    "U": "unknown",
    "A": "other",
    "N": "unknown",
    "X": "other",
}

# Table 0004 Patient Class → Encounter.class (ConceptMap PatientClass[EncounterClass]): E/I/O/P have a
# v3 ActCode equivalent; R, B, C, N, U have none and stay v2-0004 codes (the IG maps them so, not to
# IMP/AMB: a recurring or obstetrics patient is no inpatient by that fact).
PATIENT_CLASS_0004 = {
    "E": (V3_ACT_CODE, "EMER", "emergency"),
    "I": (V3_ACT_CODE, "IMP", "inpatient encounter"),
    "O": (V3_ACT_CODE, "AMB", "ambulatory"),
    "P": (V3_ACT_CODE, "PRENC", "pre-admission"),
    "R": (V2_SYSTEM.format(table="0004"), "R", "Recurring patient"),
    "B": (V2_SYSTEM.format(table="0004"), "B", "Obstetrics"),
    "C": (V2_SYSTEM.format(table="0004"), "C", "Commercial Account"),
    "N": (V2_SYSTEM.format(table="0004"), "N", "Not Applicable"),
    "U": (V2_SYSTEM.format(table="0004"), "U", "Unknown"),
}

# Table 0217 Visit Priority (PV2-25) → v3 ActPriority (ConceptMap EncounterPriority)
ACT_PRIORITY = "http://terminology.hl7.org/CodeSystem/v3-ActPriority"
VISIT_PRIORITY_0217 = {"1": ("EM", "emergency"), "2": ("UR", "urgent"), "3": ("EL", "elective")}

# Trigger event → Encounter.status (DESIGN "HL7v2 → FHIR"; IG ADT message maps)
ENCOUNTER_STATUS_BY_TRIGGER = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "planned",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A08": "in-progress",
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A12": "in-progress",
    "A13": "in-progress",
    "A14": "planned",
    "A15": "planned",
    "A16": "in-progress",
    "A17": "in-progress",
    "A21": "in-progress",
    "A22": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "planned",
    "A32": "in-progress",
    "A33": "in-progress",
    "A38": "cancelled",
}

# Table 0085 Observation Result Status → ObservationStatus (ConceptMap table-0085-to-observation-status)
OBSERVATION_STATUS_0085 = {
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "cancelled",
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
    "A": "amended",
}

# Table 0123 Result Status (OBR-25) → DiagnosticReportStatus (ConceptMap ResultStatus[Non-Queries]).
# Y (no order on record for this test) and Z (no record of this patient) are query answers with no
# report behind them: the IG leaves them unmapped (an error), so they are no `final` report here.
REPORT_STATUS_0123 = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "C": "corrected",
    "R": "partial",
    "F": "final",
    "X": "cancelled",
    "M": "partial",
    "N": "partial",
}

# Table 0038 Order Status (ORC-5) → RequestStatus
ORDER_STATUS_0038 = {
    "A": "active",
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}

# Table 0119 Order Control (ORC-1) → RequestStatus, used when ORC-5 is empty (ConceptMap
# OrderControlCode[ServiceRequest.status]). An order control code is a request about the order, not
# its state: a cancel (CA) or hold (HD) request leaves the order active until the filler answers
# (CR cancelled as requested, OC cancelled, HR / OH held). The codes the IG leaves unmapped and the
# code set here had already (SC, SN, XO, XX, OR, RP, RE, PA) keep their values.
ORDER_CONTROL_0119 = {
    "AF": "active",
    "CA": "active",
    "CR": "revoked",
    "DC": "revoked",
    "DF": "revoked",
    "DR": "revoked",
    "FU": "completed",
    "HD": "active",
    "HR": "on-hold",
    "NW": "active",
    "OC": "revoked",
    "OD": "revoked",
    "OH": "on-hold",
    "OK": "active",
    "PR": "active",
    "PY": "active",
    "RL": "active",
    "RO": "active",
    "RQ": "active",
    "SC": "active",
    "SN": "active",
    "XO": "active",
    "XX": "active",
    "OR": "active",
    "RE": "completed",
    "RP": "active",
    "PA": "active",
}
# The IG has no ORC-1 map for MedicationRequest: a pharmacy order's cancel and hold requests keep
# the meaning the pharmacy mapping gave them (CA withdrawn → cancelled, HD → on-hold).
MEDICATION_CONTROL_0119 = {**ORDER_CONTROL_0119, "CA": "revoked", "HD": "on-hold"}

# Order control / order status codes that discontinue an order already under way: a medication
# order ended so is `stopped` (MedicationRequest has no RequestStatus `revoked`), others `cancelled`.
DISCONTINUE_0119 = frozenset({"DC", "OD", "DR"})

# Table 0078 Interpretation Codes (OBX-8) → v3 ObservationInterpretation (same codes, v3 system)
INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
INTERPRETATION_0078 = frozenset(
    [
        "L",
        "H",
        "LL",
        "HH",
        "<",
        ">",
        "N",
        "A",
        "AA",
        "S",
        "R",
        "I",
        "MS",
        "VS",
        "B",
        "W",
        "U",
        "D",
        "NEG",
        "POS",
        "IND",
        "DET",
        "ND",
        "NR",
        "RR",
        "HU",
        "LU",
        "H>",
        "L<",
        "IE",
        "HX",
        "LX",
    ]
)

# Table 0127 Allergen Type (AL1-2) → AllergyIntolerance.category / type
ALLERGY_CATEGORY_0127 = {
    "DA": "medication",
    "FA": "food",
    "EA": "environment",
    "AA": "environment",
    "PA": "environment",
    "MA": "medication",
    "MC": "medication",
    "LA": "environment",
    "PLA": "environment",
}
# Table 0128 Allergy Severity (AL1-4) → AllergyIntolerance.reaction.severity / criticality
ALLERGY_SEVERITY_0128 = {"SV": "severe", "MO": "moderate", "MI": "mild"}
ALLERGY_CRITICALITY_0128 = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}

# Table 0052 Diagnosis Type (DG1-6) → Condition.category (IG: all encounter-diagnosis)
CONDITION_CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-category"
# ... and → Encounter.diagnosis.use (IG DG1[Encounter], ConceptMap DiagnosisType): A admitting → AD;
# W working and F final have no diagnosis-role code and stay v2-0052 codes.
DIAGNOSIS_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
DIAGNOSIS_ROLE_0052 = {"A": ("AD", "Admission diagnosis")}

# Table 0063 Relationship (NK1-3) → v3 RoleCode (ConceptMap table-0063-to-v3-rolecode, partial)
RELATIONSHIP_0063 = {
    "SPO": "SPS",
    "WIF": "WIFE",
    "HUS": "HUSB",
    "MTH": "MTH",
    "FTH": "FTH",
    "PAR": "PRN",
    "CHD": "CHILD",
    "SON": "SON",
    "DAU": "DAU",
    "BRO": "BRO",
    "SIS": "SIS",
    "SIB": "SIB",
    "GRD": "GUARD",
    "FND": "FRND",
    "DOM": "DOMPART",
    "EMC": "ECON",
    "SEL": "ONESELF",
    "GRP": "GRPRN",
    "EXF": "EXT",
    "NBR": "NBOR",
    "ROM": "ROOM",
    "OTH": "O",
    "UNK": "U",
}
ROLE_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

# Table 0278 Filler Status (SCH-25) → AppointmentStatus (ConceptMap FillerStatusCodes[Appointment]:
# Started → checked-in; Discontinued, Blocked and Overbook are unmapped there and keep the values
# given here)
APPOINTMENT_STATUS_0278 = {
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "BOOKED": "booked",
    "STARTED": "checked-in",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DC": "cancelled",
    "DELETED": "entered-in-error",
    "BLOCKED": "booked",
    "OVERBOOK": "booked",
    "NOSHOW": "noshow",
}
# SIU trigger → AppointmentStatus when SCH-25 is empty. S20/S21/S22 cancel, discontinue or delete
# one service or resource of the appointment (v2 chapter 10), not the appointment: it stays booked
# and the resources the message names decline (`RESOURCE_REMOVAL_TRIGGERS`).
APPOINTMENT_STATUS_BY_TRIGGER = {
    "S12": "booked",
    "S13": "booked",
    "S14": "booked",
    "S15": "cancelled",
    "S16": "cancelled",
    "S17": "entered-in-error",
    "S18": "booked",
    "S19": "booked",
    "S20": "booked",
    "S21": "booked",
    "S22": "booked",
    "S23": "booked",
    "S24": "booked",
    "S26": "noshow",
}
RESOURCE_REMOVAL_TRIGGERS = frozenset({"S20", "S21", "S22"})
# Table 0278 Filler Status of one resource (AIG-14, AIL-12, AIP-12) → Appointment.participant.status
# (the IG maps the field, without a concept map): a resource that is not (or no longer) booked has
# not accepted the appointment.
PARTICIPANT_STATUS_0278 = {
    "PENDING": "tentative",
    "WAITLIST": "tentative",
    "BOOKED": "accepted",
    "STARTED": "accepted",
    "COMPLETE": "accepted",
    "OVERBOOK": "accepted",
    "BLOCKED": "accepted",
    "CANCELLED": "declined",
    "DC": "declined",
    "DELETED": "declined",
}
# Table 0276 Appointment Reason Codes: SCH-7 sent with them names the kind of appointment (R4 binds
# Appointment.appointmentType to v2-0276), any other SCH-7 is the reason for it (IG SCH-7 note).
APPOINTMENT_REASON_0276 = frozenset({"CHECKUP", "EMERGENCY", "FOLLOWUP", "ROUTINE", "WALKIN"})

# Table 0271 Document Completion Status (TXA-17) → CompositionStatus (DocumentReference.docStatus)
DOC_STATUS_0271 = {
    "AU": "final",
    "DI": "preliminary",
    "DO": "final",
    "IN": "preliminary",
    "IP": "preliminary",
    "LA": "final",
    "PA": "preliminary",
}
# Table 0275 Document Availability Status (TXA-19) → DocumentReferenceStatus
DOC_AVAILABILITY_0275 = {"AV": "current", "CA": "entered-in-error", "OB": "superseded", "UN": "current"}

# Table 0272 Document Confidentiality Status (TXA-18) → securityLabel (ConceptMap
# DocumentConfidentialityStatus keeps the v2-0272 code) + the v3 Confidentiality code it means
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
DOC_CONFIDENTIALITY_0272 = {
    "V": ("Very restricted", "V", "very restricted"),
    "R": ("Restricted", "R", "restricted"),
    "U": ("Usual control", "N", "normal"),
}

# Table 0322 Completion Status (RXA-20) → ImmunizationStatus
IMMUNIZATION_STATUS_0322 = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

# Table 0203 Identifier Type: the codes are used as they are with the v2-0203 system.
IDENTIFIER_TYPE_SYSTEM = V2_SYSTEM.format(table="0203")

# Table 0201 Telecommunication Use (XTN-2) → ContactPoint.use; Table 0202 Equipment (XTN-3) → system
TELECOM_USE_0201 = {
    "PRN": "home",
    "ORN": "home",
    "WPN": "work",
    "VHN": "home",
    "ASN": "work",
    "EMR": "home",
    "NET": "work",
    "BPN": "work",
    "PRS": "mobile",
}
TELECOM_SYSTEM_0202 = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "MD": "other",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "TDD": "other",
    "TTY": "other",
    "SAT": "phone",
}
# Table 0200 Name Type (XPN-7) → NameUse
NAME_USE_0200 = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "A": "anonymous",
    "B": "official",
    "C": "official",
    "I": "official",
    "P": "usual",
    "R": "official",
    "S": "anonymous",
    "T": "temp",
    "U": "old",
    "NB": "temp",
    "TEMP": "temp",
    "NOUSE": "old",
    "BAD": "old",
}
# Table 0190 Address Type (XAD-7) → Address.use / type
ADDRESS_USE_0190 = {"H": "home", "O": "work", "B": "work", "C": "temp", "BA": "old", "BI": "billing"}
ADDRESS_TYPE_0190 = {"M": "postal", "SH": "physical"}

# Table 0396 Coding System → FHIR code system URI (IG "Coding System Map")
CODING_SYSTEM_0396 = {
    "LN": "http://loinc.org",
    "LOINC": "http://loinc.org",
    "SCT": "http://snomed.info/sct",
    "SNM": "http://snomed.info/sct",
    "SNM3": "http://snomed.info/sct",
    "SNOMED": "http://snomed.info/sct",
    "SNOMEDCT": "http://snomed.info/sct",
    "I10": "http://hl7.org/fhir/sid/icd-10",
    "ICD10": "http://hl7.org/fhir/sid/icd-10",
    "I10C": "http://hl7.org/fhir/sid/icd-10-cm",
    "ICD10CM": "http://hl7.org/fhir/sid/icd-10-cm",
    "I10P": "http://www.cms.gov/Medicare/Coding/ICD10",
    "I9": "http://hl7.org/fhir/sid/icd-9-cm",
    "I9C": "http://hl7.org/fhir/sid/icd-9-cm",
    "ICD9": "http://hl7.org/fhir/sid/icd-9-cm",
    "C4": "http://www.ama-assn.org/go/cpt",
    "CPT": "http://www.ama-assn.org/go/cpt",
    "CPT4": "http://www.ama-assn.org/go/cpt",
    "CVX": "http://hl7.org/fhir/sid/cvx",
    "MVX": "http://terminology.hl7.org/CodeSystem/MVX",
    "NDC": "http://hl7.org/fhir/sid/ndc",
    "RXNORM": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "RXN": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "UCUM": "http://unitsofmeasure.org",
    "ANS+": "http://unitsofmeasure.org",
    "ISO+": "urn:iso:std:iso:2955",
    "NUCC": "http://nucc.org/provider-taxonomy",
    "NCIT": "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl",  # NCI Thesaurus (CDC route codes)
    "NCI": "http://ncimeta.nci.nih.gov",  # NCI Metathesaurus
    "CDCREC": "urn:oid:2.16.840.1.113883.6.238",
    "CDCPHINVS": "urn:oid:2.16.840.1.114222.4.5.274",  # CDC local coding system (HTA-registered OID)
    "CDCGS1VIS": "urn:oid:2.16.840.1.114222.4.5.307",  # VIS bar codes (immunization OBX-5)
    "HCPCS": "http://terminology.hl7.org/CodeSystem/HCPCS",
    "HPC": "http://terminology.hl7.org/CodeSystem/HCPCS",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "UMLS": "http://www.nlm.nih.gov/research/umls",
}


def lookup(table: dict[str, str], code: str) -> str | None:
    return table.get(code.upper()) if code else None


def coding_system(name: str) -> str | None:
    """The FHIR system URI for a v2 coding system name (table 0396), `HL7nnnn`, or an ISO OID."""
    if not name:
        return None
    upper = name.upper()
    known = CODING_SYSTEM_0396.get(upper)
    if known:
        return known
    if upper.startswith("HL7") and upper[3:].isdigit():
        return V2_SYSTEM.format(table=upper[3:].zfill(4))
    if is_oid(name):
        return f"urn:oid:{name}"
    if upper.startswith("99"):  # locally defined (99zzz): no public URI
        return None
    return None


_OID = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+", re.ASCII)  # R4 oid: urn:oid:[0-2](\.(0|[1-9][0-9]*))+


def is_oid(text: str) -> bool:
    """An ISO OID that FHIR's `oid` type accepts (first arc 0-2, no leading zeros): senders label
    other things ISO too ('1.2edutake'), and `urn:oid:` with those is an invalid URI."""
    return _OID.fullmatch(text) is not None


# ---- participation (ROL-3, PRT-4) -------------------------------------------------------------------
# Table 0443 Provider Role (ROL-3) / 0912 Participation (PRT-4) → v3 ParticipationType, for the roles
# PV1 also carries (PV1-7/8/9/17): the v2 coding is kept beside the translation.
PARTICIPATION_0443 = {
    "AD": ("ADM", "admitter"),
    "AT": ("ATND", "attender"),
    "CP": ("CON", "consultant"),
    "RP": ("REF", "referrer"),
}
PRIMARY_CARE_PROVIDER = (
    "PP"  # 0443/0912: the patient's general practitioner (IG: Patient.generalPractitioner)
)
ORDERING_PROVIDER = "OP"  # 0912: ServiceRequest.requester
RESULT_PERFORMERS_0912 = frozenset({"ARI", "TN", "TR", "RO"})  # DiagnosticReport.performer (IG ORU_R01)
PRINCIPAL_RESULT_INTERPRETER = "PRI"  # DiagnosticReport.resultsInterpreter
SPECIMEN_COLLECTOR = "SC"  # Specimen.collection.collector

# ---- insurance (IN2) ---------------------------------------------------------------------------------
# Table 0344 Patient's Relationship to Insured (IN2-72) → subscriber-relationship
RELATIONSHIP_0344 = {
    "01": "self",
    "02": "spouse",
    "03": "child",
    "04": "child",
    "05": "child",
    "06": "child",
    "07": "other",
    "08": "other",
    "10": "child",
    "11": "other",
    "12": "other",
    "13": "other",
    "14": "other",
    "15": "injured",
    "16": "other",
    "17": "other",
    "18": "parent",
    "19": "other",
}

# ---- consent (CON) -----------------------------------------------------------------------------------
# Table 0498 Consent Status (CON-11) → Consent.status (IG ConceptMap table-hl70498-to-consent-state-codes;
# B "bypassed, consent not sought" is unmatched there: no Consent is made for it).
CONSENT_STATUS_0498 = {"A": "active", "L": "active", "R": "rejected", "P": "proposed", "X": "inactive"}
# Table 0500 Consent Disclosure Level (CON-21) → the provision: F full → permit, N none → deny;
# P partial has its limits only as text (CON-9), so it has no computable provision.
DISCLOSURE_0500 = {"F": "permit", "N": "deny"}
# Table 0496 Consent Type (CON-2) → Consent.category (LOINC, R4 consent-category examples); the v2
# coding is kept beside it. Types without a closer LOINC document code are "Patient Consent".
LOINC = "http://loinc.org"
CONSENT_CATEGORY_0496 = {
    "001": ("64292-6", "Release of information consent"),
    "003": ("57016-8", "Privacy policy acknowledgment Document"),
}
PATIENT_CONSENT = ("59284-0", "Patient Consent")
CONSENT_SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"

# ---- specimen (SPM) ----------------------------------------------------------------------------------
# Message structures whose SPECIMEN group encloses the ORDER group (the SPM heads the OBRs that follow
# it) — in all others an SPM belongs to the order group it follows. From the v2.5.1-2.8.2 message
# structures (hl7apy's definitions; tests/unit/test_hl7_segments.py checks this set against them).
SPECIMEN_FIRST_STRUCTURES = frozenset(
    {
        "OML_O33",
        "OML_O35",
        "OPL_O37",
        "OPR_O38",
        "OPU_R25",
        "ORL_O34",
        "ORL_O36",
        "ORL_O42",
        "ORL_O43",
        "OUL_R22",
        "OUL_R23",
    }
)
# Table 0493 Specimen Condition is mapped as it is; SPM-20 Specimen Availability (Y/N) → status.
SPECIMEN_AVAILABILITY = {"Y": "available", "N": "unavailable"}
# Message structures whose ORDER group has the ORC after the OBR (OUL: OBR, ORC, …): such an ORC
# completes the order its OBR opened instead of starting the next one. Same source and test.
ORC_AFTER_OBR_STRUCTURES = frozenset({"OPL_O37", "OPU_R25", "OUL_R22", "OUL_R23", "OUL_R24"})


def structure(message_code: str, trigger: str, declared: str) -> str:
    """The message structure (MSH-9.3), else the one named after the message type and trigger."""
    return declared or f"{message_code}_{trigger}"
