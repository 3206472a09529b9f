"""Who may see what: the policy decision point, consent, clearance, labels, break-glass, redaction."""
