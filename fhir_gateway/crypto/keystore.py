"""The key ring as the `crypto_keys` table holds it, cached per process and kept current.

Several processes share one database (the server, `fhir-gateway keys rotate` beside it), so no
process may trust its cached ring for long: `current(conn)` reads the (version, state) pairs (a
handful of rows) and rebuilds the ring only when they changed, unwrapping only versions it has not
seen. Writers call it inside their transaction, so a write never seals with a version that a
committed rotation has already replaced; readers call it before a search, and `open` reloads once
when a stored value names a version the cache does not know yet.

Version 1 is created by `initialise` in its own committed transaction, never inside a write: a key
cached from a transaction that then rolled back would seal data under a key nobody stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, insert, select, update

from fhir_gateway.crypto.errors import KeyringUnavailable
from fhir_gateway.crypto.keyring import KEY_STATES, Keyring, KeyState, KeyVersion, Kms, new_dek
from fhir_gateway.crypto.tables import crypto_keys
from fhir_gateway.errors import Conflict
from fhir_gateway.store.database import Connection
from fhir_gateway.store.store import Store

Signature = tuple[tuple[int, str], ...]


class KeyStore:
    def __init__(self, kms: Kms) -> None:
        self.kms = kms
        self._ring: Keyring | None = None
        self._signature: Signature = ()
        self._deks: dict[int, bytes] = {}

    @property
    def cached(self) -> Keyring | None:
        """The ring as last loaded (None before the first load); may be behind the table."""
        return self._ring

    async def initialise(self, store: Store) -> Keyring:
        """Make sure a first key version exists (idempotent, safe from several processes), then load."""
        async with store.reader() as conn:
            existing = (await conn.execute(select(func.count()).select_from(crypto_keys))).scalar_one()
        if not existing:
            try:
                async with store.transaction() as tx:
                    await self._insert(tx.conn, 1)
            except Conflict:  # another process created version 1 first (primary key)
                pass
        return await self.ring(store)

    async def ring(self, store: Store, conn: Connection | None = None) -> Keyring:
        """The current ring, read through `conn` when the caller holds one (a write transaction):
        a task that holds a pooled connection must never wait for a second one, or a full pool
        (every connection held by such a task) waits until pool_timeout and fails them all."""
        if conn is not None:
            return await self.current(conn)
        async with store.reader() as reader:
            return await self.current(reader)

    async def current(self, conn: Connection) -> Keyring:
        """The ring as the table says now (one small SELECT when nothing changed)."""
        rows = (await conn.execute(select(crypto_keys.c.version, crypto_keys.c.state))).all()
        signature: Signature = tuple(sorted((int(r.version), str(r.state)) for r in rows))
        if self._ring is None or signature != self._signature:
            # Two concurrent loads may finish in either order; a stale result only costs a reload.
            self._ring = await self._load(conn, signature)
            self._signature = signature
        return self._ring

    async def _load(self, conn: Connection, signature: Signature) -> Keyring:
        if not signature:
            raise KeyringUnavailable("no data keys exist yet: the key ring was not initialised")
        missing = [v for v, _ in signature if v not in self._deks]
        if missing:
            stmt = select(crypto_keys).where(crypto_keys.c.version.in_(missing))
            for row in (await conn.execute(stmt)).all():
                self._deks[int(row.version)] = self._unwrap(row)
        return Keyring(
            KeyVersion(version, _state(state), self._deks[version]) for version, state in signature
        )

    def _unwrap(self, row: Any) -> bytes:
        if row.kek_id != self.kms.key_id:
            raise KeyringUnavailable(
                f"data key version {row.version} was wrapped by another key-encryption key "
                f"({row.kek_id}; configured: {self.kms.key_id})"
            )
        return self.kms.unwrap(row.wrapped_key)

    async def _insert(self, conn: Connection, version: int) -> None:
        now = time.time()
        await conn.execute(
            insert(crypto_keys).values(
                version=version,
                wrapped_key=self.kms.wrap(new_dek()),
                kek_id=self.kms.key_id,
                created=now,
                state="active",
                state_changed=now,
            )
        )

    async def add_version(self, store: Store) -> int:
        """A new active version for new writes; the versions active until now become `retiring`."""
        async with store.transaction() as tx:
            newest = (await tx.conn.execute(select(func.max(crypto_keys.c.version)))).scalar_one()
            version = int(newest or 0) + 1
            await tx.conn.execute(
                update(crypto_keys)
                .where(crypto_keys.c.state == "active")
                .values(state="retiring", state_changed=time.time())
            )
            await self._insert(tx.conn, version)
        await self.ring(store)  # this process seals with the new version from now on
        return version

    async def set_state(self, store: Store, versions: Sequence[int], state: KeyState) -> None:
        if not versions:
            return
        async with store.transaction() as tx:
            await tx.conn.execute(
                update(crypto_keys)
                .where(crypto_keys.c.version.in_(list(versions)))
                .values(state=state, state_changed=time.time())
            )
        await self.ring(store)

    async def describe(self, store: Store) -> list[dict[str, Any]]:
        """Every version with its state and times (no key material), oldest first."""
        columns = (
            crypto_keys.c.version,
            crypto_keys.c.state,
            crypto_keys.c.created,
            crypto_keys.c.state_changed,
        )
        async with store.reader() as conn:
            rows = (await conn.execute(select(*columns).order_by(crypto_keys.c.version))).all()
        return [dict(r._mapping) for r in rows]


def _state(text: str) -> KeyState:
    for state in KEY_STATES:
        if state == text:
            return state
    raise KeyringUnavailable(f"the key table holds an unknown key state '{text}'")
