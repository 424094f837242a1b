"""Ingest stores only values a file really sent: times, numbers, repeats and station lifetimes.

Every case goes through the real ``ingest()`` on both PostgreSQL setups and checks what the
database holds and what the reject report in the bucket says (line, column, value, reason).
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest import IngestRequest, IngestResult, IngestStatus, Mapping, ingest, validate
from opencdms_kernel.stations import import_stations

OPEN = "0-20000-0-61001"  # no opening or closing date, UTC
LIFE = "0-20000-0-61002"  # opened 2000-01-01, closed 2010-12-31, in Nairobi (UTC+3)
STATIONS = f"""wigos_id,name,latitude,longitude,elevation,timezone,opened,closed
{OPEN},Open,-1.0,36.0,1600,UTC,,
{LIFE},Life,-1.2,36.8,1700,Africa/Nairobi,2000-01-01,2010-12-31
"""
ISO_REASON = "cannot read the time as ISO 8601"


@pytest.fixture(params=["per row", "per distinct time"])
def time_reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both ways validation reads times: each row's text, or each distinct text once (chosen
    by how often times repeat; these small files would otherwise always be read per row)."""
    monkeypatch.setattr(validate, "ROWS_PER_DISTINCT_TIME", 10**9 if request.param == "per row" else 0)


@pytest.fixture
def stations(datastore: Datastore, tmp_path: Path) -> None:
    path = tmp_path / "stations.csv"
    path.write_text(STATIONS)
    assert import_stations(datastore, path) == 2


def ingest_text(
    tmp_path: Path, datastore: Datastore, bucket: Bucket, name: str, text: str, mapping: Mapping | None = None
) -> IngestResult:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    request = IngestRequest.from_path(path) if mapping is None else IngestRequest.from_path(path, mapping)
    result = ingest(request, datastore, bucket, "clerk")
    assert result.status is IngestStatus.LOADED, result.error
    return result


def long_file(*rows: str) -> str:
    return "station,element,time,value\n" + "".join(row + "\n" for row in rows)


def report(bucket: Bucket, result: IngestResult) -> list[dict[str, str]]:
    """The reject report's rows, without the file column (checked to name the file)."""
    if result.reject_report is None:
        return []
    text = bucket.fs.cat_file(bucket.path(result.reject_report)).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert all(row.pop("file").endswith(".csv") for row in rows)
    return rows


def reject(line: int, column: str, value: str, reason: str) -> dict[str, str]:
    return {"line": str(line), "column": column, "value": value, "reason": reason}


