"""The RabbitMQ outbox channel against the real broker at 127.0.0.1:5672 (marked `rabbitmq`).

Queues and exchanges are this test's own (random names), deleted afterwards. "Broker down" is the
TCP relay of tests/relay.py, stopped and started again on the same port.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from fhir_gateway.routing import outbox
from fhir_gateway.routing.amqp import AmqpChannel
from fhir_gateway.routing.brokers import broker_channels
from fhir_gateway.routing.outbox import Backoff, DeliveryError, Dispatcher, Message
from fhir_gateway.store.store import Store
from tests.conftest import make_settings
from tests.relay import Relay

pytestmark = pytest.mark.rabbitmq

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
async def broker() -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    channel = await connection.channel()
    yield channel
    await connection.close()


@pytest.fixture
async def queue(broker: AbstractChannel) -> AsyncIterator[str]:
    name = f"fhir-gateway-test-{uuid.uuid4().hex[:10]}"
    declared = await broker.declare_queue(name, durable=True)
    yield name
    await declared.delete(if_unused=False, if_empty=False)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    host_port = AMQP_URL.rpartition("@")[2].rstrip("/")
    host, _, port = host_port.partition(":")
    r = Relay(host, int(port or 5672), scheme="amqp")
    await r.start()
    yield r
    await r.stop()


def message(n: int, **payload: Any) -> Message:
    return Message(n, "amqp", {"event": "break-glass-opened", **payload}, 0.0, 0, 0.0)


async def drain(broker: AbstractChannel, name: str) -> list[tuple[dict[str, Any], str | None, int | None]]:
    """(JSON body, message_id, delivery mode) of every message waiting in the queue."""
    declared = await broker.declare_queue(name, durable=True)
    found = []
    while (got := await declared.get(no_ack=True, fail=False)) is not None:
        found.append((orjson.loads(got.body), got.message_id, got.delivery_mode))
    return found


async def test_confirmed_messages_are_in_the_queue_persistent_with_their_id(
    broker: AbstractChannel, queue: str
) -> None:
    channel = AmqpChannel(AMQP_URL, queue, queue=queue)  # the default exchange routes by queue name
    try:
        await channel.send(message(7, grant="g1"))
        await channel.send(message(8, grant="g2"))
    finally:
        await channel.close()
    persistent = aio_pika.DeliveryMode.PERSISTENT.value
    assert await drain(broker, queue) == [
        ({"id": 7, "event": "break-glass-opened", "grant": "g1"}, "outbox-7", persistent),
        ({"id": 8, "event": "break-glass-opened", "grant": "g2"}, "outbox-8", persistent),
    ]


async def test_unroutable_and_missing_exchange_are_not_delivered() -> None:
    nowhere = AmqpChannel(AMQP_URL, f"no-queue-{uuid.uuid4().hex}")
    with pytest.raises(DeliveryError) as unroutable:
        await nowhere.send(message(1))
    assert str(unroutable.value).startswith("AMQP ")
    await nowhere.close()
    missing = AmqpChannel(AMQP_URL, "x", exchange=f"no-exchange-{uuid.uuid4().hex}")
    with pytest.raises(DeliveryError):
        await missing.send(message(2))
    await missing.close()


async def test_a_named_exchange_and_a_declared_queue(broker: AbstractChannel) -> None:
    exchange = f"fhir-gateway-test-{uuid.uuid4().hex[:10]}"
    queue = f"{exchange}-q"
    declared = await broker.declare_exchange(exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    channel = AmqpChannel(AMQP_URL, "privacy", exchange=exchange, queue=queue)
    try:
        await channel.send(message(3))
        assert [body["id"] for body, _, _ in await drain(broker, queue)] == [3]
    finally:
        await channel.close()
        await (await broker.declare_queue(queue, durable=True)).delete(if_unused=False, if_empty=False)
        await declared.delete()


async def test_broker_down_then_back_is_retried_and_delivered(
    broker: AbstractChannel, queue: str, relay: Relay, tmp_path: Path
) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/a.db")
    await store.upgrade()
    channel = AmqpChannel(relay.url, queue, timeout=2)
    dispatcher = Dispatcher(store, {"amqp": channel}, backoff=Backoff(first=0.0))
    try:
        async with store.transaction() as tx:
            await outbox.enqueue(tx, "amqp", {"event": "break-glass-opened", "grant": "g1"})
        assert await dispatcher.deliver_due() == 1
        await relay.stop()  # the open connection is cut, new ones refused
        async with store.transaction() as tx:
            await outbox.enqueue(tx, "amqp", {"event": "break-glass-opened", "grant": "g2"})
        assert await dispatcher.deliver_due() == 0
        assert await dispatcher.deliver_due() == 0
        [waiting] = await outbox.messages(store, pending_only=True)
        assert waiting.attempts == 2 and (waiting.last_error or "").startswith("AMQP ")
        await relay.start()
        assert await dispatcher.deliver_due() == 1
        assert await outbox.messages(store, pending_only=True) == []
    finally:
        await channel.close()
        await store.dispose()
    assert [body["grant"] for body, _, _ in await drain(broker, queue)] == ["g1", "g2"]


def test_the_amqp_channel_comes_from_the_settings(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/s.db",
        privacy={"notify_channel": "amqp", "amqp_url": AMQP_URL, "amqp_queue": "q", "amqp_routing_key": "q"},
    )
    [(name, channel)] = broker_channels(settings).items()
    assert name == "amqp" and isinstance(channel, AmqpChannel)
    assert (channel.routing_key, channel.queue, channel.exchange) == ("q", "q", "")
