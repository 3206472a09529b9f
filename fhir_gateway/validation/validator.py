"""`validate(resource) -> list[Issue]`: the R4 validator's one entry point.

Passes, in order, each adding OperationOutcome issues (severity, code, HL7-style expression):
1. structure.py — JSON structure, cardinality, primitives, bindings and Codings (one walk);
2. references.py — contained resources, local references, Bundle rules; canonical.py — canonical
   URLs that must be absolute;
3. narrative.py — xhtml basics of every Narrative met;
4. invariants.py — the FHIRPath constraints the walk collected (compiled once per process);
5. extensions.py — each extension against its definition (unknown ones: `unknown_extensions`);
6. profiles.py — `meta.profile` and the `profile` parameter, against StructureDefinitions given
   by the caller (the server's stored ones, or one posted with the request).

Valid means no issue of severity error or fatal. Bad input (not an object, unknown resourceType,
nesting too deep) gives issues, never an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fhir_gateway.errors import Issue
from fhir_gateway.validation import canonical, extensions, invariants, narrative, profiles, references
from fhir_gateway.validation.structure import walk_resource
from fhir_gateway.validation.walk import Walk

ERRORS = frozenset({"error", "fatal"})
MODES = frozenset({"create", "update", "delete", "profile"})


def validate(
    resource: Any,
    *,
    mode: str | None = None,
    profile: str | Iterable[str] | None = None,
    structure_definitions: Mapping[str, Mapping[str, Any]] | None = None,
    run_invariants: bool = True,
    unknown_extensions: str = "error",
) -> list[Issue]:
    """Every issue found in `resource` (a parsed JSON value).

    `mode` (the $validate parameter): `update` requires an id, `create` tolerates one.
    `profile`: canonical URL(s) to validate against besides `meta.profile`.
    `structure_definitions`: canonical URL -> StructureDefinition the caller can resolve profiles to.
    `run_invariants=False` skips the FHIRPath pass (for callers that only need the structure).
    `unknown_extensions`: the severity of an extension with no definition ("error", as the HL7
    reference validator reports it; the write pipeline asks for "warning").
    """
    walk = Walk()
    root = resource.get("resourceType") if isinstance(resource, dict) else None
    here = root if isinstance(root, str) and root.isidentifier() else "Resource"
    if walk_resource(walk, resource, here) is None:
        return walk.issues
    if mode == "update" and not resource.get("id"):
        walk.error("required", "A resource must have an id to be updated", here)
    references.check(walk)
    canonical.check(walk)
    narrative.check(walk)
    if run_invariants:
        invariants.run(walk)
    extensions.check(walk, structure_definitions or {}, unknown_extensions)
    wanted = [profile] if isinstance(profile, str) else list(profile or ())
    profiles.check(walk, resource, here, wanted, structure_definitions or {})
    if walk.truncated:
        walk.issues.append(
            Issue("information", "too-costly", "Too many issues; only the first ones are listed")
        )
    return walk.issues


def is_valid(issues: Iterable[Issue]) -> bool:
    return not any(issue.severity in ERRORS for issue in issues)
