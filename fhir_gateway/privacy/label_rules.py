"""Security-label rules as data: the v3 vocabularies, the LabelSet they make, and the rule compiler.

A rule file (privacy/rules/labels-v1.yaml documents the format) compiles to a `RuleSet` whose code
lookups are dictionary hits however many rules there are; `RuleSet.evaluate(resource, ctx)` says
what the rules assign to one resource. Applying the result to resources is privacy/labels.py.

The vocabularies are the v3-ActCode (FHIR R4, 2018-08-12) concept-domain members, checked against
the published code system by tests/unit/test_labels.py.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from fhir_gateway.context import RequestContext
from fhir_gateway.rule_files import read_rules

CONFIDENTIALITY_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
DEFAULT_RULES = "labels-v1.yaml"

CONFIDENTIALITY_ORDER = ("U", "L", "M", "N", "R", "V")
CONFIDENTIALITY_RANK = {code: rank for rank, code in enumerate(CONFIDENTIALITY_ORDER)}
CONFIDENTIALITY_DISPLAY = {
    "U": "unrestricted",
    "L": "low",
    "M": "moderate",
    "N": "normal",
    "R": "restricted",
    "V": "very restricted",
}
# v3-ActCode _InformationSensitivityPolicy (act, entity and role kinds, SPI and its children).
SENSITIVITY_CODES = frozenset(
    {
        "ETH", "GDIS", "HIV", "MST", "SCA", "SDV", "SEX", "SPI", "BH", "COGN", "DVD", "EMOTDIS", "MH",
        "PSY", "PSYTHPN", "SUD", "ETHUD", "OPIOIDUD", "STD", "TBOO", "VIO", "SICKLE", "DEMO", "DOB",
        "GENDER", "LIVARG", "MARST", "RACE", "REL", "B", "EMPL", "LOCIS", "SSP", "ADOL", "CEL", "DIA",
        "DRGIS", "EMP", "PDS", "PHY", "PRS",
    }
)  # fmt: skip
# v3-ActCode _ActPrivacyLaw (US) codes a rule may cite.
POLICY_CODES = frozenset(
    {"42CFRPart2", "CommonRule", "HIPAANOPP", "HIPAAPsyNotes", "HIPAASelfPay", "Title38Section7332"}
)
# v3-ActCode ObligationPolicy and RefrainPolicy.
HANDLING_CODES = frozenset(
    {
        "ANONY", "AOD", "AUDIT", "AUDTR", "CPLYCC", "CPLYCD", "CPLYJPP", "CPLYOPP", "CPLYOSP", "CPLYPOL",
        "DECLASSIFYLABEL", "DEID", "DELAU", "DOWNGRDLABEL", "DRIVLABEL", "ENCRYPT", "ENCRYPTR", "ENCRYPTT",
        "ENCRYPTU", "HUAPRV", "LABEL", "MASK", "MINEC", "PERSISTLABEL", "PRIVMARK", "PSEUD", "REDACT",
        "UPGRDLABEL", "NOAUTH", "NOCOLLECT", "NODSCLCD", "NODSCLCDS", "NOINTEGRATE", "NOLIST", "NOMOU",
        "NOORGPOL", "NOPAT", "NOPERSISTP", "NORDSCLCD", "NORDSCLCDS", "NORDSCLW", "NORELINK", "NOREUSE",
        "NOVIP", "ORCON",
    }
)  # fmt: skip
# FHIR R4's v3-Confidentiality still carries these retired sensitivity codes; they are read as ActCode.
LEGACY_CONFIDENTIALITY_SENSITIVITY = frozenset({"ETH", "HIV", "PSY", "SDV"})
_ICD_CATEGORY = re.compile(r"([A-Z])(\d\d)")


class LabelRulesError(ValueError):
    """A label rule file is malformed; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class LabelSet:
    """The security labels of one resource, by kind (all ActCode except confidentiality)."""

    confidentiality: str | None = None
    sensitivity: frozenset[str] = frozenset()
    policy: frozenset[str] = frozenset()
    handling: frozenset[str] = frozenset()

    def __or__(self, other: LabelSet) -> LabelSet:
        return LabelSet(
            higher(self.confidentiality, other.confidentiality),
            self.sensitivity | other.sensitivity,
            self.policy | other.policy,
            self.handling | other.handling,
        )

    def codings(self) -> list[dict[str, str]]:
        """meta.security codings: confidentiality, then sensitivity, policy, handling (each sorted)."""
        found: list[dict[str, str]] = []
        if self.confidentiality is not None:
            code = self.confidentiality
            found.append(
                {"system": CONFIDENTIALITY_SYSTEM, "code": code, "display": CONFIDENTIALITY_DISPLAY[code]}
            )
        for group in (self.sensitivity, self.policy, self.handling):
            found.extend({"system": ACT_CODE_SYSTEM, "code": code} for code in sorted(group))
        return found


