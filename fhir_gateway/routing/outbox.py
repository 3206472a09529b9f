"""The durable outbox: notifications committed with their cause, delivered until they get through.

    enqueue(tx, channel, payload)   inside `Store.transaction()`: the row commits (or not) with
                                    the change that caused it, so a notification is never lost and
                                    never sent for something that did not happen
    Dispatcher(store, channels)     background task: delivers due rows, retries failures with
                                    exponential back-off, forever (until delivered)
    channels_from_settings(...)     `log`, `webhook` (httpx POST JSON), `smtp` (stdlib smtplib)

Delivery is at-least-once. A dispatcher claims a due row by pushing its `next_attempt_at` a lease
ahead (a guarded UPDATE, so two server processes never send the same row at the same time), sends,
then records the outcome. If the process dies between sending and recording, the row is sent
again after the lease: receivers deduplicate on the message id (the webhook's `Idempotency-Key`
header, the e-mail's Message-ID, the `id` in every payload).

A message for a channel that is not configured (a webhook row with no URL) is not dropped: it fails
like a channel that is down and waits, with back-off, for the configuration to come back.

Payloads are chosen by their producers to carry no PHI beyond a patient reference; the `log`
channel goes further and logs only a hash of it. `last_error` holds a failure class ("HTTP 500",
"ConnectError"), never a response body or exception text, which could echo the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import smtplib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
import orjson
import structlog
from prometheus_client import Counter
from sqlalchemy import and_, bindparam, insert, select, update

from fhir_gateway.routing.tables import outbox
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store, Transaction

log = structlog.get_logger("fhir_gateway.outbox")

DELIVERED = Counter("fhir_gateway_outbox_delivered", "Outbox messages delivered", ["channel"])
FAILED = Counter("fhir_gateway_outbox_delivery_failures", "Outbox delivery attempts that failed", ["channel"])

# Keys a payload may show in a log line or an e-mail; anything else stays in the JSON (webhook) only.
SUMMARY_KEYS = ("event", "grant", "subject", "fhirUser", "purpose", "opened", "expires", "justifyBy")


class DeliveryError(Exception):
    """A delivery attempt failed; the message (a failure class, no content) goes to `last_error`."""


class Withheld(Exception):
    """A channel decided not to send (e.g. a Consent denies the recipient): the message is done and
    never retried, and the attempt says nothing about whether the recipient can be reached."""


WITHHELD = "withheld"  # an attempt's outcome beside None (delivered) and a failure class


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    channel: str
    payload: dict[str, Any]
    created: float
    attempts: int
    next_attempt_at: float
    delivered_at: float | None = None
    last_error: str | None = None


class Channel(Protocol):
    """Where messages go. `send` returns when the receiver has accepted it; else DeliveryError."""

    async def send(self, message: Message) -> None: ...


async def enqueue(
    tx: Transaction, channel: str, payload: Mapping[str, Any], *, now: float | None = None
) -> int:
    """Add a message in the caller's transaction; returns its id. Due at once."""
    moment = time.time() if now is None else now
    result = await tx.conn.execute(
        insert(outbox).returning(outbox.c.id),
        {
            "channel": channel,
            "payload": orjson.dumps(dict(payload)).decode(),
            "created": moment,
            "attempts": 0,
            "next_attempt_at": moment,
        },
    )
    message_id: int = result.scalar_one()
    return message_id


async def messages(store: Store, *, pending_only: bool = False) -> list[Message]:
    """The outbox rows, oldest first (operations and tests: what is still waiting, and why)."""
    stmt = select(outbox).order_by(outbox.c.id)
    if pending_only:
        stmt = stmt.where(outbox.c.delivered_at.is_(None))
    async with store.reader() as conn:
        return [_message(row) for row in (await conn.execute(stmt)).all()]


async def release(store: Store, channel: str, *, now: float | None = None) -> int:
    """Make a channel's undelivered messages due now (its receiver is back: no need to wait out the
    back-off); returns how many. A row another process holds leased mid-send may so be sent twice,
    which at-least-once delivery allows (receivers deduplicate on the Idempotency-Key)."""
    moment = time.time() if now is None else now
    stmt = (
        update(outbox)
        .where(and_(outbox.c.channel == channel, outbox.c.delivered_at.is_(None)))
        .where(outbox.c.next_attempt_at > moment)
        .values(next_attempt_at=moment)
        .returning(outbox.c.id)
    )
    async with store.transaction() as tx:
        return len((await tx.conn.execute(stmt)).all())


def _by_id(message: Message) -> int:
    return message.id


