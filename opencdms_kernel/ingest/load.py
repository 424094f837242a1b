"""Bulk load of validated rows: new data straight into the table, the rest staged and merged.

Why it is fast (see docs/architecture.md, "Ingest"): the rows arrive with integer keys already
resolved (no text-key joins in the database), sorted in primary-key order (index inserts stay
local); a chunk that no stored row can share a key with is written with one binary COPY into
``observation`` (``copy_new_rows``), while the next chunk is validated; other chunks go into a
temporary staging table (no WAL) and one set-based MERGE at the end.  Referential integrity is
checked once per statement rather than once per row.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from opencdms_kernel.ingest import binary_copy
from opencdms_kernel.ingest.binary_copy import CopyTarget

COPY_CHUNK_ROWS = 250_000

STAGING_DDL = """
CREATE TEMP TABLE ingest_staging (
    station_id    integer  NOT NULL,
    element_id    smallint NOT NULL,
    epoch_seconds bigint   NOT NULL,
    value         double precision,
    flag          text,
    source        text,
    line          bigint   NOT NULL
) ON COMMIT DROP
"""
STAGED_COLUMNS = ("station_id", "element_id", "epoch_seconds", "value", "flag", "source", "line")

# The statements are assembled from these constant fragments (never from input), so that the
# MERGE and the plain INSERT cannot drift apart.  The staged rows as observations.  The
# source's own flag, and the file's word for where a value came from, are kept as the 'ingest'
# entry of result_quality, beside the QC entries.
STAGED_ROWS = """
SELECT station_id, element_id, to_timestamp(epoch_seconds) AS phenomenon_time, value,
       CASE WHEN flag IS NULL AND source IS NULL THEN NULL
            ELSE jsonb_strip_nulls(jsonb_build_object('flag', flag, 'source', source)) END AS ingest_quality
FROM ingest_staging
"""
NEW_RESULT_QUALITY = """CASE WHEN s.ingest_quality IS NULL THEN '{}'::jsonb
                             ELSE jsonb_build_object('ingest', s.ingest_quality) END"""
INSERTED_COLUMNS = """(station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                       value, result_quality, changed_by, comment, ingest_id)"""
INSERTED_VALUES = f"""s.station_id, s.element_id, s.phenomenon_time, :duration_seconds, :level,
                      :source_id, s.value, {NEW_RESULT_QUALITY}, :user, :comment, :ingest_id"""
WITH_INGEST_FLAG = """CASE WHEN s.ingest_quality IS NULL THEN o.result_quality - 'ingest'
                           ELSE o.result_quality || jsonb_build_object('ingest', s.ingest_quality) END"""

# A person's decision (the 'manual' entry) stays in force through every re-ingest: the stored
# value is left alone, and a delivered value that differs from the one the decision was made
# on is kept beside it as manual.source_changed, which lists the row for review (and the
# history keeps both versions).  The value a decision was made on: source_value (written by
# decisions), else a correction's original_value, else the stored value (accept, reject).
DECIDED = "o.result_quality ? 'manual' AND o.status = 'latest'"
DECIDED_SOURCE = """CASE WHEN o.result_quality -> 'manual' ? 'source_value'
                              THEN CAST(o.result_quality -> 'manual' ->> 'source_value' AS double precision)
                         WHEN o.result_quality -> 'manual' ? 'original_value'
                              THEN CAST(o.result_quality -> 'manual' ->> 'original_value' AS double precision)
                         ELSE o.value END"""
# The source_changed entry the delivered value calls for (NULL: the source agrees), compared
# without its bookkeeping so that delivering the same value again changes nothing.
WANTED_CHANGE = f"""CASE WHEN s.value IS NOT DISTINCT FROM ({DECIDED_SOURCE}) THEN NULL
                         ELSE jsonb_build_object('value', s.value) END"""
STORED_CHANGE = "(o.result_quality -> 'manual' -> 'source_changed') - 'ingest_id' - 'at'"
MANUAL_WITH_CHANGE = f"""CASE WHEN s.value IS NOT DISTINCT FROM ({DECIDED_SOURCE})
                              THEN (o.result_quality -> 'manual') - 'source_changed'
                              ELSE (o.result_quality -> 'manual') || jsonb_build_object(
                                  'source_changed', jsonb_build_object(
                                      'value', s.value, 'ingest_id', :ingest_id, 'at', now())) END"""

MERGE_SQL = f"""
MERGE INTO observation AS o
USING ({STAGED_ROWS}) AS s
ON  o.station_id = s.station_id AND o.element_id = s.element_id
AND o.phenomenon_time = s.phenomenon_time AND o.duration_seconds = :duration_seconds
AND o.level = :level AND o.source_id = :source_id
WHEN MATCHED AND {DECIDED}
             AND (({WANTED_CHANGE}) IS DISTINCT FROM ({STORED_CHANGE})
                  OR o.result_quality -> 'ingest' IS DISTINCT FROM s.ingest_quality) THEN
    UPDATE SET ingest_id = :ingest_id,
               result_quality = ({WITH_INGEST_FLAG})
                                || jsonb_build_object('manual', {MANUAL_WITH_CHANGE})
