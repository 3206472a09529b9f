"""The Gateway: the only façade over the store. `submit` is the one write path; read/search the read path.

Every adapter (REST, HL7v2, DICOM, CLI ingest) ends by building a transaction or batch Bundle and
calling `Gateway.submit`; the REST layer turns a single create/update/patch/delete into a one-entry
transaction, so conditional logic, reference resolution, pipeline stages and the commit live here
once. Reads go through `read`/`vread`/`history`/`search`, where the policy decision point will sit.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import Select

from fhir_gateway.context import RequestContext
from fhir_gateway.crypto.errors import DecryptionFailed
from fhir_gateway.crypto.fields import MARKER_URL
from fhir_gateway.crypto.service import PhiCrypto
from fhir_gateway.definitions.search_parameters import resource_types
from fhir_gateway.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    Gone,
    Issue,
    MethodNotAllowed,
    NotFound,
    operation_outcome,
)
from fhir_gateway.fhir.dates import date_range, format_instant
from fhir_gateway.fhir.json import Resource, dumps
from fhir_gateway.fhir.requests import RequestTarget, parse_target
from fhir_gateway.pipeline import feed
from fhir_gateway.pipeline.outage import OutageReads
from fhir_gateway.pipeline.stage import Pipeline
from fhir_gateway.privacy.access import PERMIT, AccessPolicy, Decision, Grants, Interaction
from fhir_gateway.privacy.compartment import IndexRowsCache
from fhir_gateway.privacy.consent_store import ConsentCache
from fhir_gateway.privacy.grants import BREAK_GLASS_ROLE, policy_for
from fhir_gateway.privacy.redact import redact
from fhir_gateway.settings import Settings
from fhir_gateway.store import searching
from fhir_gateway.store.database import Connection
from fhir_gateway.store.group import GroupCommit
from fhir_gateway.store.search.params import ParsedSearch, parse_search
from fhir_gateway.store.search.query import where_clause
from fhir_gateway.store.store import Store, StoredVersion, Transaction, select_current
from fhir_gateway.transaction import METHOD_ORDER, EntryPlan, EntryProcessor, EntryResult

HTTP_METHODS = frozenset(METHOD_ORDER)
WRITE_INTERACTIONS: dict[str, Interaction] = {
    "POST": "create",
    "PUT": "update",
    "PATCH": "update",
    "DELETE": "delete",
}
# Stored content holding encrypted PHI carries the marker extension: without it there is nothing to open.
ENCRYPTED_MARK = MARKER_URL.encode()
# $changes: where a feed entry stands, and where the next pull resumes (pass it back as _cursor).
FEED_POSITION = "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-position"
FEED_CURSOR = "http://fhir-gateway.dev/fhir/StructureDefinition/change-feed-cursor"
CommitHook = Callable[[Transaction, list[EntryResult]], Awaitable[None]]


class Gateway:
    def __init__(self, settings: Settings, store: Store, pipeline: Pipeline | None = None) -> None:
        self.settings = settings
        self.store = store
        self.pipeline = pipeline if pipeline is not None else Pipeline.from_settings(settings)
        self.types = resource_types()
        self.consents = ConsentCache(store, settings.privacy.consent_cache_seconds)
        self.facts = IndexRowsCache()  # the PDP's per-version facts, by stored bytes
        self.crypto = PhiCrypto.from_settings(settings)
        self.group_commit = GroupCommit(store, max_batch=settings.hl7.group_commit_max_messages)
        self._crypto_started = self.crypto is None
        self.outage = OutageReads.from_settings(settings, store)  # None: no system of record tracked

    async def ensure_crypto(self) -> None:
        """Load (on first use: create) the PHI key ring; before any write transaction opens, since
        creating the first key version takes a transaction of its own."""
        if not self._crypto_started and self.crypto is not None:
            await self.crypto.start(self.store)
            self._crypto_started = True

    # ---- write path -----------------------------------------------------------------------------
    async def submit(
        self,
        bundle: Resource,
        ctx: RequestContext,
        *,
        base: str = "",
        within: CommitHook | None = None,
        grouped: bool = False,
    ) -> Resource:
        """Apply a transaction or batch Bundle; answer with its transaction-/batch-response Bundle."""
        results = await self.submit_entries(bundle, ctx, within=within, grouped=grouped)
        kind = "transaction-response" if bundle.get("type") == "transaction" else "batch-response"
        return {"resourceType": "Bundle", "type": kind, "entry": [r.to_entry(base) for r in results]}

    async def submit_entries(
        self,
        bundle: Resource,
        ctx: RequestContext,
        *,
        single: bool = False,
        within: CommitHook | None = None,
        grouped: bool = False,
    ) -> list[EntryResult]:
        """The entries' results in Bundle order. `single` marks a REST interaction wrapped in a Bundle,
        so error expressions name the resource rather than a Bundle entry the client never sent.

        `within` (transactions only) runs inside the submit's database transaction after every entry
        is applied, so an adapter can persist its own record (e.g. the HL7v2 message and its ACK for
        idempotency) atomically with the resources: both commit, or neither does.

        `grouped` (transactions only) lets the transaction share its database transaction with other
        concurrent grouped submits, inside a savepoint of its own (store/group.py): feeds pay one
        commit per group of messages instead of one per message. It still returns only after the
        commit, and its failure rolls back only its own entries.
        """
        plans = self._plan(bundle)
        if bundle.get("type") == "transaction":
            return await self._transaction(bundle, plans, ctx, single, within, grouped)
        if within is not None or grouped:
            raise ValueError("a commit hook or group commit needs a transaction Bundle")
        return [await self._batch_entry(bundle, plan, ctx) for plan in plans]

    async def _transaction(
        self,
        bundle: Resource,
        plans: list[EntryPlan],
        ctx: RequestContext,
        single: bool,
        within: CommitHook | None,
        grouped: bool,
    ) -> list[EntryResult]:
        writes = [p for p in plans if p.method not in ("GET", "HEAD")]
        policy = await self.policy(ctx)
        for plan in writes:
            self._authorize_write(policy, plan, None if single else plan.index)
        await self.ensure_crypto()

        async def apply(tx: Transaction) -> dict[int, EntryResult]:
            applied: dict[int, EntryResult] = {}
            processor = EntryProcessor(self, tx, ctx, bundle, single=single)
            await processor.assign_ids(writes)
            await processor.resolve_references(writes)
            await processor.prefetch_current(writes)
            for plan in sorted(writes, key=lambda p: (METHOD_ORDER[p.method], p.index)):
                try:
                    applied[plan.index] = await processor.apply(plan)
                except GatewayError as exc:
                    if not single:
                        exc.issues[0].expression = exc.issues[0].expression or [f"Bundle.entry[{plan.index}]"]
                    raise
            await processor.finish()
            if within is not None:
                await within(tx, [applied[p.index] for p in writes])
            return applied

        if grouped:
            results = await self.group_commit.run(apply)
        else:
            async with self.store.transaction() as tx:
                results = await apply(tx)
        if any(p.target.res_type == "Consent" for p in writes):
            self.consents.invalidate()  # a consent change takes effect with the next request
        for plan in plans:
            if plan.index not in results:
                results[plan.index] = await self.get_entry(plan.target, ctx)
        return [results[p.index] for p in plans]

    async def _batch_entry(self, bundle: Resource, plan: EntryPlan, ctx: RequestContext) -> EntryResult:
        """One batch entry in its own database transaction; its failure is only its own answer."""
        try:
            if plan.method in ("GET", "HEAD"):
                return await self.get_entry(plan.target, ctx)
            self._authorize_write(await self.policy(ctx), plan, plan.index)
            await self.ensure_crypto()
            async with self.store.transaction() as tx:
                processor = EntryProcessor(self, tx, ctx, bundle)
                await processor.assign_ids([plan])
                await processor.resolve_references([plan])
                result = await processor.apply(plan)
                await processor.finish()
            if plan.target.res_type == "Consent":
                self.consents.invalidate()
            return result
        except GatewayError as exc:
            return EntryResult(exc.status, outcome=exc.outcome())

    @staticmethod
    def _authorize_write(policy: AccessPolicy, plan: EntryPlan, index: int | None) -> None:
        res_type = plan.target.res_type or "Bundle"
        try:
            if res_type == "AuditEvent":
                # The audit trail is written by the server alone, hash-chained (audit/); clients read it.
                raise MethodNotAllowed(
                    "AuditEvents are recorded by the server and cannot be written", expression="AuditEvent"
                )
            policy.require(res_type, WRITE_INTERACTIONS[plan.method])
        except GatewayError as exc:
            if index is not None:
                exc.issues[0].expression = [f"Bundle.entry[{index}].request"]
            raise

    def _plan(self, bundle: Any) -> list[EntryPlan]:
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("Expected a Bundle", expression="Bundle", code="structure")
        if bundle.get("type") not in ("transaction", "batch"):
            raise BadRequest(
                "Bundle.type must be transaction or batch", expression="Bundle.type", code="value"
            )
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise BadRequest("Bundle.entry must be an array", expression="Bundle.entry", code="structure")
        plans = [self._plan_entry(i, e) for i, e in enumerate(entries)]
        self._check_full_urls(plans)
        return plans

    def _plan_entry(self, index: int, entry: Any) -> EntryPlan:
        where = f"Bundle.entry[{index}]"
        request = entry.get("request") if isinstance(entry, dict) else None
        if not isinstance(request, dict):
            raise BadRequest("Each entry needs a request", expression=f"{where}.request", code="required")
        method, url = request.get("method"), request.get("url")
        if method not in HTTP_METHODS:
            raise BadRequest("Unsupported request method", expression=f"{where}.request.method", code="value")
        if not isinstance(url, str) or not url:
            raise BadRequest(
                "Each entry needs a request.url", expression=f"{where}.request.url", code="required"
            )
        try:
            target = parse_target(url, self.types)
        except GatewayError as exc:
            exc.issues[0].expression = [f"{where}.request.url"]
            raise
        if method not in ("GET", "HEAD") and (target.operation or target.version_id is not None):
            raise BadRequest(
                "Operations and versions cannot be written in a Bundle entry",
                expression=f"{where}.request.url",
                code="not-supported",
            )
        full_url = entry.get("fullUrl")
        return EntryPlan(
            index,
            method,
            target,
            entry.get("resource"),
            full_url if isinstance(full_url, str) else None,
            request.get("ifMatch"),
            request.get("ifNoneExist"),
        )

    @staticmethod
    def _check_full_urls(plans: list[EntryPlan]) -> None:
        seen: set[str] = set()
        for plan in plans:
            if plan.full_url and plan.method != "GET":
                if plan.full_url in seen:
                    raise BadRequest(
                        "Duplicate fullUrl in Bundle",
                        expression=f"Bundle.entry[{plan.index}].fullUrl",
                        code="duplicate",
                    )
                seen.add(plan.full_url)

    def check_body(self, body: Any, res_type: str, where: str) -> Resource:
        """The minimal shape every written resource must have (full validation is a pipeline stage)."""
        if not isinstance(body, dict):
            raise BadRequest(
                "The body must be a FHIR resource (a JSON object)", expression=where, code="structure"
            )
        if body.get("resourceType") != res_type:
            raise BadRequest(
                f"resourceType must be {res_type} for this URL",
                expression=f"{where}.resourceType",
                code="invalid",
            )
        return body

    async def conditional_query(
        self,
        res_type: str,
        query: str | Sequence[tuple[str, str]],
        where: str,
        ctx: RequestContext,
        conn: Connection,
    ) -> Select[Any]:
        """The current resources a conditional create/update/delete/reference selects (at most 2),
        for the write transaction holding `conn` (the key ring is read through it).

        Only resources the caller may see can match: a hidden match must not change the answer
        (no existence oracle), so for this caller it does not exist.
        """
        raw = parse_qsl(query, keep_blank_values=True) if isinstance(query, str) else list(query)
        if not raw:
            raise BadRequest("A conditional request needs search parameters", expression=where)
        parsed = parse_search(res_type, raw, strict=True, default_count=2, max_count=2)
        if self.crypto is not None:
            parsed = await self.crypto.protect_search(self.store, parsed, conn)
        assert ctx.policy is not None, "the submit compiles the caller's policy before any query"
        visible = ctx.policy.visible
        return select_current().where(where_clause(parsed, visible=visible)).limit(2)

    # ---- read path ------------------------------------------------------------------------------
    async def policy(self, ctx: RequestContext) -> AccessPolicy:
        return await policy_for(ctx, self.settings, self.consents)

    async def read(
        self, res_type: str, res_id: str, ctx: RequestContext, *, served: bool = False
    ) -> StoredVersion:
        """The current version as the caller may see it. `served` (a client's read, not the
        gateway's own, e.g. an ingest merging into the current version): while the resource's
        system of record is down, the version it last confirmed, with a warning (`authoritative`)."""
        policy = await self.policy(ctx)
        policy.require(res_type, "read")
        version = await self.store.read(res_type, res_id)
        shown = await self._check_visible(policy, version, res_type, "Resource")
        if not served:
            return shown
        [answer], _ = await self.authoritative(policy, [shown], ctx)
        return answer

    async def vread(self, res_type: str, res_id: str, version_id: int, ctx: RequestContext) -> StoredVersion:
        policy = await self.policy(ctx)
        policy.require(res_type, "read")
        version = await self.store.vread(res_type, res_id, version_id)
        return await self._check_visible(policy, version, res_type, "Version")

    async def _check_visible(
        self, policy: AccessPolicy, version: StoredVersion | None, res_type: str, what: str
    ) -> StoredVersion:
        """404 for what is missing *or hidden* (the same answer, so no existence oracle); 410 after a
        delete only for callers who could have seen the resource anyway."""
        if version is not None and not version.deleted:
            version = await self.present(policy, version)
        if version is None or (version.deleted and policy.restricted):
            raise NotFound(f"{what} not found", expression=res_type)
        if version.deleted:
            raise Gone(
                "Resource was deleted" if what == "Resource" else "This version is a deletion",
                expression=res_type,
            )
        return version

    def decision(self, policy: AccessPolicy, version: StoredVersion) -> Decision:
        """The policy decision for one stored version (from its stored form: the facts it needs —
        labels, references, codes — are never encrypted)."""
        if not policy.restricted or version.deleted or version.content is None:
            return PERMIT
        rows = self.facts.rows(version.res_type, version.res_id, version.content, version.resource)
        return policy.decide(version.res_type, version.res_id, version.version_id, rows)

    async def present(self, policy: AccessPolicy, version: StoredVersion) -> StoredVersion | None:
        """The version as this caller may see it: None when denied; otherwise decrypted (only now,
        after the decision) and masked where a consent withholds elements."""
        decision = self.decision(policy, version)
        if not decision.permitted:
            return None
        if version.deleted or version.content is None:
            return version
        sealed = self.crypto is not None and ENCRYPTED_MARK in version.content
        if not (sealed or decision.masks):
            return version
        resource = await self.plaintext(version)
        if decision.masks:
            resource = redact(resource, decision.masks)
        return replace(version, content=dumps(resource))

    async def plaintext(self, version: StoredVersion, conn: Connection | None = None) -> Resource:
        """A stored version's resource, PHI decrypted (for the write path's own needs: PATCH bases,
        no-change checks, conditional-create answers; `conn` is the write transaction's)."""
        resource = version.resource()
        if self.crypto is not None and version.content is not None and ENCRYPTED_MARK in version.content:
            resource = await self.crypto.open(self.store, resource, version.res_type, version.res_id, conn)
        return resource

    async def authoritative(
        self, policy: AccessPolicy, versions: list[StoredVersion], ctx: RequestContext
    ) -> tuple[list[StoredVersion], list[Issue]]:
        """Presented versions as they are served while a system of record is down (pipeline/outage:
        the last version it confirmed, presented through `present` again), and the warnings: added
        to `ctx.warnings` (HTTP Warning) and returned as issues for a Bundle's outcome entry."""
        if self.outage is None or not versions:
            return versions, []

        async def present(version: StoredVersion) -> StoredVersion | None:
            return await self.present(policy, version)

        served, notices = await self.outage.serve(versions, present)
        ctx.warnings.extend(n.warning() for n in notices if n.warning() not in ctx.warnings)
        return served, [n.issue() for n in notices]

    async def present_all(
        self, policy: AccessPolicy, versions: list[StoredVersion]
    ) -> tuple[list[StoredVersion], list[Issue]]:
        """`present` for a page of results; a resource that cannot be decrypted becomes an issue
        (and the rest of the page is still answered), never wrong or partial data."""
        shown: list[StoredVersion] = []
        problems: list[Issue] = []
        for version in versions:
            try:
                presented = await self.present(policy, version)
            except DecryptionFailed as exc:
                problems.extend(exc.issues)
                continue
            if presented is not None:
                shown.append(presented)
        return shown, problems

    async def get_entry(self, target: RequestTarget, ctx: RequestContext, *, base: str = "") -> EntryResult:
        """A GET inside a batch/transaction, through the same read path as REST."""
        try:
            if target.res_type and target.res_id and target.operation is None:
                v = await (
                    self.vread(target.res_type, target.res_id, target.version_id, ctx)
                    if target.version_id is not None
                    else self.read(target.res_type, target.res_id, ctx, served=True)
                )
                return EntryResult(200, v.res_type, v.res_id, v, v.resource())
            if target.res_type and target.operation in (None, "_search") and target.res_id is None:
                bundle = await self.search(target.res_type, list(target.query), ctx, base=base, served=True)
                return EntryResult(200, resource=bundle)
            if target.operation == "_history":
                bundle = await self.history(
                    ctx, res_type=target.res_type, res_id=target.res_id, query=list(target.query), base=base
                )
                return EntryResult(200, resource=bundle)
            raise BadRequest("Unsupported GET in a Bundle entry", code="not-supported")
        except GatewayError as exc:
            return EntryResult(exc.status, outcome=exc.outcome())

    async def history(
        self,
        ctx: RequestContext,
        *,
        res_type: str | None = None,
        res_id: str | None = None,
        query: Sequence[tuple[str, str]] = (),
        base: str = "",
    ) -> Resource:
        params = dict(query)
        count = _int_param(params, "_count", self.settings.default_page_size, self.settings.max_page_size)
        offset = _int_param(params, "_offset", 0, None)
        since = _instant_param(params, "_since")
        # Pin the page set to "now" so next links stay stable while writes continue.
        before = float(params["_before"]) if _is_float(params.get("_before")) else time.time()
        policy = await self.policy(ctx)
        if res_type is not None:
            policy.require(res_type, "read" if res_id is not None else "search")
        if res_id is not None and res_type is not None:
            current = await self.store.read(res_type, res_id)
            if current is not None and (current.deleted or self.decision(policy, current).permitted):
                current = None if current.deleted and policy.restricted else current
            else:
                current = None
            if current is None:
                raise NotFound("Resource not found", expression=res_type)
        # A resource's history is visible when the resource is (its current version decides, in
        # SQL, so totals and pages only count what the caller may see); a past version that carried
        # a label the caller is not cleared for is listed without its content.
        versions, total = await self.store.history(
            res_type=res_type,
            res_id=res_id,
            since=since,
            at_or_before=before,
            count=count,
            offset=offset,
            visible=policy.visible if policy.restricted else None,
        )
        path = "/".join(p for p in (res_type, res_id) if p) + ("/_history" if res_type else "_history")
        keep = [(k, v) for k, v in query if k == "_since"] + [("_before", repr(before))]
        shown, problems = await self.present_all(policy, versions)
        visible = {(v.res_type, v.res_id, v.version_id): v for v in shown}
        entries = [
            _history_entry(v, visible.get((v.res_type, v.res_id, v.version_id)), base) for v in versions
        ]
        entries += _outcome_entries(problems)
        return {
            "resourceType": "Bundle",
            "type": "history",
            "total": total,
            "link": searching.page_links(f"{base}/{path}", keep, offset, count, total),
            "entry": entries,
        }

    async def changes(
        self,
        category: str,
        types: Collection[str],
        ctx: RequestContext,
        *,
        cursor: int,
        count: int,
        base: str = "",
    ) -> Resource:
        """The category's change feed after `cursor` (pipeline/feed.py), oldest first, through the
        PDP like `_history`: only changes of resources the caller may see (of the category's types
        it may search), a past version it may not see listed without its content."""
        policy = await self.policy(ctx)
        allowed = sorted(t for t in types if policy.allows(t, "search"))
        if not allowed:
            raise Forbidden(f"This caller may not search the resources of {category}", expression="category")
        await feed.seal(self.store, category)
        rows = await feed.page(
            self.store,
            category,
            after=cursor,
            count=count,
            types=allowed,
            visible=policy.visible if policy.restricted else None,
        )
        shown, problems = await self.present_all(policy, [v for _, v in rows])
        visible = {(v.res_type, v.res_id, v.version_id): v for v in shown}
        entries = []
        for position, v in rows:
            entry = _history_entry(v, visible.get((v.res_type, v.res_id, v.version_id)), base)
            entries.append({"extension": [{"url": FEED_POSITION, "valueString": str(position)}], **entry})
        resume = rows[-1][0] if rows else cursor
        url = f"{base}/$changes?" + urlencode({"category": category, "_count": count})
        links = [{"relation": "self", "url": f"{url}&_cursor={cursor}"}]
        if len(rows) == count:  # a full page: more may be waiting
            links.append({"relation": "next", "url": f"{url}&_cursor={resume}"})
        return {
            "resourceType": "Bundle",
            "meta": {"extension": [{"url": FEED_CURSOR, "valueString": str(resume)}]},
            "type": "history",
            "link": links,
            "entry": entries + _outcome_entries(problems),
        }

    async def everything(
        self, patient_id: str, ctx: RequestContext, *, query: Sequence[tuple[str, str]] = (), base: str = ""
    ) -> Resource:
        """Patient/$everything: the patient and every resource in its compartment the caller may see,
        paged, with a total that counts only those."""
        patient = await self.read("Patient", patient_id, ctx)  # 403/404 exactly like a read
        params = dict(query)
        count = _int_param(params, "_count", self.settings.default_page_size, self.settings.max_page_size)
        offset = _int_param(params, "_offset", 0, None)
        policy = await self.policy(ctx)
        versions, total = await searching.compartment(
            self.store, patient.res_id, count=count, offset=offset, visible=policy.visible
        )
        versions, problems = await self.present_all(policy, versions)
        versions, stale = await self.authoritative(policy, versions, ctx)
        problems += stale
        url = f"{base}/Patient/{patient.res_id}/$everything"
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": searching.page_links(url, [], offset, count, total),
            "entry": [
                {
                    "fullUrl": f"{base}/{v.res_type}/{v.res_id}",
                    "resource": v.resource(),
                    "search": {"mode": "match"},
                }
                for v in versions
            ]
            + _outcome_entries(problems),
        }

    async def search(
        self,
        res_type: str,
        raw: Sequence[tuple[str, str]],
        ctx: RequestContext,
        *,
        base: str = "",
        strict: bool | None = None,
        served: bool = False,
    ) -> Resource:
        """A search Bundle of what the caller may see; `served` as for `read` (a client's search:
        last confirmed versions and an outcome warning while a system of record is down)."""
        strict = self.settings.search_handling == "strict" if strict is None else strict
        parsed = parse_search(
            res_type,
            raw,
            strict=strict,
            default_count=self.settings.default_page_size,
            max_count=self.settings.max_page_size,
        )
        policy = await self.policy(ctx)
        policy.require(res_type, "search")
        if self.crypto is not None:
            await self.ensure_crypto()
            parsed = await self.crypto.protect_search(self.store, parsed)
        page = await searching.run(self.store, parsed, visible=policy.visible)
        page.matches, problems = await self.present_all(policy, page.matches)
        page.includes, more = await self.present_all(policy, page.includes)
        stale: list[Issue] = []
        if served:
            page.matches, stale = await self.authoritative(policy, page.matches, ctx)
            page.includes, stale_includes = await self.authoritative(policy, page.includes, ctx)
            stale += stale_includes
        bundle = searching.bundle(parsed, page, base)
        bundle["entry"] += _outcome_entries(problems + more + _unique(stale))
        if await self._withheld_from_emergency_user(ctx, policy, parsed):
            bundle["entry"].append({"resource": SUPPRESSED, "search": {"mode": "outcome"}})
        return bundle

    async def _withheld_from_emergency_user(
        self, ctx: RequestContext, policy: AccessPolicy, parsed: ParsedSearch
    ) -> bool:
        """Whether labels or consents withheld matches from a caller who could break the glass.

        DESIGN "Telling the caller there is more": only a caller with the emergency_access role
        learns that something was withheld (never what or how many); everyone else gets no hint.
        """
        if BREAK_GLASS_ROLE not in ctx.roles or not policy.restricted:
            return False
        g = policy.grants
        opened = AccessPolicy(Grants(g.types, patient=g.patient, narrowed=g.narrowed))
        relaxed = where_clause(parsed, visible=opened.visible)
        strict = where_clause(parsed, visible=policy.visible)
        return await searching.count(self.store, relaxed) > await searching.count(self.store, strict)


