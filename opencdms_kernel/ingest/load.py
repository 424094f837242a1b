"""Bulk load of validated rows: COPY into a staging table, then one set-based MERGE.

Why it is fast (see docs/architecture.md): the rows arrive with integer keys already resolved
(no text-key joins in the database), sorted in primary-key order (index inserts stay local),
the staging table is a temporary one (no WAL), the CSV for COPY is produced in a second thread
while the server parses the previous chunk, referential integrity is checked once per
statement rather than once per row, and when no stored row can share a key with the file (new
data) the merge is a plain INSERT without the MERGE's join.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Connection

COPY_CHUNK_ROWS = 250_000

STAGING_DDL = """
CREATE TEMP TABLE ingest_staging (
    station_id    integer  NOT NULL,
    element_id    smallint NOT NULL,
    epoch_seconds bigint   NOT NULL,
    value         double precision,
    flag          text
) ON COMMIT DROP
"""

# The statements are assembled from these constant fragments (never from input), so that the
# MERGE and the plain INSERT cannot drift apart.  The staged rows as observations.  The source's own flag is kept as the 'ingest' entry of
# result_quality, beside the QC entries.
STAGED_ROWS = """
SELECT station_id, element_id, to_timestamp(epoch_seconds) AS phenomenon_time, value,
       CASE WHEN flag IS NULL THEN NULL ELSE jsonb_build_object('flag', flag) END AS ingest_quality
FROM ingest_staging
"""
NEW_RESULT_QUALITY = """CASE WHEN s.ingest_quality IS NULL THEN '{}'::jsonb
                             ELSE jsonb_build_object('ingest', s.ingest_quality) END"""
INSERTED_COLUMNS = """(station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                       value, result_quality, changed_by, comment)"""
INSERTED_VALUES = f"""s.station_id, s.element_id, s.phenomenon_time, :duration_seconds, :level,
                      :source_id, s.value, {NEW_RESULT_QUALITY}, :user, :comment"""

MERGE_SQL = f"""
MERGE INTO observation AS o
USING ({STAGED_ROWS}) AS s
ON  o.station_id = s.station_id AND o.element_id = s.element_id
AND o.phenomenon_time = s.phenomenon_time AND o.duration_seconds = :duration_seconds
AND o.level = :level AND o.source_id = :source_id
WHEN MATCHED AND (o.value IS DISTINCT FROM s.value
                  OR o.result_quality -> 'ingest' IS DISTINCT FROM s.ingest_quality
                  OR o.status = 'deleted') THEN
    UPDATE SET value = s.value,
               status = 'latest',
               comment = :comment,
               result_quality = CASE WHEN s.ingest_quality IS NULL
                                     THEN o.result_quality - 'ingest'
                                     ELSE o.result_quality
                                          || jsonb_build_object('ingest', s.ingest_quality) END
WHEN NOT MATCHED THEN
    INSERT {INSERTED_COLUMNS} VALUES ({INSERTED_VALUES})
"""

# When no stored row can share a key with the staged rows (the usual case for new data), the
# merge is a plain sorted INSERT: the same result as the MERGE without its join.
OVERLAP_SQL = """
SELECT EXISTS (
    SELECT 1
    FROM (SELECT station_id, element_id,
                 to_timestamp(min(epoch_seconds)) AS first_time,
                 to_timestamp(max(epoch_seconds)) AS last_time
          FROM ingest_staging GROUP BY station_id, element_id) AS k
    JOIN observation AS o
      ON o.station_id = k.station_id AND o.element_id = k.element_id
     AND o.phenomenon_time BETWEEN k.first_time AND k.last_time
    WHERE o.duration_seconds = :duration_seconds AND o.level = :level AND o.source_id = :source_id
)
"""

INSERT_SQL = f"INSERT INTO observation {INSERTED_COLUMNS} SELECT {INSERTED_VALUES} FROM ({STAGED_ROWS}) AS s"

# Row counts of this transaction on the observation table, kept by PostgreSQL itself.
XACT_COUNTS_SQL = """
SELECT pg_stat_get_xact_tuples_inserted('observation'::regclass),
       pg_stat_get_xact_tuples_updated('observation'::regclass)
