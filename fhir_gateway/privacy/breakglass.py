"""Break-glass emergency access: time-boxed grants for one (caller, patient), and their follow-up.

    open_grant(...)        emergency_access role → a grant; its start AuditEvent (DCM 110113 /
                           110127) is durable before the grant exists, else 503 and no grant;
                           the privacy officer's notification commits in the grant's transaction
    active_grants(...)     a caller's live grants (one indexed lookup)
    active_grant_keys(...) their (grant id, patient id) only: what the PDP asks once a request
    justify(...)           the grant's own subject files the post-access justification
    escalate_overdue(...)  unjustified past the deadline → escalated once, with a notification
    close_expired(...)     expired grants get their stop AuditEvent (DCM 110138), once
    report(...)            every grant with justification status, overdue flag and access count

Atomicity, and why. The start event, the grant row and its outbox row commit in one transaction
(`AuditLog.record_now(..., with_writes=...)`, inside the audit log's group commit): a grant can
never exist, and be used by a concurrent request, without its start event, and an event never
claims a grant that is not there. It is also the emergency path's one write transaction (it was
two, the audit flush and then the grant's: half of `$break-glass`'s cost). If it fails, nothing
of it exists, the caller gets 503, and a refusal event (outcome 8) is queued.

Degradation (issue 8): the notification channel is not consulted here at all (the outbox row
commits with the grant, the dispatcher delivers it later), so a channel that is down never stops
emergency access; an audit log that cannot be written always does.

What stays out of logs, audit events and notifications: `reason` and `justification`, the
clinician's free text (it may name the patient or the condition). They are stored for the
privacy officer and appear only in the report.
"""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import CursorResult, Result, and_, bindparam, insert, select, update

from fhir_gateway.audit.events import (
    Interaction,
    break_glass_event,
    break_glass_policy,
    denied_event,
    instant,
)
from fhir_gateway.audit.tables import audit_event_index, audit_events
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable
from fhir_gateway.fhir.requests import check_id
from fhir_gateway.privacy.tables import break_glass_grants as bg
from fhir_gateway.routing.outbox import enqueue
from fhir_gateway.settings import PrivacySettings, Settings
from fhir_gateway.store.store import Store, Transaction

EMERGENCY_ROLE = "emergency_access"
PURPOSES = ("ETREAT", "BTG")  # v3 ActReason: emergency treatment, break the glass
MAX_TEXT = 4000  # characters of reason / justification kept
OPENED = "break-glass-opened"
OVERDUE = "break-glass-justification-overdue"
REASON_EXPR = "Parameters.parameter[reason]"
PURPOSE_EXPR = "Parameters.parameter[purposeOfUse]"
MINUTES_EXPR = "Parameters.parameter[minutes]"
GRANT_EXPR = "Parameters.parameter[grant]"
JUSTIFICATION_EXPR = "Parameters.parameter[justification]"
_GRANT_ID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True, slots=True)
class Grant:
    """One break-glass grant. `reason` and `justification` are kept out of repr (and so of logs)."""

    grant_id: str
    subject: str
    fhir_user: str | None
    patient_id: str
    purpose: str
    opened: float
    expires: float
    reason: str = field(repr=False)
    justification: str | None = field(default=None, repr=False)
    justified_at: float | None = None
    escalated_at: float | None = None
    closed: float | None = None

    @property
    def patient(self) -> str:
        return f"Patient/{self.patient_id}"

    @property
    def policy(self) -> str:
        """The AuditEvent agent.policy URI for accesses made under this grant."""
        return break_glass_policy(self.grant_id)

    def active(self, now: float) -> bool:
        return self.closed is None and self.opened <= now < self.expires

    def justify_by(self, hours: float) -> float:
        return self.opened + hours * 3600

    def overdue(self, now: float, hours: float) -> bool:
        return self.justified_at is None and now >= self.justify_by(hours)


def _grant(row: Any) -> Grant:
    return Grant(
        grant_id=row.grant_id,
        subject=row.subject,
        fhir_user=row.fhir_user,
        patient_id=row.patient_id,
        purpose=row.purpose,
        opened=row.opened,
        expires=row.expires,
        reason=row.reason,
        justification=row.justification,
        justified_at=row.justified_at,
        escalated_at=row.escalated_at,
        closed=row.closed,
    )


