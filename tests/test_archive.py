"""Tests of the Parquet archive (opencdms_kernel.archive): round trip, incremental exports, S3.

Every datastore test runs against the embedded and the external PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import csv
import hashlib
import threading
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from opencdms_kernel.archive import (
    ARCHIVE_PREFIX,
    PARQUET_SCHEMA,
    ArchiveExport,
    Partition,
    connect_archive,
    export_archive,
)
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import observation
from opencdms_kernel.demo_data import DemoDataset, DemoSpec, generate_demo_data
from opencdms_kernel.ingest.mapping import load_mapping
from opencdms_kernel.ingest.pipeline import IngestRequest, IngestStatus, ingest
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

# Three daily stations 1991-1992 and one hourly AWS station in 1992 (local time, so its first
# three hours fall in UTC 1991: small partitions such as RH/1991).
SPEC = DemoSpec(stations=3, years=2, aws_stations=1, aws_years=1)
USER = "archive-test"

# The same columns from both sides; the year is computed in PostgreSQL, read from the folder
# name in the archive, so the comparison checks the partitioning too.
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


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    return generate_demo_data(tmp_path_factory.mktemp("demo"), SPEC)


def load_demo(datastore: Datastore, bucket: Bucket, dataset: DemoDataset, daily: bool = True) -> None:
    """Stations, then the daily files (unless not wanted) and the AWS files."""
    import_stations(datastore, dataset.stations_csv)
    aws_mapping = load_mapping(dataset.aws_mapping)
    requests = [IngestRequest.from_path(path, aws_mapping) for path in dataset.aws_files]
    if daily:
        requests += [IngestRequest.from_path(path) for path in dataset.daily_files]
    for request in requests:
        load(datastore, bucket, request)


def load(datastore: Datastore, bucket: Bucket, request: IngestRequest) -> None:
    result = ingest(request, datastore, bucket, USER)
    assert result.status is IngestStatus.LOADED, result.error
    assert result.rejected == 0


def database_rows(datastore: Datastore) -> Counter:
    with datastore.engine.connect() as connection:
        return Counter(tuple(row) for row in connection.execute(DATABASE_ROWS))


def archive_rows(bucket: Bucket) -> Counter:
    connection = connect_archive(bucket)
    try:
        return Counter(connection.execute(ARCHIVE_ROWS).fetchall())
    finally:
        connection.close()


def assert_same_rows(datastore: Datastore, bucket: Bucket) -> None:
    expected = database_rows(datastore)
    actual = archive_rows(bucket)
    assert sum(actual.values()) == sum(expected.values())
    assert actual == expected


def execute(datastore: Datastore, statement: str) -> None:
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(statement))


def database_partitions(datastore: Datastore) -> set[Partition]:
    with datastore.engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT DISTINCT e.code, CAST(extract(year FROM o.phenomenon_time AT TIME ZONE 'UTC') AS integer) "
                "FROM observation AS o JOIN element AS e ON e.id = o.element_id WHERE o.status = 'latest'"
            )
        )
        return {Partition(code, year) for code, year in rows}


def archive_files(bucket: Bucket) -> dict[str, tuple[int, str]]:
    """Every file of a local archive: its modification time and a hash of its content."""
    folder = Path(bucket.path(ARCHIVE_PREFIX))
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def changed_folders(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> set[str]:
    """Partition folders whose files appeared, went, or changed (time or content)."""
    names = set(before) | set(after)
    return {name.rsplit("/", 1)[0] for name in names if before.get(name) != after.get(name)}


def folders(*partitions: Partition) -> set[str]:
    return {partition.key.removeprefix(ARCHIVE_PREFIX + "/") for partition in partitions}


def export(datastore: Datastore, bucket: Bucket, **options: object) -> ArchiveExport:
    calls: list[tuple[int, int]] = []
    result = export_archive(datastore, bucket, progress=lambda done, total: calls.append((done, total)), **options)
    total = len(result.partitions)
    assert calls[-1] == (total, total), "progress ends at the number of partitions"
    return result


def one_row(datastore: Datastore, wigos_id: str, element: str, year: int) -> dict[str, object]:
    """Key and value of the first latest observation of a station, element and UTC year."""
    with datastore.engine.connect() as connection:
        row = connection.execute(
            sa.text(
                """
                SELECT o.station_id, o.element_id, o.phenomenon_time, o.duration_seconds, o.level,
                       o.source_id, o.value
                FROM observation AS o
                JOIN station AS s ON s.id = o.station_id
                JOIN element AS e ON e.id = o.element_id
                WHERE s.wigos_id = :wigos_id AND e.code = :element AND o.status = 'latest'
                  AND o.value IS NOT NULL
                  AND o.phenomenon_time >= make_timestamptz(:year, 1, 1, 0, 0, 0, 'UTC')
                  AND o.phenomenon_time < make_timestamptz(:year + 1, 1, 1, 0, 0, 0, 'UTC')
                ORDER BY o.phenomenon_time
                LIMIT 1
                """
            ),
            {"wigos_id": wigos_id, "element": element, "year": year},
        ).one()
    return dict(row._mapping)


KEY_COLUMNS = ("station_id", "element_id", "phenomenon_time", "duration_seconds", "level", "source_id")


def update_row(connection: sa.Connection, key: dict[str, object], **values: object) -> None:
    """A plain SQL UPDATE of the observation with the natural key of ``key``."""
    match = [observation.c[name] == key[name] for name in KEY_COLUMNS]
    assert connection.execute(sa.update(observation).where(*match).values(**values)).rowcount == 1


def update(datastore: Datastore, key: dict[str, object], **values: object) -> None:
    with datastore.engine.begin() as connection:
        update_row(connection, key, **values)


def station_of(dataset: DemoDataset, index: int) -> str:
    return dataset.daily_files[index].stem


# --------------------------------------------------------------------------- round trip


def test_round_trip(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    first, second = station_of(demo, 0), station_of(demo, 1)
    # Values the ingest does not produce: QC results, final flags (empty, non-ASCII), a deleted row.
    flagged = one_row(datastore, first, "TMAX", 1991)
    update(datastore, flagged, qc_status="suspect", final_flag='é;"x"')
    empty_flag = one_row(datastore, first, "TMIN", 1992)
    update(datastore, empty_flag, qc_status="failed", final_flag="")
    deleted = one_row(datastore, second, "PRCP", 1992)
    update(datastore, deleted, status="deleted")

    result = export(datastore, bucket)

    assert result.full
    assert set(result.partitions) == database_partitions(datastore)
    assert list(result.partitions) == sorted(result.partitions)
    assert result.rows == sum(database_rows(datastore).values())
    assert_same_rows(datastore, bucket)
    archived = archive_rows(bucket)
    assert any(row[9] == 'é;"x"' and row[8] == "suspect" for row in archived)
    assert any(row[9] == "" for row in archived), "an empty final flag is not NULL"
    assert any(row[7] is None for row in archived), "missing values stay NULL"
    assert Partition("RH", 1991) in result.partitions  # the AWS hours before local midnight

    with datastore.engine.connect() as connection:
        recorded = connection.execute(sa.text("SELECT watermark, partitions, rows FROM archive_export")).one()
    assert tuple(recorded) == (result.watermark, len(result.partitions), result.rows)


def test_files_are_sorted_parquet_with_the_archive_schema(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    result = export(datastore, bucket)
    files = archive_files(bucket)
    assert set(files) == {f"{folder}/part-0.parquet" for folder in folders(*result.partitions)}
    for name in files:
        table = pq.read_table(Path(bucket.path(ARCHIVE_PREFIX)) / name)
        assert table.schema.remove_metadata() == PARQUET_SCHEMA
        # Sorted by station, then time.
        keys = table.select(["station_id", "phenomenon_time"])
        assert keys.equals(keys.sort_by([("station_id", "ascending"), ("phenomenon_time", "ascending")]))
        assert pc.all(pc.equal(pc.year(table["phenomenon_time"]), int(name.split("/")[1].removeprefix("year=")))).as_py()


def test_empty_archive_has_an_empty_view(tmp_path: Path) -> None:
    bucket = open_bucket(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))
    connection = connect_archive(bucket)
    assert connection.execute("SELECT count(*) FROM observations").fetchall() == [(0,)]
    columns = [row[0] for row in connection.execute("DESCRIBE observations").fetchall()]
    assert columns == PARQUET_SCHEMA.names + ["element", "year"]


# --------------------------------------------------------------------------- incremental


def write_changed_file(dataset: DemoDataset, folder: Path, index: int, element: str, year: int) -> Path:
    """A file with one station's values of one element and year, the first ten changed."""
    with dataset.daily_files[index].open(newline="") as handle:
        rows = [
            row for row in csv.DictReader(handle)
            if row["element"] == element and row["time"].startswith(str(year)) and row["value"]
        ]
    for row in rows[:10]:
        row["value"] = f"{float(row['value']) + 1.5:.1f}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"changed-{dataset.daily_files[index].name}"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["station", "element", "time", "value"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_incremental_export_rewrites_only_touched_partitions(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset, tmp_path: Path
) -> None:
    load_demo(datastore, bucket, demo)
    export(datastore, bucket)
    before = archive_files(bucket)

    # A changed file for one station: TMAX of 1992 only.
    load(datastore, bucket, IngestRequest.from_path(write_changed_file(demo, tmp_path / "changed", 1, "TMAX", 1992)))
    result = export(datastore, bucket)
    assert not result.full
    assert result.partitions == (Partition("TMAX", 1992),)
    assert result.rows == sum(1 for row in database_rows(datastore) if row[1:3] == ("TMAX", 1992))
    after = archive_files(bucket)
    assert changed_folders(before, after) == folders(Partition("TMAX", 1992))
    assert_same_rows(datastore, bucket)

    # A plain SQL update of one value.
    row = one_row(datastore, station_of(demo, 2), "PRCP", 1991)
    update(datastore, row, value=observation.c.value + 100)
    before = after
    assert export(datastore, bucket).partitions == (Partition("PRCP", 1991),)
    after = archive_files(bucket)
    assert changed_folders(before, after) == folders(Partition("PRCP", 1991))
    assert_same_rows(datastore, bucket)

    # A row marked deleted leaves the archive.
    row = one_row(datastore, station_of(demo, 0), "TMIN", 1992)
    update(datastore, row, status="deleted")
    before = after
    assert export(datastore, bucket).partitions == (Partition("TMIN", 1992),)
    after = archive_files(bucket)
    assert changed_folders(before, after) == folders(Partition("TMIN", 1992))
    assert_same_rows(datastore, bucket)

    # Nothing changed: nothing touched.
    before = after
    unchanged = export(datastore, bucket)
    assert (unchanged.partitions, unchanged.rows) == ((), 0)
    assert archive_files(bucket) == before


