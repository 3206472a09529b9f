"""SMART on FHIR resource scopes (App Launch 2.0 "Scopes and Launch Context"), parsed once, matched purely.

Grammar accepted (anything else — `openid`, `fhirUser`, `launch/patient`, `offline_access`, a
misspelt scope — grants no data access and parses to None):

    v2:  (patient|user|system)/(Type|*).<cruds>[?param=value&...]   letters in that order, ≥1
    v1:  (patient|user|system)/(Type|*).(read|write|*)              read = r+s, write = c+u+d
    v1 without a context:  (Type|*).(read|write|*)                  applies in every context

A v2 scope may end with a query (`patient/Observation.rs?category=laboratory`): it narrows the scope
to resources that match that search. The pairs are kept on the Scope; privacy/scope_filter.py turns
them into the policy decision point's filter (or refuses the token when it cannot). `allows` answers
only "is this interaction on this type granted at all" and `granting` returns the scopes that grant
it, so a caller can see whether every one of them is narrowed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal
from urllib.parse import parse_qsl

Context = Literal["patient", "user", "system"]
Interaction = Literal["create", "read", "update", "delete", "search"]

# SMART v2 permission letters, in the order the grammar requires them.
LETTERS: dict[str, Interaction] = {
    "c": "create",
    "r": "read",
    "u": "update",
    "d": "delete",
    "s": "search",
}
V1_PERMISSIONS: dict[str, frozenset[Interaction]] = {
    "read": frozenset({"read", "search"}),
    "write": frozenset({"create", "update", "delete"}),
    "*": frozenset(LETTERS.values()),
}
# Interactions callers may name that are a kind of one of the five (http.html).
ALIASES: dict[str, Interaction] = {
    **{letter: name for letter, name in LETTERS.items()},
    **{name: name for name in LETTERS.values()},
    "vread": "read",
    "history": "read",
    "patch": "update",
}

_SCOPE = re.compile(
    r"(?:(?P<context>patient|user|system)/)?(?P<type>\*|[A-Z][A-Za-z]{0,63})"
    r"\.(?P<perm>read|write|\*|c?r?u?d?s?)(?:\?(?P<query>.*))?"
)


@dataclass(frozen=True, slots=True)
class Scope:
    """One resource scope: who-context, type (or "*"), the interactions it grants, any query."""

    raw: str
    context: Context | None  # None: a context-less v1 scope such as `*.read`
    resource_type: str
    interactions: frozenset[Interaction]
    query: tuple[tuple[str, str], ...] = ()
    version: Literal[1, 2] = 2

    def covers(self, context: str | None, res_type: str, interaction: Interaction) -> bool:
        return (
            interaction in self.interactions
            and self.resource_type in ("*", res_type)
            and (context is None or self.context is None or self.context == context)
        )


@lru_cache(maxsize=4096)
def parse_scope(text: str) -> Scope | None:
    """The resource scope `text` denotes, or None when it is not one (or is malformed)."""
    match = _SCOPE.fullmatch(text.strip())
    if match is None:
        return None
    perm, query_text = match["perm"], match["query"]
    version: Literal[1, 2]
    if perm in V1_PERMISSIONS:
        if query_text is not None:
            return None  # queries are a v2 feature
        interactions, version = V1_PERMISSIONS[perm], 1
    elif perm:
        interactions, version = frozenset(LETTERS[letter] for letter in perm), 2
    else:
        return None  # `patient/Observation.` grants nothing
    if match["context"] is None and version == 2:
        return None  # v2 scopes always name their context
    query: tuple[tuple[str, str], ...] = ()
    if query_text is not None:
        query = tuple(parse_qsl(query_text, keep_blank_values=True))
        if not query or any(not name for name, _ in query):
            return None
    context: Context | None = match["context"]  # type: ignore[assignment]
    return Scope(text.strip(), context, match["type"], interactions, query, version)


def parse_scopes(scopes: str | Iterable[str]) -> tuple[Scope, ...]:
    """The resource scopes in a space-separated string or a list; other scopes are dropped."""
    items = scopes.split() if isinstance(scopes, str) else [w for s in scopes for w in s.split()]
    return tuple(scope for item in items if (scope := parse_scope(item)) is not None)


def interaction_of(name: str) -> Interaction:
    """`read`, `r`, `vread`, `history`, `patch` ... as one of the five SMART interactions."""
    try:
        return ALIASES[name]
    except KeyError:
        raise ValueError(
            f"unknown interaction {name!r}: use create, read, update, delete or search"
        ) from None


def _as_scopes(scopes: str | Iterable[str | Scope]) -> list[Scope]:
    if isinstance(scopes, str):
        return list(parse_scopes(scopes))
    found: list[Scope] = []
    for item in scopes:
        found.extend([item] if isinstance(item, Scope) else parse_scopes(item))
    return found


def granting(
    scopes: str | Iterable[str | Scope], context: str | None, res_type: str, interaction: str
) -> tuple[Scope, ...]:
    """The scopes that grant `interaction` on `res_type` in `context` (None = any context)."""
    wanted = interaction_of(interaction)
    return tuple(s for s in _as_scopes(scopes) if s.covers(context, res_type, wanted))


def allows(scopes: str | Iterable[str | Scope], context: str | None, res_type: str, interaction: str) -> bool:
    """Whether any scope grants `interaction` on `res_type` (possibly narrowed by a query)."""
    return bool(granting(scopes, context, res_type, interaction))
