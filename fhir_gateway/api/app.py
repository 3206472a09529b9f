"""Assembling the stand-alone app and the mountable FHIR router."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from fhir_gateway import __version__
from fhir_gateway.api.changes import build_changes_router
from fhir_gateway.api.dicomweb import build_dicomweb_router
from fhir_gateway.api.fastpath import add_read_fast_path
from fhir_gateway.api.health import build_health_router
from fhir_gateway.api.hl7v2 import build_hl7_router
from fhir_gateway.api.metrics import MetricsMiddleware
from fhir_gateway.api.provenance import build_provenance_router
from fhir_gateway.api.rest import build_router
from fhir_gateway.api.runtime import Runtime
from fhir_gateway.audit.api import build_audit_router
from fhir_gateway.auth.smart import build_smart_router
from fhir_gateway.logs import configure_logging
from fhir_gateway.privacy.breakglass_api import build_breakglass_router
from fhir_gateway.privacy.deid_api import build_deid_router
from fhir_gateway.settings import Settings, load_settings
from fhir_gateway.validation.api import build_validate_router


def fhir_router(
    settings: Settings | None = None,
    *,
    prefix: str = "/fhir",
    runtime: Runtime | None = None,
) -> APIRouter:
    """The FHIR API as a router; its lifespan opens the store, so include it with `app.include_router`.

    Operation routers come before the REST interactions, so `/Patient/$validate` is an operation
    and never read as the id of a Patient.
    """
    runtime = runtime or Runtime(settings or load_settings())
    router = APIRouter(lifespan=runtime.lifespan)
    router.include_router(build_smart_router(runtime, prefix))
    router.include_router(build_validate_router(runtime, prefix))
    router.include_router(build_audit_router(runtime, prefix, runtime.audit))
    wake = runtime.breakglass.dispatcher.wake
    router.include_router(build_breakglass_router(runtime, prefix, runtime.audit, on_enqueue=wake))
    router.include_router(build_provenance_router(runtime, prefix))
    router.include_router(build_changes_router(runtime, prefix))
    router.include_router(build_deid_router(runtime, prefix))
    router.include_router(build_router(runtime, prefix))
    return router


def create_app(settings: Settings | None = None, *, primary: bool = True) -> FastAPI:
    """The stand-alone server app. `primary=False` for every worker process but one (api/serve.py):
    it serves HTTP only, leaving the listeners and background loops to the primary."""
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    runtime = Runtime(settings, primary=primary)
    app = FastAPI(title="fhir_gateway", version=__version__)  # the FHIR router brings the lifespan
    app.state.runtime = runtime
    app.include_router(build_health_router(runtime))
    app.include_router(fhir_router(runtime=runtime))
    app.include_router(build_hl7_router(runtime))
    app.include_router(build_dicomweb_router(runtime, ingester=runtime.dicom))
    add_read_fast_path(app, "/fhir", runtime.gateway.types)  # inside the metrics middleware
    app.add_middleware(MetricsMiddleware)
    return app
