"""Ingest of one file, start to end: ledger, parse, validate, load, reject report.

A file is loaded atomically: its accepted rows, its ledger entry and the counts commit together
or not at all.  The file is streamed in chunks (memory is bounded by the chunk size, not the
file size): while one chunk is copied into the transaction's staging table, the next is parsed
and validated.  The same object (key, checksum and mapping) a second time adds nothing unless
forced.  A bad file is recorded as failed in the ledger with the reason; an unexpected failure
is logged with its cause; either way the next file goes on.

A load in progress holds a session advisory lock named by its ledger id on the connection that
loads, so a ledger entry still ``loading`` whose lock is gone (the process was killed, the
connection or the server lost) is recognisably interrupted; the next ingest of the same object
marks it so, and :func:`mark_interrupted_loads` does it for all.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from datetime import UTC, datetime
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import IO, Callable, Iterable

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket, BucketKeyError, bucket_key_problem
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import ingest_ledger
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.ingest.load import (
    CopyTarget,
    SeriesDefaults,
    StagedKeys,
    copy_new_rows,
    create_staging,
    identify_writer,
    lock_ingest,
    merge_staging,
    overlaps_stored,
    remove_cross_chunk_duplicates,
    source_id,
    stage_rows,
)
from opencdms_kernel.ingest.mapping import DEFAULT_LONG_MAPPING, Layout, Mapping
from opencdms_kernel.ingest import reader
from opencdms_kernel.ingest.reader import CsvReading, MalformedRow, Opener, ParsedChunk
from opencdms_kernel.ingest.validate import (
    REJECT_SCHEMA, ReferenceData, Validated, load_reference_data, validate_rows,
)

REJECTS_PREFIX = "rejects"
# Rejected rows kept in memory for display; the report in the bucket has them all.
REJECT_PREVIEW_ROWS = 100
_HASH_BLOCK = 1 << 22

# Advisory lock namespaces (the first key of pg_advisory_lock(int, int)).
OBJECT_LOCK = 0x0CD5_0001  # one load of an object key at a time
LOAD_LOCK = 0x0CD5_0002  # held by the connection of a load in progress, keyed by ledger id

log = logging.getLogger(__name__)


class IngestStatus(str, Enum):
    """Outcome of one file, as recorded in the ledger."""

    LOADED = "loaded"
    SKIPPED = "skipped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    REVERTED = "reverted"


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
    rejects: pa.Table | None = None  # the first REJECT_PREVIEW_ROWS rejected rows
    error: str | None = None
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def rejected_fraction(self) -> float:
        """Share of the file's observations that were refused (0 when nothing was read)."""
        total = self.inserted + self.updated + self.unchanged + self.rejected
        return self.rejected / total if total else 0.0


@dataclass(frozen=True)
class IngestRequest:
    """One file to ingest: how to open its bytes, the key it is known by, and its mapping."""

    object_key: str
    open_file: Opener
    size: int
    mapping: Mapping = DEFAULT_LONG_MAPPING

    @classmethod
    def from_bytes(cls, object_key: str, data: bytes, mapping: Mapping = DEFAULT_LONG_MAPPING) -> "IngestRequest":
        """Bytes already in memory (tests, small uploads)."""
        return cls(object_key, lambda: io.BytesIO(data), len(data), mapping)

    @classmethod
    def from_path(cls, path: Path, mapping: Mapping = DEFAULT_LONG_MAPPING) -> "IngestRequest":
        """A local file, known by its absolute ``file://`` URL."""
        resolved = path.resolve()
        size = resolved.stat().st_size  # raises OSError now for a file that is not there
        return cls(resolved.as_uri(), lambda: resolved.open("rb"), size, mapping)

    @classmethod
    def from_bucket(cls, bucket: Bucket, key: str, mapping: Mapping = DEFAULT_LONG_MAPPING) -> "IngestRequest":
        """An object of the bucket, known by its key (a folder, or a link out of the bucket, is refused)."""
        if (problem := bucket_key_problem(key)) is not None:
            raise BucketKeyError(key, problem)
        path = bucket.path(key)
        size = int(bucket.fs.size(path))
        return cls(key, lambda: bucket.fs.open(path, "rb"), size, mapping)

    @property
    def file_name(self) -> str:
        """The last part of the key, as shown in messages."""
        return self.object_key.rstrip("/").rsplit("/", 1)[-1]


