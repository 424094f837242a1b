"""The Parquet archive: observations exported from PostgreSQL for analysis with DuckDB.

Layout, under ``<bucket>/archive/observations/``:

- ``element=<code>/year=<UTC year>/part-<generation>-0.parquet``: the observations of one
  partition as one export wrote them, rows sorted by station and time, only ``status =
  'latest'`` rows.  A file is never rewritten: every export writes new files with its own
  *generation* in their names.
- ``_manifests/<generation>.json``: one generation of the archive: the file of each partition
  and its row count, the generation it replaced, and the database export it holds (the
  ``archive_export`` row's id and watermark).
- ``_current.json``: the pointer, naming the current generation; replaced in one atomic write
  (a rename in a local folder, a single PUT on S3).

A reader (:func:`connect_archive`) reads the pointer once and then only the files of that
generation's manifest, so it sees one export whole, whatever export runs meanwhile: an export
writes its files beside the old ones, then its manifest, then switches the pointer.  An export
killed half-way leaves files that no manifest names; the previous generation stays current.
The files of a superseded generation are deleted only once it has been superseded for longer
than :data:`GRACE_PERIOD` (a reader that read the pointer just before the switch may still be
reading them), at the first export after that; so are the files of unfinished exports.

An export rewrites only the partitions touched since the previous export: those of the
observation rows whose ``changed_at`` is at or after the previous watermark, and those of the
history rows (old versions of updated or deleted rows) whose ``superseded_at`` is.  The history
covers deletes and rows moved to another element or year.  The new manifest names the new
files of those partitions and the previous generation's files of every other one; a partition
left without rows drops out.  ``full=True`` rewrites everything, and so does an export that
finds that the current generation does not hold the database's last export: a database
restored from a backup (its later exports, and the changes they archived, are gone from it),
another database, or an archive written without manifests.

Why the watermark is safe: ``changed_at`` and ``superseded_at`` are stamped with ``now()``, the
*start* time of the writing transaction, but become visible only at its commit.  A transaction
that started before an export and commits after it has stamps older than that export; so the
watermark is the start of the oldest transaction still open in this database (or the time the
watermark is read, when none is), read just *before* the export's snapshot is taken.  See
:func:`_take_watermark`.

Why it is fast (the benchmark's question): the rows leave PostgreSQL in one ``COPY … TO STDOUT
(FORMAT binary)`` over all touched partitions.  Binary needs no number or timestamp formatting
on the server (its single core is the bottleneck) and no parsing here: every row has the same
layout, so numpy reads a whole batch of rows as a record array.  The server sends one message
per row, so the receiving loop is kept to two statements per row on psycopg's libpq layer.
Sorting, Arrow assembly and the Parquet writer are vectorised or multi-threaded.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from array import array
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import duckdb
import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import sqlalchemy as sa
from numpy.lib.stride_tricks import as_strided
from psycopg import pq

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.vocabulary import QcStatus

ARCHIVE_PREFIX = "archive/observations"
# The pointer to the current generation, and the folder of the generations' manifests.
POINTER_KEY = f"{ARCHIVE_PREFIX}/_current.json"
MANIFEST_PREFIX = f"{ARCHIVE_PREFIX}/_manifests"
MANIFEST_FORMAT = 1
# How long the files of a superseded generation are kept for the readers that opened it.
GRACE_PERIOD = timedelta(minutes=10)

# Columns of the Parquet files; element and year are the hive partition folders.
PARQUET_SCHEMA = pa.schema(
    [
        ("wigos_id", pa.string()),
        ("station_id", pa.int32()),
        ("phenomenon_time", pa.timestamp("us", tz="UTC")),
        ("duration_seconds", pa.int32()),
        ("level", pa.float32()),
        ("source_id", pa.int16()),
        ("value", pa.float64()),
        ("qc_status", pa.string()),
        ("final_flag", pa.string()),
        ("version", pa.int32()),
        ("changed_at", pa.timestamp("us", tz="UTC")),
    ]
)
PARTITION_SCHEMA = pa.schema([("element", pa.string()), ("year", pa.int32())])

# The values the schema's CHECK constraint allows, in the order of their codes on the wire
# (0-3, _COPY_SELECT) and in the Parquet dictionary: the vocabulary's order, which is fixed.
QC_STATUSES: tuple[str, ...] = tuple(status.value for status in QcStatus)

# Rows received before a batch is decoded: large enough for numpy to pay off, small enough
# that the raw bytes (about 100 per row) never pile up.
BATCH_ROWS = 1 << 16
# Rows per Parquet row group: one group for all but the largest partitions.
ROW_GROUP_ROWS = 1 << 20
# Files the Parquet writer keeps open (partitions are written one after the other).
MAX_OPEN_FILES = 64

# A generation: UTC time of the export to the microsecond (names sort in time order), and
# random bits, so that two writers, or a writer and the leftovers of a killed one, never
# share a name.
_GENERATION = r"\d{8}T\d{12}Z-[0-9a-f]{8}"
_GENERATION_NAME = re.compile(_GENERATION)
# Names under ARCHIVE_PREFIX: partition files (a generation's, or any other Parquet file, as
# written before manifests), manifests, and what an interrupted atomic write leaves.
_PARTITION_FILE = re.compile(r"element=([^/]+)/year=(-?\d+)/([^/]+\.parquet)")
_GENERATION_FILE = re.compile(rf"part-{_GENERATION}-\d+\.parquet")
_MANIFEST_FILE = re.compile(rf"_manifests/{_GENERATION}\.json(\.partial)?")
_POINTER_NAME = POINTER_KEY.removeprefix(ARCHIVE_PREFIX + "/")

_LOCK_SQL = sa.text("SELECT pg_advisory_lock(hashtext('opencdms.archive'))")
_UNLOCK_SQL = sa.text("SELECT pg_advisory_unlock(hashtext('opencdms.archive'))")

# statement_timestamp() is fixed before the activity is read: a transaction not yet open at
# that instant stamps its rows later.  Autovacuum never changes observation rows; sessions of
# other databases cannot.
_WATERMARK_SQL = sa.text(
    """
    SELECT least(statement_timestamp(), min(a.xact_start)) AS watermark,
           count(*) FILTER (WHERE a.query = '<insufficient privilege>') AS hidden
    FROM pg_stat_activity AS a
    WHERE a.datname = current_database()
      AND a.pid <> pg_backend_pid()
      AND a.backend_type <> 'autovacuum worker'
    """
)

_LAST_EXPORT_SQL = sa.text("SELECT id, watermark FROM archive_export ORDER BY id DESC LIMIT 1")

# extract() follows the session time zone, which the export sets to UTC.
_TOUCHED_SQL = sa.text(
    """
    SELECT DISTINCT touched.element_id, CAST(extract(year FROM touched.phenomenon_time) AS integer)
    FROM (SELECT element_id, phenomenon_time FROM observation WHERE changed_at >= :since
          UNION ALL
          SELECT element_id, phenomenon_time FROM observation_history WHERE superseded_at >= :since
         ) AS touched
    """
)

_RECORD_SQL = sa.text(
    "INSERT INTO archive_export (watermark, partitions, rows) VALUES (:watermark, :partitions, :rows) "
    "RETURNING id"
)

# Every row has the same binary layout: the value's NULL is sent as a flag, the QC status as a
# code, and the only variable-length field, final_flag, comes last.
_COPY_SELECT = """
    SELECT o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level,
           o.source_id, coalesce(o.value, 'NaN'), o.value IS NULL,
           CAST(CASE o.qc_status WHEN 'none' THEN 0 WHEN 'passed' THEN 1
                                 WHEN 'suspect' THEN 2 WHEN 'failed' THEN 3 ELSE -1 END AS smallint),
           o.version, o.changed_at, o.final_flag
    FROM observation AS o
