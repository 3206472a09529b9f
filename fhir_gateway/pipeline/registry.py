"""The system-of-record registry (versioned YAML) and the `authority` settings section.

`Registry.load(path | None)` compiles `pipeline/rules/authority-v1.yaml` (its comments document the
format) or a site's own file: categories (resource types + category codes) with their authoritative
sources, contributors, the SoR's elements and the rule for non-authoritative writes. Lookups are by
resource type, then the few clauses of that type. `AuthoritySettings` is to be mounted on Settings
as `authority`; until then `authority_settings(settings)` answers the defaults.
`subscriber_channels` gives the outbox Dispatcher a webhook channel per subscriber with a URL.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from fhir_gateway.context import RequestContext
from fhir_gateway.pipeline.authority_config import AuthoritySettings
from fhir_gateway.routing.outbox import Channel, WebhookChannel
from fhir_gateway.rule_files import read_rules

Rule = Literal["accept-secondary", "reject", "queue"]
RULES: tuple[str, ...] = ("accept-secondary", "reject", "queue")
Role = Literal["authoritative", "contributor"]


class AuthorityRulesError(ValueError):
    """The registry file is not valid; the message names the file and the key."""


def authority_settings(settings: Any) -> AuthoritySettings:
    """`settings.authority`, or the defaults while Settings has no such section yet."""
    section = getattr(settings, "authority", None)
    return section if isinstance(section, AuthoritySettings) else AuthoritySettings()


# --- the registry -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SourcePattern:
    channel: str | None = None
    system: str | None = None
    role: str | None = None

    def matches(self, ctx: RequestContext) -> bool:
        if self.channel is not None and not fnmatch.fnmatchcase(ctx.source, self.channel):
            return False
        if self.system is not None and not (
            ctx.source_system is not None and fnmatch.fnmatchcase(ctx.source_system, self.system)
        ):
            return False
        return self.role is None or self.role in ctx.roles


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    match: tuple[tuple[frozenset[str], frozenset[tuple[str, str]]], ...]  # (types, category codes)
    authoritative: tuple[SourcePattern, ...]
    contributors: tuple[SourcePattern, ...]
    elements: frozenset[str] | None  # the SoR's elements; None = all
    rule: Rule

    def holds(self, resource: Mapping[str, Any]) -> bool:
        res_type = resource.get("resourceType")
        for types, codes in self.match:
            if res_type in types and (not codes or not codes.isdisjoint(_category_codes(resource))):
                return True
        return False

    def role_of(self, ctx: RequestContext) -> Role | None:
        if any(p.matches(ctx) for p in self.authoritative):
            return "authoritative"
        if any(p.matches(ctx) for p in self.contributors):
            return "contributor"
        return None


@dataclass(frozen=True, slots=True)
class Registry:
    version: str
    policy: str
    categories: tuple[Category, ...]
    by_type: Mapping[str, tuple[Category, ...]] = field(default_factory=dict)

    def category_of(self, resource: Mapping[str, Any]) -> Category | None:
        for category in self.by_type.get(str(resource.get("resourceType")), ()):
            if category.holds(resource):
                return category
        return None

    def decision_uri(self, category: Category, decision: str) -> str:
        return f"{self.policy}/{self.version}#{category.name}/{decision}"

    def get(self, name: str) -> Category | None:
        return next((c for c in self.categories if c.name == name), None)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Registry:
        data, origin = read_rules(
            path,
            package="fhir_gateway.pipeline",
            default="authority-v1.yaml",
            what="authority rules",
            error=AuthorityRulesError,
        )
        return _compile(data, origin)


def _category_codes(resource: Mapping[str, Any]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    concepts = resource.get("category")
    for concept in concepts if isinstance(concepts, list) else ():
        codings = concept.get("coding") if isinstance(concept, dict) else None
        for coding in codings if isinstance(codings, list) else ():
            if isinstance(coding, dict):
                found.add((str(coding.get("system", "")), str(coding.get("code", ""))))
    return found


def _compile(data: Any, origin: str) -> Registry:
    if not isinstance(data, dict) or set(data) - {"version", "policy", "categories"}:
        raise AuthorityRulesError(f"{origin}: expected a mapping with version, policy, categories")
    version, policy = data.get("version"), data.get("policy")
    if not isinstance(version, str) or not version or not isinstance(policy, str) or not policy:
        raise AuthorityRulesError(f"{origin}: `version` and `policy` are required strings")
    raw = data.get("categories")
    if not isinstance(raw, dict) or not raw:
        raise AuthorityRulesError(f"{origin}: `categories` must map names to categories")
    categories = tuple(_category(str(name), spec, f"{origin}: category {name}") for name, spec in raw.items())
    by_type: dict[str, list[Category]] = {}
    for category in categories:
        for types, _ in category.match:
            for res_type in types:
                if category not in by_type.setdefault(res_type, []):
                    by_type[res_type].append(category)
    return Registry(version, policy.rstrip("/"), categories, {k: tuple(v) for k, v in by_type.items()})


_CATEGORY_KEYS = {"match", "authoritative", "contributors", "elements", "non_authoritative", "description"}


def _category(name: str, spec: Any, where: str) -> Category:
    if not isinstance(spec, dict) or set(spec) - _CATEGORY_KEYS:
        raise AuthorityRulesError(f"{where}: allowed keys are {', '.join(sorted(_CATEGORY_KEYS))}")
    clauses = spec.get("match")
    if not isinstance(clauses, list) or not clauses:
        raise AuthorityRulesError(f"{where}: `match` must be a non-empty list")
    match = tuple(_clause(c, where) for c in clauses)
    rule = spec.get("non_authoritative", "accept-secondary")
    if rule not in RULES:
        raise AuthorityRulesError(f"{where}: non_authoritative must be one of {', '.join(RULES)}")
    elements = spec.get("elements")
    if elements is not None and (
        not isinstance(elements, list) or not all(isinstance(e, str) for e in elements)
    ):
        raise AuthorityRulesError(f"{where}: `elements` must be a list of element names")
    return Category(
        name=name,
        match=match,
        authoritative=_sources(spec.get("authoritative"), f"{where}: authoritative"),
        contributors=_sources(spec.get("contributors"), f"{where}: contributors"),
        elements=frozenset(elements) if elements else None,
        rule=rule,
    )


def _clause(raw: Any, where: str) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    if not isinstance(raw, dict) or set(raw) - {"resource_types", "categories"}:
        raise AuthorityRulesError(f"{where}: a match clause has resource_types and optional categories")
    types = raw.get("resource_types")
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise AuthorityRulesError(f"{where}: `resource_types` must be a non-empty list")
    codes = []
    for token in raw.get("categories") or ():
        system, sep, code = str(token).rpartition("|")
        if not sep or not system or not code:
            raise AuthorityRulesError(f"{where}: categories are written system|code")
        codes.append((system, code))
    return frozenset(types), frozenset(codes)


def _sources(raw: Any, where: str) -> tuple[SourcePattern, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise AuthorityRulesError(f"{where}: must be a list of sources")
    patterns = []
    for item in raw:
        if not isinstance(item, dict) or set(item) - {"channel", "system", "role"}:
            raise AuthorityRulesError(f"{where}: a source is {{channel, system, role}} (each optional)")
        patterns.append(SourcePattern(**{k: str(v) for k, v in item.items()}))
    return tuple(patterns)


def subscriber_channels(settings: Any, client: httpx.AsyncClient) -> dict[str, Channel]:
    """Outbox channels for the subscribers that name a URL (merge into the Dispatcher's channels).

    A subscriber without a URL uses an existing channel (`log`, `webhook`) by its name.
    """
    return {
        sub.channel: WebhookChannel(sub.url, client)
        for sub in authority_settings(settings).subscribers
        if sub.url is not None
    }
