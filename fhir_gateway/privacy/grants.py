"""From a RequestContext to the Grants the policy decision point applies.

Two inputs, intersected: the SMART scopes in the token (what the user authorised this client to
do) and the permissions of the user's roles (what the organisation lets the user do). A token
with no roles is limited by its scopes alone (a SMART client of an external IdP), and a context
with no scopes is allowed nothing. The `patient` launch context confines compartment data to that
patient when the scopes are patient-level. A SMART v2 scope narrowed by a query grants its type
only through that query's filter (privacy/scope_filter.py), unless another scope grants the type
whole. Hidden labels come from the clearance model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from fhir_gateway.audit.events import break_glass_policy
from fhir_gateway.auth.scopes import parse_scopes
from fhir_gateway.context import RequestContext
from fhir_gateway.privacy.access import AccessPolicy, ConsentSet, Grants
from fhir_gateway.privacy.breakglass import active_grant_keys
from fhir_gateway.privacy.clearance import clearance_for, clearance_policy
from fhir_gateway.privacy.consent import Provision, for_request
from fhir_gateway.privacy.consent_store import ConsentCache, InForce
from fhir_gateway.privacy.scope_filter import EncryptedParams, ScopeFilter, encrypted_for, scope_filter
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store

INTERACTIONS = ("read", "search", "create", "update", "delete")

# Role → interactions it may perform at all (config may narrow these later; seed roles).
CONSENT_BYPASS = frozenset({"admin", "privacy_officer"})
BREAK_GLASS_ROLE = "emergency_access"
ROLE_PERMISSIONS: dict[str, str] = {
    "admin": "cruds",
    "integration": "cruds",
    "clinician": "cruds",
    "nurse": "crus",
    "emergency_access": "rs",
    "privacy_officer": "rs",
    "researcher": "rs",
}


async def policy_for(ctx: RequestContext, settings: Settings, consents: ConsentCache) -> AccessPolicy:
    """The request's policy, compiled once and kept on the context (decisions are cached there)."""
    if ctx.policy is None:
        ctx.policy = AccessPolicy(await grants_for(ctx, settings, consents))
    return ctx.policy


async def grants_for(ctx: RequestContext, settings: Settings, consents: ConsentCache) -> Grants:
    if ctx.source != "rest" and ctx.subject == f"system:{ctx.source}":
        # The gateway's own work (a feed being applied, a CLI command): no end user to protect
        # data from; what it may write is governed by the pipeline, and what it reads never leaves.
        return Grants.everything()
    grants = token_grants(ctx, settings)
    if CONSENT_BYPASS & set(ctx.roles):
        return grants  # admin and privacy officer see everything (and are audited)
    grants = await _with_break_glass(grants, ctx, consents.store)
    return await _with_consents(grants, ctx, settings, consents)


# The caller fields the token-derived Grants depend on (scopes, roles, launch patient, and the
# clearance inputs: roles, fhirUser, sub, purposeOfUse).
Caller = tuple[str | None, tuple[str, ...], tuple[str, ...], str | None, tuple[str, ...], str | None]
_TOKEN_GRANTS: dict[tuple[int, Caller], tuple[Settings, Grants]] = {}
TOKEN_GRANTS_KEPT = 4096  # distinct callers remembered; the memo starts afresh beyond that


def token_grants(ctx: RequestContext, settings: Settings) -> Grants:
    """The Grants a caller's token gives under `settings`, before break-glass and consents.

    A pure function of the token's claims and the settings, and most of a request's policy set-up
    (scope parsing, role permissions, clearance: 25 of 35 µs), so it is memoised per distinct
    caller: a client sends the same token for many requests. Grants are frozen and never edited
    once compiled (break-glass and consents `replace` them), so requests may share one. The
    settings object is kept with its entry, so its id cannot be reused while the entry lives.
    """
    caller: Caller = (ctx.subject, ctx.scopes, ctx.roles, ctx.patient, ctx.purpose_of_use, ctx.fhir_user)
    found = _TOKEN_GRANTS.get((id(settings), caller))
    if found is not None and found[0] is settings:
        return found[1]
    if len(_TOKEN_GRANTS) >= TOKEN_GRANTS_KEPT:
        _TOKEN_GRANTS.clear()
    grants = _compile_token_grants(ctx, settings)
    _TOKEN_GRANTS[(id(settings), caller)] = (settings, grants)
    return grants


def _compile_token_grants(ctx: RequestContext, settings: Settings) -> Grants:
    types, narrowed, patient_level = _scope_types(ctx.scopes, encrypted_for(settings))
    if ctx.roles:
        allowed = set("".join(ROLE_PERMISSIONS.get(r, "") for r in ctx.roles))
        for interaction in INTERACTIONS:
            if interaction[0] not in allowed:  # read→r, search→s, create→c, update→u, delete→d
                types[interaction] = frozenset()
    patient = ctx.patient if patient_level and ctx.patient else None
    clearance = clearance_for(ctx, policy=clearance_policy(settings))
    if clearance.sees_nothing or clearance.deidentified_only:
        # No clearance at all (unknown role, no purpose where one is required), or researchers, who
        # may only have de-identified data, which plain reads never are: nothing is readable.
        types["read"] = types["search"] = frozenset()
    hidden = clearance.hidden()
    exceptions = set(settings.privacy.break_glass_exceptions)
    return Grants(
        types,
        patient=patient,
        narrowed=narrowed,
        hidden=hidden,
        override_exceptions=frozenset(label for label in hidden if label[1] in exceptions),
    )


