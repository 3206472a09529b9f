"""Consent-based sharing on the outbox path: a recipient system is told about a resource only when
the policy decision point lets that system see it. Real store, Gateway, AuditLog and Dispatcher."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select, text

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource
from fhir_gateway.audit.tables import audit_events
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.gateway import Gateway
from fhir_gateway.pipeline.authority_config import Subscriber
from fhir_gateway.privacy.breakglass_api import BreakGlassServices
from fhir_gateway.routing import outbox
from fhir_gateway.routing.outbox import Dispatcher, Message, Withheld
from fhir_gateway.routing.sharing import (
    Recipient,
    ScreenedChannel,
    may_share,
    recipients_from,
    screened_channels,
    shared_version,
)
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store
from tests.conftest import make_settings

SYSTEM = RequestContext.system("cli")
PRIVACY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
}
RECIPIENT = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
}
BILLING = Recipient("sor-billing", "Organization/billing")
MPI = Recipient("sor-mpi", "Organization/mpi")


def consent(status: str = "active") -> dict[str, Any]:
    """p1's consent: everyone may see their data, except the billing system."""
    return {
        "resourceType": "Consent",
        "id": "c1",
        "status": status,
        "scope": PRIVACY,
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2020-01-01",
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {
            "type": "permit",
            "provision": [
                {
                    "type": "deny",
                    "actor": [{"role": RECIPIENT, "reference": {"reference": "Organization/billing"}}],
                }
            ],
        },
    }


def observation(oid: str, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


async def put(gateway: Gateway, *resources: dict[str, Any]) -> None:
    entries = [
        {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources
    ]
    await gateway.submit({"resourceType": "Bundle", "type": "transaction", "entry": entries}, SYSTEM)


class Recorder:
    """A recipient system's endpoint: what it was told."""

    def __init__(self) -> None:
        self.told: list[dict[str, Any]] = []

    async def send(self, message: Message) -> None:
        self.told.append(message.payload)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Settings, Gateway, AuditLog]]:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/s.db")
    store = Store(settings.database_url)
    await store.upgrade()
    gateway = Gateway(settings, store)
    await put(gateway, {"resourceType": "Patient", "id": "p1"}, {"resourceType": "Patient", "id": "p2"})
    await put(gateway, observation("o1", "p1"), observation("o2", "p2"), consent())
    audit_log = AuditLog(
        store, AuditSettings(spill_path=str(tmp_path / "spill")), source=AuditSource("t", "gw")
    )
    await audit_log.start()
    yield settings, gateway, audit_log
    await audit_log.stop()
    await store.dispose()


async def exports(store: Store) -> list[dict[str, Any]]:
    async with store.reader() as conn:
        rows = (await conn.execute(select(audit_events.c.event).order_by(audit_events.c.seq))).all()
    found = [orjson.loads(r.event) for r in rows]
    return [e for e in found if e["type"]["code"] == "110106"]


async def push(store: Store, channel: str, resource: str) -> None:
    async with store.transaction() as tx:
        await outbox.enqueue(tx, channel, {"event": "authoritative-update", "resource": resource})


async def test_may_share_asks_the_consent_as_the_recipient(world: tuple[Settings, Gateway, AuditLog]) -> None:
    _, gateway, _ = world
    o1 = await shared_version(gateway, "Observation/o1/_history/1")
    o2 = await shared_version(gateway, "Observation/o2")
    denied = await may_share(gateway, o1, BILLING)
    assert (denied.effect, denied.reason) == ("deny", "consent:Consent/c1")
    assert (await may_share(gateway, o1, MPI)).permitted  # the consent denies billing only
    assert (await may_share(gateway, o2, BILLING)).permitted  # p2 has no consent: the default permits
    assert not (await may_share(gateway, o1, Recipient("x", roles=("researcher",)))).permitted
    for missing in ("Observation/none/_history/1", "Observation/o1/_history/x", "nonsense"):
        assert (await may_share(gateway, await shared_version(gateway, missing), MPI)).reason == "missing"


