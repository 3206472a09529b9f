"""The consent cache under concurrency: one shared load, every waiter resumed at once, and a
Consent written during a load still takes effect before the next answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from fhir_gateway.context import RequestContext
from fhir_gateway.gateway import Gateway
from fhir_gateway.privacy import consent_store
from fhir_gateway.privacy.consent import PatientConsent, Provision
from fhir_gateway.privacy.consent_store import ConsentCache
from fhir_gateway.store.store import Store
from tests.conftest import make_settings, put_bundle

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


class FixedCache(ConsentCache):
    """Every load answers `consents` (replace it to simulate a Consent written elsewhere)."""

    def __init__(self, store: Store, consents: dict[str, list[PatientConsent]], max_age: float = 60) -> None:
        super().__init__(store, max_age)
        self.consents = consents
        self.loads = 0

    async def _load(self) -> dict[str, list[PatientConsent]]:
        self.loads += 1
        return self.consents


def patients_in_force(calls: list[float], until: float = float("inf")) -> Resolve:
    """A resolution that records when it ran and answers the patients in force."""

    def resolve(in_force: dict[str, list[PatientConsent]], now: float) -> tuple[tuple[str, ...], float]:
        calls.append(now)
        return tuple(sorted(in_force)), until

    return resolve


Resolve = Callable[[dict[str, list[PatientConsent]], float], tuple[tuple[str, ...], float]]
PERMIT = Provision("permit")


async def test_a_resolution_is_kept_per_caller_until_the_time_it_may_change(store: Store) -> None:
    cache = FixedCache(store, {"p1": [PatientConsent("c1", "p1", PERMIT, period=(100.0, 200.0))]})
    calls: list[float] = []
    until_150 = patients_in_force(calls, until=150.0)
    assert await cache.resolved("doctor", 120.0, until_150) == ("p1",)
    assert await cache.resolved("doctor", 149.0, until_150) == ("p1",)
    assert calls == [120.0]  # the second request was answered from the memo
    assert await cache.resolved("nurse", 149.0, until_150) == ("p1",)
    assert calls == [120.0, 149.0]  # another caller resolves for itself
    await cache.resolved("doctor", 150.0, until_150)
    assert calls[-1] == 150.0  # the resolution's own boundary (a provision period) passed

    forever = patients_in_force(calls)
    assert await cache.resolved("clerk", 199.0, forever) == ("p1",)
    assert await cache.resolved("clerk", 200.0, forever) == ()  # the consent's own period ended
    assert calls[-2:] == [199.0, 200.0]
    assert await cache.resolved("clerk", 150.0, forever) == ("p1",)  # the clock went back: resolved again
    assert calls[-1] == 150.0


async def test_a_consent_not_yet_in_force_ends_the_resolution_when_it_starts(store: Store) -> None:
    later = PatientConsent("c2", "p2", PERMIT, not_before=300.0)
    cache = FixedCache(store, {"p2": [later]})
    calls: list[float] = []
    resolve = patients_in_force(calls)
    assert await cache.resolved("doctor", 299.0, resolve) == ()
    assert await cache.resolved("doctor", 300.0, resolve) == ("p2",)
    assert calls == [299.0, 300.0]


async def test_a_changed_load_drops_every_resolution_and_an_unchanged_one_keeps_them(store: Store) -> None:
    cache = FixedCache(store, {"p1": [PatientConsent("c1", "p1", PERMIT)]}, max_age=0)  # loads each time
    calls: list[float] = []
    resolve = patients_in_force(calls)
    await cache.resolved("doctor", 1.0, resolve)
    await cache.resolved("doctor", 2.0, resolve)
    assert cache.loads == 2 and calls == [1.0]  # reloaded, found the same consents: memo kept
    cache.consents = {"p3": [PatientConsent("c3", "p3", PERMIT)]}  # written on another process
    assert await cache.resolved("doctor", 3.0, resolve) == ("p3",)
    assert calls == [1.0, 3.0]


async def test_a_consent_written_here_is_resolved_again_at_once(store: Store) -> None:
    cache = FixedCache(store, {"p1": [PatientConsent("c1", "p1", PERMIT)]})
    calls: list[float] = []
    resolve = patients_in_force(calls)
    await cache.resolved("doctor", 1.0, resolve)
    cache.consents = {}
    cache.invalidate()
    assert await cache.resolved("doctor", 2.0, resolve) == ()
    assert calls == [1.0, 2.0]


async def test_the_resolutions_kept_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consent_store, "RESOLVED_KEPT", 3)
    cache = FixedCache(store, {})
    calls: list[float] = []
    for n in range(10):
        await cache.resolved(f"caller-{n}", 1.0, patients_in_force(calls))
    assert len(cache._resolved) <= 3 and len(calls) == 10


TERMINOLOGY = "http://terminology.hl7.org/CodeSystem"


def _consent(cid: str, patient: str, provision_type: str) -> dict[str, object]:
    return {
        "resourceType": "Consent",
        "id": cid,
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "policyRule": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]
        },
        "provision": {"type": provision_type},
    }


async def test_a_reload_parses_only_the_consents_that_changed(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/parsed.db"
    store = Store(url)
    await store.upgrade()
    gateway = Gateway(make_settings(url), store)
    system = RequestContext.system("cli")
    patients = [{"resourceType": "Patient", "id": p} for p in ("a", "b")]
    research = {**_consent("cr", "a", "deny"), "scope": {"coding": [{"code": "research"}]}}
    consents = [_consent("ca", "a", "deny"), _consent("cb", "b", "deny"), research]
    await gateway.submit(put_bundle(*patients, *consents), system)
    cache = ConsentCache(store, 0)  # every call loads again
    first = await cache.in_force(0.0)
    assert [c.consent_id for c in first["a"]] == ["ca"]  # a research consent is not a privacy one
    again = await cache.in_force(0.0)
    assert again["a"][0] is first["a"][0] and again["b"][0] is first["b"][0]  # not parsed again
    await gateway.submit(put_bundle(_consent("cb", "b", "permit")), system)
    changed = await cache.in_force(0.0)
    assert changed["a"][0] is first["a"][0]
    assert changed["b"][0] is not first["b"][0] and changed["b"][0].root.type == "permit"
    await store.dispose()
