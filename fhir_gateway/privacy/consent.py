"""Consent evaluation: R4 Consent (scope patient-privacy) as an input to the policy decision point.

Written here because no Python library evaluates Consent provision trees. The rules (R4 Consent,
IHE PCF, DESIGN.md "Privacy model"):

* Only `active` consents with scope patient-privacy apply, and only inside `provision.period` and
  not before `dateTime`; anything else stops applying at once (consents are re-read at most
  `privacy.consent_cache_seconds` after a change made elsewhere, immediately after one made here).
* The root provision's type is the base policy (permit when absent). Each nested provision is an
  exception to its parent: its type defaults to the opposite of the parent's, and it applies only
  where all of its elements match (elements are ANDed; an empty element does not constrain).
* The deepest matching provision decides; among matching siblings, deny beats permit.
* Request-side elements (actor reference/role, purpose, action, period) are resolved once per
  request; resource-side elements (class, code, securityLabel, data) become conditions over the
  resource's index rows — evaluated in Python for one resource and as SQL for queries, from the
  same facts, so a hidden resource is never counted, included or matched.
* Several active consents for one patient: the most restrictive wins (a resource is hidden if any
  of them denies it). A patient who changes their mind marks the older Consent inactive; keeping
  the strictest of two live statements is the safe reading of a contradiction.
* No active consent: `privacy.consent_default` (permit for opt-out jurisdictions, deny for opt-in).
* Granular masking: a deny provision carrying the extension MASK_EXTENSION (valueString, a path
  such as `Patient.address`) does not hide the resource; it removes those elements, and the answer
  carries the REDACTED label instead of the original.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, false, not_, or_, true, tuple_
from sqlalchemy.sql import FromClause

from fhir_gateway.context import RequestContext
from fhir_gateway.fhir.dates import date_range
from fhir_gateway.fhir.json import Resource
from fhir_gateway.store.schema import idx_reference, idx_token
from fhir_gateway.store.search.rows import IndexRows

Effect = Literal["permit", "deny"]
Coding = tuple[str | None, str]  # (system or None = any system, code)

MASK_EXTENSION = "http://fhir-gateway.org/StructureDefinition/consent-masked-element"
READ_ACTIONS = frozenset({"access", "use", "disclose"})  # what reading data is, in consentaction terms
AUTHOR_PARAMS = ("author", "recorder", "performer", "requester", "asserter")
CODE_PARAMS = ("code",)


@dataclass(frozen=True, slots=True)
class Provision:
    type: Effect | None
    period: tuple[float, float] | None = None
    actor_refs: frozenset[str] = frozenset()
    actor_roles: frozenset[str] = frozenset()
    actions: frozenset[str] = frozenset()
    purposes: frozenset[str] = frozenset()
    labels: frozenset[Coding] = frozenset()
    classes: frozenset[str] = frozenset()
    codes: frozenset[Coding] = frozenset()
    data: tuple[tuple[str, str, str], ...] = ()  # (meaning, type, id)
    masks: tuple[str, ...] = ()
    children: tuple[Provision, ...] = ()


@dataclass(frozen=True, slots=True)
class PatientConsent:
    consent_id: str
    patient_id: str
    root: Provision
    period: tuple[float, float] | None = None
    not_before: float | None = None

    def in_force(self, now: float) -> bool:
        within = self.period is None or self.period[0] <= now < self.period[1]
        return within and (self.not_before is None or self.not_before <= now)


@dataclass(frozen=True, slots=True)
class Facts:
    """What consent conditions can test about one resource: its type, id and index rows."""

    res_type: str
    res_id: str
    rows: IndexRows


# ---- parsing --------------------------------------------------------------------------------------
def parse_consent(resource: Resource) -> PatientConsent | None:
    """The patient-privacy consent a Consent resource states, or None when it does not apply."""
    if resource.get("status") != "active" or not _is_privacy_scope(resource.get("scope")):
        return None
    patient = _reference_id(resource.get("patient"), "Patient")
    provision = resource.get("provision")
    if patient is None or not isinstance(provision, dict):
        return None
    root = _provision(provision, None)  # the base policy: the root's type, permit when unstated
    root = Provision(**{**_fields(root), "period": None})  # the root period is the consent's own
    stated = resource.get("dateTime")
    return PatientConsent(
        consent_id=str(resource.get("id", "")),
        patient_id=patient,
        root=root,
        period=_period(provision.get("period")),
        not_before=date_range(stated)[0] if isinstance(stated, str) else None,
    )


def _fields(p: Provision) -> dict[str, Any]:
    return {name: getattr(p, name) for name in Provision.__slots__}


def _is_privacy_scope(scope: Any) -> bool:
    codes = {c.get("code") for c in (scope or {}).get("coding", []) if isinstance(c, dict)}
    return not codes or "patient-privacy" in codes


def _provision(p: dict[str, Any], parent: Effect | None) -> Provision:
    stated = p.get("type")
    effect: Effect
    if stated in ("permit", "deny"):
        effect = stated
    elif parent is None:
        effect = "permit"
    else:
        effect = "deny" if parent == "permit" else "permit"
    children = tuple(_provision(c, effect) for c in p.get("provision", []) if isinstance(c, dict))
    actors = [a for a in p.get("actor", []) if isinstance(a, dict)]
    return Provision(
        type=effect,
        period=_period(p.get("period")),
        actor_refs=frozenset(
            ref for a in actors if (ref := (a.get("reference") or {}).get("reference")) is not None
        ),
        actor_roles=frozenset(c.lower() for a in actors for _, c in _codings(a.get("role"))),
        actions=frozenset(c for cc in p.get("action", []) for _, c in _codings(cc)),
        purposes=frozenset(c for _, c in _coding_list(p.get("purpose"))),
        labels=frozenset(_coding_list(p.get("securityLabel"))),
        classes=frozenset(c for _, c in _coding_list(p.get("class"))),
        codes=frozenset(c for cc in p.get("code", []) for c in _codings(cc)),
        data=tuple(
            (d.get("meaning", "instance"), *ref)
            for d in p.get("data", [])
            if isinstance(d, dict) and (ref := _split_reference(d.get("reference"))) is not None
        ),
        masks=tuple(
            str(e["valueString"])
            for e in p.get("extension", [])
            if isinstance(e, dict) and e.get("url") == MASK_EXTENSION and e.get("valueString")
        ),
        children=children,
    )


def _codings(concept: Any) -> list[Coding]:
    if not isinstance(concept, dict):
        return []
    return [
        (c.get("system"), c["code"])
        for c in concept.get("coding", [])
        if isinstance(c, dict) and c.get("code")
    ]


def _coding_list(items: Any) -> list[Coding]:
    return [(c.get("system"), c["code"]) for c in items or [] if isinstance(c, dict) and c.get("code")]


def _period(period: Any) -> tuple[float, float] | None:
    if not isinstance(period, dict) or not (period.get("start") or period.get("end")):
        return None
    low = date_range(period["start"])[0] if period.get("start") else float("-inf")
    high = date_range(period["end"])[1] if period.get("end") else float("inf")
    return low, high


def _split_reference(ref: Any) -> tuple[str, str] | None:
    text = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str) or text.count("/") < 1:
        return None
    res_type, _, res_id = text.rstrip("/").rpartition("/")
    return res_type.rpartition("/")[2], res_id.partition("/_history")[0]


def _reference_id(ref: Any, res_type: str) -> str | None:
    split = _split_reference(ref)
    return split[1] if split is not None and split[0] == res_type else None


# ---- the request side -----------------------------------------------------------------------------
def for_request(provision: Provision, ctx: RequestContext, now: float) -> Provision | None:
    """The provision with its request-side elements resolved: None where they do not hold."""
    if provision.period is not None and not provision.period[0] <= now < provision.period[1]:
        return None
    if provision.actor_refs or provision.actor_roles:
        by_ref = ctx.fhir_user is not None and ctx.fhir_user in provision.actor_refs
        by_role = bool(provision.actor_roles & {r.lower() for r in ctx.roles})
        if not (by_ref or by_role):
            return None
    if provision.purposes and not provision.purposes & set(ctx.purpose_of_use):
        return None
    if provision.actions and not provision.actions & READ_ACTIONS:
        return None
    children = tuple(c for c in (for_request(c, ctx, now) for c in provision.children) if c is not None)
    if len(children) == len(provision.children) and all(
        new is old for new, old in zip(children, provision.children, strict=True)
    ):
        return provision  # nothing dropped below: the provision as it is (no copy per request)
    return Provision(**{**_fields(provision), "children": children})


# ---- the resource side, in Python -----------------------------------------------------------------
def decide(root: Provision, facts: Facts) -> tuple[Effect, tuple[str, ...]]:
    """Effect of a request-resolved provision tree on one resource, and the elements to mask."""
    matching = [c for c in root.children if _matches(c, facts)]
    if not matching:
        effect = root.type or "permit"
        if effect == "deny" and root.masks:
            return "permit", root.masks
        return effect, ()
    results = [decide(c, facts) for c in matching]
    if any(effect == "deny" for effect, _ in results):
        return "deny", ()
    return "permit", tuple(m for _, masks in results for m in masks)


def matches_root(root: Provision, facts: Facts) -> bool:
    return _matches(root, facts)


def _matches(p: Provision, facts: Facts) -> bool:
    rows = facts.rows
    if p.classes and facts.res_type not in p.classes:
        return False
    if p.codes and not _has_token(rows, CODE_PARAMS, p.codes):
        return False
    if p.labels and not _has_token(rows, ("_security",), p.labels):
        return False
    return not p.data or any(_data_matches(d, facts) for d in p.data)


def _has_token(rows: IndexRows, params: Sequence[str], codings: frozenset[Coding]) -> bool:
    return any(
        t.param in params and t.code is not None and _coded(codings, t.system, t.code) for t in rows.tokens
    )


def _coded(codings: frozenset[Coding], system: str | None, code: str) -> bool:
    return (system, code) in codings or (None, code) in codings


def _data_matches(data: tuple[str, str, str], facts: Facts) -> bool:
    meaning, res_type, res_id = data
    if (facts.res_type, facts.res_id) == (res_type, res_id):
        return True
    params = AUTHOR_PARAMS if meaning == "authoredby" else None
    return meaning != "instance" and any(
        r.target_type == res_type and r.target_id == res_id and (params is None or r.param in params)
        for r in facts.rows.references
    )


# ---- the resource side, as SQL --------------------------------------------------------------------
def denied_sql(root: Provision, res: FromClause) -> ColumnElement[bool]:
    """Rows of `res` that the request-resolved tree denies (whole-resource denials only)."""
    children = [(_matches_sql(c, res), c) for c in root.children]
    if not children:
        return true() if root.type == "deny" and not root.masks else false()
    any_child = or_(*(m for m, _ in children))
    own = and_(not_(any_child), true()) if root.type == "deny" and not root.masks else false()
    return or_(own, *(and_(m, denied_sql(c, res)) for m, c in children))


def matches_root_sql(root: Provision, res: FromClause) -> ColumnElement[bool]:
    return _matches_sql(root, res)


def _matches_sql(p: Provision, res: FromClause) -> ColumnElement[bool]:
    conditions: list[ColumnElement[bool]] = []
    if p.classes:
        conditions.append(res.c.res_type.in_(sorted(p.classes)))
    if p.codes:
        conditions.append(_token_exists(res, CODE_PARAMS, p.codes))
    if p.labels:
        conditions.append(_token_exists(res, ("_security",), p.labels))
    if p.data:
        conditions.append(or_(*(_data_sql(d, res) for d in p.data)))
    return and_(true(), *conditions)


def _token_exists(res: FromClause, params: Sequence[str], codings: Iterable[Coding]) -> ColumnElement[bool]:
    tok = idx_token.alias()
    exact = sorted((s, c) for s, c in codings if s is not None)
    any_system = sorted(c for s, c in codings if s is None)
    match = or_(
        tuple_(tok.c.system, tok.c.code).in_(exact) if exact else false(),
        tok.c.code.in_(any_system) if any_system else false(),
    )
    return exists().where(tok.c.res_pk == res.c.pk, tok.c.param.in_(list(params)), match)


def _data_sql(data: tuple[str, str, str], res: FromClause) -> ColumnElement[bool]:
    meaning, res_type, res_id = data
    itself = and_(res.c.res_type == res_type, res.c.res_id == res_id)
    if meaning == "instance":
        return itself
    ref = idx_reference.alias()
    refers = [ref.c.res_pk == res.c.pk, ref.c.target_type == res_type, ref.c.target_id == res_id]
    if meaning == "authoredby":
        refers.append(ref.c.param.in_(AUTHOR_PARAMS))
    return or_(itself, exists().where(*refers))
