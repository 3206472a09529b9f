"""The seam the write, read and search paths call: one `PhiCrypto` per runtime.

crypto = PhiCrypto.from_settings(settings)      # None when settings.crypto.enabled is false
await crypto.start(store)                       # once, after migrations: creates key version 1

# write (transaction.store_version), inside the write transaction, after the pipeline:
sealer = await crypto.sealer(tx.conn)           # once per transaction: the current active key
rows = extract(resource)                        # on the plaintext, as before
stored, rows = sealer.seal(res_type, res_id, resource, rows)
content = dumps(stored)                         # `resource` itself is not changed

# read, after the policy decision permitted the resource:
resource = await crypto.open(store, version.resource(), res_type, res_id)   # DecryptionFailed

# search, after parse_search and before the SQL is built:
parsed = await crypto.protect_search(store, parsed)                          # EncryptedSearchRefused
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_gateway.crypto.blind_index import protect_rows
from fhir_gateway.crypto.config import CryptoSettings
from fhir_gateway.crypto.errors import DecryptionFailed
from fhir_gateway.crypto.fields import PhiFields, decrypt_resource, encrypt_resource
from fhir_gateway.crypto.keyring import Keyring, Kms, LocalKms
from fhir_gateway.crypto.keystore import KeyStore
from fhir_gateway.crypto.search import protect_search
from fhir_gateway.settings import Settings
from fhir_gateway.store.database import Connection
from fhir_gateway.store.search.params import ParsedSearch
from fhir_gateway.store.search.rows import IndexRows
from fhir_gateway.store.store import Store


def crypto_settings(settings: Settings) -> CryptoSettings:
    """`settings.crypto`, or the defaults while Settings has no such section yet."""
    section = getattr(settings, "crypto", None)
    return section if isinstance(section, CryptoSettings) else CryptoSettings()


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals resources and blinds their index rows with one key ring (one write transaction's)."""

    ring: Keyring
    fields: PhiFields

    def seal(
        self, res_type: str, res_id: str, resource: dict[str, Any], rows: IndexRows
    ) -> tuple[dict[str, Any], IndexRows]:
        """The stored form of `resource` and its index rows with PHI parameters blinded."""
        stored = encrypt_resource(resource, res_type, res_id, self.ring, self.fields)
        return stored, protect_rows(rows, res_type, self.ring, self.fields)


class PhiCrypto:
    def __init__(self, kms: Kms, config: CryptoSettings | None = None) -> None:
        self.config = config or CryptoSettings()
        self.fields = PhiFields.configured(self.config.phi_paths)
        self.keys = KeyStore(kms)

    @classmethod
    def from_settings(cls, settings: Settings) -> PhiCrypto | None:
        config = crypto_settings(settings)
        if not config.enabled:
            return None
        return cls(LocalKms(settings.security.encryption_key.get_secret_value()), config)

    async def start(self, store: Store) -> Keyring:
        return await self.keys.initialise(store)

    async def sealer(self, conn: Connection) -> Sealer:
        return Sealer(await self.keys.current(conn), self.fields)

    async def open(
        self,
        store: Store,
        resource: dict[str, Any],
        res_type: str,
        res_id: str,
        conn: Connection | None = None,
    ) -> dict[str, Any]:
        """The plaintext of a stored resource; a version sealed by another process since this one
        last looked is loaded once (through `conn` inside a transaction, KeyStore.ring).
        DecryptionFailed for this resource only."""
        ring = self.keys.cached or await self.keys.ring(store, conn)
        try:
            return decrypt_resource(resource, res_type, res_id, ring)
        except DecryptionFailed as exc:
            if exc.missing_version is None:
                raise
        return decrypt_resource(resource, res_type, res_id, await self.keys.ring(store, conn))

    async def protect_search(
        self, store: Store, parsed: ParsedSearch, conn: Connection | None = None
    ) -> ParsedSearch:
        ring = await self.keys.ring(store, conn)
        return protect_search(parsed, ring, self.fields, string_search=self.config.string_search)
