"""SMART v2 scopes narrowed by a query (`patient/Observation.rs?category=...|laboratory`) as filters.

App Launch 2.0 "Finer-grained resource constraints using search parameters": such a scope grants
its interactions only on resources that match the query, written in the search syntax of the
scope's type; several scopes for one type are ORed. The policy decision point applies the filter
in both of its forms, so a resource outside it is treated like a hidden one everywhere (404 on
read, never counted, paged, included or reached through `$everything`):

* `ScopeFilter.admits(res_id, rows)` for a resource in hand, from its index rows,
* `ScopeFilter.admits_sql(res, res_type)` as a condition on a `resources` row, built by the very
  search code (store/search/query.py) that answers the same query as a search.

Only what both forms answer identically is accepted: token parameters (and `_id`) without a
modifier, on a named type, on a read/search scope, and not on a parameter the server encrypts
(its index holds blind values the per-resource form cannot recompute). Anything else is refused
when the token is verified (`UnsupportedScope`, 403 naming the scope's parameter, never its value),
because ignoring the query would widen the grant and dropping the scope would hide why access fails.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from functools import lru_cache

from sqlalchemy import ColumnElement, and_
from sqlalchemy.sql import FromClause

from fhir_gateway.auth.scopes import Scope, parse_scope
from fhir_gateway.crypto.blind_index import encrypted_params
from fhir_gateway.crypto.config import CryptoSettings
from fhir_gateway.crypto.fields import PhiFields
from fhir_gateway.crypto.service import crypto_settings
from fhir_gateway.errors import Forbidden
from fhir_gateway.settings import Settings
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.conditions import token_matches
from fhir_gateway.store.search.criteria import Match, Unsupported, parse_criterion
from fhir_gateway.store.search.query import criterion
from fhir_gateway.store.search.rows import IndexRows

READ_ONLY = frozenset({"read", "search"})
# Resource type → codes of its encrypted (blind-indexed) search parameters.
EncryptedParams = Callable[[str], Collection[str]]


class UnsupportedScope(Forbidden):
    """A scope whose query this server cannot enforce exactly (so it must not grant anything)."""

    code = "not-supported"


@dataclass(frozen=True, slots=True)
class ScopeFilter:
    """One narrowed scope: the resources of `res_type` matching every one of `criteria`."""

    scope: str
    res_type: str
    criteria: tuple[Match, ...]

    def admits(self, res_id: str, rows: IndexRows) -> bool:
        return all(_matches(c, res_id, rows) for c in self.criteria)

    def admits_sql(self, res: FromClause) -> ColumnElement[bool]:
        return and_(*(criterion(c, res, res_type=self.res_type) for c in self.criteria))


def _matches(crit: Match, res_id: str, rows: IndexRows) -> bool:
    tokens = [val for val in crit.values if isinstance(val, v.TokenValue)]
    if crit.code == "_id":
        return any(val.code == res_id for val in tokens)
    return any(
        row.param == crit.code and token_matches(row.system, row.code, val)
        for row in rows.tokens
        for val in tokens
    )


def no_encryption(_res_type: str) -> Collection[str]:
    return ()


def encrypted_for(settings: Settings) -> EncryptedParams:
    """The encrypted search parameters per type under these settings (none with crypto off)."""
    return _encrypted_for(crypto_settings(settings))


@lru_cache(maxsize=8)
def _encrypted_for(config: CryptoSettings) -> EncryptedParams:
    if not config.enabled:
        return no_encryption
    fields = PhiFields.configured(config.phi_paths)
    return lambda res_type: encrypted_params(res_type, fields)


def scope_filter(scope: Scope, encrypted: EncryptedParams = no_encryption) -> ScopeFilter:
    """The filter a narrowed scope stands for; UnsupportedScope when it cannot be enforced exactly."""
    return _compiled(scope, frozenset(encrypted(scope.resource_type)))


@lru_cache(maxsize=1024)
def _compiled(scope: Scope, encrypted: frozenset[str]) -> ScopeFilter:
    if scope.resource_type == "*":
        raise _refused(scope, "a query on every resource type (*)")
    if not scope.interactions <= READ_ONLY:
        raise _refused(scope, "a query on a scope that grants writes (only r and s may be narrowed)")
    return ScopeFilter(
        scope.raw, scope.resource_type, tuple(_criterion(scope, n, t, encrypted) for n, t in scope.query)
    )


def _criterion(scope: Scope, name: str, text: str, encrypted: frozenset[str]) -> Match:
    try:
        found = parse_criterion(scope.resource_type, name, text)
    except (Unsupported, ValueError):
        raise _refused(scope, f"the parameter '{name}' or its value") from None
    if not isinstance(found, Match) or found.type != "token" or found.modifier is not None:
        raise _refused(scope, f"the parameter '{name}' (only token parameters without a modifier)")
    if found.code in encrypted:
        raise _refused(scope, f"the parameter '{name}' (it is encrypted)")
    return found


def _refused(scope: Scope, what: str) -> UnsupportedScope:
    head = scope.raw.partition("?")[0]
    return UnsupportedScope(
        f"The access token's scope {head}?… cannot be enforced: this server does not support {what} "
        "in a scope's query",
        expression="scope",
    )


def check_scopes(scopes: Iterable[str], encrypted: EncryptedParams = no_encryption) -> None:
    """Refuse (UnsupportedScope) a token with any narrowed scope that cannot be enforced exactly."""
    for text in scopes:
        for word in text.split():
            scope = parse_scope(word)
            if scope is not None and scope.query:
                scope_filter(scope, encrypted)
