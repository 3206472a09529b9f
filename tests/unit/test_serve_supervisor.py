"""The worker supervisor of `serve --workers N`: every index started, a dead worker restarted with
its index, all stopped together; the port shared with SO_REUSEPORT; the database prepared once."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from fhir_gateway.api.serve import (
    YOUNG_GC_THRESHOLD,
    Supervisor,
    _listening_socket,
    prepare_database,
    settle_heap,
    uvicorn_config,
)
from fhir_gateway.crypto.tables import crypto_keys
from fhir_gateway.settings import Settings
from fhir_gateway.store.store import Store
from tests.conftest import make_settings


def fake_worker(settings: Settings, index: int, *, reuse_port: bool) -> None:
    """Records each start; worker 1 dies on its first start. Runs until terminated."""
    folder = Path(settings.audit.spill_path)
    starts = sorted(folder.glob(f"start-{index}-*"))
    (folder / f"start-{index}-{len(starts)}").write_text(str(os.getpid()))
    if index == 1 and not starts:
        os._exit(3)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(0.05)


def test_workers_are_started_restarted_and_stopped(tmp_path: Path) -> None:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/s.db", workers=2, audit={"spill_path": str(tmp_path)}
    )
    supervisor = Supervisor(settings, target=fake_worker)

    def stop_when_restarted() -> None:
        deadline = time.monotonic() + 60
        while not (tmp_path / "start-1-1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        supervisor.stopping = True

    watcher = threading.Thread(target=stop_when_restarted)
    watcher.start()
    supervisor.run()
    watcher.join()
    assert (tmp_path / "start-0-0").exists() and (tmp_path / "start-1-1").exists(), sorted(
        p.name for p in tmp_path.iterdir()
    )
    assert not (tmp_path / "start-0-1").exists()  # the healthy worker was never restarted
    assert all(not p.is_alive() for p in supervisor.workers.values())
    assert {p.exitcode for p in supervisor.workers.values()} == {0}


def test_two_listening_sockets_share_one_port() -> None:
    first = _listening_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    second = _listening_socket("127.0.0.1", port)
    try:
        assert second.getsockname()[1] == port
    finally:
        first.close()
        second.close()


def test_the_database_is_prepared_once_before_the_workers(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/p.db")
    asyncio.run(prepare_database(settings))

    async def key_count() -> int:
        store = Store(settings.database_url)
        try:
            async with store.reader() as conn:
                return int((await conn.execute(select(func.count()).select_from(crypto_keys))).scalar_one())
        finally:
            await store.dispose()

    assert asyncio.run(key_count()) == 1  # the schema exists and the first PHI key version was made


def test_settle_heap_loads_the_definitions_and_freezes_them() -> None:
    """A server process takes the R4 definitions out of the cyclic GC's way before it serves."""
    from fhir_gateway.validation import loader

    threshold = gc.get_threshold()
    try:
        frozen = settle_heap()
        assert frozen == gc.get_freeze_count() > 100_000  # the definitions are in the permanent generation
        assert loader.structures.cache_info().currsize == 1  # loaded at start, not by the first request
        assert gc.get_threshold() == (YOUNG_GC_THRESHOLD, *threshold[1:])  # young collections are rarer
    finally:
        gc.unfreeze()  # this is a test process: leave its collector as it was
        gc.set_threshold(*threshold)


def test_workers_run_on_the_standard_event_loop_which_accepts_every_waiting_connection() -> None:
    """uvloop left busy workers' new connections in the accept queue for seconds (serve.py)."""
    settings = make_settings("sqlite+aiosqlite:///unused.db", port=8123)
    config = uvicorn_config(object(), settings)
    assert (config.loop, config.http, config.port, config.backlog) == ("asyncio", "httptools", 8123, 4096)
