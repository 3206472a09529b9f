"""Group commit: concurrent submits share one database transaction, each in its own SAVEPOINT.

A feed (HL7 v2 over MLLP, DICOM C-STORE) sends many small messages over many connections, and the
sender may be told "accepted" only once the message is committed. Committing each message alone
pays BEGIN, the flush of buffered rows and COMMIT (writing the WAL frames of every touched page)
for every message; committing the messages that are waiting together pays them once per group.

`GroupCommit.run(work)` queues a unit of work and returns its result after the commit of the
transaction it ran in. One drain task at a time takes up to `max_batch` queued units, opens one
store transaction, runs each unit inside a savepoint (a unit that raises is rolled back alone and
gets its exception; the others go on), commits, and only then resolves every unit's future. When the
commit itself fails, every unit of that group gets the error: nothing it did is stored, so nothing
may be acknowledged. Units run one after another, never interleaved, so savepoints nest correctly.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from fhir_gateway.store.store import Store, Transaction, database_errors

T = TypeVar("T")
Work = Callable[[Transaction], Awaitable[Any]]


class _Unit(Generic[T]):
    __slots__ = ("future", "work")

    def __init__(self, work: Callable[[Transaction], Awaitable[T]], future: asyncio.Future[T]) -> None:
        self.work = work
        self.future = future


GATHER_SECONDS = 0.002  # the longest a group waits for the senders of the previous one


class GroupCommit:
    def __init__(self, store: Store, *, max_batch: int = 64, gather_seconds: float = GATHER_SECONDS) -> None:
        self.store = store
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self._queue: deque[_Unit[Any]] = deque()
        self._drain: asyncio.Task[None] | None = None
        self._arrived = asyncio.Event()
        self._expected = 1  # the size of the last group: how many senders are keeping up
        self.groups = 0  # committed groups, for metrics and tests
        self.units = 0

    async def run(self, work: Callable[[Transaction], Awaitable[T]]) -> T:
        """Run `work(tx)` in a shared transaction; its result once that transaction has committed."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.append(_Unit(work, future))
        self._arrived.set()
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._drain_queue())
        return await asyncio.shield(future)  # a caller giving up must not cancel the others' group

    async def _drain_queue(self) -> None:
        while self._queue:
            # One turn of the loop lets the submits that are ready (frames already received) join.
            await asyncio.sleep(0)
            await self._gather()
            group = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
            await self._commit(group)
            self._expected = len(group)

    async def _gather(self) -> None:
        """Give a group that is smaller than the last one up to `gather_seconds` to fill.

        Senders that wait for their ACK send their next message only after the commit: the first
        to answer started a group of its own, the rest a second group behind it. Over MLLP with 8
        connections groups alternated between 7 messages and 1 (3.6 per commit on average, where
        8 callers that never wait fill groups of 8), paying a commit twice as often. A single
        sender is never kept waiting: the last group, its own, had one message.
        """
        wanted = min(self._expected, self.max_batch)
        if len(self._queue) >= wanted:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gather_seconds
        while len(self._queue) < wanted:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            except TimeoutError:
                return

    async def _commit(self, group: list[_Unit[Any]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            async with self.store.transaction() as tx:
                for unit in group:
                    try:
                        async with database_errors(), tx.savepoint():
                            outcomes.append((True, await unit.work(tx)))
                    except Exception as exc:  # the unit's own failure: only it is rolled back
                        outcomes.append((False, exc))
        except Exception as exc:  # the commit (or the transaction) failed: nothing of the group is kept
            for unit in group:
                _settle(unit.future, False, exc)
            return
        self.groups += 1
        self.units += len(group)
        for unit, (ok, value) in zip(group, outcomes, strict=True):
            _settle(unit.future, ok, value)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
