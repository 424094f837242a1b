"""Tests for the deterministic demo climate network (opencdms_kernel.demo)."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import opencdms_kernel
from opencdms_kernel.demo import (
    AirportSpec,
    DemoDataset,
    DemoSpec,
    cluster_indices,
    generate_airport_data,
    generate_demo_data,
    read_demo_dataset,
    station_network,
)
from opencdms_kernel.demo.files import format_scaled, scaled_integers
from opencdms_kernel.demo.injected_errors import REFERENCE_CLUSTER_STATION_YEARS, SPATIAL_OUTLIERS
from opencdms_kernel.demo.streams import ar1

SMALL = DemoSpec(stations=4, start_year=2001, years=3, aws_stations=1, aws_years=1, seed=7)
# Enough stations for the dense cluster (stations 1-9 and 11-13).
CLUSTERED = DemoSpec(stations=16, start_year=2001, years=4, aws_stations=0, aws_years=0, seed=7)
ELEMENTS_CSV = Path(opencdms_kernel.__file__).parent / "db" / "elements.csv"
# A network too small for the dense cluster has no spatial outliers (they need neighbours).
KINDS = {"spike", "flat_line", "tmin_gt_tmax", "unit_mistake"}
AWS_TO_ELEMENT = {  # column -> (element, factor to the element's canonical unit)
    "air_temp": ("TMEAN", 1.0),
    "rel_hum": ("RH", 1.0),
    "wind_speed_kt": ("WSPD", 1852.0 / 3600.0),
    "wind_dir": ("WDIR", 1.0),
    "pressure_kpa": ("PRES", 10.0),
    "rain": ("PRCP", 1.0),
}


def _limits() -> dict[str, tuple[float, float]]:
    """Physical limits per element code from elements.csv."""
    with ELEMENTS_CSV.open(newline="") as fh:
        return {r["code"]: (float(r["valid_min"]), float(r["valid_max"])) for r in csv.DictReader(fh)}


def _files(folder: Path) -> dict[str, bytes]:
    """All files under ``folder`` keyed by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """The small demo network, generated once for the module."""
    return generate_demo_data(tmp_path_factory.mktemp("demo"), SMALL)


@pytest.fixture(scope="module")
def daily(small: DemoDataset) -> pd.DataFrame:
    """All daily files concatenated; ``value`` is NaN where the field is empty."""
    return pd.concat([pd.read_csv(f, dtype={"value": float}) for f in small.daily_files], ignore_index=True)


@pytest.fixture(scope="module")
def manifest(small: DemoDataset) -> dict:
    """Parsed manifest.json of the small network."""
    return json.loads(small.manifest.read_text())


@pytest.fixture(scope="module")
def stations(small: DemoDataset) -> pd.DataFrame:
    """Parsed stations.csv of the small network."""
    return pd.read_csv(small.stations_csv, dtype=str, keep_default_na=False)


def _error_keys(manifest: dict) -> set[tuple[str, str, str]]:
    """(station, element, time) of every injected error."""
    return {(e["station"], e["element"], e["time"]) for e in manifest["errors"]}


# ----------------------------------------------------------------------------- determinism


def test_same_spec_gives_byte_identical_files(tmp_path: Path) -> None:
    a = generate_demo_data(tmp_path / "a", SMALL)
    b = generate_demo_data(tmp_path / "b", SMALL)
    files_a, files_b = _files(a.folder), _files(b.folder)
    assert files_a.keys() == files_b.keys()
    assert len(files_a) == 1 + SMALL.stations + SMALL.aws_stations + 2
    assert files_a == files_b
    assert a.observation_count == b.observation_count