def _checksum(request: IngestRequest) -> str:
    digest = hashlib.sha256()
    with request.open_file() as source:
        while block := source.read(_HASH_BLOCK):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def mapping_digest(mapping: Mapping) -> str:
    """Identity of what a mapping says (not of its file name): another mapping is another load."""
    return "sha256:" + hashlib.sha256(mapping.model_dump_json().encode()).hexdigest()


_INTERRUPTED_SQL = sa.text(
    """
    UPDATE ingest_ledger AS l
    SET status = 'interrupted', finished_at = clock_timestamp(),
        error = 'the load stopped before it finished (process killed or stopped, connection or '
                'server lost); nothing of it was stored'
    WHERE l.status = 'loading'
      AND (CAST(:object_key AS text) IS NULL OR l.object_key = :object_key)
      AND NOT EXISTS (
          SELECT 1 FROM pg_locks AS k
          WHERE k.locktype = 'advisory' AND k.granted
            AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            AND k.classid = CAST(:namespace AS oid) AND k.objid = CAST(l.id AS oid) AND k.objsubid = 2)
    RETURNING l.id
    """
)


def mark_interrupted_loads(connection: sa.Connection, object_key: str | None = None) -> list[int]:
    """Mark ``loading`` ledger entries whose load no longer runs as ``interrupted``; their ids."""
    return list(connection.execute(
        _INTERRUPTED_SQL, {"object_key": object_key, "namespace": LOAD_LOCK}).scalars())


def _already_loaded(connection: sa.Connection, key: str, checksum: str, digest: str) -> bool:
    """True when the latest load of ``key`` (not reverted) had this very content and mapping."""
    latest = connection.execute(
        sa.select(ingest_ledger.c.status, ingest_ledger.c.checksum, ingest_ledger.c.mapping_digest)
        .where(ingest_ledger.c.object_key == key,
               ingest_ledger.c.status.in_([IngestStatus.LOADED.value, IngestStatus.REVERTED.value]))
        .order_by(ingest_ledger.c.id.desc())
        .limit(1)
    ).one_or_none()
    return latest is not None and tuple(latest) == (IngestStatus.LOADED.value, checksum, digest)


def _finish_ledger(connection: sa.Connection, ledger_id: int, **values: object) -> None:
    connection.execute(
        sa.update(ingest_ledger)
        .where(ingest_ledger.c.id == ledger_id)
        .values(finished_at=sa.func.clock_timestamp(), **values)
    )


def _lock(connection: sa.Connection, namespace: int, key: sa.ColumnElement) -> None:
    """Take a session advisory lock: it outlives the transaction and dies with the connection."""
    connection.execute(sa.select(sa.func.pg_advisory_lock(namespace, key)))


@dataclass
class _Claim:
    ledger_id: int
    skipped: bool


def _claim(connection: sa.Connection, request: IngestRequest, checksum: str, digest: str,
           user: str, force: bool) -> _Claim:
    """Take the object's lock, mark its dead loads, and write this attempt's ledger entry."""
    with connection.begin():
        _lock(connection, OBJECT_LOCK, sa.func.hashtext(request.object_key))
        mark_interrupted_loads(connection, request.object_key)
        skipped = not force and _already_loaded(connection, request.object_key, checksum, digest)
        ledger_id = connection.execute(
            sa.insert(ingest_ledger)
            .values(
                object_key=request.object_key,
                size_bytes=request.size,
                checksum=checksum,
                mapping=request.mapping.name,
                mapping_digest=digest,
                status=IngestStatus.SKIPPED.value if skipped else "loading",
                ingested_by=user,
                finished_at=sa.func.clock_timestamp() if skipped else None,
            )
            .returning(ingest_ledger.c.id)
        ).scalar_one()
        if not skipped:
            _lock(connection, LOAD_LOCK, sa.cast(ledger_id, sa.Integer))
    return _Claim(ledger_id, skipped)


