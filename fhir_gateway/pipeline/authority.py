"""The `authority` write stage: which system is the system of record (SoR) for each data category.

Pipeline spec: `fhir_gateway.pipeline.authority:authority_stage`; rules: `pipeline/rules/authority-v1.yaml`
(format documented there) or the file named by settings `authority.rules`. Per governed write it

1. puts the resource in a category (resource type + category codes) and the caller in a role —
   authoritative, contributor, or neither (422) — from `ctx.source`/`ctx.source_system`/roles;
2. settles differences with the current version (conflicts.resolve: authority, then the sources'
   timestamps, then the review queue) and applies the category's rule to a non-authoritative change
   of SoR data: accept-secondary (SoR values kept), reject (422, an HL7v2 sender gets AE) or queue;
3. marks the version: meta.tag AUTHORITY_SYSTEM `sor` (holds SoR data) / `secondary` (written by a
   non-authoritative source), and a meta extension (CLAIM_URL) with the writer and its timestamp,
   which the next write's conflict check reads — labels and meta are never encrypted;
4. records the decision in the version's Provenance (added by the provenance stage, which must run
   before this one): policy `{policy}/{version}#{category}/{decision}`, `urn:fhir-gateway:conflict:N`
   for a logged or queued conflict, and ISO 21089 `merge` when two sources' values were combined;
5. notes the version in the category's change feed (pipeline/feed.py, `$changes`), and pushes it
   through the durable outbox (a reference, never content: the receiver reads the version back
   through the PDP): authoritative updates to the category's subscribers, contributions (versions
   other sources wrote) to its system of record, where one is subscribed. While the SoR is down
   those pushes wait in the outbox and are retried; nothing is dropped.

Rows (conflicts, outbox) are written in the submit's own transaction through `change.tx`, and the
previous version is decrypted through `change.plaintext` — both handed to stages by the
EntryProcessor. A write identical to the current data keeps the current marks, so the store still
sees a no-op and makes no version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhir_gateway.context import RequestContext
from fhir_gateway.crypto.fields import MARKER_URL
from fhir_gateway.errors import Issue, Unprocessable
from fhir_gateway.fhir.dates import date_range, format_instant
from fhir_gateway.fhir.json import Resource
from fhir_gateway.pipeline import conflicts, feed
from fhir_gateway.pipeline.authority_config import AuthoritySettings
from fhir_gateway.pipeline.conflicts import Claim, Resolution
from fhir_gateway.pipeline.provenance import (
    LIFECYCLE,
    UNPROVENANCED,
    next_version,
    source_of,
    versioned,
)
from fhir_gateway.pipeline.registry import Category, Registry, authority_settings
from fhir_gateway.routing.outbox import enqueue

if TYPE_CHECKING:
    from fhir_gateway.pipeline.stage import Change
    from fhir_gateway.settings import Settings
    from fhir_gateway.store.store import StoredVersion, Transaction

log = logging.getLogger("fhir_gateway.authority")

AUTHORITY_SYSTEM = "http://fhir-gateway.dev/fhir/CodeSystem/authority"
CLAIM_URL = "http://fhir-gateway.dev/fhir/StructureDefinition/authority-claim"
CONFLICT_URN = "urn:fhir-gateway:conflict:"
RESOLUTION_TAG = "conflict-resolution"  # Bundle.meta.tag of a $resolve submit
SOR, SECONDARY = "sor", "secondary"
TAG_DISPLAY = {SOR: "holds system-of-record data", SECONDARY: "written by a non-authoritative source"}
_SEALED = MARKER_URL.encode()


# --- version marks ------------------------------------------------------------------------------


def tags_of(resource: Mapping[str, Any] | None) -> set[str]:
    meta = resource.get("meta") if resource is not None else None
    tags = meta.get("tag") if isinstance(meta, dict) else None
    return {
        t["code"]
        for t in (tags if isinstance(tags, list) else ())
        if isinstance(t, dict) and t.get("system") == AUTHORITY_SYSTEM and isinstance(t.get("code"), str)
    }


def claim_of(resource: Mapping[str, Any], fallback_time: float | None) -> Claim:
    """The writer a stored version records (an unmarked version: an unknown source, no timestamp)."""
    meta = resource.get("meta")
    for ext in (meta.get("extension") or ()) if isinstance(meta, dict) else ():
        if isinstance(ext, dict) and ext.get("url") == CLAIM_URL:
            parts = {e.get("url"): e for e in ext.get("extension") or () if isinstance(e, dict)}
            source = str(parts.get("source", {}).get("valueString", "unknown"))
            stamp = parts.get("time", {}).get("valueInstant")
            return Claim(source, SOR in tags_of(resource), _epoch(stamp))
    return Claim("unknown", SOR in tags_of(resource), fallback_time)


def mark(resource: Resource, codes: Sequence[str], claim: Claim) -> None:
    """Replace the authority tags and claim extension of a resource about to be stored."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    tags = [
        t for t in meta.get("tag") or () if not (isinstance(t, dict) and t.get("system") == AUTHORITY_SYSTEM)
    ]
    tags += [{"system": AUTHORITY_SYSTEM, "code": c, "display": TAG_DISPLAY[c]} for c in codes]
    meta["tag"] = tags
    parts: list[Resource] = [{"url": "source", "valueString": claim.source}]
    if claim.time is not None:
        parts.append({"url": "time", "valueInstant": format_instant(claim.time)})
    extensions = [
        e for e in meta.get("extension") or () if not (isinstance(e, dict) and e.get("url") == CLAIM_URL)
    ]
    meta["extension"] = [*extensions, {"url": CLAIM_URL, "extension": parts}]


