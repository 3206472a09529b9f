"""A parsed search with every value on an encrypted parameter replaced by its blind indexes.

Runs after params.parse_search and before the SQL is built, so query.py needs no change: each value
becomes one value per key version still in use (active and retiring), and the criterion's OR over
its values finds rows blinded under any of them. A blind value is a full-length HMAC, so the
default string condition (starts-with) on it is an equality.

What a blind index cannot answer is refused with a 400 `not-supported` naming the parameter (never
the value): prefix, `:contains`, `:below`/`:above`, date and number comparisons other than `eq`,
number/quantity/composite parameters on PHI, and `_sort` on an encrypted parameter. An unmodified
string search is refused too, unless `string_search = "whole-value"` makes it a whole-value match.
Chained parameters and `_has` are rewritten for the type they search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from fhir_gateway.crypto.blind_index import BLINDABLE_TYPES, blind, blind_number, date_text, encrypted_params
from fhir_gateway.crypto.errors import EncryptedSearchRefused
from fhir_gateway.crypto.fields import PhiFields
from fhir_gateway.crypto.keyring import Keyring
from fhir_gateway.store.search import values as v
from fhir_gateway.store.search.criteria import Chain, Criterion, Has, Match, Missing
from fhir_gateway.store.search.params import ParsedSearch


def protect_search(
    parsed: ParsedSearch, keyring: Keyring, fields: PhiFields, *, string_search: str = "refuse"
) -> ParsedSearch:
    """`parsed` with encrypted parameters searched by blind index; EncryptedSearchRefused otherwise."""
    encrypted = encrypted_params(parsed.resource_type, fields)
    for code, _ in parsed.sort:
        if code in encrypted:
            raise EncryptedSearchRefused(
                f"Search parameter '{code}' is encrypted and cannot be sorted on", expression=code
            )
    rewrite = _Rewriter(keyring, fields, string_search)
    filters = tuple(rewrite(parsed.resource_type, c) for c in parsed.filters)
    return replace(parsed, filters=filters)


class _Rewriter:
    def __init__(self, keyring: Keyring, fields: PhiFields, string_search: str) -> None:
        self.keyring = keyring
        self.fields = fields
        self.whole_value = string_search == "whole-value"

    def __call__(self, res_type: str, criterion: Criterion) -> Criterion:
        match criterion:
            case Chain(code=code, targets=targets):
                return Chain(code, tuple((t, self(t, inner)) for t, inner in targets))
            case Has(source_type=source, ref_code=ref, inner=inner):
                return Has(source, ref, self(source, inner))
            case Missing(code=code, type=kind):
                if code in encrypted_params(res_type, self.fields) and kind not in BLINDABLE_TYPES:
                    raise _refused(code, "is not indexed")
                return criterion
            case Match():
                if criterion.code not in encrypted_params(res_type, self.fields):
                    return criterion
                return self._match(res_type, criterion)
        raise AssertionError(f"unknown criterion {criterion!r}")  # pragma: no cover - closed union

    def _match(self, res_type: str, m: Match) -> Match:
        base = f"{res_type}.{m.code}"
        blinder = self._blinder(m, base)
        return replace(m, values=tuple(out for value in m.values for out in blinder(value)))

    def _blinder(self, m: Match, base: str) -> Callable[[v.Value], list[v.Value]]:
        versions = [k.version for k in self.keyring.search_versions]

        def texts(text: str, path: str) -> list[str]:
            return [blind(self.keyring, text, path, kv) for kv in versions]

        kind, modifier, code = m.type, m.modifier, m.code
        if kind == "string" and (modifier == "exact" or (modifier is None and self.whole_value)):
            column = "#exact" if modifier == "exact" else ""
            return lambda value: [v.StringValue(t) for t in texts(_string(value), base + column)]
        if kind == "string":
            how = f"{code}:contains" if modifier == "contains" else code
            raise _refused(code, f"matches whole values only ({code}:exact=); '{how}=' is not supported")
        if kind == "token" and modifier == "text":
            return lambda value: [v.StringValue(t) for t in texts(_string(value), base + "#text")]
        if kind == "token":
            return lambda value: _token(value, lambda c: texts(c, base))
        if kind == "date":
            return lambda value: self._date(value, code, base)
        if kind == "uri" and modifier is None:
            return lambda value: [v.UriValue(t) for t in texts(_uri(value), base)]
        raise _refused(code, "can only be searched for exact values")

    def _date(self, value: v.Value, code: str, base: str) -> list[v.Value]:
        assert isinstance(value, v.DateValue)
        if value.prefix != "eq":
            raise _refused(code, "can only be searched for an exact date (no prefix)")
        text = date_text(value.low, value.high)
        points = [
            blind_number(self.keyring, text, base + "#date", k.version) for k in self.keyring.search_versions
        ]
        return [v.DateValue("eq", p, p) for p in points]


def _string(value: v.Value) -> str:
    assert isinstance(value, v.StringValue)
    return value.text


def _uri(value: v.Value) -> str:
    assert isinstance(value, v.UriValue)
    return value.uri


def _token(value: v.Value, texts: Callable[[str], list[str]]) -> list[v.Value]:
    assert isinstance(value, v.TokenValue)
    if value.code is None:  # `system|`: the system is in clear
        return [value]
    return [replace(value, code=t) for t in texts(value.code)]


def _refused(code: str, why: str) -> EncryptedSearchRefused:
    return EncryptedSearchRefused(f"Search parameter '{code}' is encrypted and {why}", expression=code)