def test_different_seed_differs(tmp_path: Path) -> None:
    a = generate_demo_data(tmp_path / "a", SMALL)
    other = DemoSpec(**{**SMALL.__dict__, "seed": SMALL.seed + 1})
    b = generate_demo_data(tmp_path / "b", other)
    for fa, fb in zip(a.daily_files, b.daily_files):
        assert fa.read_bytes() != fb.read_bytes()
    assert a.aws_files[0].read_bytes() != b.aws_files[0].read_bytes()
    assert a.manifest.read_bytes() != b.manifest.read_bytes()


def test_progress_reports_every_file(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    ds = generate_demo_data(tmp_path, SMALL, progress=lambda done, total: calls.append((done, total)))
    total = 1 + len(ds.daily_files) + len(ds.aws_files) + 2
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_a_written_dataset_is_read_back_from_its_manifest_without_writing(tmp_path: Path) -> None:
    assert read_demo_dataset(tmp_path) is None
    written = generate_demo_data(tmp_path, SMALL)
    before = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()}
    assert read_demo_dataset(tmp_path) == (written, SMALL)
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*") if path.is_file()} == before


# ----------------------------------------------------------------------------- structure


def test_paths_and_headers(small: DemoDataset) -> None:
    f = small.folder
    assert small.stations_csv == f / "stations.csv"
    assert small.manifest == f / "manifest.json"
    assert small.aws_mapping == f / "aws" / "mapping.yaml"
    assert small.stations_csv.read_text().splitlines()[0] == (
        "wigos_id,name,latitude,longitude,elevation,territory,wmo_region,timezone,status,opened,closed"
    )
    for path in small.daily_files:
        assert path.parent == f / "daily"
        assert path.read_text().splitlines()[0] == "station,element,time,value"
    for path in small.aws_files:
        assert path.parent == f / "aws" and path.name.endswith("_hourly.csv")
        assert path.read_text().splitlines()[0] == "datetime,air_temp,rel_hum,wind_speed_kt,wind_dir,pressure_kpa,rain"
    assert b"\r" not in small.daily_files[0].read_bytes()
    assert b'"' not in small.daily_files[0].read_bytes()


def test_stations_csv(stations: pd.DataFrame, small: DemoDataset) -> None:
    assert len(stations) == SMALL.stations + SMALL.aws_stations
    ids = list(stations.wigos_id)
    assert ids == [f"0-20000-0-{60001 + i}" for i in range(SMALL.stations)] + [
        f"0-20000-0-{69001 + j}" for j in range(SMALL.aws_stations)
    ]
    assert stations.name.is_unique
    lat, lon, elev = (stations[c].astype(float) for c in ("latitude", "longitude", "elevation"))
    assert lat.between(-5, 5).all() and lon.between(34, 42).all() and elev.between(0, 3000).all()
    assert (stations.timezone == "Africa/Nairobi").all() and (stations.wmo_region == "I").all()
    assert stations.territory.str.fullmatch(r"[A-Z]{3}").all() and stations.territory.nunique() == 1
    assert (stations.status == "operational").all() and (stations.closed == "").all()
    opened = dict(zip(stations.wigos_id, stations.opened))
    for path in small.daily_files:
        assert opened[path.stem] == f"{SMALL.start_year}-01-01"
    for path in small.aws_files:
        first = path.read_text().splitlines()[1][:10]
        assert opened[path.name.removesuffix("_hourly.csv")] == first


def test_daily_files(daily: pd.DataFrame, stations: pd.DataFrame, small: DemoDataset) -> None:
    n_days = (np.datetime64(f"{SMALL.start_year + SMALL.years}-01-01") - np.datetime64(f"{SMALL.start_year}-01-01"))
    n_days = int(n_days.astype(int))
    assert len(daily) == SMALL.stations * 3 * n_days
    assert {p.stem for p in small.daily_files} == set(daily.station) == set(stations.wigos_id[: SMALL.stations])
    for path in small.daily_files:
        frame = pd.read_csv(path, dtype={"value": float})
        assert (frame.station == path.stem).all()
        # one row per element/day, sorted by element then time
        assert list(frame.element.unique()) == ["PRCP", "TMAX", "TMIN"]
        assert frame.equals(frame.sort_values(["element", "time"], kind="stable").reset_index(drop=True))
        assert not frame.duplicated(["element", "time"]).any()
    times = pd.to_datetime(daily.time, format="%Y-%m-%d")
    assert times.min() == pd.Timestamp(f"{SMALL.start_year}-01-01")
    assert times.max() == pd.Timestamp(f"{SMALL.start_year + SMALL.years - 1}-12-31")
    # one decimal, as "%.1f"
    text = pd.concat([pd.read_csv(p, dtype=str, keep_default_na=False) for p in small.daily_files]).value
    assert text[text != ""].str.fullmatch(r"-?\d+\.\d").all()