WHEN MATCHED AND NOT ({DECIDED})
             AND (o.value IS DISTINCT FROM s.value
                  OR o.result_quality -> 'ingest' IS DISTINCT FROM s.ingest_quality
                  OR o.status = 'deleted') THEN
    UPDATE SET value = s.value,
               status = 'latest',
               comment = :comment,
               ingest_id = :ingest_id,
               result_quality = {WITH_INGEST_FLAG}
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

# Each chunk is staged in key order and files run station by station, so the staged rows are
# nearly sorted already: a sort of the whole file here would cost more than it saves.
INSERT_SQL = f"INSERT INTO observation {INSERTED_COLUMNS} SELECT {INSERTED_VALUES} FROM ({STAGED_ROWS}) AS s"

# The same question for one chunk's rows before they are written, from their series' time ranges.
STORED_OVERLAP_SQL = """
SELECT EXISTS (
    SELECT 1
    FROM unnest(CAST(:stations AS integer[]), CAST(:elements AS smallint[]),
                CAST(:firsts AS bigint[]), CAST(:lasts AS bigint[])) AS k (station_id, element_id, first, last)
    JOIN observation AS o
      ON o.station_id = k.station_id AND o.element_id = k.element_id
     AND o.phenomenon_time BETWEEN to_timestamp(k.first) AND to_timestamp(k.last)
    WHERE o.duration_seconds = :duration_seconds AND o.level = :level AND o.source_id = :source_id
)
"""

# Keys delivered more than once by one file, in different chunks (validation sees one chunk).
REPEATED_KEYS_SQL = """
SELECT station_id, element_id, epoch_seconds,
       array_agg(line ORDER BY line) AS lines, array_agg(value ORDER BY line) AS "values",
       array_agg(flag ORDER BY line) AS flags
FROM ingest_staging
WHERE (station_id, element_id) IN (SELECT * FROM unnest(CAST(:stations AS integer[]), CAST(:elements AS smallint[])))
GROUP BY station_id, element_id, epoch_seconds
HAVING count(*) > 1
"""
# Keys validation refused as conflicts within a chunk, and the staged rows (of other chunks)
# that give one of them again: each is refused, naming a conflicting line with another value.
CONFLICTS_DDL = """
CREATE TEMP TABLE ingest_conflicts (
    station_id integer, element_id smallint, epoch_seconds bigint, line bigint, value double precision, flag text
) ON COMMIT DROP
"""
CONFLICTS_INSERT_SQL = """
INSERT INTO ingest_conflicts
SELECT * FROM unnest(CAST(:station_id AS integer[]), CAST(:element_id AS smallint[]),
                     CAST(:epoch_seconds AS bigint[]), CAST(:line AS bigint[]),
                     CAST(:value AS double precision[]), CAST(:flag AS text[]))
"""
STAGED_CONFLICTS_SQL = """
SELECT s.line, s.element_id, s.value, o.line AS other_line, o.value AS other_value
FROM ingest_staging AS s
JOIN LATERAL (
    SELECT c.line, c.value FROM ingest_conflicts AS c
    WHERE c.station_id = s.station_id AND c.element_id = s.element_id AND c.epoch_seconds = s.epoch_seconds
    ORDER BY (c.value IS NOT DISTINCT FROM s.value AND c.flag IS NOT DISTINCT FROM s.flag), c.line
    LIMIT 1
) AS o ON true
ORDER BY s.line
"""
DROP_STAGED_SQL = """
DELETE FROM ingest_staging
WHERE (line, element_id) IN (SELECT * FROM unnest(CAST(:lines AS bigint[]), CAST(:elements AS smallint[])))
"""

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


