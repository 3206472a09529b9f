"""Authentication: bearer JWTs in, RequestContext out (enforcement of scopes/roles: privacy/access.py)."""
