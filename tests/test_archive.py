"""Tests of the Parquet archive (opencdms_kernel.archive): round trip, incremental exports,
generations (readers during exports, failed and killed exports, clean-up), S3.

Every datastore test runs against the embedded and the external PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import fsspec
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

import opencdms_kernel.archive as archive_module
from opencdms_kernel.archive import (
    ARCHIVE_PREFIX,
    PARQUET_SCHEMA,
    POINTER_KEY,
    QC_STATUSES,
    ArchiveError,
    ArchiveExport,
    ExportSource,
    Manifest,
    Partition,
    connect_archive,
    export_archive,
    read_manifest,
)
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import observation
from opencdms_kernel.demo import DemoDataset, DemoSpec, generate_demo_data
from opencdms_kernel.ingest.mapping import load_mapping
from opencdms_kernel.ingest.pipeline import IngestRequest, IngestStatus, ingest
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations
from support.rows import archive_rows, database_rows
from opencdms_kernel.health import check_archive
from opencdms_kernel.vocabulary import QcStatus

# Three daily stations 1991-1992 and one hourly AWS station in 1992 (local time, so its first
# three hours fall in UTC 1991: small partitions such as RH/1991).
SPEC = DemoSpec(stations=3, years=2, aws_stations=1, aws_years=1)
USER = "archive-test"

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


def stored_names(bucket: Bucket) -> set[str]:
    """Every object under the archive's prefix, named relative to it (folder or S3)."""
    folder = bucket.path(ARCHIVE_PREFIX)
    bucket.fs.invalidate_cache(folder)
    if not bucket.fs.exists(folder):
        return set()
    return {path.removeprefix(folder + "/") for path in bucket.fs.find(folder)}


def partition_files(bucket: Bucket) -> set[str]:
    """The Parquet files in the archive's partition folders, whichever generation wrote them."""
    return {name for name in stored_names(bucket) if name.startswith("element=")}


def local_files(bucket: Bucket) -> dict[str, tuple[int, str]]:
    """Every partition file of a local archive: its modification time and a hash of its content."""
    folder = Path(bucket.path(ARCHIVE_PREFIX))
    return {
        path.relative_to(folder).as_posix(): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(folder.glob("element=*/year=*/*"))
        if path.is_file()
    }


