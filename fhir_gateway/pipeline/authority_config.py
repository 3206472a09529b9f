"""The `authority` settings section: which registry file applies, who subscribes to authoritative
updates, who may review conflicts. A module of its own (pydantic only) so settings.py can mount it
without importing the registry and, through it, the outbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Subscriber(BaseModel):
    """A system that wants a category's updates: an outbox channel, and for a channel of its own
    (`sor-<name>`) the webhook URL it is delivered to.

    A subscriber is sent the category's authoritative updates, unless it is the category's system
    of record (`system_of_record: true`): the SoR is sent the contributions (versions written by
    other sources) instead, and its channel's deliveries (and `health_url`, if given) tell whether
    it is available (routing/availability.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str
    channel: str = Field(min_length=1, max_length=32)
    url: str | None = None
    system_of_record: bool = False
    health_url: str | None = None  # GET answering 2xx while the system is up; probed every probe_seconds
    # Who the receiving system is, for the consent check before each push (routing/sharing.py):
    # its FHIR reference (matched against Consent actors), its roles and the purpose of use.
    recipient: str | None = None  # e.g. Organization/lab-x
    roles: tuple[str, ...] = ("integration",)
    purpose: str = "TREAT"


class OutageSettings(BaseModel):
    """When a system of record counts as unavailable, and what readers are told meanwhile."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    failure_threshold: int = Field(default=3, ge=1)  # consecutive failed deliveries/probes → unavailable
    probe_seconds: float = Field(default=30.0, gt=0)  # health_url polling interval
    probe_timeout: float = Field(default=5.0, gt=0)
    status_cache_seconds: float = Field(default=5.0, ge=0)  # how long readers reuse the status they read
    serve_last_authoritative: bool = True  # false: serve the current version, with the warning only


class AuthoritySettings(BaseModel):
    """The `authority` settings section (to be mounted on Settings as `authority: AuthoritySettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: str | None = None  # a registry file; null = the packaged authority-v1
    subscribers: tuple[Subscriber, ...] = ()
    reviewer_roles: tuple[str, ...] = ("admin",)  # who may list and resolve conflicts
    outage: OutageSettings = Field(default_factory=OutageSettings)

    def sor_channels(self) -> dict[str, str]:
        """Category → the outbox channel of its system of record (subscribers so marked)."""
        return {s.category: s.channel for s in self.subscribers if s.system_of_record}