def create_staging(connection: Connection) -> None:
    """Create this transaction's staging table (dropped at commit)."""
    connection.execute(sa.text(STAGING_DDL))


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


def stage_rows(connection: Connection, rows: pa.Table) -> None:
    """COPY validated ``rows`` (station_id, element_id, epoch_seconds, value, flag, source, line) into staging."""
    if not rows.num_rows:
        return
    raw = connection.connection.driver_connection  # the psycopg connection, for COPY
    with raw.cursor() as cursor:
        with cursor.copy("COPY ingest_staging FROM STDIN (FORMAT csv)") as copy:
            for chunk in _csv_chunks(rows.select(list(STAGED_COLUMNS))):
                copy.write(chunk)


@dataclass
class StagedKeys:
    """Per series, the time ranges of the chunks staged so far: where two chunks overlap, the
    file may hold one key twice, which validation (one chunk at a time) cannot see."""

    ranges: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    overlapping: set[tuple[int, int]] = field(default_factory=set)
    # Rows validation refused as conflicts (few): their keys are refused in every other chunk.
    conflicts: list[pa.Table] = field(default_factory=list)

    def add_conflicts(self, rows: pa.Table) -> None:
        """Note the rows of one chunk refused because their key came with different values (their
        times count as the chunk's, so that another chunk giving the key again is seen)."""
        if rows.num_rows:
            self.conflicts.append(rows)
            self.add(rows)

    def add(self, rows: pa.Table) -> None:
        """Note the series and time ranges of one chunk's accepted rows."""
        if not rows.num_rows:
            return
        spans = rows.group_by(["station_id", "element_id"]).aggregate(
            [("epoch_seconds", "min"), ("epoch_seconds", "max")])
        for station, element, first, last in zip(
            spans.column("station_id").to_pylist(), spans.column("element_id").to_pylist(),
            spans.column("epoch_seconds_min").to_pylist(), spans.column("epoch_seconds_max").to_pylist(),
        ):
            series = (station, element)
            seen = self.ranges.setdefault(series, [])
            if any(first <= other_last and other_first <= last for other_first, other_last in seen):
                self.overlapping.add(series)
            seen.append((first, last))


def overlaps_stored(connection: Connection, rows: pa.Table, series: SeriesDefaults) -> bool:
    """Whether a stored observation may share a key with ``rows`` (by series and time range)."""
    if not rows.num_rows:
        return False
    spans = rows.group_by(["station_id", "element_id"]).aggregate(
        [("epoch_seconds", "min"), ("epoch_seconds", "max")])
    return bool(connection.execute(sa.text(STORED_OVERLAP_SQL), {
        "stations": spans.column("station_id").to_pylist(), "elements": spans.column("element_id").to_pylist(),
        "firsts": spans.column("epoch_seconds_min").to_pylist(), "lasts": spans.column("epoch_seconds_max").to_pylist(),
        "duration_seconds": series.duration_seconds, "level": series.level, "source_id": series.source_id,
    }).scalar_one())


def copy_new_rows(connection: Connection, rows: pa.Table, target: CopyTarget) -> bool:
    """COPY ``rows`` straight into ``observation`` (binary); False, with nothing written, when
    they are not suited to it (see binary_copy.encode).  Only for keys no stored row has."""
    stream = binary_copy.encode(rows, target)
    if stream is None:
        return False
    raw = connection.connection.driver_connection  # the psycopg connection, for COPY
    with raw.cursor() as cursor, cursor.copy(stream.sql) as copy:
        for block in stream.blocks:
            copy.write(block)
    return True


