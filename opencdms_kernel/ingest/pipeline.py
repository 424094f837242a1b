"""Ingest of one file, start to end: ledger, parse, validate, load, reject report.

A file is loaded atomically: its accepted rows, its ledger entry and the counts commit together
or not at all.  The same object (key and checksum) a second time adds nothing.  A bad file is
recorded as failed in the ledger with the reason, and the next file goes on.
"""

from __future__ import annotations

import hashlib
import io
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Iterable

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import element, ingest_ledger, station
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.ingest.load import (
    MergeCounts,
    SeriesDefaults,
    copy_to_staging,
    identify_writer,
    lock_ingest,
    merge_staging,
    source_id,
)
from opencdms_kernel.ingest.mapping import DEFAULT_LONG_MAPPING, Mapping
from opencdms_kernel.ingest.reader import ParsedFile, read_csv
from opencdms_kernel.ingest.validate import REJECT_SCHEMA, ElementInfo, validate_rows

REJECTS_PREFIX = "rejects"


class IngestStatus(str, Enum):
    """Outcome of one file, as recorded in the ledger."""

    LOADED = "loaded"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass(frozen=True)
class IngestResult:
    """What happened to one file."""

    object_key: str
    status: IngestStatus
    ledger_id: int | None  # None only for a file that could not even be read
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    reject_report: str | None = None
    rejects: pa.Table | None = None
    error: str | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class IngestRequest:
    """One file to ingest: its bytes, the key it is known by, and its mapping."""

    object_key: str
    data: bytes
    mapping: Mapping = DEFAULT_LONG_MAPPING

    @classmethod
    def from_path(cls, path: Path, mapping: Mapping = DEFAULT_LONG_MAPPING) -> "IngestRequest":
        """A local file, known by its absolute ``file://`` URL."""
        resolved = path.resolve()
        return cls(object_key=resolved.as_uri(), data=resolved.read_bytes(), mapping=mapping)

    @classmethod
    def from_bucket(cls, bucket: Bucket, key: str, mapping: Mapping = DEFAULT_LONG_MAPPING) -> "IngestRequest":
        """An object of the bucket, known by its key."""
        return cls(object_key=key, data=bucket.fs.cat_file(bucket.path(key)), mapping=mapping)

    @property
    def file_name(self) -> str:
        """The last part of the key, as shown in messages."""
        return self.object_key.rstrip("/").rsplit("/", 1)[-1]


