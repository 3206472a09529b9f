"""The receiver's own tables: `hl7_messages` (idempotency) and `hl7_errors` (the error queue).

`hl7_messages` holds one row per accepted message, keyed by (MSH-3, MSH-4, MSH-10), with the ACK
that was sent and the resources it wrote. The row is inserted by the commit hook of the message's
own `Gateway.submit`, so it commits atomically with the resources: a re-sent message finds it and
gets the same ACK without being applied again; a concurrent duplicate fails on the unique key and
its transaction rolls back.

`hl7_errors` is the error queue: the raw message (it holds PHI: rows are for operators with access to
the database, never logged), the error as OperationOutcome JSON and as ERR text (both PHI-free),
attempts, and whether a replay has since succeeded. The tables live on the store's `metadata`, so
alembic sees them; migration 0002 creates them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    insert,
    select,
    update,
)

from fhir_gateway.store.database import Connection, first_row, write_rows
from fhir_gateway.store.schema import PK, metadata
from fhir_gateway.store.store import Store

# The ACK column holds the ACK(s) sent (two in enhanced mode) as a JSON array: an ACK echoes fields of
# the inbound MSH, so no character can be trusted never to occur in it. Rows written before held the
# ACKs joined by 0x1C; an ACK starts with "MSH", so a leading "[" tells the two forms apart.
LEGACY_ACK_SEPARATOR = "\x1c"

hl7_messages = Table(
    "hl7_messages",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sending_application", String(227), nullable=False),
    Column("sending_facility", String(227), nullable=False),
    Column("control_id", String(199), nullable=False),
    Column("message_type", String(32), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # accepted | replayed
    Column("ack", Text, nullable=False),
    Column("resources", Text, nullable=False),  # JSON array of "Type/id"
    UniqueConstraint("sending_application", "sending_facility", "control_id", name="uq_hl7_messages_key"),
)

hl7_errors = Table(
    "hl7_errors",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("sending_application", String(227), nullable=False),
    Column("sending_facility", String(227), nullable=False),
    Column("control_id", String(199), nullable=False),
    Column("message_type", String(32), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("last_attempt_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("ack_code", String(2), nullable=False),
    Column("error", Text, nullable=False),  # OperationOutcome JSON, no PHI
    Column("err_text", Text, nullable=False),  # the ERR segments sent, no PHI
    Column("raw", LargeBinary, nullable=False),  # the message as received
    Column("replayed", Boolean, nullable=False),
    Column("replayed_at", Float, nullable=True),
)
Index("ix_hl7_errors_open", hl7_errors.c.replayed, hl7_errors.c.pk)
Index(
    "ix_hl7_errors_key",
    hl7_errors.c.sending_application,
    hl7_errors.c.sending_facility,
    hl7_errors.c.control_id,
)

MessageKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class ErrorEntry:
    id: int
    key: MessageKey
    message_type: str
    received_at: float
    last_attempt_at: float
    attempts: int
    ack_code: str
    error: dict[str, Any]
    err_text: str
    replayed: bool
    replayed_at: float | None
    raw: bytes

    def summary(self) -> dict[str, Any]:
        """The PHI-free view an API or CLI lists (no raw message)."""
        return {
            "id": self.id,
            "sendingApplication": self.key[0],
            "sendingFacility": self.key[1],
            "controlId": self.key[2],
            "messageType": self.message_type,
            "receivedAt": self.received_at,
            "lastAttemptAt": self.last_attempt_at,
            "attempts": self.attempts,
            "ack": self.ack_code,
            "error": self.error,
            "replayed": self.replayed,
        }


def _entry(row: Any) -> ErrorEntry:
    return ErrorEntry(
        id=row.pk,
        key=(row.sending_application, row.sending_facility, row.control_id),
        message_type=row.message_type,
        received_at=row.received_at,
        last_attempt_at=row.last_attempt_at,
        attempts=row.attempts,
        ack_code=row.ack_code,
        error=orjson.loads(row.error),
        err_text=row.err_text,
        replayed=bool(row.replayed),
        replayed_at=row.replayed_at,
        raw=row.raw,
    )


# Built once: statement construction cost more than the indexed lookup itself (once per message).
_STORED_ACK = select(hl7_messages.c.ack).where(
    hl7_messages.c.sending_application == bindparam("app"),
    hl7_messages.c.sending_facility == bindparam("facility"),
    hl7_messages.c.control_id == bindparam("control_id"),
)
_RECORD_MESSAGE = insert(hl7_messages)


async def stored_acks(store: Store, key: MessageKey) -> list[str] | None:
    """The ACK(s) already sent for this message key, None when it was never accepted."""
    async with store.reader() as conn:
        params = {"app": key[0], "facility": key[1], "control_id": key[2]}
        row = await first_row(conn, _STORED_ACK, params)
    return _acks(row[0]) if row is not None else None


def _acks(stored: str) -> list[str]:
    if stored.startswith("["):
        acks: list[str] = orjson.loads(stored)
        return acks
    return stored.split(LEGACY_ACK_SEPARATOR)


async def record_message(
    conn: Connection,
    key: MessageKey,
    *,
    message_type: str,
    acks: list[str],
    resources: list[str],
    status: str = "accepted",
) -> None:
    """Insert the idempotency row (inside the submit's transaction: the commit hook)."""
    await write_rows(
        conn,
        _RECORD_MESSAGE,
        [
            {
                "sending_application": key[0],
                "sending_facility": key[1],
                "control_id": key[2],
                "message_type": message_type,
                "received_at": time.time(),
                "status": status,
                "ack": orjson.dumps(acks).decode(),
                "resources": orjson.dumps(resources).decode(),
            }
        ],
    )


async def record_error(
    store: Store,
    key: MessageKey,
    *,
    message_type: str,
    raw: bytes,
    ack_code: str,
    error: dict[str, Any],
    err_text: str,
    replay_of: int | None = None,
) -> int:
    """Queue a failed message, or count one more attempt on its open entry; returns the entry id."""
    now = time.time()
    e = hl7_errors.c
    values = {
        "last_attempt_at": now,
        "ack_code": ack_code,
        "error": orjson.dumps(error).decode(),
        "err_text": err_text,
        "raw": raw,
    }
    async with store.transaction() as tx:
        existing = None
        if replay_of is not None:
            existing = replay_of
        elif key[2]:
            where = and_(
                e.sending_application == key[0],
                e.sending_facility == key[1],
                e.control_id == key[2],
                e.replayed.is_(False),
            )
            row = (await tx.conn.execute(select(e.pk).where(where).order_by(e.pk.desc()).limit(1))).first()
            existing = row.pk if row is not None else None
        if existing is not None:
            await tx.conn.execute(
                update(hl7_errors).where(e.pk == existing).values(attempts=e.attempts + 1, **values)
            )
            return existing
        result = await tx.conn.execute(
            insert(hl7_errors)
            .values(
                sending_application=key[0],
                sending_facility=key[1],
                control_id=key[2],
                message_type=message_type,
                received_at=now,
                attempts=1,
                replayed=False,
                **values,
            )
            .returning(e.pk)
        )
        return int(result.scalar_one())


async def mark_replayed(conn: Connection, error_id: int) -> None:
    e = hl7_errors.c
    await conn.execute(
        update(hl7_errors)
        .where(e.pk == error_id)
        .values(replayed=True, replayed_at=time.time(), attempts=e.attempts + 1)
    )


async def list_errors(store: Store, *, include_replayed: bool = False, limit: int = 100) -> list[ErrorEntry]:
    stmt = select(hl7_errors).order_by(hl7_errors.c.pk).limit(limit)
    if not include_replayed:
        stmt = stmt.where(hl7_errors.c.replayed.is_(False))
    async with store.reader() as conn:
        return [_entry(r) for r in (await conn.execute(stmt)).all()]


async def get_error(store: Store, error_id: int) -> ErrorEntry | None:
    async with store.reader() as conn:
        row = (await conn.execute(select(hl7_errors).where(hl7_errors.c.pk == error_id))).first()
    return _entry(row) if row is not None else None
