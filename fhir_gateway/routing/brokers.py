"""Message-broker outbox channels: NATS JetStream, acknowledged by the broker before "delivered".

    NatsChannel(url, subject, stream=...)   JetStream publish; returns once the PubAck says the
                                            stream stored the message, else DeliveryError
    broker_channels(settings)               `nats` when `privacy.nats_url` is set, `amqp` (RabbitMQ,
                                            routing/amqp.py) when `privacy.amqp_url` is

Why JetStream and not core NATS: a core publish is fire-and-forget (nobody may be listening, and
nothing is kept), so "sent" would not mean "delivered". A JetStream publish is a request answered
by the stream with a PubAck once the message is stored; no answer (no stream on the subject, broker
down, timeout) is a DeliveryError, and the outbox dispatcher retries with back-off.

At-least-once, deduplicated: each message carries `Nats-Msg-Id: outbox-<id>`, so a message sent
again after a crash between PubAck and the outbox update is dropped by the stream's duplicate window
(the PubAck then says `duplicate`, which counts as delivered). Consumers also see `id` in the body.

One connection, made on first use and dropped on any failure, so the next attempt reconnects:
the client's own reconnect loop is off, because a publish buffered through a reconnect would
leave the dispatcher waiting instead of failing and retrying on its own schedule.
With `stream`, the channel creates that stream for its subject when none holds it (development and
tests); production brokers usually have their streams provisioned, so leave `stream` unset there.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import nats
import orjson
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from fhir_gateway.routing.amqp import AmqpChannel
from fhir_gateway.routing.outbox import DeliveryError, Message
from fhir_gateway.settings import Settings

_FAILURES = (NatsError, OSError, TimeoutError)


class BrokerChannel(Protocol):
    """An outbox Channel with a connection of its own, closed when the dispatcher stops."""

    async def send(self, message: Message) -> None: ...

    async def close(self) -> None: ...


class NatsChannel:
    """Publish each outbox message as JSON to `subject` on a JetStream stream."""

    def __init__(
        self,
        url: str,
        subject: str,
        *,
        stream: str | None = None,
        connect_timeout: float = 2.0,
        ack_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.subject = subject
        self.stream = stream
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()  # one connection attempt at a time (a batch sends concurrently)

    async def send(self, message: Message) -> None:
        body = orjson.dumps({"id": message.id, **message.payload})
        headers = {"Nats-Msg-Id": f"outbox-{message.id}"}
        try:
            js = await self._jetstream()
            await js.publish(self.subject, body, timeout=self.ack_timeout, headers=headers)
        except _FAILURES as exc:
            await self.close()
            raise DeliveryError(f"NATS {type(exc).__name__}") from None

    async def close(self) -> None:
        client, self._client, self._js = self._client, None, None
        if client is not None and not client.is_closed:
            # A connection that is already broken has nothing left to close cleanly.
            with contextlib.suppress(*_FAILURES):
                await client.close()

    async def _jetstream(self) -> JetStreamContext:
        async with self._lock:
            if self._js is not None and self._client is not None and self._client.is_connected:
                return self._js
            await self.close()
            client = await nats.connect(
                self.url,
                connect_timeout=self.connect_timeout,
                # Fail fast: allow_reconnect=False alone keeps retrying the *first* connect
                # forever; one attempt, no wait, and NoServersError says the broker is down.
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0,
                error_cb=_quiet,
            )
            js = client.jetstream(timeout=self.ack_timeout)
            if self.stream is not None:
                await _ensure_stream(js, self.stream, self.subject)
            self._client, self._js = client, js
            return js


async def _ensure_stream(js: JetStreamContext, stream: str, subject: str) -> None:
    try:
        await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        await js.add_stream(StreamConfig(name=stream, subjects=[subject]))


async def _quiet(_exc: Exception) -> None:
    """The client's error callback: failures reach the dispatcher through `send`, not a log line
    per socket error (the default callback prints them)."""


def broker_channels(settings: Settings) -> dict[str, BrokerChannel]:
    """The broker channels the configuration makes available (none without a broker URL)."""
    privacy = settings.privacy
    channels: dict[str, BrokerChannel] = {}
    if privacy.nats_url:
        channels["nats"] = NatsChannel(privacy.nats_url, privacy.nats_subject, stream=privacy.nats_stream)
    if privacy.amqp_url:
        channels["amqp"] = AmqpChannel(
            privacy.amqp_url,
            privacy.amqp_routing_key,
            exchange=privacy.amqp_exchange,
            queue=privacy.amqp_queue,
        )
    return channels
