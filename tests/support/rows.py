"""The latest observations as PostgreSQL holds them and as the Parquet archive holds them, in
the same columns, for tests that compare the two (archive exports, backup and restore).

The year is computed in PostgreSQL and read from the folder name in the archive, so the
comparison checks the partitioning too.
"""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore

DATABASE_ROWS = sa.text(
    """
    SELECT s.wigos_id, e.code, CAST(extract(year FROM o.phenomenon_time AT TIME ZONE 'UTC') AS integer),
           o.phenomenon_time, o.duration_seconds, o.level, o.source_id, o.value, o.qc_status,
           o.final_flag, o.version, o.changed_at
    FROM observation AS o
    JOIN station AS s ON s.id = o.station_id
    JOIN element AS e ON e.id = o.element_id
    WHERE o.status = 'latest'
    """
)
ARCHIVE_ROWS = """
    SELECT wigos_id, element, year, phenomenon_time, duration_seconds, level, source_id, value,
           qc_status, final_flag, version, changed_at
    FROM observations
"""


def database_rows(datastore: Datastore) -> Counter:
    """The latest observations in PostgreSQL, counted (a row may occur more than once)."""
    with datastore.engine.connect() as connection:
        return Counter(tuple(row) for row in connection.execute(DATABASE_ROWS))


def archive_rows(bucket: Bucket) -> Counter:
    """The observations of the archive's current generation, counted."""
    connection = connect_archive(bucket)
    try:
        return Counter(connection.execute(ARCHIVE_ROWS).fetchall())
    finally:
        connection.close()