"""
_COPY_ALL_SQL = "COPY (" + _COPY_SELECT + " WHERE o.status = 'latest') TO STDOUT (FORMAT binary)"
# COPY takes no protocol-level parameters; psycopg binds these client-side (ClientCursor.mogrify).
# Touched years of one element are merged into ranges, so the hash join checks few per row.
_COPY_TOUCHED_SQL = "COPY (" + _COPY_SELECT + """
    JOIN unnest(CAST(%(element_ids)s AS smallint[]), CAST(%(starts)s AS timestamptz[]),
                CAST(%(ends)s AS timestamptz[])) AS touched (element_id, starts, ends)
      ON o.element_id = touched.element_id
     AND o.phenomenon_time >= touched.starts AND o.phenomenon_time < touched.ends
    WHERE o.status = 'latest') TO STDOUT (FORMAT binary)"""

# The binary COPY row of _COPY_SELECT: a field count, then per field its length and value,
# big-endian; final_flag's bytes (when not NULL) follow the fixed part.
_WIRE_FIELDS = (
    ("station_id", ">i4"),
    ("element_id", ">i2"),
    ("phenomenon_time", ">i8"),
    ("duration_seconds", ">i4"),
    ("level", ">f4"),
    ("source_id", ">i2"),
    ("value", ">f8"),
    ("value_is_null", "u1"),
    ("qc_code", ">i2"),
    ("version", ">i4"),
    ("changed_at", ">i8"),
)
_WIRE_ROW = np.dtype(
    [("field_count", ">i2")]
    + [item for name, kind in _WIRE_FIELDS for item in ((f"{name}_length", ">i4"), (name, kind))]
    + [("final_flag_length", ">i4")]
)
# What a batch keeps of each row: element and year are in its partition.
_STORED_FIELDS = tuple((name, kind) for name, kind in _WIRE_FIELDS if name != "element_id")
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEADER_BYTES = len(_COPY_SIGNATURE) + 8  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
# PostgreSQL counts microseconds from 2000-01-01; Arrow from 1970-01-01.
_POSTGRES_EPOCH_US = 946_684_800_000_000
_INFINITY_US = (np.iinfo(np.int64).min, np.iinfo(np.int64).max)


class ArchiveError(OpenCDMSError):
    """The archive cannot be exported or read safely; the message says what to change."""


@dataclass(frozen=True, order=True)
class Partition:
    """One folder of the archive: the observations of one element in one UTC year."""

    element: str
    year: int

    @property
    def folder(self) -> str:
        """The partition's folder under :data:`ARCHIVE_PREFIX` (hive style)."""
        return f"element={self.element}/year={self.year}"

    @property
    def key(self) -> str:
        """Bucket key of the partition's folder."""
        return f"{ARCHIVE_PREFIX}/{self.folder}"

    def file_name(self, generation: str) -> str:
        """Name under :data:`ARCHIVE_PREFIX` of the partition's file written by ``generation``."""
        return f"{self.folder}/{_file_basename(generation, 0)}"


def _file_basename(generation: str, index: int | str) -> str:
    """A partition file's name in its folder (``index`` may be the writer's ``{i}`` template)."""
    return f"part-{generation}-{index}.parquet"


@dataclass(frozen=True, order=True)
class PartitionFile:
    """One Parquet file of a generation: its partition, its name under :data:`ARCHIVE_PREFIX`
    (``element=<code>/year=<y>/part-<generation>-0.parquet``) and how many rows it holds."""

    partition: Partition
    name: str
    rows: int

    @property
    def key(self) -> str:
        """Bucket key of the file."""
        return f"{ARCHIVE_PREFIX}/{self.name}"


@dataclass(frozen=True)
class ExportSource:
    """The database export a generation holds: its ``archive_export`` row.

    An export continues from the current generation (rewriting only what changed since its
    watermark) only when this is the database's last export row, id and watermark alike.
    """

    export_id: int
    watermark: datetime