def stored(datastore: Datastore) -> dict[tuple[str, str, str], float | None]:
    """(station, element, UTC time) -> value of every observation in the database."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT s.wigos_id, e.code, o.phenomenon_time, o.value FROM observation o "
            "JOIN station s ON s.id = o.station_id JOIN element e ON e.id = o.element_id"
        )).all()
    return {
        (wigos_id, code, when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")): value
        for wigos_id, code, when, value in rows
    }


@pytest.mark.usefixtures("stations", "time_reading")
def test_epoch_is_no_time_and_leaves_a_real_1970_value_alone(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    ingest_text(tmp_path, datastore, bucket, "first.csv", long_file(f"{OPEN},TMAX,1970-01-01,10.0"))
    result = ingest_text(tmp_path, datastore, bucket, "second.csv", long_file(
        f"{OPEN},TMAX,epoch,20.0",
        f"{OPEN},TMAX,1970-01-02,11.0",
    ))
    assert (result.inserted, result.updated, result.rejected) == (1, 0, 1)
    assert stored(datastore) == {
        (OPEN, "TMAX", "1970-01-01T00:00:00Z"): 10.0,
        (OPEN, "TMAX", "1970-01-02T00:00:00Z"): 11.0,
    }
    [row] = report(bucket, result)
    assert row["reason"].startswith(ISO_REASON)
    assert row | {"reason": ""} == reject(2, "time", "epoch", "")


@pytest.mark.usefixtures("stations", "time_reading")
def test_infinite_times_are_rejected_lines_not_a_failed_file(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "inf.csv", long_file(
        f"{OPEN},TMAX,infinity,20.0",
        f"{OPEN},TMAX,-infinity,21.0",
        f"{OPEN},TMAX,2020-01-01,22.0",
    ))
    assert (result.inserted, result.rejected) == (1, 2)
    assert stored(datastore) == {(OPEN, "TMAX", "2020-01-01T00:00:00Z"): 22.0}
    rows = report(bucket, result)
    assert [(r["line"], r["column"], r["value"]) for r in rows] == [
        ("2", "time", "infinity"), ("3", "time", "-infinity")]
    assert all(r["reason"].startswith(ISO_REASON) for r in rows)


@pytest.mark.usefixtures("stations", "time_reading")
def test_utc_offsets_beyond_14_hours_are_refused(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "offsets.csv", long_file(
        f"{OPEN},TMAX,2020-01-01T00:00+25:00,20.0",
        f"{OPEN},TMAX,2020-01-02T00:00-14:30,21.0",
        f"{OPEN},TMAX,2020-01-03T00:00+14:00,22.0",
        f"{OPEN},TMAX,2020-01-04T00:00-0300,23.0",
    ))
    assert stored(datastore) == {
        (OPEN, "TMAX", "2020-01-02T10:00:00Z"): 22.0,
        (OPEN, "TMAX", "2020-01-04T03:00:00Z"): 23.0,
    }
    assert report(bucket, result) == [
        reject(2, "time", "2020-01-01T00:00+25:00", "the UTC offset +25:00 is beyond ±14:00"),
        reject(3, "time", "2020-01-02T00:00-14:30", "the UTC offset -14:30 is beyond ±14:00"),
    ]


@pytest.mark.usefixtures("stations", "time_reading")
def test_an_offset_read_by_a_format_is_checked_too(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    mapping = Mapping(time={"format": "%Y-%m-%d %H:%M %z"}, name="offsets.yaml")
    result = ingest_text(tmp_path, datastore, bucket, "offsets.csv", long_file(
        f"{OPEN},TMAX,2020-01-01 00:00 +2500,20.0",
        f"{OPEN},TMAX,2020-01-02 00:00 +0300,21.0",
    ), mapping)
    assert stored(datastore) == {(OPEN, "TMAX", "2020-01-01T21:00:00Z"): 21.0}
    assert report(bucket, result) == [
        reject(2, "time", "2020-01-01 00:00 +2500", "the UTC offset +25:00 is beyond ±14:00")]


@pytest.mark.usefixtures("stations", "time_reading")
def test_special_words_are_no_time_under_a_format_either(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    # DuckDB's strptime reads 'epoch' as 1970-01-01 and 'infinity' as a time, whatever the format.
    mapping = Mapping(time={"format": "%d/%m/%Y"}, name="dmy.yaml")
    result = ingest_text(tmp_path, datastore, bucket, "dmy.csv", long_file(
        f"{OPEN},TMAX,epoch,20.0",
        f"{OPEN},TMAX,Infinity,21.0",
        f"{OPEN},TMAX,02/01/1970,22.0",
    ), mapping)
    assert stored(datastore) == {(OPEN, "TMAX", "1970-01-02T00:00:00Z"): 22.0}
    assert report(bucket, result) == [
        reject(2, "time", "epoch", "cannot read the time as %d/%m/%Y"),
        reject(3, "time", "Infinity", "cannot read the time as %d/%m/%Y"),
    ]


@pytest.mark.usefixtures("stations", "time_reading")
def test_fractional_seconds_are_refused_and_a_zero_fraction_is_exact(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "fractions.csv", long_file(
        f"{OPEN},TMAX,2020-01-01T06:00:00.6Z,20.0",
        f"{OPEN},TMAX,2020-01-02T06:00:00.000Z,21.0",
    ))
    assert stored(datastore) == {(OPEN, "TMAX", "2020-01-02T06:00:00Z"): 21.0}
    assert report(bucket, result) == [
        reject(2, "time", "2020-01-01T06:00:00.6Z", "fractional seconds: times are stored to the whole second")]


@pytest.mark.usefixtures("stations", "time_reading")
def test_fractional_seconds_read_by_a_format_are_refused(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    mapping = Mapping(time={"format": "%Y-%m-%d %H:%M:%S.%f"}, name="micro.yaml")
    result = ingest_text(tmp_path, datastore, bucket, "micro.csv", long_file(
        f"{OPEN},TMAX,2020-01-01 06:00:00.250,20.0",
        f"{OPEN},TMAX,2020-01-02 06:00:00.000,21.0",
    ), mapping)
    assert stored(datastore) == {(OPEN, "TMAX", "2020-01-02T06:00:00Z"): 21.0}
    assert [r["line"] for r in report(bucket, result)] == ["2"]


@pytest.mark.usefixtures("stations", "time_reading")
def test_hour_24_is_not_moved_to_the_next_day(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "h24.csv", long_file(
        f"{OPEN},TMAX,2020-01-01T24:00,20.0",
        f"{OPEN},TMAX,2020-01-01 24:00:00Z,20.0",
    ))
    assert stored(datastore) == {}
    reason = "hour 24 is not read as the end of the day: write 00:00 of the next day"
    assert report(bucket, result) == [
        reject(2, "time", "2020-01-01T24:00", reason), reject(3, "time", "2020-01-01 24:00:00Z", reason)]


@pytest.mark.usefixtures("stations", "time_reading")
def test_times_outside_the_stations_life_are_refused_by_its_local_dates(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    # The station is in Nairobi (UTC+3): its 2000-01-01 begins at 1999-12-31T21:00Z and its
    # closing day 2010-12-31 ends at 2010-12-31T21:00Z.
    result = ingest_text(tmp_path, datastore, bucket, "life.csv", long_file(
        f"{LIFE},TMAX,1950-06-01,20.0",
        f"{LIFE},TMAX,1999-12-31T20:59:59Z,21.0",
        f"{LIFE},TMAX,1999-12-31T21:00:00Z,22.0",
        f"{LIFE},TMAX,2010-12-31T20:59:59Z,23.0",
        f"{LIFE},TMAX,2010-12-31T21:00:00Z,24.0",
        f"{OPEN},TMAX,1950-06-01,25.0",
    ))
    assert stored(datastore) == {
        (LIFE, "TMAX", "1999-12-31T21:00:00Z"): 22.0,
        (LIFE, "TMAX", "2010-12-31T20:59:59Z"): 23.0,
        (OPEN, "TMAX", "1950-06-01T00:00:00Z"): 25.0,
    }
    assert report(bucket, result) == [
        reject(2, "time", "1950-06-01", "before the station opened on 2000-01-01"),
        reject(3, "time", "1999-12-31T20:59:59Z", "before the station opened on 2000-01-01"),
        reject(6, "time", "2010-12-31T21:00:00Z", "after the station closed on 2010-12-31"),
    ]


@pytest.mark.usefixtures("stations", "time_reading")
def test_times_more_than_a_day_ahead_are_refused(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    soon = (now + timedelta(hours=12)).strftime("%Y-%m-%dT%H:%MZ")
    later = (now + timedelta(days=2)).strftime("%Y-%m-%dT%H:%MZ")
    far = "2999-01-01"
    result = ingest_text(tmp_path, datastore, bucket, "future.csv", long_file(
        f"{OPEN},TMAX,{soon},20.0",
        f"{OPEN},TMAX,{later},21.0",
        f"{OPEN},TMAX,{far},22.0",
    ))
    assert stored(datastore) == {(OPEN, "TMAX", soon[:-1] + ":00Z"): 20.0}
    rows = report(bucket, result)
    assert [(r["line"], r["column"], r["value"]) for r in rows] == [("3", "time", later), ("4", "time", far)]
    assert all(r["reason"].startswith("more than a day in the future (now: ") for r in rows)


@pytest.mark.usefixtures("stations")
def test_only_plain_decimal_numbers_are_values(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    refused = {
        "1_0": "not a number",          # DuckDB's cast reads 10
        "1e-400": "not zero, yet too small a number to be stored (it would become 0)",
        "-1E-999": "not zero, yet too small a number to be stored (it would become 0)",
        "nan": "not a number",
        "NaN": "not a number",
        "inf": "not a number",
        "-Infinity": "not a number",
        "0x10": "not a number",
        "1,5": "not a number",
        "1 5": "not a number",
        "1.5.2": "not a number",
        "--1": "not a number",
        "1e400": "too large a number",
    }
    accepted = {"+1.5": 1.5, " 2.5 ": 2.5, ".5": 0.5, "7.": 7.0, "1.5e1": 15.0, "-3E+0": -3.0,
                "0e-400": 0.0, "0.000": 0.0, "": None}
    texts = [*refused, *accepted]
    days = [f"2020-01-{day:02d}" for day in range(1, len(texts) + 1)]
    result = ingest_text(tmp_path, datastore, bucket, "numbers.csv", long_file(
        *(f'{OPEN},TMEAN,{day},"{text}"' for day, text in zip(days, texts))))
    assert stored(datastore) == {
        (OPEN, "TMEAN", f"{day}T00:00:00Z"): accepted[text]
        for day, text in zip(days, texts) if text in accepted
    }
    assert report(bucket, result) == [
        reject(line, "value", text, refused[text])
        for line, text in enumerate(texts, start=2) if text in refused
    ]


@pytest.mark.usefixtures("stations")
def test_rows_with_one_key_and_different_values_conflict(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "repeats.csv", long_file(
        f"{OPEN},TMAX,2020-01-01,12.5",    # 2 conflicts with 6
        f"{OPEN},TMAX,2020-01-02,13.0",    # 3 kept
        f"{OPEN},TMAX,2020-01-02,13.00",   # 4 the same value: a duplicate of 3
        f"{OPEN},PRCP,2020-01-01,",        # 5 an empty value conflicts with 7
        f"{OPEN},TMAX,2020-01-01,14.0",    # 6 conflicts with 2
        f"{OPEN},PRCP,2020-01-01,0.0",     # 7 conflicts with 5
        f"{OPEN},TMAX,2020-01-01,12.5",    # 8 the same as 2, and conflicts with 6 as 2 does
    ))
    assert stored(datastore) == {(OPEN, "TMAX", "2020-01-02T00:00:00Z"): 13.0}
    assert report(bucket, result) == [
        reject(2, "value", "12.5", "conflicts with line 6 (value 14.0)"),
        reject(4, "value", "13.00", "duplicate of line 3"),
        reject(5, "value", "", "conflicts with line 7 (value 0.0)"),
        reject(6, "value", "14.0", "conflicts with line 2 (value 12.5)"),
        reject(7, "value", "0.0", "conflicts with line 5 (empty value)"),
        reject(8, "value", "12.5", "conflicts with line 6 (value 14.0)"),
    ]


@pytest.mark.usefixtures("stations")
def test_rows_differing_only_in_flag_conflict(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    result = ingest_text(tmp_path, datastore, bucket, "flags.csv", (
        "station,element,time,value,flag\n"
        f"{OPEN},PRCP,2020-01-01,0.0,T\n"
        f"{OPEN},PRCP,2020-01-01,0.0,\n"
        f"{OPEN},PRCP,2020-01-02,1.0,E\n"
        f"{OPEN},PRCP,2020-01-02,1.0,E\n"
    ))
    assert stored(datastore) == {(OPEN, "PRCP", "2020-01-02T00:00:00Z"): 1.0}
    assert report(bucket, result) == [
        reject(2, "value", "0.0", "conflicts with line 3 (value 0.0, no flag)"),
        reject(3, "value", "0.0", "conflicts with line 2 (value 0.0, flag T)"),
        reject(5, "value", "1.0", "duplicate of line 4"),
    ]


@pytest.mark.usefixtures("stations", "time_reading")
def test_wide_rejects_name_the_file_column_and_the_element(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    mapping = Mapping(
        layout="wide",
        station={"fixed": OPEN},
        time={"column": "datetime", "format": "%Y-%m-%d %H:%M"},
        duration="PT1H",
        columns={"temp": {"element": "TMEAN"}, "rain": {"element": "PRCP"}, "temp_2": {"element": "TMEAN"}},
        name="wide.yaml",
    )
    result = ingest_text(tmp_path, datastore, bucket, "wide.csv", (
        "datetime,temp,rain,temp_2\n"
        "2020-01-01 06:00,20.5,1.0,\n"     # 2
        "2020-01-01 06:00,21.0,1.0,\n"     # 3 temp conflicts with 2, rain a duplicate of 2
        "2020-01-01 07:00,22.0,x,22.5\n"   # 4 rain not a number; temp and temp_2 conflict
        "2020-01-01 25:00,23.0,0.0,\n"     # 5 one bad time, two observations refused
        "2020-01-01 08:00,24.0,0.2,24.0\n"  # 6 temp kept, temp_2 a duplicate of it
    ), mapping)
    assert stored(datastore) == {
        (OPEN, "PRCP", "2020-01-01T06:00:00Z"): 1.0,
        (OPEN, "TMEAN", "2020-01-01T08:00:00Z"): 24.0,
        (OPEN, "PRCP", "2020-01-01T08:00:00Z"): 0.2,
    }
    assert report(bucket, result) == [
        reject(2, "temp", "20.5", "TMEAN: conflicts with line 3 (value 21.0)"),
        reject(3, "rain", "1.0", "PRCP: duplicate of line 2"),
        reject(3, "temp", "21.0", "TMEAN: conflicts with line 2 (value 20.5)"),
        reject(4, "rain", "x", "PRCP: not a number"),
        reject(4, "temp", "22.0", "TMEAN: conflicts with line 4 (value 22.5)"),
        reject(4, "temp_2", "22.5", "TMEAN: conflicts with line 4 (value 22.0)"),
        reject(5, "datetime", "2020-01-01 25:00", "PRCP: cannot read the time as %Y-%m-%d %H:%M"),
        reject(5, "datetime", "2020-01-01 25:00", "TMEAN: cannot read the time as %Y-%m-%d %H:%M"),
        reject(6, "temp_2", "24.0", "TMEAN: duplicate of line 6"),
    ]


@pytest.mark.usefixtures("stations")
def test_new_data_written_directly_equals_what_the_merge_would_store(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    """New data goes straight into the table (binary COPY); the same file again goes through
    the staging table and the MERGE, which compares every field: nothing may differ."""
    text = ("station,element,time,value,flag,source\n"
            f'{OPEN},TMAX,2020-01-01,21.5,,\n'
            f'{OPEN},TMAX,2020-01-02,,E,\n'  # a missing value with a flag
            f'{OPEN},TMAX,2020-01-03,-0.0,"say ""hi""",AWS\\1\n'
            f'{OPEN},TMIN,2020-01-01,1e1,é,\n'
            f'{OPEN},TMIN,2020-01-02,7.25,,M\n'
            f'{OPEN},PRCP,2020-01-01,0,T,S\n')
    first = ingest_text(tmp_path, datastore, bucket, "direct.csv", text)
    assert (first.inserted, first.rejected) == (6, 0), first.rejects.to_pylist() if first.rejects else None
    with datastore.engine.connect() as connection:
        quality = {row.code + row.day: (row.value, row.result_quality, row.ingest_id == first.ledger_id,
                                        row.changed_by, row.qc_status, row.version, row.status, row.comment)
                   for row in connection.execute(sa.text(
                       "SELECT e.code, to_char(o.phenomenon_time, 'DD') AS day, o.* FROM observation o "
                       "JOIN element e ON e.id = o.element_id"))}
    assert quality["TMAX01"] == (21.5, {}, True, "clerk", "none", 1, "latest", None)
    assert quality["TMAX02"][:2] == (None, {"ingest": {"flag": "E"}})
    assert quality["TMAX03"][:2] == (-0.0, {"ingest": {"flag": 'say "hi"', "source": "AWS\\1"}})
    assert quality["TMIN01"][:2] == (10.0, {"ingest": {"flag": "é"}})
    assert quality["TMIN02"][:2] == (7.25, {"ingest": {"source": "M"}})
    path = tmp_path / "direct.csv"
    again = ingest(IngestRequest.from_path(path), datastore, bucket, "clerk", force=True)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 6)
