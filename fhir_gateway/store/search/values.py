"""Search values as written in a query string, parsed per parameter type (R4 search.html §3.1.1).

Pure syntax, no SQL and no definitions lookup: query.py turns these values into conditions. A value
that does not parse raises ValueError with a message that never repeats the value (it may be PHI);
params.py turns it into a 400 naming the parameter.

Escaping: `\\,` `\\|` `\\$` and `\\\\` stand for the literal character. Splitting keeps the escapes so
a part can be split again (a comma list first, then `|` or `$` inside one item); `unescape` runs last.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from fhir_gateway.fhir.dates import date_range

PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
DAY = 86400.0
MAX_EXPONENT = 300  # beyond this a decimal has no float and Decimal arithmetic overflows

_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_HISTORY = re.compile(r"/_history/[^/]*$")


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A number with its prefix; [low, high) is the implicit precision range (widened for `ap`)."""

    prefix: str
    value: float
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class DateValue:
    """A date with its prefix as the half-open range it denotes (widened for `ap`)."""

    prefix: str
    low: float
    high: float


@dataclass(frozen=True, slots=True)
class TokenValue:
    """`code`, `system|code`, `|code` (no_system) or `system|` (code None)."""

    system: str | None
    code: str | None
    no_system: bool = False


@dataclass(frozen=True, slots=True)
class StringValue:
    text: str


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """A reference target: type and/or id, and the absolute URL or canonical when one was given."""

    target_type: str | None
    target_id: str | None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class QuantityValue:
    number: NumberValue
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    parts: tuple[Value, ...]


Value = (
    NumberValue
    | DateValue
    | TokenValue
    | StringValue
    | ReferenceValue
    | QuantityValue
    | UriValue
    | CompositeValue
)


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not escaped; the parts keep their escapes."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(text)
    for ch in chars:
        if ch == "\\":
            current.append(ch)
            current.append(next(chars, ""))
        elif ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return parts


def unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def split_prefix(text: str) -> tuple[str, str]:
    if text[:2] in PREFIXES:
        return text[:2], text[2:]
    return "eq", text


def parse_number(text: str, prefix: str = "eq") -> NumberValue:
    """A decimal whose eq-range is half a unit of its last written digit ("100" is [99.5, 100.5))."""
    if not _NUMBER.fullmatch(text):
        raise ValueError("not a number")
    number = Decimal(text)
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the regex admits no NaN/Infinity
    if abs(exponent) > MAX_EXPONENT or not math.isfinite(float(number)):
        raise ValueError("number out of range")
    delta = Decimal("0.5") * (Decimal(10) ** min(exponent, 0))
    if prefix == "ap":
        delta = max(delta, abs(number) / 10)
    return NumberValue(prefix, float(number), float(number - delta), float(number + delta))


def parse_date(text: str, prefix: str = "eq", *, now: float | None = None) -> DateValue:
    """A date as its range; `ap` widens it by 10% of its distance to now, at least a day each side."""
    low, high = date_range(text)
    if prefix == "ap":
        moment = time.time() if now is None else now
        low -= max(DAY, abs(moment - low) / 10)
        high += max(DAY, abs(moment - high) / 10)
    return DateValue(prefix, low, high)


def parse_token(text: str) -> TokenValue:
    parts = split_escaped(text, "|")
    if len(parts) == 1:
        return TokenValue(None, unescape(parts[0]))
    if len(parts) != 2:
        raise ValueError("a token is code, system|code, |code or system|")
    system, code = unescape(parts[0]), unescape(parts[1])
    if not system and not code:
        raise ValueError("a token needs a system or a code")
    return TokenValue(system or None, code or None, no_system=not system)


def parse_of_type(text: str) -> TokenValue:
    """`:of-type` is `typesystem|typecode|value`; the index stores it as system=`typesystem|typecode`."""
    parts = split_escaped(text, "|")
    if len(parts) != 3 or not all(parts[1:]):
        raise ValueError("identifier:of-type needs type-system|type-code|value")
    return TokenValue(f"{unescape(parts[0])}|{unescape(parts[1])}", unescape(parts[2]))


def parse_reference(
    text: str, resource_types: frozenset[str], *, target_type: str | None = None
) -> ReferenceValue:
    """`Type/id`, a plain id, or an absolute URL/canonical (whose `Type/id` tail also matches)."""
    value = _HISTORY.sub("", unescape(text))
    if target_type is not None:
        if "/" in value:
            kind, _, ident = value.partition("/")
            if kind != target_type or not ident or "/" in ident:
                raise ValueError("a typed reference value is an id of that type")
            value = ident
        return ReferenceValue(target_type, value)
    if re.match(r"[a-z][a-z0-9+.-]*:", value):
        url = value.split("|", 1)[0]
        segments = url.rstrip("/").split("/")
        if len(segments) >= 2 and segments[-2] in resource_types:
            return ReferenceValue(segments[-2], segments[-1], url)
        return ReferenceValue(None, None, url)
    if "/" in value:
        kind, _, ident = value.partition("/")
        if kind not in resource_types or not ident or "/" in ident:
            raise ValueError("a reference is Type/id, an id or an absolute URL")
        return ReferenceValue(kind, ident)
    return ReferenceValue(None, value)


def parse_quantity(text: str) -> QuantityValue:
    """`[prefix]number`, `[prefix]number|system|code` or `[prefix]number||code`."""
    prefix, rest = split_prefix(text)
    parts = split_escaped(rest, "|")
    if len(parts) not in (1, 3):
        raise ValueError("a quantity is number, number|system|code or number||code")
    number = parse_number(unescape(parts[0]), prefix)
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, unescape(parts[1]) or None, unescape(parts[2]) or None)