def test_daily_values_within_physical_limits(daily: pd.DataFrame) -> None:
    limits = _limits()
    for element, group in daily.groupby("element"):
        lo, hi = limits[element]
        assert group.value.dropna().between(lo, hi).all(), element


def test_missing_values_present_but_rare(daily: pd.DataFrame) -> None:
    missing = daily.value.isna()
    assert missing.any()
    assert missing.mean() < 0.01
    for element in ("PRCP", "TMAX", "TMIN"):
        assert missing[daily.element == element].any()


def test_aws_files(small: DemoDataset, stations: pd.DataFrame) -> None:
    limits = _limits()
    pattern = re.compile(r"^(?P<station>[0-9]+-[0-9]+-[0-9]+-[0-9A-Za-z]+)_hourly\.csv$")
    aws_ids = set(stations.wigos_id[SMALL.stations:])
    assert len(small.aws_files) == SMALL.aws_stations
    for path in small.aws_files:
        match = pattern.match(path.name)
        assert match and match["station"] in aws_ids
        frame = pd.read_csv(path)
        times = pd.to_datetime(frame.datetime, format="%Y-%m-%d %H:%M")
        last_year = SMALL.start_year + SMALL.years - 1
        expected = pd.date_range(f"{last_year - SMALL.aws_years + 1}-01-01", f"{last_year}-12-31 23:00", freq="h")
        assert (times.values == expected.values).all()
        assert not frame.isna().any().any()
        for column, (element, factor) in AWS_TO_ELEMENT.items():
            lo, hi = limits[element]
            assert (frame[column] * factor).between(lo, hi).all(), column
        # diurnal cycle: warm, dry afternoons; cool, humid dawns
        hour = times.dt.hour
        assert frame.air_temp[hour == 15].mean() > frame.air_temp[hour == 6].mean() + 4
        assert frame.rel_hum[hour == 15].mean() < frame.rel_hum[hour == 6].mean() - 10
        assert (frame.rain == 0).mean() > 0.5 and (frame.rain > 0).any()


def test_aws_mapping(small: DemoDataset) -> None:
    mapping = yaml.safe_load(small.aws_mapping.read_text())
    assert mapping == {
        "layout": "wide",
        "source": "demo-aws",
        "encoding": "utf-8",
        "delimiter": ",",
        "time": {"column": "datetime", "format": "%Y-%m-%d %H:%M", "timezone": "Africa/Nairobi"},
        "duration": "PT1H",
        "station": {"filename_pattern": r"^(?P<station>[0-9]+-[0-9]+-[0-9]+-[0-9A-Za-z]+)_hourly\.csv$"},
        "unmapped_columns": "refuse",
        "columns": {
            "air_temp": {"element": "TMEAN", "units": "degC"},
            "rel_hum": {"element": "RH", "units": "%"},
            "wind_speed_kt": {"element": "WSPD", "units": "knot"},
            "wind_dir": {"element": "WDIR", "units": "degree"},
            "pressure_kpa": {"element": "PRES", "units": "kPa"},
            "rain": {"element": "PRCP", "units": "mm"},
        },
    }
    header = small.aws_files[0].read_text().splitlines()[0].split(",")
    assert set(header) - {"datetime"} == set(mapping["columns"])


