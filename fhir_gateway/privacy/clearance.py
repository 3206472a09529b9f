"""Clearance: which security labels a caller may see, from roles × purpose of use (rules as data).

The default model is privacy/rules/clearance-v1.yaml (DESIGN.md "Default clearance"); a deployment
replaces it with `privacy.clearance_rules` or `ClearancePolicy.from_mapping`. A caller's `Clearance`
is the union of the grants that apply to them (their roles' and their own subject's, filtered by
the token's purposes of use). It answers two equivalent questions, so the PDP can use either:

* `cleared(ctx, labels)` — may the caller see a resource carrying these meta.security codings?
* `hidden_labels(ctx)` / `hidden_security_labels(ctx)` — the label codes / (system, code) pairs
  that hide a resource from the caller: as SQL, "no `_security` index row in this set".

Two facts the SQL form needs besides the set: `Clearance.sees_nothing` (no grant applies: hide
everything, labelled or not) and `Clearance.deidentified_only` (researchers: serve de-identified
data only). A resource with no confidentiality code counts as N (the label stage's default), which
both forms agree on whenever N is visible — true of every grant that sees anything by default.

A break-glass grant (`break_glass=True`, decided by privacy/breakglass.py for one patient) clears
everything except the sensitivity codes passed as `break_glass_exceptions` (settings
`privacy.break_glass_exceptions`: 42 CFR Part 2 records stay closed); the token's BTG purpose alone
clears nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fhir_gateway.context import RequestContext
from fhir_gateway.privacy.labels import (
    ACT_CODE_SYSTEM,
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_RANK,
    CONFIDENTIALITY_SYSTEM,
    LEGACY_CONFIDENTIALITY_SENSITIVITY,
    SENSITIVITY_CODES,
)
from fhir_gateway.rule_files import read_rules

if TYPE_CHECKING:
    from fhir_gateway.settings import Settings

DEFAULT_POLICY = "clearance-v1.yaml"
ALL = "*"
Label = tuple[str, str]


class ClearanceRulesError(ValueError):
    """A clearance file is malformed; the message names the file and the role or subject."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One clearance grant: up to `confidentiality`, these sensitivities (None = all), under purposes."""

    confidentiality: str
    sensitivity: frozenset[str] | None = frozenset()
    purposes: frozenset[str] = frozenset()  # empty: applies whatever the purpose (or none)
    deidentified: bool = False

    def applies(self, purposes: Iterable[str]) -> bool:
        return not self.purposes or not self.purposes.isdisjoint(purposes)


@dataclass(frozen=True, slots=True)
class Clearance:
    """What one caller is cleared for, compiled from the grants that apply to them."""

    max_confidentiality: str | None  # None: sees nothing
    sensitivity: frozenset[str] | None  # None: every sensitivity code
    deidentified_only: bool = False

    @property
    def sees_nothing(self) -> bool:
        return self.max_confidentiality is None

    @property
    def sees_everything(self) -> bool:
        return self.max_confidentiality == "V" and self.sensitivity is None and not self.deidentified_only

    def hidden(self) -> frozenset[Label]:
        """The (system, code) labels that hide a resource from this caller."""
        return _hidden(self)

    def sees(self, labels: Iterable[Any]) -> bool:
        """Whether a resource with these meta.security codings is visible to this caller."""
        if self.max_confidentiality is None:
            return False
        hidden = self.hidden()
        for coding in labels:
            if isinstance(coding, dict) and (coding.get("system"), coding.get("code")) in hidden:
                return False
        return True


@lru_cache(maxsize=256)
def _hidden(clearance: Clearance) -> frozenset[Label]:
    """Computed once per distinct clearance: there are only as many as role × purpose combinations."""
    top = -1 if clearance.max_confidentiality is None else CONFIDENTIALITY_RANK[clearance.max_confidentiality]
    hidden = {(CONFIDENTIALITY_SYSTEM, c) for c in CONFIDENTIALITY_ORDER if CONFIDENTIALITY_RANK[c] > top}
    if clearance.sensitivity is not None:
        blocked = SENSITIVITY_CODES - clearance.sensitivity
        hidden |= {(ACT_CODE_SYSTEM, code) for code in blocked}
        hidden |= {(CONFIDENTIALITY_SYSTEM, code) for code in blocked & LEGACY_CONFIDENTIALITY_SENSITIVITY}
    return frozenset(hidden)


EVERYTHING = Clearance("V", None)
NOTHING = Clearance(None, frozenset())


@dataclass(frozen=True, slots=True)
class ClearancePolicy:
    version: str
    roles: Mapping[str, tuple[Grant, ...]]
    subjects: Mapping[str, tuple[Grant, ...]]

    def grants_for(self, ctx: RequestContext) -> list[Grant]:
        found = [g for role in ctx.roles for g in self.roles.get(role, ())]
        for who in dict.fromkeys(w for w in (ctx.fhir_user, ctx.subject) if w):
            found.extend(self.subjects.get(who, ()))
        return [g for g in found if g.applies(ctx.purpose_of_use)]

    def clearance(
        self, ctx: RequestContext, *, break_glass: bool = False, break_glass_exceptions: Iterable[str] = ()
    ) -> Clearance:
        if break_glass:
            kept_closed = frozenset(break_glass_exceptions) & SENSITIVITY_CODES
            return Clearance("V", SENSITIVITY_CODES - kept_closed) if kept_closed else EVERYTHING
        grants = self.grants_for(ctx)
        identified = [g for g in grants if not g.deidentified]
        chosen = identified or grants  # identified access wins; de-identified only if nothing else
        if not chosen:
            return NOTHING
        top = max((g.confidentiality for g in chosen), key=CONFIDENTIALITY_RANK.__getitem__)
        sensitivity: frozenset[str] | None = frozenset()
        for grant in chosen:
            if grant.sensitivity is None or sensitivity is None:
                sensitivity = None
            else:
                sensitivity |= grant.sensitivity
        return Clearance(top, sensitivity, deidentified_only=not identified)

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "clearance rules") -> ClearancePolicy:
        if not isinstance(data, dict) or set(data) - {"version", "roles", "subjects"}:
            raise ClearanceRulesError(f"{origin}: expected a mapping with version, roles and subjects")
        version = data.get("version")
        if not isinstance(version, str) or not version:
            raise ClearanceRulesError(f"{origin}: `version` is required (e.g. clearance-v1)")
        return cls(
            version,
            _grant_table(data.get("roles", {}), f"{origin}: roles"),
            _grant_table(data.get("subjects", {}), f"{origin}: subjects"),
        )

    @classmethod
    def load(cls, path: str | Path | None = None) -> ClearancePolicy:
        """A clearance file, or the packaged default when `path` is None."""
        return _packaged_policy() if path is None else cls.from_mapping(*_read(path))


