"""Reads while a system of record (SoR) is unavailable: the last version it confirmed, with a warning.

`Gateway.read`, `search` and `$everything` hand their already presented versions (the PDP decided
and decrypted them) to `OutageReads.serve`. For a resource whose category's SoR is unavailable
(routing/availability.py) it

- leaves a version the SoR wrote as it is (tags `sor` without `secondary`), and
- replaces a version the SoR has not confirmed (tagged `secondary`: another source wrote it) by
  the newest earlier version the SoR wrote, found in the history and presented through the same
  PDP callback (a version the caller may not see is not served: the current one stays). A resource
  the SoR never wrote, or one deleted since, keeps its current version.

Either way the answer carries a `Notice` per category: HTTP `Warning` header values (110 "Response
is Stale" when a version was replaced, else 199) and OperationOutcome issues (severity warning,
code transient) for search Bundles. They name the category and since when its SoR is unavailable,
nothing about the data. Writes are not changed here: contributions are stored by the category's
rule and queued for the SoR in the outbox (authority stage).

The availability table is read at most every `authority.outage.status_cache_seconds`; with no SoR
subscribed (`authority.subscribers[].system_of_record`) there is no OutageReads at all.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fhir_gateway.errors import Issue
from fhir_gateway.fhir.dates import format_instant
from fhir_gateway.pipeline.authority import SECONDARY, SOR, tags_of
from fhir_gateway.pipeline.authority_config import AuthoritySettings
from fhir_gateway.pipeline.registry import Registry, authority_settings
from fhir_gateway.routing.availability import statuses
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store, StoredVersion

Present = Callable[[StoredVersion], Awaitable[StoredVersion | None]]
HISTORY_PAGE = 20
WARN_AGENT = "fhir-gateway"


@dataclass(slots=True)
class Notice:
    """What one answer served of one category whose SoR is down."""

    category: str
    since: float
    served: int = 0
    replaced: int = 0

    def warning(self) -> str:
        """An RFC 7234 Warning value (110: stale data was served; 199: miscellaneous warning)."""
        code = 110 if self.replaced else 199
        return f'{code} {WARN_AGENT} "{self._text()}"'

    def issue(self) -> Issue:
        return Issue("warning", "transient", self._text())

    def _text(self) -> str:
        text = f"The system of record for {self.category} is unavailable since {format_instant(self.since)}"
        if self.replaced:
            return f"{text}; {self.replaced} result(s) are served as the last version it confirmed"
        return f"{text}; results may not reflect its latest data"


class OutageReads:
    def __init__(
        self,
        store: Store,
        registry: Registry,
        config: AuthoritySettings,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.registry = registry
        self.config = config
        self.channels = config.sor_channels()  # category -> channel
        self._clock = clock
        self._cached: tuple[float, dict[str, float]] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: Store) -> OutageReads | None:
        config = authority_settings(settings)
        if not config.sor_channels():
            return None
        return cls(store, Registry.load(config.rules), config)

    async def down(self) -> dict[str, float]:
        """Category → since when its SoR is unavailable (cached for `status_cache_seconds`)."""
        now = self._clock()
        ttl = self.config.outage.status_cache_seconds
        if self._cached is not None and now - self._cached[0] < ttl:
            return self._cached[1]
        found = await statuses(self.store)
        result = {
            category: found[channel].since
            for category, channel in self.channels.items()
            if channel in found and not found[channel].available
        }
        self._cached = (now, result)
        return result

    async def serve(
        self, versions: list[StoredVersion], present: Present
    ) -> tuple[list[StoredVersion], list[Notice]]:
        """The versions to answer with, and a notice per category whose SoR is unavailable."""
        down = await self.down()
        if not down:
            return versions, []
        notices: dict[str, Notice] = {}
        served: list[StoredVersion] = []
        for version in versions:
            if version.deleted or version.content is None:
                served.append(version)
                continue
            resource = version.resource()
            category = self.registry.category_of(resource)
            if category is None or category.name not in down:
                served.append(version)
                continue
            notice = notices.setdefault(category.name, Notice(category.name, down[category.name]))
            notice.served += 1
            if self.config.outage.serve_last_authoritative and SECONDARY in tags_of(resource):
                confirmed = await self._last_confirmed(version, present)
                if confirmed is not None:
                    notice.replaced += 1
                    version = confirmed
            served.append(version)
        return served, list(notices.values())

    async def _last_confirmed(self, current: StoredVersion, present: Present) -> StoredVersion | None:
        """The newest version before `current` that the SoR wrote, as this caller may see it."""
        offset = 0
        while True:
            page, total = await self.store.history(
                res_type=current.res_type, res_id=current.res_id, count=HISTORY_PAGE, offset=offset
            )
            for version in page:
                if version.version_id >= current.version_id:
                    continue
                if version.deleted or version.content is None:
                    return None  # deleted since: what came before is no longer this resource's data
                tags = tags_of(version.resource())
                if SOR in tags and SECONDARY not in tags:
                    return await present(version)
            offset += HISTORY_PAGE
            if offset >= total:
                return None
