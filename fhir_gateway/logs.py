"""structlog JSON logging.

Log lines name routes (`/fhir/{res_type}/{res_id}`), never ids or values: no PHI.
"""

from __future__ import annotations

import logging

import structlog

_log = structlog.get_logger("fhir_gateway.http")


def configure_logging(level: str = "INFO") -> None:
    # pydicom's warnings quote element values, and a value can be PHI: only its errors are logged.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )


def request_log(method: str, route: str, status: int, seconds: float, request_id: str | None) -> None:
    _log.debug(
        "request",
        method=method,
        route=route,
        status=status,
        ms=round(seconds * 1000, 2),
        request_id=request_id,
    )
