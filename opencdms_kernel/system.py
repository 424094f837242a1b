"""The running system as a whole: loading the demo dataset and checking that each part answers."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Callable

import duckdb
import sqlalchemy as sa

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.migrate import current_revision, head_revision
from opencdms_kernel.demo_data import DemoDataset, DemoSpec, generate_demo_data
from opencdms_kernel.ingest import IngestRequest, IngestResult, ingest_many, load_mapping
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations


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


def demo_requests(dataset: DemoDataset) -> list[tuple[str, Callable[[], IngestRequest]]]:
    """Ingest requests for every file of the demo dataset, daily files first."""
    aws_mapping = load_mapping(dataset.aws_mapping)
    requests: list[tuple[str, Callable[[], IngestRequest]]] = [
        (str(path), lambda path=path: IngestRequest.from_path(path)) for path in dataset.daily_files
    ]
    requests += [
        (str(path), lambda path=path: IngestRequest.from_path(path, aws_mapping))
        for path in dataset.aws_files
    ]
    return requests


def load_demo(
    settings: Settings,
    datastore: Datastore,
    bucket: Bucket,
    spec: DemoSpec = DemoSpec(),
    on_generated: Callable[[DemoDataset], None] | None = None,
    on_file: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Generate the demo dataset under var/demo (once) and ingest it."""
    folder = settings.var_dir / "demo"
    dataset = generate_demo_data(folder, spec)
    if on_generated is not None:
        on_generated(dataset)
    import_stations(datastore, dataset.stations_csv)
    return ingest_many(demo_requests(dataset), datastore, bucket, settings.user, progress=on_file)


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
            if bucket.fs.cat_file(bucket.path(key)) != payload:
                raise OSError("read back a different object")
        finally:
            bucket.fs.rm(bucket.path(key))
        return "write, read, delete"

    try:
        ok, detail = _timed(probe)
    except OSError as exc:
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
    except (OSError, duckdb.Error) as exc:
        return PartCheck("archive", False, str(exc), location)
    return PartCheck("archive", ok, detail, location)


def check_parts(datastore: Datastore, bucket: Bucket) -> list[PartCheck]:
    """Check every part that this installation runs."""
    return [check_datastore(datastore), check_bucket(bucket), check_archive(bucket)]
