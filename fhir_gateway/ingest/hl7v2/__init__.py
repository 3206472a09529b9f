"""HL7 v2 ingest: ER7 tokenizer, v2-to-FHIR mapping, ACKs, idempotency, error queue, MLLP and HTTP."""