def higher(a: str | None, b: str | None) -> str | None:
    """The more restrictive of two confidentiality codes (None = not given)."""
    if a is None or b is None:
        return a if b is None else b
    return a if CONFIDENTIALITY_RANK[a] >= CONFIDENTIALITY_RANK[b] else b


def kind_of(code: str) -> str | None:
    """Which kind of ActCode security label `code` is (None: not one we know)."""
    if code in SENSITIVITY_CODES:
        return "sensitivity"
    if code in POLICY_CODES:
        return "policy"
    if code in HANDLING_CODES:
        return "handling"
    return None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    assign: LabelSet
    types: frozenset[str] | None = None
    has_codes: bool = False
    categories: frozenset[tuple[str, str]] = frozenset()
    sources: tuple[tuple[str | None, str | None], ...] = ()

    def matches(
        self, res_type: str, code_hit: bool, categories: set[tuple[str, str]], ctx: RequestContext
    ) -> bool:
        if self.types is not None and res_type not in self.types:
            return False
        if self.has_codes and not code_hit:
            return False
        if self.categories and not (self.categories & categories):
            return False
        return not self.sources or any(_source_matches(s, ctx) for s in self.sources)


def _source_matches(source: tuple[str | None, str | None], ctx: RequestContext) -> bool:
    channel, pattern = source
    if channel is not None and ctx.source != channel:
        return False
    return pattern is None or (
        ctx.source_system is not None and fnmatch.fnmatchcase(ctx.source_system, pattern)
    )


@dataclass(frozen=True, slots=True)
class RuleSet:
    """A compiled rule file: code lookups are dictionary hits, whatever the number of rules."""

    version: str
    default_confidentiality: str
    rules: tuple[Rule, ...]
    exact: Mapping[tuple[str, str], frozenset[int]]  # (system url, code) → rule indexes
    prefixes: Mapping[tuple[str, str], frozenset[int]]  # (system url, normalised code prefix) → ...
    hierarchical: frozenset[str]  # system urls matched by prefix
    propagate: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def evaluate(self, resource: Mapping[str, Any], ctx: RequestContext) -> LabelSet:
        """What the rules assign to this resource (client labels and inheritance not included)."""
        res_type = str(resource.get("resourceType", ""))
        hits: set[int] = set()
        for system, code in _codings(resource):
            hits |= self._rules_for(system, code)
        categories = set(_codings(resource.get("category")))
        labels = LabelSet(self.default_confidentiality)
        for index, rule in enumerate(self.rules):
            if rule.matches(res_type, index in hits, categories, ctx):
                labels = labels | rule.assign
        return labels

    def _rules_for(self, system: str, code: str) -> frozenset[int]:
        found = self.exact.get((system, code), frozenset())
        if system in self.hierarchical:
            norm = code.replace(".", "").upper()
            for end in range(3, len(norm) + 1):
                found = found | self.prefixes.get((system, norm[:end]), frozenset())
        return found

    @classmethod
    def from_mapping(cls, data: Any, origin: str = "label rules") -> RuleSet:
        return _compile(data, origin)

    @classmethod
    def load(cls, path: str | Path | None = None) -> RuleSet:
        """A rule file, or the packaged default rules when `path` is None."""
        return _packaged_rules() if path is None else _compile(*_read(path))


@cache
def _packaged_rules() -> RuleSet:
    return _compile(*_read(None))


def _read(path: str | Path | None) -> tuple[Any, str]:
    return read_rules(
        path, package="fhir_gateway.privacy", default=DEFAULT_RULES, what="label rules", error=LabelRulesError
    )


