"""Alembic environment for the nicflow ledger.

The database URL comes from the config's `sqlalchemy.url` (set by `nicflow.ledger.upgrade()`)
or, when that is empty, from the NICFLOW_DATABASE_URL environment variable.
"""

from __future__ import annotations

import logging
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

from nicflow.ledger.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

logger = logging.getLogger("alembic.env")

target_metadata = Base.metadata


def database_url() -> str:
    """Return the URL to migrate, raising when neither source sets one."""
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("NICFLOW_DATABASE_URL", "")
    if not url:
        raise RuntimeError(
            "no database URL: set NICFLOW_DATABASE_URL or run `nicflow db upgrade` with a URL"
        )
    return url


def run_migrations_offline() -> None:
    """Print the SQL of the migrations instead of running them (`alembic upgrade --sql`)."""
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a fresh connection, each revision in one transaction."""
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
