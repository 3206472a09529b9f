"""Extensions used in an instance, against their definitions: the R4 core ones (compiled into
`profiles/extensions.json` by tools/compile_definitions.py) and StructureDefinitions the caller
supplies (the server's stored ones, for `$validate`).

Like the HL7 Java reference validator, an extension whose definition cannot be found is an error
("could not be found so is not allowed here"), except DICOM's (nema.org), the FHIR tooling ones and
the cross-version `http://hl7.org/fhir/N.N/StructureDefinition/extension-*` URLs, which that
validator also accepts unseen. The write pipeline passes `unknown="warning"`: a hospital's feed
carrying, say, a national extension whose definition was never loaded must still be stored (the
warning reaches the response), where `$validate` answers as the reference validator would.

For a known extension: a value of a type the definition does not allow, a value on a complex
extension (one that only nests extensions), and a modifier extension in `extension` or a plain one
in `modifierExtension`, are errors. The definition's contexts (where it may be used) are not checked.
Nested extensions of a complex extension have relative urls and are not looked up.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

from fhir_gateway.validation.loader import PRIMITIVE_TYPES, read_table
from fhir_gateway.validation.walk import Walk

_CROSS_VERSION = re.compile(r"^http://hl7\.org/fhir/\d\.\d/StructureDefinition/extension-")
_TOOLING = ("http://hl7.org/fhir/tools/StructureDefinition/",)


# Extensions the gateway itself writes beyond core R4, known to its validator so that a client
# echoing a read resource back (meta and all) is not warned about them: its own marks (authority
# claim, PHI seal marker, consent masking, change-feed positions, DICOM blob digest), the
# v2-to-FHIR IG's OBX-19 extension (core in R5) and US Core race/ethnicity (PID-10/22). Their values
# are not type-checked here.
PRODUCT = frozenset(
    {
        "http://fhir-gateway.dev/fhir/StructureDefinition/authority-claim",
        "http://fhir-gateway.dev/fhir/StructureDefinition/encrypted-elements",
        "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-position",
        "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-cursor",
        "http://fhir-gateway.org/StructureDefinition/consent-masked-element",
        "urn:fhir-gateway:dicom-instance-blob",
        "http://hl7.org/fhir/StructureDefinition/observation-analysis-date-time",
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",  # PID-10
        "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",  # PID-22
    }
)


@functools.cache
def core() -> dict[str, dict[str, Any]]:
    """url -> {"value": allowed value types ([] = complex), "modifier": bool, "context": [...]}."""
    table: dict[str, dict[str, Any]] = read_table("profiles/extensions.json")["extensions"]
    return table


def check(walk: Walk, supplied: Mapping[str, Mapping[str, Any]], unknown: str) -> None:
    """Each extension the structure walk met; `unknown` is the severity for an unknown one."""
    definitions = core()
    for ext, expr, as_modifier in walk.extensions:
        url = ext.get("url")
        if not isinstance(url, str) or ":" not in url or "|" in url:
            continue  # nested (relative), missing or versioned: the structure pass said what it had to
        definition = definitions.get(url)
        if definition is None:
            if not _known_elsewhere(url, supplied):
                walk.add(
                    unknown,
                    "structure",
                    f"The extension {url} could not be found so is not allowed here",
                    expr,
                )
            continue
        if definition["modifier"] != as_modifier:
            walk.error("structure", _modifier_mismatch(as_modifier), expr)
        for key in ext:
            if key.startswith("value"):
                _check_value(walk, url, definition["value"], _value_type(key[5:]), expr)


def unresolved_urls(node: Any) -> list[str]:
    """The absolute extension urls in `node` that are neither core nor accepted unseen: the ones a
    server should look up among its stored StructureDefinitions before validating."""
    found: dict[str, None] = {}
    _collect_urls(node, found)
    return [url for url in found if url not in core() and not _known_elsewhere(url, {})]


def _collect_urls(node: Any, found: dict[str, None]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("extension", "modifierExtension") and isinstance(value, list):
                for ext in value:
                    url = ext.get("url") if isinstance(ext, dict) else None
                    if isinstance(url, str) and ":" in url:
                        found[url] = None
            _collect_urls(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_urls(item, found)


def _known_elsewhere(url: str, supplied: Mapping[str, Mapping[str, Any]]) -> bool:
    if url in PRODUCT or "nema.org" in url or url.startswith(_TOOLING) or _CROSS_VERSION.match(url):
        return True
    definition = supplied.get(url)
    return definition is not None and definition.get("type") == "Extension"


def _check_value(walk: Walk, url: str, allowed: list[str], found: str, expr: str) -> None:
    if not allowed:
        walk.error(
            "structure",
            f"The extension {url} is a complex extension: it has extensions, not a value",
            f"{expr}.value.ofType({found})",
        )
    elif found not in allowed:
        walk.error(
            "structure",
            f"The type '{found}' is not allowed for the extension {url} (allowed: {', '.join(allowed)})",
            f"{expr}.value.ofType({found})",
        )


def _value_type(suffix: str) -> str:
    """`String` (of valueString) -> `string`; `CodeableConcept` stays."""
    lowered = suffix[:1].lower() + suffix[1:]
    return lowered if lowered in PRIMITIVE_TYPES else suffix


def _modifier_mismatch(as_modifier: bool) -> str:
    labelled, underlying = ("is", "is not") if as_modifier else ("is not", "is")
    return (
        f"Extension modifier mismatch: the extension element {labelled} labelled as a modifier, "
        f"but the underlying extension {underlying}"
    )
