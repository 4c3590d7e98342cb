"""Alembic plumbing: run the migrations shipped with nicflow and check a database's revision."""

from __future__ import annotations

import logging
from pathlib import Path

import migrations
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from nicflow.ledger.errors import SchemaNotUpgradedError

logger = logging.getLogger(__name__)

UPGRADE_COMMAND = "nicflow db upgrade"


def migrations_directory() -> Path:
    """Return the Alembic script directory of the installed package, wherever the caller runs."""
    if migrations.__file__ is None:
        # An editable install made before migrations/__init__.py existed maps it as a namespace.
        raise RuntimeError(
            f"the migrations package is imported as a namespace package from {list(migrations.__path__)}: "
            "reinstall nicflow (pip install -e .) so that migrations/__init__.py is found"
        )
    return Path(migrations.__file__).parent


def normalize_url(url: str | URL) -> URL:
    """Parse a SQLAlchemy URL; a bare `postgresql://` gets the psycopg 3 driver nicflow installs."""
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str | URL) -> str:
    """Return the URL for messages and logs, with any password masked."""
    return normalize_url(url).render_as_string(hide_password=True)


def alembic_config(url: str | URL) -> Config:
    """Build an Alembic config for `url` without reading alembic.ini."""
    config = Config()
    config.set_main_option("script_location", str(migrations_directory()))

    # Config values go through configparser interpolation, so a literal % must be doubled.
    rendered = normalize_url(url).render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the ledger database at `url` to `revision` (the newest by default).

    Creates the schema on an empty database. For SQLite the file is created when missing.
    """
    logger.info("upgrading ledger database %s to %s", display_url(url), revision)
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str:
    """Return the newest revision shipped with this nicflow."""
    head = _script_directory().get_current_head()
    if head is None:
        raise RuntimeError(f"no Alembic revisions found in {migrations_directory() / 'versions'}")
    return head


def _script_directory() -> ScriptDirectory:
    return ScriptDirectory(str(migrations_directory()))


def check_schema(engine: Engine) -> None:
    """Raise SchemaNotUpgradedError unless the database is at the newest revision."""
    expected = head_revision()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()

    if current == expected:
        return
    where = display_url(engine.url)
    if current is None:
        raise SchemaNotUpgradedError(
            f"ledger database {where} has no nicflow schema: run `{UPGRADE_COMMAND}` to create it"
        )
    known = {script.revision for script in _script_directory().walk_revisions()}
    if current not in known:
        raise SchemaNotUpgradedError(
            f"ledger database {where} is at revision {current}, which this nicflow does not know "
            f"(expected {expected}): upgrade nicflow to the version that migrated it"
        )
    raise SchemaNotUpgradedError(
        f"ledger database {where} is at revision {current}, this nicflow expects {expected}: "
        f"run `{UPGRADE_COMMAND}`"
    )
