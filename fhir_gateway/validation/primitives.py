"""Checks of FHIR R4 primitive values as they appear in JSON (https://hl7.org/fhir/R4/datatypes.html).

`check(type_name, value)` returns None when the value is fine, else (issue code, message). The JSON
kind comes first (a decimal given as a string, a boolean as "true"), then the lexical rules: the
regexes of the R4 definitions (compiled from the StructureDefinitions, so not hand-kept) plus what a
regex cannot say — calendar dates (no 30 February), the 32-bit integer range, timezone rules for
instant and dateTime, base64 that really decodes. Messages name the rule, never repeat more of the
value than the HL7 validator does for ids and codes.
"""

from __future__ import annotations

import binascii
import calendar
import functools
import re
from collections.abc import Callable

from fhir_gateway.validation.loader import primitive_regex

Problem = tuple[str, str]  # (OperationOutcome issue code, diagnostics)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
MAX_STRING = 1024 * 1024
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")
_DATETIME = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?"
)
_TIME = re.compile(r"(\d{2}):(\d{2}):(\d{2})(\.\d+)?")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_UUID = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WHITESPACE = re.compile(r"\s")
_CODE = re.compile(r"[^\s]+( [^\s]+)*")  # R4 code: no leading/trailing/double whitespace
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*[\s>/]")
_NUMBER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt", "decimal"})


@functools.cache
def _compiled(type_name: str) -> re.Pattern[str] | None:
    regex = primitive_regex(type_name)
    # ASCII: the spec's regexes are Java's, where \s, \S and \d are ASCII classes (a no-break space in
    # a string is \S there, and Arabic-Indic digits are not \d)
    return re.compile(regex, re.ASCII) if regex else None


def json_kind(type_name: str) -> str:
    if type_name == "boolean":
        return "boolean"
    if type_name in _NUMBER_TYPES:
        return "number"
    return "string"


def check(type_name: str, value: object) -> Problem | None:
    """None when `value` is a valid JSON representation of the primitive `type_name`."""
    if type_name == "boolean":
        if value is True or value is False:
            return None
        return "invalid", f"Error parsing JSON: the primitive value must be a boolean ({_kind(value)} found)"
    if type_name in _NUMBER_TYPES:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return (
                "invalid",
                f"Error parsing JSON: the primitive value must be a number ({_kind(value)} found)",
            )
        return _INTEGERS[type_name](value) if type_name in _INTEGERS else None
    if not isinstance(value, str):
        return "invalid", f"Error parsing JSON: the primitive value must be a string ({_kind(value)} found)"
    if value == "":
        return "invalid", "@value cannot be empty"
    special = _STRINGS.get(type_name)
    problem = special(value) if special is not None else None
    if problem is not None:
        return problem
    pattern = _compiled(type_name)  # the R4 definition's own regex, as a last word
    if pattern is not None and not pattern.fullmatch(value):
        return "invalid", f"The value is not a valid {type_name}"
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object" if isinstance(value, dict) else "null"


def _integer(low: int, label: str) -> Callable[[float], Problem | None]:
    def check_int(value: float) -> Problem | None:
        if isinstance(value, float) and not value.is_integer():
            return "invalid", f"The value '{value}' is not a valid integer"
        if isinstance(value, float):
            return "invalid", f"The value '{value}' is not a valid integer (it has a decimal point)"
        if value < low:
            return "invalid", f"The value '{value}' must be {label}"
        if value > INT_MAX:
            return "invalid", f"The value '{value}' is outside the range of a 32-bit integer"
        return None

    return check_int


_INTEGERS: dict[str, Callable[[float], Problem | None]] = {
    "integer": _integer(INT_MIN, f"at least {INT_MIN}"),
    "positiveInt": _integer(1, "at least 1"),
    "unsignedInt": _integer(0, "at least 0"),
}


def _string(value: str) -> Problem | None:
    if len(value) > MAX_STRING:
        return "too-long", "The string exceeds the maximum length of 1 MB"
    if value.isspace():
        return "invalid", "@value cannot be only whitespace"
    return None


def _markdown(value: str) -> Problem | None:
    problem = _string(value)
    if problem is None and _HTML_TAG.search(value):
        return "invalid", (
            "The markdown contains content that appears to be an embedded HTML tag. This will (or SHOULD) "
            "be escaped by the presentation layer"
        )
    return problem


