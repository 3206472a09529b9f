"""The NATS JetStream outbox channel against the real NATS server at 127.0.0.1:4222 (marked `nats`).

"Broker down" is a TCP relay in front of the server that the test stops and starts again: the
channel sees a refused connection, or a connection cut under it, exactly as it would in production.
Each test uses a stream and subject of its own, deleted afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import orjson
import pytest
from nats.js import JetStreamContext
from sqlalchemy import select, text

from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource, break_glass_policy
from fhir_gateway.audit.tables import audit_events
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.gateway import Gateway
from fhir_gateway.privacy import breakglass
from fhir_gateway.routing import outbox
from fhir_gateway.routing.brokers import NatsChannel, broker_channels
from fhir_gateway.routing.outbox import Backoff, DeliveryError, Dispatcher, Message
from fhir_gateway.store.store import Store
from tests.conftest import make_settings
from tests.integration.test_breakglass_api import break_glass, running, until, values
from tests.relay import Relay

pytestmark = pytest.mark.nats

NATS_URL = os.environ.get("TEST_NATS_URL", "nats://127.0.0.1:4222")
HOST, _, PORT = NATS_URL.removeprefix("nats://").partition(":")


@pytest.fixture
async def stream() -> AsyncIterator[tuple[JetStreamContext, str, str]]:
    """(JetStream, stream name, subject): a stream of this test's own on the real server."""
    name = f"T{uuid.uuid4().hex[:10]}"
    subject = f"fhir-gateway.test.{name}"
    client = await nats.connect(NATS_URL, connect_timeout=2)
    js = client.jetstream()
    await js.add_stream(name=name, subjects=[subject])
    try:
        yield js, name, subject
    finally:
        with contextlib.suppress(Exception):
            await js.delete_stream(name)
        await client.close()


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = Relay(HOST, int(PORT or 4222), scheme="nats")
    await r.start()
    yield r
    await r.stop()


def message(n: int, **payload: Any) -> Message:
    return Message(n, "nats", {"event": "break-glass-opened", **payload}, 0.0, 0, 0.0)


async def stored(js: JetStreamContext, name: str) -> list[tuple[dict[str, Any], str | None]]:
    """The stream's messages: (JSON body, Nats-Msg-Id header)."""
    info = await js.stream_info(name)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
        raw = await js.get_msg(name, seq)
        found.append((orjson.loads(raw.data or b"{}"), (raw.headers or {}).get("Nats-Msg-Id")))
    return found


async def test_publish_is_acknowledged_stored_and_deduplicated(
    stream: tuple[JetStreamContext, str, str],
) -> None:
    js, name, subject = stream
    channel = NatsChannel(NATS_URL, subject)
    try:
        await channel.send(message(7, grant="g1"))
        await channel.send(message(7, grant="g1"))  # sent again (a crash before the outbox update)
        await channel.send(message(8, grant="g2"))
    finally:
        await channel.close()
    assert await stored(js, name) == [
        ({"id": 7, "event": "break-glass-opened", "grant": "g1"}, "outbox-7"),
        ({"id": 8, "event": "break-glass-opened", "grant": "g2"}, "outbox-8"),
    ]


async def test_no_stream_on_the_subject_is_not_delivered() -> None:
    channel = NatsChannel(NATS_URL, f"fhir-gateway.nowhere.{uuid.uuid4().hex}", ack_timeout=1)
    with pytest.raises(DeliveryError) as failed:
        await channel.send(message(1))
    assert str(failed.value).startswith("NATS ")
    await channel.close()


async def test_stream_is_created_when_asked_and_missing() -> None:
    name = f"T{uuid.uuid4().hex[:10]}"
    subject = f"fhir-gateway.test.{name}"
    channel = NatsChannel(NATS_URL, subject, stream=name)
    client = await nats.connect(NATS_URL, connect_timeout=2)
    js = client.jetstream()
    try:
        await channel.send(message(1))
        await channel.close()
        second = NatsChannel(NATS_URL, subject, stream=name)  # the stream exists now: used as it is
        await second.send(message(2))
        await second.close()
        assert [body["id"] for body, _ in await stored(js, name)] == [1, 2]
    finally:
        await js.delete_stream(name)
        await client.close()


async def test_broker_down_then_back_is_retried_and_delivered(
    stream: tuple[JetStreamContext, str, str], relay: Relay, tmp_path: Path
) -> None:
    js, name, subject = stream
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/b.db")
    store = Store(settings.database_url)
    await store.upgrade()
    channel = NatsChannel(relay.url, subject, connect_timeout=0.5, ack_timeout=1)
    dispatcher = Dispatcher(store, {"nats": channel}, backoff=Backoff(first=0.0))
    try:
        async with store.transaction() as tx:
            await outbox.enqueue(tx, "nats", {"event": "break-glass-opened", "grant": "g1"})
        assert await dispatcher.deliver_due() == 1  # connected through the relay
        await relay.stop()  # the broker goes away: the open connection is cut, new ones refused
        async with store.transaction() as tx:
            await outbox.enqueue(tx, "nats", {"event": "break-glass-opened", "grant": "g2"})
        assert await dispatcher.deliver_due() == 0
        [waiting] = await outbox.messages(store, pending_only=True)
        assert waiting.attempts == 1 and waiting.last_error is not None
        assert waiting.last_error.startswith("NATS ")
        assert await dispatcher.deliver_due() == 0  # still down: another failed attempt, kept
        await relay.start()  # back on the same port
        assert await dispatcher.deliver_due() == 1
        assert await outbox.messages(store, pending_only=True) == []
    finally:
        await channel.close()
        await store.dispose()
    assert [body["grant"] for body, _ in await stored(js, name)] == ["g1", "g2"]


