"""v2 data types → FHIR data types (HL7 v2-to-FHIR IG "Data Type Maps"): pure functions on tokens.

A field repetition arrives as `list[list[str]]` (components of subcomponents, already unescaped, see
er7.Segment.field). Every function returns None (or an empty list) when there is nothing to map, so
mappers can write `put(resource, "birthDate", date(...))` without checks.
"""

from __future__ import annotations

import re
from datetime import datetime, tzinfo
from typing import Any

from fhir_gateway.ingest.hl7v2.mapping import tables

Rep = list[list[str]]  # one repetition: components → subcomponents
Json = dict[str, Any]

_DTM = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?\s*([+-]\d{4}|Z)?\Z")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)\Z")
MAX_DIGITS = 18  # significant digits every FHIR decimal implementation keeps (XML Schema's minimum)


def comp(rep: Rep, n: int, sub: int = 1) -> str:
    """Component n (1-based), subcomponent `sub`, stripped; '' when absent."""
    if n > len(rep):
        return ""
    subs = rep[n - 1]
    return subs[sub - 1].strip() if sub <= len(subs) else ""


def comp_text(rep: Rep, n: int) -> str:
    """Component n with its subcomponents joined back (for components that are not composite)."""
    return " ".join(s.strip() for s in rep[n - 1] if s.strip()) if n <= len(rep) else ""


def put(target: Json, key: str, value: Any) -> None:
    """Set `key` unless value is empty (None, '', [], {})."""
    if value is not None and value != "" and value != [] and value != {}:
        target[key] = value