async def test_the_denied_recipient_is_not_told_and_every_decision_is_audited(
    world: tuple[Settings, Gateway, AuditLog],
) -> None:
    settings, gateway, audit_log = world
    store = gateway.store
    billing, mpi = Recorder(), Recorder()
    subscribers = [
        Subscriber(category="labs", channel="sor-billing", recipient="Organization/billing"),
        Subscriber(category="labs", channel="sor-mpi", recipient="Organization/mpi", purpose="TREAT"),
    ]
    channels = screened_channels(
        {"sor-billing": billing, "sor-mpi": mpi}, recipients_from(subscribers), gateway, audit_log
    )
    dispatcher = Dispatcher(store, channels)
    for channel in ("sor-billing", "sor-mpi"):
        await push(store, channel, "Observation/o1/_history/1")
    await push(store, "sor-billing", "Observation/o2/_history/1")
    assert await dispatcher.deliver_due() == 3  # all done: a withheld message is not retried
    assert [p["resource"] for p in billing.told] == ["Observation/o2/_history/1"]
    assert [p["resource"] for p in mpi.told] == ["Observation/o1/_history/1"]
    assert await outbox.messages(store, pending_only=True) == []
    await audit_log.flush(timeout=5)
    events = await exports(store)
    decided = sorted(
        (e["agent"][0]["who"]["reference"], e["entity"][0]["what"]["reference"], e["outcome"]) for e in events
    )
    assert decided == [
        ("Organization/billing", "Observation/o1/_history/1", "4"),
        ("Organization/billing", "Observation/o2/_history/1", "0"),
        ("Organization/mpi", "Observation/o1/_history/1", "0"),
    ]
    [withheld] = [e for e in events if e["outcome"] == "4"]
    refs = [x["what"].get("reference") for x in withheld["entity"]]
    assert "Patient/p1" in refs and "Consent/c1" in refs
    assert withheld["outcomeDesc"] == "Withheld (consent)"
    assert withheld["agent"][0]["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"

    # The patient withdraws the consent: from the next push on, billing is told as well.
    await put(gateway, consent(status="inactive"))
    await push(store, "sor-billing", "Observation/o1/_history/1")
    assert await dispatcher.deliver_due() == 1
    assert [p["resource"] for p in billing.told][-1] == "Observation/o1/_history/1"


async def test_a_deletion_is_screened_on_the_data_it_removed_and_a_missing_one_withheld(
    world: tuple[Settings, Gateway, AuditLog],
) -> None:
    _, gateway, audit_log = world
    delete = {"request": {"method": "DELETE", "url": "Observation/o1"}}
    await gateway.submit({"resourceType": "Bundle", "type": "transaction", "entry": [delete]}, SYSTEM)
    gone = await shared_version(gateway, "Observation/o1/_history/2")
    assert gone is not None and gone.version_id == 1  # the version before the deletion
    billing = Recorder()
    channel = ScreenedChannel(billing, BILLING, gateway, audit_log)
    with pytest.raises(Withheld):
        await channel.send(Message(1, "sor-billing", {"resource": "Observation/o1/_history/2"}, 0, 0, 0))
    # Nothing to decide on is never announced either (and audited without a patient).
    with pytest.raises(Withheld):
        await channel.send(Message(2, "sor-billing", {"resource": "Observation/none/_history/1"}, 0, 0, 0))
    assert billing.told == []
    await audit_log.flush(timeout=5)
    [deleted, missing] = await exports(gateway.store)
    assert deleted["outcomeDesc"] == "Withheld (consent)" and missing["outcomeDesc"] == "Withheld (missing)"
    refs = [x["what"].get("reference") for x in missing["entity"]]
    assert [r for r in refs if r] == ["Observation/none/_history/1"]


async def test_store_unavailable_means_retry_later_not_send(
    world: tuple[Settings, Gateway, AuditLog],
) -> None:
    _, gateway, audit_log = world
    store = gateway.store
    mpi = Recorder()
    dispatcher = Dispatcher(store, {"sor-mpi": ScreenedChannel(mpi, MPI, gateway, audit_log)})
    await push(store, "sor-mpi", "Observation/o1/_history/1")
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE resource_history RENAME TO resource_history_away"))
    assert await dispatcher.deliver_due() == 0
    [waiting] = await outbox.messages(store, pending_only=True)
    assert waiting.last_error == "sharing decision unavailable (503)" and mpi.told == []
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE resource_history_away RENAME TO resource_history"))


async def test_messages_without_a_resource_pass_unscreened(world: tuple[Settings, Gateway, AuditLog]) -> None:
    _, gateway, audit_log = world
    officer = Recorder()
    channel = ScreenedChannel(officer, Recipient("log"), gateway, audit_log)
    notice = {"event": "break-glass-opened", "patient": "Patient/p1", "grant": "g"}
    await channel.send(Message(1, "log", notice, 0, 0, 0))
    assert officer.told == [notice]
    await audit_log.flush(timeout=5)
    assert await exports(gateway.store) == []


async def test_the_server_screens_every_channel_with_its_subscribers_identity(tmp_path: Path) -> None:
    subscriber = {"category": "demographics", "channel": "sor-mpi", "url": "http://mpi.invalid/hook"}
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/r.db",
        authority={
            "subscribers": [{**subscriber, "recipient": "Organization/mpi", "roles": ["integration"]}]
        },
    )
    runtime = Runtime(settings)
    services = BreakGlassServices(runtime, runtime.audit)
    try:
        channels = services.dispatcher.channels
        assert set(channels) == {"log", "sor-mpi"}
        assert all(isinstance(c, ScreenedChannel) for c in channels.values())
        screened = channels["sor-mpi"]
        assert isinstance(screened, ScreenedChannel)
        assert screened.recipient == Recipient("sor-mpi", "Organization/mpi", ("integration",), "TREAT")
    finally:
        await services.stop()
        await runtime.store.dispose()
