"""Reference handling inside a resource: finding and rewriting `Reference.reference` values.

A transaction may refer to its own entries by `urn:uuid:` fullUrl or by a conditional reference
(`Patient?identifier=...`); both are rewritten to `Type/id` before anything is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any


def iter_references(node: Any) -> Iterator[dict[str, Any]]:
    """Every JSON object with a string `reference` key, depth first (contained resources included)."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            if isinstance(value, (dict, list)):
                yield from iter_references(value)
    elif isinstance(node, list):
        for item in node:
            yield from iter_references(item)


def rewrite_references(resource: dict[str, Any], rewrite: Callable[[str], str | None]) -> None:
    """Replace each reference for which `rewrite` returns a new value (None keeps it)."""
    for ref in iter_references(resource):
        new = rewrite(ref["reference"])
        if new is not None:
            ref["reference"] = new