# ---- dates ---------------------------------------------------------------------------------------
def _parts(text: str) -> tuple[str, ...] | None:
    m = _DTM.match(text.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, frac, tz = m.groups()
    if month and not 1 <= int(month) <= 12:
        return None
    if day and not 1 <= int(day) <= _days_in(int(year), int(month or 1)):
        return None
    if hour and (int(hour) > 23 or (minute and int(minute) > 59) or (second and int(second) > 60)):
        return None
    return year, month or "", day or "", hour or "", minute or "", second or "", frac or "", tz or ""


def _days_in(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def offset(text: str) -> str | None:
    """The UTC offset of a DTM ('+02:15'), None when it has none."""
    parts = _parts(text)
    if parts is None or not parts[7]:
        return None
    tz = parts[7]
    return "+00:00" if tz == "Z" else f"{tz[:3]}:{tz[3:]}"


def date(text: str) -> str | None:
    """DT/DTM → FHIR date (YYYY, YYYY-MM or YYYY-MM-DD); None when not a valid date."""
    parts = _parts(text) if text else None
    if parts is None:
        return None
    year, month, day = parts[:3]
    return "-".join(p for p in (year, month, day if month else "") if p)


Zone = str | tzinfo  # a fixed UTC offset ('+02:00', from MSH-7) or a configured zone (DST aware)


def date_time(text: str, default_tz: Zone | None = None) -> str | None:
    """DTM → FHIR dateTime. A time needs a zone in FHIR: the value's own, else `default_tz` (the
    sender's MSH-7 offset, else the receiver's `hl7.timezone`, whose offset on that local date and
    time is taken), else the value is cut to its date rather than guessing a zone."""
    parts = _parts(text) if text else None
    if parts is None:
        return None
    year, month, day, hour, minute, second, frac, tz = parts
    if not hour or not day:
        return date(text)
    zone = ("+00:00" if tz == "Z" else f"{tz[:3]}:{tz[3:]}") if tz else default_tz
    if zone is None:
        return f"{year}-{month}-{day}"
    if isinstance(zone, tzinfo):
        local = datetime(int(year), int(month), int(day), int(hour), int(minute or 0), tzinfo=zone)
        zone = local.isoformat()[-6:]
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{frac}{zone}"


def instant(text: str, default_tz: Zone | None = None) -> str | None:
    """DTM → FHIR instant (needs seconds and a zone); None when it cannot be one."""
    value = date_time(text, default_tz)
    return value if value and "T" in value else None


def period(start: str | None, end: str | None) -> Json | None:
    result: Json = {}
    put(result, "start", start)
    put(result, "end", end)
    return result or None


# ---- coded values --------------------------------------------------------------------------------
def coding(code: str, display: str, system_name: str, version: str = "") -> Json | None:
    if not code and not display:
        return None
    result: Json = {}
    system = tables.coding_system(system_name)
    put(result, "system", system)
    put(result, "version", version)
    put(result, "code", code)
    put(result, "display", display)
    return result


def codeable(rep: Rep | None) -> Json | None:
    """CWE/CE/CNE → CodeableConcept (primary and alternate triplets; CWE-9 original text)."""
    if not rep:
        return None
    codings = []
    first = coding(comp(rep, 1), comp(rep, 2), comp(rep, 3), comp(rep, 7))
    if first and first.get("code"):
        codings.append(first)
    alt = coding(comp(rep, 4), comp(rep, 5), comp(rep, 6), comp(rep, 8))
    if alt and alt.get("code"):
        codings.append(alt)
    result: Json = {}
    put(result, "coding", codings)
    text = comp(rep, 9) or ("" if codings else comp(rep, 2) or comp(rep, 1))
    put(result, "text", text)
    return result or None


def code_in(rep: Rep | None, table: str) -> Json | None:
    """An ID/IS value (or the code of a CWE) as a CodeableConcept in the v2 table's code system.

    A CWE whose coding system (component 3) is a known external one keeps it (IG CWE[CodeableConcept]):
    a CDC VXU sends RXR-1 route as C28161^Intramuscular^NCIT, which is no code of table 0162."""
    if not rep:
        return None
    code = comp(rep, 1)
    if not code:
        return None
    named = tables.coding_system(comp(rep, 3))
    table_system = tables.V2_SYSTEM.format(table=table)
    if named and named != table_system:
        return codeable(rep)
    c: Json = {"system": table_system, "code": code}
    put(c, "display", comp(rep, 2))
    return {"coding": [c]}


# ---- identifiers ---------------------------------------------------------------------------------
def authority(rep: Rep, n: int) -> str:
    """The assigning authority of a CX/EI/XCN as a key: its namespace id, else its universal id."""
    return comp(rep, n, 1) or comp(rep, n, 2)


def _system(namespace: str, universal: str, universal_type: str) -> str | None:
    if universal and tables.is_oid(universal):  # typed ISO or not: only a real OID makes a urn:oid
        return f"urn:oid:{universal}"
    if universal and universal_type.upper() == "UUID":
        return f"urn:uuid:{universal}"
    if universal and universal_type.upper() in ("URI", "URL"):
        return universal
    return None


def identifier(
    rep: Rep | None, *, authority_at: int = 4, type_at: int = 5, period_at: int = 7
) -> Json | None:
    """CX (or EI with authority_at=2, type_at=0; XCN with 9, 13, 0) → Identifier (system, type, assigner)."""
    if not rep:
        return None
    value = comp(rep, 1)
    if not value:
        return None
    result: Json = {"value": value}
    namespace = comp(rep, authority_at, 1)
    universal = comp(rep, authority_at, 2)
    utype = comp(rep, authority_at, 3)
    if authority_at == 2:  # EI: namespace ^ universal id ^ universal id type are components 2-4
        namespace, universal, utype = comp(rep, 2), comp(rep, 3), comp(rep, 4)
    put(result, "system", _system(namespace, universal, utype))
    if type_at:
        id_type = comp(rep, type_at)
        if id_type:
            result["type"] = {"coding": [{"system": tables.IDENTIFIER_TYPE_SYSTEM, "code": id_type}]}
    if namespace or universal:
        result["assigner"] = {"display": namespace or universal}
    if period_at:
        put(result, "period", period(date(comp(rep, period_at)), date(comp(rep, period_at + 1))))
    return result


def ei(rep: Rep | None) -> Json | None:
    return identifier(rep, authority_at=2, type_at=0, period_at=0)


# ---- people, places, contacts --------------------------------------------------------------------
def human_name(rep: Rep | None) -> Json | None:
    """XPN (or the name part of XCN with offset 1) → HumanName."""
    return _name(rep, 0)


def _name(rep: Rep | None, off: int) -> Json | None:
    if not rep:
        return None
    result: Json = {}
    put(result, "family", comp(rep, 1 + off, 1))
    given = [g for g in (comp(rep, 2 + off), comp(rep, 3 + off)) if g]
    put(result, "given", given)
    put(result, "suffix", [s for s in (comp(rep, 4 + off), comp(rep, 6 + off)) if s])
    put(result, "prefix", [p for p in (comp(rep, 5 + off),) if p])
    if not result:
        return None
    use = tables.lookup(tables.NAME_USE_0200, comp(rep, 7 + off if off == 0 else 10))
    put(result, "use", use)
    return result


def xcn_name(rep: Rep) -> Json | None:
    return _name(rep, 1)


def address(rep: Rep | None) -> Json | None:
    """XAD → Address."""
    if not rep:
        return None
    result: Json = {}
    lines = [comp_text(rep, 1), comp(rep, 2)]
    put(result, "line", [x for x in lines if x])
    put(result, "city", comp(rep, 3))
    put(result, "state", comp(rep, 4))
    put(result, "postalCode", comp(rep, 5))
    put(result, "country", comp(rep, 6))
    put(result, "district", comp(rep, 9))
    if not result:
        return None
    kind = comp(rep, 7).upper()
    put(result, "use", tables.ADDRESS_USE_0190.get(kind))
    put(result, "type", tables.ADDRESS_TYPE_0190.get(kind))
    return result


def telecom(rep: Rep | None) -> Json | None:
    """XTN → ContactPoint (XTN-4 e-mail, else XTN-12 unformatted, else phone from parts or XTN-1)."""
    if not rep:
        return None
    equipment = comp(rep, 3).upper()
    email = comp(rep, 4)
    if email or equipment in ("INTERNET", "X.400"):
        value = email or comp(rep, 1)
        system = "email"
    else:
        value = comp(rep, 12)
        if not value:
            parts = [comp(rep, 5), comp(rep, 6), comp(rep, 7)]
            value = " ".join(p for p in parts if p) if parts[2] else comp(rep, 1)
            ext = comp(rep, 8)
            if value and ext:
                value = f"{value} ext. {ext}"
        system = tables.TELECOM_SYSTEM_0202.get(equipment, "phone")
    if not value:
        return None
    result: Json = {"system": system, "value": value}
    put(result, "use", tables.TELECOM_USE_0201.get(comp(rep, 2).upper()))
    return result


def contact_points(home: list[Rep], business: list[Rep]) -> list[Json]:
    """A person's home (PID-13, NK1-5, GT1-6) and business (PID-14, NK1-6, GT1-7) numbers; a business
    number without an XTN-2 use code is a work number."""
    points = [t for t in (telecom(r) for r in home) if t]
    for t in (telecom(r) for r in business):
        if t:
            t.setdefault("use", "work")
            points.append(t)
    return points


def location_name(rep: Rep | None) -> str:
    """PL (point of care ^ room ^ bed ^ facility ...) → a readable location name."""
    if not rep:
        return ""
    parts = [comp(rep, 4, 1), comp(rep, 7), comp(rep, 8), comp(rep, 1, 1), comp(rep, 2), comp(rep, 3)]
    return " ".join(p for p in parts if p)


# ---- quantities ----------------------------------------------------------------------------------
def number(text: str) -> int | float | None:
    """NM → a JSON number (int when integral as written), None when not a number or not one a FHIR
    decimal holds: more than `MAX_DIGITS` significant digits (an integer past 64 bits cannot even be
    stored, and a float would round it), or too small for a float (it would become 0)."""
    t = text.strip()
    if not _NUMBER.match(t):
        return None
    significant = t.lstrip("+-").replace(".", "").lstrip("0")
    if len(significant) > MAX_DIGITS:
        return None
    if "." in t:
        value = float(t)
        return value if value or not significant else None
    return int(t)


def quantity(value: int | float, unit_rep: Rep | None) -> Json:
    """A number with an OBX-6 style CWE unit (UCUM when the unit's system says so)."""
    result: Json = {"value": value}
    if unit_rep:
        code = comp(unit_rep, 1)
        text = comp(unit_rep, 2) or code
        system = tables.coding_system(comp(unit_rep, 3))
        put(result, "unit", text)
        if code and system:  # qty-3: a unit code needs its system
            result["system"] = system
            result["code"] = code
    return result
