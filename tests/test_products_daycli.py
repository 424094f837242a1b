"""DAYCLI BUFR: encoded with csv2bufr and WMO's template, decoded back with ecCodes directly."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import eccodes
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencdms_kernel.archive import ARCHIVE_PREFIX, PARQUET_SCHEMA, connect_archive
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.errors import UnknownReferenceError
from opencdms_kernel.products import daycli
from opencdms_kernel.products.climat import ProductParameterError
from opencdms_kernel.products.daycli import (
    DaycliDay,
    DaycliStation,
    encode_daycli,
    produce_daycli,
)
from opencdms_kernel.settings import Settings

NAIROBI = "0-20000-0-63740"
STATION = DaycliStation(wigos_id=NAIROBI, latitude=-1.31924, longitude=36.92478, elevation=1624.0)


def decode(data: bytes, tmp_path: Path) -> list[dict]:
    """Every message of a BUFR file, decoded by ecCodes into the keys the tests look at.

    A missing value decodes as ``None`` (ecCodes' own missing test, not a sentinel).
    """
    path = tmp_path / "decode.bufr"
    path.write_bytes(data)
    keys = {
        "series": "#1#wigosIdentifierSeries", "issuer": "#1#wigosIssuerOfIdentifier",
        "issue": "#1#wigosIssueNumber", "local": "#1#wigosLocalIdentifierCharacter",
        "block": "#1#blockNumber", "number": "#1#stationNumber",
        "latitude": "#1#latitude", "longitude": "#1#longitude",
        "height": "#1#heightOfStationGroundAboveMeanSeaLevel",
        "year": "#1#year", "month": "#1#month", "day": "#1#day",
        "precipitation": "#1#totalAccumulatedPrecipitation",
        "fresh_snow": "#1#depthOfFreshSnow", "snow_depth": "#1#totalSnowDepth",
        "tmax": "#1#airTemperature", "tmin": "#2#airTemperature", "tmean": "#3#airTemperature",
        "tmax_statistic": "#1#firstOrderStatistics", "tmin_statistic": "#2#firstOrderStatistics",
        "tmean_statistic": "#3#firstOrderStatistics",
        "tmax_start_hour": "#4#hour", "tmax_start_offset": "#4#timePeriod",
    }
    messages = []
    with path.open("rb") as handle:
        while (bufr := eccodes.codes_bufr_new_from_file(handle)) is not None:
            try:
                eccodes.codes_set(bufr, "unpack", 1)
                message = {
                    name: None if eccodes.codes_is_missing(bufr, key) else eccodes.codes_get(bufr, key)
                    for name, key in keys.items()
                }
                message["local"] = eccodes.codes_get(bufr, "#1#wigosLocalIdentifierCharacter")
                message["sequence"] = eccodes.codes_get_array(bufr, "unexpandedDescriptors").tolist()
                message["centre"] = eccodes.codes_get(bufr, "bufrHeaderCentre")
                # The template's precision: BUFR scale of each element (10**-scale units).
                message["scales"] = {
                    name: eccodes.codes_get(bufr, f"{keys[name]}->scale")
                    for name in ("precipitation", "snow_depth", "tmax")
                }
                messages.append(message)
            finally:
                eccodes.codes_release(bufr)
    return messages


def test_daycli_decodes_back_to_the_same_station_dates_and_values(tmp_path: Path) -> None:
    days = [
        DaycliDay(date(2024, 3, 1), maximum_temperature=27.3, minimum_temperature=14.9,
                  mean_temperature=21.1, precipitation=0.0, total_snow_depth=None),
        DaycliDay(date(2024, 3, 2), maximum_temperature=None, minimum_temperature=-0.04,
                  mean_temperature=20.15, precipitation=12.35, total_snow_depth=3.0),
        DaycliDay(date(2024, 3, 4), maximum_temperature=-12.5, minimum_temperature=None,
                  mean_temperature=None, precipitation=None, total_snow_depth=120.0),
    ]
    bufr = encode_daycli(STATION, days, originating_centre=63)
    assert len(bufr.messages) == 3 and bufr.days == (date(2024, 3, 1), date(2024, 3, 2), date(2024, 3, 4))
    assert bufr.warnings == ()
    decoded = decode(bufr.data, tmp_path)

    for message in decoded:
        assert message["sequence"] == [307075]  # DAYCLI
        assert message["centre"] == 63
        assert (message["series"], message["issuer"], message["issue"], message["local"]) == (0, 20000, 0, "63740")
        assert (message["block"], message["number"]) == (63, 740)
        assert message["latitude"] == pytest.approx(-1.31924, abs=1e-5)
        assert message["longitude"] == pytest.approx(36.92478, abs=1e-5)
        assert message["height"] == pytest.approx(1624.0)
        # Max, min and mean in that order, as the template's statistics qualifiers say.
        assert (message["tmax_statistic"], message["tmin_statistic"], message["tmean_statistic"]) == (2, 3, 4)
        # The UTC day: the period begins on the nominal day at 00 UTC.
        assert (message["tmax_start_offset"], message["tmax_start_hour"]) == (0, 0)
        # The template's precision: 0.01 K, 0.1 kg m-2, 0.01 m.
        assert message["scales"] == {"tmax": 2, "precipitation": 1, "snow_depth": 2}
        assert message["fresh_snow"] is None  # no fresh-snow element: always missing

    assert [(m["year"], m["month"], m["day"]) for m in decoded] == [(2024, 3, 1), (2024, 3, 2), (2024, 3, 4)]
    first, second, fourth = decoded
    # degC + 273.15 at 0.01 K
    assert first["tmax"] == pytest.approx(300.45, abs=1e-9)
    assert first["tmin"] == pytest.approx(288.05, abs=1e-9)
    assert first["tmean"] == pytest.approx(294.25, abs=1e-9)
    assert first["precipitation"] == pytest.approx(0.0)  # a dry day is 0, not missing
    assert first["snow_depth"] is None
    assert second["tmax"] is None
    assert second["tmin"] == pytest.approx(273.11, abs=1e-9)
    assert second["tmean"] == pytest.approx(293.30, abs=1e-9)
    assert second["precipitation"] == pytest.approx(12.4, abs=1e-9)  # 0.1 mm: 12.35 -> 12.4
    assert second["snow_depth"] == pytest.approx(0.03, abs=1e-9)    # 3 cm
    assert fourth["tmax"] == pytest.approx(260.65, abs=1e-9)
    assert fourth["tmin"] is None and fourth["tmean"] is None and fourth["precipitation"] is None
    assert fourth["snow_depth"] == pytest.approx(1.20, abs=1e-9)


def test_unknown_station_metadata_is_encoded_as_missing(tmp_path: Path) -> None:
    # A station whose local id is not a WMO index: no block/station number, no position.
    station = DaycliStation(wigos_id="0-404-1-NBO001")
    decoded = decode(encode_daycli(station, [DaycliDay(date(2024, 3, 1), precipitation=2.0)]).data, tmp_path)
    (message,) = decoded
    assert (message["issuer"], message["issue"], message["local"]) == (404, 1, "NBO001")
    assert message["block"] is None and message["number"] is None
    assert message["latitude"] is None and message["height"] is None
    assert message["centre"] == 65535  # csv2bufr's default: missing originating centre


def test_out_of_range_values_become_missing_with_a_warning(tmp_path: Path) -> None:
    # 95 degC is above the template's valid maximum (343.15 K): csv2bufr sets it to missing.
    bufr = encode_daycli(STATION, [DaycliDay(date(2024, 3, 1), maximum_temperature=95.0, minimum_temperature=10.0)])
    (message,) = decode(bufr.data, tmp_path)
    assert message["tmax"] is None and message["tmin"] == pytest.approx(283.15)
    assert any("2024-03-01" in w and "airTemperature" in w for w in bufr.warnings)


# --------------------------------------------------------------------------- from the archive


def write_archive(root: Path, rows: list[dict]) -> None:
    """Write rows in the archive's hive layout (element=<code>/year=<y>/part-0.parquet)."""
    by_partition: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        by_partition.setdefault((row["element"], row["phenomenon_time"].year), []).append(row)
    for (element, year), part in by_partition.items():
        folder = root / ARCHIVE_PREFIX / f"element={element}" / f"year={year}"
        folder.mkdir(parents=True, exist_ok=True)
        n = len(part)
        table = pa.table(
            {
                "wigos_id": [r["wigos_id"] for r in part],
                "station_id": [1] * n,
                "phenomenon_time": [r["phenomenon_time"] for r in part],
                "duration_seconds": [86400] * n,
                "level": [0.0] * n,
                "source_id": [1] * n,
                "value": [r["value"] for r in part],
                "qc_status": [r.get("qc_status", "passed") for r in part],
                "final_flag": [r.get("final_flag") for r in part],
                "version": [1] * n,
                "changed_at": [datetime(2025, 1, 1, tzinfo=timezone.utc)] * n,
            },
            schema=PARQUET_SCHEMA,
        )
        pq.write_table(table, folder / "part-0.parquet")


def row(element: str, day: int, value: float | None, **extra: object) -> dict:
    when = datetime(2024, 3, day, tzinfo=timezone.utc)
    return {"wigos_id": NAIROBI, "element": element, "phenomenon_time": when, "value": value, **extra}


@pytest.fixture
def bucket(tmp_path: Path) -> Bucket:
    return open_bucket(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))


