"""Outbound delivery: the durable outbox and its dispatcher (outbox); routing rules come later."""
