"""Ingest against real PostgreSQL (embedded and external): idempotence, versions, rejects, errors."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import MappingError
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest, ingest_many, load_mapping
from opencdms_kernel.stations import import_stations

STATIONS = """wigos_id,name,latitude,longitude,elevation,timezone
0-20000-0-60001,Alpha,-1.0,36.0,1600,Africa/Nairobi
0-20000-0-60002,Bravo,0.5,37.5,2400,Africa/Nairobi
"""

GOOD = """station,element,time,value
0-20000-0-60001,TMAX,2020-01-01,25.1
0-20000-0-60001,TMAX,2020-01-02,26.3
0-20000-0-60001,TMIN,2020-01-01,12.0
0-20000-0-60002,PRCP,2020-01-01,3.4
0-20000-0-60002,PRCP,2020-01-02,
"""


@pytest.fixture
def stations(datastore: Datastore, tmp_path: Path) -> None:
    path = tmp_path / "stations.csv"
    path.write_text(STATIONS)
    assert import_stations(datastore, path) == 2


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def run(path: Path, datastore: Datastore, bucket: Bucket, user: str = "clerk", mapping=None):
    request = IngestRequest.from_path(path) if mapping is None else IngestRequest.from_path(path, mapping)
    return ingest(request, datastore, bucket, user)


def count(datastore: Datastore, sql: str, **params: object) -> int:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text(sql), params).scalar_one()


@pytest.mark.usefixtures("stations")
def test_same_file_twice_adds_nothing(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    path = write(tmp_path, "obs.csv", GOOD)
    first = run(path, datastore, bucket)
    assert first.status is IngestStatus.LOADED
    assert (first.inserted, first.updated, first.rejected) == (5, 0, 0)
    assert count(datastore, "SELECT count(*) FROM observation") == 5
    assert count(datastore, "SELECT count(*) FROM observation WHERE value IS NULL") == 1

    second = run(path, datastore, bucket)
    assert second.status is IngestStatus.SKIPPED
    assert count(datastore, "SELECT count(*) FROM observation") == 5
    assert count(datastore, "SELECT count(*) FROM observation_history") == 0
    statuses = [row[0] for row in datastore.engine.connect().execute(
        sa.text("SELECT status FROM ingest_ledger ORDER BY id"))]
    assert statuses == ["loaded", "skipped"]


@pytest.mark.usefixtures("stations")
def test_same_content_under_another_name_changes_nothing(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    run(write(tmp_path, "a.csv", GOOD), datastore, bucket)
    again = run(write(tmp_path, "b.csv", GOOD), datastore, bucket)
    assert again.status is IngestStatus.LOADED
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 5)
    assert count(datastore, "SELECT count(*) FROM observation") == 5


@pytest.mark.usefixtures("stations")
def test_changed_value_is_a_new_version_with_history(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    path = write(tmp_path, "obs.csv", GOOD)
    run(path, datastore, bucket, user="clerk-a")
    write(tmp_path, "obs.csv", GOOD.replace("2020-01-02,26.3", "2020-01-02,27.0"))
    result = run(path, datastore, bucket, user="clerk-b")
    assert (result.inserted, result.updated, result.unchanged) == (0, 1, 4)
    assert count(datastore, "SELECT count(*) FROM observation") == 5
    with datastore.engine.connect() as connection:
        latest = connection.execute(sa.text(
            "SELECT value, version, changed_by FROM observation o JOIN element e ON e.id = o.element_id "
            "WHERE e.code = 'TMAX' AND phenomenon_time = '2020-01-02T00:00Z'")).one()
        history = connection.execute(sa.text(
            "SELECT value, version, changed_by, superseded_by, superseded_at, reason, operation "
            "FROM observation_history")).all()
    assert tuple(latest) == (27.0, 2, "clerk-b")
    assert len(history) == 1
    old = history[0]
    assert (old.value, old.version, old.changed_by, old.superseded_by, old.operation) == (
        26.3, 1, "clerk-a", "clerk-b", "UPDATE")
    assert old.superseded_at is not None
    assert old.reason == f"ingest of {path.resolve().as_uri()} (ledger {result.ledger_id})"


@pytest.mark.usefixtures("stations")
def test_bad_rows_are_reported_and_good_rows_loaded(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    text = (
        "station,element,time,value\n"
        "0-20000-0-60001,TMAX,2020-01-01,25.1\n"      # 2 good
        "0-20000-0-99999,TMAX,2020-01-01,25.1\n"      # 3 unknown station
        "0-20000-0-60001,TMAXX,2020-01-01,25.1\n"     # 4 unknown element
        "0-20000-0-60001,TMAX,2020-13-45,25.1\n"      # 5 bad time
        "0-20000-0-60001,TMAX,2020-01-03,warm\n"      # 6 not a number
        "0-20000-0-60001,TMAX,2020-01-04,75.0\n"      # 7 outside physical range
        "0-20000-0-60001,TMAX,2020-01-05,20.0,extra\n"  # 8 too many columns
        "0-20000-0-60001,TMAX,2020-01-01,25.1\n"      # 9 duplicate of line 2
        "0-20000-0-60001,TMIN,2020-01-01,11.0\n"      # 10 good
    )
    result = run(write(tmp_path, "mixed.csv", text), datastore, bucket)
    assert result.status is IngestStatus.LOADED
    assert result.inserted == 2
    assert result.rejected == 7
    report = list(csv.DictReader(io.StringIO(bucket.fs.cat_file(bucket.path(result.reject_report)).decode())))
    by_line = {int(row["line"]): row for row in report}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 9]
    assert by_line[3]["reason"] == "unknown station" and by_line[3]["column"] == "station"
    assert by_line[3]["value"] == "0-20000-0-99999"
    assert by_line[4]["reason"] == "unknown element" and by_line[4]["column"] == "element"
    assert by_line[5]["column"] == "time" and "cannot read the time" in by_line[5]["reason"]
    assert by_line[6] | {"file": ""} == {"file": "", "line": "6", "column": "value", "value": "warm", "reason": "not a number"}
    assert "outside the physical range" in by_line[7]["reason"] and by_line[7]["value"] == "75.0"
    assert "expected 4 columns, found 5" in by_line[8]["reason"]
    assert by_line[9]["reason"] == "duplicate of line 2"
    assert all(row["file"].endswith("mixed.csv") for row in report)
    assert count(datastore, "SELECT rows_rejected FROM ingest_ledger") == 7


BAD_FILES = {
    "empty.csv": b"",
    "blank.csv": b"\n\n\n",
    "picture.csv": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    "latin1.csv": "station,element,time,value\n0-20000-0-60001,TMAX,2020-01-01,25.1 \xb0C\n".encode("latin-1"),
    "no_value.csv": b"station,element,time\n0-20000-0-60001,TMAX,2020-01-01\n",
}
EXPECTED_ERRORS = {
    "empty.csv": "empty",
    "blank.csv": "empty",
    "picture.csv": "not a text file",
    "latin1.csv": "line 2: not valid utf-8",
    "no_value.csv": "missing required column(s) 'value'",
}


@pytest.mark.usefixtures("stations")
def test_bad_files_fail_cleanly_and_the_next_file_is_ingested(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    paths = [write(tmp_path, name, data) for name, data in BAD_FILES.items()]
    paths.append(write(tmp_path, "good.csv", GOOD))
    requests = [(str(p), lambda p=p: IngestRequest.from_path(p)) for p in paths]
    results = ingest_many(requests, datastore, bucket, "clerk")
    for path, result in zip(paths[:-1], results[:-1]):
        assert result.status is IngestStatus.FAILED, path.name
        assert path.name in result.error
        assert EXPECTED_ERRORS[path.name] in result.error, result.error
    assert results[-1].status is IngestStatus.LOADED and results[-1].inserted == 5
    assert count(datastore, "SELECT count(*) FROM observation") == 5
    assert count(datastore, "SELECT count(*) FROM ingest_ledger WHERE status = 'failed' AND error <> ''") == 5


@pytest.mark.usefixtures("stations")
def test_a_file_is_all_or_nothing(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    # A source name longer than the database allows is not possible; instead make the merge
    # fail after the COPY by removing the station between validation and load.
    path = write(tmp_path, "obs.csv", GOOD)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(
            "CREATE FUNCTION fail_late() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "RAISE EXCEPTION 'injected failure after % rows', (SELECT count(*) FROM new_rows); END $$; "
            "CREATE TRIGGER fail_late AFTER INSERT ON observation REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION fail_late()"))
    result = run(path, datastore, bucket)
    assert result.status is IngestStatus.FAILED
    assert "injected failure after 5 rows" in result.error
    assert count(datastore, "SELECT count(*) FROM observation") == 0
    assert count(datastore, "SELECT count(*) FROM source WHERE name = 'csv-ingest'") == 0


@pytest.mark.usefixtures("stations")
def test_plain_sql_update_and_delete_are_audited(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    run(write(tmp_path, "obs.csv", GOOD), datastore, bucket)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("UPDATE observation SET value = value + 1 WHERE value IS NOT NULL"))
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(
            "SELECT set_config('opencdms.user', 'qc-reviewer', true), "
            "set_config('opencdms.reason', 'duplicate record', true)"))
        connection.execute(sa.text("DELETE FROM observation WHERE value IS NULL"))
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT operation, superseded_by, reason, version FROM observation_history ORDER BY id")).all()
        versions = connection.execute(sa.text("SELECT DISTINCT version, changed_by FROM observation WHERE value IS NOT NULL")).all()
        role = connection.execute(sa.text("SELECT session_user")).scalar_one()
    updates = [row for row in rows if row.operation == "UPDATE"]
    deletes = [row for row in rows if row.operation == "DELETE"]
    assert len(updates) == 4 and {row.superseded_by for row in updates} == {role}
    assert {row.version for row in updates} == {1}
    assert versions == [(2, role)]
    assert len(deletes) == 1 and deletes[0].superseded_by == "qc-reviewer"
    assert deletes[0].reason == "duplicate record"


@pytest.mark.usefixtures("stations")
def test_references_are_enforced(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    run(write(tmp_path, "obs.csv", GOOD), datastore, bucket)
    with pytest.raises(sa.exc.IntegrityError, match="unknown station id 424242"):
        with datastore.engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, changed_by) "
                "SELECT 424242, element_id, now(), source_id, 'x' FROM observation LIMIT 1"))
    with pytest.raises(sa.exc.IntegrityError, match="has observations"):
        with datastore.engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM station WHERE wigos_id = '0-20000-0-60001'"))


@pytest.mark.usefixtures("stations")
def test_wide_file_with_mapping_converts_units_and_time_zone(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    mapping = write(tmp_path, "aws.yaml", """
layout: wide
source: test-aws
time: {column: datetime, format: "%Y-%m-%d %H:%M", timezone: Africa/Nairobi}
duration: PT1H
station: {filename_pattern: "^(?P<station>[0-9-]+)_hourly\\\\.csv$"}
unmapped_columns: refuse
columns:
  temp_f: {element: TMEAN, units: degF}
  wind_kt: {element: WSPD, units: knot}
