"""Schema migrations (alembic), run programmatically on an open datastore.

An upgrade also sets up the installation's database roles (``db/roles.py``): it creates
them the first time, gives the schema owner every object and sets the grants, so that what a
migration adds is owned and granted like the rest.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from opencdms_kernel.db import roles
from opencdms_kernel.db.engine import Datastore, DatastoreError
from opencdms_kernel.errors import OpenCDMSError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class MigrationError(OpenCDMSError):
    """A migration cannot be applied to the data as it is; the message says what to fix."""


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(datastore: Datastore, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` and set up the database roles; returns the revision
    the database is at afterwards."""
    if datastore.settings is None:
        raise DatastoreError("open the datastore with Datastore.open(settings) to upgrade it")
    config = _alembic_config()
    with datastore.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    with datastore.engine.begin() as connection:
        roles.ensure_roles(connection, datastore.settings)
    return current_revision(datastore)


def downgrade(datastore: Datastore, revision: str) -> str | None:
    """Take the schema back to ``revision``; returns the revision the database is at afterwards.

    The database roles stay (they are cluster-wide); ``roles.drop_roles`` removes them.
    """
    config = _alembic_config()
    with datastore.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    return current_revision(datastore)


def current_revision(datastore: Datastore) -> str | None:
    """The revision the database is at, or None for an empty database."""
    with datastore.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision the installed code knows."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()
