"""Archive export benchmark: a full export of a few million observations, against a same-run baseline.

Input: ``--rows`` daily observations (about 3 million by default: 3 elements x 10 years x as many
stations as it takes) written straight into ``observation`` with one ``INSERT … SELECT`` from
``generate_series`` on a scratch database of a private embedded PostgreSQL (or of the server
named by OPENCDMS_DATABASE_URL), then vacuumed so that no run pays for hint bits.  Some values
are NULL, some carry a final flag and a QC status other than ``none``, as in a real archive.

Measured, alternating, ``--repeat`` times:
- ours: ``export_archive(full=True)`` into a local folder bucket (COPY out, decode, sort, Parquet,
  manifest and clean-up of older generations: everything an ``opencdms archive --full`` does);
- baseline: a bare ``COPY (SELECT <the same columns> FROM observation WHERE status = 'latest')
  TO STDOUT (FORMAT binary)`` of the same rows, read and thrown away: what it costs the server
  to send the rows, with nothing done to them.

Usage: python bench/archive.py [--rows 3000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, Measurement, report, scratch_datastore, timed  # noqa: E402

from opencdms_kernel.archive import export_archive  # noqa: E402
from opencdms_kernel.bucket import open_bucket  # noqa: E402
from opencdms_kernel.db.engine import Datastore, start_embedded_postgres  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402

ELEMENTS = ("TMAX", "TMIN", "PRCP")
YEARS = 10
FIRST_YEAR = 2011

# The stations, then every station x element x day in primary-key order (as an ingest of
# sorted files leaves them).  Values are deterministic functions of the key.
_STATIONS_SQL = sa.text(
    """
    INSERT INTO station (wigos_id, name, latitude, longitude)
    SELECT '0-20000-0-' || (80000 + n), 'Bench ' || n, -1 - n * 0.001, 36 + n * 0.001
    FROM generate_series(1, :stations) AS n
    """
)
_SOURCE_SQL = sa.text("INSERT INTO source (name) VALUES ('bench') RETURNING id")
_ROWS_SQL = sa.text(
    """
    INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level,
                             source_id, value, qc_status, final_flag, changed_by)
    SELECT s.id, e.id, d.day, 86400, 0, :source,
           CASE WHEN (s.id * 7 + d.n) % 997 = 0 THEN NULL ELSE round((20 + 10 * sin(d.n / 58.1) + s.id % 5)::numeric, 1) END,
           CASE WHEN (s.id + d.n) % 211 = 0 THEN 'suspect' WHEN d.n % 3 = 0 THEN 'passed' ELSE 'none' END,
           CASE WHEN (s.id + d.n) % 401 = 0 THEN 'E' END,
           'bench'
    FROM station AS s
    CROSS JOIN (SELECT id FROM element WHERE code = ANY(:elements)) AS e
    CROSS JOIN (SELECT n, make_timestamptz(:first_year, 1, 1, 0, 0, 0, 'UTC') + n * interval '1 day' AS day
                FROM generate_series(0, :days - 1) AS n) AS d
    ORDER BY s.id, e.id, d.day
    """
)
# The export's own row selection, without its wire-format tricks: all the server has to send.
_BASELINE_COPY = """
    COPY (SELECT station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                 value, qc_status, version, changed_at, final_flag
          FROM observation WHERE status = 'latest') TO STDOUT (FORMAT binary)
"""


@contextmanager
def admin_url() -> Iterator[str]:
    """OPENCDMS_DATABASE_URL if set, else a private embedded server of this benchmark's own."""
    configured = os.environ.get("OPENCDMS_DATABASE_URL")
    if configured:
        yield Settings(database_url=configured).database_url  # type: ignore[misc]
        return
    url, handle = start_embedded_postgres(WORK / "archive-pgdata")
    try:
        yield url
    finally:
        handle.cleanup()  # type: ignore[attr-defined]


def load(datastore: Datastore, rows: int) -> int:
    """Write about ``rows`` observations; returns how many were written."""
    days = (sa.func.make_date(FIRST_YEAR + YEARS, 1, 1) - sa.func.make_date(FIRST_YEAR, 1, 1))
    with datastore.engine.begin() as connection:
        day_count = int(connection.execute(sa.select(days)).scalar_one())
        stations = max(1, round(rows / (len(ELEMENTS) * day_count)))
        connection.execute(_STATIONS_SQL, {"stations": stations})
        source = connection.execute(_SOURCE_SQL).scalar_one()
        written = connection.execute(
            _ROWS_SQL,
            {"source": source, "elements": list(ELEMENTS), "first_year": FIRST_YEAR, "days": day_count},
        ).rowcount
    with datastore.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text("VACUUM ANALYZE observation"))
    return written


def bare_copy(datastore: Datastore) -> int:
    """The baseline: the same rows sent by the server in binary and thrown away; bytes read."""
    received = 0
    with datastore.engine.connect() as connection:
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(_BASELINE_COPY) as copy:
            for block in copy:
                received += len(block)
        connection.rollback()
    return received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    bucket_dir = WORK / "archive-bucket"
    shutil.rmtree(bucket_dir, ignore_errors=True)
    with admin_url() as url, scratch_datastore(url, bucket_dir) as (datastore, settings):
        bucket = open_bucket(settings)
        rows = load(datastore, args.rows)
        print(f"input: {rows:,} observations", flush=True)
        export_archive(datastore, bucket, full=True)  # warm-up: caches, imports, first files
        ours = Measurement("opencdms export_archive(full=True)", rows)
        baseline = Measurement("baseline: bare binary COPY (SELECT …) TO STDOUT", rows)
        for run in range(args.repeat):
            baseline.seconds.append(timed(lambda: bare_copy(datastore)))
            result = export_archive(datastore, bucket, full=True)
            assert result.rows == rows, f"exported {result.rows:,} of {rows:,}"
            ours.seconds.append(result.seconds)
            print(f"run {run + 1}: export {ours.seconds[-1]:.2f} s, bare COPY {baseline.seconds[-1]:.2f} s", flush=True)
    shutil.rmtree(bucket_dir, ignore_errors=True)
    report(
        "archive export",
        [ours, baseline],
        [
            ("export observations per second (millions)", ours.rate / 1e6, ">=", 1.0),
            ("export rate / bare COPY rate", ours.rate / baseline.rate, ">=", 0.5),
        ],
    )


if __name__ == "__main__":
    main()
