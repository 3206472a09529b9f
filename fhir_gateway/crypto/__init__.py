"""PHI field-level encryption: envelope keys (keyring, keystore), which elements are PHI (fields),
blind indexes for exact search (blind_index, search), key rotation (rotation) and the seam the
write/read/search paths call (service.PhiCrypto).
"""
