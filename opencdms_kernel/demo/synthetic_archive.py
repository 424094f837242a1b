"""Synthetic archives: observation tables written in the archive's Parquet layout, for tests
and benchmarks.

The products read the archive through :func:`opencdms_kernel.archive.connect_archive`: the
files of the current generation's manifest, ``archive/observations/element=<code>/year=<y>/``,
with the archive's columns (:data:`opencdms_kernel.archive.PARQUET_SCHEMA`).  These helpers
write such an archive straight from Arrow or numpy, without PostgreSQL, so a test can build
the exact days it needs and a benchmark can build 33 million values in seconds.  They name
and publish their files with the archive's own functions (:meth:`Partition.file_name`,
:func:`publish_generation`), so there is one definition of the layout.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencdms_kernel.archive import (
    ARCHIVE_PREFIX,
    GRACE_PERIOD,
    PARQUET_SCHEMA,
    ROW_GROUP_ROWS,
    Manifest,
    Partition,
    PartitionFile,
    new_generation,
    publish_generation,
    read_manifest,
    remove_superseded,
)
from opencdms_kernel.bucket import Bucket

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
    """Write ``table`` (see :func:`observation_table`) as an archive generation under ``bucket_folder``.

    Returns the number of files written.  Each (element, UTC year) partition becomes one file,
    rows sorted by station and time as the real archive writes them; partitions of an earlier
    generation that ``table`` has no rows for stay as they were.
    """
    times = table.column("phenomenon_time")
    years = pc.year(times.cast(pa.timestamp("us", tz="UTC")))
    keyed = table.append_column("_year", years)
    partitions = keyed.group_by(["element", "_year"]).aggregate([]).to_pylist()

    def tables() -> Iterable[tuple[str, int, pa.Table]]:
        for partition in partitions:
            mask = pc.and_(pc.equal(keyed["element"], partition["element"]), pc.equal(keyed["_year"], partition["_year"]))
            part = keyed.filter(mask).sort_by([("station_id", "ascending"), ("wigos_id", "ascending"), ("phenomenon_time", "ascending")])
            yield partition["element"], int(partition["_year"]), part.select(PARQUET_SCHEMA.names)

    write_partitions(bucket_folder, tables())
    return len(partitions)


def write_partitions(
    bucket_folder: Path, tables: Iterable[tuple[str, int, pa.Table]], *, grace: timedelta = GRACE_PERIOD
) -> Manifest:
    """Write each ``(element, year, table)`` as its partition's file and publish them all as a
    new archive generation under ``bucket_folder``; return its manifest.

    ``tables`` may be a generator (one partition in memory at a time).  The new generation
    keeps the current one's files of the partitions not written; files of generations
    superseded more than ``grace`` ago are removed.
    """
    bucket = _local_bucket(bucket_folder)
    generation = new_generation()
    written: dict[Partition, PartitionFile] = {}
    for element, year, table in tables:
        partition = Partition(element, year)
        name = partition.file_name(generation)
        path = Path(bucket.path(f"{ARCHIVE_PREFIX}/{name}"))
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.cast(PARQUET_SCHEMA), path, compression="snappy", row_group_size=ROW_GROUP_ROWS)
        written[partition] = PartitionFile(partition, name, table.num_rows)
    current = read_manifest(bucket)
    kept = [] if current is None else [file for file in current.files if file.partition not in written]
    manifest = Manifest(
        generation=generation,
        created_at=datetime.now(timezone.utc),
        previous=None if current is None else current.generation,
        files=tuple(sorted([*kept, *written.values()])),
    )
    publish_generation(bucket, manifest)
    remove_superseded(bucket, manifest, grace)
    return manifest


def _local_bucket(bucket_folder: Path) -> Bucket:
    """A bucket over a local folder (the archive functions take a bucket)."""
    return Bucket(fs=fsspec.filesystem("file"), root=Path(bucket_folder).absolute().as_posix(), protocol="file")
