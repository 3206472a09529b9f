"""The `outbox` table: messages committed with the change that caused them, delivered afterwards;
and `sor_status`, what the deliveries say about each system of record's availability.

Created by migration 0006. A row is pending while `delivered_at` is null; the dispatcher picks rows
whose `next_attempt_at` has come. `payload` is JSON text; `last_error` is a short failure class
("HTTP 500", "ConnectError"), never message content.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Index, Integer, String, Table, Text

from fhir_gateway.store.schema import metadata

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(32), nullable=False),  # log | webhook | smtp
    Column("payload", Text, nullable=False),  # JSON object
    Column("created", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("delivered_at", Float, nullable=True),
    Column("last_error", String(255), nullable=True),
)
Index("ix_outbox_due", outbox.c.delivered_at, outbox.c.next_attempt_at)

# Migration 0008 (routing/availability.py keeps it): one row per system-of-record channel.
sor_status = Table(
    "sor_status",
    metadata,
    Column("channel", String(32), primary_key=True),
    Column("available", Boolean, nullable=False),
    Column("since", Float, nullable=False),  # when it became available / unavailable
    Column("failures", Integer, nullable=False),  # consecutive failed deliveries or probes
    Column("last_error", String(255), nullable=True),  # a failure class, never content
    Column("checked", Float, nullable=False),
)