def marks_for(new: Claim, *, held_by_sor: bool) -> list[str]:
    """`sor` while the SoR's data is in the resource, `secondary` when a non-SoR source wrote it."""
    return ([SOR] if new.authoritative or held_by_sor else []) + ([] if new.authoritative else [SECONDARY])


def _is_mark(item: Any) -> bool:
    return isinstance(item, dict) and (item.get("system") == AUTHORITY_SYSTEM or item.get("url") == CLAIM_URL)


def copy_marks(source: Mapping[str, Any], resource: Resource) -> None:
    """Give `resource` exactly the authority marks `source` has (so an identical write stays a no-op)."""
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    old = source.get("meta")
    old = old if isinstance(old, dict) else {}
    for key in ("tag", "extension"):
        mine = [x for x in meta.get(key) or () if not _is_mark(x)]
        theirs = [x for x in old.get(key) or () if _is_mark(x)]
        if mine or theirs:
            meta[key] = mine + theirs
        else:
            meta.pop(key, None)
    if not meta:
        resource.pop("meta", None)


def _epoch(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return date_range(value)[0]
    except ValueError:
        return None


# --- the stage ----------------------------------------------------------------------------------

Plaintext = Callable[["StoredVersion"], Awaitable[Resource]]


@dataclass(slots=True)
class Outcome:
    """What the stage decided for one change, for the Provenance and the caller."""

    decisions: list[str] = field(default_factory=list)
    conflict_ids: list[int] = field(default_factory=list)
    merged: bool = False


class AuthorityStage:
    def __init__(self, registry: Registry, config: AuthoritySettings) -> None:
        self.registry = registry
        self.config = config
        self.subscribers: dict[str, tuple[str, ...]] = {}
        for sub in config.subscribers:
            if not sub.system_of_record:
                self.subscribers[sub.category] = (*self.subscribers.get(sub.category, ()), sub.channel)
        self.sor_channels = config.sor_channels()

    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        if change.res_type in UNPROVENANCED or change.res_type not in self.registry.by_type:
            return
        stored = _stored(change.previous)
        # The current version's category counts too: changing a lab result's category code must not
        # move it out of the laboratory's authority.
        category = self.registry.category_of(change.resource or {}) or self.registry.category_of(stored or {})
        if category is None:
            return
        role = category.role_of(ctx)
        if role is None:
            raise Unprocessable(f"This source may not write {category.name} data", code="business-rule")
        outcome = Outcome()
        tx: Transaction | None = change.tx
        new = Claim(source_of(ctx), role == "authoritative", _epoch(change.bundle.get("timestamp")))
        held_by_sor = SOR in tags_of(stored)
        if self._is_resolution(change, ctx):
            outcome.decisions.append("resolved")
            if change.resource is not None:
                mark(change.resource, [SOR] if held_by_sor else [SECONDARY], new)
        elif change.resource is None:
            if held_by_sor and not new.authoritative:
                raise Unprocessable(
                    f"Only the system of record may delete {category.name} data", code="business-rule"
                )
            outcome.decisions.append("authoritative" if new.authoritative else "secondary")
        elif stored is None:
            outcome.decisions.append("authoritative" if new.authoritative else "secondary")
            mark(change.resource, marks_for(new, held_by_sor=False), new)
        elif not await self._update(change, category, new, held_by_sor, outcome, tx):
            return  # nothing changed: no version, so nothing to record or push
        self._record(change, category, outcome)
        if tx is not None:
            await feed.append(tx, category.name, change.res_type, change.res_id, next_version(change))
        if "resolved" in outcome.decisions:
            return
        if new.authoritative:
            await self._push(change, category, ctx, tx, self.subscribers.get(category.name, ()))
        elif category.name in self.sor_channels:
            sor = (self.sor_channels[category.name],)
            await self._push(change, category, ctx, tx, sor, event="contribution")

    async def _update(
        self,
        change: Change,
        category: Category,
        new: Claim,
        held_by_sor: bool,
        outcome: Outcome,
        tx: Transaction | None,
    ) -> bool:
        """Settle an update against the current version; False when it changes no data."""
        assert change.resource is not None and change.previous is not None
        incoming = change.resource
        current = await _plaintext(change)
        if current is None:  # sealed, and no way to open it: protect SoR data by refusing
            if held_by_sor and not new.authoritative:
                raise Unprocessable(
                    f"This source is not the system of record for {category.name} data",
                    code="business-rule",
                )
            outcome.decisions.append("authoritative" if new.authoritative else "secondary")
            mark(incoming, marks_for(new, held_by_sor=held_by_sor), new)
            return True
        if not conflicts.differing(current, incoming):
            copy_marks(current, incoming)
            return False
        held = claim_of(current, change.previous.last_updated)
        resolution = conflicts.resolve(
            current, incoming, held, new, protected=category.elements, held_by_sor=held_by_sor
        )
        by_authority = [name for name, why in resolution.kept.items() if why == "authority"]
        if by_authority and category.rule == "reject":
            raise Unprocessable(
                f"This source is not the system of record for {category.name} data",
                expression=[f"{change.res_type}.{name}" for name in by_authority],
                code="business-rule",
            )
        if by_authority and category.rule == "queue":
            for name in by_authority:
                del resolution.kept[name]
                resolution.queued.append(name)
        await self._log(change, category, new, resolution, incoming, outcome, tx)
        if not resolution.taken:  # every difference settled for the current values: nothing to write
            change.resource = {**current, "meta": dict(current.get("meta") or {})}
            return False
        change.resource = resolution.resource
        outcome.merged = resolution.merged
        if new.authoritative:
            outcome.decisions.append("authoritative")
        elif by_authority:
            outcome.decisions.append("queued" if category.rule == "queue" else "accept-secondary")
        else:
            outcome.decisions.append("secondary")
        mark(change.resource, marks_for(new, held_by_sor=held_by_sor), new)
        return True

    async def _log(
        self,
        change: Change,
        category: Category,
        new: Claim,
        resolution: Resolution,
        incoming: Mapping[str, Any],
        outcome: Outcome,
        tx: Transaction | None,
    ) -> None:
        """Keep the losing incoming values (`auto`) and the queued proposal (`open`)."""
        assert change.previous is not None
        lost = {k: v for k, v in resolution.losing(incoming).items() if k not in resolution.queued}
        lost = {k: v for k, v in lost.items() if v is not None}  # protecting an absent value loses nothing
        queued = {name: incoming.get(name) for name in resolution.queued}
        reasons = set(resolution.kept.values())
        for status, values, reason in (
            ("auto", lost, "authority" if "authority" in reasons else "timestamp"),
            ("open", queued, "queue-rule" if category.rule == "queue" else "timestamp-tie"),
        ):
            if not values:
                continue
            if tx is None:
                if status == "open":
                    raise Unprocessable(
                        f"A conflicting {category.name} update needs review, and the review queue is "
                        "not available to this pipeline",
                        code="business-rule",
                    )
                log.warning("authority_conflict_not_logged", extra={"category": category.name})
                continue
            conflict_id = await conflicts.record(
                tx.conn,
                status=status,
                category=category.name,
                res_type=change.res_type,
                res_id=change.res_id,
                base_version=change.previous.version_id,
                claim=new,
                reason=reason,
                proposed=values,
            )
            outcome.conflict_ids.append(conflict_id)
            outcome.decisions.append(f"conflict-{reason}")
        if resolution.queued:
            change.warnings.append(
                _information(
                    f"Some {category.name} elements conflict with the current data and wait for review",
                    [f"{change.res_type}.{name}" for name in resolution.queued],
                )
            )
        elif resolution.kept:
            change.warnings.append(
                _information(
                    f"The current {category.name} values were kept for some elements",
                    [f"{change.res_type}.{name}" for name in resolution.kept],
                )
            )

    def _record(self, change: Change, category: Category, outcome: Outcome) -> None:
        """Write the decision into this version's Provenance (added by the provenance stage)."""
        target = versioned(change.res_type, change.res_id, next_version(change))
        provenance = next(
            (
                a
                for a in change.additions
                if a.get("resourceType") == "Provenance"
                and any(t.get("reference") == target for t in a.get("target") or ())
            ),
            None,
        )
        if provenance is None:
            return
        policy = [self.registry.decision_uri(category, d) for d in outcome.decisions]
        policy += [f"{CONFLICT_URN}{i}" for i in outcome.conflict_ids]
        provenance["policy"] = [*provenance.get("policy", ()), *policy]
        if outcome.merged:
            activity = provenance.setdefault("activity", {"coding": []})
            activity["coding"].append({"system": LIFECYCLE, "code": "merge", "display": "Merge"})

    async def _push(
        self,
        change: Change,
        category: Category,
        ctx: RequestContext,
        tx: Transaction | None,
        channels: tuple[str, ...],
        *,
        event: str = "authoritative-update",
    ) -> None:
        if not channels:
            return
        if tx is None:
            log.warning("authority_push_not_queued", extra={"category": category.name})
            return
        payload = {
            "event": event,
            "category": category.name,
            "resource": versioned(change.res_type, change.res_id, next_version(change)),
            "interaction": change.interaction,
            "source": ctx.source_system or ctx.source,
            "at": time.time(),
        }
        for channel in channels:
            await enqueue(tx, channel, payload)

    def _is_resolution(self, change: Change, ctx: RequestContext) -> bool:
        """A `$resolve` submit by a reviewer: the reviewer's choice is applied as chosen."""
        meta = change.bundle.get("meta")
        tags = meta.get("tag") if isinstance(meta, dict) else None
        marked = any(
            isinstance(t, dict) and t.get("system") == AUTHORITY_SYSTEM and t.get("code") == RESOLUTION_TAG
            for t in (tags if isinstance(tags, list) else ())
        )
        return marked and not set(ctx.roles).isdisjoint(self.config.reviewer_roles)


def _information(text: str, expression: list[str]) -> Issue:
    return Issue("information", "informational", text, expression)


def _stored(previous: StoredVersion | None) -> Resource | None:
    """The current version's stored form (tags, claim and category codes are never encrypted)."""
    if previous is None or previous.deleted or previous.content is None:
        return None
    return previous.resource()


async def _plaintext(change: Change) -> Resource | None:
    """The current version decrypted: through the EntryProcessor's hook, else as stored when nothing
    in it is sealed; None when it is sealed and there is no hook."""
    previous = change.previous
    assert previous is not None and previous.content is not None
    hook: Plaintext | None = change.plaintext
    if hook is not None:
        return await hook(previous)
    if _SEALED in previous.content:
        return None
    return previous.resource()


def authority_stage(settings: Settings) -> AuthorityStage:
    """Pipeline factory: the registry from `authority.rules`, else the packaged authority-v1."""
    config = authority_settings(settings)
    return AuthorityStage(Registry.load(config.rules), config)
