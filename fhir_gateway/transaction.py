"""Processing of the entries of one submitted Bundle (FHIR R4 http.html#transaction).

A transaction is planned and applied inside ONE database transaction: POST ids are assigned first so
`urn:uuid:` fullUrls and conditional references can be rewritten to `Type/id`, then entries are
applied in the order the spec prescribes (DELETE, POST, PUT/PATCH, GET) and answered in the order
they came. Any failure aborts the whole transaction. A batch applies each entry on its own.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import jsonpatch
import jsonpointer

from fhir_gateway.crypto.service import Sealer
from fhir_gateway.errors import BadRequest, Issue, NotFound, PreconditionFailed, Unprocessable
from fhir_gateway.fhir.dates import format_instant
from fhir_gateway.fhir.json import Resource, dumps, loads
from fhir_gateway.fhir.references import iter_references, rewrite_references
from fhir_gateway.fhir.requests import RequestTarget, check_id
from fhir_gateway.pipeline.provenance import combine
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.privacy.compartment import index_rows
from fhir_gateway.store.store import StoredVersion, Transaction

if TYPE_CHECKING:
    from fhir_gateway.context import RequestContext
    from fhir_gateway.gateway import Gateway

METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass(slots=True)
class EntryPlan:
    index: int
    method: str
    target: RequestTarget
    resource: Any
    full_url: str | None
    if_match: str | None
    if_none_exist: str | None
    assigned_id: str | None = None


@dataclass(slots=True)
class EntryResult:
    """What one entry did; the REST layer and the Bundle response are both built from it."""

    status: int
    res_type: str | None = None
    res_id: str | None = None
    version: StoredVersion | None = None
    resource: Resource | None = None
    outcome: Resource | None = None
    warnings: list[Issue] = field(default_factory=list)

    def to_entry(self, base: str) -> Resource:
        response: dict[str, Any] = {"status": STATUS_TEXT.get(self.status, str(self.status))}
        entry: dict[str, Any] = {"response": response}
        if self.version is not None:
            v = self.version
            if v.method in ("POST", "PUT", "PATCH") or self.status == 201:
                response["location"] = f"{v.res_type}/{v.res_id}/_history/{v.version_id}"
            response["etag"] = f'W/"{v.version_id}"'
            response["lastModified"] = format_instant(v.last_updated)
            entry["fullUrl"] = f"{base}/{v.res_type}/{v.res_id}"
        if self.resource is not None:
            entry["resource"] = self.resource
        if self.outcome is not None:
            response["outcome"] = self.outcome
        return entry


def parse_etag(value: str) -> int:
    raw = value.strip()
    if raw.startswith("W/"):
        raw = raw[2:]
    raw = raw.strip('"')
    if not raw.isdigit():
        raise BadRequest('If-Match must be an ETag such as W/"3"', expression="If-Match", code="value")
    return int(raw)


class EntryProcessor:
    """Applies planned entries inside one store transaction on behalf of the gateway."""

    def __init__(
        self,
        gateway: Gateway,
        tx: Transaction,
        ctx: RequestContext,
        bundle: Resource,
        *,
        single: bool = False,
    ) -> None:
        self.single = single
        self.gw = gateway
        self.tx = tx
        self.ctx = ctx
        self.bundle = bundle
        self.aliases: dict[str, str] = {}  # fullUrl -> Type/id
        self._opened: dict[tuple[str, str, int], bytes] = {}  # decrypted versions, serialised
        self._provenance: list[Resource] = []  # of the versions written so far, stored by `finish`

    async def plaintext(self, version: StoredVersion) -> Resource:
        """`Gateway.plaintext`, decrypting each stored version once per submit: the authority stage
        and the no-change check both open the previous version. Every caller gets its own copy: the
        first the decrypted resource itself, the later ones a copy parsed from it as it was then."""
        key = (version.res_type, version.res_id, version.version_id)
        opened = self._opened.get(key)
        if opened is not None:
            copy: Resource = loads(opened, what="stored resource")
            return copy
        resource = await self.gw.plaintext(version, self.tx.conn)
        self._opened[key] = dumps(resource)
        return resource

    def where(self, plan: EntryPlan) -> str:
        """Where a problem in an entry's resource is, in the terms the client used."""
        return plan.target.res_type or "Resource" if self.single else f"Bundle.entry[{plan.index}].resource"

    # ---- planning -------------------------------------------------------------------------------
    async def assign_ids(self, plans: list[EntryPlan]) -> None:
        """Give every create its id (or its conditional match) so references can be rewritten."""
        for plan in plans:
            t = plan.target
            if plan.method == "POST" and t.res_type:
                if plan.if_none_exist:
                    matches = await self.find(t.res_type, plan.if_none_exist, "If-None-Exist")
                    if len(matches) > 1:
                        raise PreconditionFailed(
                            "If-None-Exist matched more than one resource",
                            expression=f"Bundle.entry[{plan.index}].request.ifNoneExist",
                        )
                    if matches:
                        plan.assigned_id = matches[0].res_id
                        self._alias(plan, t.res_type, plan.assigned_id)
                        continue
                plan.assigned_id = str(uuid.uuid4())
                if isinstance(plan.resource, dict):
                    plan.resource["id"] = plan.assigned_id  # stages see the final id (label propagation)
                self._alias(plan, t.res_type, plan.assigned_id)
            elif plan.method == "PUT" and t.res_type:
                if t.res_id:
                    self._alias(plan, t.res_type, t.res_id)
                elif t.query:
                    plan.assigned_id = await self._conditional_update_id(plan)
                    self._alias(plan, t.res_type, plan.assigned_id)

    def _alias(self, plan: EntryPlan, res_type: str, res_id: str) -> None:
        if plan.full_url:
            self.aliases[plan.full_url] = f"{res_type}/{res_id}"

    async def prefetch_current(self, plans: list[EntryPlan]) -> None:
        """Read the current versions of every resource the updates and deletes name, at once."""
        keys = [
            (p.target.res_type, p.target.res_id or p.assigned_id)
            for p in plans
            if p.method != "POST" and p.target.res_type
        ]
        await self.tx.prefetch([(t, i) for t, i in keys if i])

    async def resolve_references(self, plans: list[EntryPlan]) -> None:
        conditional: dict[str, str] = {}
        for plan in plans:
            if isinstance(plan.resource, dict):
                refs = iter_references(plan.resource)  # one walk finds them for both steps
                for ref in _conditional_refs(refs):
                    if ref not in conditional:
                        conditional[ref] = await self._resolve_conditional(ref, plan.index)
                mapping = {**self.aliases, **conditional}
                rewrite_references(refs, mapping.get)

    async def _resolve_conditional(self, ref: str, index: int) -> str:
        res_type, _, query = ref.partition("?")
        matches = await self.find(res_type, query, f"Bundle.entry[{index}].resource")
        where = f"Bundle.entry[{index}].resource"
        if not matches:
            raise NotFound("A conditional reference matched no resource", expression=where)
        if len(matches) > 1:
            raise PreconditionFailed(
                "A conditional reference matched more than one resource", expression=where
            )
        return f"{res_type}/{matches[0].res_id}"

    async def find(
        self, res_type: str, query: str | tuple[tuple[str, str], ...], where: str
    ) -> list[StoredVersion]:
        select = await self.gw.conditional_query(res_type, query, where, self.ctx, self.tx.conn)
        return await self.tx.select(select)

    async def _conditional_update_id(self, plan: EntryPlan) -> str:
        t = plan.target
        assert t.res_type is not None
        matches = await self.find(t.res_type, t.query, "url")
        if len(matches) > 1:
            raise PreconditionFailed(
                "The conditional update matched more than one resource", expression="url"
            )
        body_id = plan.resource.get("id") if isinstance(plan.resource, dict) else None
        if matches:
            if body_id is not None and body_id != matches[0].res_id:
                raise BadRequest(
                    "The resource id does not match the resource the condition selected",
                    expression=f"{t.res_type}.id",
                )
            return matches[0].res_id
        return check_id(body_id) if isinstance(body_id, str) else str(uuid.uuid4())

    # ---- applying -------------------------------------------------------------------------------
    async def apply(self, plan: EntryPlan) -> EntryResult:
        method = plan.method
        if method == "POST":
            return await self._create(plan)
        if method == "PUT":
            return await self._update(plan)
        if method == "PATCH":
            return await self._patch(plan)
        if method == "DELETE":
            return await self._delete(plan)
        return await self.gw.get_entry(plan.target, self.ctx)

    async def _create(self, plan: EntryPlan) -> EntryResult:
        res_type = _require_type(plan)
        assert plan.assigned_id is not None
        if plan.if_none_exist:
            existing = await self.tx.current(res_type, plan.assigned_id)
            if existing is not None and not existing.deleted:
                plain = await self.plaintext(existing)
                return EntryResult(200, res_type, existing.res_id, existing, plain)
        resource = self.gw.check_body(plan.resource, res_type, self.where(plan))
        resource["id"] = plan.assigned_id
        return await self.write("POST", res_type, plan.assigned_id, resource, None, plan)

    async def _update(self, plan: EntryPlan) -> EntryResult:
        res_type = _require_type(plan)
        res_id = plan.target.res_id or plan.assigned_id
        assert res_id is not None
        resource = self.gw.check_body(plan.resource, res_type, self.where(plan))
        if plan.target.res_id is not None and resource.get("id") != res_id:
            raise BadRequest(
                "The resource id must be present and equal the id in the URL", expression=f"{res_type}.id"
            )
        resource["id"] = res_id
        previous = await self._checked_current(plan, res_type, res_id)
        return await self.write("PUT", res_type, res_id, resource, previous, plan)

    async def _patch(self, plan: EntryPlan) -> EntryResult:
        res_type = _require_type(plan)
        res_id = await self._single_target(plan, res_type)
        previous = await self._checked_current(plan, res_type, res_id)
        if previous is None or previous.deleted:
            raise NotFound("Cannot patch a resource that does not exist", expression=res_type)
        operations = _patch_operations(plan.resource)
        try:
            patched = jsonpatch.apply_patch(await self.plaintext(previous), operations)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError, KeyError) as exc:
            raise Unprocessable(
                f"The JSON Patch could not be applied: {type(exc).__name__}", code="processing"
            ) from None
        if (
            not isinstance(patched, dict)
            or patched.get("resourceType") != res_type
            or patched.get("id") != res_id
        ):
            raise Unprocessable("A patch must not change resourceType or id", expression=f"{res_type}.id")
        return await self.write("PATCH", res_type, res_id, patched, previous, plan)

    async def _delete(self, plan: EntryPlan) -> EntryResult:
        res_type = _require_type(plan)
        res_id = await self._single_target(plan, res_type, missing_ok=True)
        if res_id is None:
            return EntryResult(204)
        previous = await self._checked_current(plan, res_type, res_id)
        if previous is None:
            raise NotFound("Resource not found", expression=res_type)
        if previous.deleted:
            return EntryResult(204, res_type, res_id)
        return await self.write("DELETE", res_type, res_id, None, previous, plan)

    async def _single_target(self, plan: EntryPlan, res_type: str, *, missing_ok: bool = False) -> Any:
        if plan.target.res_id:
            return plan.target.res_id
        if not plan.target.query:
            raise BadRequest(f"{plan.method} needs a resource id or a search condition", expression="url")
        matches = await self.find(res_type, plan.target.query, "url")
        if len(matches) > 1:
            raise PreconditionFailed(
                f"The conditional {plan.method.lower()} matched more than one resource", expression="url"
            )
        if not matches:
            if missing_ok:
                return None
            raise NotFound("The condition matched no resource", expression="url")
        return matches[0].res_id

    async def _checked_current(self, plan: EntryPlan, res_type: str, res_id: str) -> StoredVersion | None:
        current = await self.tx.current(res_type, res_id)
        if plan.if_match is not None:
            wanted = parse_etag(plan.if_match)
            if current is None or current.deleted or current.version_id != wanted:
                raise PreconditionFailed("If-Match does not match the current version", expression="If-Match")
        return current

    async def write(
        self,
        method: str,
        res_type: str,
        res_id: str,
        resource: Resource | None,
        previous: StoredVersion | None,
        plan: EntryPlan,
    ) -> EntryResult:
        """Run the pipeline on one change and store the resulting version (plus the stages' additions)."""
        change = Change(
            method,
            res_type,
            res_id,
            resource,
            previous,
            self.bundle,
            plan.index,
            tx=self.tx,
            plaintext=self.plaintext,
        )
        await self.gw.pipeline.run(change, self.ctx)
        before = await self._unchanged_base(change, previous)
        if before is not None and _without_version(change.resource or {}) == _without_version(before):
            # An update that changes nothing (a feed re-sending the same data) makes no new version:
            # history stays meaningful and the write costs one read instead of a dozen statements.
            assert previous is not None
            return EntryResult(200, res_type, res_id, previous, before, warnings=change.warnings)
        version = await self.store_version(change.method, res_type, res_id, change.resource, previous)
        for addition in change.additions:
            if addition["resourceType"] == "Provenance":
                self._provenance.append(addition)
            else:
                add_id = addition.get("id") or str(uuid.uuid4())
                await self.store_version("POST", addition["resourceType"], add_id, addition, None)
        status = 201 if method != "DELETE" and (previous is None or previous.deleted) else 200
        if method == "DELETE":
            status = 204
        return EntryResult(status, res_type, res_id, version, change.resource, warnings=change.warnings)

    async def finish(self) -> None:
        """Store the Provenance of the versions written, those of one activity as one (`combine`).

        Call once every entry is applied, inside the same database transaction."""
        for provenance in combine(self._provenance):
            add_id = provenance.get("id") or str(uuid.uuid4())
            await self.store_version("POST", "Provenance", add_id, provenance, None)
        self._provenance.clear()

    async def _unchanged_base(self, change: Change, previous: StoredVersion | None) -> Resource | None:
        """The previous content, when this change could be a no-op update (else None)."""
        # Additions (Provenance) belong to the version: no new version, no additions.
        if change.method not in ("PUT", "PATCH") or change.resource is None:
            return None
        if previous is None or previous.deleted or previous.content is None:
            return None
        return await self.plaintext(previous)

    async def _sealer(self) -> Sealer | None:
        """The PHI sealer of this transaction (the key version current when it began)."""
        if self.gw.crypto is None:
            return None
        if self.tx.sealer is None:
            self.tx.sealer = await self.gw.crypto.sealer(self.tx.conn)
        sealer: Sealer = self.tx.sealer
        return sealer

    async def store_version(
        self,
        method: str,
        res_type: str,
        res_id: str,
        resource: Resource | None,
        previous: StoredVersion | None,
    ) -> StoredVersion:
        now = time.time()
        if previous is not None and now <= previous.last_updated:
            now = previous.last_updated + 1e-6  # keep versions of one resource strictly ordered
        version_id = previous.version_id + 1 if previous is not None else 1
        content = None
        rows = None
        if resource is not None:
            resource["id"] = res_id
            meta = resource.get("meta")
            if not isinstance(meta, dict):
                meta = resource["meta"] = {}
            meta["versionId"] = str(version_id)
            meta["lastUpdated"] = format_instant(now)
            rows = index_rows(res_type, res_id, resource)  # plaintext: PHI ones become blind indexes below
            sealer = await self._sealer()
            stored = resource
            if sealer is not None:
                stored, rows = sealer.seal(res_type, res_id, resource, rows)
            content = dumps(stored)
        version = StoredVersion(res_type, res_id, version_id, now, resource is None, content, method)
        await self.tx.write(version, previous=previous, rows=rows)
        return version


