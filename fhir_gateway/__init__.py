"""fhir_gateway: a FHIR R4 interoperability server that can also be mounted as a FastAPI plugin.

`create_app(settings)` builds the stand-alone server; `fhir_router(settings)` returns the FHIR REST
API as an `APIRouter` that another FastAPI application can include.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fastapi import APIRouter, FastAPI

    from fhir_gateway.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The stand-alone server: FHIR API under `/fhir`, health, readiness and metrics."""
    from fhir_gateway.api.app import create_app as _create_app

    return _create_app(settings)


def fhir_router(settings: Settings | None = None, **kwargs: Any) -> APIRouter:
    """The FHIR REST API as a router to mount in another FastAPI app (the "plugin")."""
    from fhir_gateway.api.app import fhir_router as _fhir_router

    return _fhir_router(settings, **kwargs)


__all__ = ["create_app", "fhir_router", "__version__"]
