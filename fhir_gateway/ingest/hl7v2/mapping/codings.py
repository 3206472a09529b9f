"""The last step of every mapping: each Coding in a code system the gateway ships, made true to it.

Senders fill HL7's user-defined tables (0023 admit source, 0203 identifier type, 0069 hospital
service …) with local values, and write their own text in CWE.2. Put under the HL7 table's system
unchanged, a local code is an unknown code of that system and the sender's text a wrong display:
errors for any FHIR validator (ours and the HL7 reference one alike) on data we wrote. So, for a
system whose content the gateway knows completely (terminology/codesystems.json):

- a code the system lacks keeps its code and display but not the system (it is the site's value,
  not HL7's);
- a known code's display becomes the system's own; the sender's text, when it differs, becomes the
  CodeableConcept's text if that has none, so nothing the sender wrote is lost.

Codings of other systems (LOINC, SNOMED CT, local ones) are left as they are.
"""

from __future__ import annotations

from typing import Any

from fhir_gateway.ingest.hl7v2.mapping.context import MapContext
from fhir_gateway.validation.bindings import normal_display
from fhir_gateway.validation.loader import code_system


def settle_codings(ctx: MapContext) -> None:
    for entry in ctx.entries.values():
        _walk(entry.resource)


def _walk(node: Any) -> None:
    if isinstance(node, dict):
        codings = node.get("coding")
        if isinstance(codings, list):
            for coding in codings:
                replaced = _settle(coding) if isinstance(coding, dict) else None
                if replaced and "text" not in node:
                    node["text"] = replaced
        elif "system" in node and "code" in node:
            _settle(node)
        for key, value in node.items():
            if key != "coding" and isinstance(value, dict | list):  # codings: settled just above
                _walk(value)
    elif isinstance(node, list):
        for item in node:
            _walk(item)


def _settle(coding: dict[str, Any]) -> str | None:
    """Settle one Coding in place; the sender's display when the official one replaced it."""
    system, code = coding.get("system"), coding.get("code")
    if not isinstance(system, str) or not isinstance(code, str):
        return None
    known_system = code_system(system)
    if known_system is None or known_system.content != "complete":
        return None
    known = known_system.lookup(code)
    if known is None:
        del coding["system"]
        return None
    choices = [known] if isinstance(known, str) else list(known)
    display = coding.get("display")
    if (
        not choices[0]
        or not isinstance(display, str)
        or normal_display(display) in map(normal_display, choices)
    ):
        return None  # no display is added where the sender gave none; one that matches stays
    coding["display"] = choices[0]
    return display
