"""The `break_glass_grants` table: one row per emergency-access grant (created by migration 0006).

On the store's shared `metadata`, so the alembic migration and the schema agree. Times are epoch
seconds (UTC), like the rest of the store. `reason` and `justification` are the clinician's own
words: shown to the privacy officer in the report, never logged, never put in a notification.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, String, Table, Text

from fhir_gateway.store.schema import metadata

break_glass_grants = Table(
    "break_glass_grants",
    metadata,
    Column("grant_id", String(32), primary_key=True),  # uuid4 hex
    Column("subject", String(255), nullable=False),  # the token's sub (RequestContext.subject)
    Column("fhir_user", String(255), nullable=True),  # SMART fhirUser, e.g. Practitioner/123
    Column("patient_id", String(64), nullable=False),
    Column("reason", Text, nullable=False),
    Column("purpose", String(16), nullable=False),  # v3 ActReason: ETREAT | BTG
    Column("opened", Float, nullable=False),
    Column("expires", Float, nullable=False),
    Column("justification", Text, nullable=True),
    Column("justified_at", Float, nullable=True),
    Column("escalated_at", Float, nullable=True),  # set once, when the justification became overdue
    Column("closed", Float, nullable=True),  # when the stop AuditEvent was written (at expiry)
)
# The per-request lookup of a caller's live grants: subject, then expiry.
Index("ix_break_glass_grants_subject", break_glass_grants.c.subject, break_glass_grants.c.expires)
# Escalation and the report scan by opening time; closing scans by expiry.
Index("ix_break_glass_grants_opened", break_glass_grants.c.opened)
Index("ix_break_glass_grants_expires", break_glass_grants.c.expires)