@cache
def _packaged_policy() -> ClearancePolicy:
    return ClearancePolicy.from_mapping(*_read(None))


def _read(path: str | Path | None) -> tuple[Any, str]:
    return read_rules(
        path,
        package="fhir_gateway.privacy",
        default=DEFAULT_POLICY,
        what="clearance rules",
        error=ClearanceRulesError,
    )


def _grant_table(raw: Any, where: str) -> dict[str, tuple[Grant, ...]]:
    if raw is None:
        return {}  # `subjects:` with nothing after it
    if not isinstance(raw, dict):
        raise ClearanceRulesError(f"{where}: must map names to lists of grants")
    table = {}
    for name, grants in raw.items():
        if not isinstance(grants, list):
            raise ClearanceRulesError(f"{where}.{name}: must be a list of grants")
        table[str(name)] = tuple(_grant(g, f"{where}.{name}[{i}]") for i, g in enumerate(grants))
    return table


def _grant(raw: Any, where: str) -> Grant:
    if not isinstance(raw, dict) or set(raw) - {"confidentiality", "sensitivity", "purposes", "deidentified"}:
        raise ClearanceRulesError(
            f"{where}: a grant has confidentiality, sensitivity, purposes, deidentified"
        )
    conf = raw.get("confidentiality")
    if conf not in CONFIDENTIALITY_RANK:
        raise ClearanceRulesError(f"{where}: confidentiality must be one of U L M N R V")
    sens = raw.get("sensitivity", [])
    if sens == ALL:
        sensitivity: frozenset[str] | None = None
    elif isinstance(sens, list) and all(code in SENSITIVITY_CODES for code in sens):
        sensitivity = frozenset(sens)
    else:
        raise ClearanceRulesError(
            f'{where}: sensitivity must be "*" or a list of v3-ActCode sensitivity codes'
        )
    purposes = raw.get("purposes", [])
    if not isinstance(purposes, list) or not all(isinstance(p, str) for p in purposes):
        raise ClearanceRulesError(f"{where}: purposes must be a list of v3 ActReason codes")
    return Grant(conf, sensitivity, frozenset(purposes), bool(raw.get("deidentified", False)))


# ---- the functions the PDP calls ------------------------------------------------------------------
def clearance_policy(settings: Settings) -> ClearancePolicy:
    """The policy configured in `privacy.clearance_rules`, else the packaged clearance-v1."""
    privacy = getattr(settings, "privacy", None)
    return ClearancePolicy.load(getattr(privacy, "clearance_rules", None))


def clearance_for(
    ctx: RequestContext,
    *,
    policy: ClearancePolicy | None = None,
    break_glass: bool = False,
    break_glass_exceptions: Iterable[str] = (),
) -> Clearance:
    return (policy or ClearancePolicy.load()).clearance(
        ctx, break_glass=break_glass, break_glass_exceptions=break_glass_exceptions
    )


def cleared(
    ctx: RequestContext,
    labels: Iterable[Any],
    *,
    policy: ClearancePolicy | None = None,
    break_glass: bool = False,
    break_glass_exceptions: Iterable[str] = (),
) -> bool:
    """Whether `ctx` may see a resource whose meta.security holds `labels` (coding dicts)."""
    found = clearance_for(
        ctx, policy=policy, break_glass=break_glass, break_glass_exceptions=break_glass_exceptions
    )
    return found.sees(labels)


def hidden_security_labels(
    ctx: RequestContext,
    *,
    policy: ClearancePolicy | None = None,
    break_glass: bool = False,
    break_glass_exceptions: Iterable[str] = (),
) -> frozenset[Label]:
    """(system, code) pairs whose presence in `_security` hides a resource from `ctx`."""
    found = clearance_for(
        ctx, policy=policy, break_glass=break_glass, break_glass_exceptions=break_glass_exceptions
    )
    return found.hidden()


def hidden_labels(
    ctx: RequestContext,
    *,
    policy: ClearancePolicy | None = None,
    break_glass: bool = False,
    break_glass_exceptions: Iterable[str] = (),
) -> set[str]:
    """The label codes (confidentiality letters and ActCode sensitivity codes) `ctx` may not see.

    Codes only: the legacy v3-Confidentiality spellings of ETH/HIV/PSY/SDV need
    `hidden_security_labels`, which gives (system, code) pairs.
    """
    pairs = hidden_security_labels(
        ctx, policy=policy, break_glass=break_glass, break_glass_exceptions=break_glass_exceptions
    )
    return {code for _, code in pairs}


def deidentified_only(ctx: RequestContext, *, policy: ClearancePolicy | None = None) -> bool:
    return clearance_for(ctx, policy=policy).deidentified_only