async def _with_break_glass(grants: Grants, ctx: RequestContext, store: Store) -> Grants:
    """The patients this caller's open `$break-glass` grants unlock (emergency_access role only)."""
    if BREAK_GLASS_ROLE not in ctx.roles or not ctx.subject:
        return grants
    active = await active_grant_keys(store, ctx.subject)
    if not active:
        return grants
    return replace(
        grants,
        override=frozenset(patient for _, patient in active),
        grant_ids=tuple(break_glass_policy(grant_id) for grant_id, _ in active),
    )


async def _with_consents(
    grants: Grants, ctx: RequestContext, settings: Settings, cache: ConsentCache
) -> Grants:
    default_deny = settings.privacy.consent_default == "deny"
    key = (ctx.fhir_user, ctx.roles, ctx.purpose_of_use, default_deny)

    def resolve(in_force: InForce, now: float) -> tuple[ResolvedConsents, float]:
        return _resolve_consents(in_force, ctx, now, default_deny=default_deny)

    resolved = await cache.resolved(key, time.time(), resolve)
    own = (
        {ctx.fhir_user.partition("/")[2]} if ctx.fhir_user and ctx.fhir_user.startswith("Patient/") else set()
    )
    return replace(
        grants,
        consents=resolved.consents,
        consented=resolved.consented,
        consent_default_deny=default_deny,
        consent_exempt=frozenset(own),
    )


@dataclass(frozen=True, slots=True)
class ResolvedConsents:
    """The consents in force that can matter to one caller, request side resolved (for_request)."""

    consents: ConsentSet
    consented: frozenset[str]  # patients with a consent in force


def _resolve_consents(
    in_force: InForce, ctx: RequestContext, now: float, *, default_deny: bool
) -> tuple[ResolvedConsents, float]:
    """The caller's resolved consents, and the time until which they stay as they are (the next
    boundary of a provision's period: the consents' own periods are the cache's to watch)."""
    resolved: list[tuple[str, str, Provision | None]] = []
    until = float("inf")
    for patient, consents in in_force.items():
        for pc in consents:
            until = min(until, _next_boundary(pc.root, now))
            tree = for_request(pc.root, ctx, now)
            if tree is not None and not (default_deny or _may_withhold(tree)):
                continue  # this consent can only permit, and permit is already the default
            if tree is None and not default_deny:
                continue
            resolved.append((patient, pc.consent_id, tree))
    return ResolvedConsents(ConsentSet(resolved), frozenset(in_force)), until


def _next_boundary(provision: Provision, now: float) -> float:
    """The first start or end of a period in this provision tree after `now` (inf if none)."""
    bounds = [b for b in provision.period or () if b > now]
    bounds += [_next_boundary(child, now) for child in provision.children]
    return min(bounds, default=float("inf"))


def _may_withhold(tree: Provision) -> bool:
    return tree.type == "deny" or bool(tree.masks) or any(_may_withhold(c) for c in tree.children)


def _scope_types(
    scopes: tuple[str, ...], encrypted: EncryptedParams
) -> tuple[dict[str, frozenset[str] | None], dict[str, tuple[ScopeFilter, ...]], bool]:
    """Per interaction, the types the scopes allow (None = all); the types readable only through
    scopes narrowed by a query, with their filters; and whether any scope is patient-level."""
    found: dict[str, set[str] | None] = {i: set() for i in INTERACTIONS}
    whole: dict[str, set[str] | None] = {i: set() for i in INTERACTIONS}  # granted without a query
    filters: dict[str, list[ScopeFilter]] = {}
    parsed = parse_scopes(scopes)
    for scope in parsed:
        if scope.query:
            filters.setdefault(scope.resource_type, []).append(scope_filter(scope, encrypted))
        for interaction in scope.interactions:
            for table in (found, whole) if not scope.query else (found,):
                current = table[interaction]
                if scope.resource_type == "*":
                    table[interaction] = None
                elif current is not None:
                    current.add(scope.resource_type)
    # read and search decide visibility together (the PDP's per-resource form has no interaction),
    # so a type is narrowed only when no scope grants either of them on it without a query.
    unnarrowed = whole["read"], whole["search"]
    narrowed = {t: tuple(fs) for t, fs in filters.items() if not any(u is None or t in u for u in unnarrowed)}
    types = {i: (None if t is None else frozenset(t)) for i, t in found.items()}
    return types, narrowed, any(scope.context == "patient" for scope in parsed)