def _codings(node: Any) -> list[tuple[str, str]]:
    """(system, code) of every Coding under `node`, skipping `meta` (labels are not content)."""
    found: list[tuple[str, str]] = []
    _collect_codings(node, found)
    return found


def _collect_codings(node: Any, found: list[tuple[str, str]]) -> None:
    # Plain recursion into one list: a generator chain paid a frame resumption per level for every
    # element of every resource written (~8 % of the labels stage).
    if isinstance(node, dict):
        system, code = node.get("system"), node.get("code")
        if isinstance(system, str) and isinstance(code, str):
            found.append((system, code))
        for key, value in node.items():
            if key != "meta" and isinstance(value, (dict, list)):
                _collect_codings(value, found)
    elif isinstance(node, list):
        for item in node:
            _collect_codings(item, found)


def _compile(data: Any, origin: str) -> RuleSet:
    if not isinstance(data, dict):
        raise LabelRulesError(f"{origin}: the top level must be a mapping")
    unknown = set(data) - {"version", "default_confidentiality", "systems", "propagate", "rules"}
    if unknown:
        raise LabelRulesError(f"{origin}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        raise LabelRulesError(f"{origin}: `version` is required (e.g. labels-v1)")
    default = data.get("default_confidentiality", "N")
    if default not in CONFIDENTIALITY_RANK:
        raise LabelRulesError(f"{origin}: default_confidentiality must be one of U L M N R V")
    systems = _systems(_or(data.get("systems"), {}), origin)
    exact: dict[tuple[str, str], set[int]] = {}
    prefixes: dict[tuple[str, str], set[int]] = {}
    rules: list[Rule] = []
    seen: set[str] = set()
    raw_rules = _or(data.get("rules"), [])
    if not isinstance(raw_rules, list):
        raise LabelRulesError(f"{origin}: `rules` must be a list")
    for index, raw in enumerate(raw_rules):
        rule = _rule(raw, index, origin, systems, exact, prefixes)
        if rule.id in seen:
            raise LabelRulesError(f"{origin}: rule {rule.id}: duplicate id")
        seen.add(rule.id)
        rules.append(rule)
    return RuleSet(
        version=version,
        default_confidentiality=default,
        rules=tuple(rules),
        exact={k: frozenset(v) for k, v in exact.items()},
        prefixes={k: frozenset(v) for k, v in prefixes.items()},
        hierarchical=frozenset(url for urls, hier in systems.values() if hier for url in urls),
        propagate=_propagation(_or(data.get("propagate"), {}), origin),
    )


def _or(value: Any, default: Any) -> Any:
    """A YAML value, or `default` when the key is absent or empty (`key:` with nothing after it)."""
    return default if value is None else value


def _systems(raw: Any, origin: str) -> dict[str, tuple[tuple[str, ...], bool]]:
    if not isinstance(raw, dict):
        raise LabelRulesError(f"{origin}: `systems` must map aliases to {{urls, hierarchical}}")
    systems = {}
    for alias, spec in raw.items():
        urls = spec.get("urls") if isinstance(spec, dict) else None
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise LabelRulesError(f"{origin}: system {alias}: `urls` must be a non-empty list of URIs")
        systems[str(alias)] = (tuple(urls), bool(spec.get("hierarchical", False)))
    return systems


def _propagation(raw: Any, origin: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not all(
        isinstance(paths, list) and all(isinstance(p, str) for p in paths) for paths in raw.values()
    ):
        raise LabelRulesError(f"{origin}: `propagate` must map resource types to lists of element paths")
    return {str(res_type): tuple(paths) for res_type, paths in raw.items()}


_RULE_KEYS = {"id", "when", "assign", "description"}
_WHEN_KEYS = {"resource_types", "codes", "categories", "sources"}
_ASSIGN_KINDS = {"sensitivity": SENSITIVITY_CODES, "policy": POLICY_CODES, "handling": HANDLING_CODES}


def _rule(
    raw: Any,
    index: int,
    origin: str,
    systems: dict[str, tuple[tuple[str, ...], bool]],
    exact: dict[tuple[str, str], set[int]],
    prefixes: dict[tuple[str, str], set[int]],
) -> Rule:
    if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
        raise LabelRulesError(f"{origin}: rules[{index}] must be a mapping with a string `id`")
    where = f"{origin}: rule {raw['id']}"
    when, assign = _or(raw.get("when"), {}), raw.get("assign")
    bad = (set(raw) - _RULE_KEYS) | (set(when) - _WHEN_KEYS if isinstance(when, dict) else {"when"})
    if bad:
        raise LabelRulesError(f"{where}: unknown key(s) {', '.join(sorted(map(str, bad)))}")
    codes = _or(when.get("codes"), {})
    if not isinstance(codes, dict):
        raise LabelRulesError(f"{where}: `codes` must map system aliases to lists of codes")
    for alias, values in codes.items():
        if alias not in systems:
            raise LabelRulesError(f"{where}: unknown system alias {alias} (declare it under `systems`)")
        if not isinstance(values, list):
            raise LabelRulesError(f"{where}: codes.{alias} must be a list")
        urls, hierarchical = systems[alias]
        for value in values:
            for url in urls:
                if hierarchical:
                    for prefix in _icd_prefixes(str(value), where):
                        prefixes.setdefault((url, prefix), set()).add(index)
                else:
                    exact.setdefault((url, str(value)), set()).add(index)
    types = when.get("resource_types")
    return Rule(
        id=raw["id"],
        assign=_assignment(assign, where),
        types=frozenset(map(str, types)) if isinstance(types, list) else None,
        has_codes=bool(codes),
        categories=frozenset(_token(t, where) for t in when.get("categories") or ()),
        sources=tuple(_source(s, where) for s in when.get("sources") or ()),
    )


def _icd_prefixes(value: str, where: str) -> list[str]:
    """`F20` → [F20]; `O98.7` → [O987]; `F20..F48` → F20, F21, ... F48 (3-character categories)."""
    if ".." not in value:
        return [value.replace(".", "").upper()]
    low, _, high = value.partition("..")
    lo, hi = _ICD_CATEGORY.fullmatch(low.strip()), _ICD_CATEGORY.fullmatch(high.strip())
    if lo is None or hi is None or lo[1] != hi[1] or int(lo[2]) > int(hi[2]):
        raise LabelRulesError(f"{where}: bad range {value} (use e.g. F20..F48 within one letter)")
    return [f"{lo[1]}{n:02d}" for n in range(int(lo[2]), int(hi[2]) + 1)]


def _token(value: Any, where: str) -> tuple[str, str]:
    system, sep, code = str(value).rpartition("|")
    if not sep or not system or not code:
        raise LabelRulesError(f"{where}: categories are written system|code")
    return system, code


def _source(value: Any, where: str) -> tuple[str | None, str | None]:
    if not isinstance(value, dict) or not value or set(value) - {"channel", "system"}:
        raise LabelRulesError(f"{where}: a source is {{channel: ..., system: pattern}}")
    channel, system = value.get("channel"), value.get("system")
    return (str(channel) if channel is not None else None, str(system) if system is not None else None)


def _assignment(raw: Any, where: str) -> LabelSet:
    if not isinstance(raw, dict) or not raw:
        raise LabelRulesError(f"{where}: `assign` must give at least one label")
    bad = set(raw) - {"confidentiality", *_ASSIGN_KINDS}
    if bad:
        raise LabelRulesError(f"{where}: unknown key(s) in assign: {', '.join(sorted(map(str, bad)))}")
    conf = raw.get("confidentiality")
    if conf is not None and conf not in CONFIDENTIALITY_RANK:
        raise LabelRulesError(f"{where}: confidentiality must be one of U L M N R V")
    kinds: dict[str, frozenset[str]] = {}
    for kind, vocabulary in _ASSIGN_KINDS.items():
        codes = raw.get(kind) or []
        unknown = [str(c) for c in codes if c not in vocabulary]
        if not isinstance(codes, list) or unknown:
            raise LabelRulesError(f"{where}: {kind} codes not in v3-ActCode: {', '.join(unknown) or codes}")
        kinds[kind] = frozenset(codes)
    return LabelSet(conf, kinds["sensitivity"], kinds["policy"], kinds["handling"])
