"""Alembic environment: the URL comes from `service.config`, the target from `service.tables`."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from service import config, tables

# One arbitrary key: concurrent `migrate` runs (two Jobs, a Job and `make run`) take turns.
MIGRATION_LOCK = 7_420_117


def _url() -> str:
    url = context.config.attributes.get("url")
    return url if url else config.load(os.environ).sqlalchemy_url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=tables.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
        connection.commit()
        try:
            context.configure(
                connection=connection, target_metadata=tables.metadata, compare_type=True
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
            connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
