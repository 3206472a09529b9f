"""Parsing of FHIR interaction URLs (REST paths and Bundle.entry.request.url) into their parts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from fhir_gateway.errors import BadRequest, NotFound

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")


@dataclass(slots=True, frozen=True)
class RequestTarget:
    """What an interaction URL addresses: `Type`, `Type/id`, `Type/id/_history/vid`, `Type?query`."""

    res_type: str | None
    res_id: str | None = None
    version_id: int | None = None
    operation: str | None = None  # "_history", "_search", "$validate" ...
    query: tuple[tuple[str, str], ...] = ()


def check_type(res_type: str, known: frozenset[str]) -> str:
    if res_type not in known:
        raise NotFound(
            "Unknown or unsupported resource type",
            expression=res_type if TYPE_RE.fullmatch(res_type) else None,
            code="not-supported",
        )
    return res_type


def check_id(res_id: str) -> str:
    if not ID_RE.fullmatch(res_id):
        raise BadRequest("The resource id is not a valid FHIR id ([A-Za-z0-9-.]{1,64})", code="value")
    return res_id


def parse_version(raw: str) -> int:
    if not raw.isdigit():
        raise NotFound("Unknown version id", code="not-found")
    return int(raw)


def parse_target(url: str, known: frozenset[str]) -> RequestTarget:
    """Parse a relative interaction URL as found in Bundle.entry.request.url."""
    split = urlsplit(url)
    parts = [p for p in split.path.split("/") if p]
    query = tuple(parse_qsl(split.query, keep_blank_values=True))
    if not parts:
        return RequestTarget(None, query=query)
    if parts[0].startswith("$") or parts[0] == "_history":
        return RequestTarget(None, operation=parts[0], query=query)
    res_type = check_type(parts[0], known)
    rest = parts[1:]
    if not rest:
        return RequestTarget(res_type, query=query)
    if rest[0].startswith("$") or rest[0] in ("_history", "_search"):
        return RequestTarget(res_type, operation=rest[0], query=query)
    res_id = check_id(rest[0])
    if len(rest) == 1:
        return RequestTarget(res_type, res_id, query=query)
    if rest[1] == "_history":
        if len(rest) == 2:
            return RequestTarget(res_type, res_id, operation="_history", query=query)
        if len(rest) == 3:
            return RequestTarget(res_type, res_id, parse_version(rest[2]), query=query)
    if rest[1].startswith("$") and len(rest) == 2:
        return RequestTarget(res_type, res_id, operation=rest[1], query=query)
    raise BadRequest(
        "Unsupported request URL shape", expression="Bundle.entry.request.url", code="not-supported"
    )
