"""The consent cache under concurrency: one shared load, every waiter resumed at once, and a
Consent written during a load still takes effect before the next answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fhir_gateway.privacy.consent import PatientConsent
from fhir_gateway.privacy.consent_store import ConsentCache
from fhir_gateway.store.store import Store

CALLERS = 200


class GatedCache(ConsentCache):
    """Loads wait for `gate`; each load answers a marker patient `load-N`."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, 60)
        self.gate = asyncio.Event()
        self.loads = 0
        self.fail = False

    async def _load(self) -> dict[str, list[PatientConsent]]:
        self.loads += 1
        number = self.loads
        await self.gate.wait()
        if self.fail:
            raise RuntimeError("database gone")
        return {f"load-{number}": []}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite+aiosqlite:///{tmp_path}/c.db")


async def test_waiters_share_one_load_and_resume_together(store: Store) -> None:
    cache = GatedCache(store)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    done_at: list[int] = []

    async def caller() -> None:
        await cache.in_force(0.0)
        done_at.append(ticks)

    ticking = asyncio.create_task(ticker())
    callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    await asyncio.sleep(0.01)
    released_at = ticks
    cache.gate.set()
    await asyncio.gather(*callers)
    ticking.cancel()
    assert cache.loads == 1
    # a lock would wake one waiter per loop iteration (>= CALLERS iterations); a shared load, all at once
    assert max(done_at) - released_at < 10


async def test_a_consent_written_during_a_load_is_read_before_answering(store: Store) -> None:
    cache = GatedCache(store)
    first = asyncio.create_task(cache.in_force(0.0))
    while cache.loads == 0:  # the load is under way
        await asyncio.sleep(0)
    cache.invalidate()  # e.g. a revocation committed while the load was reading
    cache.gate.set()
    await first
    assert cache.loads == 2 and set(cache._by_patient) == {"load-2"}  # answered from the second load


async def test_a_failed_load_fails_its_callers_and_the_next_call_loads_again(store: Store) -> None:
    cache = GatedCache(store)
    cache.fail = True
    cache.gate.set()
    with pytest.raises(RuntimeError):
        await cache.in_force(0.0)
    cache.fail = False
    await cache.in_force(0.0)
    assert cache.loads == 2


async def test_a_zero_max_age_loads_once_per_call_and_returns(store: Store) -> None:
    """consent_cache_seconds: 0 (every decision sees the latest consents) must not reload forever."""
    cache = GatedCache(store)
    cache.max_age = 0
    cache.gate.set()
    assert await asyncio.wait_for(cache.in_force(0.0), 5) == {}
    assert cache.loads == 1
    assert await asyncio.wait_for(cache.in_force(0.0), 5) == {}
    assert cache.loads == 2  # no caching at all, and no endless reloading either
