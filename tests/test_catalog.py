"""The intake catalog (catalog/opencdms.yaml through opencdms_kernel.catalog) and the gridded analysis.

Every entry is read from real data: stations imported, a CSV ingested from ``incoming/`` in
the bucket, the archive exported, a monthly product computed and stored, the gridded analysis
written.  The data tests run with a local-folder bucket and with S3 (moto), each against the
embedded and the external PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import io
import pickle
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from conftest import outside_pytest_tmp
from intake.readers.entry import Catalog

from opencdms_kernel.archive import connect_archive, export_archive
from opencdms_kernel.bucket import open_bucket
from opencdms_kernel.catalog import (
    CATALOG_PATH,
    CatalogError,
    CatalogParameterError,
    Connections,
    close_catalog,
    open_catalog,
)
from opencdms_kernel.db import migrate
from opencdms_kernel.db.engine import Datastore, DatastoreError
from opencdms_kernel.demo import DemoSpec
from opencdms_kernel.demo.gridded import GRIDDED_KEY, analysis_bytes, gridded_analysis, write_gridded_analysis
from opencdms_kernel.errors import ParameterError
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.products import Period, monthly_summaries, write_product
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

ALPHA, BRAVO = "0-20000-0-60001", "0-20000-0-60002"
STATIONS = f"""wigos_id,name,latitude,longitude,elevation,timezone
{ALPHA},Alpha,-1.0,36.0,1600,UTC
{BRAVO},Bravo,0.5,37.5,2400,UTC
"""
FIRST_DAY, DAYS = date(2019, 12, 30), 62  # to 2020-02-29
MISSING = (ALPHA, "PRCP", date(2020, 1, 15))
INCOMING_KEY = "incoming/daily-2020.csv"
PRODUCT_NAME = "catalog-test"
GRID_SPEC = DemoSpec(stations=3, years=1, aws_stations=0, aws_years=0)
ENTRIES = ["stations", "elements", "observations_live", "observations_archive", "products", "incoming", "gridded_analysis"]


def value_of(station: str, element: str, day: date) -> float | None:
    """The value the test file holds: a formula, so expectations can be computed."""
    if (station, element, day) == MISSING:
        return None
    index = (day - FIRST_DAY).days
    if element == "TMAX":
        return round(20.0 + (station == BRAVO) * 5.0 + index * 0.1, 1)
    return float(index % 5)


def daily_csv() -> str:
    lines = ["station,element,time,value"]
    for station in (ALPHA, BRAVO):
        for element in ("PRCP", "TMAX"):
            for index in range(DAYS):
                day = FIRST_DAY + timedelta(days=index)
                value = value_of(station, element, day)
                lines.append(f"{station},{element},{day.isoformat()},{'' if value is None else value}")
    return "\n".join(lines) + "\n"


def load_everything(settings: Settings, tmp_path: Path) -> None:
    """Stations, an ingested incoming CSV, the archive, one stored product, the grid."""
    bucket = open_bucket(settings)
    with Datastore.open(settings) as datastore:
        stations = tmp_path / "stations.csv"
        stations.write_text(STATIONS)
        import_stations(datastore, stations)
        data = daily_csv().encode()
        bucket.write_bytes(INCOMING_KEY, data)
        result = ingest(IngestRequest.from_bytes(INCOMING_KEY, data), datastore, bucket, "catalog-test")
        assert result.status is IngestStatus.LOADED and result.rejected == 0, result.error
        export_archive(datastore, bucket)
    archive = connect_archive(bucket)
    try:
        product = monthly_summaries(archive, Period(2020, 2020), elements=["TMAX", "PRCP"])
    finally:
        archive.close()
    write_product(bucket, product, name=PRODUCT_NAME)
    assert write_gridded_analysis(bucket, GRID_SPEC, years=1) == GRIDDED_KEY


@pytest.fixture(params=["folder", "s3"])
def any_settings(request: pytest.FixtureRequest, database_url: str) -> Settings:
    """A local-folder bucket, then an S3 bucket (each with both PostgreSQL setups).

    ``database_url`` is named here so that pytest parametrises the PostgreSQL setups.
    """
    return request.getfixturevalue("settings" if request.param == "folder" else "s3_settings")


@pytest.fixture
def catalog(any_settings: Settings, tmp_path: Path) -> Iterator[Catalog]:
    load_everything(any_settings, tmp_path)
    opened = open_catalog(any_settings)
    yield opened
    close_catalog(opened)


@pytest.fixture
def folder_catalog(settings: Settings, tmp_path: Path) -> Iterator[Catalog]:
    """Only the local-folder bucket: for parameter tests, where the bucket does not matter."""
    load_everything(settings, tmp_path)
    opened = open_catalog(settings)
    yield opened
    close_catalog(opened)


# --------------------------------------------------------------------------- the YAML


def test_the_catalog_lists_every_entry_with_descriptions_and_typed_parameters(tmp_path: Path) -> None:
    cat = open_catalog(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))
    assert sorted(cat) == sorted(ENTRIES)
    for name in ENTRIES:
        description = cat.entries[name]
        assert description.metadata["description"], name
        for parameter, declared in description.user_parameters.items():
            assert declared.description and declared.dtype == "str", (name, parameter)
    observation_parameters = ["station", "element", "start", "end"]
    assert list(cat.entries["observations_live"].user_parameters) == observation_parameters
    assert list(cat.entries["observations_archive"].user_parameters) == observation_parameters
    assert set(cat.entries["products"].user_parameters) == {"kind", "name", "period"}
    assert list(cat.entries["incoming"].user_parameters) == ["key"]


def test_the_yaml_holds_no_connection_details_or_credentials(tmp_path: Path, s3_endpoint: str) -> None:
    text = CATALOG_PATH.read_text()
    for detail in ("postgresql://", "postgresql+", "s3://", "file://", "127.0.0.1", "secret", "password"):
        assert detail not in text
    assert yaml.safe_load(text)["user_parameters"]["opencdms"]["default"] is None
    settings = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://clerk:pg-secret-1@127.0.0.1:1/opencdms",
        bucket_url="s3://opencdms-never-created",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="key-id-1",
        s3_secret_access_key="s3-secret-1",
    )
    cat = open_catalog(settings)  # nothing is contacted yet
    connections = cat.user_parameters["opencdms"].default
    assert isinstance(connections, Connections)
    for shown in (repr(connections), repr(cat.stations), repr(cat)):
        assert "pg-secret-1" not in shown and "s3-secret-1" not in shown
    # Credentials never leave through pickling, which intake uses when it copies entries.
    with pytest.raises(TypeError, match="credentials"):
        pickle.dumps(connections)
    with pytest.raises(TypeError, match="credentials"):
        Catalog()["copy"] = cat.stations


def test_nothing_is_connected_until_an_entry_is_read(tmp_path: Path) -> None:
    unreachable = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none",
        bucket_url=f"file://{tmp_path / 'bucket'}",
    )
    cat = open_catalog(unreachable)  # no server there, and that is fine until a table is read
    bucket = open_bucket(unreachable)
    write_gridded_analysis(bucket, GRID_SPEC, years=1)
    assert set(cat.gridded_analysis.read().data_vars) == {"TMEAN", "PRCP", "time_bnds"}
    with pytest.raises(DatastoreError, match="127.0.0.1"):
        cat.stations.read()


def test_settings_come_from_the_environment_when_not_given(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_everything(settings, tmp_path)
    monkeypatch.setenv("OPENCDMS_HOME", str(tmp_path))
    monkeypatch.setenv("OPENCDMS_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("OPENCDMS_BUCKET_URL", settings.bucket_url)
    cat = open_catalog()
    try:
        assert list(cat.stations.read()["wigos_id"]) == [ALPHA, BRAVO]
        assert len(cat.incoming.read(key=INCOMING_KEY)) == 4 * DAYS
    finally:
        close_catalog(cat)


@pytest.mark.slow
def test_the_default_embedded_postgresql_needs_no_url() -> None:
    """``database_url`` unset: the catalog starts (or joins) the private PostgreSQL under var/."""
    home = outside_pytest_tmp("opencdms-test-catalog-")
    settings = Settings(home=home)
    try:
        with Datastore.open(settings) as datastore:
            migrate.upgrade(datastore)
            (home / "stations.csv").write_text(STATIONS)
            import_stations(datastore, home / "stations.csv")
            cat = open_catalog(settings)
            assert list(cat.stations.read()["wigos_id"]) == [ALPHA, BRAVO]
            assert cat.observations_live.read(station=ALPHA).empty
            close_catalog(cat)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_an_entry_of_a_catalog_opened_without_settings_says_how_to_open_it() -> None:
    cat = Catalog.from_yaml_file(str(CATALOG_PATH))
    with pytest.raises(CatalogError, match="open_catalog"):
        cat.stations.read()


# --------------------------------------------------------------------------- every entry, real data


def expected_observations() -> pd.DataFrame:
    rows = [
        (station, element, datetime(day.year, day.month, day.day, tzinfo=timezone.utc), value_of(station, element, day))
        for station in (ALPHA, BRAVO)
        for element in ("PRCP", "TMAX")
        for day in (FIRST_DAY + timedelta(days=index) for index in range(DAYS))
    ]
    frame = pd.DataFrame(rows, columns=["wigos_id", "element", "phenomenon_time", "value"])
    frame["phenomenon_time"] = pd.to_datetime(frame["phenomenon_time"], utc=True)
    return frame


def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns both observation entries and the expectation share, in a fixed form."""
    out = frame[["wigos_id", "element", "phenomenon_time", "value"]].copy()
    out["wigos_id"] = out["wigos_id"].astype(str)
    out["element"] = out["element"].astype(str)
    out["phenomenon_time"] = pd.to_datetime(out["phenomenon_time"], utc=True).astype("datetime64[us, UTC]")
    out["value"] = out["value"].astype(float)
    return out.reset_index(drop=True)


