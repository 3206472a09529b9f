"""MLLP listener (HL7 v2 Minimal Lower Layer Protocol, release 2): asyncio, many connections.

A frame is `0x0B message 0x1C 0x0D`. Each connection is served by one task that answers its frames
in the order they came (the next frame is read only after the previous one is acknowledged), while
connections run concurrently. Every frame gets an answer: bytes before a start block are dropped,
a frame without a start block is still taken as a message, and a frame larger than
`hl7.max_frame_bytes` is answered AR and skipped to its end block. A connection silent for
`hl7.idle_timeout_seconds` is closed. TLS is on when `hl7.tls_certfile` and `hl7.tls_keyfile` are set.

The protocol logic (`FrameBuffer`) does no I/O; `MllpServer` is the thin asyncio adapter.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import structlog

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.ingest.hl7v2.ack import Outcome, acknowledgements
from fhir_gateway.ingest.hl7v2.mapping.context import INTERNAL_ERROR, MapIssue
from fhir_gateway.ingest.hl7v2.receiver import Receiver
from fhir_gateway.settings import Hl7Settings

START = b"\x0b"
END = b"\x1c\x0d"
log = structlog.get_logger("fhir_gateway.mllp")


def frame(message: str) -> bytes:
    return START + message.encode("utf-8") + END


class FrameBuffer:
    """Splits a byte stream into MLLP frames; reports frames that grew past the limit."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buffer = bytearray()
        self.skipping = False  # inside an oversize frame: drop bytes up to its end block

    def feed(self, data: bytes) -> list[bytes | None]:
        """Frames completed by `data` (None stands for an oversize frame, answered AR)."""
        self.buffer += data
        frames: list[bytes | None] = []
        while True:
            end = self.buffer.find(END)
            if end < 0:
                break
            payload = bytes(self.buffer[:end])
            del self.buffer[: end + len(END)]
            if self.skipping:
                self.skipping = False
                continue
            frames.append(self._payload(payload))
        if len(self.buffer) > self.max_bytes:
            if not self.skipping:
                frames.append(None)
            self.skipping = True
            self.buffer.clear()
        return frames

    def _payload(self, payload: bytes) -> bytes | None:
        start = payload.find(START)
        body = payload[start + 1 :] if start >= 0 else payload
        return body if len(body) <= self.max_bytes else None


def oversize_ack() -> str:
    issue = MapIssue("E", INTERNAL_ERROR, "The frame exceeds the maximum message size")
    return acknowledgements(None, Outcome.REJECTED, [issue])[0]


def tls_context(settings: Hl7Settings) -> ssl.SSLContext | None:
    if not (settings.tls_certfile and settings.tls_keyfile):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    return context


class MllpServer:
    def __init__(self, runtime: Runtime, receiver: Receiver | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.hl7
        self.receiver = receiver or Receiver(runtime)
        self.server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[None] | None] = {}

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.sockets, "the listener is not started"
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(
            self._serve, host, port, ssl=tls_context(self.settings), limit=2**20
        )
        log.info("mllp_listening", host=host, port=self.port, tls=tls_context(self.settings) is not None)

    async def stop(self) -> None:
        if self.server is None:
            return
        self.server.close()
        # Closing the transports ends each connection's read loop (EOF) after its current frame is
        # answered; cancelling the tasks instead would upset asyncio's stream callbacks.
        for writer in list(self._connections):
            writer.transport.abort() if writer.transport.is_closing() else writer.close()
        tasks = [t for t in self._connections.values() if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        with suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 5)
        self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections[writer] = asyncio.current_task()
        frames = FrameBuffer(self.settings.max_frame_bytes)
        try:
            while True:
                try:
                    # asyncio.timeout, not wait_for: wait_for wraps every read in a task of its own
                    async with asyncio.timeout(self.settings.idle_timeout_seconds):
                        data = await reader.read(65536)
                except TimeoutError:
                    log.info("mllp_idle_timeout")
                    break
                if not data:
                    break
                for payload in frames.feed(data):
                    acks = (
                        [oversize_ack()] if payload is None else (await self.receiver.receive(payload)).acks
                    )
                    for ack in acks:
                        writer.write(frame(ack))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the sender went away: every frame received so far was answered
        finally:
            self._connections.pop(writer, None)
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()


@asynccontextmanager
async def mllp_listener(
    runtime: Runtime, host: str = "127.0.0.1", port: int = 2575, *, receiver: Receiver | None = None
) -> AsyncIterator[MllpServer]:
    """Run an MLLP listener for the block (port 0 picks a free port: see `server.port`)."""
    server = MllpServer(runtime, receiver)
    runtime.hl7_mapping.start()
    await server.start(host, port)
    try:
        yield server
    finally:
        await server.stop()
