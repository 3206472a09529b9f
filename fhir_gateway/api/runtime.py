"""The per-application runtime: settings, store and gateway, started once and shared by the routes.

Start-up never fails because the database is down: the server comes up, `/ready` says the database
is unreachable, requests get 503, and migrations are retried on the next request until they succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import structlog
from fastapi import Request

from fhir_gateway.audit.events import AuditSource
from fhir_gateway.audit.writer import AuditLog
from fhir_gateway.auth.verifier import TokenVerifier
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import GatewayError, Unauthorized
from fhir_gateway.gateway import Gateway
from fhir_gateway.ingest.dicom.ingest import DicomIngester
from fhir_gateway.ingest.hl7v2.mapper import MappingProcess
from fhir_gateway.routing.availability import Availability
from fhir_gateway.routing.outbox import finish
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store

log = structlog.get_logger("fhir_gateway.runtime")


class Runtime:
    """`primary`: this process runs the once-per-server services (listeners, outbox dispatcher,
    break-glass escalation); other worker processes of the same server only answer HTTP."""

    def __init__(self, settings: Settings, *, primary: bool = True) -> None:
        self.settings = settings
        self.primary = primary
        self.store = Store(settings.database_url)
        self.gateway = Gateway(settings, self.store)
        self.verifier = TokenVerifier(settings)
        self.dicom = DicomIngester.from_settings(self.gateway, settings)  # one per server: per-study locks
        # One per server, shared by MLLP, `POST /hl7v2`, the file drop and replays; started on first use.
        self.hl7_mapping = MappingProcess(settings.hl7)
        self.audit = AuditLog(
            self.store,
            settings.audit,
            source=AuditSource.from_settings(settings),
            prepare=self.ensure_schema,
        )
        from fhir_gateway.privacy.breakglass_api import BreakGlassServices  # it imports this module

        self.breakglass = BreakGlassServices(self, self.audit)  # outbox dispatcher, escalation loop
        # Systems of record: their deliveries (the dispatcher's outcomes) and health probes say
        # whether each is up; readers are warned while one is not (pipeline/outage.py).
        dispatcher = self.breakglass.dispatcher
        self.availability = Availability(
            self.store, settings.authority, wake=dispatcher.wake, client=self.breakglass.client
        )
        if self.availability.channels:
            dispatcher.observer = self.availability.observe
        self._migrated = not settings.run_migrations
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            await self.ensure_schema()
        except GatewayError:
            log.warning("database_unavailable_at_start")
        await self.audit.start()

    async def ensure_schema(self) -> None:
        if self._migrated:
            return
        async with self._lock:
            if not self._migrated:
                await self.store.upgrade()
                await self.gateway.ensure_crypto()  # the PHI key ring exists before the first request
                self._migrated = True

    async def stop(self) -> None:
        await self.hl7_mapping.stop()
        await self.audit.stop()  # flushes every queued AuditEvent before the store goes away
        await self.store.dispose()

    @asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            async with AsyncExitStack() as services:
                for service in self.services():
                    await services.enter_async_context(service)
                yield
        finally:
            await self.stop()

    @asynccontextmanager
    async def _breakglass_service(self) -> AsyncIterator[None]:
        # Started after the AuditLog (start()) and stopped before it (stop()): closing expired
        # grants records their stop events.
        await self.breakglass.start()
        try:
            yield
        finally:
            await self.breakglass.stop()

    @asynccontextmanager
    async def _probe_service(self) -> AsyncIterator[None]:
        """The health probes of the systems of record that name a `health_url`."""
        task = asyncio.create_task(self.availability.run(), name="sor-health-probes")
        try:
            yield
        finally:
            self.availability.stop()
            await finish(task, 5.0)

    def services(self) -> list[AbstractAsyncContextManager[Any]]:
        """The listeners and background workers that live as long as the server (in start order)."""
        from fhir_gateway.ingest.dicom.scp import dicom_listener
        from fhir_gateway.ingest.hl7v2.mllp import mllp_listener

        if not self.primary:
            return []
        found: list[AbstractAsyncContextManager[Any]] = [self._breakglass_service()]
        if self.availability.probes:
            found.append(self._probe_service())
        if self.settings.mllp_port is not None:
            found.append(mllp_listener(self, self.settings.host, self.settings.mllp_port))
        if self.settings.dicom_port is not None:
            found.append(
                dicom_listener(self, self.settings.host, self.settings.dicom_port, ingester=self.dicom)
            )
        return found

    async def ready_gateway(self) -> Gateway:
        await self.ensure_schema()
        return self.gateway

    def context(self, request: Request) -> RequestContext:
        """The caller of this request (kept on request.state, where the audit record finds it)."""
        request.state.fhir_runtime = self
        header = request.headers.get("authorization")
        request_id = request.headers.get("x-request-id")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("Use Authorization: Bearer <token>")
            ctx = self.verifier.verify(token.strip())
        elif self.settings.security.allow_anonymous:
            ctx = RequestContext(subject="anonymous", roles=("admin",), scopes=("system/*.*",))
        else:
            raise Unauthorized("This server needs an access token: Authorization: Bearer <token>")
        if request_id:
            ctx.request_id = request_id[:64]
        request.state.fhir_ctx = ctx
        return ctx