def _message(row: Any) -> Message:
    return Message(
        id=row.id,
        channel=row.channel,
        payload=orjson.loads(row.payload),
        created=row.created,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


# --- channels -----------------------------------------------------------------------------------


def patient_hash(reference: Any) -> str | None:
    """A short SHA-256 of the patient reference: lets log lines be correlated without naming anyone."""
    if not isinstance(reference, str) or not reference:
        return None
    return hashlib.sha256(reference.encode()).hexdigest()[:16]


class LogChannel:
    """A structlog line per message: its summary keys and the patient reference hashed."""

    async def send(self, message: Message) -> None:
        payload = message.payload
        summary = {
            k: payload[k] for k in SUMMARY_KEYS if k in payload and k not in ("event", "subject", "fhirUser")
        }
        log.warning(
            "privacy_notification",
            notification=payload.get("event"),
            message_id=message.id,
            patient_hash=patient_hash(payload.get("patient")),
            **summary,
        )


class WebhookChannel:
    """POST the payload as JSON; any 2xx is delivered, anything else (or no answer) is retried."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self.client = client

    async def send(self, message: Message) -> None:
        body = {"id": message.id, **message.payload}
        try:
            response = await self.client.post(
                self.url, json=body, headers={"Idempotency-Key": f"outbox-{message.id}"}
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(type(exc).__name__) from None
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}")


class SmtpChannel:
    """An e-mail per message through the stdlib smtplib, run in a worker thread (it blocks)."""

    def __init__(self, host: str, port: int, sender: str, recipient: str, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.sender = sender
        self.recipient = recipient
        self.timeout = timeout

    def compose(self, message: Message) -> EmailMessage:
        payload = message.payload
        mail = EmailMessage()
        mail["From"] = self.sender
        mail["To"] = self.recipient
        mail["Subject"] = f"[fhir-gateway] {payload.get('event', 'notification')}"
        mail["Message-ID"] = f"<outbox-{message.id}-{int(message.created)}@fhir-gateway>"
        lines = [f"{key}: {payload[key]}" for key in (*SUMMARY_KEYS, "patient") if key in payload]
        mail.set_content("\n".join(lines) + "\n")
        return mail

    async def send(self, message: Message) -> None:
        mail = self.compose(message)
        try:
            await asyncio.to_thread(self._send, mail)
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(type(exc).__name__) from None

    def _send(self, mail: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            smtp.send_message(mail)


def channels_from_settings(settings: Settings, client: httpx.AsyncClient) -> dict[str, Channel]:
    """The channels the configuration makes available (`log` always)."""
    privacy = settings.privacy
    channels: dict[str, Channel] = {"log": LogChannel()}
    if privacy.notify_webhook_url:
        channels["webhook"] = WebhookChannel(privacy.notify_webhook_url, client)
    if privacy.smtp_host and privacy.smtp_from and privacy.smtp_to:
        channels["smtp"] = SmtpChannel(
            privacy.smtp_host, privacy.smtp_port, privacy.smtp_from, privacy.smtp_to
        )
    return channels


# --- the dispatcher -----------------------------------------------------------------------------


async def finish(task: asyncio.Task[None], grace: float) -> None:
    """Let a background task that was asked to stop end by itself; cancel it after `grace` seconds.

    Ending by a flag rather than by cancellation lets a pass in progress record its outcome.
    """
    done, _ = await asyncio.wait({task}, timeout=grace)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


_DUE_IDS = (
    select(outbox.c.id)
    .where(and_(outbox.c.delivered_at.is_(None), outbox.c.next_attempt_at <= bindparam("now")))
    .order_by(outbox.c.next_attempt_at, outbox.c.id)
    .limit(bindparam("limit"))
)
# One statement claims a batch: the lease moves next_attempt_at ahead, and the repeated condition
# makes a concurrent claimer (PostgreSQL re-checks it after the row lock) skip rows already taken.
_CLAIM = (
    update(outbox)
    .where(
        and_(
            outbox.c.id.in_(_DUE_IDS),
            outbox.c.delivered_at.is_(None),
            outbox.c.next_attempt_at <= bindparam("now"),
        )
    )
    .values(next_attempt_at=bindparam("lease"))
    .returning(*outbox.c)
)
_DELIVERED = (
    update(outbox)
    .where(outbox.c.id.in_(bindparam("ids", expanding=True)))
    .values(delivered_at=bindparam("at"), attempts=outbox.c.attempts + 1, last_error=None)
)
_FAILED = (
    update(outbox)
    .where(outbox.c.id == bindparam("key"))
    .values(attempts=outbox.c.attempts + 1, next_attempt_at=bindparam("retry"), last_error=bindparam("error"))
)


Observer = Callable[[Sequence[tuple[Message, str | None]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds before attempt n+1 after n failures: first, doubling, capped."""

    first: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int) -> float:
        return float(min(self.cap, self.first * 2 ** max(0, failures - 1)))


