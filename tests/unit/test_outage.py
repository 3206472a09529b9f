"""System-of-record availability (the status table, delivery outcomes, health probes) and what
readers are served meanwhile (`OutageReads`), on a real store, both dialects."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhir_gateway.fhir.json import dumps
from fhir_gateway.pipeline.authority import AUTHORITY_SYSTEM
from fhir_gateway.pipeline.authority_config import AuthoritySettings, OutageSettings, Subscriber
from fhir_gateway.pipeline.outage import HISTORY_PAGE, OutageReads
from fhir_gateway.pipeline.registry import Registry
from fhir_gateway.routing import outbox
from fhir_gateway.routing.availability import Availability, record, statuses
from fhir_gateway.routing.outbox import WITHHELD, Dispatcher, Message
from fhir_gateway.store.store import Store, StoredVersion
from tests.conftest import opened_store

LAB = "http://terminology.hl7.org/CodeSystem/observation-category"


def config(**outage: Any) -> AuthoritySettings:
    return AuthoritySettings(
        subscribers=(
            Subscriber(category="lab-results", channel="sor-lis", system_of_record=True),
            Subscriber(category="lab-results", channel="dwh"),
        ),
        outage=OutageSettings(status_cache_seconds=0, **outage),
    )


@pytest.fixture
async def store(any_db_url: str) -> AsyncIterator[Store]:
    async with opened_store(any_db_url) as opened:
        yield opened


def observation(res_id: str, version: int, *tags: str, deleted: bool = False) -> StoredVersion:
    resource = {
        "resourceType": "Observation",
        "id": res_id,
        "meta": {"versionId": str(version), "tag": [{"system": AUTHORITY_SYSTEM, "code": t} for t in tags]},
        "status": "final",
        "category": [{"coding": [{"system": LAB, "code": "laboratory"}]}],
        "code": {"text": f"v{version}"},
    }
    return StoredVersion(
        "Observation", res_id, version, 1000.0 + version, deleted, None if deleted else dumps(resource), "PUT"
    )


async def history(store: Store, *versions: StoredVersion) -> StoredVersion:
    """Store the versions in turn (through the store's own write); returns the last."""
    previous = await store.read(versions[0].res_type, versions[0].res_id)
    for version in versions:
        async with store.transaction() as tx:
            await tx.write(version, previous=previous, rows=None)
        previous = await store.read(version.res_type, version.res_id)
    assert previous is not None
    return previous


async def shown(version: StoredVersion) -> StoredVersion | None:
    return version


async def down(store: Store) -> None:
    await record(store, "sor-lis", "HTTP 503", threshold=1, now=500.0)


def code(version: StoredVersion) -> str:
    return str(version.resource()["code"]["text"])


# --- the status -----------------------------------------------------------------------------------


async def test_threshold_failures_mark_unavailable_and_one_success_available(store: Store) -> None:
    status, changed = await record(store, "sor-lis", "HTTP 503", threshold=2, now=10.0)
    assert (status.available, status.failures, changed) == (True, 1, False)
    status, changed = await record(store, "sor-lis", "ConnectError", threshold=2, now=20.0)
    assert (status.available, status.since, status.last_error, changed) == (False, 20.0, "ConnectError", True)
    status, changed = await record(store, "sor-lis", "HTTP 503", threshold=2, now=30.0)
    assert (status.available, status.since, changed) == (False, 20.0, False)  # since the threshold
    status, changed = await record(store, "sor-lis", None, threshold=2, now=40.0)
    assert (status.available, status.since, status.failures, changed) == (True, 40.0, 0, True)
    assert (await statuses(store))["sor-lis"].last_error is None


async def test_the_observer_counts_a_pass_once_and_ignores_other_channels(store: Store) -> None:
    tracker = Availability(store, config(failure_threshold=1))
    ok = Message(1, "sor-lis", {}, 0.0, 0, 0.0)
    other = Message(2, "dwh", {}, 0.0, 0, 0.0)
    await tracker.observe([(ok, "HTTP 503"), (ok, None), (other, "HTTP 500")])
    assert set(await statuses(store)) == {"sor-lis"} and (await statuses(store))["sor-lis"].available
    await tracker.observe([(ok, "HTTP 503"), (ok, "HTTP 502")])
    assert (await statuses(store))["sor-lis"].last_error == "HTTP 502"


async def test_a_withheld_message_says_nothing_about_whether_the_system_is_there(store: Store) -> None:
    """A push the consent check withheld never reached the system: with every real send failing,
    it must not make the system of record count as available."""
    tracker = Availability(store, config(failure_threshold=1))
    push = Message(1, "sor-lis", {}, 0.0, 0, 0.0)
    await tracker.observe([(push, "HTTP 503"), (push, WITHHELD)])
    assert not (await statuses(store))["sor-lis"].available
    await tracker.observe([(push, WITHHELD)])
    assert not (await statuses(store))["sor-lis"].available


async def test_coming_back_releases_the_queue_and_wakes_the_dispatcher(store: Store) -> None:
    woken: list[bool] = []
    tracker = Availability(store, config(failure_threshold=1), wake=lambda: woken.append(True))
    async with store.transaction() as tx:
        waiting = await outbox.enqueue(tx, "sor-lis", {"event": "contribution"}, now=9e9)
        other = await outbox.enqueue(tx, "dwh", {"event": "authoritative-update"}, now=9e9)
    await tracker.outcome("sor-lis", "HTTP 503")
    assert woken == []
    await tracker.outcome("sor-lis", None)
    assert woken == [True]
    due = {m.id: m.next_attempt_at for m in await outbox.messages(store, pending_only=True)}
    assert due[waiting] < 9e9 and due[other] == 9e9  # only the system that came back


async def test_probes_count_no_answer_and_bad_answers_as_failures(store: Store) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/health"  # nothing listens there
    answers = iter([httpx.Response(503), httpx.Response(204)])
    transport = httpx.MockTransport(lambda request: next(answers))
    async with httpx.AsyncClient() as real, httpx.AsyncClient(transport=transport) as mocked:
        tracker = Availability(store, config(failure_threshold=2), client=real)
        assert (await tracker.probe("sor-lis", closed)).last_error == "ConnectError"
        tracker.client = mocked
        assert not (await tracker.probe("sor-lis", "http://sor/health")).available
        assert (await tracker.probe("sor-lis", "http://sor/health")).available


async def test_the_probe_loop_survives_a_failing_round_and_stops(store: Store) -> None:
    settings = AuthoritySettings(
        subscribers=(
            Subscriber(category="c", channel="sor-a", system_of_record=True, health_url="http://a/health"),
        ),
        outage=OutageSettings(probe_seconds=0.01),
    )
    rounds: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        rounds.append(str(request.url))
        if len(rounds) == 1:
            raise RuntimeError("a bug in a round")  # not an HTTP error: the round is logged
        return httpx.Response(200)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        tracker = Availability(store, settings, client=client)
        task = asyncio.create_task(tracker.run())
        for _ in range(300):
            if len(rounds) >= 2:
                break
            await asyncio.sleep(0.01)
        tracker.stop()
        await asyncio.wait_for(task, 2)
    assert len(rounds) >= 2 and (await statuses(store))["sor-a"].available


async def test_a_failing_observer_does_not_stop_delivery(store: Store) -> None:
    class Sink:
        async def send(self, message: Message) -> None:
            return None

    async def broken(outcomes: Any) -> None:
        raise RuntimeError("observer bug")

    async with store.transaction() as tx:
        await outbox.enqueue(tx, "sink", {"event": "x"})
    assert await Dispatcher(store, {"sink": Sink()}, observer=broken).deliver_due() == 1
    assert await outbox.messages(store, pending_only=True) == []


async def test_a_channel_receives_its_messages_in_the_order_they_were_queued(store: Store) -> None:
    """One pass sends each channel's messages one after another: a slow first send must not let the
    next version of a resource overtake it (channels still run side by side)."""
    arrived: list[tuple[str, int]] = []

    class Sink:
        def __init__(self, name: str) -> None:
            self.name = name

        async def send(self, message: Message) -> None:
            await asyncio.sleep(0.05 if message.payload["n"] == 0 else 0)
            arrived.append((self.name, message.payload["n"]))

    async with store.transaction() as tx:
        for n in range(3):
            await outbox.enqueue(tx, "sor", {"event": "x", "n": n})
            await outbox.enqueue(tx, "other", {"event": "x", "n": n})
    dispatcher = Dispatcher(store, {"sor": Sink("sor"), "other": Sink("other")})
    assert await dispatcher.deliver_due() == 6
    assert [n for name, n in arrived if name == "sor"] == [0, 1, 2]
    assert [n for name, n in arrived if name == "other"] == [0, 1, 2]
    assert arrived[0][1] == arrived[1][1] == 0  # both channels started before either finished


# --- reads during an outage -------------------------------------------------------------------------


async def test_no_system_of_record_no_outage_reads(store: Store) -> None:
    from fhir_gateway.settings import load_settings

    assert OutageReads.from_settings(load_settings(None, environ={}), store) is None
    settings = load_settings(None, environ={}, overrides={"authority": config().model_dump()})
    assert OutageReads.from_settings(settings, store) is not None


async def test_the_last_confirmed_version_is_found_across_history_pages(store: Store) -> None:
    reads = OutageReads(store, Registry.load(), config())
    sor = observation("o", 1, "sor")
    contributions = [observation("o", n, "sor", "secondary") for n in range(2, HISTORY_PAGE + 4)]
    current = await history(store, sor, *contributions)
    assert (await reads.serve([current], shown))[0] == [current]  # the SoR is up: as it is
    await down(store)
    [served], [notice] = await reads.serve([current], shown)
    assert (served.version_id, code(served), notice.replaced, notice.served) == (1, "v1", 1, 1)
    assert notice.warning().startswith('110 fhir-gateway "The system of record for lab-results')
    # The caller may not see that version: it gets the current one, still warned.
    [served], [notice] = await reads.serve([current], lambda v: _none())
    assert served is current and notice.warning().startswith("199 ")


async def _none() -> StoredVersion | None:
    return None


async def test_what_is_not_replaced(store: Store) -> None:
    reads = OutageReads(store, Registry.load(), config())
    await down(store)
    confirmed = await history(store, observation("sor-only", 1, "sor"))
    recreated = await history(
        store,
        observation("re", 1, "sor"),
        observation("re", 2, deleted=True),
        observation("re", 3, "secondary"),
    )
    never = await history(store, observation("ours", 1, "secondary"))
    tombstone = observation("gone", 2, deleted=True)
    patient = StoredVersion("Patient", "p", 1, 1.0, False, dumps({"resourceType": "Patient", "id": "p"}))
    versions = [confirmed, recreated, never, tombstone, patient]
    served, [notice] = await reads.serve(versions, shown)
    assert served == versions  # the SoR's own, one deleted since its SoR version, one it never wrote
    assert (notice.served, notice.replaced) == (3, 0) and "may not reflect" in notice.issue().diagnostics


async def test_serving_the_current_version_is_a_setting_and_the_status_is_cached(store: Store) -> None:
    clock = [0.0]
    reads = OutageReads(
        store,
        Registry.load(),
        config().model_copy(
            update={"outage": OutageSettings(serve_last_authoritative=False, status_cache_seconds=5)}
        ),
        clock=lambda: clock[0],
    )
    current = await history(store, observation("o", 1, "sor"), observation("o", 2, "sor", "secondary"))
    assert await reads.down() == {}
    await down(store)
    assert await reads.down() == {}  # cached
    clock[0] = 6.0
    [served], [notice] = await reads.serve([current], shown)
    assert served is current and notice.replaced == 0
