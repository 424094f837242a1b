"""Flags in layers, and their sparse write-back to PostgreSQL.

``observation.result_quality`` holds one entry per source of judgement:

* ``ingest``: the file's own flag (written by ingest, never by QC);
* one entry per automatic test that raised something, e.g.
  ``{"range": {"result": "suspect", "flag": "above_range", "rule": "qc_threshold:12",
  "version": 3, "run": 7, "threshold": "station", "low": 8.1, "high": 21.4}}`` — a test that
  passes leaves no entry; ``run`` is the run that first raised the entry as it stands;
  ``threshold`` the level of the rule that judged the value (``station``, ``network``,
  ``global``) and, where it is not the station's own, ``fallback`` says why (e.g. "station
  history too short: 45 values of July, 120 needed");
* ``manual``: a person's decision (see :mod:`opencdms_kernel.qc.manual`), never touched by QC.

``qc_status`` and ``final_flag`` are derived from these by the SQL functions
``qc_status_of`` / ``qc_final_flag_of`` (migration 0002): a manual decision wins (accept and
correct: passed, reject: failed), then the worst automatic result, then "passed" for a value a
run checked.

Write-back is sparse.  A run stages only the values with a finding now, or shown flagged or
decided in the archive (their entries may have to go); one ``UPDATE … FROM`` merges the run's
entries (``qc_merge_entries``) and changes only rows whose entries or derived status differ,
and only if the row is still the version that was checked.  A value without findings is not
written at all: the run's ``qc_run`` row records what it covered, and the view
``observation_quality`` (or :func:`attach_quality_view` over the archive) derives "passed".
Every UPDATE goes through the observation audit triggers, so history records each change.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import FinalFlag, QcStatus, QcTest, Severity, SkippedCheck
from opencdms_kernel.qc.rules import Resolved, rule_labels


@dataclass(frozen=True, eq=False)
class Findings:
    """What one test found, for the frame rows in scope it raised something on.

    ``rows`` ascending and unique; the other arrays are aligned with it.  ``details``: extra
    members of the entry (numbers are rounded to 4 decimals when written).
    """

    test: QcTest
    rows: np.ndarray  # int64
    failed: np.ndarray  # bool; otherwise suspect
    flag: pa.Array  # string
    rule: pa.Array  # string, e.g. "qc_threshold:12"
    version: pa.Array  # int32, null for unversioned rules (element limits)
    details: Mapping[str, pa.Array] = field(default_factory=dict)
    tested: int = 0
    skipped_values: int = 0
    skipped: tuple[SkippedCheck, ...] = ()

    @staticmethod
    def empty(test: QcTest, tested: int = 0, skipped_values: int = 0,
              skipped: tuple[SkippedCheck, ...] = ()) -> "Findings":
        return Findings(test, np.empty(0, np.int64), np.empty(0, bool), pa.array([], pa.string()),
                        pa.array([], pa.string()), pa.array([], pa.int32()), {}, tested,
                        skipped_values, skipped)

    @staticmethod
    def of_thresholds(
        test: QcTest, rows: np.ndarray, frame: Frame, resolved: Resolved, flag: pa.Array,
        details: Mapping[str, pa.Array], tested: int, **counts: object,
    ) -> "Findings":
        """Findings of a test governed by ``qc_threshold`` rows: each flagged row (ascending)
        takes the severity, rule, version and level of the threshold in force for its cell,
        and the reason a network or global threshold stood in for the station's own."""
        cell = frame.cell[rows]
        return Findings(
            test=test,
            rows=rows.astype(np.int64),
            failed=resolved.failed[cell],
            flag=flag,
            rule=rule_labels("qc_threshold", resolved.rule_id[cell]),
            version=versions(resolved.version[cell]),
            details={**details, "threshold": resolved.level_names(cell), "fallback": resolved.fallback_reasons(cell)},
            tested=tested,
            **counts,  # type: ignore[arg-type]
        )

    @property
    def suspect_count(self) -> int:
        return int((~self.failed).sum())

    @property
    def failed_count(self) -> int:
        return int(self.failed.sum())


def versions(values: np.ndarray) -> pa.Array:
    """Rule versions as an int32 array, 0 meaning "unversioned" (null)."""
    values = values.astype(np.int32)
    return pa.array(values, pa.int32(), mask=values <= 0)


# --------------------------------------------------------------------------- staging


_STAGED_SCHEMA = pa.schema([
    ("station_id", pa.int32()),
    ("element_id", pa.int16()),
    ("phenomenon_time", pa.timestamp("us", tz="UTC")),
    ("duration_seconds", pa.int32()),
    ("level", pa.float32()),
    ("source_id", pa.int16()),
    ("version", pa.int32()),
    ("entries", pa.string()),
])