def _release(connection: sa.Connection) -> None:
    """Release this connection's session locks (the object's and the load's)."""
    connection.execute(sa.select(sa.func.pg_advisory_unlock_all()))
    connection.commit()


def ingest(
    request: IngestRequest, datastore: Datastore, bucket: Bucket, user: str, *, force: bool = False
) -> IngestResult:
    """Ingest one file; a bad file gives a FAILED result (and ledger entry), not an exception.

    ``force``: load even when the same bytes under the same mapping were loaded before.
    Ctrl-C (KeyboardInterrupt) stops the load, records it as interrupted, and is raised again.
    """
    started = time.perf_counter()
    try:
        checksum = _checksum(request)
    except OSError as exc:
        return IngestResult(request.object_key, IngestStatus.FAILED, None,
                            error=f"{request.object_key}: cannot read: {exc.strerror or exc}")
    digest = mapping_digest(request.mapping)
    with datastore.engine.connect() as connection:
        claim = _claim(connection, request, checksum, digest, user, force)
        if claim.skipped:
            _release(connection)
            return IngestResult(request.object_key, IngestStatus.SKIPPED, claim.ledger_id,
                                seconds=time.perf_counter() - started)
        try:
            result = _load(request, connection, bucket, user, claim.ledger_id, started)
        except (KeyboardInterrupt, duckdb.InterruptException) as exc:
            _record_failure(datastore, connection, claim.ledger_id, IngestStatus.INTERRUPTED,
                            "stopped by the user (Ctrl-C); nothing of it was stored")
            raise KeyboardInterrupt from exc
        except OpenCDMSError as exc:  # the file's own fault: say why, no traceback
            return _failed(datastore, connection, request, claim.ledger_id, str(exc), started)
        except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:
            message = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
            log.warning("ingest of %s (ledger %s) failed in the database: %s",
                        request.object_key, claim.ledger_id, message)
            return _failed(datastore, connection, request, claim.ledger_id,
                           f"{request.object_key}: the database refused the load: {message.strip()}", started)
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, reported, next file goes on
            log.exception("unexpected failure while ingesting %s (ledger %s)", request.object_key, claim.ledger_id)
            return _failed(datastore, connection, request, claim.ledger_id,
                           f"{request.object_key}: unexpected error ({type(exc).__name__}: {exc}); "
                           "the log has the details", started)
        _release(connection)
        return result


def _failed(datastore: Datastore, connection: sa.Connection, request: IngestRequest, ledger_id: int,
            message: str, started: float) -> IngestResult:
    _record_failure(datastore, connection, ledger_id, IngestStatus.FAILED, message)
    return IngestResult(request.object_key, IngestStatus.FAILED, ledger_id, error=message,
                        seconds=time.perf_counter() - started)


def _record_failure(datastore: Datastore, connection: sa.Connection, ledger_id: int,
                    status: IngestStatus, message: str) -> None:
    """Record the outcome, on the load's connection if it still works, else on a new one.

    If the server is gone too, the entry stays ``loading`` without a living lock, which the
    next ingest shows as interrupted: the outcome is never lost, only recorded later.
    """
    try:
        if connection.in_transaction():
            connection.rollback()
        with connection.begin():
            _finish_ledger(connection, ledger_id, status=status.value, error=message)
        _release(connection)
        return
    except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:
        log.warning("could not record the outcome of ledger %s on its connection: %s", ledger_id, exc)
    try:
        with datastore.engine.begin() as fresh:
            _finish_ledger(fresh, ledger_id, status=status.value, error=message)
    except (psycopg.Error, sa.exc.SQLAlchemyError) as exc:
        log.error("ledger %s keeps status 'loading' (shown as interrupted later): %s", ledger_id, exc)


