"""The consents in force, read from the store and kept for at most `privacy.consent_cache_seconds`.

Every policy decision needs the active patient-privacy consents, and reading and parsing them per
request would cost more than the request. They are cached for a few seconds (the bound on how stale
a decision may be when a consent changes on another server process) and dropped at once when a
Consent is written through this process's Gateway, so a revocation here takes effect immediately.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy import and_, select

from fhir_gateway.fhir.json import loads
from fhir_gateway.privacy.consent import PatientConsent, parse_consent
from fhir_gateway.store.schema import idx_token, resources
from fhir_gateway.store.store import Store

_ACTIVE_CONSENTS = select(resources.c.content).where(
    resources.c.res_type == "Consent",
    resources.c.deleted.is_(False),
    resources.c.pk.in_(
        select(idx_token.c.res_pk).where(
            and_(
                idx_token.c.res_type == "Consent", idx_token.c.param == "status", idx_token.c.code == "active"
            )
        )
    ),
)


T = TypeVar("T")
InForce = dict[str, list[PatientConsent]]
RESOLVED_KEPT = 1024  # distinct callers whose resolution is kept; the memo starts afresh beyond that


class ConsentCache:
    def __init__(self, store: Store, max_age: float) -> None:
        self.store = store
        self.max_age = max_age
        self._loaded_at = float("-inf")
        self._invalidated = float("-inf")
        self._by_patient: InForce = {}
        self._reload: asyncio.Future[None] | None = None
        self._parsed: dict[bytes, PatientConsent | None] = {}  # stored Consent → parsed, last load
        # key → (valid from, valid until, what resolve answered); emptied when a load finds changes
        self._resolved: dict[Hashable, tuple[float, float, Any]] = {}

    def invalidate(self) -> None:
        """A Consent was written: the next decision reads them again (also if a load is under way
        that started before the write)."""
        self._invalidated = time.monotonic()

    async def in_force(self, now: float) -> InForce:
        """Patient id → that patient's consents in force at `now`."""
        await self._fresh()
        return self._in_force(now)

    async def resolved(
        self, key: Hashable, now: float, resolve: Callable[[InForce, float], tuple[T, float]]
    ) -> T:
        """What `resolve(consents in force, now)` answers, with the time its answer may change
        (the next period boundary), kept per `key` (a caller's request-side inputs) until then,
        and at most until a load finds the consents changed (a Consent written, here or elsewhere).

        Resolving every consent in force on every request made each request linear in the number
        of patients with a consent: 136 ms of CPU per request at 10,000 of them, measured. Callers
        repeat, and consents change seldom, so a caller resolves them once per change (5-8 µs a
        request after that, whatever their number).
        """
        await self._fresh()
        hit = self._resolved.get(key)
        if hit is not None and hit[0] <= now < hit[1]:
            answer: T = hit[2]
            return answer
        answer, until = resolve(self._in_force(now), now)
        if len(self._resolved) >= RESOLVED_KEPT:
            self._resolved.clear()
        self._resolved[key] = (now, min(until, self._next_boundary(now)), answer)
        return answer

    def _next_boundary(self, now: float) -> float:
        """The first time after `now` at which a loaded consent comes into or goes out of force."""
        bounds = [
            b
            for consents in self._by_patient.values()
            for c in consents
            for b in (*(c.period or ()), c.not_before)
            if b is not None and b > now
        ]
        return min(bounds, default=float("inf"))

    def _in_force(self, now: float) -> InForce:
        return {
            patient: live
            for patient, consents in self._by_patient.items()
            if (live := [c for c in consents if c.in_force(now)])
        }

    async def _fresh(self) -> None:
        asked = time.monotonic()
        while self._stale(asked):
            # One load at a time, shared: every caller waiting for it resumes in the same loop
            # iteration when it is done. (A lock would hand itself on one waiter per iteration, so
            # under load the requests that met a reload starved behind the ones that did not.)
            if self._reload is None or self._reload.done():
                self._reload = asyncio.ensure_future(self._refresh())
            await asyncio.shield(self._reload)

    def _stale(self, asked: float) -> bool:
        """Whether a caller who asked at `asked` needs a newer load: one older than a Consent write,
        or older than `max_age` at the time of asking. Measured from the asking time, not from now:
        else a zero max_age (or a load slower than max_age) would never be fresh enough."""
        return self._loaded_at <= self._invalidated or asked - self._loaded_at > self.max_age

    async def _refresh(self) -> None:
        started = time.monotonic()  # a Consent written during the load makes it stale again
        loaded = await self._load()
        if loaded != self._by_patient:  # the periodic reload mostly finds the same consents
            self._by_patient, self._resolved = loaded, {}
        self._loaded_at = started

    async def _load(self) -> InForce:
        async with self.store.reader(offload=True) as conn:
            rows = (await conn.execute(_ACTIVE_CONSENTS)).all()
        # Parsed once per stored version: the periodic reload finds mostly the same consents, and
        # parsing thousands of them every few seconds stalled the event loop each time.
        parsed_before, self._parsed = self._parsed, {}
        by_patient: dict[str, list[PatientConsent]] = defaultdict(list)
        for row in rows:
            content: bytes = row.content
            parsed = parsed_before[content] if content in parsed_before else _parse(content)
            self._parsed[content] = parsed
            if parsed is not None:
                by_patient[parsed.patient_id].append(parsed)
        return dict(by_patient)


def _parse(content: bytes) -> PatientConsent | None:
    return parse_consent(loads(content, what="stored Consent"))
