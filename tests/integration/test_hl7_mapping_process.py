"""HL7 v2 mapping in a child process (ingest/hl7v2/mapper.py): the child maps exactly as the server
would, only while other messages are being received, and a child that is slow to start, dies or
cannot encode a result never costs a message: it is mapped in the server's process instead."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_gateway.ingest.hl7v2 import mapper
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mapper import HEADER_BYTES, MappingProcess, serve
from fhir_gateway.ingest.hl7v2.mapping.observation import NOT_A_DECIMAL
from fhir_gateway.ingest.hl7v2.messages import map_message
from fhir_gateway.settings import Hl7Settings

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2" / "messages"
WARNED = (  # OBX-5 not a number although OBX-2 says NM: mapped with a W issue at OBX-5
    "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240301101500+0100||ORU^R01|W1|P|2.5.1\rPID|1||M1^^^HOSP^MR\r"
    "OBR|1||F1|2345-7^Glucose^LN\rOBX|1|NM|2345-7^Glucose^LN||high|mg|||||F\r"
)
TEXTS = [
    *(
        p.read_bytes().decode("utf-8-sig").replace("\r\n", "\r").replace("\n", "\r")
        for p in sorted(CORPUS.glob("*.hl7"))
    ),
    WARNED,
]
ORU = (
    "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20240301101500+0100||ORU^R01|BIG1|P|2.5.1\rPID|1||M1^^^HOSP^MR\r"
    "OBR|1||F1|2345-7^Glucose^LN\rOBX|1|NM|2345-7^Glucose^LN||12|mg|||||F\r"
)


def frames(texts: list[str]) -> bytes:
    return b"".join(len(b := t.encode()).to_bytes(HEADER_BYTES, "big") + b for t in texts)


def read_frames(data: bytes) -> list[bytes]:
    found, at = [], 0
    while at < len(data):
        size = int.from_bytes(data[at : at + HEADER_BYTES], "big")
        found.append(data[at + HEADER_BYTES : at + HEADER_BYTES + size])
        at += HEADER_BYTES + size
    return found


def as_sent(text: str) -> tuple[Any, list[tuple[Any, ...]]]:
    """What the server itself maps from `text`, as the child's JSON carries it."""
    mapped = map_message(parse(text), Hl7Settings(timezone="America/Chicago").zone())
    issues = [(i.severity, i.code, i.text, i.segment, i.sequence, i.field) for i in mapped.issues]
    return orjson.loads(orjson.dumps(mapped.bundle)), issues


def test_the_child_maps_every_corpus_message_as_the_server_does() -> None:
    replies = io.BytesIO()
    serve(io.BytesIO(frames(TEXTS)), replies, "America/Chicago")
    ready, *answers = read_frames(replies.getvalue())
    assert ready == b"" and len(answers) == len(TEXTS)
    for text, answer in zip(TEXTS, answers, strict=True):
        decoded = orjson.loads(answer)
        assert (decoded["bundle"], [tuple(i) for i in decoded["issues"]]) == as_sent(text)


def test_a_result_json_cannot_carry_is_left_to_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """orjson refuses integers past 64 bits; the child answers with an empty frame instead of dying."""

    def too_big(message: object, zone: object) -> object:
        result = map_message(message, zone)  # type: ignore[arg-type]
        result.bundle["entry"][0]["resource"]["extension"] = [{"url": "urn:x", "valueInteger": 2**70}]
        return result

    monkeypatch.setattr(mapper, "map_message", too_big)
    replies = io.BytesIO()
    serve(io.BytesIO(frames([ORU, ORU])), replies, None)
    assert read_frames(replies.getvalue()) == [b"", b"", b""]


def test_the_child_entry_keeps_stray_output_off_the_reply_stream(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "in").write_bytes(frames([ORU]))
    with (
        (tmp_path / "in").open("rb") as inp,
        (tmp_path / "out").open("wb") as out,
        (tmp_path / "err").open("wb") as err,
    ):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(inp))
        monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out))
        monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err))
        monkeypatch.setattr(sys, "argv", ["mapper"])
        monkeypatch.setattr(mapper, "configure_logging", lambda: None)  # not this test process's logging
        mapper.main()
        print("a stray line", file=sys.stdout, flush=True)  # fd of "stdout" now writes to stderr
    ready, answer = read_frames((tmp_path / "out").read_bytes())
    assert ready == b"" and orjson.loads(answer)["bundle"]["resourceType"] == "Bundle"
    assert (tmp_path / "err").read_bytes() == b"a stray line\n"


@pytest.fixture
async def child() -> AsyncIterator[MappingProcess]:
    process = MappingProcess(Hl7Settings(timezone="America/Chicago", mapping_process=True))
    process.enabled = True  # whatever this machine's core count
    process.start()
    for _ in range(600):
        if process.running:
            break
        await asyncio.sleep(0.05)
    assert process.running
    yield process
    await process.stop()


