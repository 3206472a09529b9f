"""The `authority` settings section: which registry file applies, who subscribes to authoritative
updates, who may review conflicts. A module of its own (pydantic only) so settings.py can mount it
without importing the registry and, through it, the outbox."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Subscriber(BaseModel):
    """A system that wants a category's authoritative updates: an outbox channel, and for a channel
    of its own (`sor-<name>`) the webhook URL it is delivered to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    category: str
    channel: str = Field(min_length=1, max_length=32)
    url: str | None = None


class AuthoritySettings(BaseModel):
    """The `authority` settings section (to be mounted on Settings as `authority: AuthoritySettings`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rules: str | None = None  # a registry file; null = the packaged authority-v1
    subscribers: tuple[Subscriber, ...] = ()
    reviewer_roles: tuple[str, ...] = ("admin",)  # who may list and resolve conflicts