@dataclass(frozen=True)
class Manifest:
    """One generation of the archive: every file a reader of it reads.

    ``previous``: the generation this one replaced (None: the first of its line, replacing an
    empty archive or one written without manifests); ``source``: the export it holds (None
    for an archive not written from a database, such as :mod:`~opencdms_kernel.demo.synthetic_archive`).
    """

    generation: str
    created_at: datetime
    previous: str | None
    files: tuple[PartitionFile, ...]
    source: ExportSource | None = None

    @property
    def key(self) -> str:
        """Bucket key of the manifest object."""
        return _manifest_key(self.generation)

    @property
    def rows(self) -> int:
        """Observations in the generation."""
        return sum(file.rows for file in self.files)

    @property
    def partitions(self) -> tuple[Partition, ...]:
        """The partitions that have files, in (element, year) order."""
        return tuple(sorted({file.partition for file in self.files}))

    def files_of(self, element: str | None = None) -> tuple[PartitionFile, ...]:
        """The files (of one element), in (element, year) order."""
        return tuple(file for file in self.files if element is None or file.partition.element == element)

    def to_json(self) -> bytes:
        """The manifest object's content."""
        document = {
            "format": MANIFEST_FORMAT,
            "generation": self.generation,
            "created_at": self.created_at.isoformat(),
            "previous": self.previous,
            "source": None if self.source is None else {
                "archive_export_id": self.source.export_id,
                "watermark": self.source.watermark.isoformat(),
            },
            "rows": self.rows,
            "files": [
                {"element": file.partition.element, "year": file.partition.year, "name": file.name, "rows": file.rows}
                for file in self.files
            ],
        }
        return json.dumps(document, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes, key: str) -> "Manifest":
        """Read a manifest object; ``key`` names it in the error if it is not one."""
        try:
            document = json.loads(data)
            if document["format"] != MANIFEST_FORMAT:
                raise ValueError(f"format {document['format']!r}, not {MANIFEST_FORMAT}")
            source = document["source"]
            files = tuple(sorted(
                PartitionFile(Partition(str(item["element"]), int(item["year"])), str(item["name"]), int(item["rows"]))
                for item in document["files"]
            ))
            for file in files:
                # A name is a file in its partition's folder, never a path leading elsewhere.
                if not _PARTITION_FILE.fullmatch(file.name) or not file.name.startswith(file.partition.folder + "/"):
                    raise ValueError(f"file {file.name!r} is not a file of partition {file.partition.folder}")
            return cls(
                generation=str(document["generation"]),
                created_at=datetime.fromisoformat(document["created_at"]),
                previous=document["previous"],
                files=files,
                source=None if source is None else ExportSource(
                    int(source["archive_export_id"]), datetime.fromisoformat(source["watermark"])
                ),
            )
        except (ValueError, KeyError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
            raise ArchiveError(
                f"{key} is not a readable archive manifest ({exc}); run `opencdms archive --full` to rewrite the archive"
            ) from exc


@dataclass(frozen=True)
class ArchiveExport:
    """What one export did.

    ``partitions``: those rewritten or removed (in ``(element, year)`` order); ``rows``: the
    observations written; ``watermark``: where the next export starts looking for changes;
    ``generation``: the archive generation current after the export (unchanged when nothing
    had changed; None only if there is none).
    """

    partitions: tuple[Partition, ...]
    rows: int
    seconds: float
    watermark: datetime
    full: bool
    generation: str | None = None


@dataclass(frozen=True)
class _Batch:
    """The decoded rows of one COPY batch, grouped by partition (physical order kept within).

    Times are microseconds since 1970 (UTC); ``spans`` maps (element id, year) to its rows.
    """

    arrays: dict[str, np.ndarray]
    final_flag: pa.Array
    spans: dict[tuple[int, int], slice]

    @property
    def rows(self) -> int:
        return len(self.final_flag)


@dataclass(frozen=True)
class _Snapshot:
    """What the export read from one consistent snapshot of the datastore."""

    stations: dict[int, str]
    elements: dict[int, str]
    touched: frozenset[tuple[int, int]] | None  # (element id, year); None: every partition
    batches: list[_Batch]

    @property
    def rows(self) -> int:
        return sum(batch.rows for batch in self.batches)

    def touched_partitions(self) -> set[Partition]:
        """The partitions an incremental export touched, by element code.

        An element removed since (only its history can still name it) has lost its code;
        its files go at the next full export."""
        if self.touched is None:
            raise ValueError("a full export touches every partition")
        return {
            Partition(self.elements[element_id], year)
            for element_id, year in self.touched
            if element_id in self.elements
        }


# --------------------------------------------------------------------------- export


def export_archive(
    datastore: Datastore,
    bucket: Bucket,
    *,
    full: bool = False,
    progress: Callable[[int, int], None] | None = None,
    grace: timedelta = GRACE_PERIOD,
) -> ArchiveExport:
    """Export the observations changed since the last export (or all) to the Parquet archive.

    The export becomes visible at once, when its manifest is made current; readers never see
    it half-done.  ``progress(done, total)`` is called as partitions are written or removed.
    Exports are serialised by an advisory lock, so two at once cannot interleave.  Files of
    generations superseded more than ``grace`` ago are deleted at the end.  The rows of the
    touched partitions are held in memory until written (peak about 180 bytes per row).
    An export that finds nothing changed writes nothing and records nothing.
    """
    started = time.perf_counter()
    with datastore.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        with _export_lock(connection):
            with connection.begin():
                watermark = _take_watermark(connection)
            current = _current_manifest(bucket, full)
            snapshot = _read_snapshot(connection, full, current)
            if snapshot.touched is not None and not snapshot.touched:
                # Nothing changed since the current generation's export: it stays current,
                # and the next export looks from its watermark again.
                if progress is not None:
                    progress(0, 0)
                remove_superseded(bucket, current, grace)
                return ArchiveExport(
                    partitions=(), rows=0, seconds=time.perf_counter() - started, watermark=watermark,
                    full=False, generation=None if current is None else current.generation,
                )
            pieces = _pieces_by_partition(snapshot)
            written = sorted(pieces)
            removed = _removed_partitions(bucket, snapshot, current, set(written))
            total = len(written) + len(removed)
            if progress is not None:
                progress(0, total)
            generation = new_generation()
            files = _write_partitions(bucket, generation, snapshot, pieces, total, progress) if written else []
            for done in range(len(written) + 1, total + 1):  # removing is leaving them out
                if progress is not None:
                    progress(done, total)
            partitions = tuple(sorted(written + removed))
            draft = Manifest(
                generation=generation,
                created_at=_now(),
                previous=None if current is None else current.generation,
                files=tuple(sorted(files + _carried_over(snapshot, current))),
            )
            manifest = _record_and_publish(connection, bucket, draft, watermark, len(partitions), snapshot.rows)
            remove_superseded(bucket, manifest, grace)
    return ArchiveExport(
        partitions=partitions,
        rows=snapshot.rows,
        seconds=time.perf_counter() - started,
        watermark=watermark,
        full=snapshot.touched is None,
        generation=manifest.generation,
    )


@contextmanager
def _export_lock(connection: sa.Connection) -> Iterator[None]:
    """Hold the exporters' session-level advisory lock (released on disconnect, too)."""
    with connection.begin():
        connection.execute(_LOCK_SQL)
    try:
        yield
    finally:
        if not connection.invalidated:
            with connection.begin():
                connection.execute(_UNLOCK_SQL)


def _take_watermark(connection: sa.Connection) -> datetime:
    """The earliest ``changed_at`` a change not yet visible to the coming snapshot can have.

    Read before the snapshot, in a statement of its own: a transaction open now is seen here
    with its start time; one that commits before the snapshot is in the snapshot; one that
    starts later stamps its rows later.  (Read inside the snapshot's transaction instead, one
    that commits between the snapshot and the reading of the activity would be in neither.)
    Every open transaction counts, not only those holding a transaction id: an ingest waiting
    for the ingest lock has none yet, but its rows will carry its start time.  Prepared
    (two-phase) transactions are not seen; OpenCDMS does not use them.
    """
    watermark, hidden = connection.execute(_WATERMARK_SQL).one()
    if hidden:
        raise ArchiveError(
            "the archive export cannot see the transactions of other database roles, so it "
            "cannot take a safe watermark; connect as their owner or GRANT pg_read_all_stats "
            "to the exporting role"
        )
    return watermark


def _current_manifest(bucket: Bucket, full: bool) -> Manifest | None:
    """The generation the export starts from.  A full export replaces whatever is there, so
    an unreadable pointer or manifest does not stop it (an incremental one says to run it)."""
    try:
        return read_manifest(bucket)
    except ArchiveError:
        if full:
            return None
        raise


def _read_snapshot(connection: sa.Connection, full: bool, current: Manifest | None) -> _Snapshot:
    """Everything the export needs, from one REPEATABLE READ snapshot: the rows of the touched
    partitions (of all, when the export is a full one), stations and elements.

    The export is full when asked, and when the current generation does not hold the
    database's last export (see :func:`_continues_from`)."""
    connection.execution_options(isolation_level="REPEATABLE READ")
    try:
        with connection.begin():
            # None of these take the snapshot; the first query below does.
            connection.execute(sa.text("SET TRANSACTION READ ONLY"))
            connection.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))
            connection.execute(sa.text("SET LOCAL client_encoding = 'UTF8'"))
            last = connection.execute(_LAST_EXPORT_SQL).one_or_none()
            since = None if full else _continues_from(current, last)
            touched = None if since is None else _touched_partitions(connection, since)
            stations = dict(connection.execute(sa.text("SELECT id, wigos_id FROM station")).all())
            elements = dict(connection.execute(sa.text("SELECT id, code FROM element")).all())
            if touched is None:
                batches = _copy_observations(connection, _COPY_ALL_SQL.encode())
            elif touched:
                batches = _copy_observations(connection, _touched_copy_statement(connection, touched))
            else:
                batches = []
    finally:
        if not connection.invalidated:
            connection.execution_options(isolation_level="AUTOCOMMIT")
    return _Snapshot(stations=stations, elements=elements, touched=touched, batches=batches)


