"""FHIR date/dateTime/instant values as half-open UTC ranges, and instants written back."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_gateway.fhir.dates import (
    date_range,
    format_instant,
    now_instant,
    period_range,
    timing_range,
    value_range,
)


def utc(*parts: int) -> float:
    return float(calendar.timegm((*parts, 0, 0, 0)[:6]))


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", utc(2020, 1, 1), utc(2021, 1, 1)),
        ("2020-03", utc(2020, 3, 1), utc(2020, 4, 1)),
        ("2020-12", utc(2020, 12, 1), utc(2021, 1, 1)),
        ("2020-02-29", utc(2020, 2, 29), utc(2020, 3, 1)),
        ("2020-03-04T10:30Z", utc(2020, 3, 4, 10, 30), utc(2020, 3, 4, 10, 31)),
        ("2020-03-04T10:30:15Z", utc(2020, 3, 4, 10, 30, 15), utc(2020, 3, 4, 10, 30, 16)),
        ("2020-03-04T10:30:15+02:00", utc(2020, 3, 4, 8, 30, 15), utc(2020, 3, 4, 8, 30, 16)),
        ("2020-03-04T10:30:15-05:30", utc(2020, 3, 4, 16, 0, 15), utc(2020, 3, 4, 16, 0, 16)),
        ("2020-03-04T10:30:15+14:00", utc(2020, 3, 3, 20, 30, 15), utc(2020, 3, 3, 20, 30, 16)),
        ("2020-03-04T10:30:15", utc(2020, 3, 4, 10, 30, 15), utc(2020, 3, 4, 10, 30, 16)),  # no zone: UTC
        ("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59), utc(2017, 1, 1)),  # leap second folded
        ("0001-01-01", utc(1, 1, 1), utc(1, 1, 2)),
        ("9999-12", utc(9999, 12, 1), utc(9999, 12, 1) + 31 * 86400),
        ("1969-07-20T20:17:40Z", -14182940.0, -14182939.0),
    ],
)
def test_ranges(text: str, low: float, high: float) -> None:
    assert date_range(text) == (low, high)


def test_fractions_set_the_precision() -> None:
    low, high = date_range("2020-03-04T10:30:15.250Z")
    assert low == pytest.approx(utc(2020, 3, 4, 10, 30, 15) + 0.25)
    assert high - low == pytest.approx(0.001, abs=1e-6)  # epoch seconds as floats carry ~1e-7 s
    low, high = date_range("2020-03-04T10:30:15.5+01:00")
    assert (low, high) == pytest.approx((utc(2020, 3, 4, 9, 30, 15) + 0.5, utc(2020, 3, 4, 9, 30, 16)))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "20",
        "0000",
        "2020-13",
        "2020-00",
        "2020-1",
        "2021-02-29",
        "1900-02-29",
        "2020-04-31",
        "2020-03-32",
        "2020-03-04T",
        "2020-03-04T24:00Z",
        "2020-03-04T10Z",
        "2020-03-04T10:60Z",
        "2020-03-04T10:30:61Z",
        "2020-03-04T10:30:00+15:00",
        "2020-03-04T10:30:00+1:00",
        "2020-03-04 10:30:00Z",
        " 2020",
        "2020-03-04Z",
        "2020-03-04T10:30:00.Z",
        "twenty",
        "2020/03/04",
    ],
)
def test_invalid_values_raise(text: str) -> None:
    with pytest.raises(ValueError):
        date_range(text)


def test_non_strings_raise_value_error() -> None:
    with pytest.raises(ValueError):
        date_range(2020)  # type: ignore[arg-type]


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)))
def test_any_instant_is_its_own_second(moment: datetime) -> None:
    moment = moment.replace(microsecond=0)
    low, high = date_range(moment.isoformat(timespec="seconds"))
    assert low == (moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()
    assert high == low + 1


@given(st.dates(min_value=datetime(1, 1, 1).date(), max_value=datetime(9999, 12, 31).date()))
def test_any_date_nests_in_its_month_and_year(day: datetime) -> None:
    d_low, d_high = date_range(day.isoformat())
    m_low, m_high = date_range(day.isoformat()[:7])
    y_low, y_high = date_range(day.isoformat()[:4])
    assert y_low <= m_low <= d_low < d_high <= m_high <= y_high
    assert d_high - d_low == 86400


@given(st.text(max_size=40))
def test_arbitrary_text_raises_only_value_error(text: str) -> None:
    try:
        low, high = date_range(text)
    except ValueError:
        return
    assert low < high


def test_value_range_is_lenient() -> None:
    assert value_range("2020") == date_range("2020")
    assert value_range("2020-02-30") is None
    assert value_range(None) is None
    assert value_range(["2020"]) is None


def test_period_range() -> None:
    assert period_range({"start": "2020", "end": "2021-06"}) == (utc(2020, 1, 1), utc(2021, 7, 1))
    assert period_range({"start": "2020"}) == (utc(2020, 1, 1), math.inf)
    assert period_range({"end": "2020"}) == (-math.inf, utc(2021, 1, 1))
    for unreadable in ({}, {"start": "x"}, {"start": "2020", "end": 5}, None, "2020", [{"start": "2020"}]):
        assert period_range(unreadable) is None


def test_timing_range_is_the_outer_limits() -> None:
    timing = {
        "event": ["2020-03-01", "bad", "2020-01-15T10:00:00Z"],
        "repeat": {"boundsPeriod": {"start": "2019-12-31", "end": "2020-02"}},
    }
    assert timing_range(timing) == (utc(2019, 12, 31), utc(2020, 3, 2))
    assert timing_range({"event": "2020"}) == date_range("2020")
    assert timing_range({"repeat": {"boundsPeriod": {"start": "2020"}}}) == (utc(2020, 1, 1), math.inf)
    assert timing_range({"repeat": {"frequency": 2}}) is None
    assert timing_range({"event": [None]}) is None
    assert timing_range("2020") is None


def test_format_instant() -> None:
    assert format_instant(0) == "1970-01-01T00:00:00.000+00:00"
    assert format_instant(1704164645.123) == "2024-01-02T03:04:05.123+00:00"
    stamp = utc(2024, 1, 2, 3, 4, 5) + 0.5
    assert date_range(format_instant(stamp))[0] == stamp


@given(st.floats(min_value=-6.2e10, max_value=2.5e11, allow_nan=False, allow_infinity=False))
def test_format_instant_writes_what_datetime_writes(epoch: float) -> None:
    # the second is kept from the previous call: interleave another second to exercise both ways
    format_instant(epoch + 7200)
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=epoch)
    expected = moment.isoformat(timespec="milliseconds")
    assert format_instant(epoch) == expected
    assert format_instant(epoch) == expected


def test_now_instant_is_an_instant_for_now() -> None:
    text = now_instant()
    low, high = date_range(text)
    assert high - low == pytest.approx(0.001, abs=1e-6)
    now = datetime.now(UTC).timestamp()
    assert now - 5 < low <= now
    assert datetime.fromisoformat(text) - datetime.now(UTC) < timedelta(seconds=5)
