"""The receive core both transports (MLLP, `POST /hl7v2`) and the replay command share.

    bytes ─► er7.parse ─► check_supported ─► duplicate? ─► map_message ─► Gateway.submit(within=record)
       │           │              │              │               │                   │
       AR 100/207  AR 101/200/201/203  stored ACK    AE + error queue    AA after the commit
                                                                          AR/CR when the store is down

`Receiver.receive` never raises: whatever happens, the caller gets ACK text to send. The message
and its idempotency row commit in one transaction (the commit hook), so "acknowledged" implies
"stored", and a message is never applied twice: a re-sent one finds its row and gets the ACK that
was sent the first time. Failed messages (AE, and AR for unsupported ones) are kept in the error
queue with a PHI-free error; `replay` runs one through the same path again. `map_message` runs in
the server's child mapping process when other messages are being received meanwhile (mapper.py).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Conflict, GatewayError, Issue, ServiceUnavailable, operation_outcome
from fhir_gateway.ingest.hl7v2 import store as hl7_store
from fhir_gateway.ingest.hl7v2.ack import Outcome, acknowledgements, err_segment
from fhir_gateway.ingest.hl7v2.er7 import DEFAULT, Er7Error, Message, decode, parse
from fhir_gateway.ingest.hl7v2.mapping.context import (
    INTERNAL_ERROR,
    SEGMENT_SEQUENCE_ERROR,
    MapIssue,
)
from fhir_gateway.ingest.hl7v2.messages import check_supported, source_system
from fhir_gateway.store.store import Transaction
from fhir_gateway.transaction import EntryResult

log = structlog.get_logger("fhir_gateway.hl7v2")

SEVERITY = {"E": "error", "W": "warning", "I": "information"}


@dataclass(slots=True)
class Reply:
    """What to send back for one received message: one ACK, or two in enhanced mode."""

    acks: list[str]
    outcome: Outcome
    duplicate: bool = False
    error_id: int | None = None
    resources: list[str] = field(default_factory=list)

    @property
    def ack(self) -> str:
        """The ACK that says the most (the application ACK when there are two)."""
        return self.acks[-1]


def message_key(message: Message) -> hl7_store.MessageKey:
    msh = message.msh
    return (
        msh.value(3) or msh.value(3, 2),
        msh.value(4) or msh.value(4, 2),
        message.control_id,
    )


def issues_outcome(issues: Sequence[MapIssue]) -> dict[str, object]:
    """The PHI-free OperationOutcome stored with a queued error."""
    fhir_issues = [
        Issue(
            SEVERITY.get(i.severity, "error"),
            "processing",
            f"{i.code}: {i.text}",
            [i.location] if i.segment else [],
        )
        for i in issues
    ]
    return operation_outcome(fhir_issues)


class Receiver:
    """Parse, map, commit and acknowledge HL7 v2 messages through the gateway's one write path."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def receive(self, data: bytes | str, *, replay_of: int | None = None) -> Reply:
        raw = data.encode("utf-8") if isinstance(data, str) else data
        try:
            return await self._receive(raw, replay_of)
        except Exception as exc:  # the last line of defence: every frame gets an answer
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            log.error(
                "hl7v2_receive_failed",
                error=type(exc).__name__,
                where=f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}" if frame else "",
            )
            issue = MapIssue("E", INTERNAL_ERROR, "Internal error; the message was not stored, send it again")
            message = _try_parse(raw)
            return Reply(acknowledgements(message, Outcome.UNAVAILABLE, [issue]), Outcome.UNAVAILABLE)

    async def _receive(self, raw: bytes, replay_of: int | None) -> Reply:
        text = decode(raw)
        try:
            message = parse(text)
        except Er7Error as exc:
            issue = MapIssue("E", SEGMENT_SEQUENCE_ERROR, str(exc), "MSH", 1)
            acks = acknowledgements(None, Outcome.REJECTED, [issue], raw_control_id=_control_id_guess(raw))
            error_id = await self._queue(("", "", ""), "", raw, "AR", [issue], replay_of)
            return Reply(acks, Outcome.REJECTED, error_id=error_id)
        key = message_key(message)
        problem = check_supported(message)
        if problem is not None:
            acks = acknowledgements(message, Outcome.REJECTED, [problem])
            error_id = await self._queue(key, _type(message), raw, "AR", [problem], replay_of)
            return Reply(acks, Outcome.REJECTED, error_id=error_id)
        try:
            with self.runtime.hl7_mapping.receiving():
                return await self._apply(message, text, key, raw, replay_of)
        except ServiceUnavailable:
            issue = MapIssue("E", INTERNAL_ERROR, "The store is unavailable; nothing was kept, send it again")
            return Reply(acknowledgements(message, Outcome.UNAVAILABLE, [issue]), Outcome.UNAVAILABLE)

    async def _apply(
        self, message: Message, text: str, key: hl7_store.MessageKey, raw: bytes, replay_of: int | None
    ) -> Reply:
        gateway = await self.runtime.ready_gateway()
        stored = await hl7_store.stored_acks(self.runtime.store, key)
        if stored is not None:
            if replay_of is not None:  # already applied (e.g. re-sent after the failure): close the entry
                async with self.runtime.store.transaction() as tx:
                    await hl7_store.mark_replayed(tx.conn, replay_of)
            return Reply(stored, Outcome.ACCEPTED, duplicate=True)
        mapped = await self.runtime.hl7_mapping.map(message, text)
        if mapped.failed:
            acks = acknowledgements(message, Outcome.ERROR, mapped.issues)
            error_id = await self._queue(key, _type(message), raw, "AE", mapped.issues, replay_of)
            return Reply(acks, Outcome.ERROR, error_id=error_id)
        warnings = [i for i in mapped.issues if i.severity != "E"]
        acks = acknowledgements(message, Outcome.ACCEPTED, warnings)
        refs = mapped.references

        async def record(tx: Transaction, _results: list[EntryResult]) -> None:
            status = "replayed" if replay_of is not None else "accepted"
            await hl7_store.record_message(
                tx.conn, key, message_type=_type(message), acks=acks, resources=refs, status=status
            )
            if replay_of is not None:
                await hl7_store.mark_replayed(tx.conn, replay_of)

        ctx = RequestContext.system("hl7v2", source_system=source_system(message))
        try:
            # The entries' results, not a transaction-response Bundle: the ACK is all the sender gets.
            await gateway.submit_entries(mapped.bundle, ctx, within=record, grouped=True)
        except Conflict:
            # A concurrent copy of this message committed first (unique key), or a concurrent write
            # touched the same resource: answer with the stored ACK, or ask for a resend.
            stored = await hl7_store.stored_acks(self.runtime.store, key)
            if stored is not None:
                return Reply(stored, Outcome.ACCEPTED, duplicate=True)
            issue = MapIssue("E", "206", "A concurrent update conflicted; send the message again")
            return Reply(acknowledgements(message, Outcome.UNAVAILABLE, [issue]), Outcome.UNAVAILABLE)
        except ServiceUnavailable:
            raise
        except GatewayError as exc:
            issues = [
                MapIssue("E", INTERNAL_ERROR, f"FHIR {i.code}: {i.diagnostics}"[:200]) for i in exc.issues[:5]
            ]
            acks = acknowledgements(message, Outcome.ERROR, issues)
            error_id = await self._queue(key, _type(message), raw, "AE", issues, replay_of)
            return Reply(acks, Outcome.ERROR, error_id=error_id)
        return Reply(acks, Outcome.ACCEPTED, resources=refs)

    async def _queue(
        self,
        key: hl7_store.MessageKey,
        message_type: str,
        raw: bytes,
        ack_code: str,
        issues: Sequence[MapIssue],
        replay_of: int | None,
    ) -> int | None:
        """Keep a failed message in the error queue; None when even that is impossible (store down)."""
        try:
            await self.runtime.ensure_schema()
            return await hl7_store.record_error(
                self.runtime.store,
                key,
                message_type=message_type,
                raw=await self._seal(raw),
                ack_code=ack_code,
                error=issues_outcome(issues),
                err_text="\r".join(err_segment(i, DEFAULT, "2.5.1") for i in issues),
                replay_of=replay_of,
            )
        except GatewayError:
            log.warning("hl7v2_error_queue_unavailable", ack=ack_code)
            return None

    async def replay(self, error_id: int) -> Reply | None:
        """Run a queued message through the receive path again; None when there is no such entry."""
        await self.runtime.ensure_schema()
        entry = await hl7_store.get_error(self.runtime.store, error_id)
        if entry is None:
            return None
        return await self.receive(await self._open(entry.raw), replay_of=error_id)

    async def replay_all(self) -> list[tuple[int, Reply]]:
        await self.runtime.ensure_schema()
        entries = await hl7_store.list_errors(self.runtime.store, limit=100_000)
        return [(e.id, await self.receive(await self._open(e.raw), replay_of=e.id)) for e in entries]

    # A queued message is the whole v2 message — names, MRNs, birth dates: it is sealed with the PHI
    # key ring like resource elements are (AAD binds it to the error queue), when encryption is on.
    async def _seal(self, raw: bytes) -> bytes:
        crypto = self.runtime.gateway.crypto
        if crypto is None:
            return raw
        await self.runtime.gateway.ensure_crypto()
        ring = await crypto.keys.ring(self.runtime.store)
        return SEALED + ring.seal(raw, *QUEUE_AAD).encode("ascii")

    async def _open(self, stored: bytes) -> bytes:
        crypto = self.runtime.gateway.crypto
        if not stored.startswith(SEALED) or crypto is None:
            return stored
        ring = await crypto.keys.ring(self.runtime.store)
        return ring.open(stored.removeprefix(SEALED).decode("ascii"), *QUEUE_AAD)


SEALED = b"sealed:"
QUEUE_AAD = ("HL7v2Message", "error-queue", "raw")


def _type(message: Message) -> str:
    return "^".join(p for p in (message.message_code, message.trigger) if p)[:32]


def _try_parse(raw: bytes) -> Message | None:
    try:
        return parse(decode(raw))
    except Exception:  # noqa: BLE001 - only for choosing ACK delimiters
        return None


def _control_id_guess(raw: bytes) -> str:
    """MSH-10 of a message too broken to parse, for MSA-2 (best effort, default delimiters)."""
    text = decode(raw[:2048]).lstrip("\ufeff \r\n")
    if not text.startswith("MSH|"):
        return ""
    fields = text.split("\r")[0].split("\n")[0].split("|")
    return fields[9][:199] if len(fields) > 9 else ""
