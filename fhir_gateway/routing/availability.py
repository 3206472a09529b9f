"""Whether each system of record (SoR) is available, as its outbox deliveries and health probes say.

    record(store, channel, error, ...)   one delivery or probe outcome (error None = it got through)
    statuses(store)                      channel → Status, as persisted (every server process agrees)
    Availability(store, settings)        the outbox Dispatcher's observer, and the health-probe loop

`failure_threshold` consecutive failures mark a SoR unavailable (`since` is when the threshold was
reached); one success marks it available again. Coming back releases the channel's queued messages
at once (they may sit far into their back-off) and wakes the dispatcher, so the SoR catches up
without waiting. The status is a table, not memory: a restarted server, or a second process,
serves readers the same answer.

Only channels of subscribers marked `system_of_record` are tracked; `last_error` is a failure class
("HTTP 503", "ConnectError"), never a response body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from fhir_gateway.pipeline.authority_config import AuthoritySettings
from fhir_gateway.routing.outbox import WITHHELD, Message, release
from fhir_gateway.routing.tables import sor_status
from fhir_gateway.store.store import Store

log = structlog.get_logger("fhir_gateway.availability")


@dataclass(frozen=True, slots=True)
class Status:
    channel: str
    available: bool
    since: float
    failures: int
    last_error: str | None


async def record(
    store: Store, channel: str, error: str | None, *, threshold: int, now: float | None = None
) -> tuple[Status, bool]:
    """Apply one outcome to the channel's status; returns it and whether it changed availability."""
    moment = time.time() if now is None else now
    async with store.transaction() as tx:
        conn = tx.conn
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        fresh = {"channel": channel, "available": True, "since": moment, "failures": 0, "checked": moment}
        await conn.execute(
            dialect.insert(sor_status).values(**fresh).on_conflict_do_nothing(index_elements=["channel"])
        )
        row = (
            await conn.execute(select(sor_status).where(sor_status.c.channel == channel).with_for_update())
        ).one()
        failures = 0 if error is None else row.failures + 1
        available = error is None or (bool(row.available) and failures < threshold)
        changed = available != bool(row.available)
        since = moment if changed else row.since
        await conn.execute(
            update(sor_status)
            .where(sor_status.c.channel == channel)
            .values(
                available=available,
                since=since,
                failures=failures,
                last_error=None if error is None else error[:255],
                checked=moment,
            )
        )
    return Status(channel, available, since, failures, None if error is None else error[:255]), changed


async def statuses(store: Store) -> dict[str, Status]:
    async with store.reader() as conn:
        rows = (await conn.execute(select(sor_status))).all()
    return {r.channel: Status(r.channel, bool(r.available), r.since, r.failures, r.last_error) for r in rows}


class Availability:
    """Tracks the SoR channels: `observe` is the Dispatcher's observer; `run` probes health URLs."""

    def __init__(
        self,
        store: Store,
        config: AuthoritySettings,
        *,
        wake: Callable[[], None] | None = None,
        client: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.config = config
        self.channels = frozenset(config.sor_channels().values())
        self.probes = {
            s.channel: s.health_url for s in config.subscribers if s.system_of_record and s.health_url
        }
        self.wake = wake
        self.client = client
        self._clock = clock
        self._stop = asyncio.Event()

    async def observe(self, outcomes: Sequence[tuple[Message, str | None]]) -> None:
        """A dispatcher pass's outcomes, one per SoR channel: a pass counts as one attempt (its
        messages to one system fail together, and a backlog must not trip the threshold at once);
        any delivery that got through means the system is there."""
        by_channel: dict[str, list[str | None]] = {}
        for message, error in outcomes:
            if message.channel in self.channels and error != WITHHELD:  # withheld: nothing was tried
                by_channel.setdefault(message.channel, []).append(error)
        for channel, errors in by_channel.items():
            failed = [e for e in errors if e is not None]
            await self.outcome(channel, failed[-1] if len(failed) == len(errors) else None)

    async def outcome(self, channel: str, error: str | None) -> Status:
        status, changed = await record(
            self.store, channel, error, threshold=self.config.outage.failure_threshold, now=self._clock()
        )
        if changed and status.available:
            released = await release(self.store, channel, now=self._clock())
            log.warning("system_of_record_available", channel=channel, released=released)
            if self.wake is not None:
                self.wake()
        elif changed:
            log.warning("system_of_record_unavailable", channel=channel, error=status.last_error)
        return status

    async def probe(self, channel: str, url: str) -> Status:
        """One health check: any 2xx answer is up, anything else (or no answer) a failure."""
        assert self.client is not None, "probing needs an HTTP client"
        try:
            response = await self.client.get(url, timeout=self.config.outage.probe_timeout)
            error = None if response.is_success else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        return await self.outcome(channel, error)

    async def run(self) -> None:
        """Probe every health URL each `probe_seconds` until `stop()`; a failed round is logged."""
        self._stop.clear()
        while not self._stop.is_set():
            for channel, url in self.probes.items():
                try:
                    await self.probe(channel, url)
                except Exception as exc:  # the database may be down: the next round tries again
                    log.warning("system_of_record_probe_failed", channel=channel, error=type(exc).__name__)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.config.outage.probe_seconds):
                    await self._stop.wait()

    def stop(self) -> None:
        self._stop.set()
