"""Security labels (HL7 DS4P): the `labels` write stage and the data-driven rules behind it.

Pipeline spec: `fhir_gateway.privacy.labels:labels_stage`. For every written resource it sets
`meta.security` to

1. exactly one v3 Confidentiality code, the highest (U < L < M < N < R < V) of the rule set's
   default, what the client sent, what matching rules assign and what the resource inherits —
   rules raise it, never lower it;
2. the sensitivity codes (v3 ActCode InformationSensitivityPolicy: HIV, PSY, SUD, ...), privacy
   policy codes (42CFRPart2 ...) and handling caveats (ObligationPolicy / RefrainPolicy) the client
   sent plus those the rules and inheritance add — never removed;
3. any other coding the client sent, untouched.

The rule-set version is written to `meta.tag` (system `LABEL_RULES_SYSTEM`, code e.g. `labels-v1`),
a tag rather than a security label because it says how the labels were made, not how to handle the
data; a relabelling job finds resources labelled by an older rule set with `_tag`.

Inheritance: a derived resource takes the labels of the resources it points at through the
element paths listed under `propagate` (DiagnosticReport.result, Provenance.target, ...) when those
are in the same submitted Bundle, and Provenance/other additions a stage attached to the change take
the labels of the resource they target. Labels on resources already stored are the read path's
business (the PDP checks each resource's own labels).

The rules are YAML (privacy/rules/labels-v1.yaml documents the format), compiled and evaluated by
privacy/label_rules.py, whose vocabulary names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from fhir_gateway.context import RequestContext
from fhir_gateway.fhir.references import iter_references
from fhir_gateway.privacy.label_rules import (
    ACT_CODE_SYSTEM,
    CONFIDENTIALITY_DISPLAY,
    CONFIDENTIALITY_ORDER,
    CONFIDENTIALITY_RANK,
    CONFIDENTIALITY_SYSTEM,
    HANDLING_CODES,
    LEGACY_CONFIDENTIALITY_SENSITIVITY,
    POLICY_CODES,
    SENSITIVITY_CODES,
    LabelRulesError,
    LabelSet,
    RuleSet,
    higher,
    kind_of,
)

if TYPE_CHECKING:
    from fhir_gateway.pipeline.stage import Change
    from fhir_gateway.settings import Settings

__all__ = [
    "ACT_CODE_SYSTEM",
    "CONFIDENTIALITY_DISPLAY",
    "CONFIDENTIALITY_ORDER",
    "CONFIDENTIALITY_RANK",
    "CONFIDENTIALITY_SYSTEM",
    "HANDLING_CODES",
    "LABEL_RULES_SYSTEM",
    "LEGACY_CONFIDENTIALITY_SENSITIVITY",
    "POLICY_CODES",
    "SENSITIVITY_CODES",
    "LabelRulesError",
    "LabelSet",
    "LabelStage",
    "RuleSet",
    "high_water_mark",
    "labels_stage",
    "read_labels",
    "write_labels",
]

Resource = dict[str, Any]
LABEL_RULES_SYSTEM = "http://fhir-gateway.dev/fhir/CodeSystem/label-rules"
MAX_PROPAGATION_DEPTH = 4


def read_labels(resource: Mapping[str, Any]) -> tuple[LabelSet, list[Any]]:
    """A resource's meta.security as a LabelSet, plus the codings that are none of our kinds."""
    meta = resource.get("meta")
    codings = meta.get("security") if isinstance(meta, dict) else None
    conf: str | None = None
    kinds: dict[str, set[str]] = {"sensitivity": set(), "policy": set(), "handling": set()}
    others: list[Any] = []
    for coding in codings if isinstance(codings, list) else ():
        system = coding.get("system") if isinstance(coding, dict) else None
        code = coding.get("code") if isinstance(coding, dict) else None
        if system == CONFIDENTIALITY_SYSTEM and code in CONFIDENTIALITY_RANK:
            conf = higher(conf, code)
        elif system == CONFIDENTIALITY_SYSTEM and code in LEGACY_CONFIDENTIALITY_SENSITIVITY:
            kinds["sensitivity"].add(code)
        elif system == CONFIDENTIALITY_SYSTEM:
            continue  # not a confidentiality code: dropped so exactly one remains
        elif system == ACT_CODE_SYSTEM and isinstance(code, str) and (kind := kind_of(code)) is not None:
            kinds[kind].add(code)
        elif coding not in others:
            others.append(coding)
    labels = LabelSet(
        conf, frozenset(kinds["sensitivity"]), frozenset(kinds["policy"]), frozenset(kinds["handling"])
    )
    return labels, others


def write_labels(resource: Resource, labels: LabelSet, version: str | None = None) -> None:
    """Replace meta.security with `labels` (keeping foreign codings) and record the rule version."""
    _, others = read_labels(resource)
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    meta["security"] = labels.codings() + others
    if version is not None:
        tags = meta.get("tag")
        kept = (
            [t for t in tags if not (isinstance(t, dict) and t.get("system") == LABEL_RULES_SYSTEM)]
            if (isinstance(tags, list))
            else []
        )
        meta["tag"] = [*kept, {"system": LABEL_RULES_SYSTEM, "code": version}]


