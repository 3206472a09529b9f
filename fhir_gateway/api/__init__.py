"""FastAPI adapters: the FHIR REST router, health/readiness, metrics, and the stand-alone app."""