def notification(event: str, grant: Grant, privacy: PrivacySettings) -> dict[str, Any]:
    """The privacy officer's message: who, which patient, why-code and when; never the free text."""
    return {
        "event": event,
        "grant": grant.grant_id,
        "subject": grant.subject,
        "fhirUser": grant.fhir_user,
        "patient": grant.patient,
        "purpose": grant.purpose,
        "opened": instant(grant.opened),
        "expires": instant(grant.expires),
        "justifyBy": instant(grant.justify_by(privacy.break_glass_justify_hours)),
    }


# --- opening ------------------------------------------------------------------------------------


def check_request(
    reason: str | None, purpose: str | None, minutes: int | None, privacy: PrivacySettings
) -> tuple[str, str, int]:
    """Validate the operation's parameters (400 naming the parameter); returns them with defaults."""
    text = (reason or "").strip()
    if not text:
        raise BadRequest("A reason is required to break the glass", expression=REASON_EXPR, code="required")
    if len(text) > MAX_TEXT:
        raise BadRequest(f"The reason is longer than {MAX_TEXT} characters", expression=REASON_EXPR)
    code = purpose or "ETREAT"
    if code not in PURPOSES:
        raise BadRequest("purposeOfUse must be ETREAT or BTG", expression=PURPOSE_EXPR, code="value")
    limit = privacy.break_glass_max_minutes
    length = limit if minutes is None else minutes
    if not 1 <= length <= limit:
        raise BadRequest(f"minutes must be between 1 and {limit}", expression=MINUTES_EXPR, code="value")
    return text, code, length


async def open_grant(
    store: Store,
    ctx: RequestContext,
    patient_id: str,
    reason: str | None,
    purpose: str | None,
    minutes: int | None,
    settings: Settings,
    *,
    audit_log: AuditLog,
    channel: str | None = None,
    now: float | None = None,
    client_address: str | None = None,
) -> Grant:
    """Open a grant for (ctx.subject, patient_id). Refusals: 400, 403, 404 (audited), 503.

    `channel` overrides `privacy.notify_channel` for the notification; `now` is for tests.
    """
    privacy = settings.privacy
    source = audit_log.source
    if EMERGENCY_ROLE not in ctx.roles or not ctx.subject:
        await audit_log.record(
            denied_event(
                ctx,
                source,
                Interaction.OPERATION,
                reason="role",
                requested="Patient/$break-glass",
                client_address=client_address,
            )
        )
        raise Forbidden("Breaking the glass needs the emergency_access role", expression="Patient")
    check_id(patient_id)
    text, code, length = check_request(reason, purpose, minutes, privacy)
    # The raw store, not the caller's view: a grant exists to reach a patient the caller cannot see.
    found = await store.read("Patient", patient_id)
    grant_id = uuid.uuid4().hex
    acting = dataclasses.replace(ctx, purpose_of_use=(code,), policy=None)

    def start_event(status: int = 200, refused: str | None = None) -> dict[str, Any]:
        return break_glass_event(
            acting,
            source,
            started=True,
            grant_id=grant_id,
            patient=patient_id,
            status=status,
            outcome_desc=f"Emergency access refused ({refused})" if refused else None,
            client_address=client_address,
        )

    if found is None or found.deleted:
        await audit_log.record(start_event(404, "no such patient"))
        raise NotFound("Patient not found", expression="Patient")
    moment = time.time() if now is None else now
    grant = Grant(
        grant_id=grant_id,
        subject=ctx.subject,
        fhir_user=ctx.fhir_user,
        patient_id=patient_id,
        purpose=code,
        opened=moment,
        expires=moment + length * 60,
        reason=text,
    )

    async def store_grant(tx: Transaction) -> None:
        await tx.conn.execute(insert(bg), _row(grant))
        await enqueue(tx, channel or privacy.notify_channel, notification(OPENED, grant, privacy), now=moment)

    try:  # one transaction: the start event, the grant and the notification, or none of them
        await audit_log.record_now(start_event(), with_writes=store_grant)
    except ServiceUnavailable:
        # Recorded (not durably: the log may be what failed) so that the refusal is not invisible.
        await audit_log.record(start_event(503, "the audit log or the grant could not be written"))
        raise
    return grant


