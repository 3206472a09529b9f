"""The audit hash chain and its writer on real databases (SQLite, and PostgreSQL when marked).

Events are written through AuditLog exactly as the server writes them; tampering is done in SQL,
as someone with database access would, and `verify` (and `fhir-gateway audit verify`) must name
the damaged event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, insert, select, text, update
from typer.testing import CliRunner

from fhir_gateway.audit.chain import (
    GENESIS,
    ChainHead,
    ChainRow,
    ChainWalker,
    append,
    chain_hash,
    existing_ids,
    lock_head,
    seal,
    verify,
)
from fhir_gateway.audit.cli import _kind, _requestor, audit_app
from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource, Interaction, rest_event
from fhir_gateway.audit.tables import audit_chain_heads, audit_events
from fhir_gateway.audit.writer import FAILURES, LOST, URGENT_RIDERS, AuditLog
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import ServiceUnavailable
from fhir_gateway.store.store import Store
from tests.conftest import opened_store

SOURCE = AuditSource(site="test-site", observer="gw-test")
runner = CliRunner()


@pytest.fixture
async def store(any_db_url: str) -> AsyncIterator[Store]:
    async with opened_store(any_db_url) as opened:
        yield opened


def config(tmp_path: Path, **overrides: Any) -> AuditSettings:
    values: dict[str, Any] = {
        "flush_interval_ms": 5,
        "retry_max_seconds": 0.05,
        "spill_path": str(tmp_path / "spill"),
        **overrides,
    }
    return AuditSettings(**values)


def event(n: int, patient: str = "p1") -> dict[str, Any]:
    ctx = RequestContext(subject=f"user-{n % 3}", roles=("clinician",), jti=f"j{n}", request_id=f"r{n}")
    return rest_event(ctx, SOURCE, Interaction.READ, resources=[f"Observation/o{n}"], patients=[patient])


async def rows(store: Store) -> list[Any]:
    async with store.reader() as conn:
        return list((await conn.execute(select(audit_events).order_by(audit_events.c.seq))).all())


async def execute(store: Store, statement: Any, params: Any = None) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(statement, params)


async def write_events(store: Store, tmp_path: Path, count: int) -> list[str]:
    log = AuditLog(store, config(tmp_path))
    await log.start()
    ids = [await log.record(event(n)) for n in range(count)]
    await log.stop()
    return ids


async def test_concurrent_writers_keep_one_intact_chain(
    store: Store, any_db_url: str, tmp_path: Path
) -> None:
    """Two writers on one database (as two server processes would be), 40 tasks each."""
    other = Store(any_db_url)
    logs = [AuditLog(store, config(tmp_path)), AuditLog(other, config(tmp_path, batch_size=7))]
    for log in logs:
        await log.start()

    async def client(log: AuditLog, worker: int) -> list[str]:
        ids = []
        for n in range(10):
            ids.append(await log.record(event(worker * 100 + n)))
            await asyncio.sleep(random.random() / 500)
        return ids

    try:
        batches = await asyncio.gather(*(client(logs[w % 2], w) for w in range(80)))
    finally:
        for log in logs:
            await log.stop()
        await other.dispose()
    stored = await rows(store)
    assert [r.seq for r in stored] == list(range(1, 801))
    assert {r.event_id for r in stored} == {i for ids in batches for i in ids}
    result = await verify(store)
    assert result.ok and result.checked == 800 and result.head_seq == 800
    assert result.head_hash == stored[-1].hash


async def test_verify_names_an_edited_event(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 12)
    victim = (await rows(store))[6]
    body = bytearray(victim.event)
    body[body.index(b"Observation/o6") + len("Observation/o")] = ord("9")  # one byte
    await execute(store, update(audit_events).where(audit_events.c.seq == 7).values(event=bytes(body)))
    result = await verify(store)
    assert result.broken is not None
    assert (result.broken.seq, result.broken.event_id, result.broken.kind) == (7, ids[6], "edited")
    assert result.checked == 6


async def test_verify_names_a_deleted_event(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 12)
    await execute(store, delete(audit_events).where(audit_events.c.seq == 5))
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.kind) == (5, "deleted")
    assert ids[5] in broken.detail  # the survivor after the gap is named too


async def test_verify_names_swapped_events(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 12)
    e = audit_events.c
    await execute(store, update(audit_events).where(e.seq == 4).values(seq=-4))
    await execute(store, update(audit_events).where(e.seq == 5).values(seq=4))
    await execute(store, update(audit_events).where(e.seq == -4).values(seq=5))
    broken = (await verify(store)).broken
    assert broken is not None
    assert (broken.seq, broken.event_id, broken.kind) == (4, ids[4], "reordered")


async def test_verify_names_an_event_rehashed_without_the_next(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 12)
    victim = (await rows(store))[2]
    forged = orjson.loads(victim.event)
    forged["outcome"] = "0" if forged["outcome"] != "0" else "4"
    body = orjson.dumps(forged, option=orjson.OPT_SORT_KEYS)
    digest = chain_hash(victim.prev_hash, 3, body)
    await execute(store, update(audit_events).where(audit_events.c.seq == 3).values(event=body, hash=digest))
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.event_id, broken.kind) == (3, ids[2], "rehashed")


async def test_verify_catches_tail_deletion_and_tail_rehash(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 5)
    last = (await rows(store))[-1]
    await execute(store, update(audit_events).where(audit_events.c.seq == 5).values(hash="f" * 64))
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.event_id, broken.kind) == (5, ids[4], "edited")
    forged = last.event.replace(b'"outcome":"0"', b'"outcome":"8"')
    await execute(
        store,
        update(audit_events)
        .where(audit_events.c.seq == 5)
        .values(event=forged, hash=chain_hash(last.prev_hash, 5, forged)),
    )
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.kind) == (5, "rehashed")
    await execute(store, delete(audit_events).where(audit_events.c.seq == 5))
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.event_id, broken.kind) == (5, None, "deleted")


async def test_cli_verify_exit_codes_and_list(store: Store, any_db_url: str, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 8)
    intact = await asyncio.to_thread(runner.invoke, audit_app, ["verify", "--database-url", any_db_url])
    assert intact.exit_code == 0, intact.output
    assert "intact: 8 event(s)" in intact.output
    listed = await asyncio.to_thread(
        runner.invoke, audit_app, ["list", "--database-url", any_db_url, "--limit", "3"]
    )
    assert listed.exit_code == 0, listed.output
    assert "user-" in listed.output and "rest/read" in listed.output
    await execute(store, update(audit_events).where(audit_events.c.seq == 6).values(outcome="4", event=b"{}"))
    broken = await asyncio.to_thread(runner.invoke, audit_app, ["verify", "--database-url", any_db_url])
    assert broken.exit_code == 1
    assert "seq 6" in broken.output and ids[5] in broken.output and "edited" in broken.output


async def test_clean_shutdown_flushes_everything_queued(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, flush_interval_ms=60_000, batch_size=10_000))
    await log.start()
    for n in range(300):
        await log.record(event(n))
    await asyncio.sleep(0.01)
    assert log.pending == 300 and not await rows(store)  # group commit still gathering
    await log.stop()
    assert len(await rows(store)) == 300 and log.pending == 0
    assert (await verify(store)).ok
    await log.record(event(999))  # after stop: kept on disk for the next start, not dropped
    assert list((tmp_path / "spill").glob("*.jsonl"))


async def test_events_recorded_while_stopping_are_written_not_spilled_from_under_the_writer(
    store: Store, tmp_path: Path
) -> None:
    """A request finishing during shutdown records an event while a batch is being written: the
    writer keeps draining (the event is written, once), nothing is spilled from under it."""
    log = AuditLog(store, config(tmp_path))
    await log.start()
    first = [await log.record(event(n)) for n in range(5)]
    real = store.transaction
    entered = asyncio.Event()
    release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def slow_transaction() -> AsyncIterator[Any]:
        entered.set()
        await release.wait()  # the batch is in flight until the test lets it commit
        async with real() as tx:
            yield tx

    store.transaction = slow_transaction  # type: ignore[method-assign]
    await entered.wait()
    stopping = asyncio.create_task(log.stop())
    await asyncio.sleep(0)
    late = await log.record(event(99))
    release.set()
    await stopping
    store.transaction = real  # type: ignore[method-assign]
    assert [r.event_id for r in await rows(store)] == [*first, late]
    assert not (tmp_path / "spill").exists() or not list((tmp_path / "spill").iterdir())
    assert (await verify(store)).ok


async def break_table(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE audit_events RENAME TO audit_events_away"))


async def mend_table(store: Store) -> None:
    async with store.transaction() as tx:
        await tx.conn.execute(text("ALTER TABLE audit_events_away RENAME TO audit_events"))


async def test_database_failure_then_recovery_loses_nothing(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, batch_size=20))
    await log.start()
    try:
        for n in range(30):
            await log.record(event(n))
        await log.flush(timeout=10)
        await break_table(store)
        failures_before = FAILURES._value.get()
        for n in range(30, 130):
            await log.record(event(n))
        for _ in range(400):
            if FAILURES._value.get() >= failures_before + 2:
                break
            await asyncio.sleep(0.01)
        assert FAILURES._value.get() >= failures_before + 2  # retried and counted, not dropped
        assert log.pending == 100
        await mend_table(store)
        await log.flush(timeout=10)
    finally:
        await log.stop()
    stored = await rows(store)
    assert len(stored) == 130 and len({r.event_id for r in stored}) == 130
    assert (await verify(store)).ok


async def test_record_now_refuses_when_the_log_cannot_be_written(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, record_now_timeout_seconds=0.5))
    with pytest.raises(ServiceUnavailable):
        await log.record_now(event(0))  # not started
    await log.start()
    try:
        durable = await log.record_now(event(1))
        assert [r.event_id for r in await rows(store)] == [durable]
        await break_table(store)
        with pytest.raises(ServiceUnavailable) as refused:
            await log.record_now(event(2))
        assert refused.value.status == 503
        queued = await log.record(event(3))  # an ordinary event waits for the database instead
        await mend_table(store)
        await log.flush(timeout=10)
    finally:
        await log.stop()
    # The refused event was withdrawn (the action it recorded did not happen); the other one is kept.
    assert [r.event_id for r in await rows(store)] == [durable, queued]


async def test_record_now_that_cannot_start_in_time_is_withdrawn(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, record_now_timeout_seconds=0.2, batch_size=1))
    await log.start()
    try:
        await break_table(store)
        for n in range(3):
            await log.record(event(n))  # a backlog ahead of the durable event
        with pytest.raises(ServiceUnavailable):
            await log.record_now(event(9))
        await mend_table(store)
        await log.flush(timeout=10)
    finally:
        await log.stop()
    assert len(await rows(store)) == 3


async def test_events_that_cannot_be_written_at_shutdown_are_spilled_and_reloaded(
    store: Store, tmp_path: Path
) -> None:
    log = AuditLog(store, config(tmp_path, stop_timeout_seconds=0.2))
    await log.start()
    first = await log.record(event(0))
    await log.flush(timeout=10)
    await break_table(store)
    spilled = [await log.record(event(n)) for n in range(1, 40)]
    await log.stop()
    files = list((tmp_path / "spill").glob("audit-main-*.jsonl"))
    assert len(files) == 1 and len(files[0].read_bytes().splitlines()) == 39
    await mend_table(store)
    again = AuditLog(store, config(tmp_path))
    await again.start()
    later = await again.record(event(99))
    await again.stop()
    assert [r.event_id for r in await rows(store)] == [first, *spilled, later]
    assert not list((tmp_path / "spill").iterdir())  # loaded, written, then removed
    assert (await verify(store)).ok


async def test_spilled_events_already_committed_are_not_written_twice(store: Store, tmp_path: Path) -> None:
    ids = await write_events(store, tmp_path, 3)
    stored = await rows(store)
    folder = tmp_path / "spill"
    folder.mkdir()
    (folder / "audit-main-1.jsonl").write_bytes(b"\n".join(r.event for r in stored) + b"\n\n")
    (folder / "audit-main-2.jsonl").write_bytes(b"\n")
    log = AuditLog(store, config(tmp_path))
    await log.start()
    await log.stop()
    assert [r.event_id for r in await rows(store)] == ids


async def test_backpressure_waits_instead_of_dropping(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, max_queue=10, batch_size=4))
    await log.start()
    most = 0

    async def watch() -> None:
        nonlocal most
        while True:
            most = max(most, log.pending)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        ids = await asyncio.gather(*(log.record(event(n)) for n in range(200)))
    finally:
        await log.stop()
        watcher.cancel()
    assert most <= 10
    assert sorted(r.event_id for r in await rows(store)) == sorted(ids)


async def test_start_is_idempotent_and_stop_without_start_is_harmless(store: Store, tmp_path: Path) -> None:
    ran: list[int] = []

    async def prepare() -> None:
        ran.append(1)

    log = AuditLog(store, config(tmp_path), prepare=prepare)
    await log.stop()
    await log.flush()
    await log.start()
    await log.start()
    await log.record(event(1))
    await log.flush(timeout=10)
    await log.stop()
    assert ran == [1] and len(await rows(store)) == 1


async def test_verify_reports_a_missing_or_lagging_head(store: Store, tmp_path: Path) -> None:
    assert (await verify(store)).ok  # empty chain
    await write_events(store, tmp_path, 3)
    await execute(store, update(audit_chain_heads).values(seq=2))
    broken = (await verify(store)).broken
    assert broken is not None and (broken.seq, broken.kind) == (3, "head")
    await execute(store, delete(audit_chain_heads))
    broken = (await verify(store)).broken
    assert broken is not None and broken.kind == "head"
    async with store.reader() as conn:
        assert (await conn.execute(select(func.count()).select_from(audit_events))).scalar_one() == 3


def test_walker_unlinked_and_first_event_cases() -> None:
    body = b'{"id":"a"}'
    walker = ChainWalker()
    first = ChainRow(1, "a", body, "1" * 64, chain_hash("1" * 64, 1, body))
    broken = walker.feed(first)
    assert broken is not None and broken.kind == "unlinked"
    garbage = ChainRow(1, "a", b"not json", GENESIS, chain_hash(GENESIS, 1, b"not json"))
    broken = ChainWalker().feed(garbage)
    assert broken is not None and broken.kind == "edited"
    walker = ChainWalker()
    assert walker.finish(ChainHead("main", 1, GENESIS)) is not None  # head says 1, no rows


async def test_append_without_facts_second_chain_and_paged_verify(store: Store) -> None:
    events = [seal(event(n)) for n in range(5)]
    async with store.transaction() as tx:
        assert await existing_ids(tx.conn, []) == set()
        head = await append(tx.conn, "site-b", events)
    assert (head.chain, head.seq) == ("site-b", 5)
    result = await verify(store, "site-b", page=2)
    assert result.ok and result.checked == 5 and result.head_hash == head.hash
    assert (await verify(store)).checked == 0  # the main chain is another chain
    assert await harness_ids(store, "site-b") == [e.event_id for e in events]


async def harness_ids(store: Store, chain: str) -> list[str]:
    async with store.reader() as conn:
        stmt = (
            select(audit_events.c.event_id).where(audit_events.c.chain == chain).order_by(audit_events.c.seq)
        )
        return [r.event_id for r in (await conn.execute(stmt)).all()]


async def test_record_now_waits_for_a_write_already_under_way(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, record_now_timeout_seconds=0.05))
    await log.start()
    try:
        async with store.transaction() as tx:
            await lock_head(tx.conn, "main")  # another writer holds the chain
            durable = asyncio.create_task(log.record_now(event(1)))
            await asyncio.sleep(0.3)  # past the timeout, but its write had started: no refusal
            assert not durable.done()
        assert await durable in {r.event_id for r in await rows(store)}
    finally:
        await log.stop()


async def test_flush_timeout_and_shutdown_with_the_database_down(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path, stop_timeout_seconds=0.2))
    await log.start()
    await break_table(store)
    try:
        await log.record(event(1))
        with pytest.raises(ServiceUnavailable):
            await log.flush(timeout=0.05)
        waiting = asyncio.create_task(log.flush())
        second = asyncio.create_task(log.flush())  # shares the first one's waiter
        await asyncio.sleep(0.05)
        await log.record(event(2))
    finally:
        await log.stop()
    for task in (waiting, second):
        with pytest.raises(ServiceUnavailable):
            await task
    [spilled] = (tmp_path / "spill").glob("*.jsonl")
    assert len(spilled.read_bytes().splitlines()) == 2
    await mend_table(store)


async def test_events_that_can_be_neither_written_nor_spilled_are_counted(
    store: Store, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    log = AuditLog(store, config(tmp_path, spill_path=str(blocker / "spill")))
    lost_before = LOST._value.get()
    await log.record(event(1))  # never started
    await log.stop()
    assert LOST._value.get() == lost_before + 1


async def test_spill_folder_of_another_chain_is_left_alone(store: Store, tmp_path: Path) -> None:
    folder = tmp_path / "spill"
    folder.mkdir()
    (folder / "audit-other-1.jsonl").write_bytes(orjson.dumps(event(1)) + b"\n")
    log = AuditLog(store, config(tmp_path))
    await log.start()
    await log.stop()
    assert not await rows(store) and (folder / "audit-other-1.jsonl").exists()


def test_cli_rendering_helpers() -> None:
    assert _requestor({"agent": [{"requestor": False, "who": {"reference": "Device/x"}}]}) == "-"
    assert _requestor({"agent": [{"requestor": True}]}) == "-"
    assert _requestor({"agent": [{"requestor": True, "who": {"identifier": {"value": "u"}}}]}) == "u"
    assert _kind({"type": {"code": "110114"}}) == "110114"


async def test_record_now_goes_ahead_of_a_backlog_in_a_short_flush(store: Store, tmp_path: Path) -> None:
    """An action waiting for its event waits for one small transaction, not for the backlog."""
    log = AuditLog(store, config(tmp_path, flush_interval_ms=60_000))  # ordinary events just wait
    await log.start()
    try:
        backlog = [await log.record(event(n)) for n in range(100)]
        durable = await log.record_now(event(100))
        written = [r.event_id for r in await rows(store)]
        # The durable event is first in the chain, with URGENT_RIDERS of the backlog beside it.
        assert written == [durable, *backlog[:URGENT_RIDERS]]
    finally:
        await log.stop()
    assert [r.event_id for r in await rows(store)] == [durable, *backlog]
    assert (await verify(store)).ok


async def test_record_now_writes_commit_with_the_event_or_not_at_all(store: Store, tmp_path: Path) -> None:
    log = AuditLog(store, config(tmp_path))
    await log.start()
    marker = insert(audit_chain_heads).values(chain="companion", seq=0, hash=GENESIS, updated=0.0)

    async def companion(tx: Any) -> None:  # any write of the action's own; a second one conflicts
        await tx.conn.execute(marker)

    try:
        durable = await log.record_now(event(1), with_writes=companion)
        with pytest.raises(ServiceUnavailable):  # the same row again: its write fails, so does the event
            await log.record_now(event(2), with_writes=companion)
        await log.flush(timeout=10)
    finally:
        await log.stop()
    assert [r.event_id for r in await rows(store)] == [durable]
    async with store.reader() as conn:
        heads = (await conn.execute(select(audit_chain_heads.c.chain))).scalars().all()
    assert sorted(heads) == ["companion", "main"]


async def test_record_now_behind_a_write_that_outlasts_its_timeout_is_withdrawn(
    store: Store, tmp_path: Path
) -> None:
    """Queued after a batch already being written (it cannot jump an in-flight write): when that
    write outlasts the timeout, the durable event is withdrawn and refused, never written later."""
    log = AuditLog(store, config(tmp_path, record_now_timeout_seconds=0.1))
    await log.start()
    try:
        async with store.transaction() as tx:
            await lock_head(tx.conn, "main")  # another writer holds the chain
            ordinary = await log.record(event(1))
            await asyncio.sleep(0.05)  # the writer has taken it and waits for the chain
            with pytest.raises(ServiceUnavailable):
                await log.record_now(event(2))
        await log.flush(timeout=10)
    finally:
        await log.stop()
    assert [r.event_id for r in await rows(store)] == [ordinary]
