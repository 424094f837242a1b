"""The worked mappings of docs/bring-your-own-data.md load their sample files as they are.

Samples under tests/data/byod/: a long CSV with a missing-value code, a wide daily airport
record in US units with trace and missing codes, and an hourly AWS file with a metadata line,
a comment line, ';' delimiters, decimal commas, date and time of day in two columns and a flag
column.  Each loads with 0 rejects and no preprocessing; the test checks what was stored.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import MappingError
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest, load_mapping
from opencdms_kernel.stations import import_stations

SAMPLES = Path(__file__).resolve().parent / "data" / "byod"


@pytest.fixture
def stations(datastore: Datastore) -> None:
    import_stations(datastore, SAMPLES / "stations.csv")


def load(datastore: Datastore, bucket: Bucket, data_file: str, mapping_file: str):
    mapping = load_mapping(SAMPLES / mapping_file)
    return ingest(IngestRequest.from_path(SAMPLES / data_file, mapping), datastore, bucket, "clerk")


def stored(datastore: Datastore, station: str) -> dict[tuple[str, str], tuple[float | None, str | None]]:
    """(element, local time text) -> (value, source flag) of one station's observations."""
    return {key: (value, flag) for key, (value, flag, _) in stored_with_source(datastore, station).items()}


def stored_with_source(datastore: Datastore, station: str) -> dict[tuple[str, str], tuple[float | None, str | None, str | None]]:
    """(element, local time text) -> (value, flag, the file's source) of one station's observations."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text("""
            SELECT e.code, to_char(o.phenomenon_time AT TIME ZONE s.timezone, 'YYYY-MM-DD HH24:MI') AS local_time,
                   o.value, o.result_quality -> 'ingest' ->> 'flag' AS flag,
                   o.result_quality -> 'ingest' ->> 'source' AS source
            FROM observation o JOIN station s ON s.id = o.station_id JOIN element e ON e.id = o.element_id
            WHERE s.wigos_id = :w"""), {"w": station}).all()
    return {(row.code, row.local_time): (None if row.value is None else round(row.value, 2), row.flag, row.source)
            for row in rows}


@pytest.mark.usefixtures("stations")
def test_long_csv_with_a_missing_code(datastore: Datastore, bucket: Bucket) -> None:
    result = load(datastore, bucket, "long.csv", "long.yaml")
    assert (result.status, result.rejected, result.inserted, result.warnings) == (IngestStatus.LOADED, 0, 9, ())
    values = stored(datastore, "0-20000-0-63740")
    assert values[("PRCP", "2023-03-02 00:00")] == (None, None)
    assert values[("TMAX", "2023-03-03 00:00")] == (26.1, "E")


@pytest.mark.usefixtures("stations")
def test_wide_daily_airport_record_in_us_units(datastore: Datastore, bucket: Bucket) -> None:
    result = load(datastore, bucket, "USW00094728_daily.csv", "wide-daily.yaml")
    assert (result.status, result.rejected, result.warnings) == (IngestStatus.LOADED, 0, ())
    assert result.inserted == 28  # 7 days × 4 elements, TMAX of 02-04 missing but stored as such
    values = stored(datastore, "0-840-0-USW00094728")
    assert values[("PRCP", "2021-02-03 00:00")] == (0.0, "trace")
    assert values[("TMAX", "2021-02-04 00:00")] == (None, None)
    assert values[("TMAX", "2021-01-30 00:00")] == (-2.78, None)  # 27 °F
    assert values[("PRCP", "2021-02-01 00:00")] == (40.39, None)  # 1.59 in
    assert values[("SNWD", "2021-02-02 00:00")] == (36.07, None)  # 14.2 in, in cm


@pytest.mark.usefixtures("stations")
def test_hourly_file_with_a_metadata_line_and_split_date_and_time(datastore: Datastore, bucket: Bucket) -> None:
    result = load(datastore, bucket, "hourly-aws.csv", "hourly-aws.yaml")
    assert (result.status, result.rejected, result.warnings) == (IngestStatus.LOADED, 0, ())
    assert result.rows_read == 6 and result.inserted == 18
    values = stored(datastore, "0-20000-0-64400")
    assert values[("PRES", "2024-05-01 00:00")] == (1009.8, None)
    assert values[("PRES", "2024-05-01 04:00")] == (1009.3, "S")
    assert values[("TMEAN", "2024-05-01 03:00")] == (None, None)
    assert values[("RH", "2024-05-01 05:00")] == (92.0, None)


@pytest.mark.usefixtures("stations")
def test_column_aligned_file_with_a_source_column(datastore: Datastore, bucket: Bucket) -> None:
    """Runs of spaces (and a tab, and a blank line) delimit; each value keeps its day's source."""
    result = load(datastore, bucket, "aligned-daily.txt", "aligned-daily.yaml")
    assert (result.status, result.rejected, result.warnings) == (IngestStatus.LOADED, 0, ())
    assert (result.rows_read, result.inserted) == (7, 18)  # the blank line is read, and skipped
    values = stored_with_source(datastore, "0-20000-0-63740")
    assert values[("TMAX", "2023-04-01 00:00")] == (26.1, None, "S")
    assert values[("TMAX", "2023-04-03 00:00")] == (None, None, "M")
    assert values[("PRCP", "2023-04-03 00:00")] == (0.0, "trace", "M")
    assert values[("TMIN", "2023-04-05 00:00")] == (14.6, None, "S")  # the tab-separated line
    assert values[("TMIN", "2023-04-10 00:00")] == (13.9, None, "S")


