"""The state of one validation run: the issues found so far and the work left for the later passes.

The structure pass (structure.py) walks the JSON once; on its way it checks bindings, and it records
what later passes need so they never walk the JSON again: FHIRPath constraints with the node they
apply to (`Task`), and each resource it entered (`Scope`, for references and contained resources).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhir_gateway.errors import Issue
from fhir_gateway.validation.loader import Constraint

MAX_ISSUES = 500
MAX_DEPTH = 48  # JSON objects nested deeper than this are refused, not walked


@dataclass(slots=True)
class Scope:
    """A resource met during the walk: where it is, and its references (for references.py)."""

    resource: dict[str, Any]
    here: str  # the expression of the resource itself (`Bundle.entry[0].resource`)
    prefix: str  # what its elements' expressions start with (`Bundle.entry[0].resource/*Patient/1*/`)
    parent: Scope | None = None
    contained: bool = False
    references: list[tuple[str, str]] = field(default_factory=list)  # (reference text, expression)
    # `#id` values of canonical/uri/url elements: dom-3 counts them as references to a contained
    # resource (a ValueSet's `#cs` include), but they are not References, so ref-1 does not apply
    local_uris: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Task:
    """FHIRPath constraints to evaluate on one node."""

    constraints: tuple[Constraint, ...]
    node: Any
    base: str  # the node's type or definition path, for FHIRPath engines that need types
    expression: str
    scope: Scope


@dataclass(slots=True)
class Walk:
    issues: list[Issue] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)
    scopes: list[Scope] = field(default_factory=list)
    extensions: list[tuple[dict[str, Any], str, bool]] = field(default_factory=list)  # (ext, expr, modifier?)
    truncated: bool = False

    def add(self, severity: str, code: str, text: str, expression: str) -> None:
        if len(self.issues) >= MAX_ISSUES:
            self.truncated = True
            return
        self.issues.append(Issue(severity, code, text, [expression]))

    def error(self, code: str, text: str, expression: str) -> None:
        self.add("error", code, text, expression)

    def warning(self, code: str, text: str, expression: str) -> None:
        self.add("warning", code, text, expression)

    def information(self, code: str, text: str, expression: str) -> None:
        self.add("information", code, text, expression)