def test_observation_count(small: DemoDataset, daily: pd.DataFrame, manifest: dict) -> None:
    aws_values = sum(int(pd.read_csv(p).drop(columns="datetime").notna().sum().sum()) for p in small.aws_files)
    expected = int(daily.value.notna().sum()) + aws_values
    assert small.observation_count == expected == manifest["observation_count"]


# ----------------------------------------------------------------------------- realism


def _wide(daily: pd.DataFrame) -> pd.DataFrame:
    return daily.pivot(index=["station", "time"], columns="element", values="value").reset_index()


def test_tmax_above_tmin_on_genuine_days(daily: pd.DataFrame, manifest: dict) -> None:
    wide = _wide(daily).dropna(subset=["TMAX", "TMIN"])
    bad = {(e["station"], e["time"]) for e in manifest["errors"] if e["element"] in ("TMAX", "TMIN")}
    genuine = wide[[(s, t) not in bad for s, t in zip(wide.station, wide.time)]]
    assert len(genuine) > 0.95 * len(wide)
    assert (genuine.TMAX > genuine.TMIN).all()
    dtr = (genuine.TMAX - genuine.TMIN).mean()
    assert 8 <= dtr <= 14


def test_lapse_rate_visible(daily: pd.DataFrame, stations: pd.DataFrame) -> None:
    wide = _wide(daily)
    mean_temp = ((wide.TMAX + wide.TMIN) / 2).groupby(wide.station).median()
    elevation = stations.set_index("wigos_id").elevation.astype(float).loc[mean_temp.index]
    assert elevation.max() - elevation.min() > 1000
    assert mean_temp[elevation.idxmax()] < mean_temp[elevation.idxmin()]
    slope = np.polyfit(elevation.values / 1000, mean_temp.values, 1)[0]
    assert -8.5 < slope < -4.5  # K per km, around the 6.5 K/km lapse rate


def test_rain_intermittent_and_seasonal(daily: pd.DataFrame) -> None:
    prcp = daily[daily.element == "PRCP"].dropna(subset=["value"])
    assert (prcp.value == 0).mean() >= 0.3
    assert (prcp.value > 0).mean() >= 0.05
    month = prcp.time.str[5:7]
    monthly = prcp.value.groupby(month).mean()
    # long rains (MAM) and short rains (OND) wetter than the JJA dry season
    assert monthly.loc[["03", "04", "05"]].mean() > 2 * monthly.loc[["06", "07", "08"]].mean()
    assert monthly.loc[["10", "11", "12"]].mean() > 2 * monthly.loc[["06", "07", "08"]].mean()


# ----------------------------------------------------------------------------- manifest


def test_manifest_shape(manifest: dict) -> None:
    assert set(manifest) == {"spec", "observation_count", "errors"}
    assert manifest["spec"] == SMALL.__dict__
    assert {e["kind"] for e in manifest["errors"]} == KINDS
    for e in manifest["errors"]:
        assert set(e) == {"station", "element", "time", "kind", "true_value", "recorded_value"}
        assert isinstance(e["recorded_value"], float)
        assert e["true_value"] is None or isinstance(e["true_value"], float)
    assert len(_error_keys(manifest)) == len(manifest["errors"]), "errors overlap"


def test_every_error_is_in_the_files(daily: pd.DataFrame, manifest: dict) -> None:
    lookup = daily.set_index(["station", "element", "time"]).value
    for e in manifest["errors"]:
        value = lookup.loc[(e["station"], e["element"], e["time"])]
        assert not np.isnan(value), "error on a missing value"
        assert value == e["recorded_value"], e


