"""The policy decision point: what one caller may see and do, decided in one place.

Every read path asks this module, never its own rules: REST read/vread, search (as SQL, so totals,
paging, chains, `_has` and `_include` only ever meet visible rows), history, batch/transaction GET
entries, conditional operations and `$everything`. A request's `AccessPolicy` is compiled once from
its RequestContext (the "grants": scope permissions, patient context, hidden security labels) and
then answers two equivalent questions:

* `decide(res_type, rows)` → `Decision` for one resource in hand (read, vread, history entries),
* `visible(table)` → the same rule as a SQL condition, for queries.

Both read the same facts — the resource's index rows (`_security` tokens, `_compartment`
references, the tokens a narrowed SMART scope's query names) — so they cannot drift apart; tests
check them against each other. Consent and break-glass (privacy/consent.py, privacy/breakglass.py)
add their inputs to this same policy.

Deny semantics. A caller without permission for a resource type gets 403 for it (that reveals
nothing about any resource). A resource hidden by labels, compartment or consent is reported
exactly like a missing one (404, not counted, not included), so there is no existence oracle.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import ColumnElement, and_, exists, false, not_, or_, true, tuple_
from sqlalchemy.sql import FromClause

from fhir_gateway.errors import Forbidden
from fhir_gateway.privacy import consent
from fhir_gateway.privacy.compartment import COMPARTMENT_PARAM, is_member_type, member_params, patients_of
from fhir_gateway.privacy.consent import Provision
from fhir_gateway.privacy.scope_filter import ScopeFilter
from fhir_gateway.store.schema import idx_reference, idx_token
from fhir_gateway.store.search.rows import IndexRows

Interaction = Literal["read", "search", "create", "update", "delete"]
Label = tuple[str, str]  # (system, code) of a meta.security coding
SECURITY_PARAM = "_security"


ConsentEntry = tuple[str, str, Provision | None]  # (patient, consent id, request-resolved tree)


class ConsentSet:
    """The consents that can matter to a caller, as (patient, consent id, tree) in load order, and
    indexed by patient: a decision looks only at its resource's patients' consents, where a scan
    of every consent in force made each decision linear in the number of patients with one."""

    __slots__ = ("by_patient", "entries")

    def __init__(self, entries: Iterable[ConsentEntry]) -> None:
        self.entries = tuple(entries)
        by_patient: dict[str, list[tuple[str, Provision | None]]] = {}
        for patient, consent_id, tree in self.entries:
            by_patient.setdefault(patient, []).append((consent_id, tree))
        self.by_patient: Mapping[str, tuple[tuple[str, Provision | None], ...]] = {
            patient: tuple(found) for patient, found in by_patient.items()
        }

    def of(self, patient: str) -> tuple[tuple[str, Provision | None], ...]:
        return self.by_patient.get(patient, ())

    def __iter__(self) -> Iterator[ConsentEntry]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:  # equal to its entries as a tuple, too
        if isinstance(other, ConsentSet):
            return other.entries == self.entries
        return isinstance(other, tuple) and other == self.entries

    def __hash__(self) -> int:
        return hash(self.entries)

    def __repr__(self) -> str:
        return f"ConsentSet({self.entries!r})"


@dataclass(frozen=True, slots=True)
class Grants:
    """What a caller is entitled to, independent of any particular resource.

    `types[interaction]` is the set of resource types allowed for it, or None for every type.
    `narrowed` maps a type readable only through SMART v2 scopes with a query to those scopes'
    filters (ORed): of that type, the caller sees only resources one of them admits.
    `patient` confines compartment resource types to that patient's compartment.
    `hidden` are the security labels the caller is not cleared for.
    `consents` are the patients' consents with their request-side elements already resolved for
    this caller (None: that consent says nothing about this request, so the default applies);
    `consent_default_deny` hides the data of patients without any consent in force.
    `override` are the patients a break-glass grant opens (labels and consents no longer hide their
    data), except data carrying one of `override_exceptions`.
    """

    types: dict[str, frozenset[str] | None]
    patient: str | None = None
    narrowed: dict[str, tuple[ScopeFilter, ...]] = field(default_factory=dict)
    hidden: frozenset[Label] = frozenset()
    consents: ConsentSet = field(default_factory=lambda: ConsentSet(()))
    consented: frozenset[str] = frozenset()  # patients with a consent in force
    consent_default_deny: bool = False
    consent_exempt: frozenset[str] = frozenset()  # patients whose consents do not bind this caller
    override: frozenset[str] = frozenset()
    override_exceptions: frozenset[Label] = frozenset()
    grant_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.consents, ConsentSet):  # given as (patient, consent id, tree) triples
            object.__setattr__(self, "consents", ConsentSet(self.consents))

    @classmethod
    def everything(cls) -> Grants:
        return cls({i: None for i in ("read", "search", "create", "update", "delete")})


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one resource, with the rule that decided it (recorded in the AuditEvent).

    A permit may carry `masks`: element paths a consent withholds from this caller.
    """

    effect: Literal["permit", "deny"]
    reason: str
    masks: tuple[str, ...] = ()

    @property
    def permitted(self) -> bool:
        return self.effect == "permit"


