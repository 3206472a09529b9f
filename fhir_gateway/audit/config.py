"""The `audit` settings section (to be mounted on Settings as `audit: AuditSettings`).

Until Settings carries the section, `audit_settings(settings)` answers the defaults, so the audit
trail works with no configuration: one chain named `main`, group commit every 50 ms or 500 events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:  # settings.py mounts AuditSettings, so only the type is imported from it
    from fhir_gateway.settings import Settings


class AuditSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # Several server processes on one database share a chain; a chain per tenant or site is possible.
    chain: str = Field(default="main", min_length=1, max_length=64)
    site: str | None = None  # AuditEvent.source.site; null = the server's base URL, else host:port
    observer: str = "fhir-gateway"  # AuditEvent.source.observer identifier of this gateway
    flush_interval_ms: float = Field(default=50.0, gt=0)  # group commit: the longest an event waits
    batch_size: int = Field(default=500, gt=0)  # events per flush transaction
    max_queue: int = Field(default=50_000, gt=0)  # beyond this `record` waits for the writer (no drop)
    record_now_timeout_seconds: float = Field(default=5.0, gt=0)  # durable writes that cannot start: 503
    retry_max_seconds: float = Field(default=5.0, gt=0)  # the longest back-off between failed flushes
    stop_timeout_seconds: float = Field(default=10.0, gt=0)  # flushing at shutdown before spilling to disk
    spill_path: str = "./data/audit-spill"  # unwritable events at shutdown go here; reloaded at start


def audit_settings(settings: Settings) -> AuditSettings:
    """`settings.audit`, or the defaults while Settings has no such section yet."""
    section = getattr(settings, "audit", None)
    return section if isinstance(section, AuditSettings) else AuditSettings()


def audit_site(settings: Settings) -> str:
    """AuditEvent.source.site: configured, else the public base URL, else host:port."""
    configured = audit_settings(settings).site
    if configured:
        return configured
    return settings.base_url or f"{settings.host}:{settings.port}"