def _affected(result: Result[Any]) -> bool:
    """Whether a guarded UPDATE changed its row (False: another process got there first)."""
    return cast(CursorResult[Any], result).rowcount == 1


def _row(grant: Grant) -> dict[str, Any]:
    return {f.name: getattr(grant, f.name) for f in dataclasses.fields(grant)}


# --- the per-request lookup ---------------------------------------------------------------------

_LIVE = and_(
    bg.c.subject == bindparam("s"),
    bg.c.expires > bindparam("now"),
    bg.c.opened <= bindparam("now"),
    bg.c.closed.is_(None),
)
_ACTIVE = select(bg).where(_LIVE).order_by(bg.c.opened)
_ACTIVE_KEYS = select(bg.c.grant_id, bg.c.patient_id).where(_LIVE).order_by(bg.c.opened)


async def active_grants(store: Store, subject: str, now: float | None = None) -> list[Grant]:
    """The caller's live grants (usually none or one): an index range scan on (subject, expires).

    No cache, on purpose: a grant must stop working the moment it expires.
    """
    moment = time.time() if now is None else now
    async with store.reader() as conn:
        rows = (await conn.execute(_ACTIVE, {"s": subject, "now": moment})).all()
    return [_grant(r) for r in rows]


async def active_grant_keys(store: Store, subject: str, now: float | None = None) -> list[tuple[str, str]]:
    """(grant id, patient id) of the caller's live grants: what the PDP needs, once a request.

    The same lookup as `active_grants` without the texts and timestamps: the rows are narrow and
    no Grant is built (a caller with many live grants paid for every column of each, per request).
    """
    moment = time.time() if now is None else now
    async with store.reader() as conn:
        rows = (await conn.execute(_ACTIVE_KEYS, {"s": subject, "now": moment})).all()
    return [(r.grant_id, r.patient_id) for r in rows]


# --- justification, escalation, closing ---------------------------------------------------------


async def justify(
    store: Store, ctx: RequestContext, grant_id: str, justification: str | None, *, now: float | None = None
) -> Grant:
    """Record the post-access justification. Only the grant's own subject; 404 for anyone else."""
    text = (justification or "").strip()
    if not text:
        raise BadRequest("A justification is required", expression=JUSTIFICATION_EXPR, code="required")
    if len(text) > MAX_TEXT:
        raise BadRequest(
            f"The justification is longer than {MAX_TEXT} characters", expression=JUSTIFICATION_EXPR
        )
    moment = time.time() if now is None else now
    async with store.transaction() as tx:
        row = None
        if _GRANT_ID.fullmatch(grant_id or ""):
            row = (await tx.conn.execute(select(bg).where(bg.c.grant_id == grant_id))).first()
        if row is None or row.subject != ctx.subject:  # another's grant: the same answer as none
            raise NotFound("Break-glass grant not found", expression=GRANT_EXPR)
        if row.justified_at is not None:
            raise Conflict("This grant has already been justified", expression=GRANT_EXPR)
        values = {"justification": text, "justified_at": moment}
        await tx.conn.execute(update(bg).where(bg.c.grant_id == grant_id), values)
    return dataclasses.replace(_grant(row), justification=text, justified_at=moment)


async def escalate_overdue(
    store: Store, now: float | None, settings: Settings, *, channel: str | None = None
) -> int:
    """Escalate grants unjustified `break_glass_justify_hours` after opening: once each, with a
    notification in the same transaction. Returns how many were escalated now."""
    privacy = settings.privacy
    moment = time.time() if now is None else now
    cutoff = moment - privacy.break_glass_justify_hours * 3600
    due = select(bg).where(
        and_(bg.c.justified_at.is_(None), bg.c.escalated_at.is_(None), bg.c.opened <= cutoff)
    )
    mark = update(bg).where(and_(bg.c.grant_id == bindparam("key"), bg.c.escalated_at.is_(None)))
    escalated = 0
    async with store.transaction() as tx:
        for row in (await tx.conn.execute(due)).all():
            # Guarded: another server process escalating at the same moment marks it only once.
            if _affected(await tx.conn.execute(mark, {"key": row.grant_id, "escalated_at": moment})):
                grant = dataclasses.replace(_grant(row), escalated_at=moment)
                payload = notification(OVERDUE, grant, privacy)
                await enqueue(tx, channel or privacy.notify_channel, payload, now=moment)
                escalated += 1
    return escalated


