"""`AuditLog`: group commit of AuditEvents off the response's critical path, never losing one.

    record(event)       seal + enqueue; returns at once (awaits only when the queue is full)
    record_now(event)   enqueue and wait until committed; 503 when the audit log cannot be written
    record_now(event, with_writes=fn)   ... and run `fn(tx)` in that same transaction
    start() / stop()    the background writer; stop flushes everything (or spills it to disk)

The writer wakes when the first event arrives, lets a batch gather for `flush_interval_ms` (or until
`batch_size` events), then appends the batch to the hash chain in one store transaction. Events
leave the queue only after their transaction committed, so a failed flush keeps them in order at
the head of the queue; the writer retries with exponential back-off, counting each failure in
`fhir_gateway_audit_flush_failures_total`. After a failure the next attempt first skips events
whose commit did happen (the driver may fail after COMMIT), so a retry never writes one twice.

Backpressure rather than loss: when `max_queue` events wait (the database is down for long),
`record` waits for room. At shutdown, whatever cannot be written within `stop_timeout_seconds` is
spilled to `spill_path` as JSON lines and loaded back, in order, at the next start.

`record_now` is for events that must be durable before the answer (break-glass): its event goes
ahead of the ordinary events still waiting and is committed by the next flush (which starts at
once, and is kept short); if that flush fails, or cannot start within `record_now_timeout_seconds`,
the event is withdrawn and ServiceUnavailable raised, so the caller refuses the action rather than
act unaudited.

`with_writes` lets the action itself commit atomically with its event (the break-glass grant and its
notification): one transaction instead of two, and neither can exist without the other. The
writes run in the group commit, so a failing one (a database error) fails the whole batch: the
other durable events in it are refused too (503) and the rest retried, as for any failed flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from prometheus_client import Counter, Gauge

from fhir_gateway.audit.chain import SealedEvent, append, existing_ids, seal
from fhir_gateway.audit.config import AuditSettings
from fhir_gateway.audit.events import AuditSource
from fhir_gateway.errors import ServiceUnavailable
from fhir_gateway.store.store import Store, Transaction

Writes = Callable[[Transaction], Awaitable[None]]

log = structlog.get_logger("fhir_gateway.audit")

WRITTEN = Counter("fhir_gateway_audit_events_written", "AuditEvents committed to the hash chain")
FAILURES = Counter("fhir_gateway_audit_flush_failures", "Audit flush transactions that failed (retried)")
SPILLED = Counter("fhir_gateway_audit_events_spilled", "AuditEvents spilled to disk at shutdown")
LOST = Counter("fhir_gateway_audit_events_lost", "AuditEvents neither written nor spilled (disk failure)")
URGENT_RIDERS = 32  # ordinary events written along with durable ones in a flush someone waits for
QUEUED = Gauge("fhir_gateway_audit_queue_depth", "AuditEvents waiting to be written")


@dataclass(slots=True, eq=False)
class _Pending:
    sealed: SealedEvent
    waiter: asyncio.Future[None] | None = None
    durable: bool = False  # record_now: withdrawn (and the caller told) when its flush fails
    in_flight: bool = False
    maybe_written: bool = False  # a commit whose outcome is unknown may already hold it
    spill_file: Path | None = None  # the spill file to delete once this (its last event) is written
    writes: Writes | None = None  # record_now(with_writes=...): committed with the event, or neither


class AuditLog:
    def __init__(
        self,
        store: Store,
        config: AuditSettings | None = None,
        *,
        source: AuditSource | None = None,
        prepare: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """`prepare` runs before a flush after a failure and before the first (e.g. the migrations)."""
        self.store = store
        self.config = config or AuditSettings()
        self.source = source or AuditSource(site="fhir-gateway", observer=self.config.observer)
        self.chain = self.config.chain
        self._prepare = prepare
        self._prepared = prepare is None
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()  # events arrived (first one, or a full batch)
        self._kick = asyncio.Event()  # flush now: record_now or stop
        self._room = asyncio.Event()  # the queue shrank below max_queue
        # Queued events someone waits for. Left as soon as they are written (not when the waiter
        # resumes), so the flush after theirs is an ordinary group commit again.
        self._waiting: set[_Pending] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- public API ----------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._load_spilled()
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        """Flush everything queued; what cannot be written in time is spilled to disk, not lost."""
        if self._task is None:
            self._spill()
            return
        self._stopping = True
        self._wakeup.set()
        self._kick.set()
        # The writer stays `running` until it has drained the queue: an event recorded meanwhile (a
        # request finishing during shutdown) is queued for it, not spilled from under a batch in flight.
        task = self._task
        try:
            await asyncio.wait_for(asyncio.shield(task), self.config.stop_timeout_seconds)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None
        self._spill()
        self._room.set()

    async def record(self, event: dict[str, Any]) -> str:
        """Queue an AuditEvent for the next group commit; returns its id. No I/O is awaited."""
        pending = _Pending(seal(event))
        await self._enqueue(pending)
        return pending.sealed.event_id

    async def record_now(self, event: dict[str, Any], *, with_writes: Writes | None = None) -> str:
        """Write an AuditEvent before returning; ServiceUnavailable when it cannot be written.

        `with_writes(tx)` runs in the transaction that appends the event: both commit, or neither.
        """
        if not self.running:
            raise ServiceUnavailable("The audit log is not running; the action was refused")
        waiter = asyncio.get_running_loop().create_future()
        pending = _Pending(seal(event), waiter, durable=True, writes=with_writes)
        await self._enqueue(pending)
        await self._await_commit(pending, self.config.record_now_timeout_seconds)
        return pending.sealed.event_id

    async def flush(self, timeout: float | None = None) -> None:
        """Wait until every event queued before this call is committed (tests, CLI, shutdown hooks)."""
        if not self._queue:
            return
        last = self._queue[-1]
        if last.waiter is None:
            last.waiter = asyncio.get_running_loop().create_future()
        await self._await_commit(last, timeout)

    # --- queueing ------------------------------------------------------------------------------

    async def _enqueue(self, pending: _Pending) -> None:
        while self.running and len(self._queue) >= self.config.max_queue:
            self._room.clear()
            await self._room.wait()
        if pending.durable:
            self._queue.insert(self._durable_slot(), pending)
        else:
            self._queue.append(pending)
        QUEUED.set(len(self._queue))
        if self._stopping and not self.running:
            self._spill()  # recorded after stop(): to disk for the next start, never dropped
            return
        if len(self._queue) == 1 or len(self._queue) >= self.config.batch_size:
            self._wakeup.set()

    def _durable_slot(self) -> int:
        """Where a durable event joins the queue: after the batch being written and the durable
        events already waiting, ahead of ordinary ones. An action waiting for its own event then
        waits for one flush, not for the backlog of read events queued before it (up to a whole
        batch: 60 ms behind 400 events). The chain records commit order, which group commit
        already lets differ from `recorded` order by a flush interval.
        """
        slot = 0
        for pending in self._queue:
            if not (pending.in_flight or pending.durable):
                break
            slot += 1
        return slot

    async def _await_commit(self, pending: _Pending, timeout: float | None) -> None:
        assert pending.waiter is not None
        self._waiting.add(pending)
        self._wakeup.set()
        self._kick.set()
        try:
            try:
                await asyncio.wait_for(asyncio.shield(pending.waiter), timeout)
            except TimeoutError:
                if pending.durable and pending.in_flight:
                    await pending.waiter  # its write is under way: that outcome decides, either way
                else:
                    if pending.durable:
                        self._queue.remove(pending)  # withdrawn: the action it records is refused
                    raise ServiceUnavailable(
                        "The audit log cannot be written now; the action was refused"
                    ) from None
        finally:
            self._waiting.discard(pending)

    # --- the writer task ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = 0.0
        while True:
            if not self._queue:
                if self._stopping:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._gather()
            self._kick.clear()  # a kick from now on cuts a failure's back-off short
            batch = self._take()
            try:
                await self._write(batch)
            except Exception as exc:  # any failure is retried, counted and logged
                backoff = min(max(backoff * 2, 0.05), self.config.retry_max_seconds)
                self._failed(batch, exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._kick.wait(), backoff)
                continue
            backoff = 0.0
            self._written(batch)

    async def _gather(self) -> None:
        """Group commit: give a batch up to flush_interval to fill, unless someone waits for it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.flush_interval_ms / 1000
        while len(self._queue) < self.config.batch_size and not self._waiting and not self._stopping:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return

    def _take(self) -> list[_Pending]:
        """The queue's head. A durable event at the head (someone waits for it) makes a short
        batch: the durable events and at most URGENT_RIDERS ordinary ones, so the wait is for a
        small transaction rather than a full batch; the ordinary events still move every flush."""
        limit = self.config.batch_size
        if self._queue and self._queue[0].durable:
            durable = sum(1 for _ in itertools.takewhile(lambda p: p.durable, self._queue))
            limit = min(limit, durable + URGENT_RIDERS)
        batch = [self._queue[i] for i in range(min(len(self._queue), limit))]
        for pending in batch:
            pending.in_flight = True
        return batch

    async def _write(self, batch: list[_Pending]) -> None:
        if not self._prepared and self._prepare is not None:
            await self._prepare()
            self._prepared = True
        events = [p.sealed for p in batch]
        recheck = any(p.maybe_written for p in batch)
        async with self.store.transaction() as tx:
            if recheck:
                done = await existing_ids(tx.conn, [e.event_id for e in events])
                events = [e for e in events if e.event_id not in done]
            await append(tx.conn, self.chain, events)
            for pending in batch:
                if pending.writes is not None:  # durable events only, never rechecked: see _failed
                    await pending.writes(tx)

    def _written(self, batch: list[_Pending]) -> None:
        for pending in batch:
            self._queue.popleft()  # the batch is the queue's head: only later slots changed meanwhile
            self._waiting.discard(pending)
            if pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_result(None)
            if pending.spill_file is not None:
                pending.spill_file.unlink(missing_ok=True)
        WRITTEN.inc(len(batch))
        QUEUED.set(len(self._queue))
        self._room.set()  # recorders waiting for room look again

    def _failed(self, batch: list[_Pending], exc: Exception, backoff: float) -> None:
        FAILURES.inc()
        self._prepared = self._prepare is None
        log.warning(
            "audit_flush_failed", error=type(exc).__name__, events=len(batch), retry_in=round(backoff, 3)
        )
        for pending in batch:
            pending.in_flight = False
            pending.maybe_written = True
            if pending.durable:
                self._queue.remove(pending)
                assert pending.waiter is not None  # record_now shields it: nobody else completes it
                pending.waiter.set_exception(
                    ServiceUnavailable("The audit log cannot be written now; the action was refused")
                )
        QUEUED.set(len(self._queue))

    # --- spilling at shutdown -------------------------------------------------------------------

    def _spill(self) -> None:
        """Write what is still queued to a JSON-lines file in spill_path; count it, never drop silently."""
        for pending in self._queue:
            if pending.waiter is not None and not pending.waiter.done():
                pending.waiter.set_exception(ServiceUnavailable("The audit log was stopped"))
                pending.waiter.exception()  # retrieved: nobody may await it any more
        events = [p.sealed.body for p in self._queue if not p.durable]
        self._queue.clear()
        QUEUED.set(0)
        if not events:
            return
        folder = Path(self.config.spill_path)
        name = f"audit-{self.chain}-{time.time():.6f}-{os.getpid()}.jsonl"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(b"\n".join(events) + b"\n")
        except OSError as exc:
            LOST.inc(len(events))
            log.critical("audit_events_lost", events=len(events), error=type(exc).__name__)
            return
        SPILLED.inc(len(events))
        log.error("audit_events_spilled", events=len(events), file=str(folder / name))

    def _load_spilled(self) -> None:
        """Put events spilled by an earlier run at the head of the queue, oldest file first."""
        folder = Path(self.config.spill_path)
        if not folder.is_dir():
            return
        loaded: list[_Pending] = []
        for path in sorted(folder.glob(f"audit-{self.chain}-*.jsonl")):
            # Each event is checked against the chain before it is written (maybe_written), so a
            # file loaded twice (two processes starting at once, a crash before the unlink) is harmless.
            lines = [line for line in path.read_bytes().splitlines() if line.strip()]
            batch = [_Pending(seal(orjson.loads(line)), maybe_written=True) for line in lines]
            if not batch:
                path.unlink()
                continue
            batch[-1].spill_file = path
            loaded += batch
        if loaded:
            log.warning("audit_spill_loaded", events=len(loaded))
            self._queue.extendleft(reversed(loaded))
            QUEUED.set(len(self._queue))