SUPPRESSED = operation_outcome(
    [
        Issue(
            "information",
            "suppressed",
            "Some results were withheld by security labels or patient consent; "
            "$break-glass can open them for one patient in an emergency",
            details_code="BTG",
        )
    ]
)


def _unique(issues: list[Issue]) -> list[Issue]:
    return [i for n, i in enumerate(issues) if i not in issues[:n]]


def _outcome_entries(problems: list[Issue]) -> list[Resource]:
    """Resources that could not be shown (e.g. undecryptable), reported in-band as search outcomes."""
    if not problems:
        return []
    return [{"resource": operation_outcome(problems), "search": {"mode": "outcome"}}]


def _history_entry(v: StoredVersion, shown: StoredVersion | None, base: str) -> Resource:
    """One history entry; a version the caller may not see is listed without its content."""
    url = f"{v.res_type}/{v.res_id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if shown is not None and not shown.deleted:
        entry["resource"] = shown.resource()
    method = v.method or "PUT"
    entry["request"] = {"method": method, "url": url if method != "POST" else v.res_type}
    status = "201 Created" if method == "POST" else ("204 No Content" if v.deleted else "200 OK")
    entry["response"] = {
        "status": status,
        "etag": f'W/"{v.version_id}"',
        "lastModified": format_instant(v.last_updated),
    }
    return entry


def _is_float(value: str | None) -> bool:
    try:
        return value is not None and float(value) == float(value)
    except ValueError:
        return False


def _int_param(params: dict[str, str], name: str, default: int, maximum: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer", expression=name, code="value")
    return min(int(raw), maximum) if maximum is not None else int(raw)


def _instant_param(params: dict[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None:
        return None
    try:
        return date_range(raw)[0]
    except ValueError:
        raise BadRequest(
            f"{name} must be a FHIR instant or dateTime", expression=name, code="value"
        ) from None