def test_every_entry_reads_the_data_that_was_loaded(catalog: Catalog) -> None:
    stations = catalog.stations.read()
    assert list(stations["wigos_id"]) == [ALPHA, BRAVO]
    assert list(stations["name"]) == ["Alpha", "Bravo"]
    assert stations.loc[1, "elevation"] == 2400

    elements = catalog.elements.read()
    assert {"TMAX", "TMIN", "PRCP"} <= set(elements["code"])
    assert elements.set_index("code").loc["PRCP", "units"] == "mm"

    expected = comparable(expected_observations())
    live = catalog.observations_live.read()
    assert len(live) == 4 * DAYS and live["value"].isna().sum() == 1
    assert str(live["phenomenon_time"].dtype) .endswith("UTC]")
    pd.testing.assert_frame_equal(comparable(live), expected)
    archive = catalog.observations_archive.read()
    assert list(archive.columns) == list(live.columns)
    pd.testing.assert_frame_equal(comparable(archive), expected)
    assert (archive["qc_status"] == live["qc_status"]).all() and (archive["version"] == live["version"]).all()

    products = catalog.products.read()
    assert list(products["name"]) == [PRODUCT_NAME]
    assert products.loc[0, "kind"] == "monthly" and products.loc[0, "period"] == "2020-2020"
    monthly = catalog.products.read(kind="monthly", name=PRODUCT_NAME)
    assert len(monthly) == products.loc[0, "rows"] == monthly.attrs["metadata"]["rows"]
    january = monthly[(monthly["wigos_id"] == ALPHA) & (monthly["element"] == "TMAX") & (monthly["month"] == 1)]
    january_values = [value_of(ALPHA, "TMAX", date(2020, 1, day)) for day in range(1, 32)]
    assert january["mean"].iloc[0] == pytest.approx(np.mean(january_values), abs=0.01)

    incoming = catalog.incoming.read(key=INCOMING_KEY)
    assert list(incoming.columns) == ["station", "element", "time", "value"]
    assert len(incoming) == 4 * DAYS and incoming["value"].isna().sum() == 1
    assert incoming["value"].sum() == pytest.approx(expected["value"].sum())

    grid = catalog.gridded_analysis.read()
    assert isinstance(grid, xr.Dataset)
    xr.testing.assert_allclose(grid[["TMEAN", "PRCP"]], gridded_analysis(GRID_SPEC, years=1)[["TMEAN", "PRCP"]])
    assert grid["TMEAN"].attrs["units"] == "degC" and grid.attrs["Conventions"].startswith("CF-")


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize("entry", ["observations_live", "observations_archive"])
def test_observation_parameters_are_honoured(folder_catalog: Catalog, entry: str) -> None:
    reader = folder_catalog[entry]
    january = reader.read(station=ALPHA, element="tmax", start="2020-01-01", end="2020-01-31")
    assert len(january) == 31
    assert set(january["wigos_id"]) == {ALPHA} and set(january["element"]) == {"TMAX"}
    assert january["phenomenon_time"].min() == pd.Timestamp("2020-01-01", tz="UTC")
    assert january["phenomenon_time"].max() == pd.Timestamp("2020-01-31", tz="UTC")
    assert list(january["value"]) == [value_of(ALPHA, "TMAX", date(2020, 1, day)) for day in range(1, 32)]
    # An end time is included; a time zone offset is honoured.
    assert len(reader.read(station=ALPHA, element="TMAX", start="2020-01-01", end="2020-01-31T00:00Z")) == 31
    assert len(reader.read(station=ALPHA, element="TMAX", start="2020-01-01", end="2020-01-31T02:59+03:00")) == 30
    assert len(reader.read(station=ALPHA, element="TMAX", start=date(2020, 2, 1))) == 29
    assert len(reader.read(end=datetime(2019, 12, 31, tzinfo=timezone.utc))) == 2 * 2 * 2
    # The same through intake's own parameter overrides.
    by_override = folder_catalog(element="PRCP", station=BRAVO)[entry].read()
    assert len(by_override) == DAYS and set(by_override["element"]) == {"PRCP"}
    # And through a derived reader, intake's other way of setting arguments.
    assert len(reader(station=ALPHA, element="PRCP")().read(start="2020-02-01")) == 29
    # A known station without values in the period is simply empty.
    assert reader.read(station=BRAVO, start="2021-01-01").empty


