"""Keyed blind indexes: search index rows for PHI elements hold HMACs, not values.

A search parameter is *encrypted* for a resource type when one of its compiled paths and one of the
type's PHI paths (fields.py) lie on one line (either is a prefix of the other: `address-city` on
`address`, `name` on `name.family`). Parameters computed as `exists() and != false` (Patient
`deceased`) carry only true/false, and reference parameters only ids (_include and compartments
need them): both stay in clear.

Index rows of an encrypted parameter are extracted from the plaintext as usual (extract.py) and then
blinded with the active key version, each value as `blind(value, path, version)` where `path` names
the resource type, parameter and column (`Patient.family#exact`), so equal values of different
parameters or types never share a blind value:

- string: `value` (already case/accent-folded by extract.normalize_string) and `exact` (as written).
  `family:exact=` compares blinds of the exact text; an unmodified `family=` is a whole-value match
  on the folded text when configured (search.py), never a prefix.
- token: `code` and `text` are blinded; `system` stays in clear (an identifier namespace or a
  ContactPoint system, not PHI), so `identifier=value`, `identifier=system|value`, `system|` and
  `:of-type` all still work. Equal values under two systems share a blind value (a known leak of
  equality, not of the value).
- date: the stored [low, high) range of the value is blinded and written as one number, into both
  `low` and `high`: a 48-bit integer, exact in a float, far inside the sentinels of rows.py. Only
  `eq` works, at the precision written (`birthdate=1970-03-02` finds "1970-03-02"; `1970` does not).
- uri: the value is blinded. Number, quantity and composite rows of an encrypted parameter are
  dropped, and search.py refuses those parameters.

Blind values are deterministic per key version, which is what lets an equality search find them;
they reveal which rows share a value, never the value. After a rotation, rows are re-blinded with
the new version in the same transaction that re-encrypts the resource; searches meanwhile look for
the blinds of every version not yet retired.
"""

from __future__ import annotations

import binascii
import functools
from dataclasses import replace
from typing import Any

from fhir_gateway.crypto.fields import PhiFields
from fhir_gateway.crypto.keyring import Keyring
from fhir_gateway.definitions.search_parameters import SearchParameter, params_for
from fhir_gateway.store.search.rows import DateRow, IndexRows, StringRow, TokenRow, UriRow

BLINDABLE_TYPES = frozenset({"string", "token", "date", "uri"})  # other types: rows dropped, search refused
_FLOAT_BITS = 48


def blind(keyring: Keyring, value: str, path: str, key_version: int) -> str:
    """The blind index of `value` for `path` (`Type.param` or `Type.param#column`) under a key version."""
    return binascii.b2a_base64(keyring.blind(value, path, key_version), newline=False).decode()


def blind_number(keyring: Keyring, value: str, path: str, key_version: int) -> float:
    """A blind index as a float (for the float columns of date rows): 48 bits of the HMAC."""
    digest = keyring.blind(value, path, key_version)
    return float(int.from_bytes(digest[: _FLOAT_BITS // 8], "big"))


def date_text(low: float, high: float) -> str:
    """What a date blind is computed over: the range, so stored and searched values agree exactly."""
    return f"{low!r}|{high!r}"


def encrypted_params(res_type: str, fields: PhiFields) -> dict[str, SearchParameter]:
    """The search parameters of `res_type` whose values come from PHI elements, by code."""
    return dict(_encrypted(res_type, fields))


@functools.cache
def _encrypted(res_type: str, fields: PhiFields) -> tuple[tuple[str, SearchParameter], ...]:
    phi = [tuple(p.split(".")) for p in fields.paths(res_type)]
    found = []
    for code, param in params_for(res_type).items():
        if param.type == "reference" or any(p.exists_not_false for p in param.paths):
            continue
        if any(_on_one_line(steps, element) for steps in _value_paths(param) for element in phi):
            found.append((code, param))
    return tuple(found)


def _value_paths(param: SearchParameter) -> list[tuple[str, ...]]:
    """The element paths a parameter reads values from; a composite reads its components' paths
    from each node its own paths select (or from the resource root)."""
    nodes = [tuple(step.name for step in path.steps) for path in param.paths]
    if not param.components:
        return nodes
    return [
        (() if sub.from_resource else node) + tuple(step.name for step in sub.steps)
        for node in nodes
        for component in param.components
        for sub in component.paths
    ]


def _on_one_line(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    n = min(len(a), len(b))
    return n > 0 and a[:n] == b[:n]


def protect_rows(
    rows: IndexRows, res_type: str, keyring: Keyring, fields: PhiFields, *, version: int | None = None
) -> IndexRows:
    """`rows` (extracted from the plaintext) with every row of an encrypted parameter blinded under
    `version` (default: the active one); rows of other parameters are passed through untouched."""
    encrypted = _encrypted(res_type, fields)
    if not encrypted:
        return rows
    codes = frozenset(code for code, _ in encrypted)
    kv = keyring.active.version if version is None else version

    def mine(param: str) -> bool:
        return param.partition(":")[0] in codes

    def b(value: str | None, param: str, column: str = "") -> str | None:
        if value is None:
            return None
        return blind(keyring, value, f"{res_type}.{param.partition(':')[0]}{column}", kv)

    strings = [
        StringRow(r.param, b(r.value, r.param) or "", b(r.exact, r.param, "#exact") or "")
        if mine(r.param)
        else r
        for r in rows.strings
    ]
    tokens = [
        TokenRow(r.param, r.system, b(r.code, r.param), b(r.text, r.param, "#text")) if mine(r.param) else r
        for r in rows.tokens
    ]
    dates = [_blind_date(keyring, res_type, r, kv) if mine(r.param) else r for r in rows.dates]
    uris = [UriRow(r.param, b(r.value, r.param) or "") if mine(r.param) else r for r in rows.uris]
    kept: dict[str, Any] = {
        name: [r for r in getattr(rows, name) if not mine(r.param)]
        for name in ("numbers", "quantities", "composites")
    }
    return replace(rows, strings=strings, tokens=tokens, dates=dates, uris=uris, **kept)


def _blind_date(keyring: Keyring, res_type: str, row: DateRow, kv: int) -> DateRow:
    point = blind_number(keyring, date_text(row.low, row.high), f"{res_type}.{row.param}#date", kv)
    return DateRow(row.param, point, point)
