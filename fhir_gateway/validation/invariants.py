"""The FHIRPath constraints (invariants) of the R4 definitions, evaluated on the nodes the walk met.

Each expression is compiled once per process: to closures by fhirpath.py when it is in the fast
subset, else by fhirpathpy (with the R4 model, so choice elements and types resolve). A constraint
that cannot be compiled or evaluated becomes an information issue saying so — never an exception,
and never a silent pass.

Not evaluated here, on purpose:
- ele-1 and ext-1: structural, checked natively by structure.py;
- dom-2, dom-3, dom-4, dom-5: the contained-resource rules, checked natively by references.py
  (dom-3's FHIRPath walks all descendants; the HL7 Java validator also implements it natively);
- txt-1, txt-2: `htmlChecks()` is not a FHIRPath function any engine implements; narrative.py does
  the xhtml checks instead (the Java validator also replaces them with its own xhtml checks);
- dom-r4b: an R4B addition about R4B-only resource types, vacuous for R4 content.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog

from fhir_gateway.validation import fhirpath
from fhir_gateway.validation.loader import Constraint
from fhir_gateway.validation.walk import Scope, Walk

log = structlog.get_logger("fhir_gateway.validation")

NATIVE = frozenset(
    {"ele-1", "ext-1", "ref-1", "dom-2", "dom-3", "dom-4", "dom-5", "txt-1", "txt-2", "dom-r4b"}
)
Evaluator = Callable[[Any, dict[str, Any], str], list[Any]]


class _Broken:
    """Stands for an expression no engine here can compile."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@functools.cache
def _fhirpathpy_model() -> dict[str, Any]:
    from fhirpathpy.models import models

    model: dict[str, Any] = models["r4"]
    return model


def _no_trace(*_args: Any) -> None:
    return None


@functools.cache
def _slow(expression: str) -> Any:
    """fhirpathpy's compiled form, or _Broken."""
    import fhirpathpy

    try:
        # trace() would print to stdout, and resources may hold PHI: send it nowhere
        return fhirpathpy.compile(expression, _fhirpathpy_model(), {"traceFn": _no_trace})
    except Exception as exc:  # the parser raises assorted exception types
        return _Broken(type(exc).__name__)


@functools.cache
def _fast(expression: str) -> fhirpath.Fn | None:
    try:
        return fhirpath.compile_expression(expression)
    except fhirpath.Unsupported:
        return None


def evaluate(expression: str, node: Any, base: str, scope: Scope) -> list[Any]:
    """The FHIRPath result on `node` (whose definition path or type is `base`); raises on failure."""
    root = scope
    while root.parent is not None and root.contained:
        root = root.parent
    fast = _fast(expression)
    if fast is not None:
        env = {"resource": scope.resource, "rootResource": root.resource, "context": node, "$this": node}
        try:
            return fast([node], env)
        except fhirpath.Fallback:
            pass
    slow = _slow(expression)
    if isinstance(slow, _Broken):
        raise ValueError(f"cannot compile ({slow.reason})")
    from fhirpathpy.engine.nodes import ResourceNode

    context = {"resource": scope.resource, "rootResource": root.resource}
    result: list[Any] = slow(ResourceNode.create_node(node, base), context)  # type: ignore[no-untyped-call]
    return result


def _passes(result: list[Any]) -> bool:
    """A constraint fails only on a definite false; an empty result is not a failure."""
    return not (len(result) == 1 and result[0] is False)


def run(walk: Walk) -> None:
    for task in walk.tasks:
        for constraint in task.constraints:
            if constraint.key in NATIVE:
                continue
            _run_one(walk, constraint, task.node, task.base, task.expression, task.scope)


def _run_one(walk: Walk, constraint: Constraint, node: Any, base: str, expression: str, scope: Scope) -> None:
    if constraint.key == "dom-6":  # text.`div`.exists(), natively: it runs on every resource
        text = node.get("text") if isinstance(node, dict) else None
        ok = isinstance(text, dict) and "div" in text
        result: list[Any] = [ok]
    else:
        try:
            result = evaluate(constraint.expression, node, base, scope)
        except Exception as exc:  # an engine failure must not fail the validation
            log.debug("invariant_not_evaluated", key=constraint.key, error=type(exc).__name__)
            walk.information(
                "informational",
                f"Constraint {constraint.key} could not be evaluated ({type(exc).__name__}); not checked",
                expression,
            )
            return
    if _passes(result):
        return
    severity = "error" if constraint.severity == "error" else "warning"
    suffix = " (Best Practice Recommendation)" if severity == "warning" else ""
    walk.add(
        severity,
        "invariant",
        f"Constraint failed: {constraint.key}: '{constraint.human}'{suffix}",
        expression,
    )