def changed_folders(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> set[str]:
    """Partition folders whose files appeared, went, or changed (time or content)."""
    names = set(before) | set(after)
    return {name.rsplit("/", 1)[0] for name in names if before.get(name) != after.get(name)}


def folders(*partitions: Partition) -> set[str]:
    return {partition.folder for partition in partitions}


def current(bucket: Bucket) -> Manifest:
    manifest = read_manifest(bucket)
    assert manifest is not None, "the archive has no current generation"
    return manifest


def assert_only_the_current_generation_is_stored(bucket: Bucket) -> None:
    """After an export with no grace period: the pointer, one manifest, its files; nothing else."""
    manifest = current(bucket)
    expected = {POINTER_KEY.removeprefix(ARCHIVE_PREFIX + "/"), manifest.key.removeprefix(ARCHIVE_PREFIX + "/")}
    assert stored_names(bucket) == expected | {file.name for file in manifest.files}


def export(datastore: Datastore, bucket: Bucket, **options: object) -> ArchiveExport:
    """An export that checks its progress calls; superseded files go at once unless ``grace`` is given."""
    calls: list[tuple[int, int]] = []
    options.setdefault("grace", timedelta(0))
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


def test_the_qc_status_codes_on_the_wire_are_the_vocabularys_order() -> None:
    # The COPY sends a value's QC status as a code (0-3) and the Parquet files keep it as a
    # dictionary in QC_STATUSES' order: both are the vocabulary's order, which stays fixed.
    codes = dict(re.findall(r"WHEN '(\w+)' THEN (\d)", archive_module._COPY_SELECT))
    assert [status for status, _ in sorted(codes.items(), key=lambda item: int(item[1]))] == list(QC_STATUSES)
    assert QC_STATUSES == tuple(status.value for status in QcStatus) == ("none", "passed", "suspect", "failed")


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
        recorded = connection.execute(sa.text("SELECT id, watermark, partitions, rows FROM archive_export")).one()
    assert tuple(recorded)[1:] == (result.watermark, len(result.partitions), result.rows)
    # The generation made current holds exactly this export.
    manifest = current(bucket)
    assert manifest.generation == result.generation
    assert (manifest.partitions, manifest.rows) == (result.partitions, result.rows)
    assert manifest.source == ExportSource(recorded.id, result.watermark)
    assert manifest.previous is None


def test_files_are_sorted_parquet_with_the_archive_schema(datastore: Datastore, bucket: Bucket, demo: DemoDataset) -> None:
    load_demo(datastore, bucket, demo)
    result = export(datastore, bucket)
    manifest = current(bucket)
    assert partition_files(bucket) == {file.name for file in manifest.files}
    assert {file.partition for file in manifest.files} == set(result.partitions)
    for file in manifest.files:
        assert file.name == file.partition.file_name(result.generation)
        table = pq.read_table(bucket.path(file.key))
        assert table.num_rows == file.rows
        assert table.schema.remove_metadata() == PARQUET_SCHEMA
        # Sorted by station, then time.
        keys = table.select(["station_id", "phenomenon_time"])
        assert keys.equals(keys.sort_by([("station_id", "ascending"), ("phenomenon_time", "ascending")]))
        assert pc.all(pc.equal(pc.year(table["phenomenon_time"]), file.partition.year)).as_py()
    assert_only_the_current_generation_is_stored(bucket)


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
    before = local_files(bucket)

    # A changed file for one station: TMAX of 1992 only.
    load(datastore, bucket, IngestRequest.from_path(write_changed_file(demo, tmp_path / "changed", 1, "TMAX", 1992)))
    result = export(datastore, bucket)
    assert not result.full
    assert result.partitions == (Partition("TMAX", 1992),)
    assert result.rows == sum(1 for row in database_rows(datastore) if row[1:3] == ("TMAX", 1992))
    after = local_files(bucket)
    assert changed_folders(before, after) == folders(Partition("TMAX", 1992))
    assert_same_rows(datastore, bucket)

    # A plain SQL update of one value.
    row = one_row(datastore, station_of(demo, 2), "PRCP", 1991)
    update(datastore, row, value=observation.c.value + 100)
    before = after
    assert export(datastore, bucket).partitions == (Partition("PRCP", 1991),)
    after = local_files(bucket)
    assert changed_folders(before, after) == folders(Partition("PRCP", 1991))
    assert_same_rows(datastore, bucket)

    # A row marked deleted leaves the archive.
    row = one_row(datastore, station_of(demo, 0), "TMIN", 1992)
    update(datastore, row, status="deleted")
    before = after
    assert export(datastore, bucket).partitions == (Partition("TMIN", 1992),)
    after = local_files(bucket)
    assert changed_folders(before, after) == folders(Partition("TMIN", 1992))
    assert_same_rows(datastore, bucket)

    # Nothing changed: nothing touched, the generation stays current.
    before, generation = after, current(bucket).generation
    unchanged = export(datastore, bucket)
    assert (unchanged.partitions, unchanged.rows) == ((), 0)
    assert unchanged.generation == generation == current(bucket).generation
    assert local_files(bucket) == before
    assert_only_the_current_generation_is_stored(bucket)


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
    # Rows removed without a trace in the history (triggers bypassed, as on a replica): an
    # incremental export cannot know that RH/1991 lost its rows.
    stale = Partition("RH", 1991)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("SET LOCAL session_replication_role = replica"))
        connection.execute(sa.text(
            "DELETE FROM observation WHERE element_id = (SELECT id FROM element WHERE code = 'RH') "
            "AND phenomenon_time < timestamptz '1992-01-01 00:00+00'"
        ))
    incremental = export(datastore, bucket)
    assert incremental.partitions == ()  # an incremental export leaves what it did not touch
    assert sum(archive_rows(bucket).values()) > sum(database_rows(datastore).values())
    # A file put into a partition folder by hand belongs to no generation: no reader sees it.
    by_hand = Path(bucket.path(Partition("TMAX", 1850).key)) / "part-0.parquet"
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(Path(bucket.path(current(bucket).files_of("TMAX")[0].key)).read_bytes())
    assert Partition("TMAX", 1850) not in {Partition(*row[1:3]) for row in archive_rows(bucket)}

    result = export(datastore, bucket, full=True)
    assert result.full
    assert set(result.partitions) == database_partitions(datastore) | {stale}
    assert stale not in current(bucket).partitions
    assert not Path(bucket.path(stale.key)).exists()
    assert not by_hand.parent.exists()  # the folder went with the file
    assert_same_rows(datastore, bucket)
    assert_only_the_current_generation_is_stored(bucket)


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
        assert {file.partition for file in current(bucket).files} == set(result.partitions)
        assert_only_the_current_generation_is_stored(bucket)
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
        assert_only_the_current_generation_is_stored(bucket)
        assert_same_rows(datastore, bucket)


