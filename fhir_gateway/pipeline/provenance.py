"""The `provenance` write stage: every resource version a submit writes gets a Provenance.

Pipeline spec: `fhir_gateway.pipeline.provenance:provenance_stage`. For each change of every entry
(all entries of a transaction, batch or message, not just the first) it attaches to
`change.additions` a Provenance (R4 provenance.html) that commits with the version it describes:

- `target`: the versioned reference `Type/id/_history/N`. N is computed exactly as the store assigns
  it (transaction.store_version: previous version + 1, else 1), so it names the version being written.
- `recorded`: now; `occurredDateTime`: the source's own timestamp (Bundle.timestamp, MSH-7 for v2).
- `activity`: v3-DataOperation CREATE | UPDATE | DELETE, plus ISO 21089 `transform` when a feed's
  message was mapped to FHIR (the authority stage adds `merge` when it combined two sources).
- `agent` (provenance-participant-type): the user (fhirUser, else the token subject) as author for
  REST; the sending application^facility (MSH-3^MSH-4) or calling AE title for feeds, as author;
  the operator as performer for CLI ingest.
- `entity`: `source` — the v2 message (its MessageHeader, with MSH-10 as identifier), the submitted
  Bundle (Bundle.identifier), or the DICOM SOP Instance UIDs; `revision` — the version this one
  replaces; `source` links to any Provenance the client sent for the same resource (a transaction
  entry targeting it, the REST `X-Provenance` header, the v2 EVN Provenance): linked, not duplicated.
- `policy`: left to the authority stage, which records its decision there.
- `meta.tag` (SUBMISSION_SYSTEM): one code per submitted Bundle, so `$provenance` finds everything
  derived from the same message or request (an ORU's Observations and its DiagnosticReport).
- `meta.security`: the labels of its target — a Provenance tells about its target and is as
  sensitive. The labels stage propagates them too (Provenance.target); this copy covers deletes,
  whose target it does not see, and pipelines where labels runs first.

The stage describes each version on its own; `combine` then folds those of one submit that record
the same activity into one Provenance with several targets (R4: "a provenance can point to more
than one target if multiple resources were created/updated by the same activity"), as the v2-to-FHIR
IG does for a message. Per-version Provenance were the most written resource of a feed: 4.1 per
message of the v2 corpus (beside 3.2 others); folded, 2.8.

A Provenance gets no Provenance of its own (the client's is linked instead) and an AuditEvent never.
Order: after validation, before authority (which completes the Provenance with its decision).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from fhir_gateway.context import RequestContext
from fhir_gateway.fhir.dates import format_instant
from fhir_gateway.fhir.json import Resource
from fhir_gateway.privacy.labels import read_labels, write_labels

if TYPE_CHECKING:
    from fhir_gateway.pipeline.stage import Change
    from fhir_gateway.settings import Settings

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
SUBMISSION_SYSTEM = "http://fhir-gateway.dev/fhir/CodeSystem/submission"
SOURCE_SYSTEM_PREFIX = "urn:fhir-gateway:source:"  # + channel: identifier system of a sending system
SUBJECT_SYSTEM = "urn:fhir-gateway:subject"  # identifier system of a token subject without fhirUser
DICOM_UID_SYSTEM = "urn:dicom:uid"
FEEDS = frozenset({"hl7v2", "dicom"})
UNPROVENANCED = frozenset({"Provenance", "AuditEvent"})
OPERATIONS = {"create": "CREATE", "update": "UPDATE", "delete": "DELETE"}
OPERATION_DISPLAY = {"CREATE": "create", "UPDATE": "revise", "DELETE": "delete"}
MAX_INSTANCE_ENTITIES = 20  # a large study is named by its first instances, not thousands


def versioned(res_type: str, res_id: str, version_id: int) -> str:
    return f"{res_type}/{res_id}/_history/{version_id}"


def next_version(change: Change) -> int:
    """The versionId the store will give this change (transaction.store_version's rule)."""
    return change.previous.version_id + 1 if change.previous is not None else 1


def unversioned(reference: str) -> str:
    """`Observation/1/_history/2` → `Observation/1` (absolute URLs keep only their last two parts)."""
    reference = reference.split("/_history/")[0]
    if reference.startswith(("http://", "https://")):
        return "/".join(reference.rsplit("/", 2)[-2:])
    return reference


def source_of(ctx: RequestContext) -> str:
    """Who a write comes from, as one string: `channel|system` for feeds, `channel|user` otherwise.

    The authority registry matches `ctx.source`/`ctx.source_system`; this string is what a version
    records as its source, so two different senders can be told apart later (conflicts).
    """
    if ctx.source in FEEDS:
        return f"{ctx.source}|{ctx.source_system or ''}"
    return f"{ctx.source}|{ctx.fhir_user or ctx.subject or ''}"


def agent_for(ctx: RequestContext) -> Resource:
    """Provenance.agent for the caller: a system for feeds, the user otherwise."""
    who: Resource
    role = "author"
    if ctx.source in FEEDS:
        system = ctx.source_system or "unknown"
        who = {
            "identifier": {"system": SOURCE_SYSTEM_PREFIX + ctx.source, "value": system},
            "display": system,
        }
    elif ctx.fhir_user and "/" in ctx.fhir_user:
        who = {"reference": ctx.fhir_user}
    else:
        who = {"identifier": {"system": SUBJECT_SYSTEM, "value": ctx.subject or "anonymous"}}
    if ctx.source == "cli":
        role = "performer"  # the operator ran the ingest; the files' authors are unknown
    return {"type": {"coding": [{"system": PARTICIPANT_TYPE, "code": role}]}, "who": who}


@dataclass(frozen=True, slots=True)
class BundleSources:
    """What a submitted Bundle says about where its content comes from (one scan per Bundle)."""

    submission: str
    entities: tuple[Resource, ...]  # message / bundle level `source` entities
    linked: Mapping[str, tuple[str, ...]]  # "Type/id" -> client Provenance references in the Bundle
    instance_uids: tuple[str, ...]  # DICOM SOP Instance UIDs of the Bundle's ImagingStudy entries
    timestamp: str | None

    @classmethod
    def scan(cls, bundle: Mapping[str, Any]) -> BundleSources:
        entries = bundle.get("entry")
        resources = [
            e["resource"]
            for e in (entries if isinstance(entries, list) else ())
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        identifier = bundle.get("identifier") if isinstance(bundle.get("identifier"), dict) else None
        entities: list[Resource] = []
        linked: dict[str, list[str]] = {}
        uids: list[str] = []
        for resource in resources:
            kind, res_id = resource.get("resourceType"), resource.get("id")
            if kind == "MessageHeader" and isinstance(res_id, str):
                what: Resource = {"reference": f"MessageHeader/{res_id}", "display": "HL7v2 message"}
                if identifier is not None:
                    what["identifier"] = identifier  # MSH-10, the message control id
                entities.append({"role": "source", "what": what})
            elif kind == "Provenance" and isinstance(res_id, str):
                for target in _references(resource.get("target")):
                    linked.setdefault(unversioned(target), []).append(f"Provenance/{res_id}")
            elif kind == "ImagingStudy":
                uids.extend(_instance_uids(resource))
        if identifier is not None and not entities:
            entities.append(
                {"role": "source", "what": {"identifier": identifier, "display": "submitted Bundle"}}
            )
        timestamp = bundle.get("timestamp")
        return cls(
            submission=uuid.uuid4().hex,
            entities=tuple(entities),
            linked={k: tuple(v) for k, v in linked.items()},
            instance_uids=tuple(dict.fromkeys(uids)),
            timestamp=timestamp if isinstance(timestamp, str) else None,
        )


def _references(value: Any) -> Iterable[str]:
    for item in value if isinstance(value, list) else ():
        if isinstance(item, dict) and isinstance(ref := item.get("reference"), str):
            yield ref


def _instance_uids(study: Mapping[str, Any]) -> list[str]:
    uids: list[str] = []
    for series in study.get("series") or ():
        for instance in (series.get("instance") or ()) if isinstance(series, dict) else ():
            if isinstance(instance, dict) and isinstance(uid := instance.get("uid"), str):
                uids.append(uid)
    return uids


class ProvenanceStage:
    """Attaches the Provenance of each written version to the change (see the module docstring)."""

    def __init__(self, *, clock: Any = time.time) -> None:
        self._clock = clock
        # The Bundle last scanned and what it said: stages see one Bundle's changes in a row, so a
        # single slot makes the scan once per submit; identity (not equality) decides a hit.
        self._memo: tuple[Mapping[str, Any], BundleSources] | None = None

    def sources(self, bundle: Mapping[str, Any]) -> BundleSources:
        memo = self._memo
        if memo is not None and memo[0] is bundle:
            return memo[1]
        found = BundleSources.scan(bundle)
        self._memo = (bundle, found)
        return found

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        if change.res_type in UNPROVENANCED:
            return
        change.additions.append(self.build(change, ctx))

    def build(self, change: Change, ctx: RequestContext) -> Resource:
        sources = self.sources(change.bundle)
        operation = OPERATIONS[change.interaction]
        codings: list[Resource] = [
            {"system": DATA_OPERATION, "code": operation, "display": OPERATION_DISPLAY[operation]}
        ]
        if ctx.source in FEEDS and change.resource is not None:
            codings.append({"system": LIFECYCLE, "code": "transform", "display": "Transform"})
        provenance: Resource = {
            "resourceType": "Provenance",
            "id": str(uuid.uuid4()),
            "meta": {"tag": [{"system": SUBMISSION_SYSTEM, "code": sources.submission}]},
            "target": [{"reference": versioned(change.res_type, change.res_id, next_version(change))}],
        }
        if sources.timestamp is not None:
            provenance["occurredDateTime"] = sources.timestamp
        provenance["recorded"] = format_instant(self._clock())
        provenance["activity"] = {"coding": codings}
        provenance["agent"] = [agent_for(ctx)]
        entities = self._entities(change, sources)
        if entities:
            provenance["entity"] = entities
        labelled = change.resource if change.resource is not None else _stored(change)
        if labelled is not None:
            labels = read_labels(labelled)[0]
            if labels.codings():
                write_labels(provenance, labels)
        return provenance

    def _entities(self, change: Change, sources: BundleSources) -> list[Resource]:
        entities = list(sources.entities)
        for link in sources.linked.get(f"{change.res_type}/{change.res_id}", ()):
            entities.append({"role": "source", "what": {"reference": link}})
        uids = sources.instance_uids
        if change.res_type == "ImagingStudy" and change.resource is not None:
            seen = set(_instance_uids(_stored(change) or {}))
            uids = tuple(uid for uid in _instance_uids(change.resource) if uid not in seen)
        for uid in uids[:MAX_INSTANCE_ENTITIES]:
            entities.append(
                {
                    "role": "source",
                    "what": {
                        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"},
                        "display": "DICOM SOP Instance",
                    },
                }
            )
        previous = change.previous
        if previous is not None and not previous.deleted:
            what = {"reference": versioned(change.res_type, change.res_id, previous.version_id)}
            entities.append({"role": "revision", "what": what})
        return entities


def combine(provenances: Iterable[Resource]) -> list[Resource]:
    """The Provenance of one submit's versions, those recording the same activity folded into one.

    Same activity means everything but `id`, `recorded` (the same submit, microseconds apart),
    `target` and `entity` is equal: the operation (create/update/delete, transform, merge), the
    agent, the authority's `policy` decisions, the submission tag and the security labels — so a
    PSY-labelled result's Provenance never shares labels with its neighbours', and what the policy
    decision point shows of one Provenance it would have shown of each. A Provenance targeting a
    Patient stays alone: it is in that patient's compartment, and folding other targets into it
    would put their provenance there too (or another patient's into this one's). The folded one
    keeps the first one's id and lists every target and each distinct entity once (the message's
    source once, each target's `revision`).
    """
    folded: dict[bytes, Resource] = {}
    entities: dict[bytes, set[bytes]] = {}
    for provenance in provenances:
        key = _canonical(_activity(provenance))
        into = folded.get(key)
        if into is None:
            folded[key] = provenance
            entities[key] = {_canonical(e) for e in provenance.get("entity", ())}
            continue
        into.setdefault("target", []).extend(provenance.get("target", ()))
        seen = entities[key]
        for entity in provenance.get("entity", ()):
            if (encoded := _canonical(entity)) not in seen:
                seen.add(encoded)
                into.setdefault("entity", []).append(entity)
    return list(folded.values())


def _activity(provenance: Resource) -> Resource:
    """What makes two Provenance of one submit record the same activity (see `combine`)."""
    activity = {k: v for k, v in provenance.items() if k not in PER_VERSION}
    patients = [r for r in _references(provenance.get("target")) if r.startswith("Patient/")]
    if patients:
        activity["target"] = patients
    return activity


PER_VERSION = frozenset({"id", "recorded", "target", "entity"})


def _canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _stored(change: Change) -> Resource | None:
    """The previous version's stored form: labels, codes and instance UIDs are never encrypted."""
    previous = change.previous
    if previous is None or previous.deleted or previous.content is None:
        return None
    return previous.resource()


def provenance_stage(settings: Settings) -> ProvenanceStage:
    """Pipeline factory (the stage needs no settings)."""
    return ProvenanceStage()
