"""Alembic environment for the cloud schema.

Run through :func:`cloud.db.upgrade`, which hands over an open connection in
``config.attributes["connection"]``; ``alembic -x url=...`` style use gets a URL instead.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from cloud.models import metadata

PG_LOCK_KEY = 0x70616B6C  # "pakl": one migrator at a time per PostgreSQL database

config = context.config


def _run(connection: sa.engine.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: call cloud.db.upgrade(url) or pass -x url=...")
    from cloud.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():  # pragma: no cover - we never generate SQL scripts offline
    raise RuntimeError("offline migrations are not supported; run cloud.db.upgrade(url)")
run_migrations_online()