def staged_rows(frame: Frame, findings: Sequence[Findings], run_id: int) -> pa.Table:
    """The rows to hand to PostgreSQL: every value with a finding now, or a candidate in scope
    (flagged or decided in the archive), with its new automatic entries as one JSON object
    (``{}``: none), keyed and versioned as the archive had it, sorted by primary key."""
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        selects = []
        for index, found in enumerate(findings):
            if not found.rows.size:
                continue
            columns = {
                "frame_row": pa.array(found.rows, pa.int64()),
                "result": pa.array(np.where(found.failed, Severity.FAILED.value, Severity.SUSPECT.value)),
                "flag": found.flag,
                "rule": found.rule,
                "version": found.version,
                **found.details,
            }
            db.register(f"found_{index}", pa.table(columns))
            members = ["'result', result", "'flag', flag", "'rule', rule", "'version', version", f"'run', {int(run_id)}"]
            for name, array in found.details.items():
                if pa.types.is_floating(array.type):
                    value = f'round("{name}", 4)'
                elif pa.types.is_timestamp(array.type):
                    value = f'strftime("{name}", \'%Y-%m-%dT%H:%M:%SZ\')'
                else:
                    value = f'"{name}"'
                members.append(f"'{name}', {value}")
            # json_merge_patch drops members whose value is null (e.g. an unversioned rule).
            selects.append(
                f"SELECT frame_row, '{found.test.value}' AS test, "
                f"json_merge_patch('{{}}', json_object({', '.join(members)})) AS entry FROM found_{index}"
            )
        candidate_rows = np.flatnonzero(frame.candidate & frame.in_scope)
        db.register("candidates", pa.table({"frame_row": pa.array(candidate_rows, pa.int64())}))
        found_sql = (" UNION ALL ".join(selects)) if selects else (
            "SELECT CAST(NULL AS BIGINT) AS frame_row, CAST(NULL AS VARCHAR) AS test, "
            "CAST(NULL AS JSON) AS entry WHERE false")
        entries = db.sql(
            f"""
            WITH found AS ({found_sql}),
            grouped AS (SELECT frame_row, CAST(json_group_object(test, entry) AS VARCHAR) AS entries
                        FROM found GROUP BY frame_row)
            SELECT coalesce(g.frame_row, c.frame_row) AS frame_row, coalesce(g.entries, '{{}}') AS entries
            FROM grouped AS g FULL JOIN candidates AS c ON c.frame_row = g.frame_row
            ORDER BY 1
            """
        ).to_arrow_table()
    rows = entries.column("frame_row").to_numpy()
    series = frame.series_of(rows)
    element_ids = np.array([element.id for element in frame.elements], np.int16)
    table = pa.table(
        {
            "station_id": frame.series_station[series],
            "element_id": element_ids[frame.series_element[series]],
            "phenomenon_time": pa.array(frame.time[rows], pa.timestamp("us", tz="UTC")),
            "duration_seconds": frame.series_duration[series],
            "level": frame.series_level[series],
            "source_id": frame.series_source[series],
            "version": frame.version[rows],
            "entries": entries.column("entries"),
        },
        schema=_STAGED_SCHEMA,
    )
    return table.sort_by([("station_id", "ascending"), ("element_id", "ascending"),
                          ("phenomenon_time", "ascending")])


# --------------------------------------------------------------------------- write-back

_STAGING_DDL = """
CREATE TEMP TABLE qc_staging (
    station_id       integer  NOT NULL,
    element_id       smallint NOT NULL,
    phenomenon_time  timestamptz NOT NULL,
    duration_seconds integer  NOT NULL,
    level            real     NOT NULL,
    source_id        smallint NOT NULL,
    version          integer  NOT NULL,
    entries          jsonb    NOT NULL
) ON COMMIT DROP
"""

_KEY_MATCH = """
    o.station_id = s.station_id AND o.element_id = s.element_id
AND o.phenomenon_time = s.phenomenon_time AND o.duration_seconds = s.duration_seconds
AND o.level = s.level AND o.source_id = s.source_id"""