@pytest.fixture
def archive(bucket: Bucket):
    rows = []
    for d in range(1, 11):
        if d != 5:
            rows.append(row("TMAX", d, 26.0 + d / 10))           # day 5 has no TMAX row
        rows.append(row("TMIN", d, 14.0 - d / 10, qc_status="failed" if d == 6 else "passed"))
        rows.append(row("TMEAN", d, None if d == 7 else 20.0 + d / 100))  # day 7 stored as NULL
        rows.append(row("PRCP", d, [0.0, 3.2, 0.0, 41.7][d % 4]))
    rows.append(row("SNWD", 12, 4.0))  # day 12: only a snow depth; day 11: nothing at all
    rows.append(row("RH", 13, 80.0))    # not a DAYCLI element: no message for day 13
    write_archive(Path(bucket.root), rows)
    connection = connect_archive(bucket)
    yield connection
    connection.close()


def test_daycli_from_the_archive_is_written_and_decodes(archive, bucket: Bucket, tmp_path: Path) -> None:
    product = produce_daycli(archive, bucket, NAIROBI, 2024, 3, station=STATION)
    assert product.key == "products/daycli/0-20000-0-63740/2024-03.bufr"
    written = bucket.fs.cat_file(bucket.path(product.key))
    assert product.bufr is not None and written == product.bufr.data
    decoded = decode(written, tmp_path)

    assert [m["day"] for m in decoded] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12]
    by_day = {m["day"]: m for m in decoded}
    for d in range(1, 11):
        m = by_day[d]
        assert m["local"] == "63740" and (m["year"], m["month"]) == (2024, 3)
        if d == 5:
            assert m["tmax"] is None
        else:
            assert m["tmax"] == pytest.approx(26.0 + d / 10 + 273.15, abs=0.005)
        if d == 6:
            assert m["tmin"] is None  # failed quality control: encoded as missing
        else:
            assert m["tmin"] == pytest.approx(14.0 - d / 10 + 273.15, abs=0.005)
        if d == 7:
            assert m["tmean"] is None  # NULL in the archive
        else:
            assert m["tmean"] == pytest.approx(20.0 + d / 100 + 273.15, abs=0.005)
        assert m["precipitation"] == pytest.approx([0.0, 3.2, 0.0, 41.7][d % 4], abs=0.05)
        assert m["snow_depth"] is None
    twelfth = by_day[12]
    assert twelfth["snow_depth"] == pytest.approx(0.04, abs=0.005)
    assert twelfth["tmax"] is None and twelfth["precipitation"] is None


