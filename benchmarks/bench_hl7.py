"""HL7 v2 receive path: tokenizer vs hl7apy, ingest rate through the receiver, ACK latency over MLLP.

Measured in one run on the corpus (../shared/corpus/hl7v2/messages, each message re-keyed with a
fresh MSH-10 so none is an idempotent duplicate):

1. tokenize: our ER7 tokenizer (every field split into repetitions/components/subcomponents and
   unescaped) vs hl7apy's `parse_message`, per message;
2. floor: a raw SQLite insert + commit per message (stdlib sqlite3, WAL) — what one durable write
   per message costs on this disk, with no FHIR work at all;
3. ingest: messages/min committed through `Receiver.receive` (parse → map → Gateway.submit →
   idempotency row) on SQLite (or `--database-url`), with C concurrent callers; with the default
   settings, messages received together are mapped in a child process (`hl7.mapping_process`),
   a lone caller's in-process;
4. MLLP: N concurrent connections (python-hl7's asyncio MLLP client when installed, else the same
   framing over asyncio streams) pushing the corpus in a loop from a separate process (a load
   generator sharing the server's GIL would slow the server it measures); committed messages/min
   and ACK latency p50/p99.

The last line is the tokenizer ratio (target ≥ 10×). Not a test: it prints, it never asserts.
Usage: python benchmarks/bench_hl7.py [--messages 400] [--connections 8] [--database-url URL]

With `--database-url postgresql+asyncpg://...` steps 3 and 4 run on PostgreSQL instead, each in a
schema of its own that is dropped afterwards; the floor stays SQLite's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fhir_gateway.api.runtime import Runtime
from fhir_gateway.api.serve import settle_heap
from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.mllp import mllp_listener
from fhir_gateway.ingest.hl7v2.receiver import Receiver
from fhir_gateway.logs import configure_logging
from fhir_gateway.settings import load_settings

sys.path.insert(0, str(Path(__file__).parent))
from harness import fresh_database  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "hl7v2" / "messages"


def corpus() -> list[str]:
    texts = [p.read_bytes().decode("utf-8-sig") for p in sorted(CORPUS.glob("*.hl7"))]
    return [t.replace("\r\n", "\r").replace("\n", "\r").strip() for t in texts]


def rekey(text: str, control_id: str) -> str:
    first, sep, rest = text.partition("\r")
    fields = first.split(first[3])
    fields[9] = control_id
    return first[3].join(fields) + sep + rest


def full_tokenize(text: str) -> int:
    message = parse(text)
    n = 0
    for seg in message.segments:
        for i in range(1, len(seg.fields)):
            n += len(seg.field(i))
    return n


def bench_tokenizer(texts: list[str]) -> tuple[float, float, int]:
    from hl7apy.parser import parse_message

    usable = []
    for t in texts:
        try:
            parse_message(t)
            usable.append(t)
        except Exception:  # noqa: BLE001 - hl7apy refuses some valid messages; compare on the rest
            pass
    rounds = 3
    start = time.perf_counter()
    for _ in range(rounds):
        for t in usable:
            parse_message(t)
    theirs = (time.perf_counter() - start) / (rounds * len(usable))
    rounds = 50
    start = time.perf_counter()
    for _ in range(rounds):
        for t in usable:
            full_tokenize(t)
    ours = (time.perf_counter() - start) / (rounds * len(usable))
    return ours, theirs, len(usable)


def bench_floor(n: int, directory: Path) -> float:
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB)")
    payload = b"x" * 2000
    start = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN")
        conn.execute("INSERT INTO m (body) VALUES (?)", (payload,))
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return n / elapsed * 60


async def bench_ingest(texts: list[str], n: int, concurrency: int, url: str) -> tuple[float, int]:
    settings = load_settings(None, environ={}, overrides={"database_url": url})
    runtime = Runtime(settings)
    await runtime.start()
    settle_heap()  # as `fhir-gateway serve` does before it accepts work
    receiver = Receiver(runtime)
    queue = [rekey(texts[i % len(texts)], f"ING{i}") for i in range(n)]
    accepted = 0

    async def worker(items: list[str]) -> None:
        nonlocal accepted
        for item in items:
            reply = await receiver.receive(item)
            accepted += reply.outcome.value == "accepted"

    start = time.perf_counter()
    await asyncio.gather(*(worker(queue[i::concurrency]) for i in range(concurrency)))
    elapsed = time.perf_counter() - start
    await runtime.stop()
    return accepted / elapsed * 60, accepted


async def _client_session(port: int, messages: list[str]) -> list[float]:
    """One MLLP connection sending its messages one after another, each after the previous ACK."""
    latencies = []
    try:
        from hl7.mllp import open_hl7_connection
    except ImportError:  # python-hl7 not installed: the same framing over plain asyncio streams
        open_hl7_connection = None
    if open_hl7_connection is not None:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        for m in messages:
            t = time.perf_counter()
            writer.writeblock(m.encode())  # python-hl7 adds the MLLP start and end blocks
            await writer.drain()
            await reader.readblock()  # the ACK frame, not parsed: parsing would be client load
            latencies.append(time.perf_counter() - t)
    else:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for m in messages:
            t = time.perf_counter()
            writer.write(b"\x0b" + m.encode() + b"\x1c\r")
            await writer.drain()
            await reader.readuntil(b"\x1c\r")
            latencies.append(time.perf_counter() - t)
    writer.close()
    await writer.wait_closed()
    return latencies


async def _sessions(port: int, sessions: list[list[str]]) -> list[list[float]]:
    return await asyncio.gather(*(_client_session(port, s) for s in sessions))


def _sender_process(port: int, sessions: list[list[str]], results: Any) -> None:
    """The load generator, in a process of its own so it never competes with the server for the
    GIL, and on one asyncio loop: eight client threads cost the sender ~2 ms of CPU per message in
    GIL hand-offs, and this machine's two cores slow each other (a busy loop on one cuts the
    server's ingest rate by a quarter), so a dear client would measure itself."""
    start = time.perf_counter()  # after the process started: its start-up is not the server's time
    per_session = asyncio.run(_sessions(port, sessions))
    elapsed = time.perf_counter() - start
    results.put((elapsed, [x for r in per_session for x in r]))


