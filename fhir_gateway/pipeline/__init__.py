"""Write-pipeline stages: small, ordered, configured in settings (`pipeline: [module:factory, ...]`)."""