def test_error_kinds_semantics(daily: pd.DataFrame, manifest: dict) -> None:
    errors = pd.DataFrame(manifest["errors"])
    limits = _limits()
    for _, e in errors.iterrows():
        lo, hi = limits[e.element]
        assert lo <= e.recorded_value <= hi
    # spikes: large isolated jumps
    spikes = errors[errors.kind == "spike"]
    temp = spikes[spikes.element != "PRCP"]
    assert ((temp.recorded_value - temp.true_value).abs().between(12, 20)).all()
    assert (spikes[spikes.element == "PRCP"].recorded_value >= 200).all()
    # swaps: both elements of a day, values exchanged
    swaps = errors[errors.kind == "tmin_gt_tmax"].pivot(index=["station", "time"], columns="element")
    assert (swaps["recorded_value", "TMAX"] == swaps["true_value", "TMIN"]).all()
    assert (swaps["recorded_value", "TMIN"] == swaps["true_value", "TMAX"]).all()
    assert (swaps["recorded_value", "TMIN"] > swaps["recorded_value", "TMAX"]).all()
    # unit mistakes: whole station-months of both temperatures in Fahrenheit, all <= 60
    unit = errors[errors.kind == "unit_mistake"]
    assert (unit.recorded_value <= 60).all()
    assert np.allclose(unit.recorded_value, unit.true_value * 9 / 5 + 32, atol=0.051)
    for (station, month), group in unit.groupby([unit.station, unit.time.str[:7]]):
        days = pd.Period(month).days_in_month
        assert sorted(group.element.value_counts().to_dict().items()) == [("TMAX", days), ("TMIN", days)]
    # flat lines: 7-15 consecutive days of one element with one value, distinct neighbours
    lookup = daily.set_index(["station", "element", "time"]).value
    flat = errors[errors.kind == "flat_line"].sort_values(["station", "element", "time"])
    runs = (pd.to_datetime(flat.time).diff() != pd.Timedelta(days=1)) | (flat.station != flat.station.shift()) | (
        flat.element != flat.element.shift()
    )
    for _, run in flat.groupby(runs.cumsum()):
        assert 7 <= len(run) <= 15
        assert run.recorded_value.nunique() == 1
        assert run.iloc[0].true_value == run.iloc[0].recorded_value
        first, last = pd.Timestamp(run.time.iloc[0]), pd.Timestamp(run.time.iloc[-1])
        station, element, stuck = run.station.iloc[0], run.element.iloc[0], run.recorded_value.iloc[0]
        for neighbour in (first - pd.Timedelta(days=1), last + pd.Timedelta(days=1)):
            key = (station, element, neighbour.strftime("%Y-%m-%d"))
            if key in lookup.index:
                assert lookup.loc[key] != stuck


def test_true_values_replaced(daily: pd.DataFrame, manifest: dict) -> None:
    """Except the first day of a flat line, the recorded value differs from the truth."""
    for e in manifest["errors"]:
        if e["kind"] != "flat_line":
            assert e["recorded_value"] != e["true_value"]


# ----------------------------------------------------------------------------- helpers


def test_ar1_matches_recursion() -> None:
    rng = np.random.default_rng(1)
    e = rng.normal(size=300)
    expected = np.empty_like(e)
    x = 0.4
    for i, v in enumerate(e):
        x = 0.8 * x + v
        expected[i] = x
    assert np.allclose(ar1(e, 0.8, initial=0.4), expected)


def test_format_scaled_matches_printf() -> None:
    values = np.array([0.0, -0.04, -0.1, 12.3, -12.35, 1999.96, 5.0])
    for decimals in (0, 1, 2):
        scaled = scaled_integers(values, decimals)
        text = format_scaled(scaled, decimals).to_pylist()
        assert text == [f"{v / 10**decimals:.{decimals}f}" for v in scaled]
    missing = np.array([False, True])
    assert format_scaled(np.array([5, 7]), 1, missing).to_pylist() == ["0.5", None]


