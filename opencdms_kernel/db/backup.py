"""Backup and restore of the datastore with pg_dump/pg_restore (custom format).

The PostgreSQL client tools come with the pgserver wheel, so both work without installing
PostgreSQL, against the embedded server and an external one (pg_dump 16 also reads older
servers).  A backup is an ordinary ``pg_dump -Fc`` file: an administrator can restore it
with the stock ``pg_restore`` as well.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from opencdms_kernel.db.engine import Datastore, DatastoreError


def _tool(name: str) -> str:
    """Path of a PostgreSQL client tool: pgserver's own, else one on PATH."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH

        bundled = POSTGRES_BIN_PATH / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        raise DatastoreError(f"{name} not found: install the PostgreSQL client tools")
    return found


def _run(command: list[str], what: str) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise DatastoreError(f"{what} failed: {completed.stderr.strip() or completed.stdout.strip()}")


def backup(datastore: Datastore, target: Path) -> Path:
    """Write a custom-format dump of the whole database to ``target`` (written whole or not at all)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    _run(
        [_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(partial),
         "--dbname", datastore.libpq_uri],
        f"backup to {target}",
    )
    partial.replace(target)
    return target


def restore(datastore: Datastore, source: Path) -> None:
    """Replace the database's objects and rows with those of the dump ``source``, in one transaction."""
    if not source.is_file():
        raise DatastoreError(f"no backup file at {source}")
    _run(
        [_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--single-transaction",
         "--exit-on-error", "--dbname", datastore.libpq_uri, str(source)],
        f"restore from {source}",
    )