async def test_messages_received_together_are_mapped_by_the_child(child: MappingProcess) -> None:
    async def one(text: str) -> tuple[Any, list[tuple[Any, ...]]]:
        with child.receiving():
            mapped = await child.map(parse(text), text)
        issues = [(i.severity, i.code, i.text, i.segment, i.sequence, i.field) for i in mapped.issues]
        return mapped.bundle, issues

    with child.receiving():  # another message is in progress throughout
        results = await asyncio.gather(*(one(t) for t in TEXTS))
    assert results == [as_sent(t) for t in TEXTS]
    assert child.mapped_here == 0


async def test_a_lone_message_is_mapped_here(child: MappingProcess) -> None:
    with child.receiving():
        await child.map(parse(ORU), ORU)
    assert child.mapped_here == 1


async def test_messages_in_flight_when_the_child_dies_are_mapped_here(
    child: MappingProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mapper, "RESTART_SECONDS", 0.0)
    process = child._process
    assert process is not None
    with child.receiving(), child.receiving():
        pending = [asyncio.create_task(child.map(parse(t), t)) for t in TEXTS]
        await asyncio.sleep(0)
        process.kill()
        results = await asyncio.gather(*pending)
    assert [r.bundle["entry"][0]["request"] for r in results] == [
        map_message(parse(t)).bundle["entry"][0]["request"] for t in TEXTS
    ]
    assert child.mapped_here > 0 and not child.running
    with child.receiving(), child.receiving():
        await child.map(parse(ORU), ORU)  # mapped here, and a new child is started
    for _ in range(600):
        if child.running:
            break
        await asyncio.sleep(0.05)
    assert child.running and child._process is not process


def test_the_warned_message_has_an_issue_to_carry() -> None:
    assert as_sent(WARNED)[1] == [("W", "102", NOT_A_DECIMAL, "OBX", 1, 5)]


async def test_stop_while_the_child_starts_waits_for_it_and_ends_it() -> None:
    process = MappingProcess(Hl7Settings(mapping_process=True))
    process.enabled = True
    process.start()
    await process.stop()
    assert not process.running and process._process is None


async def test_stop_ends_the_child(child: MappingProcess) -> None:
    process = child._process
    assert process is not None
    await child.stop()
    assert process.returncode == 0 and not child.running
    with child.receiving(), child.receiving():
        await child.map(parse(ORU), ORU)  # a message still arriving during shutdown: mapped here
    assert child.mapped_here == 1 and child._starting is None and child._process is None


async def test_off_or_on_one_core_nothing_is_started(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not MappingProcess(Hl7Settings(mapping_process=True)).enabled
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    off = MappingProcess(Hl7Settings(mapping_process=False))
    assert not off.enabled
    off.start()
    with off.receiving(), off.receiving():
        await off.map(parse(ORU), ORU)
    assert off.mapped_here == 1 and not off.running
    await off.stop()


async def test_a_child_that_died_is_not_restarted_at_once(child: MappingProcess) -> None:
    process = child._process
    assert process is not None
    process.kill()
    await process.wait()
    for _ in range(100):
        if not child.running:
            break
        await asyncio.sleep(0.01)
    with child.receiving(), child.receiving():
        await child.map(parse(ORU), ORU)
    assert child.mapped_here == 1 and not child.running and child._starting is None  # RESTART_SECONDS


async def test_a_child_that_cannot_start_leaves_mapping_here(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_exec(*_args: object, **_kwargs: object) -> None:
        raise PermissionError("not allowed to run a process")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_exec)
    process = MappingProcess(Hl7Settings(mapping_process=True))
    process.enabled = True
    with process.receiving(), process.receiving():
        for _ in range(3):
            await process.map(parse(ORU), ORU)
            await asyncio.sleep(0)
    assert process.mapped_here == 3 and not process.running
    await process.stop()


async def test_a_caller_that_gives_up_does_not_shift_the_replies(child: MappingProcess) -> None:
    texts = TEXTS[:6]
    with child.receiving(), child.receiving():
        given_up = asyncio.create_task(child.map(parse(texts[0]), texts[0]))
        await asyncio.sleep(0)
        given_up.cancel()
        results = await asyncio.gather(*(child.map(parse(t), t) for t in texts[1:]))
    assert [r.bundle for r in results] == [as_sent(t)[0] for t in texts[1:]]
    assert child.mapped_here == 0


async def test_a_child_that_does_not_exit_is_killed(
    child: MappingProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    process = child._process
    assert process is not None
    monkeypatch.setattr(mapper, "STOP_SECONDS", 0.2)
    process.send_signal(signal.SIGSTOP)  # it cannot read the end of its input
    await child.stop()
    assert process.returncode == -signal.SIGKILL
