"""FHIR date, dateTime and instant values as half-open UTC ranges [low, high) in epoch seconds.

A partial date is the whole period it names ("2020" is all of 2020), and a value with seconds is
that second (or that fraction, to the precision written). Two departures from the R4 regexes, both
so that search values written the usual way are understood, and both harmless for stored data:
- a dateTime with a time but no zone is taken as UTC (R4 says such values SHALL have a zone, so this
  only matters for non-conformant data, and a fixed choice keeps search results stable);
- a time may stop at minutes (`2020-03-04T10:30Z`), meaning that whole minute.
Everything else the R4 date/dateTime/instant regexes reject raises ValueError, as does a day that
its month does not have (`2021-02-29`).
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

# R4 datatypes.html date/dateTime/instant regexes in one (an instant is a dateTime to the second or
# finer), with named groups; year 0000 is excluded as R4 excludes it.
_DATETIME = re.compile(
    r"(?P<y>[0-9](?:[0-9](?:[0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(?:-(?P<m>0[1-9]|1[0-2])(?:-(?P<d>0[1-9]|[12][0-9]|3[01])"
    r"(?:T(?P<H>[01][0-9]|2[0-3]):(?P<M>[0-5][0-9])(?::(?P<S>[0-5][0-9]|60)(?P<f>\.[0-9]+)?)?"
    r"(?P<tz>Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))?)?)?)?"
)


def date_range(text: str) -> tuple[float, float]:
    """The [low, high) range a FHIR date/dateTime/instant denotes; ValueError when it is none of them."""
    m = _DATETIME.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError("not a FHIR date, dateTime or instant")
    y, mo, d, hh, mm, ss, fraction, tz = m.groups()
    year = int(y)
    if mo is None:
        return _epoch_day(year, 1, 1), _epoch_day(year + 1, 1, 1)
    month = int(mo)
    if d is None:
        end = _epoch_day(year + 1, 1, 1) if month == 12 else _epoch_day(year, month + 1, 1)
        return _epoch_day(year, month, 1), end
    day = int(d)
    if day > 28 and day > _month_length(year, month):
        raise ValueError("day out of range for month")
    start = _epoch_day(year, month, day)
    if hh is None:
        return start, start + 86400.0
    start += int(hh) * 3600 + int(mm) * 60 - _offset_seconds(tz)
    if ss is None:
        return start, start + 60.0
    start += min(int(ss), 59)  # a leap second is folded into :59
    if fraction:
        start += float(fraction)
        return start, start + 10.0 ** (1 - len(fraction))
    return start, start + 1.0


def value_range(value: Any) -> tuple[float, float] | None:
    """date_range of a value read from JSON, or None when it is not a readable date string."""
    if not isinstance(value, str):
        return None
    try:
        return date_range(value)
    except ValueError:
        return None


def period_range(period: Any) -> tuple[float, float] | None:
    """A Period as [start, end); a side that is absent is open (-inf or +inf).

    None when the period has neither side or a side is unreadable: half a bad period is not a
    narrower good one.
    """
    if not isinstance(period, dict):
        return None
    start, end = period.get("start"), period.get("end")
    low, high = value_range(start), value_range(end)
    unreadable = (start is not None and low is None) or (end is not None and high is None)
    if unreadable or (start is None and end is None):
        return None
    return (low[0] if low else -math.inf), (high[1] if high else math.inf)


def timing_range(timing: Any) -> tuple[float, float] | None:
    """A Timing by its outer limits: its events and repeat.boundsPeriod, the schedule ignored (R4
    search.html: "a schedule that specifies every second day ... includes 1-Feb 2013")."""
    if not isinstance(timing, dict):
        return None
    events = timing.get("event")
    events = events if isinstance(events, list) else [events]
    spans = [span for event in events if (span := value_range(event)) is not None]
    repeat = timing.get("repeat")
    if isinstance(repeat, dict) and (bounds := period_range(repeat.get("boundsPeriod"))) is not None:
        spans.append(bounds)
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def _epoch_day(year: int, month: int, day: int) -> float:
    """Seconds from 1970-01-01 to the start of that (proleptic Gregorian) day, UTC.

    Plain arithmetic (days_from_civil, H. Hinnant) rather than calendar.timegm: it is several times
    faster on the write path, and it has no year limit, so the end of 9999 is still a number.
    """
    y = year - (month <= 2)
    era = y // 400
    year_of_era = y - era * 400
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    day_of_era = year_of_era * 365 + year_of_era // 4 - year_of_era // 100 + day_of_year
    return float((era * 146097 + day_of_era - 719468) * 86400)


def _month_length(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def _offset_seconds(tz: str | None) -> int:
    if not tz or tz == "Z":
        return 0
    seconds = int(tz[1:3]) * 3600 + int(tz[4:6]) * 60
    return seconds if tz[0] == "+" else -seconds


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_second: tuple[int, str] = (0, "1970-01-01T00:00:00")  # the last second formatted, and its text


def format_instant(epoch: float) -> str:
    """An R4 instant with millisecond precision in UTC, e.g. 2024-01-02T03:04:05.123+00:00.

    The same text as `(epoch 1970 + timedelta(seconds=epoch)).isoformat(timespec="milliseconds")`
    (microseconds rounded as timedelta rounds them, then truncated to milliseconds), with the part
    up to the second kept from the previous call: one write formats several instants within the same
    second (each version's meta.lastUpdated, each Provenance.recorded), and building a datetime for
    each was ~2 % of HL7 ingest.
    """
    global _second
    fraction, whole = math.modf(epoch)
    seconds, micro = divmod(int(whole) * 1_000_000 + round(fraction * 1_000_000), 1_000_000)
    if _second[0] != seconds:
        _second = (seconds, (_EPOCH + timedelta(seconds=seconds)).isoformat()[:19])
    return f"{_second[1]}.{micro // 1000:03d}+00:00"


def now_instant() -> str:
    """The current time as an R4 instant (meta.lastUpdated, Bundle.timestamp, ...)."""
    return format_instant(time.time())