# Only the version that was checked is written; the audit trigger keeps the old row.
# Returns (staged rows still at the version checked, rows written).
_WRITE_SQL = f"""
WITH merged AS MATERIALIZED (
    SELECT s.station_id, s.element_id, s.phenomenon_time, s.duration_seconds, s.level, s.source_id,
           qc_merge_entries(o.result_quality, s.entries, CAST(:tests AS text[])) AS result_quality
    FROM qc_staging AS s
    JOIN observation AS o ON {_KEY_MATCH} AND o.version = s.version AND o.status = 'latest'
), derived AS MATERIALIZED (
    SELECT m.*, qc_status_of(m.result_quality, true) AS qc_status,
           qc_final_flag_of(m.result_quality, true) AS final_flag
    FROM merged AS m
), written AS (
    UPDATE observation AS o
    SET result_quality = s.result_quality, qc_status = s.qc_status, final_flag = s.final_flag
    FROM derived AS s
    WHERE {_KEY_MATCH}
      AND (o.result_quality IS DISTINCT FROM s.result_quality
           OR o.qc_status IS DISTINCT FROM s.qc_status
           OR o.final_flag IS DISTINCT FROM s.final_flag)
    RETURNING 1
)
SELECT (SELECT count(*) FROM derived), (SELECT count(*) FROM written)
"""


def write_back(connection: sa.Connection, staged: pa.Table, tests: Sequence[QcTest]) -> tuple[int, int]:
    """Merge the staged entries into ``observation`` (in the caller's transaction).

    Returns (rows written, staged rows skipped because the observation changed since the
    snapshot that was checked).
    """
    if not staged.num_rows:
        return 0, 0
    connection.execute(sa.text(_STAGING_DDL))
    buffer = io.BytesIO()
    pacsv.write_csv(staged, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    raw = connection.connection.driver_connection
    with raw.cursor() as cursor:
        with cursor.copy("COPY qc_staging FROM STDIN (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
    connection.execute(sa.text("ANALYZE qc_staging"))
    current, written = connection.execute(sa.text(_WRITE_SQL), {"tests": [test.value for test in tests]}).one()
    stale = staged.num_rows - current
    return int(written), int(stale)


# --------------------------------------------------------------------------- derived quality


_COVERAGE_SQL = sa.text(
    """
    SELECT id, station_ids, element_ids, period_start, period_end, data_as_of
    FROM qc_run WHERE status = 'finished' ORDER BY id
    """
)


def attach_quality_view(archive: duckdb.DuckDBPyConnection, datastore: Datastore) -> None:
    """Create the DuckDB view ``observation_quality`` over the archive's ``observations``:
    the archive's ``qc_status``/``final_flag``, with "passed"/"good" for a value without a
    stored status that a finished QC run covered (as the PostgreSQL view of that name does).

    The coverage rows (one per run, few) are read from PostgreSQL into a DuckDB table.
    """
    with datastore.engine.connect() as connection:
        runs = connection.execute(_COVERAGE_SQL).all()
        elements = dict(connection.execute(sa.text("SELECT id, code FROM element")).all())
    coverage = pa.table({
        "run_id": pa.array([run.id for run in runs], pa.int64()),
        "station_ids": pa.array([run.station_ids for run in runs], pa.list_(pa.int32())),
        "elements": pa.array([[elements[i] for i in run.element_ids] if run.element_ids is not None else None
                              for run in runs], pa.list_(pa.string())),
        "period_start": pa.array([run.period_start for run in runs], pa.timestamp("us", tz="UTC")),
        "period_end": pa.array([run.period_end for run in runs], pa.timestamp("us", tz="UTC")),
        "data_as_of": pa.array([run.data_as_of for run in runs], pa.timestamp("us", tz="UTC")),
    })
    archive.execute("DROP TABLE IF EXISTS qc_coverage")
    archive.register("qc_coverage_input", coverage)
    archive.execute("CREATE TABLE qc_coverage AS SELECT * FROM qc_coverage_input")
    archive.unregister("qc_coverage_input")
    # The statuses are the vocabulary's constants, not input (a view's text cannot bind them).
    archive.execute(
        f"""
        CREATE OR REPLACE VIEW observation_quality AS
        SELECT o.* REPLACE (
                   CASE WHEN c.run_id IS NULL THEN o.qc_status ELSE '{QcStatus.PASSED.value}' END AS qc_status,
                   CASE WHEN c.run_id IS NULL THEN o.final_flag ELSE '{FinalFlag.GOOD.value}' END AS final_flag),
               c.run_id AS checked_by_run
        FROM observations AS o
        LEFT JOIN LATERAL (
            SELECT max(r.run_id) AS run_id FROM qc_coverage AS r
            WHERE o.qc_status = '{QcStatus.NONE.value}' AND o.value IS NOT NULL
              AND o.changed_at < r.data_as_of
              AND (r.station_ids IS NULL OR list_contains(r.station_ids, o.station_id))
              AND (r.elements IS NULL OR list_contains(r.elements, o.element))
              AND (r.period_start IS NULL OR o.phenomenon_time >= r.period_start)
              AND (r.period_end IS NULL OR o.phenomenon_time <= r.period_end)
        ) AS c ON true
        """
    )