@dataclass
class _Rejects:
    """Rejected rows, streamed to a local CSV file; the first ones kept for display."""

    object_key: str
    count: int = 0
    preview: list[pa.Table] = field(default_factory=list)
    _file: IO[bytes] | None = None
    _writer: pacsv.CSVWriter | None = None

    def add(self, rejects: pa.Table) -> None:
        if not rejects.num_rows:
            return
        if self.count < REJECT_PREVIEW_ROWS:
            self.preview.append(rejects.slice(0, REJECT_PREVIEW_ROWS - self.count))
        self.count += rejects.num_rows
        report = rejects.add_column(0, "file", pa.repeat(pa.scalar(self.object_key), rejects.num_rows))
        if self._writer is None:
            self._file = tempfile.NamedTemporaryFile(prefix="opencdms-rejects-", suffix=".csv")
            self._writer = pacsv.CSVWriter(self._file, report.schema)
        self._writer.write_table(report)

    def table(self) -> pa.Table | None:
        return pa.concat_tables(self.preview) if self.preview else None

    def store(self, bucket: Bucket, key: str) -> None:
        assert self._writer is not None and self._file is not None
        self._writer.close()
        self._file.flush()
        bucket.write_file(key, Path(self._file.name))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _malformed_rejects(malformed: tuple[MalformedRow, ...]) -> pa.Table:
    return pa.table(
        {"line": [row.line for row in malformed], "column": ["(row)"] * len(malformed),
         "value": [""] * len(malformed), "reason": [row.reason for row in malformed]},
        schema=REJECT_SCHEMA,
    )


def _load(
    request: IngestRequest, connection: sa.Connection, bucket: Bucket, user: str, ledger_id: int, started: float
) -> IngestResult:
    mapping = request.mapping
    with connection.begin():
        lock_ingest(connection)
        identify_writer(connection, user, reason=f"ingest of {request.object_key} (ledger {ledger_id})")
        reference = load_reference_data(connection)
        series = SeriesDefaults(
            source_id=source_id(connection, mapping.source),
            duration_seconds=mapping.duration_seconds,
            level=mapping.level,
        )
        create_staging(connection)
        target = CopyTarget(series.duration_seconds, series.level, series.source_id, user, ledger_id)
        now = datetime.now(UTC)  # "in the future" means the same for every chunk
        before_chunks = connection.begin_nested()
        try:
            written = _write_chunks(request, connection, reference, target, now, direct=True)
        except _ChunksOverlap:
            # Two chunks share a series' time span after some went straight into the table:
            # start again from the file's first line, every chunk through the staging table.
            before_chunks.rollback()
            before_chunks = connection.begin_nested()
            written = _write_chunks(request, connection, reference, target, now, direct=False)
        rejects = written.rejects
        try:
            before_chunks.commit()
            rejects.add(remove_cross_chunk_duplicates(
                connection, written.staged, _reject_labels(mapping, reference)))
            merged = merge_staging(connection, series, user, ledger_id)
            report_key = None
            if rejects.count:
                report_key = f"{REJECTS_PREFIX}/{ledger_id}-{_ledger_uid(connection, ledger_id)}/{request.file_name}.rejects.csv"
                rejects.store(bucket, report_key)
            inserted = merged.inserted + written.copied
            _finish_ledger(
                connection, ledger_id,
                status=IngestStatus.LOADED.value, rows_read=written.rows_read, rows_inserted=inserted,
                rows_updated=merged.updated, rows_unchanged=merged.unchanged, rows_rejected=rejects.count,
                reject_report=report_key, warnings=list(written.warnings), loaded_at=sa.func.now(),
            )
        finally:
            rejects.close()
    return IngestResult(
        object_key=request.object_key, status=IngestStatus.LOADED, ledger_id=ledger_id,
        rows_read=written.rows_read, inserted=inserted, updated=merged.updated, unchanged=merged.unchanged,
        rejected=rejects.count, reject_report=report_key, rejects=rejects.table(), warnings=written.warnings,
        seconds=time.perf_counter() - started,
    )


class _ChunksOverlap(Exception):
    """Chunks of one file share a series' time span, and some were already written directly."""


@dataclass
class _Written:
    """What the chunks of a file left: rows copied into ``observation``, rows staged, rejects."""

    rows_read: int
    copied: int
    staged: StagedKeys
    rejects: _Rejects
    warnings: tuple[str, ...]


