"""The key store on SQLAlchemy: SQLite (aiosqlite) or PostgreSQL (asyncpg).

    store = await open_store("sqlite+aiosqlite:///var/keys.db")
    try:
        key = await store.get_key(contact_center_id, key_id)
    finally:
        await store.close()

``SqlKeyStore`` implements ``server.domain.store.KeyStore`` and its change
feed, ``ChangeFeed`` (with PostgreSQL LISTEN/NOTIFY for prompt wake-ups);
database failures surface as ``server.domain.errors.StoreUnavailable``.
"""

from server.store._engine import check_database_url, sqlite_file
from server.store._sql import (
    SqlKeyStore,
    migrate,
    open_store,
)

__all__ = [
    "SqlKeyStore",
    "check_database_url",
    "migrate",
    "open_store",
    "sqlite_file",
]
