"""Resource (de)serialisation with orjson: parse once on the way in, serialise once on the way out."""

from __future__ import annotations

from typing import Any

import orjson

from fhir_gateway.errors import BadRequest

Resource = dict[str, Any]


def loads(raw: bytes | str, *, what: str = "body") -> Any:
    """Parse JSON, turning any syntax error into a 400 that says where (line/column), not what."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The {what} is not valid JSON (line {exc.lineno}, column {exc.colno})", code="structure"
        ) from None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def dumps_pretty(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2)
