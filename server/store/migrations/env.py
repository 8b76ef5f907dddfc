"""Alembic environment: runs on the connection ``server.store.migrate`` passes in.

Migrations are applied programmatically only (there is no ``alembic.ini``):
the caller opens an async connection and runs Alembic on it through
``AsyncConnection.run_sync``, as in Alembic's asyncio cookbook.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from server.store._schema import metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite ALTERs need table rebuilds; batch mode does them.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError(
            "the key store's migrations run through server.store.migrate(database_url), "
            "which supplies the connection"
        )
    _run(connection)


_main()
