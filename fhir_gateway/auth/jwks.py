"""The identity provider's public keys (RFC 7517 JWK Set), fetched from a URL or a file and cached.

Key rotation works without a restart: a token whose `kid` is not in the cache triggers one refetch,
and the cache also refreshes when it is older than `max_age`. Refetches are rate-limited
(`min_interval`), so a stream of tokens with made-up `kid`s cannot turn the gateway into a load
generator against the IdP. A failed fetch keeps the keys already known.

Only public asymmetric keys are taken: RSA (RS*/PS*) and EC (ES*). `oct` (shared secret) entries are
ignored — a JWK Set is public, so a symmetric key in it would let anyone sign — and any private
members (`d`, `p`, `q`, ...) are dropped before a key is built.

`file:///path` and `http(s)://` URLs are accepted; fetching over HTTP is synchronous and bounded by
`timeout`, and `key_async` runs it in a worker thread so the event loop never waits on the IdP.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import orjson
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

MAX_JWKS_BYTES = 1024 * 1024
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# JWS "alg" (RFC 7518 §3.1) → the JWK "kty" whose keys can verify it.
KTY_FOR_ALG = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
    "ES384": "EC",
    "ES512": "EC",
}
# An EC key verifies exactly one ES algorithm (RFC 7518 §3.4).
CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class JwksError(Exception):
    """The key set could not be fetched or read (the message names the URL, never key material)."""


@dataclass(frozen=True, slots=True)
class Jwk:
    """One usable public key from the set."""

    kid: str | None
    kty: str
    alg: str | None  # the key's own "alg", when the IdP pins one
    crv: str | None
    key: Any  # cryptography public key object

    def verifies(self, alg: str) -> bool:
        """Whether this key may verify a token signed with `alg` (no cross-family use, no alg drift)."""
        if KTY_FOR_ALG.get(alg) != self.kty:
            return False
        if self.alg is not None and self.alg != alg:
            return False
        return not (self.kty == "EC" and CURVE_FOR_ALG.get(alg) != self.crv)


def parse_jwks(data: Any) -> list[Jwk]:
    """The usable public keys of a JWK Set document; unusable entries are skipped, not fatal."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise JwksError("the document is not a JWK Set (no 'keys' array)")
    keys = []
    for entry in data["keys"]:
        key = _parse_key(entry)
        if key is not None:
            keys.append(key)
    return keys


def _parse_key(entry: Any) -> Jwk | None:
    if not isinstance(entry, dict):
        return None
    kty, use = entry.get("kty"), entry.get("use")
    if kty not in ("RSA", "EC") or (use is not None and use != "sig"):
        return None
    public = {k: v for k, v in entry.items() if k not in PRIVATE_MEMBERS}
    try:
        key = RSAAlgorithm.from_jwk(public) if kty == "RSA" else ECAlgorithm.from_jwk(public)
    except Exception:  # noqa: BLE001 - any malformed member means "not a usable key"
        return None
    kid, alg, crv = entry.get("kid"), entry.get("alg"), entry.get("crv")
    return Jwk(
        kid if isinstance(kid, str) else None,
        kty,
        alg if isinstance(alg, str) else None,
        crv if isinstance(crv, str) else None,
        key,
    )


def read_jwks_url(url: str, *, timeout: float = 5.0) -> list[Jwk]:
    """Fetch and parse a JWK Set from `file:///path` or `http(s)://...`."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        try:
            raw = Path(unquote(parts.path)).read_bytes()[: MAX_JWKS_BYTES + 1]
        except OSError as exc:
            raise JwksError(f"cannot read the JWK Set file {parts.path} ({exc.strerror})") from None
    elif parts.scheme in ("http", "https"):
        try:
            response = httpx.get(url, timeout=timeout, follow_redirects=False)
        except httpx.HTTPError as exc:
            raise JwksError(f"cannot fetch the JWK Set from {url} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise JwksError(f"the JWK Set at {url} answered HTTP {response.status_code}")
        raw = response.content
    else:
        raise JwksError("the JWK Set URL must be file:///path, http:// or https://")
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksError(f"the JWK Set at {url} is larger than {MAX_JWKS_BYTES} bytes")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise JwksError(f"the JWK Set at {url} is not JSON") from None
    return parse_jwks(data)


class JwksCache:
    """Keys of one JWK Set URL, refetched on an unknown `kid` (rate-limited) and when stale."""

    def __init__(
        self,
        url: str,
        *,
        min_interval: float = 30.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str], list[Jwk]] | None = None,
    ) -> None:
        self.url = url
        self.min_interval = min_interval
        self.max_age = max_age
        self._clock = clock
        self._fetch = fetch or (lambda u: read_jwks_url(u, timeout=timeout))
        self._keys: list[Jwk] = []
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._lock = threading.Lock()
        self.fetches = 0  # attempts made, for tests and metrics

    def _find(self, kid: str | None, alg: str) -> Jwk | None:
        candidates = [k for k in self._keys if k.verifies(alg)]
        if kid is None:
            return candidates[0] if len(candidates) == 1 else None  # ambiguous without a kid
        return next((k for k in candidates if k.kid == kid), None)

    def _should_refresh(self, kid: str | None, alg: str) -> bool:
        now = self._clock()
        if self._attempted_at is not None and now - self._attempted_at < self.min_interval:
            return False
        stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
        return stale or self._find(kid, alg) is None

    def refresh(self) -> None:
        """Fetch the set now; on failure the known keys stay and the error propagates."""
        with self._lock:
            self._attempted_at = self._clock()
            self.fetches += 1
            keys = self._fetch(self.url)
            self._keys = keys
            self._fetched_at = self._clock()

    def _refresh_quietly(self) -> None:
        with contextlib.suppress(JwksError):  # keep the keys we have; an unknown kid then fails as 401
            self.refresh()

    def key(self, kid: str | None, alg: str) -> Jwk | None:
        """The key that verifies a token with this header, fetching first when needed (blocking)."""
        if self._should_refresh(kid, alg):
            self._refresh_quietly()
        return self._find(kid, alg)

    async def key_async(self, kid: str | None, alg: str) -> Jwk | None:
        """As `key`, with any fetch run in a worker thread."""
        if self._should_refresh(kid, alg):
            await asyncio.to_thread(self._refresh_quietly)
        return self._find(kid, alg)
