"""Shared fixtures: a real app on a fresh SQLite file (or PostgreSQL schema), driven over HTTP by httpx."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhir_gateway.api.app import create_app
from fhir_gateway.settings import Settings, load_settings
from fhir_gateway.store.store import Store

PG_URL = os.environ.get("TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


def put_bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    """A transaction Bundle that PUTs each resource at its own id."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
            for r in resources
        ],
    }


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Test settings; requests without a token act as an admin unless `security` is overridden."""
    overrides.setdefault("security", {"allow_anonymous": True})
    return load_settings(None, environ={}, overrides={"database_url": database_url, **overrides})


@asynccontextmanager
async def opened_store(url: str) -> AsyncIterator[Store]:
    """A Store on `url` with the schema in place, disposed of afterwards."""
    store = Store(url)
    await store.upgrade()
    try:
        yield store
    finally:
        await store.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/gw.db"


@asynccontextmanager
async def pg_schema() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema (the `test` database is shared with others), dropped afterwards."""
    import asyncpg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    dsn = PG_URL.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?search_path={schema}"
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@asynccontextmanager
async def database_url(dialect: str, tmp_path: Path, name: str) -> AsyncIterator[str]:
    """A fresh database of `dialect` ("sqlite" file under tmp_path, or a PostgreSQL schema)."""
    if dialect == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/{name}.db"
    else:
        async with pg_schema() as url:
            yield url


async def open_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            client.headers["Accept"] = "application/fhir+json"
            yield client


@pytest.fixture
async def client(sqlite_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for c in open_client(make_settings(sqlite_url)):
        yield c


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_client(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The same HTTP tests on both dialects."""
    if request.param == "sqlite":
        async for c in open_client(make_settings(f"sqlite+aiosqlite:///{tmp_path}/gw.db")):
            yield c
    else:
        async with pg_schema() as url:
            async for c in open_client(make_settings(url)):
                yield c


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def any_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database on each dialect: an SQLite file, or a PostgreSQL schema (dropped after)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gw.db"
    else:
        async with pg_schema() as url:
            yield url