def test_invalid_spec_rejected() -> None:
    with pytest.raises(ValueError):
        DemoSpec(stations=0)
    with pytest.raises(ValueError):
        DemoSpec(years=2, aws_years=3)
    with pytest.raises(ValueError):
        DemoSpec(aws_stations=1, aws_years=0)
    DemoSpec(aws_stations=0, aws_years=0)  # a network without AWS is fine


@pytest.mark.slow
def test_default_network(tmp_path: Path) -> None:
    """The default spec: ~0.1-0.3 % erroneous values, roughly the intended count per kind."""
    ds = generate_demo_data(tmp_path)
    manifest = json.loads(ds.manifest.read_text())
    errors = pd.DataFrame(manifest["errors"])
    daily_values = ds.observation_count - sum(
        (len(p.read_text().splitlines()) - 1) * 6 for p in ds.aws_files
    )
    assert 0.001 <= len(errors) / daily_values <= 0.003
    kinds = errors.kind.value_counts()
    assert 40 <= kinds["spike"] <= 80
    assert 30 <= kinds["tmin_gt_tmax"] / 2 <= 80
    assert 10 <= errors[errors.kind == "unit_mistake"].groupby([errors.station, errors.time.str[:7]]).ngroups <= 25
    assert (errors[errors.kind == "unit_mistake"].recorded_value <= 60).all()
    assert len(ds.daily_files) == 50 and len(ds.aws_files) == 3


# ----------------------------------------------------------------------------- the dense cluster


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    lat1, lon1, lat2, lon2 = map(np.radians, (*a, *b))
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return float(2 * 6371.0 * np.arcsin(np.sqrt(h)))


@pytest.fixture(scope="module")
def clustered(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoDataset, pd.DataFrame, dict]:
    ds = generate_demo_data(tmp_path_factory.mktemp("clustered"), CLUSTERED)
    daily = pd.concat([pd.read_csv(f, dtype={"value": float}) for f in ds.daily_files], ignore_index=True)
    return ds, daily, json.loads(ds.manifest.read_text())


def test_the_dense_cluster_gives_every_member_neighbours_with_shared_weather(clustered: tuple) -> None:
    _, daily, manifest = clustered
    stations, _ = station_network(CLUSTERED)
    members = cluster_indices(CLUSTERED.stations)
    assert members == (1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13)
    assert [s.cluster for s in stations] == [i in members for i in range(CLUSTERED.stations)]
    where = [(s.latitude, s.longitude) for s in stations]
    assert max(_km(where[a], where[b]) for a in members for b in members) <= 100.0  # all within 150 km
    # Day-to-day weather is shared within the cluster, and not between the other stations.
    wide = daily[daily.element == "TMAX"].pivot(index="time", columns="station", values="value")
    anomaly = wide - wide.groupby(wide.index.str[5:7]).transform("mean")
    correlation = anomaly.corr().to_numpy()
    ids = list(wide.columns)
    inside = [ids.index(stations[i].wigos_id) for i in members]
    outside = [ids.index(s.wigos_id) for i, s in enumerate(stations) if i not in members]
    pairs_in = [correlation[a, b] for a in inside for b in inside if a < b]
    pairs_out = [correlation[a, b] for a in outside for b in outside if a < b]
    assert np.mean(pairs_in) > 0.7 and np.mean(pairs_out) < 0.2
    # Wet days come together too.
    wet = daily[daily.element == "PRCP"].pivot(index="time", columns="station", values="value") > 0
    both = (wet[stations[1].wigos_id] & wet[stations[2].wigos_id]).mean()
    assert both > 2 * wet[stations[1].wigos_id].mean() * wet[stations[2].wigos_id].mean()