class Dispatcher:
    """Delivers due outbox rows in the background; `wake()` after an enqueue sends it promptly
    (after `settle_seconds`, so that a burst of messages goes out in one pass).

    `prepare` runs before each pass (the runtime's migrations); a pass that fails (database down)
    is logged and the next one tried after `poll_seconds`. `observer` (a notification hook: its
    exceptions are logged and swallowed) is told each pass's (message, error or None) outcomes,
    e.g. routing/availability.py, which tracks systems of record.
    """

    def __init__(
        self,
        store: Store,
        channels: Mapping[str, Channel],
        *,
        backoff: Backoff | None = None,
        poll_seconds: float = 1.0,
        batch_size: int = 50,
        lease_seconds: float = 60.0,
        send_timeout: float = 30.0,
        settle_seconds: float = 0.02,
        prepare: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer = observer
        self.channels = dict(channels)
        self.backoff = backoff or Backoff()
        self.poll_seconds = poll_seconds
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.send_timeout = send_timeout
        self.settle_seconds = settle_seconds
        self._prepare = prepare
        self._clock = clock
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if not self.running:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="outbox-dispatcher")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop after the current pass (cancelled after `grace` seconds); undelivered rows stay queued."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wakeup.set()
            await finish(task, grace)

    def wake(self) -> None:
        """Something was enqueued: deliver it now rather than at the next poll."""
        self._wakeup.set()

    async def _run(self) -> None:
        while not self._stopping:
            self._wakeup.clear()
            try:
                if self._prepare is not None:
                    await self._prepare()
                delivered = await self.deliver_due()
            except Exception as exc:  # the database may be down: try again at the next poll
                log.warning("outbox_pass_failed", error=type(exc).__name__)
                delivered = 0
            if delivered < self.batch_size:  # a full batch means more may be due: go on at once
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wakeup.wait()
                        await asyncio.sleep(self.settle_seconds)  # let a burst of enqueues gather

    async def deliver_due(self) -> int:
        """One pass: claim the due rows, send them, record each outcome. Returns how many are done
        (sent, or withheld by the channel)."""
        now = self._clock()
        async with self.store.transaction() as tx:
            params = {"now": now, "limit": self.batch_size, "lease": now + self.lease_seconds}
            claimed = sorted((_message(r) for r in (await tx.conn.execute(_CLAIM, params)).all()), key=_by_id)
        if not claimed:
            return 0
        outcomes = await self._attempt_all(claimed)
        now = self._clock()
        done = [m.id for m, error in zip(claimed, outcomes, strict=True) if error in (None, WITHHELD)]
        failed = [
            {"key": m.id, "retry": now + self.backoff.delay(m.attempts + 1), "error": error[:255]}
            for m, error in zip(claimed, outcomes, strict=True)
            if error not in (None, WITHHELD)
        ]
        async with self.store.transaction() as tx:
            if done:
                await tx.conn.execute(_DELIVERED, {"ids": done, "at": now})
            if failed:
                await tx.conn.execute(_FAILED, failed)
        if self.observer is not None:
            try:
                await self.observer(list(zip(claimed, outcomes, strict=True)))
            except Exception as exc:  # a notification hook: delivery bookkeeping is already done
                log.warning("outbox_observer_failed", error=type(exc).__name__)
        return len(done)

    async def _attempt_all(self, claimed: list[Message]) -> list[str | None]:
        """Each channel's messages one after another, in id order (a receiver sees a resource's
        versions in the order they were written); the channels themselves concurrently."""
        outcomes: dict[int, str | None] = {}

        async def in_order(batch: list[Message]) -> None:
            for message in batch:
                outcomes[message.id] = await self._attempt(message)

        by_channel: dict[str, list[Message]] = {}
        for message in claimed:
            by_channel.setdefault(message.channel, []).append(message)
        await asyncio.gather(*(in_order(batch) for batch in by_channel.values()))
        return [outcomes[m.id] for m in claimed]

    async def _attempt(self, message: Message) -> str | None:
        """Send one message; None when delivered, WITHHELD when the channel chose not to send, else
        the failure class for `last_error`."""
        channel = self.channels.get(message.channel)
        try:
            if channel is None:
                raise DeliveryError(f"channel {message.channel} not configured")
            async with asyncio.timeout(self.send_timeout):
                await channel.send(message)
        except Withheld:
            return WITHHELD
        except DeliveryError as exc:
            error = str(exc)
        except TimeoutError:
            error = "timeout"
        except Exception as exc:  # a channel bug must not stop the dispatcher; no text: it may hold PHI
            error = type(exc).__name__
        else:
            DELIVERED.labels(message.channel).inc()
            return None
        FAILED.labels(message.channel).inc()
        log.warning("outbox_delivery_failed", message_id=message.id, channel=message.channel, error=error)
        return error