def remove_cross_chunk_duplicates(
    connection: Connection, staged: StagedKeys, labels: dict[int, tuple[str, str]]
) -> pa.Table:
    """Refuse keys that one file gives in two chunks, as validation does within a chunk.

    Two rows with the same value and flag: the later is a duplicate of the first.  Different
    values: every row of the key is refused as a conflict, naming the first other line and its
    value.  ``labels``: element id -> (file column, reason prefix), as validation names them.
    Returns the rejects (line, column, value, reason); the refused rows leave the staging table.
    """
    from opencdms_kernel.ingest.validate import REJECT_SCHEMA

    rejects: dict[str, list[object]] = {"line": [], "column": [], "value": [], "reason": []}
    drop_lines: list[int] = []
    drop_elements: list[int] = []

    def refuse(line: int, element_id: int, value: float | None, reason: str) -> None:
        column, prefix = labels.get(element_id, ("value", ""))
        rejects["line"].append(line)
        rejects["column"].append(column)
        rejects["value"].append(_text(value))
        rejects["reason"].append(prefix + reason)
        drop_lines.append(line)
        drop_elements.append(element_id)

    if staged.conflicts:
        connection.execute(sa.text(CONFLICTS_DDL))
        conflicts = pa.concat_tables(staged.conflicts)
        connection.execute(sa.text(CONFLICTS_INSERT_SQL), {
            name: conflicts.column(name).to_pylist() for name in conflicts.column_names})
        for row in connection.execute(sa.text(STAGED_CONFLICTS_SQL)):
            refuse(row.line, row.element_id, row.value,
                   f"conflicts with line {row.other_line} (value {_text(row.other_value)})")
        _drop_staged(connection, drop_lines, drop_elements)
        drop_lines.clear()
        drop_elements.clear()
    if staged.overlapping:
        series = sorted(staged.overlapping)
        repeated = connection.execute(sa.text(REPEATED_KEYS_SQL), {
            "stations": [station for station, _ in series], "elements": [element for _, element in series],
        }).all()
        for row in repeated:
            same = len(set(zip(row.values, row.flags))) == 1
            for index, line in enumerate(row.lines):
                if same and index == 0:
                    continue
                if same:
                    reason = f"duplicate of line {row.lines[0]}"
                else:
                    other = 1 if index == 0 else 0
                    reason = f"conflicts with line {row.lines[other]} (value {_text(row.values[other])})"
                refuse(line, row.element_id, row.values[index], reason)
        _drop_staged(connection, drop_lines, drop_elements)
    return pa.table(rejects, schema=REJECT_SCHEMA).sort_by([("line", "ascending")])


def _drop_staged(connection: Connection, lines: list[int], elements: list[int]) -> None:
    if lines:
        connection.execute(sa.text(DROP_STAGED_SQL), {"lines": lines, "elements": elements})


def _text(value: float | None) -> str:
    """A staged value as reject reports show it (the stored number, after any unit conversion)."""
    return "" if value is None else f"{value:g}"


def merge_staging(
    connection: Connection, series: SeriesDefaults, user: str, ingest_id: int | None, comment: str | None = None
) -> MergeCounts:
    """Merge the staging table into ``observation``: new keys inserted, changed values updated
    (the audit trigger keeps the old version), identical ones left alone, and a person's
    decision kept in force (see ``DECIDED``).  ``ingest_id``: the ledger entry of the load."""
    # Temporary tables are never auto-analysed; the MERGE plan depends on the row count.
    connection.execute(sa.text("ANALYZE ingest_staging"))
    staged = connection.execute(sa.text("SELECT count(*) FROM ingest_staging")).scalar_one()
    inserted_before, updated_before = connection.execute(sa.text(XACT_COUNTS_SQL)).one()
    key = {
        "duration_seconds": series.duration_seconds,
        "level": series.level,
        "source_id": series.source_id,
    }
    overlaps = connection.execute(sa.text(OVERLAP_SQL), key).scalar_one()
    connection.execute(
        sa.text(MERGE_SQL if overlaps else INSERT_SQL),
        {**key, "user": user, "comment": comment, "ingest_id": ingest_id},
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
