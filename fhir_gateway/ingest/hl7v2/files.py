"""`.hl7` files for `fhir-gateway ingest`: each message of a file through the HL7 v2 receiver.

A file may hold one message or several (a batch file, FHS/BHS envelopes allowed): messages are
split at each MSH. They go through `Receiver.receive` — the same mapping, idempotency and error
queue as MLLP — so ingesting a file twice applies it once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.ingest.hl7v2.ack import Outcome
from fhir_gateway.ingest.hl7v2.er7 import BOM, decode
from fhir_gateway.ingest.hl7v2.receiver import Receiver, Reply

SUFFIXES = frozenset({".hl7", ".er7"})
_MESSAGE_START = re.compile(r"(?:^|[\r\n]+)(?=MSH)")
_ENVELOPE = re.compile(r"^(FHS|BHS|BTS|FTS)\b")


def messages_in(data: bytes) -> Iterator[str]:
    """The messages of a file's content, envelopes (FHS/BHS/BTS/FTS) removed."""
    text = decode(data).lstrip(BOM)
    for chunk in _MESSAGE_START.split(text):
        lines = [ln for ln in re.split(r"\r\n|\r|\n", chunk) if ln.strip() and not _ENVELOPE.match(ln)]
        if lines:
            yield "\r".join(lines)


async def ingest_file(receiver: Receiver, path: Path) -> list[Reply]:
    """Receive every message of one file; the replies in order."""
    return [await receiver.receive(message.encode("utf-8")) for message in messages_in(path.read_bytes())]


def failed(replies: list[Reply]) -> int:
    return sum(1 for r in replies if r.outcome is not Outcome.ACCEPTED)


__all__ = ["SUFFIXES", "Receiver", "Runtime", "failed", "ingest_file", "messages_in"]