@pytest.mark.parametrize(
    ("entry", "parameters", "parameter", "words"),
    [
        ("observations_live", {"element": "XYZ"}, "element", "unknown element 'XYZ'"),
        ("observations_archive", {"element": "XYZ"}, "element", "unknown element 'XYZ'"),
        ("observations_live", {"station": "0-20000-0-99999"}, "station", "not in the datastore"),
        ("observations_archive", {"station": "0-20000-0-99999"}, "station", "not in the archive"),
        ("observations_live", {"station": "Alpha"}, "station", "not a WIGOS identifier"),
        ("observations_archive", {"start": "last week"}, "start", "not an ISO date"),
        ("observations_live", {"start": "2020-02-01", "end": "2020-01-01"}, "end", "ends before it starts"),
        ("observations_live", {"query": "SELECT 1"}, "query", "not a parameter of this entry"),
        ("stations", {"limit": 5}, "limit", "its parameters: none"),
        ("gridded_analysis", {"key": "incoming/x.nc"}, "key", "its parameters: none"),
        ("incoming", {}, "key", "give the object key"),
        ("incoming", {"key": "archive/observations/x.csv"}, "key", "not a key under incoming/"),
        ("incoming", {"key": "incoming/../products/x.csv"}, "key", "not a key under incoming/"),
        ("incoming", {"key": "incoming/notes.txt"}, "key", "not a CSV file"),
        ("incoming", {"key": "incoming/missing.csv"}, "key", "no object 'incoming/missing.csv'"),
        ("products", {"kind": "yearly"}, "kind", "unknown kind 'yearly'"),
        ("products", {"name": "../../incoming/x"}, "name", "not a product name"),
        ("products", {"name": "nothing-here"}, "name", "no product 'nothing-here'"),
        ("products", {"period": "twenty"}, "period", "'twenty' is not a year or a range like 1991-2020"),
        ("products", {"period": "2020-1991"}, "period", "start year 2020 is after end year 1991"),
        ("products", {"period": "1599-1600"}, "period", "year 1599 is outside 1600-2200"),
        ("products", {"period": 2020}, "period", "is not text like 1991-2020"),
    ],
)
def test_a_bad_parameter_names_the_entry_and_the_parameter(
    folder_catalog: Catalog, entry: str, parameters: dict, parameter: str, words: str
) -> None:
    with pytest.raises(CatalogParameterError) as raised:
        folder_catalog[entry].read(**parameters)
    with pytest.raises(CatalogParameterError, match=f"parameter '{parameter}'"):
        folder_catalog[entry](**parameters).read()  # the same, given when deriving a reader
    assert raised.value.entry == entry and raised.value.parameter == parameter
    assert str(raised.value).startswith(f"catalog entry '{entry}', parameter '{parameter}': ")
    assert words in str(raised.value)
    # The kernel's refused parameter: its message, after the entry, and its status.
    assert isinstance(raised.value, ParameterError) and raised.value.http_status == 400
    assert str(raised.value).endswith(str(ParameterError(parameter, raised.value.reason)))


