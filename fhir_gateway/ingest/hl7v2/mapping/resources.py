"""Shared targets of many segments: Practitioner (XCN), Location (PL), logical Organization (XON/HD).

They are logical references (identifier + display), not resources of their own: see `practitioner`.
"""

from __future__ import annotations

from fhir_gateway.ingest.hl7v2.mapping import tables
from fhir_gateway.ingest.hl7v2.mapping.context import MapContext, Reference
from fhir_gateway.ingest.hl7v2.mapping.datatypes import (
    Json,
    Rep,
    comp,
    identifier,
    location_name,
    put,
    xcn_name,
)


def name_text(name: Json | None) -> str:
    if not name:
        return ""
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", ""), *name.get("suffix", [])]
    return " ".join(p for p in parts if p)


def practitioner(rep: Rep | None, ctx: MapContext) -> Reference | None:
    """XCN → a logical reference (identifier from XCN-1 + XCN-9 authority, display from the name).

    No Practitioner resource is written: provider directories are a system of record of their own,
    and one resource per named person would double the writes per message (ADT messages name five
    to twelve providers). The identifier keeps the link searchable and resolvable later.
    """
    if not rep:
        return None
    pid = comp(rep, 1)
    display = name_text(xcn_name(rep))
    ref: Json = {}
    if pid:
        ident = identifier(rep, authority_at=9, type_at=13, period_at=0)
        if ident:
            ident.pop("assigner", None)
            ref["identifier"] = ident
        ref["type"] = "Practitioner"
    put(ref, "display", display)
    return ref or None


def location(rep: Rep | None, ctx: MapContext) -> Reference | None:
    """PL → a logical Location reference named after its parts (facility … room, bed)."""
    name = location_name(rep)
    return {"display": name} if name else None


def organization(rep: Rep | None) -> Reference | None:
    """XON (name ^ ... ^ id) or HD (namespace ^ universal id) → a logical reference (no resource)."""
    if not rep:
        return None
    name = comp(rep, 1)
    org_id = comp(rep, 10) or comp(rep, 3)
    ref: Json = {}
    put(ref, "display", name)
    if org_id and org_id != name:
        ref["identifier"] = {"value": org_id}
    return ref or None


def coded_organization(rep: Rep | None) -> Reference | None:
    """CWE naming an organisation (RXA-17 manufacturer: MSD^Merck^MVX) → a logical reference (IG
    CWE[Organization]): the code is the organisation's identifier in the CWE's coding system, so
    an MVX manufacturer code stays searchable instead of shrinking to a display name."""
    if not rep:
        return None
    code, name = comp(rep, 1), comp(rep, 2)
    ref: Json = {}
    if code:
        ident: Json = {}
        put(ident, "system", tables.coding_system(comp(rep, 3)))
        ident["value"] = code
        ref["identifier"] = ident
    put(ref, "display", name or code)
    return ref or None