def _continues_from(current: Manifest | None, last: sa.Row | None) -> datetime | None:
    """The watermark an incremental export starts from; None when it must be a full one.

    Only the database's own last export is a safe starting point.  After a restore the
    database's last export is older than the archive's (the changes archived since are gone
    from the database, history included, so no watermark would find them); another database
    has other exports; an archive without a manifest, or not written from a database, has
    none.
    """
    if current is None or current.source is None or last is None:
        return None
    if current.source != ExportSource(int(last.id), last.watermark):
        return None
    return last.watermark


def _record_and_publish(
    connection: sa.Connection, bucket: Bucket, draft: Manifest, watermark: datetime, partitions: int, rows: int
) -> Manifest:
    """Record the export and make its generation current, as one step as far as it can be.

    The ``archive_export`` row is inserted in a transaction that commits only once the pointer
    names the new generation: if publishing fails, the row is rolled back and the database's
    last export is still the current generation's.  (If the commit itself fails after the
    switch, the two disagree and the next export is a full one: slower, never wrong.)
    """
    connection.execution_options(isolation_level="READ COMMITTED")
    try:
        with connection.begin():
            export_id = connection.execute(
                _RECORD_SQL, {"watermark": watermark, "partitions": partitions, "rows": rows}
            ).scalar_one()
            # Created (and so superseding the current generation) as it is published.
            manifest = replace(draft, created_at=_now(), source=ExportSource(int(export_id), watermark))
            publish_generation(bucket, manifest)
    finally:
        if not connection.invalidated:
            connection.execution_options(isolation_level="AUTOCOMMIT")
    return manifest


def _touched_partitions(connection: sa.Connection, since: datetime) -> frozenset[tuple[int, int]]:
    """(element id, UTC year) of every row changed, deleted or moved at or after ``since``."""
    # ">=": a transaction open when the watermark was taken stamps exactly the watermark.
    rows = connection.execute(_TOUCHED_SQL, {"since": since}).all()
    return frozenset((int(element_id), int(year)) for element_id, year in rows)


def _year_ranges(touched: frozenset[tuple[int, int]]) -> list[tuple[int, datetime, datetime]]:
    """Touched (element, year) pairs as (element, start, end) UTC ranges, adjacent years merged."""
    ranges: list[tuple[int, int, int]] = []
    for element_id, year in sorted(touched):
        if ranges and ranges[-1][0] == element_id and ranges[-1][2] == year:
            ranges[-1] = (element_id, ranges[-1][1], year + 1)
        else:
            ranges.append((element_id, year, year + 1))
    return [(element_id, _year_start(first), _year_start(stop)) for element_id, first, stop in ranges]


def _year_start(year: int) -> datetime:
    return datetime(year, 1, 1, tzinfo=timezone.utc)


def _touched_copy_statement(connection: sa.Connection, touched: frozenset[tuple[int, int]]) -> bytes:
    """The COPY of the touched partitions, its parameters bound by psycopg."""
    ranges = _year_ranges(touched)
    with psycopg.ClientCursor(connection.connection.driver_connection) as cursor:
        return cursor.mogrify(
            _COPY_TOUCHED_SQL,
            {
                "element_ids": [element_id for element_id, _, _ in ranges],
                "starts": [start for _, start, _ in ranges],
                "ends": [end for _, _, end in ranges],
            },
        ).encode()


# --------------------------------------------------------------------------- binary COPY