def test_products_list_filters_by_kind_and_period(folder_catalog: Catalog) -> None:
    assert len(folder_catalog.products.read(kind="monthly", period="2020-2020")) == 1
    # The period is read as the vocabulary reads it: one year, another separator, blanks.
    for written in ("2020", " 2020/2020 ", "2020–2020"):
        assert len(folder_catalog.products.read(kind="monthly", period=written)) == 1, written
    assert folder_catalog.products.read(kind="normals").empty
    assert folder_catalog.products.read(period="1991-2020").empty


def test_a_missing_gridded_analysis_is_a_clear_error(tmp_path: Path) -> None:
    cat = open_catalog(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))
    with pytest.raises(CatalogError, match="catalog entry 'gridded_analysis': no object .*gridded/analysis.nc"):
        cat.gridded_analysis.read()


# --------------------------------------------------------------------------- the gridded analysis


def test_the_gridded_analysis_is_deterministic_cf_and_small() -> None:
    spec = DemoSpec()
    grid = gridded_analysis(spec)
    assert dict(grid.sizes) == {"time": 731, "lat": 21, "lon": 17, "nv": 2}
    assert str(grid["time"].values[0])[:10] == "2019-01-01" and str(grid["time"].values[-1])[:10] == "2020-12-31"
    assert float(grid["lat"].min()) <= -4.5 and float(grid["lon"].max()) >= 41.5
    assert grid["PRCP"].attrs["cell_methods"] == "time: sum" and grid["TMEAN"].attrs["standard_name"] == "air_temperature"
    assert grid["time"].attrs["bounds"] == "time_bnds"
    # Plausible for the demo territory: warm lowlands, cool highlands, a semi-arid to wet rain year.
    assert 15 < float(grid["TMEAN"].mean()) < 28 and float(grid["TMEAN"].min()) > -5
    yearly_rain = float(grid["PRCP"].sum("time").mean()) / 2
    assert 200 < yearly_rain < 1500 and float(grid["PRCP"].min()) == 0.0
    data = analysis_bytes(grid)
    assert len(data) < 3_000_000
    assert data == analysis_bytes(gridded_analysis(spec))
    with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as back:
        xr.testing.assert_identical(back.load().drop_encoding(), grid)


def test_gridded_analysis_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="years"):
        gridded_analysis(GRID_SPEC, years=2)
    with pytest.raises(ValueError, match="resolution"):
        gridded_analysis(GRID_SPEC, years=1, resolution=0.0)
