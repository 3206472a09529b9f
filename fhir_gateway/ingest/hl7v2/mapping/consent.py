"""CON → Consent (R4). The IG's CON map is "under construction"; its table 0498 ConceptMap is not.

- status: CON-11 (table 0498, IG ConceptMap table-hl70498-to-consent-state-codes): A/L active,
  R rejected, P proposed, X inactive. B (bypassed: consent not sought) has no counterpart, and
  Consent.status is 1..1: such a CON makes no Consent and is acknowledged with a warning.
  One deliberate departure: a *privacy* CON with R means the patient refused to let their data be
  disclosed. A `rejected` Consent is not in force, so the default policy (often permit) would apply
  and disclose what the patient refused; it becomes an active Consent whose provision denies.
- scope: patient-privacy when the CON speaks of disclosure (CON-2 001 release of information, 003
  privacy notice, or a CON-21 disclosure level); otherwise treatment (table 0496 is mostly consents
  to procedures). category: CON-2 in the v2-0496 system beside its LOINC document code.
- provision (privacy only): CON-21 (table 0500) F full disclosure → permit, N no disclosure → deny;
  without CON-21 an active release-of-information consent (001) permits. P partial disclosure has
  its limits only as text (CON-9): the Consent is kept without a provision (nothing enforceable)
  and a warning says so. The provision period is CON-14 effective to CON-15 end. A CON inside a
  document group (MDM: after TXA) speaks of that document: the provision's data is it.
- policyRule (ppc-1: a Consent needs one): v3 OPTIN/OPTOUT for a permit/deny, text = CON-3 form id.
- dateTime: CON-13 decision date/time, else MSH-7; performer: the patient when CON-24 is empty or
  CON-25 (table 0548) says 1 self, else the consenter by name; sourceAttachment: CON-5/CON-6 text.
- id: CON-4 consent form number with its namespace, else the patient + consent type + form id
  (+ document), so a later CON that rescinds it (X) updates the same Consent.
"""

from __future__ import annotations

import base64

from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2.er7 import Segment
from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    MapContext,
)
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    codeable,
    comp,
    date_time,
    ei,
    human_name,
    period,
    put,
)
from fhir_gateway.ingest.hl7v2.mapping.resources import name_text

PRIVACY_TYPES = frozenset({"001", "003"})
RELEASE_OF_INFORMATION = "001"
SELF_0548 = "1"
POLICY_RULE = {"permit": ("OPTIN", "opt-in"), "deny": ("OPTOUT", "op-out")}


def _first(seg: Segment, n: int) -> Rep | None:
    return next(iter(seg.repetitions(n)), None)


def map_con(seg: Segment, ctx: MapContext) -> None:
    if ctx.patient is None or ctx.patient_id is None:
        return
    status = _status(seg, ctx)
    if status is None:
        return
    kind_rep = _first(seg, 2)
    kind = comp(kind_rep, 1) if kind_rep else ""
    disclosure = seg.value(21).upper()
    privacy = kind in PRIVACY_TYPES or bool(disclosure)
    refused = privacy and status == "rejected"
    if refused:
        status = "active"  # enforced as a deny (module docstring)
    scope = "patient-privacy" if privacy else "treatment"
    consent: Json = {
        "resourceType": "Consent",
        "status": status,
        "scope": {"coding": [{"system": tables.CONSENT_SCOPE_SYSTEM, "code": scope}]},
        "category": [_category(kind_rep)],
        "patient": ctx.patient,
    }
    form = ei(_first(seg, 4))
    put(consent, "identifier", [form] if form else None)
    put(consent, "dateTime", _decided(seg, ctx))
    consent["performer"] = [_consenter(seg, ctx)]
    put(consent, "sourceAttachment", _text(seg))
    effect = "deny" if refused else _effect(seg, ctx, kind, disclosure, status) if privacy else None
    rule: Json = {}
    if effect:
        code, display = POLICY_RULE[effect]
        rule["coding"] = [{"system": tables.V3_ACT_CODE, "code": code, "display": display}]
    put(rule, "text", seg.value(3))
    if not rule:
        ctx.warn(
            seg,
            3,
            REQUIRED_FIELD_MISSING,
            "CON-3 (consent form) and CON-21 are empty: no policy; CON skipped",
        )
        return
    consent["policyRule"] = rule
    if effect:
        consent["provision"] = _provision(seg, ctx, effect)
    key = f"{kind}|{seg.value(3)}|{ctx.document['id'] if ctx.document else ''}"
    if form is not None:
        res_id = stable_id(
            "Consent", (form.get("assigner") or {}).get("display") or ctx.source, form["value"]
        )
    else:
        res_id = stable_id("Consent", f"Patient/{ctx.patient_id}", key)
    ctx.keep(consent, res_id)