# --------------------------------------------------------------------------- generations

# Rows, partitions and sums of one generation, from PostgreSQL or from the archive: a read
# of a whole generation matches what the database held when it was exported.
DATABASE_SUMMARY = sa.text(
    """
    SELECT count(*), count(DISTINCT e.code || '/' || extract(year FROM o.phenomenon_time AT TIME ZONE 'UTC')),
           coalesce(sum(o.value), 0), coalesce(sum(o.version), 0)
    FROM observation AS o JOIN element AS e ON e.id = o.element_id
    WHERE o.status = 'latest'
    """
)
ARCHIVE_SUMMARY = """
    SELECT count(*), count(DISTINCT element || '/' || year), coalesce(sum(value), 0), coalesce(sum(version), 0)
    FROM observations
"""


@dataclass(frozen=True)
class Summary:
    rows: int
    partitions: int
    value_sum: float
    version_sum: int

    def same(self, other: "Summary") -> bool:
        """Equal, up to the order in which the values were added."""
        return (self.rows, self.partitions, self.version_sum) == (other.rows, other.partitions, other.version_sum) and (
            math.isclose(self.value_sum, other.value_sum, rel_tol=1e-12, abs_tol=1e-6)
        )


def database_summary(datastore: Datastore) -> Summary:
    with datastore.engine.connect() as connection:
        rows, partitions, values, versions = connection.execute(DATABASE_SUMMARY).one()
    return Summary(int(rows), int(partitions), float(values), int(versions))


def summary_of(connection: duckdb.DuckDBPyConnection) -> Summary:
    rows, partitions, values, versions = connection.execute(ARCHIVE_SUMMARY).fetchone()
    return Summary(int(rows), int(partitions), float(values), int(versions))


def read_summary(bucket: Bucket) -> Summary:
    """What one reader sees: connect, read everything once, close."""
    connection = connect_archive(bucket)
    try:
        return summary_of(connection)
    finally:
        connection.close()


