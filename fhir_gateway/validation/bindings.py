"""Terminology checks: bound value sets, and Codings against the shipped code systems.

Binding strength decides the severity (https://hl7.org/fhir/R4/terminologies.html#strength):
required → error, extensible → warning, preferred → information; example bindings are not checked.
A value set that could not be expanded when the definitions were compiled (it draws on SNOMED CT,
LOINC, UCUM, ISO or IETF code systems that are not shipped) is reported as "not checked", so a
clean result never pretends to a check that did not happen.

Any Coding whose system is a shipped, complete code system must use one of its codes, and a display,
when given, must be one the code system knows (ignoring case and spacing), as the HL7 validator does.
"""

from __future__ import annotations

from typing import Any

from fhir_gateway.validation.loader import Binding, code_system, not_expanded, value_set, value_set_urls
from fhir_gateway.validation.walk import Walk

BINDABLE_PRIMITIVES = frozenset({"code", "string", "uri"})
BINDABLE_COMPLEX = frozenset({"Coding", "CodeableConcept"})
_SEVERITY = {"required": "error", "extensible": "warning", "preferred": "information"}
_VERB = {"required": "is required", "extensible": "should come", "preferred": "is recommended"}


def _codes(type_name: str, value: Any) -> list[tuple[str | None, str]] | None:
    """(system, code) pairs the value offers; None when it offers none (a CodeableConcept with text only)."""
    if type_name in BINDABLE_PRIMITIVES:
        return [(None, value)] if isinstance(value, str) else None
    codings = [value] if type_name == "Coding" else value.get("coding")
    if not isinstance(codings, list):
        return None
    pairs: list[tuple[str | None, str]] = []
    for coding in codings:
        if isinstance(coding, dict) and isinstance(coding.get("code"), str):
            system = coding.get("system")
            pairs.append((system if isinstance(system, str) else "", coding["code"]))
    return pairs or None


def check(walk: Walk, binding: Binding, type_name: str, value: Any, expr: str) -> None:
    pairs = _codes(type_name, value)
    vs = value_set(binding.value_set)
    if vs is None:
        reason = not_expanded(binding.value_set) or "it is not available"
        walk.information(
            "not-supported",
            f"The code was not checked against the {binding.strength} value set "
            f"{binding.value_set}: {reason}",
            expr,
        )
        return
    if pairs is None:
        if binding.strength == "required" and type_name == "CodeableConcept":
            walk.error(
                "code-invalid",
                f"No code provided, and a code is required from the value set '{vs.name}' ({vs.url})",
                expr,
            )
        return
    if any(vs.contains(system, code) for system, code in pairs):
        return
    strength = binding.strength
    walk.add(
        _SEVERITY[strength],
        "code-invalid",
        f"The code provided is not in the value set '{vs.name}' ({vs.url}), and a code {_VERB[strength]} "
        f"from this value set",
        expr,
    )


def check_coding(walk: Walk, coding: dict[str, Any], expr: str) -> None:
    """A Coding on its own: a usable system, a code the system knows, a display that matches it."""
    system = coding.get("system")
    if not isinstance(system, str):
        return
    if ":" not in system:
        walk.error(
            "invalid", "Coding.system must be an absolute reference, not a local reference", f"{expr}.system"
        )
        return
    if system in value_set_urls():
        walk.error("invalid", "The Coding references a value set, not a code system", f"{expr}.system")
        return
    cs = code_system(system)
    code = coding.get("code")
    if cs is None or cs.content != "complete" or not isinstance(code, str):
        return
    known = cs.lookup(code)
    if known is None:
        walk.error("code-invalid", f"Unknown code '{code[:64]}' in the CodeSystem '{system}'", f"{expr}.code")
        return
    display = coding.get("display")
    if isinstance(display, str) and known:
        choices = [known] if isinstance(known, str) else known
        wanted = normal_display(display)
        if choices[0] and all(normal_display(choice) != wanted for choice in choices):
            walk.error(
                "invalid",
                f"Wrong Display Name for {system}#{code[:64]}. Valid display is '{choices[0]}'",
                f"{expr}.display",
            )


def normal_display(text: str) -> str:
    """A display as displays are compared: case and spacing aside."""
    return " ".join(text.lower().split())
