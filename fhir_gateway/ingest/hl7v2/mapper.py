"""HL7 v2 mapping in a process of its own, so that ingest uses a second core.

Mapping a message (segments to a transaction Bundle, about 1 ms for a corpus message) is pure CPU
and needs only the message text and the `hl7.timezone` setting. Everything else on the receive
path (the idempotency check, the write pipeline, the group commit, the ACK) needs the database and
stays on the event loop. In one process the two take turns on one core. With `hl7.mapping_process`
on (the default on a machine with more than one core) a child process maps while the event loop
commits earlier messages, and the loop pays about 70 µs per message to hand the text over and read
the Bundle back (orjson over the child's stdin and stdout).

Why not `concurrent.futures.ProcessPoolExecutor`: it cost the event loop's process 365 µs per
message (pickling, its queue-management thread and the wake-ups through it), a third of what it
saved (measured on the corpus, 2026-12-08).

The child is `python -m fhir_gateway.ingest.hl7v2.mapper [TIMEZONE]`. Frames both ways are a
4-byte big-endian length and a payload: the message text in UTF-8, answered by the orjson of
{"bundle", "issues"}, or by an empty payload when the child could not encode its result (the
parent then maps the message itself). The child's first frame, empty, says it has loaded the
mappers; no message is sent before it. The child maps one message at a time, in the order sent,
so replies are matched to requests first in, first out.

A message that arrives while no other is being received is mapped in-process all the same: the
hand-over pays off only when the event loop has other messages to commit meanwhile, and a lone
message would wait for the child (one sender, one connection: 8,700 msg/min in-process against
6,100 through the child, corpus on SQLite).

A message is never lost or left unanswered because of the child: it is started on first use, and
until it is up, and whenever it has died, messages are mapped in the event loop's process. A child
that died is started again on the next message, at most once per `RESTART_SECONDS`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO
from zoneinfo import ZoneInfo

import orjson
import structlog

from fhir_gateway.ingest.hl7v2.er7 import Message, parse
from fhir_gateway.ingest.hl7v2.mapping.context import MapIssue
from fhir_gateway.ingest.hl7v2.messages import MappedMessage, map_message
from fhir_gateway.logs import configure_logging
from fhir_gateway.settings import Hl7Settings

log = structlog.get_logger("fhir_gateway.hl7v2")

HEADER_BYTES = 4
RESTART_SECONDS = 60.0  # a child that died is not started again sooner than this
STOP_SECONDS = 5.0  # how long a stopping child may take to exit before it is killed


class ChildLost(Exception):
    """The child process exited with messages in flight: they are mapped in-process instead."""


class MappingProcess:
    """Maps messages in a child process when `hl7.mapping_process` is on and there is more than
    one core."""

    def __init__(self, settings: Hl7Settings) -> None:
        self.timezone = settings.timezone
        self.zone = settings.zone()
        self.enabled = settings.mapping_process and (os.cpu_count() or 1) > 1
        self._process: asyncio.subprocess.Process | None = None
        self._starting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: deque[asyncio.Future[bytes]] = deque()
        self._ready = False  # the child has sent its first (empty) frame
        self._failed_at: float | None = None
        self._receiving = 0  # messages between parse and ACK (`receiving`)
        self.mapped_here = 0  # messages mapped in this process (child not up), for tests and metrics

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """Marks one message as being received, from its parse to its ACK."""
        self._receiving += 1
        try:
            yield
        finally:
            self._receiving -= 1

    async def map(self, message: Message, text: str) -> MappedMessage:
        """`map_message(message, zone)`, computed by the child when it is up and other messages are
        being received; `text` is what `message` was parsed from."""
        process = self._running() if self._receiving > 1 else None
        if process is not None and process.stdin is not None:
            reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
            self._pending.append(reply)
            data = text.encode("utf-8")
            process.stdin.write(len(data).to_bytes(HEADER_BYTES, "big") + data)
            try:
                encoded = await reply
            except ChildLost:
                encoded = b""
            if encoded:
                mapped = orjson.loads(encoded)
                return MappedMessage(mapped["bundle"], [MapIssue(*issue) for issue in mapped["issues"]])
        self.mapped_here += 1
        return map_message(message, self.zone)

    def start(self) -> None:
        """Start the child in the background, unless it is up, starting, off, or died less than
        `RESTART_SECONDS` ago. The MLLP listener calls this when it opens, so that its first
        messages do not wait for the child's start-up (a third of a second of a core)."""
        if not self.enabled or self._starting is not None or self._process is not None:
            return
        loop = asyncio.get_running_loop()
        if self._failed_at is not None and loop.time() - self._failed_at < RESTART_SECONDS:
            return
        self._starting = asyncio.create_task(self._start(), name="hl7v2-mapping-process")

    @property
    def running(self) -> bool:
        """The child is up and has loaded the mappers."""
        return self._ready and self._process is not None

    def _running(self) -> asyncio.subprocess.Process | None:
        """The child, when it is up; else None (and it is being started, if it may be)."""
        if self.running:
            return self._process
        self.start()
        return None

    async def _start(self) -> None:
        args = [sys.executable, "-m", __name__]
        if self.timezone:
            args.append(self.timezone)
        try:
            process = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
            )
        except OSError as exc:
            log.error("hl7v2_mapping_process_failed_to_start", error=type(exc).__name__)
            self._failed_at = asyncio.get_running_loop().time()
            return
        finally:
            self._starting = None
        self._process = process
        self._reader = asyncio.create_task(self._read_replies(process), name="hl7v2-mapping-replies")

    async def _read_replies(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            await _frame(process.stdout)  # loaded and listening
            self._ready = True
            while True:
                body = await _frame(process.stdout)
                reply = self._pending.popleft()
                if not reply.done():  # its caller may have been cancelled
                    reply.set_result(body)
        except (asyncio.IncompleteReadError, ConnectionError):
            code = await process.wait()
            if self._process is process:  # not stopped on purpose
                log.error("hl7v2_mapping_process_exited", returncode=code)
                self._failed_at = asyncio.get_running_loop().time()
        finally:
            self._ready = False
            self._process = None
            while self._pending:
                reply = self._pending.popleft()
                if not reply.done():
                    reply.set_exception(ChildLost())

    async def stop(self) -> None:
        """End the child (messages in flight are mapped in-process) and wait for it to exit; no new
        child is started afterwards."""
        self.enabled = False
        if self._starting is not None:
            await self._starting
        process, reader = self._process, self._reader
        self._process = None
        if process is None or reader is None:
            return
        assert process.stdin is not None
        process.stdin.close()  # end of input: the child exits after its current message
        try:
            await asyncio.wait_for(process.wait(), STOP_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
        await reader


async def _frame(stream: asyncio.StreamReader) -> bytes:
    header = await stream.readexactly(HEADER_BYTES)
    return await stream.readexactly(int.from_bytes(header, "big"))


def serve(requests: BinaryIO, replies: BinaryIO, timezone: str | None) -> None:
    """The child's loop: say it is ready (an empty frame), then map each framed message read from
    `requests` and write the framed result, until `requests` ends."""
    zone = ZoneInfo(timezone) if timezone else None
    _write_frame(replies, b"")
    while len(header := requests.read(HEADER_BYTES)) == HEADER_BYTES:
        text = requests.read(int.from_bytes(header, "big")).decode("utf-8")
        _write_frame(replies, _encoded(text, zone))


def _write_frame(replies: BinaryIO, payload: bytes) -> None:
    replies.write(len(payload).to_bytes(HEADER_BYTES, "big") + payload)
    replies.flush()


def _encoded(text: str, zone: ZoneInfo | None) -> bytes:
    mapped = map_message(parse(text), zone)  # never raises: a mapper bug becomes an issue (AE)
    try:
        return orjson.dumps({"bundle": mapped.bundle, "issues": [_issue(i) for i in mapped.issues]})
    except TypeError:  # orjson.JSONEncodeError: a value JSON cannot carry (an integer past 64 bits)
        return b""


def _issue(issue: MapIssue) -> tuple[str, str, str, str, int, int]:
    return (issue.severity, issue.code, issue.text, issue.segment, issue.sequence, issue.field)


def main() -> None:
    """Entry point of the child. Its stdout carries the replies, so whatever else writes there
    (a log line, a stray print) goes to stderr instead; its log lines are JSON like the server's."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    configure_logging()
    serve(sys.stdin.buffer, replies, sys.argv[1] if len(sys.argv) > 1 else None)


if __name__ == "__main__":  # pragma: no cover - the child's entry, run by MappingProcess
    main()
