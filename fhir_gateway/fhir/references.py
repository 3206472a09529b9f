"""Reference handling inside a resource: finding and rewriting `Reference.reference` values.

A transaction may refer to its own entries by `urn:uuid:` fullUrl or by a conditional reference
(`Patient?identifier=...`); both are rewritten to `Type/id` before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def iter_references(node: Any) -> list[dict[str, Any]]:
    """Every JSON object with a string `reference` key, depth first (contained resources included).

    A list filled by plain recursion rather than nested generators, whose `yield from` passes each
    reference up through every level above it: this runs on every written resource.
    """
    found: list[dict[str, Any]] = []
    _collect_references(node, found)
    return found


def _collect_references(node: Any, found: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            found.append(node)
        values: Any = node.values()
    elif isinstance(node, list):
        values = node
    else:
        return
    for value in values:
        if isinstance(value, (dict, list)):
            _collect_references(value, found)


def rewrite_references(refs: list[dict[str, Any]], rewrite: Callable[[str], str | None]) -> None:
    """Replace each reference (from `iter_references`) for which `rewrite` gives a new value."""
    for ref in refs:
        new = rewrite(ref["reference"])
        if new is not None:
            ref["reference"] = new