def _status(seg: Segment, ctx: MapContext) -> str | None:
    code = seg.value(11).upper()
    status = tables.CONSENT_STATUS_0498.get(code)
    if status is None and code == "B":
        ctx.warn(seg, 11, TABLE_VALUE_NOT_FOUND, "CON-11 B (bypassed) has no Consent status; CON skipped")
    elif status is None and code:
        ctx.warn(seg, 11, TABLE_VALUE_NOT_FOUND, "CON-11 (consent status) is not in table 0498; CON skipped")
    elif status is None:
        ctx.warn(seg, 11, REQUIRED_FIELD_MISSING, "CON-11 (consent status) is empty; CON skipped")
    return status


def _category(rep: Rep | None) -> Json:
    concept = codeable(rep) or {}
    codings = concept.get("coding", [])
    for coding in codings:
        coding.setdefault("system", tables.V2_SYSTEM.format(table="0496"))
    code = comp(rep, 1) if rep else ""
    loinc, display = tables.CONSENT_CATEGORY_0496.get(code, tables.PATIENT_CONSENT)
    concept["coding"] = [{"system": tables.LOINC, "code": loinc, "display": display}, *codings]
    return concept


def _decided(seg: Segment, ctx: MapContext) -> str | None:
    text = seg.value(13)
    when = date_time(text, ctx.tz) if text else None
    if text and when is None:
        ctx.warn(seg, 13, DATA_TYPE_ERROR, "CON-13 (consent decision date/time) is not valid; MSH-7 used")
    return when or date_time(ctx.message.msh.value(7), ctx.tz)


def _consenter(seg: Segment, ctx: MapContext) -> Json:
    names = [n for n in (human_name(r) for r in seg.repetitions(24)) if n]
    if not names or seg.value(25) == SELF_0548:
        return dict(ctx.patient or {})
    return {"type": "RelatedPerson", "display": name_text(names[0])}


def _text(seg: Segment) -> Json | None:
    lines = [seg.value(n, rep=i) for n in (5, 6) for i in range(len(seg.field(n)))]
    text = "\n".join(line for line in lines if line)
    if not text:
        return None
    attachment: Json = {"contentType": "text/plain", "data": base64.b64encode(text.encode()).decode("ascii")}
    put(attachment, "title", seg.value(3))
    return attachment


def _effect(seg: Segment, ctx: MapContext, kind: str, disclosure: str, status: str) -> str | None:
    effect = tables.DISCLOSURE_0500.get(disclosure)
    if disclosure == "P":
        ctx.warn(
            seg,
            21,
            TABLE_VALUE_NOT_FOUND,
            "CON-21 P (partial disclosure): its limits are text only, not enforced",
        )
    elif disclosure and effect is None:
        ctx.warn(
            seg, 21, TABLE_VALUE_NOT_FOUND, "CON-21 (disclosure level) is not in table 0500; not enforced"
        )
    elif not disclosure and kind == RELEASE_OF_INFORMATION and status == "active":
        effect = "permit"
    return effect


def _provision(seg: Segment, ctx: MapContext, effect: str) -> Json:
    provision: Json = {"type": effect}
    put(provision, "period", period(ctx.when(seg, 14), ctx.when(seg, 15)))
    if ctx.document is not None:
        provision["data"] = [{"meaning": "instance", "reference": ctx.ref(ctx.document)}]
    return provision
