"""Engine creation per dialect, and the migrations run at start.

SQLite is the embedded default: WAL so readers never wait for the writer, a busy timeout so a CLI
process writing beside a running server waits instead of failing, and foreign keys on so index
rows die with their resource. PostgreSQL: a pool that checks a connection before use only when it
has been idle for a while (`ping_after_idle`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import Pool

MIGRATIONS = Path(__file__).parent / "migrations"
IDLE_PING_SECONDS = 5.0  # ping_after_idle
POOL_SIZE = 40  # PostgreSQL connections per process (create_engine)
POOL_TIMEOUT_SECONDS = 30.0  # how long a request waits for a free connection before it fails


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str) -> AsyncEngine:
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        ensure_sqlite_directory(parsed.database)
        kwargs["connect_args"] = {"timeout": 30}
    else:
        # `?search_path=NAME` selects a PostgreSQL schema (several gateways or test runs in one database).
        search_path = parsed.query.get("search_path")
        if search_path:
            parsed = parsed.difference_update_query(["search_path"])
            kwargs["connect_args"] = {"server_settings": {"search_path": str(search_path)}}
        # A fixed pool of the 40 connections a process could open before (20 + max_overflow 20),
        # all kept: with overflow, connections handed back while 20 sat idle were closed, and under
        # load new ones were opened again and again (TCP, TLS negotiation, authentication,
        # SQLAlchemy's set-up: 8 % of a worker serving reads at 1,000 connections). Patient reads,
        # 2 workers: 1,151-1,260/s with overflow, 1,692-1,937/s with this pool in four runs of five
        # (benchmarks/README, 2026-12-06). Past POOL_SIZE a request waits for one (pool_timeout),
        # which is safe only because no task holding a connection ever asks for a second one (a
        # write transaction reads the key ring through its own: crypto/keystore.py KeyStore.ring).
        kwargs.update(pool_size=POOL_SIZE, max_overflow=0, pool_timeout=POOL_TIMEOUT_SECONDS)
    engine = create_async_engine(parsed, **kwargs)
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine.sync_engine, "connect", sqlite_pragmas)
    else:
        ping_after_idle(engine.sync_engine.pool, IDLE_PING_SECONDS)
    return engine


def ping_after_idle(pool: Pool, idle_seconds: float) -> None:
    """Check a pooled connection before use only if it has been idle for `idle_seconds`.

    SQLAlchemy's `pool_pre_ping` checks every checkout, and with asyncpg outside a transaction its
    ping is three round trips (BEGIN, an empty query, ROLLBACK): over HL7 ingest on PostgreSQL that
    was 4 of ~25 round trips per message. A connection handed back a moment ago is as good as the
    statement it just ran; the ones that go stale are those left idle while PostgreSQL restarted or
    a firewall dropped them, and those are still checked. A failed check raises DisconnectionError,
    on which the pool discards the connection and opens a fresh one. A connection that dies while
    in use fails its statement as before, and SQLAlchemy then invalidates the pool's older
    connections, so the next checkouts reconnect instead of failing one by one.
    """

    @event.listens_for(pool, "checkin")
    def _idle_from(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _check(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            dbapi_connection.ping()
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the connection is unusable
            raise DisconnectionError("connection lost while idle") from exc


def ensure_sqlite_directory(database: str | None) -> None:
    """The embedded default lives under ./data: create the folder rather than fail on first start."""
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade_sync(connection: Connection) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    command.upgrade(alembic_config(connection), "head")


async def upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_sync)