async def test_break_glass_notification_reaches_the_stream_without_the_reason(
    stream: tuple[JetStreamContext, str, str], tmp_path: Path
) -> None:
    """Configured as the privacy officer's channel: the grant's notification ends up in the stream."""
    js, name, subject = stream
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/n.db",
        privacy={"notify_channel": "nats", "nats_url": NATS_URL, "nats_subject": subject},
    )
    store = Store(settings.database_url)
    await store.upgrade()
    system = RequestContext.system("cli")
    put = {
        "resource": {"resourceType": "Patient", "id": "p1"},
        "request": {"method": "PUT", "url": "Patient/p1"},
    }
    await Gateway(settings, store).submit(
        {"resourceType": "Bundle", "type": "transaction", "entry": [put]}, system
    )
    audit_log = AuditLog(
        store, AuditSettings(spill_path=str(tmp_path / "spill")), source=AuditSource("t", "gw")
    )
    await audit_log.start()
    channels = broker_channels(settings)
    assert set(channels) == {"nats"}
    doctor = RequestContext(subject="dr-who", roles=("emergency_access",))
    try:
        grant = await breakglass.open_grant(
            store, doctor, "p1", "Overdose of Drug X", None, 5, settings, audit_log=audit_log
        )
        assert await Dispatcher(store, channels).deliver_due() == 1
    finally:
        await channels["nats"].close()
        await audit_log.stop()
        await store.dispose()
    [(body, msg_id)] = await stored(js, name)
    assert body["grant"] == grant.grant_id and body["patient"] == "Patient/p1" and msg_id
    assert "Drug X" not in orjson.dumps(body).decode()


def test_no_broker_channel_without_a_url(tmp_path: Path) -> None:
    assert broker_channels(make_settings(f"sqlite+aiosqlite:///{tmp_path}/x.db")) == {}


# --- degradation, through the HTTP operations ---------------------------------------------------


async def test_break_glass_with_the_broker_down_opens_and_the_notice_follows_when_it_is_back(
    stream: tuple[JetStreamContext, str, str], relay: Relay, tmp_path: Path
) -> None:
    js, name, subject = stream
    await relay.stop()  # the privacy officer's broker is down before anyone breaks the glass
    privacy = {"notify_channel": "nats", "nats_url": relay.url, "nats_subject": subject}
    async with running(tmp_path, **privacy) as env:
        opened = await break_glass(env)
        assert opened.status_code == 200, opened.text
        grant = values(opened.json())["grant"]
        assert (await env.client.get("/Patient/p1", headers=env.doctor)).status_code == 200

        async def failed() -> bool:
            [m] = await outbox.messages(env.runtime.store)
            return m.attempts >= 1

        await until(failed)
        [waiting] = await outbox.messages(env.runtime.store, pending_only=True)
        assert waiting.last_error is not None and waiting.last_error.startswith("NATS ")
        assert await stored(js, name) == []
        # The emergency read was audited under the grant, broker or not (the REST routes record
        # on the runtime's own AuditLog).
        await env.runtime.audit.flush(timeout=5)
        async with env.runtime.store.reader() as conn:
            events = [orjson.loads(r.event) for r in (await conn.execute(select(audit_events.c.event))).all()]
        reads = [e for e in events if e["subtype"][0]["code"] == "read"]
        assert any(break_glass_policy(grant) in e["agent"][0].get("policy", ()) for e in reads)

        await relay.start()

        async def delivered() -> bool:
            return not await outbox.messages(env.runtime.store, pending_only=True)

        await until(delivered)
    [(body, _)] = await stored(js, name)
    assert body["grant"] == grant and body["event"] == breakglass.OPENED


async def test_audit_log_down_refuses_and_nothing_reaches_the_broker(
    stream: tuple[JetStreamContext, str, str], tmp_path: Path
) -> None:
    js, name, subject = stream
    privacy = {"notify_channel": "nats", "nats_url": NATS_URL, "nats_subject": subject}
    async with running(tmp_path, **privacy) as env:
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))
        refused = await break_glass(env)
        assert refused.status_code == 503
        assert await breakglass.active_grants(env.runtime.store, "dr-who") == []
        await asyncio.sleep(0.2)  # several dispatcher polls: there is nothing to send
        assert await outbox.messages(env.runtime.store) == []
        async with env.runtime.store.transaction() as tx:
            await tx.conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))
    assert await stored(js, name) == []
