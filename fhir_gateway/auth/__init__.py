"""Authentication: bearer JWTs in, RequestContext out.

    verifier.py  TokenVerifier: signature (JWKS RS*/ES*, development HS256), iss/aud/exp/nbf, sub
    jwks.py      the IdP's JWK Set: fetched from file:// or http(s)://, cached, refetched on a new kid
    claims.py    verified claims → RequestContext (roles, scopes, patient, purpose of use, fhirUser)
    scopes.py    SMART v1/v2 scope grammar and `allows(scopes, context, type, interaction)`
    tokens.py    `mint_token` for `fhir-gateway token` (never in production), `context_from_token`
    smart.py     `GET [base]/.well-known/smart-configuration`

Enforcement (what a context may see and do) lives in privacy/ (access.py, grants.py, clearance.py).
"""
