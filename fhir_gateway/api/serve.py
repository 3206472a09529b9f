"""`fhir-gateway serve`: one server process, or a supervisor and `workers` processes on one port.

One Python process serves one core's worth of reads. With `workers: N` (`--workers`,
`FHIR_GATEWAY_WORKERS`) the supervisor prepares the database once — migrations and the first PHI
key version, which concurrent first starts would otherwise race to create — and then starts N
worker processes, each binding the port with SO_REUSEPORT, so the kernel spreads connections
evenly over them (a shared accept socket lets the least busy process take most of them).

What may run only once per server lives in worker 0, the primary: the MLLP and DICOM listeners
(they bind their own ports), the outbox dispatcher and the break-glass escalation loop. Every
worker has its own AuditLog; they all append to the same hash chain, which serialises appends in
the database (PostgreSQL advisory lock + head row lock; SQLite BEGIN IMMEDIATE), so `audit verify`
sees one unbroken chain. Per-process caches are bounded in staleness by design: consents
(`privacy.consent_cache_seconds`), the key ring (reloaded on an unknown key version), verified
tokens (`security.token_cache_seconds`).

SIGINT/SIGTERM to the supervisor stops every worker gracefully (each flushes its audit queue); a
worker that dies unexpectedly is started again with the same index.
"""

from __future__ import annotations

import asyncio
import gc
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING, Any

import structlog

from fhir_gateway.settings import Settings

if TYPE_CHECKING:
    import uvicorn

log = structlog.get_logger("fhir_gateway.serve")
BACKLOG = 4096  # 1,000+ clients connecting at once must not overflow the accept queue
RESTART_DELAY_SECONDS = 1.0
YOUNG_GC_THRESHOLD = 50_000  # settle_heap
EVENT_LOOP = "asyncio"  # uvicorn_config


def serve(settings: Settings) -> None:
    """Run the server in the foreground until interrupted."""
    if settings.workers == 1:
        _run_worker(settings, 0, reuse_port=False)
        return
    asyncio.run(prepare_database(settings))
    Supervisor(settings).run()


async def prepare_database(settings: Settings) -> None:
    """Migrations and the PHI key ring, once, before any worker starts."""
    from fhir_gateway.gateway import Gateway
    from fhir_gateway.store.store import Store

    store = Store(settings.database_url)
    try:
        await store.upgrade()
        await Gateway(settings, store).ensure_crypto()
    finally:
        await store.dispose()


class Supervisor:
    """Starts `settings.workers` processes running `target(settings, index, reuse_port=True)`."""

    def __init__(self, settings: Settings, target: Callable[..., None] | None = None) -> None:
        self.settings = settings
        self.target = target or _run_worker
        self.context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited loop
        self.workers: dict[int, BaseProcess] = {}
        self.stopping = False

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for index in range(self.settings.workers):
                self._start(index)
            while not self.stopping:
                self._restart_dead()
                time.sleep(0.2)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._terminate()

    def _start(self, index: int) -> None:
        process = self.context.Process(
            target=self.target,
            args=(self.settings, index),
            kwargs={"reuse_port": True},
            name=f"worker-{index}",
        )
        process.start()
        self.workers[index] = process

    def _restart_dead(self) -> None:
        for index, process in list(self.workers.items()):
            if not process.is_alive() and not self.stopping:
                log.warning("worker_died", worker=index, exitcode=process.exitcode)
                time.sleep(RESTART_DELAY_SECONDS)
                self._start(index)

    def _stop(self, _signum: int, _frame: FrameType | None) -> None:
        self.stopping = True

    def _terminate(self) -> None:
        for process in self.workers.values():
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn shuts down gracefully, the lifespan flushes audit
        for process in self.workers.values():
            process.join(self.settings.audit.stop_timeout_seconds + 5)
            if process.is_alive():
                process.kill()
                process.join()


def settle_heap() -> int:
    """Load the R4 definitions before serving and put everything alive then out of the cyclic
    garbage collector's way; returns how many objects were frozen.

    The compiled structure definitions, value sets, code systems and search parameters are some
    200,000 long-lived objects. Loaded lazily they end up in the collector's oldest generation, and
    every full collection walks them again: ~50 ms each on this machine (a pause in the middle of
    whatever request triggered it) and ~10 % of the CPU of HL7 ingest (benchmarks/README).
    `gc.freeze()` moves them to the permanent generation; reference counting still frees anything
    that becomes unused. Only for a server process: in a process that builds and drops many apps
    (a test run) freezing would keep their cyclic garbage for good.

    Then the youngest generation's threshold goes from 700 to YOUNG_GC_THRESHOLD allocations. A
    request or an HL7 message allocates thousands of short-lived containers, nearly all freed by
    reference counting; at 700 the collector ran a young collection every few hundred microseconds
    of work, and every tenth promoted survivors towards full collections of ~25 ms. Measured on HL7
    ingest (benchmarks/README): 0.38 ms of collector time per message at the default, 0.05 ms here.
    Cyclic garbage (exception tracebacks, finished tasks) waits a little longer to be freed.
    """
    from fhir_gateway.definitions.search_parameters import resource_types
    from fhir_gateway.validation import loader

    loader.preload()
    resource_types()
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_THRESHOLD, older, oldest)
    return gc.get_freeze_count()


def _run_worker(settings: Settings, index: int, *, reuse_port: bool) -> None:
    import uvicorn

    from fhir_gateway.api.app import create_app

    app = create_app(settings, primary=index == 0)
    settle_heap()
    server = uvicorn.Server(uvicorn_config(app, settings))
    if not reuse_port:
        server.run()
        return
    server.run(sockets=[_listening_socket(settings.host, settings.port)])


def uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    """How uvicorn runs a worker: the standard library's event loop (`EVENT_LOOP`) and httptools.

    Not uvloop, which uvicorn picks when it is installed: at 1,000 clients connecting to a busy
    worker, uvloop accepted a few connections a second and left the rest waiting in the kernel's
    accept queue for up to 10 s, while the ones it had accepted were served in ~100 ms (the
    closed-loop p99 of 6.2 s in benchmarks/README was those). The asyncio loop drains the accept
    queue on every turn: same throughput, p99 0.3 s. uvloop also has an open report of responses
    reaching the wrong request under heavy load (MagicStack/uvloop#645): not a risk for PHI.
    """
    import uvicorn

    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        backlog=BACKLOG,
        loop=EVENT_LOOP,
        http="httptools",
    )


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    return sock
