"""HL7 v2 receiver end to end: MLLP over a real socket, HTTP, idempotency, error queue, store down.

Real components throughout: the app with its SQLite store, the receiver, the asyncio MLLP listener
and a socket client; only the "store down" case points at a database port nobody listens on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fhir_gateway.api.app import create_app
from fhir_gateway.api.hl7v2 import build_hl7_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.context import RequestContext
from fhir_gateway.errors import Unprocessable
from fhir_gateway.fhir.ids import stable_id
from fhir_gateway.ingest.hl7v2 import store as hl7_store
from fhir_gateway.ingest.hl7v2.ack import Outcome
from fhir_gateway.ingest.hl7v2.cli import hl7_app
from fhir_gateway.ingest.hl7v2.files import failed, ingest_file, messages_in
from fhir_gateway.ingest.hl7v2.mllp import FrameBuffer, mllp_listener
from fhir_gateway.ingest.hl7v2.receiver import Receiver
from fhir_gateway.pipeline.stage import Change
from fhir_gateway.settings import Settings
from tests.conftest import make_settings

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "hl7v2" / "messages"
ADT = (
    "MSH|^~\\&|REG|HOSP|GW|HOSP|20240301101500+0100||ADT^A01^ADT_A01|{cid}|P|2.5.1{enh}\r"
    "PID|1||{mrn}^^^HOSP^MR||Doe^Jane||19800215|F\r"
    "PV1|1|I|W1^1^A||||||||||||||||V{mrn}^^^HOSP^VN\r"
)
BAD = "MSH|^~\\&|REG|HOSP|GW|HOSP|20240301||ADT^A01|{cid}|P|2.5.1\rPID|1||||Secret^Name\r"


def adt(cid: str, mrn: str = "M1", enh: str = "") -> str:
    return ADT.format(cid=cid, mrn=mrn, enh=enh)


def msa(ack: str) -> list[str]:
    """MSA's fields, split by the ACK's own field separator (MSH-1 mirrors the inbound message)."""
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split(ack[3])


def with_control_id(text: str, cid: str) -> str:
    first, sep, rest = text.lstrip("\ufeff").partition("\n" if "\r" not in text[:300] else "\r")
    fields = first.split(first[3])
    fields[9] = cid
    return first[3].join(fields) + sep + rest


@pytest.fixture
async def app(sqlite_url: str) -> AsyncIterator[FastAPI]:
    application = create_app(make_settings(sqlite_url, hl7={"idle_timeout_seconds": 5}))
    application.include_router(build_hl7_router(application.state.runtime))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


class MllpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, *messages: str | bytes) -> None:
        for m in messages:
            data = m.encode() if isinstance(m, str) else m
            self.writer.write(b"\x0b" + data + b"\x1c\r")
        await self.writer.drain()

    async def ack(self) -> str:
        frame = await asyncio.wait_for(self.reader.readuntil(b"\x1c\r"), 10)
        assert frame.startswith(b"\x0b")
        return frame[1:-2].decode()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def connect(port: int) -> MllpClient:
    return MllpClient(*await asyncio.open_connection("127.0.0.1", port))


async def test_corpus_over_mllp_with_concurrent_connections(app: FastAPI) -> None:
    runtime: Runtime = app.state.runtime
    paths = sorted(CORPUS.glob("*.hl7"))
    assert paths
    async with mllp_listener(runtime, "127.0.0.1", 0) as server:

        async def sender(chunk: list[Path]) -> list[tuple[str, str]]:
            client = await connect(server.port)
            answers = []
            for path in chunk:
                text = with_control_id(path.read_bytes().decode("utf-8-sig"), path.stem)
                await client.send(text)
                answers.append((path.stem, await client.ack()))
            await client.close()
            return answers

        results = await asyncio.gather(*(sender(paths[i::4]) for i in range(4)))
    for stem, ack in (a for chunk in results for a in chunk):
        code = msa(ack)
        assert code[1] in ("AA", "CA") and code[2] == stem, (stem, ack)
    patient = await runtime.gateway.read(
        "Patient", stable_id("Patient", "NIST MPI", "PATID1234"), RequestContext.system("test")
    )
    assert patient.resource()["name"][0]["family"] == "Jones"


async def test_connection_keeps_order_and_survives_garbage_and_oversize(sqlite_url: str) -> None:
    runtime = Runtime(make_settings(sqlite_url, hl7={"max_frame_bytes": 2000}))
    await runtime.start()
    try:
        async with mllp_listener(runtime, "127.0.0.1", 0) as server:
            client = await connect(server.port)
            await client.send(adt("O1", "A"), adt("O2", "B"), adt("O3", "C"))
            assert [msa(await client.ack())[2] for _ in range(3)] == ["O1", "O2", "O3"]
            await client.send(b"this is not hl7 at all")
            garbage = await client.ack()
            assert msa(garbage)[1] == "AR" and "|100^" in garbage
            await client.send(adt("O4", "D") + "NTE|1||" + "x" * 3000 + "\r")
            oversize = await client.ack()
            assert msa(oversize)[1] == "AR"
            await client.send(adt("O5", "E"))
            assert msa(await client.ack())[1:3] == ["AA", "O5"]
            await client.close()
    finally:
        await runtime.stop()


async def test_idle_connections_are_closed(sqlite_url: str) -> None:
    runtime = Runtime(make_settings(sqlite_url, hl7={"idle_timeout_seconds": 0.2}))
    async with mllp_listener(runtime, "127.0.0.1", 0) as server:
        client = await connect(server.port)
        assert await asyncio.wait_for(client.reader.read(), 5) == b""
    await runtime.stop()


def test_frame_buffer_splits_and_tolerates_missing_start_blocks() -> None:
    buffer = FrameBuffer(100)
    assert buffer.feed(b"junk\x0bMSH|1\x1c") == []
    assert buffer.feed(b"\rMSH|2\x1c\r\x0bMSH|3") == [b"MSH|1", b"MSH|2"]
    assert buffer.feed(b"\x1c\r") == [b"MSH|3"]
    assert buffer.feed(b"\x0b" + b"x" * 150) == [None]
    assert buffer.feed(b"y" * 10 + b"\x1c\r\x0bok\x1c\r") == [b"ok"]


async def test_http_post_duplicate_and_media_types(app: FastAPI, http: httpx.AsyncClient) -> None:
    body = adt("H1", "P7")
    first = await http.post("/hl7v2", content=body, headers={"content-type": "x-application/hl7-v2+er7"})
    assert first.status_code == 200 and first.headers["content-type"].startswith("x-application/hl7-v2+er7")
    assert msa(first.text)[1:3] == ["AA", "H1"]
    again = await http.post("/hl7v2", content=body, headers={"content-type": "text/plain"})
    assert again.text == first.text
    runtime: Runtime = app.state.runtime
    patient = await runtime.gateway.read(
        "Patient", stable_id("Patient", "HOSP", "P7"), RequestContext.system("t")
    )
    assert patient.version_id == 1  # the duplicate was not applied again
    changed = adt("H2", "P7").replace("19800215", "19800216")  # the sender corrects the birth date
    update = await http.post("/hl7v2", content=changed, headers={"content-type": "text/plain"})
    assert msa(update.text)[1] == "AA"
    patient = await runtime.gateway.read(
        "Patient", stable_id("Patient", "HOSP", "P7"), RequestContext.system("t")
    )
    assert patient.version_id == 2  # a new message about the same patient updates, never duplicates
    assert (await http.post("/hl7v2", json={"a": 1})).status_code == 415
    assert (
        await http.post("/hl7v2", content=b"\x00\x01", headers={"content-type": "text/plain"})
    ).status_code == 415


async def test_enhanced_mode_over_http_returns_the_application_ack(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/hl7v2", content=adt("E1", enh="|||AL|AL"), headers={"content-type": "text/plain"}
    )
    assert msa(response.text)[1] == "AA"


async def test_error_queue_lists_without_phi_and_replays(app: FastAPI, http: httpx.AsyncClient) -> None:
    response = await http.post("/hl7v2", content=BAD.format(cid="B1"), headers={"content-type": "text/plain"})
    assert msa(response.text)[1] == "AE" and "PID^1^3" in response.text
    await http.post("/hl7v2", content=BAD.format(cid="B1"), headers={"content-type": "text/plain"})
    listing = (await http.get("/hl7v2/errors")).json()["errors"]
    assert len(listing) == 1 and listing[0]["attempts"] == 2 and listing[0]["controlId"] == "B1"
    assert "Secret" not in str(listing)
    replay = (await http.post(f"/hl7v2/errors/{listing[0]['id']}/replay")).json()
    assert replay["outcome"] == "error" and msa(replay["ack"])[1] == "AE"
    assert (await http.post("/hl7v2/errors/999/replay")).status_code == 404
    unsupported = await http.post(
        "/hl7v2", content="MSH|^~\\&|A|B|C|D|2024||QBP^Q11|Q1|P|2.5\r", headers={"content-type": "text/plain"}
    )
    assert msa(unsupported.text)[1] == "AR" and "|200^" in unsupported.text
    assert len((await http.get("/hl7v2/errors")).json()["errors"]) == 2


class RejectPatients:
    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        if change.res_type == "Patient":
            raise Unprocessable("Patients are refused by this test stage", expression="Patient")


def reject_patients(_settings: Settings) -> RejectPatients:
    return RejectPatients()


async def test_failed_commit_is_queued_then_replayed_from_the_cli(sqlite_url: str) -> None:
    strict = Runtime(
        make_settings(sqlite_url, pipeline=("tests.integration.test_hl7_ingest:reject_patients",))
    )
    await strict.start()
    reply = await Receiver(strict).receive(adt("R1", "Q1"))
    await strict.stop()
    assert reply.outcome is Outcome.ERROR and reply.error_id is not None
    assert msa(reply.ack)[1] == "AE" and "Patients are refused" in reply.ack

    def cli(*args: str) -> Any:  # the CLI runs its own event loop: keep it off this one
        return asyncio.to_thread(CliRunner().invoke, hl7_app, [*args, "--database-url", sqlite_url])

    listed = await cli("errors")
    assert listed.exit_code == 0 and "R1" in listed.stdout and "Jane" not in listed.stdout
    replayed = await cli("replay", str(reply.error_id))
    assert replayed.exit_code == 0, replayed.stdout
    assert "accepted" in replayed.stdout
    again = await cli("replay", "--all")
    assert again.exit_code == 0 and "replayed 0 of 0" in again.stdout
    assert (await cli("replay")).exit_code == 2
    assert (await cli("replay", "4242")).exit_code == 1
    assert "R1" in (await cli("errors", "--all")).stdout

    runtime = Runtime(make_settings(sqlite_url))
    duplicate = await Receiver(runtime).receive(adt("R1", "Q1"))
    await runtime.stop()
    assert duplicate.duplicate and msa(duplicate.ack)[1] == "AA"


async def test_store_down_is_ar_or_commit_reject_so_the_sender_retries() -> None:
    runtime = Runtime(make_settings("postgresql+asyncpg://nobody@127.0.0.1:1/none"))
    await runtime.start()
    receiver = Receiver(runtime)
    original = await receiver.receive(adt("D1"))
    enhanced = await receiver.receive(adt("D2", enh="|||AL|AL"))
    garbage = await receiver.receive(b"\x00garbage")
    await runtime.stop()
    assert original.outcome is Outcome.UNAVAILABLE and msa(original.ack)[1:3] == ["AR", "D1"]
    assert [msa(a)[1] for a in enhanced.acks] == ["CR"]
    assert msa(garbage.ack)[1] == "AR" and garbage.error_id is None


async def test_hl7_files_for_the_ingest_command(sqlite_url: str, tmp_path: Path) -> None:
    batch = "FHS|^~\\&\rBHS|^~\\&\r" + adt("F1", "F") + adt("F2", "G") + "BTS|2\rFTS|1\r"
    assert len(list(messages_in(("\ufeff" + batch).encode()))) == 2
    path = tmp_path / "batch.hl7"
    path.write_text(batch.replace("\r", "\n"))
    runtime = Runtime(make_settings(sqlite_url))
    replies = await ingest_file(Receiver(runtime), path)
    await runtime.stop()
    assert [msa(r.ack)[1] for r in replies] == ["AA", "AA"] and failed(replies) == 0


# ---- fuzz: random and mutated frames always get an ACK and never break the receiver ----------------
@pytest.fixture(scope="module")
def fuzz_receiver(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[asyncio.AbstractEventLoop, Receiver]]:
    loop = asyncio.new_event_loop()
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz')}/gw.db"
    runtime = Runtime(make_settings(url))
    loop.run_until_complete(runtime.start())
    yield loop, Receiver(runtime)
    loop.run_until_complete(runtime.stop())
    loop.close()


SEED = adt("Z1") + "OBX|1|NM|1-1^X^LN||5|mg||||||F\rAL1|1|DA|X^Y\r"


@st.composite
def mutated(draw: Any) -> bytes:
    data = bytearray(SEED.encode())
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["set", "delete", "insert"]))
        byte = draw(st.sampled_from(list(b"|^~\\&\r\n\x0b\x1c\x00AZ09 \xff")))
        if action == "set":
            data[pos] = byte
        elif action == "delete":
            del data[pos]
        else:
            data.insert(pos, byte)
    return bytes(data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=400), mutated()))
def test_fuzzed_frames_always_get_an_ack(
    fuzz_receiver: tuple[asyncio.AbstractEventLoop, Receiver], frame: bytes
) -> None:
    loop, receiver = fuzz_receiver
    reply = loop.run_until_complete(receiver.receive(frame))
    assert reply.acks
    for ack in reply.acks:
        assert ack.startswith("MSH") and msa(ack)[1] in ("AA", "AE", "AR", "CA", "CE", "CR"), repr(ack)


class CrashingStage:
    async def __call__(self, change: Change, ctx: RequestContext) -> None:
        raise RuntimeError("a bug in a stage, mentioning Jane Doe")


def crashing_stage(_settings: Settings) -> CrashingStage:
    return CrashingStage()


async def test_a_crash_anywhere_still_answers_ar_without_phi(sqlite_url: str) -> None:
    runtime = Runtime(
        make_settings(sqlite_url, pipeline=("tests.integration.test_hl7_ingest:crashing_stage",))
    )
    await runtime.start()
    reply = await Receiver(runtime).receive(adt("X1"))
    await runtime.stop()
    assert reply.outcome is Outcome.UNAVAILABLE and msa(reply.ack)[1:3] == ["AR", "X1"]
    assert "Jane" not in reply.ack and "|207^" in reply.ack


async def test_concurrent_copies_of_one_message_are_applied_once(app: FastAPI) -> None:
    runtime: Runtime = app.state.runtime
    receiver = Receiver(runtime)
    replies = await asyncio.gather(*(receiver.receive(adt("C1", "CC")) for _ in range(3)))
    assert all(msa(r.ack)[1] == "AA" for r in replies)
    assert sum(not r.duplicate for r in replies) == 1
    patient = await runtime.gateway.read(
        "Patient", stable_id("Patient", "HOSP", "CC"), RequestContext.system("t")
    )
    assert patient.version_id == 1


async def test_replaying_an_entry_whose_message_was_resent_meanwhile_closes_it(sqlite_url: str) -> None:
    strict = Runtime(
        make_settings(sqlite_url, pipeline=("tests.integration.test_hl7_ingest:reject_patients",))
    )
    failed_reply = await Receiver(strict).receive(adt("W1", "W"))
    await strict.stop()
    runtime = Runtime(make_settings(sqlite_url))
    receiver = Receiver(runtime)
    assert msa((await receiver.receive(adt("W1", "W"))).ack)[1] == "AA"  # the sender re-sent it
    assert failed_reply.error_id is not None
    replay = await receiver.replay(failed_reply.error_id)
    from fhir_gateway.ingest.hl7v2 import store as hl7_store

    open_entries = await hl7_store.list_errors(runtime.store)
    await runtime.stop()
    assert replay is not None and replay.duplicate and not open_entries


async def test_broken_header_still_echoes_the_control_id(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/hl7v2", content="MSH|^^^^|A|B|C|D|2024||ADT^A01|K9|P|2.5\r", headers={"content-type": "text/plain"}
    )
    assert msa(response.text)[1:3] == ["AR", "K9"]


async def test_queued_messages_are_encrypted_at_rest(
    app: FastAPI, http: httpx.AsyncClient, sqlite_url: str
) -> None:
    """The error queue holds whole v2 messages: a stolen database file must not show the patient."""
    await http.post("/hl7v2", content=BAD.format(cid="ENC1"), headers={"content-type": "text/plain"})
    database = Path(sqlite_url.removeprefix("sqlite+aiosqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    assert b"ENC1" in stored and b"Secret" not in stored  # the key stays searchable, the content does not
    runtime: Runtime = app.state.runtime
    replayed = await Receiver(runtime).replay_all()
    assert replayed and all(reply.ack for _, reply in replayed)  # and it still replays from the queue


async def test_a_duplicate_gets_its_stored_acks_whatever_characters_the_header_echoes(app: FastAPI) -> None:
    """The ACK echoes MSH-3..6 and MSH-10, so a sending application holding 0x1C (the character that
    once joined stored ACKs) must still get back exactly the ACKs sent the first time."""
    receiver = Receiver(app.state.runtime)
    message = adt("FS1", "P8", enh="|||AL|AL").replace("|REG|HOSP|", "|RE\x1cG|HOSP|", 1)
    first = await receiver.receive(message)
    assert first.outcome is Outcome.ACCEPTED and len(first.acks) == 2
    again = await receiver.receive(message)
    assert again.duplicate and again.acks == first.acks


async def test_acks_stored_by_an_earlier_release_are_still_answered(app: FastAPI) -> None:
    runtime: Runtime = app.state.runtime
    key = ("LEGACY", "HOSP", "OLD1")
    async with runtime.store.transaction() as tx:
        await tx.conn.execute(
            hl7_store.hl7_messages.insert(),
            {
                "sending_application": key[0],
                "sending_facility": key[1],
                "control_id": key[2],
                "message_type": "ADT^A01",
                "received_at": 0.0,
                "status": "accepted",
                "ack": "MSH|^~\\&|CA\x1cMSH|^~\\&|AA",
                "resources": "[]",
            },
        )
    assert await hl7_store.stored_acks(runtime.store, key) == ["MSH|^~\\&|CA", "MSH|^~\\&|AA"]


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (what a site's MLLP-over-TLS listener would present)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    loopback = ipaddress.ip_address("127.0.0.1")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mllp.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(loopback)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "mllp.crt", folder / "mllp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


async def test_mllp_over_tls_acknowledges_and_refuses_plain_text(sqlite_url: str, tmp_path: Path) -> None:
    import ssl

    cert_file, key_file = self_signed(tmp_path)
    runtime = Runtime(
        make_settings(sqlite_url, hl7={"tls_certfile": str(cert_file), "tls_keyfile": str(key_file)})
    )
    await runtime.start()
    try:
        async with mllp_listener(runtime, "127.0.0.1", 0) as server:
            trusted = ssl.create_default_context(cafile=str(cert_file))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=trusted)
            client = MllpClient(reader, writer)
            await client.send(adt("T1", "TLS1"))
            assert msa(await client.ack())[1:3] == ["AA", "T1"]
            await client.close()
            # A sender that does not speak TLS gets no HL7 answer in clear text, and the listener lives on.
            plain = await connect(server.port)
            await plain.send(adt("T2", "TLS2"))
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError, TimeoutError)):
                await plain.ack()
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=trusted)
            again = MllpClient(reader, writer)
            await again.send(adt("T3", "TLS3"))
            assert msa(await again.ack())[1:3] == ["AA", "T3"]
            await again.close()
    finally:
        await runtime.stop()