async def bench_mllp(texts: list[str], n: int, connections: int, url: str) -> tuple[float, float, float]:
    settings = load_settings(None, environ={}, overrides={"database_url": url})
    runtime = Runtime(settings)
    await runtime.start()
    settle_heap()
    per = max(1, n // connections)
    sessions = [
        [rekey(texts[(c * per + i) % len(texts)], f"MLLP{c}-{i}") for i in range(per)]
        for c in range(connections)
    ]
    spawn = multiprocessing.get_context("spawn")
    results = spawn.Queue()
    async with mllp_listener(runtime, "127.0.0.1", 0) as server:
        sender = spawn.Process(target=_sender_process, args=(server.port, sessions, results))
        sender.start()
        elapsed, latencies = await asyncio.to_thread(results.get)
        await asyncio.to_thread(sender.join)
    latencies.sort()
    await runtime.stop()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    return len(latencies) / elapsed * 60, p50, p99


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--database-url", help="PostgreSQL URL for the ingest and MLLP steps")
    args = parser.parse_args()
    db = args.database_url
    configure_logging("INFO")  # as the server does: debug lines would cost the server time
    texts = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ours, theirs, used = bench_tokenizer(texts)
        print(f"tokenize: ours {ours * 1e6:.0f} µs/msg, hl7apy {theirs * 1e3:.2f} ms/msg ({used} messages)")
        print(f"tokenizer-only rate: {60 / ours:,.0f} msg/min")
        print(f"raw SQLite insert+commit floor: {bench_floor(args.messages, directory):,.0f} msg/min")
        print(f"ingest and MLLP on {'PostgreSQL' if db else 'SQLite'}:")
        with fresh_database(db, "ingest1") as url:
            rate, accepted = asyncio.run(bench_ingest(texts, args.messages, 1, url))
        print(f"ingest via receiver, 1 caller: {rate:,.0f} msg/min ({accepted} accepted)")
        with fresh_database(db, "ingest") as url:
            rate, accepted = asyncio.run(bench_ingest(texts, args.messages, args.connections, url))
        print(f"ingest via receiver, {args.connections} callers: {rate:,.0f} msg/min ({accepted} accepted)")
        with fresh_database(db, "mllp") as url:
            rate, p50, p99 = asyncio.run(bench_mllp(texts, args.messages, args.connections, url))
        print(
            f"MLLP {args.connections} connections: {rate:,.0f} msg/min, ACK p50 {p50:.1f} ms p99 {p99:.1f} ms"
        )
    print(f"tokenizer speedup vs hl7apy: {theirs / ours:.1f}x (target >= 10x)")


if __name__ == "__main__":
    main()
