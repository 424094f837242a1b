"""Products in the bucket (opencdms_kernel.products.store), and one run end to end:
CSV ingest into PostgreSQL, archive export, monthly and daily summaries, stored products.

The end-to-end tests run against the embedded and the external PostgreSQL (conftest.py).
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from opencdms_kernel.archive import connect_archive, export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.ingest.mapping import Mapping, TimeSpec
from opencdms_kernel.products import (
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    daily_summaries,
    list_products,
    monthly_summaries,
    product_key,
    read_product,
    write_product,
)
from opencdms_kernel.products.context import station_timezones
from opencdms_kernel.stations import import_stations

ALPHA, BRAVO = "0-20000-0-60001", "0-20000-0-60002"
STATIONS = f"""wigos_id,name,latitude,longitude,elevation,timezone
{ALPHA},Alpha,-1.0,36.0,1600,Africa/Nairobi
{BRAVO},Bravo,0.5,37.5,2400,Africa/Nairobi
"""
HOURLY = Mapping(time=TimeSpec(format="%Y-%m-%d %H:%M", timezone="Africa/Nairobi"), duration="PT1H", source="test-aws")


def local_bucket(folder: Path) -> Bucket:
    folder.mkdir(parents=True, exist_ok=True)
    return Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file")


def tiny_product(rows: int = 3) -> Product:
    table = pa.table({"wigos_id": [ALPHA] * rows, "value": list(range(rows))}) if rows else \
        pa.schema([("wigos_id", pa.string()), ("value", pa.int64())]).empty_table()
    return Product(ProductKind.MONTHLY, table, Period(2020, 2020), {"stations": [ALPHA]}, {"monthly": {"max_missing": 5}},
                   "a note" if rows else "no data for TMAX at 0-20000-0-60001 in 2020-2020")


# --------------------------------------------------------------------------- store


def test_write_then_read_a_product(tmp_path: Path) -> None:
    bucket = local_bucket(tmp_path / "bucket")
    stored = write_product(bucket, tiny_product())
    assert stored.parquet_key.startswith("products/monthly/2020-2020/monthly-2020-2020-")
    assert stored.metadata_key == stored.parquet_key.removesuffix(".parquet") + ".json"
    table, metadata = read_product(bucket, stored.parquet_key)
    assert table.equals(tiny_product().table)
    assert metadata["rows"] == 3 and metadata["empty"] is False and metadata["note"] == "a note"
    assert metadata["period"] == {"start_year": 2020, "end_year": 2020}
    assert metadata["parameters"] == {"stations": [ALPHA]} and metadata["rules"] == {"monthly": {"max_missing": 5}}
    assert "duckdb" in metadata["software"]
    assert list_products(bucket) == [stored.metadata_key]
    assert (stored.version, stored.replaced, metadata["version"], metadata["replaces"]) == (1, None, 1, None)


def test_a_product_computed_again_is_a_new_version_and_keeps_the_earlier_one(tmp_path: Path) -> None:
    bucket = local_bucket(tmp_path / "bucket")
    first = write_product(bucket, tiny_product(3))
    # The same parameters give the same key; the earlier version is kept, and both the result
    # and the new metadata say which one was replaced and where it is.
    second = write_product(bucket, tiny_product(3))
    assert second.parquet_key == first.parquet_key and second.version == 2
    folder = first.parquet_key.rsplit("/", 1)[0]
    stem = first.parquet_key.rsplit("/", 1)[1].removesuffix(".parquet")
    kept = (f"{folder}/_versions/{stem}/v1.json", f"{folder}/_versions/{stem}/v1.parquet")
    assert second.replaced is not None and (second.replaced.version, second.replaced.kept) == (1, kept)
    _, metadata = read_product(bucket, second.metadata_key)
    assert metadata["version"] == 2 and metadata["replaces"] == {"version": 1, "kept": list(kept)}
    old_table, old_metadata = read_product(bucket, kept[1])
    assert old_table.equals(tiny_product(3).table) and old_metadata["created_at"] == first.metadata["created_at"]
    third = write_product(bucket, tiny_product(3))
    assert third.version == 3 and third.replaced.version == 2
    # Only current versions are listed.
    assert list_products(bucket) == [first.metadata_key] == list_products(bucket, "monthly")


def test_an_empty_product_is_stored_and_says_so(tmp_path: Path) -> None:
    bucket = local_bucket(tmp_path / "bucket")
    stored = write_product(bucket, tiny_product(0), name="nothing-2020")
    assert stored.parquet_key == "products/monthly/2020-2020/nothing-2020.parquet"
    table, metadata = read_product(bucket, stored.metadata_key)
    assert table.num_rows == 0 and table.schema.names == ["wigos_id", "value"]
    assert metadata["empty"] is True and metadata["note"].startswith("no data for")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 200])
def test_a_bad_name_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ProductParameterError) as raised:
        product_key(tiny_product(), name)
    assert raised.value.parameter == "name"


# --------------------------------------------------------------------------- end to end


def daily_csv() -> tuple[str, pd.DataFrame]:
    """Two months of TMAX and PRCP at two stations, with gaps (6 missing in Feb at Alpha)."""
    rng = np.random.default_rng(2020)
    records = []
    for station in (ALPHA, BRAVO):
        for element in ("TMAX", "PRCP"):
            day = date(2020, 1, 1)
            while day <= date(2020, 2, 29):
                gap = (station == ALPHA and day.month == 2 and day.day in (2, 6, 10, 14, 18, 22)) or \
                      (station == BRAVO and day.month == 1 and day.day in (10, 11, 12))
                value = round(float(rng.normal(27, 3)), 1) if element == "TMAX" else round(float(rng.gamma(0.6, 5)), 1)
                records.append((station, element, day, None if gap else value))
                day += timedelta(days=1)
    frame = pd.DataFrame(records, columns=["station", "element", "time", "value"])
    text = "station,element,time,value\n" + "".join(
        f"{s},{e},{t.isoformat()},{'' if v is None else v}\n" for s, e, t, v in records)
    return text, frame


def hourly_csv() -> tuple[str, pd.DataFrame]:
    """Two local days of hourly TMEAN at Alpha (local Nairobi times), hour 5 of day 2 missing."""
    rng = np.random.default_rng(1)
    records = []
    for day in (1, 2):
        for hour in range(24):
            if day == 2 and hour == 5:
                continue
            records.append((ALPHA, "TMEAN", datetime(2020, 3, day, hour), round(float(rng.normal(18, 4)), 1)))
    frame = pd.DataFrame(records, columns=["station", "element", "time", "value"])
    text = "station,element,time,value\n" + "".join(f"{s},{e},{t:%Y-%m-%d %H:%M},{v}\n" for s, e, t, v in records)
    return text, frame


def load(datastore: Datastore, bucket: Bucket, tmp_path: Path, name: str, text: str, mapping: Mapping | None = None) -> None:
    path = tmp_path / name
    path.write_text(text)
    request = IngestRequest.from_path(path) if mapping is None else IngestRequest.from_path(path, mapping)
    result = ingest(request, datastore, bucket, "products-test")
    assert result.status is IngestStatus.LOADED, result.error
    assert result.rejected == 0


def test_end_to_end_through_postgresql_and_the_archive(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    stations = tmp_path / "stations.csv"
    stations.write_text(STATIONS)
    import_stations(datastore, stations)
    daily_text, daily = daily_csv()
    hourly_text, hourly = hourly_csv()
    load(datastore, bucket, tmp_path, "daily.csv", daily_text)
    load(datastore, bucket, tmp_path, "hourly.csv", hourly_text, HOURLY)
    export_archive(datastore, bucket)
    connection = connect_archive(bucket)
    timezones = station_timezones(datastore)
    assert timezones == {ALPHA: "Africa/Nairobi", BRAVO: "Africa/Nairobi"}

    monthly = monthly_summaries(connection, Period(2020, 2020), elements=("TMAX", "PRCP"), timezones=timezones)
    table = monthly.table.to_pandas()
    assert len(table) == 2 * 2 * 12  # both stations and elements, every month of 2020
    for (station, element, month), got in table.set_index(["wigos_id", "element", "month"]).iterrows():
        rows = daily[(daily.station == station) & (daily.element == element) & (pd.to_datetime(daily.time).dt.month == month)]
        values = rows.value.dropna()
        if month > 2:
            assert got.value_days == 0 and not got.meets_rule
            continue
        assert got.value_days == len(values)
        if element == "TMAX":
            expected_mean = values.mean() if got.missing_days <= 5 and got.longest_gap <= 3 else None
            assert (pd.isna(got["mean"]) and expected_mean is None) or got["mean"] == pytest.approx(expected_mean)
        else:
            expected_total = values.sum() if len(values) == len(rows) else None
            assert (pd.isna(got.total) and expected_total is None) or got.total == pytest.approx(expected_total)
    alpha_feb = table.set_index(["wigos_id", "element", "month"]).loc[(ALPHA, "TMAX", 2)]
    assert (alpha_feb.missing_days, alpha_feb.meets_rule) == (6, False)
    bravo_jan = table.set_index(["wigos_id", "element", "month"]).loc[(BRAVO, "TMAX", 1)]
    assert (bravo_jan.longest_gap, bravo_jan.meets_rule) == (3, True)

    days = daily_summaries(connection, Period(2020, 2020), elements="TMEAN", timezones=timezones).table.to_pandas()
    assert days.day.tolist() == [date(2020, 3, 1), date(2020, 3, 2)]  # local days, not UTC ones
    first = hourly[hourly.time.dt.day == 1].value
    assert days.iloc[0].value_count == 24 and days.iloc[0]["mean"] == pytest.approx(first.mean())
    assert days.iloc[1][["value_count", "missing_values", "meets_rule"]].tolist() == [23, 1, True]
    in_utc = daily_summaries(connection, Period(2020, 2020), elements="TMEAN").table.to_pandas()
    assert in_utc.day.tolist() == [date(2020, 2, 29), date(2020, 3, 1), date(2020, 3, 2)]

    stored = write_product(bucket, monthly)
    table_back, metadata = read_product(bucket, stored.metadata_key)
    assert table_back.equals(monthly.table)
    assert metadata["rows"] == 48 and metadata["kind"] == "monthly"
    assert metadata["rules"]["monthly"] == {"max_missing": 5, "max_consecutive_missing": 3, "totals_require_complete": True}
    assert json.loads(bucket.fs.cat_file(bucket.path(stored.metadata_key)))["note"] == monthly.note

    empty = monthly_summaries(connection, Period(1991, 2000), stations=[ALPHA], timezones=timezones)
    stored_empty = write_product(bucket, empty)
    _, metadata = read_product(bucket, stored_empty.metadata_key)
    assert metadata["empty"] is True and metadata["rows"] == 0
    assert metadata["note"] == f"no data for TMAX, TMIN, TMEAN, PRCP at {ALPHA} in 1991-2000"


def test_products_over_an_empty_archive_are_empty(tmp_path: Path) -> None:
    """A bucket without any archive yet: every product is empty and says why; no crash."""
    from opencdms_kernel.products import climate_indices, climate_normals

    connection = connect_archive(local_bucket(tmp_path / "bucket"))
    period = Period(1991, 2020)
    for product in (monthly_summaries(connection, period), climate_normals(connection, period),
                    climate_indices(connection, period, indices="TXx"), daily_summaries(connection, period)):
        assert product.empty and "no" in product.note and "data for" in product.note
    with pytest.raises(ProductParameterError) as raised:
        monthly_summaries(connection, period, stations=[])
    assert raised.value.parameter == "stations"