def _copy_observations(connection: sa.Connection, statement: bytes) -> list[_Batch]:
    """Run a binary COPY of _COPY_SELECT rows and decode it batch by batch."""
    # Decoded as they come, in this thread: with the server busy on one core and the receiving
    # loop on the other, a decoding thread only takes turns with them (measured: no faster).
    batches = (_decode_batch(buffer, lengths) for buffer, lengths in _copy_out(connection, statement))
    return [batch for batch in batches if batch.rows]


def _copy_out(connection: sa.Connection, statement: bytes) -> Iterator[tuple[bytearray, np.ndarray]]:
    """Yield the COPY data in batches: the bytes of the rows, and each row's length.

    Works on psycopg's libpq layer: the server sends one message per row, and psycopg's
    ``Copy`` iterator costs about twice as much per message as this loop.  If anything
    interrupts the loop, the connection (mid-COPY, unusable) is invalidated.
    """
    raw = connection.connection.driver_connection
    pgconn = raw.pgconn
    pgconn.send_query(statement)
    _check_result(raw, pgconn.get_result(), pq.ExecStatus.COPY_OUT)
    finished = False
    try:
        get_copy_data = pgconn.get_copy_data
        more = True
        while more:
            buffer = bytearray()
            lengths = array("i")
            add_length = lengths.append
            for _ in range(BATCH_ROWS):
                length, data = get_copy_data(0)  # 0: block until a row is there
                if length < 0:
                    more = False
                    break
                buffer += data
                add_length(length)
            yield buffer, np.frombuffer(lengths, dtype=np.int32)
        _finish_copy(raw)
        finished = True
    finally:
        if not finished:
            connection.invalidate()


def _finish_copy(raw: psycopg.Connection) -> None:
    """Collect the COPY's final result (raising its error, if any) until the connection is idle."""
    _check_result(raw, raw.pgconn.get_result(), pq.ExecStatus.COMMAND_OK)
    while raw.pgconn.get_result() is not None:
        pass


def _check_result(raw: psycopg.Connection, result: pq.abc.PGresult | None, expected: pq.ExecStatus) -> None:
    if result is None:
        raise psycopg.OperationalError(raw.pgconn.get_error_message().decode(errors="replace"))
    if result.status != expected:
        raise psycopg.errors.error_from_result(result, encoding=raw.info.encoding)


def _decode_batch(buffer: bytearray, lengths: np.ndarray) -> _Batch:
    """Decode one batch of binary COPY rows, grouped by partition."""
    data = np.frombuffer(buffer, dtype=np.uint8)
    starts = _row_starts(data, lengths)
    if not len(starts):
        return _Batch(arrays={}, final_flag=pa.nulls(0, pa.string()), spans={})
    # The partition key first, so that the rows are copied out once, already in order.
    element_ids = _field(data, starts, "element_id")
    times = _times(_field(data, starts, "phenomenon_time"), "phenomenon_time")
    years = _utc_years(times)
    order, spans = _partition_order(element_ids, years)
    starts = starts[order]
    rows = _fixed_parts(data, starts)
    if (rows["field_count"] != len(_WIRE_FIELDS) + 1).any():
        raise ArchiveError("unexpected row layout in the COPY data")
    arrays = {name: rows[name].astype(np.dtype(kind).newbyteorder("=")) for name, kind in _STORED_FIELDS}
    arrays["phenomenon_time"] = times[order]
    arrays["changed_at"] = _times(arrays["changed_at"], "changed_at")
    if (arrays["qc_code"] < 0).any():
        raise ArchiveError(f"an observation has a qc_status other than {', '.join(QC_STATUSES)}")
    final_flag = _final_flags(data, starts + _WIRE_ROW.itemsize, rows["final_flag_length"])
    return _Batch(arrays=arrays, final_flag=final_flag, spans=spans)


def _row_starts(data: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Where each row of a batch starts (the COPY header and trailer are not rows)."""
    starts = np.cumsum(lengths, dtype=np.int64) - lengths
    if len(starts) and data[: len(_COPY_SIGNATURE)].tobytes() == _COPY_SIGNATURE:
        starts[0] += _COPY_HEADER_BYTES
    if len(starts) and data[starts[-1]:].tobytes() == _COPY_TRAILER:
        starts = starts[:-1]
    return starts


def _windows(data: np.ndarray, width: int) -> np.ndarray:
    """A view with one (overlapping) run of ``width`` bytes starting at every byte: indexing
    it with row starts copies those bytes of each row, whatever the rows' lengths."""
    return as_strided(data, shape=(max(data.size - width + 1, 0), width), strides=(1, 1))


def _fixed_parts(data: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The fixed part of each row (all but final_flag's bytes) as _WIRE_ROW records."""
    return _windows(data, _WIRE_ROW.itemsize)[starts].view(_WIRE_ROW).ravel()


def _field(data: np.ndarray, starts: np.ndarray, name: str) -> np.ndarray:
    """One field of each row, in native byte order."""
    kind, offset = _WIRE_ROW.fields[name][:2]
    return _windows(data, kind.itemsize)[starts + offset].view(kind).ravel().astype(kind.newbyteorder("="))


def _times(postgres_us: np.ndarray, name: str) -> np.ndarray:
    """PostgreSQL timestamps (microseconds since 2000) as microseconds since 1970."""
    if len(postgres_us) and (postgres_us.min() == _INFINITY_US[0] or postgres_us.max() == _INFINITY_US[1]):
        raise ArchiveError(f"an observation has an infinite {name}, which the archive cannot hold")
    return postgres_us + _POSTGRES_EPOCH_US


def _final_flags(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """The final flags (NULL where the length is -1), gathered without a Python loop."""
    present = lengths >= 0
    if not present.any():
        return pa.nulls(len(lengths), pa.string())
    sizes = np.where(present, lengths, 0).astype(np.int64)
    ends = np.cumsum(sizes)
    positions = np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1])
    offsets = np.concatenate(([0], ends)).astype(np.int32)
    flags = pa.StringArray.from_buffers(
        len(lengths), pa.py_buffer(offsets), pa.py_buffer(data[positions]),
        pa.array(present).buffers()[1], null_count=int((~present).sum()),
    )
    flags.validate(full=True)  # the bytes must be UTF-8, as the session's client_encoding says
    return flags


def _utc_years(microseconds: np.ndarray) -> np.ndarray:
    """UTC calendar year of each time (microseconds since 1970)."""
    if not len(microseconds):
        return np.empty(0, np.int32)
    # Years since 1970 of the earliest and latest time (numpy floors), then each time's year
    # by binary search among the year starts: cheaper than converting every time to a date.
    span = np.array([microseconds.min(), microseconds.max()], dtype="datetime64[us]").astype("datetime64[Y]")
    years = np.arange(span[0].astype(np.int64), span[1].astype(np.int64) + 2)
    starts = years.astype("datetime64[Y]").astype("datetime64[us]").astype(np.int64)
    return (years[np.searchsorted(starts, microseconds, side="right") - 1] + 1970).astype(np.int32)


def _partition_order(element_ids: np.ndarray, years: np.ndarray) -> tuple[np.ndarray, dict[tuple[int, int], slice]]:
    """The stable order by (element, year), and where each partition's rows are in it."""
    keys = (element_ids.astype(np.int64) << 32) | (years.astype(np.int64) & 0xFFFFFFFF)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    bounds = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1, [len(keys)]))
    spans = {
        (int(element_ids[order[start]]), int(years[order[start]])): slice(int(start), int(stop))
        for start, stop in zip(bounds[:-1], bounds[1:])
    }
    return order, spans


