"""Index rows extracted from one resource version, one dataclass per search-parameter type.

Rows are written in the same transaction as the resource (store/schema.py has one table per type).
Dates are half-open ranges [low, high) in epoch seconds (UTC); an open end is +/-inf, stored as
the sentinels below so both SQLite and PostgreSQL can compare them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DATE_MIN = -1.0e15
DATE_MAX = 1.0e15


@dataclass(slots=True, frozen=True)
class StringRow:
    param: str
    value: str  # normalised: case- and accent-folded (see normalize_string)
    exact: str  # as written


@dataclass(slots=True, frozen=True)
class TokenRow:
    param: str
    system: str | None
    code: str | None
    text: str | None = None  # normalised display/text, for :text


@dataclass(slots=True, frozen=True)
class ReferenceRow:
    param: str
    target_type: str | None
    target_id: str | None
    url: str | None = None  # absolute or canonical reference, as written (version suffix stripped)


@dataclass(slots=True, frozen=True)
class DateRow:
    param: str
    low: float
    high: float


@dataclass(slots=True, frozen=True)
class NumberRow:
    param: str
    value: float


@dataclass(slots=True, frozen=True)
class QuantityRow:
    param: str
    value: float
    system: str | None
    code: str | None
    unit: str | None


@dataclass(slots=True, frozen=True)
class UriRow:
    param: str
    value: str


@dataclass(slots=True, frozen=True)
class CompositeRow:
    """One composite value: the first component is a token (or reference: system=type, code=id);
    the second is any of token/quantity/date/string/number; an optional third is a number."""

    param: str
    c1_system: str | None
    c1_code: str | None
    c2_system: str | None = None
    c2_code: str | None = None
    c2_num: float | None = None
    c2_low: float | None = None
    c2_high: float | None = None
    c2_text: str | None = None
    c3_num: float | None = None


@dataclass(slots=True)
class IndexRows:
    strings: list[StringRow] = field(default_factory=list)
    tokens: list[TokenRow] = field(default_factory=list)
    references: list[ReferenceRow] = field(default_factory=list)
    dates: list[DateRow] = field(default_factory=list)
    numbers: list[NumberRow] = field(default_factory=list)
    quantities: list[QuantityRow] = field(default_factory=list)
    uris: list[UriRow] = field(default_factory=list)
    composites: list[CompositeRow] = field(default_factory=list)