async def close_expired(store: Store, audit_log: AuditLog, now: float | None = None) -> int:
    """Mark expired grants closed and record their stop AuditEvent (DCM 110138). Returns the count."""
    moment = time.time() if now is None else now
    due = select(bg).where(and_(bg.c.closed.is_(None), bg.c.expires <= moment))
    mark = update(bg).where(and_(bg.c.grant_id == bindparam("key"), bg.c.closed.is_(None)))
    ended: list[Grant] = []
    async with store.transaction() as tx:
        for row in (await tx.conn.execute(due)).all():
            if _affected(await tx.conn.execute(mark, {"key": row.grant_id, "closed": row.expires})):
                ended.append(_grant(row))
    for grant in ended:
        ctx = RequestContext(
            subject=grant.subject,
            fhir_user=grant.fhir_user,
            roles=(EMERGENCY_ROLE,),
            purpose_of_use=(grant.purpose,),
        )
        event = break_glass_event(
            ctx,
            audit_log.source,
            started=False,
            grant_id=grant.grant_id,
            patient=grant.patient_id,
            recorded=grant.expires,
        )
        await audit_log.record(event)
    return len(ended)


# --- the privacy officer's report ---------------------------------------------------------------


def status_of(grant: Grant, now: float) -> str:
    if grant.active(now):
        return "active"
    return "closed" if grant.closed is not None else "expired"


async def report(
    store: Store, since: float | None = None, *, settings: Settings | None = None, now: float | None = None
) -> list[dict[str, Any]]:
    """Grants opened at or after `since` (all when None), newest first, for the privacy officer.

    Each entry: the grant's facts (including the reason and justification texts), `status`
    (active / expired / closed), `justified`, `overdue` (unjustified past the deadline),
    `escalatedAt`, and `accesses`: the AuditEvents recorded under the grant's policy.
    """
    hours = (settings.privacy if settings else PrivacySettings()).break_glass_justify_hours
    moment = time.time() if now is None else now
    stmt = select(bg).order_by(bg.c.opened.desc(), bg.c.grant_id)
    if since is not None:
        stmt = stmt.where(bg.c.opened >= since)
    async with store.reader() as conn:
        grants = [_grant(r) for r in (await conn.execute(stmt)).all()]
        counts = await _access_counts(conn, grants)
    return [
        {
            "grant": g.grant_id,
            "subject": g.subject,
            "fhirUser": g.fhir_user,
            "patient": g.patient,
            "purpose": g.purpose,
            "reason": g.reason,
            "opened": g.opened,
            "expires": g.expires,
            "status": status_of(g, moment),
            "justified": g.justified_at is not None,
            "justification": g.justification,
            "justifiedAt": g.justified_at,
            "justifyBy": g.justify_by(hours),
            "overdue": g.overdue(moment, hours),
            "escalatedAt": g.escalated_at,
            "closed": g.closed,
            "accesses": counts.get(g.grant_id, 0),
        }
        for g in grants
    ]


async def _access_counts(conn: Any, grants: list[Grant]) -> dict[str, int]:
    """Per grant, the AuditEvents other than its own start/stop that name its policy URI.

    Found through the audit index (the grant's subject as agent) within the grant's lifetime,
    then checked for the policy URI in the event itself: the index has no policy column.
    """
    e, ix = audit_events.c, audit_event_index.c
    stmt = (
        select(e.event_id, e.event, e.subtype)
        .select_from(audit_events.join(audit_event_index, and_(ix.chain == e.chain, ix.seq == e.seq)))
        .where(
            ix.param == "agent",
            ix.value == bindparam("subject"),
            e.recorded >= bindparam("low"),
            e.recorded <= bindparam("high"),
        )
    )
    counts: dict[str, int] = {}
    for g in grants:
        rows = await conn.execute(stmt, {"subject": g.subject, "low": g.opened - 1, "high": g.expires + 1})
        marker = g.policy.encode()
        seen = {r.event_id for r in rows.all() if marker in r.event and not _start_or_stop(r.subtype)}
        counts[g.grant_id] = len(seen)
    return counts


def _start_or_stop(subtype: str | None) -> bool:
    return bool(subtype) and str(subtype).endswith(("|110127", "|110138"))
