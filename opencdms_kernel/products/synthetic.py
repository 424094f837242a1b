"""Write observation tables in the archive's Parquet layout, for tests and benchmarks.

The products read whatever folder holds ``archive/observations/element=<code>/year=<y>/*.parquet``
with the archive's columns (:data:`opencdms_kernel.archive.PARQUET_SCHEMA`).  These helpers
write such a folder straight from Arrow or numpy, without PostgreSQL, so a test can build the
exact days it needs and a benchmark can build 33 million values in seconds.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencdms_kernel.archive import ARCHIVE_PREFIX, PARQUET_SCHEMA

# Defaults for the columns a caller usually does not care about.
_DEFAULTS: dict[str, object] = {
    "station_id": 0,
    "duration_seconds": 86400,
    "level": 0.0,
    "source_id": 1,
    "qc_status": "passed",
    "final_flag": None,
    "version": 1,
    "changed_at": None,
}


def observation_table(columns: dict[str, object]) -> pa.Table:
    """An Arrow table with the archive's columns plus ``element`` from ``columns``.

    ``columns`` needs ``wigos_id``, ``element``, ``phenomenon_time`` (UTC) and ``value``
    (arrays or lists of equal length); any other archive column may be given as an array or
    as one scalar for every row, else it takes a neutral default.
    """
    rows = len(columns["wigos_id"])  # type: ignore[arg-type]
    arrays = {}
    for field in PARQUET_SCHEMA:
        given = columns.get(field.name, _DEFAULTS.get(field.name))
        if field.name == "changed_at" and given is None:
            given = datetime(2026, 1, 1, tzinfo=timezone.utc)
        if isinstance(given, (list, tuple, np.ndarray, pa.Array, pa.ChunkedArray)):
            arrays[field.name] = pa.array(given, field.type) if not isinstance(given, (pa.Array, pa.ChunkedArray)) else given.cast(field.type)
        else:
            arrays[field.name] = pa.repeat(pa.scalar(given, field.type), rows)
    arrays["element"] = pa.array(columns["element"], pa.string())
    return pa.table(arrays)


def write_archive(bucket_folder: Path, table: pa.Table) -> int:
    """Write ``table`` (see :func:`observation_table`) as hive partitions under ``bucket_folder``.

    Returns the number of files written.  Each (element, UTC year) partition becomes one
    ``part-0.parquet``, rows sorted by station and time as the real archive writes them.
    """
    root = Path(bucket_folder) / ARCHIVE_PREFIX
    times = table.column("phenomenon_time")
    years = pc.year(times.cast(pa.timestamp("us", tz="UTC")))
    keyed = table.append_column("_year", years)
    partitions = keyed.group_by(["element", "_year"]).aggregate([]).to_pylist()
    written = 0
    for partition in partitions:
        mask = pc.and_(pc.equal(keyed["element"], partition["element"]), pc.equal(keyed["_year"], partition["_year"]))
        part = keyed.filter(mask).sort_by([("station_id", "ascending"), ("wigos_id", "ascending"), ("phenomenon_time", "ascending")])
        write_partition(root, partition["element"], int(partition["_year"]), part.select(PARQUET_SCHEMA.names))
        written += 1
    return written


def write_partition(archive_root: Path, element: str, year: int, table: pa.Table) -> Path:
    """Write one partition file (replacing it) and return its path."""
    folder = Path(archive_root) / f"element={element}" / f"year={year}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(table.cast(PARQUET_SCHEMA), path, compression="snappy", row_group_size=1 << 20)
    return path
