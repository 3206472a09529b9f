"""What the v2 mapping tests share: an ER7 text mapped, taken and every resource valid R4."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from fhir_gateway.ingest.hl7v2.er7 import parse
from fhir_gateway.ingest.hl7v2.messages import MappedMessage, map_message


def mapped(text: str) -> MappedMessage:
    """`map_message` of `text`; the message must be taken and each resource valid (R4B models)."""
    result = map_message(parse(text))
    assert not result.failed, result.issues
    for entry in result.bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return result


def of(result: MappedMessage, res_type: str) -> list[dict[str, Any]]:
    """The mapped resources of one type, in Bundle order."""
    return [e["resource"] for e in result.bundle["entry"] if e["resource"]["resourceType"] == res_type]