""")
    path = write(tmp_path, "0-20000-0-60002_hourly.csv",
                 "datetime,temp_f,wind_kt\n2020-06-01 03:00,68.0,10\n2020-06-01 04:00,,\n")
    result = run(path, datastore, bucket, mapping=load_mapping(mapping))
    assert result.status is IngestStatus.LOADED, result.error
    assert (result.rows_read, result.inserted) == (2, 2)
    with datastore.engine.connect() as connection:
        rows = dict(connection.execute(sa.text(
            "SELECT e.code, o.value FROM observation o JOIN element e ON e.id = o.element_id "
            "WHERE o.phenomenon_time = '2020-06-01T00:00Z' AND o.duration_seconds = 3600")).all())
    assert rows == {"TMEAN": pytest.approx(20.0), "WSPD": pytest.approx(5.144444)}

    refused = write(tmp_path, "0-20000-0-60002_hourly.csv",
                    "datetime,temp_f,wind_kt,battery\n2020-06-01 05:00,68.0,10,12.5\n")
    result = run(refused, datastore, bucket, mapping=load_mapping(mapping))
    assert result.status is IngestStatus.FAILED
    assert "'battery'" in result.error and "refuses unmapped columns" in result.error


def test_mapping_errors_name_file_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "layout: wide\ncolumns: {t: {element: TMAX}}\nduration: one day\n")
    with pytest.raises(MappingError, match=r"bad.yaml: field 'duration': .*ISO 8601"):
        load_mapping(path)
    path = write(tmp_path, "zone.yaml", "time: {timezone: Mars/Olympus}\n")
    with pytest.raises(MappingError, match=r"zone.yaml: field 'time.timezone'.*unknown time zone"):
        load_mapping(path)


@pytest.mark.usefixtures("stations")
def test_source_flags_are_kept_and_a_changed_flag_is_a_new_version(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    path = write(tmp_path, "flags.csv", "station,element,time,value,flag\n"
                 "0-20000-0-60001,PRCP,2020-01-01,0.0,T\n0-20000-0-60001,PRCP,2020-01-02,4.2,\n")
    assert run(path, datastore, bucket).inserted == 2
    write(tmp_path, "flags.csv", "station,element,time,value,flag\n"
          "0-20000-0-60001,PRCP,2020-01-01,0.0,\n0-20000-0-60001,PRCP,2020-01-02,4.2,E\n")
    result = run(path, datastore, bucket)
    assert (result.inserted, result.updated, result.unchanged) == (0, 2, 0)
    with datastore.engine.connect() as connection:
        now = connection.execute(sa.text(
            "SELECT result_quality FROM observation ORDER BY phenomenon_time")).scalars().all()
        before = connection.execute(sa.text(
            "SELECT result_quality FROM observation_history ORDER BY phenomenon_time")).scalars().all()
    assert now == [{}, {"ingest": {"flag": "E"}}]
    assert before == [{"ingest": {"flag": "T"}}, {}]