@pytest.mark.usefixtures("stations")
def test_a_changed_source_is_an_update_and_a_misaligned_line_is_named(
    datastore: Datastore, bucket: Bucket
) -> None:
    load(datastore, bucket, "aligned-daily.txt", "aligned-daily.yaml")
    text = (SAMPLES / "aligned-daily.txt").read_text()
    text = text.replace(" 2023  4  2    25.4    15.8    12.7   S", " 2023  4  2    25.4    15.8    12.7   M")
    text = text.replace(" 2023  4 10    27.0    13.9     0.0   S", " 2023  4 10    27.0    13.9   S")
    mapping = load_mapping(SAMPLES / "aligned-daily.yaml")
    result = ingest(IngestRequest.from_bytes("incoming/aligned-daily.txt", text.encode(), mapping),
                    datastore, bucket, "clerk")
    assert result.updated == 3  # the three values of 2 April now come from the manuscript
    assert [(r["line"], r["reason"]) for r in result.rejects.to_pylist()] == [(9, "expected 7 columns, found 6")]
    assert stored_with_source(datastore, "0-20000-0-63740")[("PRCP", "2023-04-02 00:00")] == (12.7, None, "M")


@pytest.mark.usefixtures("stations")
def test_a_bad_line_of_the_hourly_file_is_named_by_its_line_in_the_file(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    text = (SAMPLES / "hourly-aws.csv").read_text().replace("2024-05-01;02:00;1009,2", "2024-05-01;02:00;1009,2x")
    mapping = load_mapping(SAMPLES / "hourly-aws.yaml")
    result = ingest(IngestRequest.from_bytes("incoming/aws.csv", text.encode(), mapping), datastore, bucket, "clerk")
    assert result.rejected == 1
    [reject] = result.rejects.to_pylist()
    assert (reject["line"], reject["column"], reject["value"]) == (6, "PRES", "1009.2x")


@pytest.mark.parametrize("document,field", [
    ("time: {columns: [DATE, TIME]}\n", "time"),
    ("delimiter: ','\ndecimal: ','\n", "-"),
    ("header_line: 2\nstation: {header_line: 2}\n", "-"),
    ("station: {fixed: '0-1-2-3', prefix: '0-'}\n", "station"),
    ("delimiter: spaces\n", "delimiter"),
    ("delimiter: whitespace\nencoding: utf-16\n", "-"),
])
def test_mapping_mistakes_are_named(tmp_path: Path, document: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(document)
    with pytest.raises(MappingError) as raised:
        load_mapping(path)
    assert raised.value.field == field


@pytest.mark.usefixtures("stations")
@pytest.mark.parametrize("hour_24,expected", [("end_of_day", (0, "2024-05-02 00:00")), ("refuse", (1, None))])
def test_hour_24_is_the_end_of_the_day_only_where_the_mapping_says_so(
    datastore: Datastore, bucket: Bucket, tmp_path: Path, hour_24: str, expected: tuple[int, str | None]
) -> None:
    mapping_file = tmp_path / "h24.yaml"
    mapping_file.write_text((SAMPLES / "hourly-aws.yaml").read_text().replace(
        "timezone: Africa/Brazzaville}", f"timezone: Africa/Brazzaville, hour_24: {hour_24}}}"))
    text = (SAMPLES / "hourly-aws.csv").read_text() + "2024-05-01;24:00;1010,1;25,0;93;\n"
    result = ingest(IngestRequest.from_bytes("incoming/h24.csv", text.encode(), load_mapping(mapping_file)),
                    datastore, bucket, "clerk")
    assert result.rejected == expected[0] * 3
    values = stored(datastore, "0-20000-0-64400")
    if expected[1] is None:
        assert len(values) == 18
        assert "hour 24" in result.rejects.to_pylist()[0]["reason"]
    else:
        assert values[("PRES", expected[1])] == (1010.1, None)


@pytest.mark.parametrize("duration,seconds", [("P1D", 86400), ("PT1H", 3600), ("PT10M", 600), ("P1DT6H", 108000),
                                              ("P1W", 604800)])
def test_durations_are_iso_8601_read_as_timedelta(tmp_path: Path, duration: str, seconds: int) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(f"duration: {duration}\n")
    mapping = load_mapping(path)
    assert mapping.duration_seconds == seconds
    assert mapping.model_dump(mode="json")["duration"] == (duration if duration != "P1W" else "P7D")


@pytest.mark.parametrize("duration", ["P1M", "P1Y", "PT0S", "-P1D", "3600", "P", "PT", "P1DT", "1 day", "PT1.5H"])
def test_calendar_and_odd_durations_are_refused(tmp_path: Path, duration: str) -> None:
    path = tmp_path / "d.yaml"
    path.write_text(f"duration: '{duration}'\n")
    with pytest.raises(MappingError) as raised:
        load_mapping(path)
    assert raised.value.field == "duration"