# --------------------------------------------------------------------------- Arrow and Parquet

# What is handed to the Parquet writer: strings with few distinct values as dictionaries
# (written as they are, without hashing every value), plus the partition columns.  The files
# do not store this Arrow schema, so readers see plain strings (PARQUET_SCHEMA).
_WRITE_SCHEMA = pa.schema(
    [
        pa.field("wigos_id", pa.dictionary(pa.int32(), pa.string())),
        *(PARQUET_SCHEMA.field(name) for name in PARQUET_SCHEMA.names[1:7]),
        pa.field("qc_status", pa.dictionary(pa.int8(), pa.string())),
        *(PARQUET_SCHEMA.field(name) for name in PARQUET_SCHEMA.names[8:]),
        *PARTITION_SCHEMA,
    ]
)
_QC_DICTIONARY = pa.array(QC_STATUSES, pa.string())

_Pieces = dict[Partition, list[tuple[_Batch, slice]]]


def _pieces_by_partition(snapshot: _Snapshot) -> _Pieces:
    """Where each partition's rows are, batch by batch, in the order they arrived."""
    pieces: _Pieces = {}
    for batch in snapshot.batches:
        for (element_id, year), span in batch.spans.items():
            if element_id not in snapshot.elements:
                raise ArchiveError(f"an observation refers to an unknown element id {element_id}")
            pieces.setdefault(Partition(snapshot.elements[element_id], year), []).append((batch, span))
    return pieces


def _record_batches(snapshot: _Snapshot, pieces: _Pieces) -> Iterator[pa.RecordBatch]:
    """One record batch per partition, in partition order, rows sorted by station and time."""
    for partition in sorted(pieces):
        yield _partition_batch(partition, pieces[partition], snapshot.stations)


def _partition_batch(partition: Partition, pieces: list[tuple[_Batch, slice]], stations: dict[int, str]) -> pa.RecordBatch:
    """All rows of one partition, gathered from the batches, as the writer's record batch."""
    names = pieces[0][0].arrays
    arrays = {name: np.concatenate([batch.arrays[name][span] for batch, span in pieces]) for name in names}
    final_flag = pa.concat_arrays([batch.final_flag[span] for batch, span in pieces])
    order = _station_time_order(arrays["station_id"], arrays["phenomenon_time"])
    if order is not None:
        arrays = {name: values[order] for name, values in arrays.items()}
        final_flag = final_flag.take(order)
    rows = len(final_flag)
    columns = [
        _station_labels(arrays["station_id"], stations),
        pa.array(arrays["station_id"]),
        pa.array(arrays["phenomenon_time"], _WRITE_SCHEMA.field("phenomenon_time").type),
        pa.array(arrays["duration_seconds"]),
        pa.array(arrays["level"]),
        pa.array(arrays["source_id"]),
        pa.array(arrays["value"], pa.float64(), mask=arrays["value_is_null"].view(np.bool_)),
        pa.DictionaryArray.from_arrays(arrays["qc_code"].astype(np.int8), _QC_DICTIONARY),
        final_flag,
        pa.array(arrays["version"]),
        pa.array(arrays["changed_at"], _WRITE_SCHEMA.field("changed_at").type),
        pa.repeat(pa.scalar(partition.element, pa.string()), rows),
        pa.repeat(pa.scalar(partition.year, pa.int32()), rows),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=_WRITE_SCHEMA)


def _station_time_order(station_ids: np.ndarray, times: np.ndarray) -> np.ndarray | None:
    """The permutation that sorts by station then time; None when already sorted.

    Rows mostly arrive sorted (ingest loads files in primary-key order), so checking is cheaper
    than sorting; rows updated since are out of place and make the sort necessary.
    """
    station_step, time_step = np.diff(station_ids), np.diff(times)
    if ((station_step > 0) | ((station_step == 0) & (time_step >= 0))).all():
        return None
    return np.lexsort((times, station_ids))


def _station_labels(station_ids: np.ndarray, stations: dict[int, str]) -> pa.DictionaryArray:
    """WIGOS ids of sorted station ids, as a dictionary of just the partition's stations."""
    run_starts = np.concatenate(([0], np.flatnonzero(np.diff(station_ids)) + 1))
    distinct = station_ids[run_starts]
    unknown = [int(station_id) for station_id in distinct if int(station_id) not in stations]
    if unknown:
        raise ArchiveError(f"an observation refers to an unknown station id {unknown[0]}")
    indices = np.repeat(np.arange(len(distinct), dtype=np.int32), np.diff(np.append(run_starts, len(station_ids))))
    return pa.DictionaryArray.from_arrays(indices, pa.array([stations[int(i)] for i in distinct], pa.string()))




def _carried_over(snapshot: _Snapshot, current: Manifest | None) -> list[PartitionFile]:
    """The current generation's files of the partitions an incremental export did not touch:
    the new generation names them again (nothing is copied)."""
    if snapshot.touched is None or current is None:
        return []
    touched = snapshot.touched_partitions()
    return [file for file in current.files if file.partition not in touched]


