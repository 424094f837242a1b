"""The explorer's queries (opencdms_kernel/explore.py) on a seeded network, on both PostgreSQL
setups: stations, a 30-year series with its QC marks (and a decision showing at once), normals
(stored, computed, not met, none), the climatology and anomalies against the normal with a gap,
availability per station and year, and the selection as CSV and NetCDF.

The network (tests/api_support.py ``seed_network``): station A with 30 years (1991-2020) of
daily TMAX and TMIN, B and C with 2020 only, FAR without values.  :func:`build_network` adds a
gap (A's TMAX of March 2020 missing), three wrong values at A (a spike the range test fails, a
doubtful one it finds suspect, a day whose TMIN is above its TMAX, which the consistency test
fails at both elements), runs those tests and exports the archive.  The module's fixture builds
it once per setup; tests that write (decisions) touch only their own values.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from api_support import STATION_A, STATION_B, STATION_C, STATION_FAR
from opencdms_kernel import explore
from opencdms_kernel.archive import connect_archive
from opencdms_kernel.errors import ParameterError, UnknownReferenceError
from opencdms_kernel.products import STANDARD_NORMAL_PERIOD, climate_normals, write_product
from opencdms_kernel.qc import decide
from opencdms_kernel.vocabulary import Period
from support.network import DOUBT_DAY, SPIKE_DAY, SWAP_DAY, Network, key, network_on

@pytest.fixture(scope="module", params=["embedded", "external"])
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with network_on(request, request.param, tmp_path_factory.mktemp(f"explore-{request.param}")) as built:
        yield built


def test_stations_and_elements_come_from_the_catalog(network: Network) -> None:
    stations = explore.station_list(network.catalog)
    assert list(stations["wigos_id"]) == [STATION_A, STATION_B, STATION_C, STATION_FAR]
    alpha = stations.set_index("wigos_id").loc[STATION_A]
    assert (alpha["longitude"], alpha["latitude"], alpha["label"]) == (10.0, 5.0, f"Alpha ({STATION_A})")
    assert {"TMAX", "PRCP", "WDIR"} <= set(explore.element_list(network.catalog)["code"])
    assert explore.data_years(network.catalog, STATION_A, "TMAX") == (1991, 2020)
    assert explore.data_years(network.catalog, STATION_FAR, "TMAX") is None


def test_a_thirty_year_series_carries_its_qc_marks(network: Network) -> None:
    whole = explore.series(network.catalog, STATION_A, "TMAX")
    assert whole.count == len(whole.values) == 10958 and whole.aggregated is None
    assert whole.values["time"].is_monotonic_increasing and str(whole.values["time"].dt.tz) == "UTC"
    marked = whole.flagged.set_index("time")
    assert marked.loc[pd.Timestamp(SPIKE_DAY), "mark"] == "failed"
    assert marked.loc[pd.Timestamp(DOUBT_DAY), "mark"] == "suspect"
    assert marked.loc[pd.Timestamp(SWAP_DAY), "mark"] == "failed"  # TMIN above it: both values fail
    assert len(whole.flagged) == 3 and whole.values["value"].isna().sum() == 31  # the gap: values, no number

    # Long series are drawn from daily aggregates made by PostgreSQL; the flagged values stay.
    thinned = explore.series(network.catalog, STATION_A, "TMAX", max_points=1000)
    assert thinned.aggregated == "daily mean" and len(thinned.values) == 10958
    assert thinned.flagged[["time", "mark"]].equals(whole.flagged[["time", "mark"]])

    january = explore.series(network.catalog, STATION_A, "TMAX", "2020-01-01", "2020-01-31")
    assert january.count == 31 and january.values["time"].iloc[-1] == pd.Timestamp("2020-01-31", tz="UTC")


def test_a_rejection_shows_as_rejected_at_once(network: Network) -> None:
    day = datetime(2020, 1, 15, tzinfo=timezone.utc)  # a value QC passed (no other test looks at it)
    decide(network.datastore, key(day), "reject", "sensor fault noted in the log", "reviewer-rita")
    january = explore.series(network.catalog, STATION_A, "TMAX", "2020-01-01", "2020-01-31")
    assert list(january.marked(explore.Mark.REJECTED)["time"]) == [pd.Timestamp(day)]
    assert list(january.marked(explore.Mark.FAILED)["time"]) == [pd.Timestamp(SPIKE_DAY)]
    winter = explore.series(network.catalog, STATION_A, "TMAX", "2020-01-01", "2020-02-29")
    assert list(winter.marked(explore.Mark.SUSPECT)["time"]) == [pd.Timestamp(DOUBT_DAY)]


def test_normals_are_stored_computed_not_met_or_none(network: Network) -> None:
    computed = explore.station_normal(network.catalog, STATION_A, "TMIN")
    assert computed is not None and computed.source == "computed from the archive"
    assert computed.given == 12 and computed.statistic == "mean" and computed.period == STANDARD_NORMAL_PERIOD
    # TMIN = 20 + 8 sin(2 pi doy / 365.25): the January normal is the mean of its Januaries.
    assert 20.0 < computed.of_month(3) < 28.0 and computed.of_month(9) < 20.0

    # A stored product is read before anything is computed (its values, its key).
    archive = connect_archive(network.bucket)
    product = climate_normals(archive, STANDARD_NORMAL_PERIOD, stations=[STATION_A], elements=["TMIN"])
    archive.close()
    stored = write_product(network.bucket, product, name="normals-station-a")
    read = explore.station_normal(network.catalog, STATION_A, "TMIN")
    assert read is not None and read.source == f"stored product {stored.metadata_key.removesuffix('.json')}"
    assert read.months == pytest.approx(computed.months)

    only_2020 = explore.station_normal(network.catalog, STATION_B, "TMAX")
    assert only_2020 is not None and only_2020.given == 0
    assert "does not meet the rule" in explore.normal_text(only_2020)
    assert explore.station_normal(network.catalog, STATION_FAR, "TMAX") is None  # no value in the archive
    assert explore.station_normal(network.catalog, STATION_A, "WDIR") is None  # an angle has no normal
    assert explore.normal_text(None) == "no normal"


def test_climatology_and_anomalies_against_the_normal_with_a_gap(network: Network) -> None:
    normal = explore.station_normal(network.catalog, STATION_A, "TMAX")
    assert normal is not None and normal.given == 12
    decade = Period(2011, 2020)
    climate = explore.climatology(network.catalog, STATION_A, "TMAX", decade, normal)
    table = climate.table.set_index("month")
    assert list(table.index) == list(range(1, 13)) and climate.units == "degC"
    assert table.loc[3, "years"] == 9 and table.loc[4, "years"] == 10  # March 2020 is the gap
    assert table["normal"].to_numpy() == pytest.approx(np.array(normal.months, dtype=float))
    assert (table["difference"].abs() < 0.5).all()  # the same seasonal cycle every year

    monthly = explore.anomalies(network.catalog, STATION_A, "TMAX", decade, normal)
    assert len(monthly) == 120
    # The months read once serve both (what the app does).
    months = explore.monthly_values(network.catalog, STATION_A, "TMAX", decade)
    assert explore.climatology(network.catalog, STATION_A, "TMAX", decade, normal, months).table.equals(climate.table)
    assert explore.anomalies(network.catalog, STATION_A, "TMAX", decade, normal, months).equals(monthly)
    gap = monthly[(monthly["year"] == 2020) & (monthly["month"] == 3)]
    assert gap["value"].isna().all() and gap["anomaly"].isna().all()
    rest = monthly.drop(gap.index)
    assert rest["anomaly"].notna().all()
    assert rest["anomaly"].to_numpy() == pytest.approx((rest["value"] - rest["normal"]).to_numpy())

    # Without a normal the climatology is still drawn, its normal column empty.
    bravo = explore.climatology(network.catalog, STATION_B, "TMAX", Period(2020, 2020))
    assert bravo.table["normal"].isna().all() and bravo.table["value"].notna().all()
    assert explore.anomalies(network.catalog, STATION_B, "TMAX", Period(2020, 2020))["anomaly"].isna().all()
    # A station without values has no months.
    assert explore.monthly_values(network.catalog, STATION_FAR, "TMAX", Period(2020, 2020)).empty


def test_availability_per_station_and_year(network: Network) -> None:
    heat = explore.availability(network.catalog, "TMAX")
    assert set(heat["wigos_id"]) == {STATION_A, STATION_B, STATION_C}  # FAR has no value
    cells = heat.set_index(["wigos_id", "year"])
    assert cells.loc[(STATION_A, 1991), "fraction"] == 1.0
    assert cells.loc[(STATION_A, 2020), "value_days"] == 366 - 31  # the gap
    assert cells.loc[(STATION_B, 2020), "fraction"] == 1.0 and cells.loc[(STATION_B, 2020), "days"] == 366
    assert cells.loc[(STATION_B, 2019), "value_days"] == 0  # before its first value: an empty cell
    assert heat["year"].min() == 1991 and heat["year"].max() == 2020
    assert cells.loc[(STATION_C, 2020), "label"] == f"Charlie ({STATION_C})"
    assert explore.availability(network.catalog, "PRCP").empty


def test_the_selection_downloads_as_csv_and_netcdf(network: Network) -> None:
    rows = explore.selection(network.catalog, STATION_A, "TMAX", "2020-01-01", "2020-03-31")
    assert len(rows) == 31 + 29 + 31
    text = explore.selection_csv(rows).decode()
    lines = text.splitlines()
    assert lines[0].startswith("wigos_id,element,phenomenon_time") and len(lines) == 92
    assert f"{STATION_A},TMAX,2020-02-20T00:00:00Z,86400,0.0," in text and ",38.5,suspect," in text

    dataset = explore.selection_dataset(network.catalog, rows, STATION_A, "TMAX")
    back = explore.read_netcdf(explore.selection_netcdf(dataset))
    assert back.attrs["featureType"] == "timeSeries" and back.attrs["Conventions"] == "CF-1.8"
    assert back["TMAX"].attrs["standard_name"] == "air_temperature" and back["TMAX"].attrs["units"] == "degC"
    assert back["TMAX"].size == 91 and int(np.isnan(back["TMAX"].values).sum()) == 31
    assert str(back["station_id"].values) == STATION_A and float(back["lat"]) == 5.0
    statuses = dict(zip(pd.to_datetime(back["time"].values), back["qc_status"].values))
    assert statuses[pd.Timestamp("2020-02-20")] == "suspect"


def test_bad_parameters_are_refused_naming_them(network: Network) -> None:
    with pytest.raises(UnknownReferenceError, match="station"):
        explore.series(network.catalog, "0-20000-0-69999", "TMAX")
    with pytest.raises(ParameterError, match="parameter 'station'"):
        explore.series(network.catalog, "not-a-station", "TMAX")
    with pytest.raises(ParameterError, match="parameter 'element'"):
        explore.series(network.catalog, STATION_A, "TMAXX")
    with pytest.raises(ParameterError, match="parameter 'end'"):
        explore.series(network.catalog, STATION_A, "TMAX", "2020-02-01", "2020-01-01")
    with pytest.raises(ParameterError, match="parameter 'start'"):
        explore.series(network.catalog, STATION_A, "TMAX", "last year")
    with pytest.raises(ParameterError, match="parameter 'element'"):
        explore.monthly_values(network.catalog, STATION_A, "WDIR", Period(2020, 2020))
