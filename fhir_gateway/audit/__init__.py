"""Tamper-evident audit trail: BALP AuditEvent builders (events), the hash chain (chain, tables),
the group-commit writer (writer.AuditLog), the read-only FHIR API (api) and the CLI (cli)."""