class ArchiveReader(threading.Thread):
    """Reads the archive again and again until stopped, keeping what each read saw or raised."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(daemon=True)
        self.bucket = bucket
        self.reads: list[Summary] = []
        self.errors: list[BaseException] = []
        self._stop_reading = threading.Event()

    def run(self) -> None:
        while not self._stop_reading.is_set():
            try:
                self.reads.append(read_summary(self.bucket))
            except Exception as exc:  # every failure is kept, and the test fails on any
                self.errors.append(exc)

    def finish(self) -> None:
        self._stop_reading.set()
        self.join(timeout=60)


def change_partitions(datastore: Datastore, bucket: Bucket, dataset: DemoDataset, folder: Path) -> None:
    """Changes in several partitions: values changed by a file (TMAX/1992), every row of RH/1991
    marked deleted, one value changed by plain SQL (PRCP/1991)."""
    load(datastore, bucket, IngestRequest.from_path(write_changed_file(dataset, folder, 1, "TMAX", 1992)))
    execute(
        datastore,
        "UPDATE observation SET status = 'deleted' WHERE element_id = (SELECT id FROM element WHERE code = 'RH') "
        "AND phenomenon_time < timestamptz '1992-01-01 00:00+00'",
    )
    update(datastore, one_row(datastore, station_of(dataset, 2), "PRCP", 1991), value=observation.c.value + 100)


@pytest.fixture(params=["folder", "s3"])
def archive_settings(request: pytest.FixtureRequest, settings: Settings) -> Settings:
    """The test's settings with its bucket a local folder, then an S3 bucket (same database)."""
    if request.param == "folder":
        return settings
    return request.getfixturevalue("s3_settings")


def exported_and_changed(
    datastore: Datastore, bucket: Bucket, dataset: DemoDataset, folder: Path
) -> tuple[Summary, Summary]:
    """The demo exported, then changed: what the exported generation holds, what the next will."""
    load_demo(datastore, bucket, dataset)
    export(datastore, bucket)
    old = database_summary(datastore)
    assert read_summary(bucket).same(old)
    change_partitions(datastore, bucket, dataset, folder)
    new = database_summary(datastore)
    assert not new.same(old) and new.partitions == old.partitions - 1
    return old, new


@pytest.mark.parametrize("full", [True, False], ids=["full", "incremental"])
def test_readers_see_one_whole_generation_during_an_export(
    datastore: Datastore, archive_settings: Settings, demo: DemoDataset, tmp_path: Path, full: bool
) -> None:
    """Readers in another thread, and a read after each file written: never an error, never a
    mixture, always either the generation before the export or the one after it."""
    bucket = open_bucket(archive_settings)
    old, new = exported_and_changed(datastore, bucket, demo, tmp_path / "changed")
    during: list[Summary] = []

    def read_now(done: int, total: int) -> None:
        # Before the first file, after the first, second, middle and last (reads through the
        # in-process S3 server are slow).
        if done in (0, 1, 2, total // 2, total):
            during.append(read_summary(bucket))

    reader = ArchiveReader(bucket)
    reader.start()
    try:
        result = export_archive(datastore, bucket, full=full, progress=read_now)
    finally:
        reader.finish()
    assert result.full is full
    assert reader.errors == []
    assert len(during) >= 4 and reader.reads
    # Until the export switches the pointer, at its very end, the previous generation is read.
    assert [summary for summary in during if not summary.same(old)] == []
    assert [summary for summary in reader.reads if not (summary.same(old) or summary.same(new))] == []
    assert read_summary(bucket).same(new)
    assert_same_rows(datastore, bucket)


def test_failed_export_leaves_the_previous_generation(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset, tmp_path: Path
) -> None:
    old, new = exported_and_changed(datastore, bucket, demo, tmp_path / "changed")
    before = current(bucket)

    def fail(done: int, total: int) -> None:
        if done == 2:
            raise RuntimeError("injected failure after the second file")

    with pytest.raises(RuntimeError, match="injected failure"):
        export_archive(datastore, bucket, full=True, progress=fail)
    assert current(bucket) == before
    assert read_summary(bucket).same(old)
    assert len(partition_files(bucket)) > len(before.files)  # the failed export's files, unused

    result = export(datastore, bucket)  # the failed export recorded nothing: incremental
    assert not result.full
    assert read_summary(bucket).same(new)
    assert_same_rows(datastore, bucket)
    assert_only_the_current_generation_is_stored(bucket)  # its files are gone too


# A child process that exports in full and stops after writing its second file, until killed.
_PAUSED_EXPORT = """
import sys, time
from pathlib import Path
from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.settings import Settings

def pause(done, total):
    if done == 2:
        Path(sys.argv[1]).write_text("paused")
        time.sleep(600)

settings = Settings()
with Datastore.open(settings) as datastore:
    export_archive(datastore, open_bucket(settings), full=True, progress=pause)
"""


def test_killed_export_leaves_the_previous_generation(
    datastore: Datastore, archive_settings: Settings, demo: DemoDataset, tmp_path: Path
) -> None:
    bucket = open_bucket(archive_settings)
    old, new = exported_and_changed(datastore, bucket, demo, tmp_path / "changed")
    before = current(bucket)
    paused = tmp_path / "paused"
    child = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_EXPORT, str(paused)],
        env={**os.environ, **archive_settings.as_environment()},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while not paused.exists():
            if child.poll() is not None:
                pytest.fail(f"the exporting process ended early: {child.stdout.read().decode()}")
            assert time.monotonic() < deadline, "the exporting process never reached its second file"
            time.sleep(0.05)
        assert read_summary(bucket).same(old)  # mid-export
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert current(bucket) == before
    assert read_summary(bucket).same(old)

    result = export(datastore, bucket)  # waits for the server to drop the killed export's lock
    assert not result.full
    assert read_summary(bucket).same(new)
    assert_same_rows(datastore, bucket)
    assert_only_the_current_generation_is_stored(bucket)