def high_water_mark(resources: Iterable[Mapping[str, Any]]) -> dict[str, str] | None:
    """The confidentiality coding for a Bundle of these resources (DS4P): the highest of theirs.

    Only confidentiality: sensitivity codes would tell a reader what the Bundle holds.
    """
    conf: str | None = None
    for resource in resources:
        conf = higher(conf, read_labels(resource)[0].confidentiality)
    return LabelSet(conf).codings()[0] if conf else None


class LabelStage:
    """Labels each written resource (and what a previous stage attached to it) by the rule set."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self._recent: _BundleIndex | None = None  # the bundle being labelled, entry after entry

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        resource = change.resource
        if resource is None:
            return
        bundle = self._bundle_index(change, ctx)
        labels = self.labels_for(resource, ctx, bundle, own=True)
        write_labels(resource, labels, self.rules.version)
        target = f"{change.res_type}/{change.res_id}"
        for addition in change.additions:
            if target in self._pointed_at(addition):
                write_labels(addition, read_labels(addition)[0] | labels, self.rules.version)

    def _bundle_index(self, change: Change, ctx: RequestContext) -> _BundleIndex:
        """One index per submitted Bundle and request, kept while its entries pass one by one.

        It remembers each resource's rule labels, so a resource that others derive from (every
        target of an HL7 message's Provenance) has the rules evaluated once, not once per derivation.
        """
        recent = self._recent
        if recent is None or recent.bundle is not change.bundle or recent.ctx is not ctx:
            recent = self._recent = _BundleIndex(change.bundle, ctx)
        return recent

    def labels_for(
        self,
        resource: Mapping[str, Any],
        ctx: RequestContext,
        bundle: _BundleIndex,
        depth: int = 0,
        *,
        own: bool = False,
    ) -> LabelSet:
        """Client labels ∪ rule labels ∪ (recursively) labels of the bundle resources it derives from.

        `own`: the resource is the one being written, so its rules are evaluated afresh (and
        remembered); a resource met as a source takes what was remembered of it, if anything.
        """
        rule_labels = None if own else bundle.rule_labels.get(id(resource))
        if rule_labels is None or rule_labels[0] is not resource:
            rule_labels = (resource, self.rules.evaluate(resource, ctx))
            bundle.rule_labels[id(resource)] = rule_labels
        labels = read_labels(resource)[0] | rule_labels[1]
        if depth >= MAX_PROPAGATION_DEPTH:
            return labels
        for ref in self._pointed_at(resource):
            source = bundle.get(ref)
            if source is not None and source is not resource:
                labels = labels | self.labels_for(source, ctx, bundle, depth + 1)
        return labels

    def _pointed_at(self, resource: Mapping[str, Any]) -> list[str]:
        paths = self.rules.propagate.get(str(resource.get("resourceType")), ())
        return [
            _normalise(ref["reference"]) for path in paths for ref in iter_references(_at(resource, path))
        ]


def _at(node: Any, path: str) -> list[Any]:
    """The values at a dotted element path, through arrays."""
    values = [node]
    for part in path.split("."):
        found: list[Any] = []
        for value in values:
            item = value.get(part) if isinstance(value, dict) else None
            found.extend(item if isinstance(item, list) else [] if item is None else [item])
        values = found
    return values


def _normalise(reference: str) -> str:
    """`http://x/fhir/Observation/1/_history/2` and `Observation/1/_history/2` → `Observation/1`."""
    reference = reference.split("/_history/")[0]
    if reference.startswith(("http://", "https://")):
        return "/".join(reference.rsplit("/", 2)[-2:])
    return reference


class _BundleIndex:
    """The submitted Bundle's resources by every name a reference may use (built on first use)."""

    def __init__(self, bundle: Mapping[str, Any], ctx: RequestContext) -> None:
        self.bundle = bundle
        self.ctx = ctx
        self._index: dict[str, Mapping[str, Any]] | None = None
        # id(resource) -> (the resource, its rule labels): the resource is kept to check identity
        self.rule_labels: dict[int, tuple[Mapping[str, Any], LabelSet]] = {}

    def get(self, reference: str) -> Mapping[str, Any] | None:
        if self._index is None:
            self._index = self._build()
        return self._index.get(reference)

    def _build(self) -> dict[str, Mapping[str, Any]]:
        index: dict[str, Mapping[str, Any]] = {}
        entries = self.bundle.get("entry")
        for entry in entries if isinstance(entries, list) else ():
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            names = []
            if isinstance(full_url := entry.get("fullUrl"), str):
                names += [full_url, _normalise(full_url)]
            if isinstance(res_id := resource.get("id"), str):
                names.append(f"{resource.get('resourceType')}/{res_id}")
            request = entry.get("request")
            if (
                isinstance(request, dict)
                and request.get("method") == "PUT"
                and isinstance(request.get("url"), str)
            ):
                names.append(request["url"].split("?")[0])
            for name in names:
                index.setdefault(name, resource)
        return index


def labels_stage(settings: Settings) -> LabelStage:
    """Pipeline factory: the rule file from `privacy.label_rules`, else the packaged labels-v1."""
    privacy = getattr(settings, "privacy", None)
    path = getattr(privacy, "label_rules", None)
    return LabelStage(RuleSet.load(path))