def test_moved_and_removed_rows(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    export(datastore, bucket)

    # A row moved to another year leaves its old partition (found through the history).
    row = one_row(datastore, station_of(demo, 0), "TMAX", 1991)
    update(datastore, row, phenomenon_time=datetime(1992, 6, 15, 12, tzinfo=timezone.utc))
    assert export(datastore, bucket).partitions == (Partition("TMAX", 1991), Partition("TMAX", 1992))
    assert_same_rows(datastore, bucket)

    # Hard-deleted rows: the partition whose rows are all gone disappears.
    execute(
        datastore,
        "DELETE FROM observation WHERE element_id = (SELECT id FROM element WHERE code = 'RH') "
        "AND phenomenon_time < timestamptz '1992-01-01 00:00+00'",
    )
    result = export(datastore, bucket)
    assert result.partitions == (Partition("RH", 1991),)
    assert not Path(bucket.path(Partition("RH", 1991).key)).exists()
    assert Path(bucket.path(Partition("RH", 1992).key)).exists()
    assert_same_rows(datastore, bucket)

    # Status 'deleted' for every row of a partition has the same effect.
    execute(
        datastore,
        "UPDATE observation SET status = 'deleted' WHERE element_id = (SELECT id FROM element WHERE code = 'WDIR') "
        "AND phenomenon_time < timestamptz '1992-01-01 00:00+00'",
    )
    assert export(datastore, bucket).partitions == (Partition("WDIR", 1991),)
    assert not Path(bucket.path(Partition("WDIR", 1991).key)).exists()
    assert_same_rows(datastore, bucket)


def test_full_export_removes_stale_partitions(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    export(datastore, bucket)
    stale = Partition("TMAX", 1850)
    source = Path(bucket.path(Partition("TMAX", 1991).key)) / "part-0.parquet"
    Path(bucket.path(stale.key)).mkdir(parents=True)
    (Path(bucket.path(stale.key)) / "part-0.parquet").write_bytes(source.read_bytes())
    assert sum(archive_rows(bucket).values()) > sum(database_rows(datastore).values())

    incremental = export(datastore, bucket)
    assert incremental.partitions == ()  # an incremental export leaves what it did not touch

    result = export(datastore, bucket, full=True)
    assert result.full
    assert set(result.partitions) == database_partitions(datastore) | {stale}
    assert not Path(bucket.path(stale.key)).exists()
    assert_same_rows(datastore, bucket)


def test_removed_archive_folder_is_exported_in_full(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    export(datastore, bucket)
    bucket.fs.rm(bucket.path(ARCHIVE_PREFIX), recursive=True)
    result = export(datastore, bucket)
    assert result.full
    assert_same_rows(datastore, bucket)


def test_transaction_open_during_an_export_is_in_the_next_one(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset
) -> None:
    """A writer that began before an export and commits after it is not missed.

    Its rows carry its start time, older than that export's snapshot.  The writer has no
    transaction id yet when the export runs (it has only read so far), like an ingest waiting
    for the ingest lock.
    """
    load_demo(datastore, bucket, demo, daily=False)
    export(datastore, bucket)
    row = one_row(datastore, "0-20000-0-69001", "PRES", 1992)
    with datastore.engine.connect() as writer:
        transaction = writer.begin()
        started: datetime = writer.execute(sa.text("SELECT now()")).scalar_one()
        during = export(datastore, bucket)
        assert during.partitions == ()
        assert during.watermark <= started
        update_row(writer, row, value=observation.c.value + 1)
        transaction.commit()
    after = export(datastore, bucket)
    assert after.partitions == (Partition("PRES", 1992),)
    assert_same_rows(datastore, bucket)


def test_files_loaded_between_exports(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    """Files loaded between exports appear; the row counts add up."""
    load_demo(datastore, bucket, demo, daily=False)
    first = export(datastore, bucket)
    for path in demo.daily_files:
        load(datastore, bucket, IngestRequest.from_path(path))
    second = export(datastore, bucket)
    assert not second.full
    daily = {Partition(element, year) for element in ("PRCP", "TMAX", "TMIN") for year in (1991, 1992)}
    assert set(second.partitions) == daily
    assert set(first.partitions) | set(second.partitions) == database_partitions(datastore)
    assert_same_rows(datastore, bucket)


def test_exports_wait_for_each_other(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo, daily=False)
    results: list[ArchiveExport] = []
    with datastore.engine.connect() as other:
        other.execute(sa.text("SELECT pg_advisory_lock(hashtext('opencdms.archive'))"))
        exporter = threading.Thread(target=lambda: results.append(export_archive(datastore, bucket)))
        exporter.start()
        exporter.join(timeout=1.0)
        assert exporter.is_alive(), "an export ran while another held the lock"
        other.execute(sa.text("SELECT pg_advisory_unlock(hashtext('opencdms.archive'))"))
        other.commit()
    exporter.join(timeout=60)
    assert results and results[0].rows == sum(database_rows(datastore).values())


# --------------------------------------------------------------------------- S3


def test_s3_round_trip(s3_settings: Settings, demo: DemoDataset) -> None:
    bucket = open_bucket(s3_settings)
    with Datastore.open(s3_settings) as datastore:
        load_demo(datastore, bucket, demo)
        result = export(datastore, bucket)
        keys = {path.removeprefix(bucket.path(ARCHIVE_PREFIX) + "/") for path in bucket.fs.find(bucket.path(ARCHIVE_PREFIX))}
        assert keys == {f"{folder}/part-0.parquet" for folder in folders(*result.partitions)}
        assert_same_rows(datastore, bucket)

        row = one_row(datastore, station_of(demo, 1), "TMIN", 1991)
        update(datastore, row, value=observation.c.value - 3)
        execute(
            datastore,
            "DELETE FROM observation WHERE element_id = (SELECT id FROM element WHERE code = 'RH') "
            "AND phenomenon_time < timestamptz '1992-01-01 00:00+00'",
        )
        incremental = export(datastore, bucket)
        assert incremental.partitions == (Partition("RH", 1991), Partition("TMIN", 1991))
        assert not bucket.fs.exists(bucket.path(Partition("RH", 1991).key))
        assert_same_rows(datastore, bucket)
