"""The RabbitMQ (AMQP 0-9-1) outbox channel: delivered means the broker confirmed it, routed.

    AmqpChannel(url, routing_key, exchange=..., queue=...)

Publisher confirms make "delivered" mean the broker took responsibility for the message (for a
persistent message on a durable queue: after writing it); `mandatory` with `on_return_raises`
makes a message no queue is bound for a failure instead of a silent drop. Anything else (broker
down, connection cut, timeout, a missing exchange) is a DeliveryError, and the outbox dispatcher
retries with back-off. `message_id` is `outbox-<id>` (with `id` in the JSON body) for consumers to
deduplicate the rare resend after a crash between the confirm and the outbox update.

One connection and channel, made on first use and dropped on any failure (no robust
auto-reconnect: the dispatcher's retries are the reconnect policy). With `queue`, the channel
declares that durable queue (bound to `exchange` with the routing key when the exchange is named;
on the default exchange the routing key must be the queue's name): handy for development; a
production broker's topology is usually provisioned, so leave `queue` unset there.
"""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from aiormq.exceptions import AMQPError, ChannelInvalidStateError

from fhir_gateway.routing.outbox import DeliveryError, Message

_FAILURES = (AMQPError, ChannelInvalidStateError, OSError, TimeoutError, *CONNECTION_EXCEPTIONS)


class AmqpChannel:
    """Publish each outbox message as persistent JSON to `exchange` with `routing_key`."""

    def __init__(
        self,
        url: str,
        routing_key: str,
        *,
        exchange: str = "",
        queue: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.routing_key = routing_key
        self.exchange = exchange
        self.queue = queue
        self.timeout = timeout
        self._connection: AbstractConnection | None = None
        self._target: AbstractExchange | None = None
        self._lock = asyncio.Lock()  # one connection attempt at a time (a batch sends concurrently)

    async def send(self, message: Message) -> None:
        body = aio_pika.Message(
            orjson.dumps({"id": message.id, **message.payload}),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=f"outbox-{message.id}",
        )
        try:
            target = await self._exchange()
            await target.publish(body, routing_key=self.routing_key, mandatory=True, timeout=self.timeout)
        except _FAILURES as exc:
            await self.close()
            raise DeliveryError(f"AMQP {type(exc).__name__}") from None

    async def close(self) -> None:
        connection, self._connection, self._target = self._connection, None, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(*_FAILURES):  # a broken connection has nothing left to close
                await connection.close()

    async def _exchange(self) -> AbstractExchange:
        async with self._lock:
            if self._target is not None and self._connection is not None and not self._connection.is_closed:
                return self._target
            await self.close()
            connection = await aio_pika.connect(self.url, timeout=self.timeout)
            try:
                channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
                target = await self._declare(channel)
            except BaseException:
                await connection.close()
                raise
            self._connection, self._target = connection, target
            return target

    async def _declare(self, channel: AbstractChannel) -> AbstractExchange:
        # get_exchange is passive: a missing exchange is an error, never created here.
        target = await channel.get_exchange(self.exchange) if self.exchange else channel.default_exchange
        if self.queue is not None:
            queue = await channel.declare_queue(self.queue, durable=True)
            if self.exchange:
                await queue.bind(target, routing_key=self.routing_key)
        return target
