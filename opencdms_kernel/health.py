"""Whether each part of the running system answers: datastore, bucket, archive, catalog, notebooks.

`opencdms up` runs :func:`check_parts` after start-up and prints one line per part (its
:class:`PartCheck`); a part that does not answer makes the command fail.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import duckdb
import sqlalchemy as sa

from opencdms_kernel.archive import ArchiveError, connect_archive
from opencdms_kernel.bucket import Bucket, BucketKeyError
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.migrate import current_revision, head_revision
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings


@dataclass(frozen=True)
class PartCheck:
    """Whether one part of the system answered, and where it is."""

    part: str
    ok: bool
    detail: str
    location: str


def observation_count(datastore: Datastore) -> int:
    """Number of observations in the store (all versions' latest rows)."""
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM observation")).scalar_one()


def _timed(check: Callable[[], str]) -> tuple[bool, str]:
    started = time.perf_counter()
    detail = check()
    return True, f"{detail} ({(time.perf_counter() - started) * 1000:.0f} ms)"


def check_datastore(datastore: Datastore) -> PartCheck:
    """The database answers and its schema is at the code's revision."""

    def probe() -> str:
        revision = current_revision(datastore)
        if revision != head_revision():
            raise RuntimeError(f"schema at {revision}, code expects {head_revision()}: run `opencdms db upgrade`")
        return f"schema {revision}, {observation_count(datastore):,} observations"

    location = datastore.url.render_as_string(hide_password=True)
    try:
        ok, detail = _timed(probe)
    except (sa.exc.SQLAlchemyError, RuntimeError) as exc:
        return PartCheck("datastore", False, str(exc), location)
    return PartCheck("datastore", ok, detail, location)


def check_bucket(bucket: Bucket) -> PartCheck:
    """An object can be written, read back and removed."""
    key = f"health/{uuid.uuid4().hex}"

    def probe() -> str:
        payload = b"ok"
        bucket.write_bytes(key, payload)
        try:
            if bucket.read_bytes(key) != payload:
                raise OSError("read back a different object")
        finally:
            bucket.fs.rm(bucket.path(key))
        return "write, read, delete"

    try:
        ok, detail = _timed(probe)
    except (OSError, BucketKeyError) as exc:
        return PartCheck("bucket", False, str(exc), bucket.url(""))
    return PartCheck("bucket", ok, detail, bucket.url(""))


def check_archive(bucket: Bucket) -> PartCheck:
    """DuckDB opens the Parquet archive and counts its observations."""

    def probe() -> str:
        connection = connect_archive(bucket)
        try:
            rows = connection.execute("SELECT count(*) FROM observations").fetchall()[0][0]
        finally:
            connection.close()
        return f"DuckDB over Parquet: {rows:,} observations"

    location = bucket.url("archive/observations")
    try:
        ok, detail = _timed(probe)
    except (OSError, duckdb.Error, ArchiveError) as exc:  # ArchiveError: an unreadable pointer or manifest
        return PartCheck("archive", False, str(exc), location)
    return PartCheck("archive", ok, detail, location)


def check_catalog(settings: Settings) -> PartCheck:
    """The intake catalog opens and its station and element tables read."""
    from opencdms_kernel.catalog import CATALOG_PATH, close_catalog, open_catalog

    catalog = open_catalog(settings)

    def probe() -> str:
        stations = catalog.stations.read()
        elements = catalog.elements.read()
        return f"{len(list(catalog.entries))} entries; {len(stations)} stations, {len(elements)} elements"

    try:
        ok, detail = _timed(probe)
    except (OSError, sa.exc.SQLAlchemyError, OpenCDMSError) as exc:
        return PartCheck("catalog", False, str(exc), str(CATALOG_PATH))
    finally:
        close_catalog(catalog)
    return PartCheck("catalog", ok, detail, str(CATALOG_PATH))


def check_notebooks(settings: Settings) -> PartCheck:
    """Every notebook in notebooks/ is registered (its parameters cell reads)."""
    from opencdms_kernel.notebooks import default_notebook_folder, open_registry

    folder = default_notebook_folder(settings)
    registry = open_registry(folder)
    problems = registry.problems()
    names = [info.name for info in registry.notebooks()]
    if problems:
        detail = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
        return PartCheck("notebooks", False, detail, str(folder))
    return PartCheck("notebooks", bool(names), f"{len(names)} registered: {', '.join(names)}", str(folder))


def check_parts(settings: Settings, datastore: Datastore, bucket: Bucket) -> list[PartCheck]:
    """Check every part that this installation runs."""
    return [
        check_datastore(datastore), check_bucket(bucket), check_archive(bucket),
        check_catalog(settings), check_notebooks(settings),
    ]