def _code(value: str) -> Problem | None:
    if not _CODE.fullmatch(value):
        return "invalid", "The code has leading, trailing or repeated whitespace"
    return None


def _id(value: str) -> Problem | None:
    if len(value) > 64:
        return "invalid", f"Invalid id: Too long ({len(value)} chars)"
    if not _ID.fullmatch(value):
        return "invalid", "Invalid id: Invalid Characters"
    return None


def _uri(value: str) -> Problem | None:
    if _WHITESPACE.search(value):
        return "invalid", "URI values cannot have whitespace"
    if value.startswith("urn:oid:") and not _OID.fullmatch(value):
        return "invalid", "URI values starting with 'urn:oid:' must be valid OIDs"
    if value.startswith("urn:uuid:") and not _UUID.fullmatch(value.lower()):
        return "invalid", "URI values starting with 'urn:uuid:' must be valid UUIDs"
    return None


def _oid(value: str) -> Problem | None:
    return None if _OID.fullmatch(value) else ("invalid", "The value is not a valid oid (urn:oid:...)")


def _uuid(value: str) -> Problem | None:
    return None if _UUID.fullmatch(value) else ("invalid", "The value is not a valid uuid (urn:uuid:...)")


def _base64(value: str) -> Problem | None:
    compact = re.sub(r"\s+", "", value)
    if len(compact) % 4 or not _BASE64.fullmatch(compact):
        return "invalid", "The value is not a valid Base64 value"
    try:
        binascii.a2b_base64(compact.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        return "invalid", "The value is not a valid Base64 value"
    return None


def _calendar(year: str, month: str | None, day: str | None) -> bool:
    if int(year) == 0:
        return False
    if month is None:
        return True
    if not 1 <= int(month) <= 12:
        return False
    return day is None or 1 <= int(day) <= calendar.monthrange(int(year), int(month))[1]


def _clock(hour: str, minute: str, second: str | None, zone: str | None) -> bool:
    if int(hour) > 23 or int(minute) > 59 or (second is not None and int(second) > 60):
        return False
    if zone and zone != "Z":
        zh, zm = int(zone[1:3]), int(zone[4:6])
        return zm <= 59 and (zh < 14 or (zh == 14 and zm == 0))
    return True


def _date(value: str) -> Problem | None:
    match = _DATE.fullmatch(value)
    if match is None or not _calendar(*match.groups()):
        return "invalid", "Not a valid date (expected YYYY, YYYY-MM or YYYY-MM-DD)"
    return None


def _date_time(value: str) -> Problem | None:
    match = _DATETIME.fullmatch(value)
    if match is None:
        return "invalid", "Not a valid dateTime"
    year, month, day, hour, minute, second, _fraction, zone = match.groups()
    if not _calendar(year, month, day):
        return "invalid", "Not a valid dateTime (no such date)"
    if hour is None:
        return None
    if second is None:
        return "invalid", "Not a valid dateTime: a time must have seconds"
    if zone is None:
        return "invalid", "Not a valid dateTime: if a time is specified, a timezone must be specified"
    if not _clock(hour, minute, second, zone):
        return "invalid", "Not a valid dateTime (no such time)"
    return None


def _instant(value: str) -> Problem | None:
    match = _DATETIME.fullmatch(value)
    if match is None or match.group(6) is None or match.group(8) is None:
        return "invalid", "Not a valid instant: it needs date, time with seconds, and timezone"
    year, month, day, hour, minute, second, _fraction, zone = match.groups()
    if not _calendar(year, month, day) or not _clock(hour, minute, second, zone):
        return "invalid", "Not a valid instant (no such date or time)"
    return None


def _time(value: str) -> Problem | None:
    match = _TIME.fullmatch(value)
    if match is None or not _clock(match[1], match[2], match[3], None):
        return "invalid", "Not a valid time (expected hh:mm:ss)"
    return None


_STRINGS: dict[str, Callable[[str], Problem | None]] = {
    "string": _string,
    "markdown": _markdown,
    "code": _code,
    "id": _id,
    "uri": _uri,
    "url": _uri,
    "canonical": _uri,
    "oid": _oid,
    "uuid": _uuid,
    "base64Binary": _base64,
    "date": _date,
    "dateTime": _date_time,
    "instant": _instant,
    "time": _time,
    "xhtml": lambda value: None,  # narrative.py checks the markup
}