def _write_chunks(request: IngestRequest, connection: sa.Connection, reference: ReferenceData,
                  target: CopyTarget, now: datetime, *, direct: bool) -> _Written:
    """Read, validate and write every chunk of the file; one thread writes chunk k while this
    one reads and validates chunk k + 1.

    A chunk goes straight into ``observation`` (binary COPY) when ``direct``, no stored row can
    share a key with it and no other chunk of the file shares a series' time span with it;
    otherwise into the staging table, for the merge.  Raises :class:`_ChunksOverlap` when an
    overlap shows up after a chunk was written directly (the caller starts again, staging all).
    """
    mapping = request.mapping
    reading = CsvReading(request.object_key, request.open_file, mapping, chunk_rows=reader.CHUNK_ROWS)
    series = SeriesDefaults(target.source_id, target.duration_seconds, target.level)
    written = _Written(0, 0, StagedKeys(), _Rejects(request.object_key), reading.warnings)

    def write(accepted: pa.Table, allow_direct: bool) -> int:
        if allow_direct and not overlaps_stored(connection, accepted, series) \
                and copy_new_rows(connection, accepted, target):
            return accepted.num_rows
        stage_rows(connection, accepted)
        return 0

    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-write") as writer:
            writing: Future[int] | None = None
            for chunk in reading.chunks():
                written.rows_read += chunk.row_count
                validated = _validated(chunk, mapping, reference, written.rejects, now)
                if writing is not None:
                    written.copied += writing.result()
                written.staged.add(validated.accepted)
                written.staged.add_conflicts(validated.conflicts)
                if written.staged.overlapping:
                    if written.copied:
                        raise _ChunksOverlap()
                    direct = False
                writing = writer.submit(write, validated.accepted, direct)
            if writing is not None:
                written.copied += writing.result()
    except BaseException:
        written.rejects.close()
        raise
    return written


def _ledger_uid(connection: sa.Connection, ledger_id: int) -> str:
    """A short id unique to this ledger entry, so that report keys never collide after a restore."""
    uid = connection.execute(
        sa.select(ingest_ledger.c.load_uid).where(ingest_ledger.c.id == ledger_id)).scalar_one()
    return str(uid)[:8]


def _validated(chunk: ParsedChunk, mapping: Mapping, reference: ReferenceData, rejects: _Rejects,
               now: datetime) -> Validated:
    validated = validate_rows(chunk.rows, mapping, reference, now=now)
    if chunk.malformed:
        rejects.add(pa.concat_tables([_malformed_rejects(chunk.malformed), validated.rejects])
                    .sort_by([("line", "ascending")]))
    else:
        rejects.add(validated.rejects)
    return validated


def _reject_labels(mapping: Mapping, reference: ReferenceData) -> dict[int, tuple[str, str]]:
    """Element id -> (the file column its values are in, the prefix of reasons): as validation
    names a row's value, for rejects found only once the chunks are staged."""
    codes = {info.id: code for code, info in reference.elements.items()}
    if mapping.layout is Layout.LONG:
        return {element_id: ("value", "") for element_id in codes}
    by_code = {spec.element: column for column, spec in mapping.columns.items()}
    return {element_id: (by_code[code], f"{code}: ") for element_id, code in codes.items() if code in by_code}


def ingest_many(
    requests: Iterable[tuple[str, Callable[[], IngestRequest]]],
    datastore: Datastore,
    bucket: Bucket,
    user: str,
    progress: Callable[[IngestResult], None] | None = None,
    *,
    force: bool = False,
) -> list[IngestResult]:
    """Ingest several files one after the other; a bad file never stops the next one.

    Each request is a name and a callable, so that a file is opened only when its turn comes.
    """
    results = []
    for object_key, make_request in requests:
        try:
            request = make_request()
        except OSError as exc:
            result = IngestResult(object_key, IngestStatus.FAILED, None,
                                  error=f"{object_key}: {exc.strerror or exc}")
        except OpenCDMSError as exc:
            result = IngestResult(object_key, IngestStatus.FAILED, None, error=str(exc))
        else:
            result = ingest(request, datastore, bucket, user, force=force)
        results.append(result)
        if progress is not None:
            progress(result)
    return results
