"""The SQL store: one schema, two dialects (SQLite embedded, PostgreSQL in production)."""