def test_a_month_without_data_writes_nothing(archive, bucket: Bucket) -> None:
    product = produce_daycli(archive, bucket, NAIROBI, 2024, 4)
    assert product.empty and product.bufr is None
    assert "no daily values" in (product.reason or "")
    assert not bucket.fs.exists(bucket.path("products/daycli/0-20000-0-63740/2024-04.bufr"))


def test_bad_requests_name_the_parameter(archive, bucket: Bucket) -> None:
    with pytest.raises(UnknownReferenceError, match="wigos_id"):
        produce_daycli(archive, bucket, "0-20000-0-99999", 2024, 3)
    with pytest.raises(ProductParameterError) as caught:
        produce_daycli(archive, bucket, NAIROBI, 2024, 0)
    assert caught.value.parameter == "month"
    with pytest.raises(ProductParameterError) as caught:
        produce_daycli(archive, bucket, "not-a-wigos-id", 2024, 3)
    assert caught.value.parameter == "wigos_id"
    with pytest.raises(ProductParameterError) as caught:
        produce_daycli(archive, bucket, NAIROBI, 2024, 3, station=DaycliStation("0-20000-0-63741"))
    assert caught.value.parameter == "station"
    with pytest.raises(ProductParameterError) as caught:
        encode_daycli(STATION, [DaycliDay(date(2024, 3, 1))], originating_centre=70000)
    assert caught.value.parameter == "originating_centre"


# --------------------------------------------------------------------------- the template copy


def test_the_template_travels_with_the_project() -> None:
    folder = daycli.TEMPLATES_DIR.parent
    assert daycli.TEMPLATE_FILE.is_file()
    assert Path(daycli.TEMPLATE_FILE).is_relative_to(Path(daycli.__file__).resolve().parent.parent)
    assert "Apache License" in (folder / "LICENSE").read_text(encoding="utf-8")
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "wmo-im/csv2bufr-templates" in readme and "ee54925" in readme
    metadata = daycli.template_metadata()
    assert metadata["label"] == "daycli-template" and metadata["version"] == "3"
    template = json.loads(daycli.TEMPLATE_FILE.read_text(encoding="utf-8"))
    # Every column the template reads is one the module writes, and no other.
    read = {entry["value"].removeprefix("data:") for entry in template["header"] + template["data"]
            if entry["value"].startswith("data:")}
    assert read == set(daycli.COLUMNS)