def _removed_partitions(
    bucket: Bucket, snapshot: _Snapshot, current: Manifest | None, written: set[Partition]
) -> list[Partition]:
    """Partitions the new generation leaves out: touched but now empty; after a full export,
    any the archive had that was not written."""
    if snapshot.touched is not None and current is not None:
        before = set(current.partitions) & snapshot.touched_partitions()
    elif current is not None:
        before = set(current.partitions)
    else:
        before = {partition for partition, _ in _unmanaged_files(bucket)}
    return sorted(before - written)


def _arrow_filesystem(bucket: Bucket) -> pafs.FileSystem:
    """Arrow's own filesystem for a local folder (faster), fsspec's otherwise."""
    if bucket.protocol == "file":
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(bucket.fs))


def _write_partitions(
    bucket: Bucket,
    generation: str,
    snapshot: _Snapshot,
    pieces: _Pieces,
    total: int,
    progress: Callable[[int, int], None] | None,
) -> list[PartitionFile]:
    """Write one new file per partition, named by ``generation``; return them with their rows.

    Nothing is replaced or removed: no reader opens these files before the generation's
    manifest is current, and the old ones stay for the readers of earlier generations.
    """
    folder = bucket.path(ARCHIVE_PREFIX)
    visited: dict[str, int] = {}

    def file_written(written_file: pads.WrittenFile) -> None:
        visited[written_file.path.removeprefix(folder + "/")] = written_file.metadata.num_rows
        if progress is not None:
            progress(len(visited), total)

    parquet = pads.ParquetFileFormat()
    pads.write_dataset(
        _record_batches(snapshot, pieces),
        folder,
        schema=_WRITE_SCHEMA,
        format=parquet,
        file_options=parquet.make_write_options(compression="snappy", store_schema=False),
        partitioning=pads.partitioning(PARTITION_SCHEMA, flavor="hive"),
        basename_template=_file_basename(generation, "{i}"),
        # The names are new: nothing there is deleted or overwritten.
        existing_data_behavior="overwrite_or_ignore",
        filesystem=_arrow_filesystem(bucket),
        preserve_order=True,  # keep the station, time order within each file
        max_partitions=max(total, 1),
        # Partitions come one after the other, so a file not written to recently is complete.
        max_open_files=MAX_OPEN_FILES,
        # The writer cuts batches into pieces of 32 k rows; without a minimum, each would
        # become a row group of its own.
        min_rows_per_group=ROW_GROUP_ROWS,
        max_rows_per_group=ROW_GROUP_ROWS,
        file_visitor=file_written,
    )
    files = []
    for partition in sorted(pieces):
        name = partition.file_name(generation)
        expected = sum(span.stop - span.start for _, span in pieces[partition])
        if visited.get(name) != expected:
            raise ArchiveError(
                f"the Parquet writer did not write {bucket.url(f'{ARCHIVE_PREFIX}/{name}')} with its "
                f"{expected} rows (it wrote: {sorted(visited)[:3]}…)"
            )
        files.append(PartitionFile(partition, name, expected))
    return files


# --------------------------------------------------------------------------- generations


def new_generation() -> str:
    """A new generation name: UTC time to the microsecond, then random hex (see _GENERATION)."""
    return f"{_now():%Y%m%dT%H%M%S%f}Z-{secrets.token_hex(4)}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _manifest_key(generation: str) -> str:
    if not _GENERATION_NAME.fullmatch(generation):
        raise ArchiveError(f"{generation!r} is not an archive generation name")
    return f"{MANIFEST_PREFIX}/{generation}.json"


def _read_object(bucket: Bucket, key: str) -> bytes | None:
    """An object's bytes, or None when there is no such object."""
    try:
        return bytes(bucket.read_bytes(key))
    except FileNotFoundError:
        return None


def _read_generation(bucket: Bucket, generation: str) -> Manifest | None:
    """The manifest of ``generation``; None when it is gone."""
    key = _manifest_key(generation)
    data = _read_object(bucket, key)
    return None if data is None else Manifest.from_json(data, bucket.url(key))


