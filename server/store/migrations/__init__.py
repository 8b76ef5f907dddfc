"""Alembic migrations of the key store; run them with ``server.store.migrate``."""