@pytest.mark.postgres
def test_station_metadata_comes_from_the_station_table(datastore) -> None:
    import sqlalchemy as sa

    from opencdms_kernel.db.schema import station

    with datastore.engine.begin() as connection:
        connection.execute(
            sa.insert(station),
            [{"wigos_id": NAIROBI, "name": "Nairobi JKIA", "latitude": -1.31924, "longitude": 36.92478,
              "elevation": 1624.0}],
        )
    assert daycli.station_metadata(datastore, NAIROBI) == DaycliStation(
        wigos_id=NAIROBI, latitude=-1.31924, longitude=36.92478, elevation=1624.0
    )
    with pytest.raises(UnknownReferenceError, match="wigos_id"):
        daycli.station_metadata(datastore, "0-20000-0-99999")


# --------------------------------------------------------------------------- flags, local days, versions


def test_quality_flags_come_from_quality_control(bucket: Bucket, tmp_path: Path) -> None:
    """Code table 0 31 021, significance 5: 0 checked and good, 1 checked and suspect, 7 unchecked;
    a failed value is left out (missing, no flag), a corrected or verified one is good."""
    statuses = {1: ("passed", "good"), 2: ("suspect", "suspect"), 3: ("none", None), 4: ("failed", "bad"),
                5: ("passed", "corrected"), 6: ("passed", "verified")}
    rows = [row("TMAX", d, 25.0 + d, qc_status=status) | {"final_flag": flag} for d, (status, flag) in statuses.items()]
    rows.append(row("PRCP", 4, 1.5))  # so day 4 still has a message
    write_archive(Path(bucket.root), rows)
    with connect_archive(bucket) as connection:
        product = produce_daycli(connection, bucket, NAIROBI, 2024, 3, station=STATION)
    path = tmp_path / "flags.bufr"
    path.write_bytes(product.bufr.data)
    flags = {}
    with path.open("rb") as handle:
        while (message := eccodes.codes_bufr_new_from_file(handle)) is not None:
            eccodes.codes_set(message, "unpack", 1)
            day = eccodes.codes_get(message, "#1#day")
            key = "#1#airTemperature->associatedField"
            flags[day] = None if eccodes.codes_is_missing(message, key) else eccodes.codes_get(message, key)
            assert eccodes.codes_get(message, "#1#airTemperature->associatedField->associatedFieldSignificance") == 5
            if day == 4:
                assert eccodes.codes_is_missing(message, "#1#airTemperature")
            eccodes.codes_release(message)
    # Day 4: the failed value is missing, and so is its flag (255: "QC info not available").
    assert flags == {1: 0, 2: 1, 3: 7, 4: 255, 5: 0, 6: 0}
    metadata = json.loads(bucket.fs.cat_file(bucket.path(product.metadata_key)))
    assert metadata["qc"]["flags"] == {"0": 4, "1": 1, "7": 1}  # day 4's rain is good too


def test_days_are_the_stations_local_days_and_a_second_run_is_a_new_version(bucket: Bucket, tmp_path: Path) -> None:
    """Values labelled at local midnight of a UTC+3 station: each is its own day, and its period
    starts at 21:00 UTC the day before; written again, the earlier file is kept."""
    rows = [{"wigos_id": NAIROBI, "element": "TMAX", "value": 20.0 + d,
             "phenomenon_time": datetime(2024, 3, d, tzinfo=timezone.utc) - timedelta(hours=3)} for d in range(1, 4)]
    write_archive(Path(bucket.root), rows)
    with connect_archive(bucket) as connection:
        first = produce_daycli(connection, bucket, NAIROBI, 2024, 3, station=STATION,
                               timezones={NAIROBI: "Africa/Nairobi"})
        second = produce_daycli(connection, bucket, NAIROBI, 2024, 3, station=STATION,
                                timezones={NAIROBI: "Africa/Nairobi"})
    decoded = decode(second.bufr.data, tmp_path)
    assert [(m["day"], m["tmax"]) for m in decoded] == [(1, pytest.approx(294.15)), (2, pytest.approx(295.15)),
                                                        (3, pytest.approx(296.15))]
    assert {(m["tmax_start_offset"], m["tmax_start_hour"]) for m in decoded} == {(-1, 21)}
    assert (first.version, second.version) == (1, 2) and second.replaced is not None
    kept = "products/daycli/0-20000-0-63740/_versions/2024-03/v1.bufr"
    assert kept in second.replaced.kept and bucket.fs.cat_file(bucket.path(kept)) == first.bufr.data