def test_superseded_generation_stays_readable_for_the_grace_period(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset, tmp_path: Path
) -> None:
    old, new = exported_and_changed(datastore, bucket, demo, tmp_path / "changed")
    first = current(bucket)
    reader = connect_archive(bucket)  # opened on the first generation
    try:
        second = export(datastore, bucket, grace=timedelta(minutes=10))
        assert current(bucket).previous == first.generation
        assert {file.name for file in first.files} <= partition_files(bucket)
        assert summary_of(reader).same(old)  # still whole, though superseded
        assert read_summary(bucket).same(new)

        # An export later than the grace period (0 here) removes the first generation's files.
        execute(datastore, "UPDATE observation SET value = value + 1 WHERE value = (SELECT max(value) FROM observation)")
        third = export(datastore, bucket)
        assert third.generation not in (first.generation, second.generation)
        assert_only_the_current_generation_is_stored(bucket)
        with pytest.raises(duckdb.Error):
            summary_of(reader)  # a reader kept past the grace period finds its files gone
    finally:
        reader.close()
    assert_same_rows(datastore, bucket)


def test_archive_written_before_manifests_is_read_then_replaced(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset
) -> None:
    load_demo(datastore, bucket, demo, daily=False)
    export(datastore, bucket)
    # The layout of the exports before generations: part-0.parquet files, no manifest, no pointer.
    for file in current(bucket).files:
        bucket.fs.mv(bucket.path(file.key), bucket.path(f"{file.partition.key}/part-0.parquet"))
    bucket.fs.rm(bucket.path(f"{ARCHIVE_PREFIX}/_manifests"), recursive=True)
    bucket.fs.rm(bucket.path(POINTER_KEY))
    legacy = partition_files(bucket)
    assert read_manifest(bucket) is None
    assert_same_rows(datastore, bucket)  # read from the folders

    row = one_row(datastore, "0-20000-0-69001", "PRES", 1992)
    update(datastore, row, value=observation.c.value + 1)
    result = export_archive(datastore, bucket)  # the normal grace period
    assert result.full  # nothing to continue from
    assert_same_rows(datastore, bucket)
    assert legacy <= partition_files(bucket)  # kept for the readers that found them

    assert export(datastore, bucket).partitions == ()  # past the grace period (0)
    assert_only_the_current_generation_is_stored(bucket)
    assert_same_rows(datastore, bucket)


