"""Adapters that turn inbound data (files, HL7v2, DICOM) into Bundles for `Gateway.submit`."""
