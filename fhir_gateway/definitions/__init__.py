"""Loaders for the compiled R4 definitions shipped in fhir_gateway/profiles and fhir_gateway/terminology."""
