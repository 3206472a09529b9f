"""Group commit: concurrent grouped submits share a transaction, yet each stands or falls alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Conflict, ServiceUnavailable
from fhir_gateway.gateway import Gateway
from fhir_gateway.store.group import GroupCommit
from fhir_gateway.store.store import Store, Transaction
from tests.conftest import make_settings, put_bundle


@pytest.fixture
async def gateway(any_db_url: str) -> AsyncIterator[Gateway]:
    store = Store(any_db_url)
    await store.upgrade()
    try:
        yield Gateway(make_settings(any_db_url), store)
    finally:
        await store.dispose()


def patient(pid: str, family: str, mrn: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": "urn:mrn", "value": mrn}],
        "name": [{"family": family}],
        "gender": "female",
    }


CTX = RequestContext.system("hl7v2", source_system="LAB^HOSP")


async def search_ids(gw: Gateway, params: list[tuple[str, str]]) -> list[str]:
    bundle = await gw.search("Patient", params, RequestContext.system("test"))
    return sorted(e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match")


async def test_concurrent_submits_commit_as_one_group_and_stay_searchable(gateway: Gateway) -> None:
    bundles = [put_bundle(patient(f"p{i}", f"Family{i}", f"MRN{i}")) for i in range(6)]
    replies = await asyncio.gather(*(gateway.submit(b, CTX, grouped=True) for b in bundles))
    assert [r["entry"][0]["response"]["status"] for r in replies] == ["201 Created"] * 6
    # They shared commits (how many groups formed depends on when each submit reached the queue).
    assert gateway.group_commit.units == 6 and gateway.group_commit.groups < 6
    # History and index rows were written by the group's flush: every patient is found and has history.
    assert await search_ids(gateway, [("identifier", "urn:mrn|MRN3")]) == ["p3"]
    assert await search_ids(gateway, [("family:exact", "Family5")]) == ["p5"]
    versions, total = await gateway.store.history(res_type="Patient", count=50)
    assert total == 6 and {v.res_id for v in versions} == {f"p{i}" for i in range(6)}


async def test_a_failing_submit_is_rolled_back_alone(gateway: Gateway) -> None:
    async def record_twice(tx: Transaction, _results: list[Any]) -> None:
        raise Conflict("the message was already recorded")

    good = gateway.submit(put_bundle(patient("a", "Alpha", "A1")), CTX, grouped=True)
    bad = gateway.submit(put_bundle(patient("b", "Beta", "B1")), CTX, grouped=True, within=record_twice)
    also_good = gateway.submit(put_bundle(patient("c", "Gamma", "C1")), CTX, grouped=True)
    results = await asyncio.gather(good, bad, also_good, return_exceptions=True)
    assert isinstance(results[1], Conflict)
    assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
    assert await gateway.store.read("Patient", "b") is None
    # Nothing of the failed unit survives: neither its index rows nor its history.
    assert await search_ids(gateway, [("family:exact", "Beta")]) == []
    assert (await gateway.store.history(res_type="Patient", res_id="b", count=5))[1] == 0
    assert await search_ids(gateway, [("family:exact", "Alpha")]) == ["a"]
    assert await search_ids(gateway, [("family:exact", "Gamma")]) == ["c"]


async def test_an_update_in_a_group_replaces_the_index_rows_of_the_old_version(gateway: Gateway) -> None:
    await gateway.submit(put_bundle(patient("u", "Old", "U1")), CTX, grouped=True)
    first = gateway.submit(put_bundle(patient("u", "Newer", "U1")), CTX, grouped=True)
    second = gateway.submit(put_bundle(patient("v", "Other", "V1")), CTX, grouped=True)
    await asyncio.gather(first, second)
    assert await search_ids(gateway, [("family:exact", "Old")]) == []
    assert await search_ids(gateway, [("family:exact", "Newer")]) == ["u"]
    current = await gateway.store.read("Patient", "u")
    assert current is not None and current.version_id == 2


async def test_a_failed_commit_fails_every_submit_of_the_group(gateway: Gateway) -> None:
    group = GroupCommit(gateway.store)
    seen: list[str] = []

    async def unit(tx: Transaction) -> str:
        seen.append("ran")
        return "done"

    real = gateway.store.transaction

    def broken_transaction() -> Any:
        class Failing:
            async def __aenter__(self) -> Any:
                self.inner = real()
                return await self.inner.__aenter__()

            async def __aexit__(self, *exc: Any) -> bool:
                await self.inner.__aexit__(ValueError, ValueError("rolled back"), None)
                raise ServiceUnavailable("The database is unavailable; nothing was written")

        return Failing()

    gateway.store.transaction = broken_transaction  # type: ignore[method-assign]
    results = await asyncio.gather(group.run(unit), group.run(unit), return_exceptions=True)
    assert seen == ["ran", "ran"]
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    assert group.groups == 0


async def test_grouping_needs_a_transaction_bundle(gateway: Gateway) -> None:
    batch = {**put_bundle(patient("x", "X", "X1")), "type": "batch"}
    with pytest.raises(ValueError, match="transaction Bundle"):
        await gateway.submit(batch, CTX, grouped=True)


async def test_a_resource_written_by_a_rolled_back_submit_is_created_afresh_by_the_next(
    gateway: Gateway,
) -> None:
    async def fail(tx: Transaction, _results: list[Any]) -> None:
        raise Conflict("the message was already recorded")

    failed = gateway.submit(put_bundle(patient("z", "First", "Z1")), CTX, grouped=True, within=fail)
    retried = gateway.submit(put_bundle(patient("z", "Second", "Z1")), CTX, grouped=True)
    results = await asyncio.gather(failed, retried, return_exceptions=True)
    assert isinstance(results[0], Conflict)
    assert not isinstance(results[1], BaseException)
    assert results[1]["entry"][0]["response"]["status"] == "201 Created"
    stored = await gateway.store.read("Patient", "z")
    assert stored is not None and stored.version_id == 1
    assert await search_ids(gateway, [("family:exact", "Second")]) == ["z"]


async def test_a_group_holds_at_most_max_batch_submits(gateway: Gateway) -> None:
    group = GroupCommit(gateway.store, max_batch=2)

    async def unit(tx: Transaction) -> int:
        return 1

    assert sum(await asyncio.gather(*(group.run(unit) for _ in range(5)))) == 5
    assert group.groups == 3 and group.units == 5


async def _nothing(tx: Transaction) -> None:
    return None


async def test_a_group_waits_for_the_senders_of_the_last_one(gateway: Gateway) -> None:
    """Senders that wait for their ACK come back one by one after a commit; the next group waits
    (briefly) until as many are back as were in the last group, instead of committing the first alone."""
    group = GroupCommit(gateway.store, gather_seconds=5.0)
    await asyncio.gather(*(group.run(_nothing) for _ in range(4)))
    assert (group.groups, group.units) == (1, 4)

    async def late(delay: float) -> None:
        await asyncio.sleep(delay)
        await group.run(_nothing)

    await asyncio.wait_for(asyncio.gather(*(late(d) for d in (0, 0.01, 0.02, 0.03))), 2.0)
    assert (group.groups, group.units) == (2, 8)  # the four came back into one group


async def test_a_lone_sender_is_not_kept_waiting(gateway: Gateway) -> None:
    group = GroupCommit(gateway.store, gather_seconds=30.0)
    for _ in range(3):  # each group holds one message: nobody else to wait for
        await asyncio.wait_for(group.run(_nothing), 2.0)
    assert (group.groups, group.units) == (3, 3)


async def test_senders_that_stopped_cost_one_short_wait_then_none(gateway: Gateway) -> None:
    group = GroupCommit(gateway.store, gather_seconds=0.3)
    await asyncio.gather(*(group.run(_nothing) for _ in range(4)))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await group.run(_nothing)  # three of the four senders went quiet: the group waits out its gather time
    assert loop.time() - started >= 0.3
    await asyncio.wait_for(group.run(_nothing), 0.25)  # the last group had one: no wait any more
    assert (group.groups, group.units) == (3, 6)