def test_export_continues_only_from_the_database_s_last_export(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset
) -> None:
    """The archive holds an export the database does not know (as after a restore, or from
    another database): the next export rewrites everything."""
    load_demo(datastore, bucket, demo, daily=False)
    export(datastore, bucket)
    row = one_row(datastore, "0-20000-0-69001", "PRES", 1992)
    update(datastore, row, value=observation.c.value + 1)
    execute(datastore, "DELETE FROM archive_export")
    result = export(datastore, bucket)
    assert result.full
    assert_same_rows(datastore, bucket)
    assert not export(datastore, bucket).full  # and from then on, incremental again


def test_missing_manifest_is_named_and_a_full_export_repairs_it(
    datastore: Datastore, bucket: Bucket, demo: DemoDataset
) -> None:
    load_demo(datastore, bucket, demo, daily=False)
    export(datastore, bucket)
    bucket.fs.rm(bucket.path(current(bucket).key))
    with pytest.raises(ArchiveError, match=r"manifest .* is missing; run `opencdms archive --full`"):
        connect_archive(bucket)
    health = check_archive(bucket)  # `up`'s check reports it instead of stopping
    assert not health.ok and "opencdms archive --full" in health.detail
    with pytest.raises(ArchiveError, match="opencdms archive --full"):
        export_archive(datastore, bucket)
    bucket.fs.pipe_file(bucket.path(POINTER_KEY), b"not json")
    with pytest.raises(ArchiveError, match=r"_current.json does not name an archive generation"):
        connect_archive(bucket)
    assert export(datastore, bucket, full=True).full
    assert_same_rows(datastore, bucket)


def test_synthetic_archive_is_published_as_a_generation(tmp_path: Path) -> None:
    folder = tmp_path / "bucket"
    bucket = Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file")
    times = [datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2020, 1, 2, tzinfo=timezone.utc),
             datetime(2021, 5, 1, tzinfo=timezone.utc)]
    assert write_archive(folder, observation_table(
        {"wigos_id": ["0-1-2-A"] * 3, "element": ["TMAX", "TMAX", "PRCP"], "phenomenon_time": times, "value": [1.0, 2.0, 3.0]}
    )) == 2
    first = current(bucket)
    assert first.partitions == (Partition("PRCP", 2021), Partition("TMAX", 2020))
    assert (first.rows, first.source, first.previous) == (3, None, None)

    # A second write replaces the partitions it has rows for and keeps the others.
    write_archive(folder, observation_table(
        {"wigos_id": ["0-1-2-A"], "element": ["TMAX"], "phenomenon_time": times[:1], "value": [10.0]}
    ))
    second = current(bucket)
    assert second.previous == first.generation
    assert second.files_of("PRCP") == first.files_of("PRCP")
    connection = connect_archive(bucket)
    try:
        assert connection.execute("SELECT element, year, sum(value) FROM observations GROUP BY ALL ORDER BY 1").fetchall() == [
            ("PRCP", 2021, 3.0), ("TMAX", 2020, 10.0)
        ]
    finally:
        connection.close()


def test_a_manifest_naming_a_file_outside_its_partition_is_refused() -> None:
    document = {
        "format": 1, "generation": "20260101T000000000000Z-0123abcd", "created_at": "2026-01-01T00:00:00+00:00",
        "previous": None, "source": None, "rows": 1,
        "files": [{"element": "TMAX", "year": 2020, "name": "element=TMAX/year=2020/../../../../etc/x.parquet", "rows": 1}],
    }
    with pytest.raises(ArchiveError, match="is not a readable archive manifest .* not a file of partition element=TMAX/year=2020"):
        Manifest.from_json(json.dumps(document).encode(), "s3://b/archive/observations/_manifests/x.json")
    document["files"][0]["name"] = "element=TMAX/year=2020/part-0.parquet"
    assert Manifest.from_json(json.dumps(document).encode(), "x").rows == 1