def read_manifest(bucket: Bucket) -> Manifest | None:
    """The manifest of the current generation: what a reader reads now.

    None when there is no pointer: nothing exported yet, or an archive written before
    manifests (see :func:`archive_files`).  Raises :class:`ArchiveError` when the pointer
    names a generation whose manifest cannot be read.
    """
    pointer_url = bucket.url(POINTER_KEY)
    for _ in range(3):
        data = _read_object(bucket, POINTER_KEY)
        if data is None:
            return None
        try:
            generation = str(json.loads(data)["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ArchiveError(
                f"{pointer_url} does not name an archive generation ({exc}); run `opencdms archive --full`"
            ) from exc
        manifest = _read_generation(bucket, generation)
        if manifest is not None:
            return manifest
        # Superseded and removed between the two reads (only after GRACE_PERIOD): read again.
    raise ArchiveError(
        f"{pointer_url} names generation {generation}, whose manifest {bucket.url(_manifest_key(generation))} "
        "is missing; run `opencdms archive --full` to rewrite the archive"
    )


def publish_generation(bucket: Bucket, manifest: Manifest) -> None:
    """Make ``manifest`` the current generation: its object first, then the pointer to it.

    Each object is written whole (``Bucket.write_bytes``: a rename locally, one PUT on S3), so
    a reader finds either the old pointer or the new one, and the manifest it names complete.
    The manifest's files must be written already.
    """
    bucket.write_bytes(manifest.key, manifest.to_json())
    pointer = {"format": MANIFEST_FORMAT, "generation": manifest.generation, "manifest": manifest.key}
    bucket.write_bytes(POINTER_KEY, json.dumps(pointer).encode())


def remove_superseded(bucket: Bucket, current: Manifest | None, grace: timedelta = GRACE_PERIOD) -> int:
    """Delete what no reader of the archive can still be using; return how many objects went.

    Kept: ``current`` (the current generation) and every earlier generation superseded less
    than ``grace`` ago, walking back from ``current`` (a generation is superseded when the next
    one is created); and the Parquet files of an archive written before manifests, until the
    first manifest is ``grace`` old.  Deleted: the files and manifests of older generations,
    and those of exports that never finished.  Objects under the archive's prefix that the
    archive did not write are left alone.  Call it only while holding the exporters' lock (or
    as the archive's only writer), with the manifest just published or read as current.
    """
    if current is None:
        return 0  # no manifest: whatever is there is what readers read
    cutoff = _now() - grace
    kept = [current]
    while kept[-1].previous is not None and kept[-1].created_at > cutoff:
        previous = _read_generation(bucket, kept[-1].previous)
        if previous is None:
            break
        kept.append(previous)
    keep_unmanaged = kept[-1].previous is None and kept[-1].created_at > cutoff
    keep = {_POINTER_NAME}
    for manifest in kept:
        keep.add(manifest.key.removeprefix(ARCHIVE_PREFIX + "/"))
        keep.update(file.name for file in manifest.files)

    folder = bucket.path(ARCHIVE_PREFIX)
    bucket.fs.invalidate_cache(folder)
    doomed = [
        path
        for path in bucket.fs.find(folder)
        if path.startswith(folder + "/") and _removable(path[len(folder) + 1:], keep, keep_unmanaged)
    ]
    if doomed:
        bucket.fs.rm(doomed)
        if bucket.protocol == "file":
            _remove_empty_folders(bucket, doomed)
    # Listings cached by the walk would hide files written later from this process's readers.
    bucket.fs.invalidate_cache(folder)
    return len(doomed)


def _removable(name: str, keep: set[str], keep_unmanaged: bool) -> bool:
    """Whether the object ``name`` (under ARCHIVE_PREFIX) is the archive's and unused."""
    if name in keep:
        return False
    if name == f"{_POINTER_NAME}.partial" or _MANIFEST_FILE.fullmatch(name):
        return True
    match = _PARTITION_FILE.fullmatch(name.removesuffix(".partial"))
    if match is None:
        return False
    return bool(_GENERATION_FILE.fullmatch(match[3])) or not keep_unmanaged


def _remove_empty_folders(bucket: Bucket, removed: list[str]) -> None:
    """Local partition and element folders that ``removed`` left empty go too (S3 has no
    empty folders)."""
    archive = bucket.path(ARCHIVE_PREFIX)
    partitions = {path.rsplit("/", 1)[0] for path in removed}
    for folders in (partitions, {folder.rsplit("/", 1)[0] for folder in partitions}):
        for folder in sorted(folders):
            if folder.startswith(archive + "/element=") and bucket.fs.isdir(folder) and not bucket.fs.ls(folder):
                bucket.fs.rmdir(folder)


def _unmanaged_files(bucket: Bucket, element: str | None = None) -> list[tuple[Partition, str]]:
    """The Parquet files of an archive written before manifests (or by hand): those in the
    partition folders, except files of generations (unpublished without a pointer)."""
    folder = bucket.path(ARCHIVE_PREFIX)
    bucket.fs.invalidate_cache(folder)
    found = []
    for path in bucket.fs.glob(f"{folder}/element={element or '*'}/year=*/*.parquet"):
        match = _PARTITION_FILE.fullmatch(path.removeprefix(folder + "/"))
        if match is not None and not _GENERATION_FILE.fullmatch(match[3]):
            found.append((Partition(match[1], int(match[2])), match[0]))
    return sorted(found)


def archive_files(bucket: Bucket, manifest: Manifest | None, element: str | None = None) -> list[str]:
    """The Parquet files of a generation (of one element), as DuckDB names them, in
    (element, year) order.

    ``manifest`` None: an archive without one (written before manifests, or by hand in the
    same layout); its files are those found in the partition folders.
    """
    if manifest is None:
        names = [name for _, name in _unmanaged_files(bucket, element)]
    else:
        names = [file.name for file in manifest.files_of(element)]
    if bucket.protocol == "file":
        return [bucket.path(f"{ARCHIVE_PREFIX}/{name}") for name in names]
    return [bucket.url(f"{ARCHIVE_PREFIX}/{name}") for name in names]


# --------------------------------------------------------------------------- DuckDB


# The view when there is nothing to read yet: the archive's columns, no rows.
_EMPTY_VIEW_SQL = """
CREATE VIEW observations AS
SELECT CAST(NULL AS VARCHAR) AS wigos_id, CAST(NULL AS INTEGER) AS station_id,
       CAST(NULL AS TIMESTAMPTZ) AS phenomenon_time, CAST(NULL AS INTEGER) AS duration_seconds,
       CAST(NULL AS FLOAT) AS level, CAST(NULL AS SMALLINT) AS source_id,
       CAST(NULL AS DOUBLE) AS value, CAST(NULL AS VARCHAR) AS qc_status,
       CAST(NULL AS VARCHAR) AS final_flag, CAST(NULL AS INTEGER) AS version,
       CAST(NULL AS TIMESTAMPTZ) AS changed_at, CAST(NULL AS VARCHAR) AS element,
       CAST(NULL AS INTEGER) AS year
WHERE false
"""

# The partition columns' types are given, not guessed from the folder names.
_VIEW_SQL = """
SELECT * FROM read_parquet($files, hive_partitioning = true,
                           hive_types = {'element': 'VARCHAR', 'year': 'INTEGER'})
"""


def connect_archive(bucket: Bucket, manifest: Manifest | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view ``observations`` over one generation of the
    archive: ``manifest``'s, else the current one (the pointer is read once, here).

    The view has the Parquet columns plus ``element`` and ``year`` from the partition folders.
    Its files stay readable for :data:`GRACE_PERIOD` after an export supersedes them; a
    connection kept longer may find them gone (open a new one).  An archive written before
    manifests is read from its folders until the next export replaces it.  For S3 (or any
    non-local bucket) DuckDB reads through the bucket's fsspec filesystem, as its own
    extensions (httpfs) may not be installable.
    """
    if manifest is None:
        manifest = read_manifest(bucket)
    files = archive_files(bucket, manifest)
    with ExitStack() as on_error:
        connection = duckdb.connect()
        on_error.callback(connection.close)
        if not files:
            connection.execute(_EMPTY_VIEW_SQL)
        else:
            if bucket.protocol != "file":
                # Listings cached before this generation was written would hide its files.
                bucket.fs.invalidate_cache(bucket.path(ARCHIVE_PREFIX))
                connection.register_filesystem(bucket.fs)
            # A relation with the files bound as a parameter (a CREATE VIEW statement takes none).
            connection.sql(_VIEW_SQL, params={"files": files}).create_view("observations")
        on_error.pop_all()  # success: the caller closes the connection
    return connection