def test_spatial_outliers_sit_at_cluster_stations_and_look_ordinary_in_their_own_series(clustered: tuple) -> None:
    _, daily, manifest = clustered
    stations, _ = station_network(CLUSTERED)
    members = {stations[i].wigos_id for i in cluster_indices(CLUSTERED.stations)}
    errors = pd.DataFrame(manifest["errors"])
    outliers = errors[errors.kind == "spatial_outlier"]
    expected = round(SPATIAL_OUTLIERS * 12 * CLUSTERED.years / REFERENCE_CLUSTER_STATION_YEARS)
    assert len(outliers) == expected > 0
    assert set(outliers.station) <= members and set(outliers.element) <= {"TMAX", "TMIN"}
    assert (outliers.recorded_value - outliers.true_value).abs().between(4.5, 7.5).all()
    wide = daily.pivot(index=["station", "time"], columns="element", values="value")
    for _, e in outliers.iterrows():  # TMIN stays below TMAX: not a swap in disguise
        day = wide.loc[(e.station, e.time)]
        assert day.TMAX - day.TMIN >= 0.5


# ----------------------------------------------------------------------------- the airport record


@pytest.fixture(scope="module")
def airport(tmp_path_factory: pytest.TempPathFactory):
    spec = AirportSpec(years=10, hourly_years=1)
    return spec, generate_airport_data(tmp_path_factory.mktemp("airport"), spec)


def test_the_airport_record_is_mid_latitude_weather_in_coarse_units(airport: tuple, tmp_path: Path) -> None:
    spec, ds = airport
    daily = pd.read_csv(ds.daily_file, dtype={"value": float})
    assert list(daily.columns) == ["station", "element", "time", "value"]
    assert yaml.safe_load(ds.daily_mapping.read_text())["units"] == {"TMAX": "degF", "TMIN": "degF", "PRCP": "in"}
    temperatures = daily[daily.element != "PRCP"].value.dropna()
    assert (temperatures == temperatures.round()).all()  # whole degrees Fahrenheit
    wide = daily.pivot(index="time", columns="element", values="value")
    tmax = (wide.TMAX - 32) * 5 / 9
    assert (wide.TMIN <= wide.TMAX)[wide.TMIN.notna() & wide.TMAX.notna()].all()
    # A continental seasonal cycle, and fronts: day-to-day changes of 8-11 K a few times a year.
    month = pd.to_datetime(wide.index).month
    assert tmax[month == 7].mean() - tmax[month == 1].mean() > 20
    change = tmax.diff().abs()
    per_year = {k: (change >= k).sum() / spec.years for k in (8, 11, 16)}
    assert 2 <= per_year[8] <= 8 and 0.2 <= per_year[11] <= 2 and per_year[16] <= 0.3
    assert change[month == 1].std() > 1.3 * change[month == 7].std()
    rain = wide.PRCP.dropna()
    assert 0.15 <= (rain > 0).mean() <= 0.35
    text = pd.read_csv(ds.daily_file, dtype=str, keep_default_na=False)
    amounts = text[(text.element == "PRCP") & (text.value != "")].value
    assert amounts.str.fullmatch(r"\d+\.\d\d").all()  # hundredths of an inch
    hourly = pd.read_csv(ds.hourly_file)
    assert list(hourly.columns) == ["datetime", "temp_f", "dewpoint_f", "rh", "wind_kt", "wind_dir", "pressure_hpa"]
    assert (hourly.drop(columns="datetime") % 1 == 0).all().all() and (hourly.wind_dir % 10 == 0).all()
    assert (hourly.dewpoint_f <= hourly.temp_f).all() and ((hourly.wind_kt == 0) == (hourly.wind_dir == 0)).all()
    assert ds.hourly_values == hourly.shape[0] * 6 and 0.99 * 8760 <= hourly.shape[0] < 8784
    # Whole hPa: runs of equal pressures of 9-17 hours are ordinary.
    pressure = hourly.pressure_hpa.to_numpy()
    runs = np.diff(np.flatnonzero(np.r_[True, pressure[1:] != pressure[:-1], True]))
    assert ((runs >= 9) & (runs <= 17)).sum() >= 50
    assert generate_airport_data(tmp_path, spec).daily_file.read_bytes() == ds.daily_file.read_bytes()
