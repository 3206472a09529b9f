"""The DICOM C-STORE SCP (and C-ECHO) on `--dicom-port`, with pynetdicom.

pynetdicom runs each association in its own thread and calls the handlers there. The C-STORE
handler hands the received Part 10 bytes to the server's asyncio loop
(`asyncio.run_coroutine_threadsafe`) and waits: the same ingest as STOW-RS, so status 0x0000 goes
back only after the commit. Any failure is answered at this one place with a status from PS3.4
Table B.2-1 and an ErrorComment (0000,0902) without PHI:

    0xA700  Refused: out of resources      (database down, store full, timeout)
    0xA900  Data set does not match SOP Class
    0xC000  Cannot understand              (not parseable, truncated, bad VR, missing UIDs)
    0xC001  Cannot understand: refused by the gateway (validation, policy, conflicting update)

Presentation contexts: every Storage SOP Class pynetdicom knows, with all transfer syntaxes pydicom
knows (instances are stored as received, never transcoded), plus Verification.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from fhir_gateway.ingest.dicom.ingest import (
    DicomIngester,
    FailureReason,
    InstanceOutcome,
    default_dicomweb_base,
)

if TYPE_CHECKING:
    from fhir_gateway.api.runtime import Runtime

log = structlog.get_logger("fhir_gateway.dicom.scp")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
REFUSED_BY_GATEWAY = 0xC001
DATABASE_DOWN = "the database is unavailable"
STATUS_FOR = {
    FailureReason.OUT_OF_RESOURCES: OUT_OF_RESOURCES,
    FailureReason.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: DOES_NOT_MATCH_SOP_CLASS,
    FailureReason.CANNOT_UNDERSTAND: CANNOT_UNDERSTAND,
}


class DicomListener:
    """A C-STORE/C-ECHO SCP feeding the DICOM ingester; `start` and `stop` run on the server's loop."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        host: str = "127.0.0.1",
        port: int = 11112,
        ingester: DicomIngester | None = None,
        timeout_seconds: float = 120.0,
    ) -> None:
        self.runtime = runtime
        self.host = host
        self.requested_port = port
        self.ingester = ingester or DicomIngester.from_settings(runtime.gateway, runtime.settings)
        self.timeout_seconds = timeout_seconds
        self.dicomweb_base = default_dicomweb_base(runtime.settings)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        """The port listened on (useful when started on port 0)."""
        if self._server is None:
            raise RuntimeError("the DICOM listener is not running")
        return int(self._server.server_address[1])

    def application_entity(self) -> AE:
        ae = AE(ae_title=self.runtime.settings.dicom_ae_title)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        return ae

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, no_delay),
            *([(evt.EVT_DATA_RECV, quick_ack)] if QUICKACK is not None else []),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_C_ECHO, self.handle_echo),
        ]
        ae = self.application_entity()
        self._server = await asyncio.to_thread(
            ae.start_server, (self.host, self.requested_port), block=False, evt_handlers=handlers
        )
        log.info("dicom_listener_started", port=self.port, ae_title=self.runtime.settings.dicom_ae_title)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await asyncio.to_thread(server.shutdown)

    # ---- handlers (run in pynetdicom's association threads) --------------------------------------
    def handle_echo(self, _event: evt.Event) -> int:
        """EVT_C_ECHO: Verification (PS3.4 Annex A) always succeeds while the listener runs."""
        return SUCCESS

    def handle_store(self, event: evt.Event) -> Dataset:
        """EVT_C_STORE: the one place where every outcome or exception becomes a C-STORE status."""
        try:
            data = event.encoded_dataset(include_meta=True)
            calling = str(event.assoc.requestor.ae_title).strip() or "DICOM"
        except Exception:
            log.exception("dicom_store_undecodable")
            return _status(CANNOT_UNDERSTAND, "the data set cannot be decoded")
        if self._loop is None:
            return _status(OUT_OF_RESOURCES, "the listener is stopping")
        work = self._ingest(data, calling)
        try:
            future = asyncio.run_coroutine_threadsafe(work, self._loop)
        except RuntimeError:  # the loop closed meanwhile
            work.close()
            return _status(OUT_OF_RESOURCES, "the listener is stopping")
        try:
            outcome = future.result(timeout=self.timeout_seconds)
        except concurrent.futures.TimeoutError:
            future.cancel()
            return _status(OUT_OF_RESOURCES, "the store did not answer in time")
        except Exception:  # defence in depth: the ingest answers its own failures
            log.exception("dicom_store_failed")
            return _status(REFUSED_BY_GATEWAY, "internal error; nothing was stored")
        if outcome.ok:
            return _status(SUCCESS, None)
        failure = outcome.failure or FailureReason.PROCESSING_FAILURE
        return _status(STATUS_FOR.get(failure, REFUSED_BY_GATEWAY), outcome.reason)

    async def _ingest(self, data: bytes, calling_ae: str) -> InstanceOutcome:
        try:
            await self.runtime.ready_gateway()
        except Exception:
            return InstanceOutcome(
                failure=FailureReason.OUT_OF_RESOURCES, reason="the database is unavailable"
            )
        outcomes = await self.ingester.ingest(
            [data], source_system=calling_ae, dicomweb_base=self.dicomweb_base
        )
        return outcomes[0]


def no_delay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: send each PDU as soon as it is written (TCP_NODELAY).

    pynetdicom leaves Nagle's algorithm on, on both ends. A PDU written while the previous one is
    not yet acknowledged waits for that ACK, and Linux delays ACKs by up to 40 ms: an association
    sending its instances one by one got about 20 acknowledged per second, whatever the ingest cost
    (pynetdicom to pynetdicom with a handler that does nothing: 20/s; 137/s with this option on the
    SCP's side).
    """
    connection = _socket(event)
    if connection is not None:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def quick_ack(event: evt.Event) -> None:
    """EVT_DATA_RECV: acknowledge what arrived at once (Linux TCP_QUICKACK, which the kernel turns
    off again by itself, hence once per received PDU). An SCU that leaves Nagle on sends a C-STORE's
    data PDUs only as the earlier ones are acknowledged; against our delayed ACKs that cost it up to
    40 ms per instance (bench_dicom's pynetdicom SCU: 16 → 54 instances/s with both options)."""
    connection = _socket(event)
    if connection is not None and QUICKACK is not None:
        connection.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)


def _socket(event: evt.Event) -> socket.socket | None:
    transport = event.assoc.dul.socket
    return transport.socket if transport is not None else None


QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


def _status(code: int, comment: str | None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment[:64]  # LO: at most 64 characters
    return status


@asynccontextmanager
async def dicom_listener(
    runtime: Runtime,
    host: str = "127.0.0.1",
    port: int = 11112,
    *,
    ingester: DicomIngester | None = None,
) -> AsyncIterator[DicomListener]:
    """Run the SCP for the duration of the block (e.g. inside the app's lifespan)."""
    listener = DicomListener(runtime, host=host, port=port, ingester=ingester)
    await listener.start()
    try:
        yield listener
    finally:
        await listener.stop()