PERMIT = Decision("permit", "granted")


@dataclass(slots=True)
class AccessPolicy:
    grants: Grants
    _decisions: dict[tuple[str, str, int], Decision] = field(default_factory=dict)

    # ---- type-level permissions ---------------------------------------------------------------
    def allows(self, res_type: str, interaction: Interaction) -> bool:
        allowed = self.grants.types.get(interaction, frozenset())
        return allowed is None or res_type in allowed

    def require(self, res_type: str, interaction: Interaction) -> None:
        if not self.allows(res_type, interaction):
            raise Forbidden(
                f"Your authorisation does not include {interaction} on {res_type}",
                expression=res_type,
                code="forbidden",
            )

    @property
    def restricted(self) -> bool:
        """Whether anything at all can be hidden from this caller (else queries skip the filter)."""
        g = self.grants
        return (
            g.patient is not None
            or bool(g.narrowed)
            or bool(g.hidden)
            or bool(g.consents)
            or g.consent_default_deny
            or any(t is not None for t in g.types.values())
        )

    # ---- one resource -------------------------------------------------------------------------
    def decide(self, res_type: str, res_id: str, version_id: int, rows: IndexRows) -> Decision:
        """Permit or deny reading one resource version, from its index rows (cached per request)."""
        key = (res_type, res_id, version_id)
        cached = self._decisions.get(key)
        if cached is None:
            cached = self._decisions[key] = self._decide(res_type, res_id, rows)
        return cached

    def _decide(self, res_type: str, res_id: str, rows: IndexRows) -> Decision:
        if not (self.allows(res_type, "read") or self.allows(res_type, "search")):
            return Decision("deny", "scope")
        g = self.grants
        filters = g.narrowed.get(res_type)
        if filters is not None and not any(f.admits(res_id, rows) for f in filters):
            return Decision("deny", "scope-query")
        patients = patients_of(rows)
        if g.patient is not None and is_member_type(res_type) and g.patient not in patients:
            return Decision("deny", "compartment")
        labels = {(t.system, t.code) for t in rows.tokens if t.param == SECURITY_PARAM}
        opened = bool(patients & g.override) and not labels & g.override_exceptions
        if labels & g.hidden and not opened:
            return Decision("deny", "label:" + ",".join(sorted(c or "" for _, c in labels & g.hidden)))
        if opened:
            return Decision("permit", "break-glass:" + ",".join(g.grant_ids))
        masks: list[str] = []
        facts = consent.Facts(res_type, res_id, rows)
        for patient in sorted(patients - g.consent_exempt):
            for consent_id, tree in g.consents.of(patient):
                if tree is None or not consent.matches_root(tree, facts):
                    if g.consent_default_deny:
                        return Decision("deny", "consent-default")
                    continue
                effect, masked = consent.decide(tree, facts)
                if effect == "deny":
                    return Decision("deny", f"consent:Consent/{consent_id}")
                masks.extend(masked)
        if g.consent_default_deny and patients - g.consented - g.consent_exempt:
            return Decision("deny", "consent-default")
        return Decision("permit", "masked" if masks else "granted", tuple(masks))

    # ---- the same rule as SQL -----------------------------------------------------------------
    def visible(self, res: FromClause) -> ColumnElement[bool]:
        """Rows of `res` (the resources table or an alias) this caller may see."""
        if not self.restricted:
            return true()
        g = self.grants
        conditions: list[ColumnElement[bool]] = []
        readable = _union(g.types.get("read", frozenset()), g.types.get("search", frozenset()))
        if readable is not None:
            conditions.append(res.c.res_type.in_(sorted(readable)))
        for res_type, filters in sorted(g.narrowed.items()):
            conditions.append(or_(res.c.res_type != res_type, *(f.admits_sql(res) for f in filters)))
        if g.patient is not None:
            ref = idx_reference.alias()
            in_compartment = exists().where(
                ref.c.res_pk == res.c.pk, ref.c.param == COMPARTMENT_PARAM, ref.c.target_id == g.patient
            )
            members = sorted(t for t in _compartment_types() if readable is None or t in readable)
            conditions.append(or_(res.c.res_type.not_in(members), in_compartment))
        opened = _in_compartment(res, g.override) if g.override else false()
        if g.override_exceptions:
            opened = and_(opened, not_(_labelled(res, g.override_exceptions)))
        if g.hidden:
            conditions.append(or_(not_(_labelled(res, g.hidden)), opened))
        consent_hidden = self._consent_hidden(res)
        if consent_hidden is not None:
            conditions.append(or_(not_(consent_hidden), opened))
        return and_(true(), *conditions)

    def _consent_hidden(self, res: FromClause) -> ColumnElement[bool] | None:
        g = self.grants
        hidden: list[ColumnElement[bool]] = []
        # One condition per distinct resolved tree, over all the patients whose consents resolve
        # to it (patients mostly share a handful of consent forms): one per consent grew the SQL
        # with every patient, and past ~1,000 SQLite refused it ("Expression tree is too large").
        patients_of_tree: dict[Provision | None, set[str]] = {}
        for patient, _consent_id, tree in g.consents:
            if patient not in g.consent_exempt:
                patients_of_tree.setdefault(tree, set()).add(patient)
        for tree, patients in patients_of_tree.items():
            if tree is None:
                denied: ColumnElement[bool] = true() if g.consent_default_deny else false()
            else:
                root = consent.matches_root_sql(tree, res)
                default = not_(root) if g.consent_default_deny else false()
                denied = or_(and_(root, consent.denied_sql(tree, res)), default)
            hidden.append(and_(_in_compartment(res, frozenset(patients)), denied))
        if g.consent_default_deny:
            ref = idx_reference.alias()
            bound = sorted(g.consented | g.consent_exempt)
            hidden.append(
                exists().where(
                    ref.c.res_pk == res.c.pk,
                    ref.c.param == COMPARTMENT_PARAM,
                    ref.c.target_id.not_in(bound) if bound else true(),
                )
            )
        return or_(*hidden) if hidden else None


def _in_compartment(res: FromClause, patients: frozenset[str]) -> ColumnElement[bool]:
    ref = idx_reference.alias()
    return exists().where(
        ref.c.res_pk == res.c.pk, ref.c.param == COMPARTMENT_PARAM, ref.c.target_id.in_(sorted(patients))
    )


def _labelled(res: FromClause, labels: frozenset[Label]) -> ColumnElement[bool]:
    tok = idx_token.alias()
    return exists().where(
        tok.c.res_pk == res.c.pk,
        tok.c.param == SECURITY_PARAM,
        tuple_(tok.c.system, tok.c.code).in_(sorted(labels)),
    )


def _union(a: frozenset[str] | None, b: frozenset[str] | None) -> frozenset[str] | None:
    return None if a is None or b is None else a | b


def _compartment_types() -> Iterable[str]:
    return {"Patient", *member_params()}
