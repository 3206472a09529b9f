"""FHIR R4 helpers: JSON, dates, element subsetting, bundles, references, CapabilityStatement."""