"""


@dataclass(frozen=True)
class MergeCounts:
    """What one merge did to the observation table."""

    inserted: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class SeriesDefaults:
    """The parts of the natural key that a file gives for all its rows."""

    source_id: int
    duration_seconds: int
    level: float


def identify_writer(connection: Connection, user: str, reason: str | None = None) -> None:
    """Name the writer (and why) for the audit triggers, for this transaction only."""
    connection.execute(
        sa.text("SELECT set_config('opencdms.user', :user, true), "
                "set_config('opencdms.reason', :reason, true)"),
        {"user": user, "reason": reason or ""},
    )


def _csv_chunks(rows: pa.Table) -> Iterator[bytes]:
    """CSV bytes of ``rows`` in chunks, each made in a worker thread ahead of its use."""
    options = pacsv.WriteOptions(include_header=False, quoting_style="needed")

    def encode(offset: int) -> bytes:
        buffer = io.BytesIO()
        pacsv.write_csv(rows.slice(offset, COPY_CHUNK_ROWS), buffer, options)
        return buffer.getvalue()

    with ThreadPoolExecutor(max_workers=1) as pool:
        # pyarrow releases the GIL while encoding, so this overlaps with the COPY below.
        yield from pool.map(encode, range(0, rows.num_rows, COPY_CHUNK_ROWS))


def copy_to_staging(connection: Connection, rows: pa.Table) -> None:
    """Create the transaction's staging table and COPY ``rows`` into it."""
    connection.execute(sa.text(STAGING_DDL))
    raw = connection.connection.driver_connection  # the psycopg connection, for COPY
    with raw.cursor() as cursor:
        with cursor.copy("COPY ingest_staging FROM STDIN (FORMAT csv)") as copy:
            for chunk in _csv_chunks(rows):
                copy.write(chunk)
    # Temporary tables are never auto-analysed; the MERGE plan depends on the row count.
    connection.execute(sa.text("ANALYZE ingest_staging"))


def merge_staging(
    connection: Connection, series: SeriesDefaults, user: str, comment: str | None
) -> MergeCounts:
    """Merge the staging table into ``observation``: new keys inserted, changed values updated
    (the audit trigger keeps the old version), identical ones left alone."""
    staged = connection.execute(sa.text("SELECT count(*) FROM ingest_staging")).scalar_one()
    inserted_before, updated_before = connection.execute(sa.text(XACT_COUNTS_SQL)).one()
    key = {
        "duration_seconds": series.duration_seconds,
        "level": series.level,
        "source_id": series.source_id,
    }
    overlaps = connection.execute(sa.text(OVERLAP_SQL), key).scalar_one()
    connection.execute(
        sa.text(MERGE_SQL if overlaps else INSERT_SQL), {**key, "user": user, "comment": comment}
    )
    inserted_after, updated_after = connection.execute(sa.text(XACT_COUNTS_SQL)).one()
    inserted = inserted_after - inserted_before
    updated = updated_after - updated_before
    return MergeCounts(inserted=inserted, updated=updated, unchanged=staged - inserted - updated)


def source_id(connection: Connection, name: str) -> int:
    """Id of the data source ``name``, created on first use."""
    connection.execute(
        sa.text("INSERT INTO source (name) VALUES (:name) ON CONFLICT (name) DO NOTHING"),
        {"name": name},
    )
    return connection.execute(
        sa.text("SELECT id FROM source WHERE name = :name"), {"name": name}
    ).scalar_one()


def lock_ingest(connection: Connection) -> None:
    """Serialise merges: two files touching the same keys must not interleave."""
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('opencdms.ingest'))"))