def _checksum(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _already_loaded(connection: sa.Connection, key: str, checksum: str) -> bool:
    """True when the latest successful load of ``key`` had this very content."""
    latest = connection.execute(
        sa.select(ingest_ledger.c.checksum)
        .where(ingest_ledger.c.object_key == key, ingest_ledger.c.status == IngestStatus.LOADED.value)
        .order_by(ingest_ledger.c.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    return latest == checksum


def _reference_data(connection: sa.Connection) -> tuple[dict[str, int], dict[str, ElementInfo]]:
    stations = dict(connection.execute(sa.select(station.c.wigos_id, station.c.id)).all())
    elements = {
        row.code: ElementInfo(row.id, row.code, row.units, row.valid_min, row.valid_max)
        for row in connection.execute(
            sa.select(element.c.id, element.c.code, element.c.units, element.c.valid_min, element.c.valid_max)
        )
    }
    return stations, elements


def _all_rejects(parsed: ParsedFile, rejects: pa.Table) -> pa.Table:
    if not parsed.malformed:
        return rejects
    malformed = pa.table(
        {
            "line": [row.line for row in parsed.malformed],
            "column": ["(row)"] * len(parsed.malformed),
            "value": [""] * len(parsed.malformed),
            "reason": [row.reason for row in parsed.malformed],
        },
        schema=REJECT_SCHEMA,
    )
    return pa.concat_tables([malformed, rejects]).sort_by([("line", "ascending")])


def _write_reject_report(bucket: Bucket, ledger_id: int, file_name: str, object_key: str, rejects: pa.Table) -> str:
    """Write the reject report (file, line, column, value, reason) and return its key."""
    report = rejects.add_column(0, "file", pa.array([object_key] * rejects.num_rows, pa.string()))
    buffer = io.BytesIO()
    pacsv.write_csv(report, buffer)
    key = f"{REJECTS_PREFIX}/{ledger_id}/{file_name}.rejects.csv"
    bucket.write_bytes(key, buffer.getvalue())
    return key


def _finish_ledger(connection: sa.Connection, ledger_id: int, **values: object) -> None:
    connection.execute(
        sa.update(ingest_ledger)
        .where(ingest_ledger.c.id == ledger_id)
        .values(finished_at=sa.func.clock_timestamp(), **values)
    )


def ingest(request: IngestRequest, datastore: Datastore, bucket: Bucket, user: str) -> IngestResult:
    """Ingest one file; a bad file gives a FAILED result (and ledger entry), not an exception."""
    started = time.perf_counter()
    checksum = _checksum(request.data)
    engine = datastore.engine
    with engine.begin() as connection:
        skipped = _already_loaded(connection, request.object_key, checksum)
        ledger_id = connection.execute(
            sa.insert(ingest_ledger)
            .values(
                object_key=request.object_key,
                size_bytes=len(request.data),
                checksum=checksum,
                mapping=request.mapping.name,
                status=IngestStatus.SKIPPED.value if skipped else "loading",
                ingested_by=user,
                finished_at=sa.func.clock_timestamp() if skipped else None,
            )
            .returning(ingest_ledger.c.id)
        ).scalar_one()
    if skipped:
        return IngestResult(
            request.object_key, IngestStatus.SKIPPED, ledger_id, seconds=time.perf_counter() - started
        )
    try:
        return _load(request, datastore, bucket, user, ledger_id, started)
    except (OpenCDMSError, psycopg.Error, sa.exc.SQLAlchemyError, OSError) as exc:
        message = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        with engine.begin() as connection:
            _finish_ledger(connection, ledger_id, status=IngestStatus.FAILED.value, error=message)
        return IngestResult(
            request.object_key, IngestStatus.FAILED, ledger_id, error=message,
            seconds=time.perf_counter() - started,
        )


def _load(
    request: IngestRequest, datastore: Datastore, bucket: Bucket, user: str, ledger_id: int, started: float
) -> IngestResult:
    mapping = request.mapping
    with datastore.engine.connect() as connection:
        stations, elements = _reference_data(connection)
    parsed = read_csv(request.file_name, request.data, mapping)
    validated = validate_rows(parsed.rows, mapping, stations, elements)
    rejects = _all_rejects(parsed, validated.rejects)
    report_key = (
        _write_reject_report(bucket, ledger_id, request.file_name, request.object_key, rejects)
        if rejects.num_rows
        else None
    )
    with datastore.engine.begin() as connection:
        lock_ingest(connection)
        identify_writer(connection, user, reason=f"ingest of {request.object_key}")
        series = SeriesDefaults(
            source_id=source_id(connection, mapping.source),
            duration_seconds=mapping.duration_seconds,
            level=mapping.level,
        )
        counts = MergeCounts(0, 0, 0)
        if validated.accepted.num_rows:
            copy_to_staging(connection, validated.accepted)
            counts = merge_staging(connection, series, user, comment=None)
        _finish_ledger(
            connection,
            ledger_id,
            status=IngestStatus.LOADED.value,
            rows_read=parsed.row_count,
            rows_inserted=counts.inserted,
            rows_updated=counts.updated,
            rows_unchanged=counts.unchanged,
            rows_rejected=rejects.num_rows,
            reject_report=report_key,
        )
    return IngestResult(
        object_key=request.object_key,
        status=IngestStatus.LOADED,
        ledger_id=ledger_id,
        rows_read=parsed.row_count,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        rejected=rejects.num_rows,
        reject_report=report_key,
        rejects=rejects,
        seconds=time.perf_counter() - started,
    )


def ingest_many(
    requests: Iterable[tuple[str, Callable[[], IngestRequest]]],
    datastore: Datastore,
    bucket: Bucket,
    user: str,
    progress: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Ingest several files one after the other; a bad file never stops the next one.

    Each request is a name and a callable, so that a file is read only when its turn comes.
    """
    results = []
    for object_key, make_request in requests:
        try:
            request = make_request()
        except OSError as exc:
            result = IngestResult(object_key, IngestStatus.FAILED, None, error=f"{object_key}: {exc.strerror}")
        else:
            result = ingest(request, datastore, bucket, user)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