def _without_version(resource: Resource) -> Resource:
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}
    stripped = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        stripped["meta"] = meta
    return stripped


def _require_type(plan: EntryPlan) -> str:
    if plan.target.res_type is None:
        raise BadRequest(f"{plan.method} needs a resource type in the URL", expression="url")
    return plan.target.res_type


def _conditional_refs(refs: list[dict[str, Any]]) -> list[str]:
    return [
        r["reference"]
        for r in refs
        if "?" in r["reference"] and not r["reference"].startswith(("http:", "https:", "urn:"))
    ]


def _patch_operations(body: Any) -> list[Any]:
    """A JSON Patch document: a list (REST) or a Binary carrying one (Bundle entry)."""
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        if body.get("contentType") != "application/json-patch+json":
            raise BadRequest(
                "Only JSON Patch (application/json-patch+json) is supported", code="not-supported"
            )
        try:
            body = loads(base64.b64decode(str(body.get("data", "")), validate=True), what="patch")
        except (binascii.Error, ValueError):
            raise BadRequest("Binary.data is not base64", expression="Binary.data", code="value") from None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise BadRequest("FHIRPath Patch is not supported; send JSON Patch", code="not-supported")
    if not isinstance(body, list) or not all(isinstance(op, dict) for op in body):
        raise BadRequest("A JSON Patch must be an array of operations", code="structure")
    return body
