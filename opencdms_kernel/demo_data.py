"""Deterministic demo climate network with a manifest of injected errors.

:func:`generate_demo_data` writes a small, realistic-looking national network
for a fictional East-African-like territory (ISO 3166 user-assigned code
``XEA``): daily climate stations (TMAX, TMIN, PRCP in long form) and a few
hourly automatic weather stations (wide form, in "foreign" units so that the
ingest mapping has to convert them).  A known set of errors is injected into
the daily files and listed in ``manifest.json`` so that quality control can
later be scored against ground truth.

Everything is derived from ``DemoSpec.seed`` through
:class:`numpy.random.SeedSequence` spawn keys of the form
``(stream, station_index, component)``: each station/component draws from its
own independent stream, so the output does not depend on the order in which
stations are generated, and the same spec always yields byte-identical files.

Manifest error representation
-----------------------------
``manifest.json`` has exactly three keys: ``spec`` (the :class:`DemoSpec`
fields), ``observation_count`` and ``errors``.  ``errors`` holds one entry per
affected *value* (never one per event), sorted by station, element, time::

    {"station": "0-20000-0-60001", "element": "TMAX", "time": "1994-07-03",
     "kind": "spike", "true_value": 11.2, "recorded_value": 27.9}

* ``spike`` -- one isolated value.  Temperature spikes move away from the
  partner element (TMAX up, TMIN down by 12-20 K) so that a spike does not
  also look like a ``tmin_gt_tmax`` error; precipitation spikes put 200-500 mm
  on a dry day between two dry days (``true_value`` 0.0).
* ``flat_line`` -- every day of a 7-15 day run of one temperature element is
  listed, all with the same ``recorded_value``: the true value of the run's
  first day.  The first entry therefore has ``true_value == recorded_value``
  (a QC check cannot tell which day of a stuck run was genuine, so the whole
  run counts as erroneous).  The values just before and after the run differ.
* ``tmin_gt_tmax`` -- TMAX and TMIN of one day swapped; two entries (one per
  element) for that day.
* ``unit_mistake`` -- a whole station-month of TMAX and TMIN keyed in degrees
  Fahrenheit (rounded to 0.1); one entry per value, all <= 60 so that they
  pass the physical range check of ``elements.csv``.
* ``spatial_outlier`` -- one TMAX or TMIN value off by 4.5-7.5 K (either way),
  unremarkable in its own series (within the network's 8 K step limit and an
  ordinary day-to-day change at a mid-latitude station; TMIN stays at least 0.5 K
  below TMAX) but unlike its neighbours' values that day: the error a buddy check
  is for.  Injected only at stations of the dense
  cluster (below), where every station has neighbours within 150 km; a network
  without such a cluster has none of this kind.

The dense cluster
-----------------
The first :data:`CLUSTER_SIZE` daily stations that are not highland ones (indices
1-9 and 11-13) stand within 50 km of :data:`CLUSTER_CENTRE`, as the stations of a
capital region do, so that each has a dozen neighbours within the buddy check's
150 km.  Their weather is shared as it is over such distances: most of the
day-to-day temperature variance and of the diurnal range's, and the chance of a
wet day, come from regional series drawn once for the cluster (its own stream);
the rest is each station's own.  Stations elsewhere keep independent weather.

Real-data-like series
---------------------
:func:`generate_airport_data` writes a different kind of record: one mid-latitude
airport station (fictional, UTC-6) whose daily TMAX/TMIN are in whole degrees
Fahrenheit and precipitation in hundredths of an inch, and whose hourly file has
whole-degree Fahrenheit temperature and dew point, whole-percent humidity,
whole-knot wind, wind direction in tens of degrees and pressure in whole hPa.
The weather has a continental seasonal cycle, cold fronts (a sharp fall after a
warm sector, a pressure trough, a wind shift) and calm anticyclonic spells.  It
holds no injected errors: every value QC flags there is a false positive.

Errors never overlap each other or a missing value, and are separated from
other errors by at least :data:`ERROR_MARGIN_DAYS` days.  ``true_value`` is
always a number here (the schema allows ``null`` for errors whose truth is
unknown).  Missing values (empty ``value`` fields) are not errors and are not
listed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

__all__ = [
    "DemoSpec",
    "DemoDataset",
    "Station",
    "generate_demo_data",
    "station_network",
    "rainy_season",
    "wet_probability",
    "precipitation_series",
    "temperature_series",
    "aws_series",
    "ar1",
    "format_scaled",
    "cluster_indices",
    "regional_weather",
    "AirportSpec",
    "AirportDataset",
    "airport_weather",
    "generate_airport_data",
]

# --------------------------------------------------------------------------- constants

TIMEZONE = "Africa/Nairobi"
TERRITORY = "XEA"  # ISO 3166 user-assigned range (X..): cannot clash with a real country
WMO_REGION = "I"
STATUS = "operational"
DAILY_FIRST_ID = 60001
AWS_FIRST_ID = 69001

# Alphabetical, because the daily files are sorted by element then time.
DAILY_ELEMENTS: tuple[str, ...] = ("PRCP", "TMAX", "TMIN")
PRCP, TMAX, TMIN = 0, 1, 2

STATIONS_HEADER = (
    "wigos_id", "name", "latitude", "longitude", "elevation", "territory",
    "wmo_region", "timezone", "status", "opened", "closed",
)
DAILY_HEADER = ("station", "element", "time", "value")
AWS_HEADER = ("datetime", "air_temp", "rel_hum", "wind_speed_kt", "wind_dir", "pressure_kpa", "rain")
# Decimals written per AWS column (RH and direction as whole numbers, like most loggers).
AWS_DECIMALS = {"air_temp": 1, "rel_hum": 0, "wind_speed_kt": 1, "wind_dir": 0, "pressure_kpa": 2, "rain": 1}

# Written verbatim (not via yaml.dump) so the file is exactly the documented ingest format.
AWS_MAPPING_YAML = r"""layout: wide
source: demo-aws
encoding: utf-8
delimiter: ","
time: {column: datetime, format: "%Y-%m-%d %H:%M", timezone: Africa/Nairobi}
duration: PT1H
station: {filename_pattern: "^(?P<station>[0-9]+-[0-9]+-[0-9]+-[0-9A-Za-z]+)_hourly\\.csv$"}
unmapped_columns: refuse
columns:
  air_temp: {element: TMEAN, units: degC}
  rel_hum: {element: RH, units: "%"}
  wind_speed_kt: {element: WSPD, units: knot}
  wind_dir: {element: WDIR, units: degree}
  pressure_kpa: {element: PRES, units: kPa}
  rain: {element: PRCP, units: mm}
"""

KNOT_IN_M_S = 1852.0 / 3600.0

# Climate model parameters.
SEA_LEVEL_MEAN_TEMP = 25.5  # degC, annual mean air temperature at sea level
LAPSE_RATE = 6.5  # K per km of altitude
WARMING_TREND = 0.2  # K per decade, so the 30-year series has a visible trend
HIGHLAND_EVERY = 10  # station indices 0, 10, 20, ... sit on the cool highland massif
HIGHLAND_ELEVATION = (2750.0, 3000.0)  # m; cool enough for Fahrenheit TMAX <= 60 in cool months
MISSING_RATE = 0.002  # genuinely missing daily values per station and element

# Limits from elements.csv (tenths of the unit) that injected values must respect,
# so that they pass ingest validation and have to be caught by QC.
TEMP_LIMITS_TENTHS = (-900, 600)
PRCP_LIMITS_TENTHS = (0, 20000)
FAHRENHEIT_MAX_TENTHS = 600

# Error counts for the reference network (50 stations x 30 years); scaled with
# station-years but never below one, so even a tiny spec holds every kind (but spatial
# outliers, which need the dense cluster's neighbours).
# Chosen so that ~0.1 % of the daily values are erroneous.
REFERENCE_STATION_YEARS = 50 * 30
BASE_ERROR_COUNTS = {
    "unit_mistake": 20,  # station-months
    "flat_line": 25,  # runs
    "tmin_gt_tmax": 60,  # days
    "temperature_spike": 48,
    "precipitation_spike": 12,
}
# Spatial outliers scale with the cluster's station-years (reference: 12 stations x 30 years).
REFERENCE_CLUSTER_STATION_YEARS = 12 * 30
SPATIAL_OUTLIERS = 72
SPATIAL_OUTLIER_KELVIN = (4.5, 7.5)
ERROR_MARGIN_DAYS = 3  # clean days kept between two errors, so each error is isolated
FLAT_LINE_DAYS = (7, 15)
SPIKE_KELVIN = (12.0, 20.0)
RAIN_SPIKE_MM = (200.0, 500.0)

# The dense cluster (see the module docstring).
CLUSTER_SIZE = 12
CLUSTER_CENTRE = (-1.6, 38.3)  # latitude, longitude: east of the massif, on the plateau
CLUSTER_RADIUS_DEG = 0.45  # about 50 km: any two cluster stations are within 100 km
CLUSTER_MIN_STATIONS = 4  # each then has at least 3 neighbours, the buddy check's minimum
# Shares of variance that are regional (the same at every cluster station).
CLUSTER_TEMPERATURE_SHARE = 0.9
CLUSTER_DTR_SHARE = 0.7
CLUSTER_RAIN_SHARE = 0.75
# The logistic curve 1 / (1 + exp(-1.702 z)) is within 0.01 of the normal CDF (as in gridded.py).
_LOGISTIC_NORMAL = 1.702

# First element of every SeedSequence spawn key: one independent stream per purpose
# (gridded.py uses 6, the cluster's regional weather 7, the airport 8).
_STREAM_NETWORK, _STREAM_DAILY, _STREAM_AWS, _STREAM_MISSING, _STREAM_ERRORS = 1, 2, 3, 4, 5
_STREAM_CLUSTER, _STREAM_AIRPORT = 7, 8
_COMPONENT_PRECIP, _COMPONENT_TEMP, _COMPONENT_HOURLY, _COMPONENT_DTR = 0, 1, 2, 3
_AWS_INDEX_OFFSET = 100_000  # keeps AWS network keys apart from daily station keys

_SYLLABLES = (
    "ka", "ki", "ko", "ma", "mi", "mu", "na", "ni", "nya", "nga", "ngo", "ri", "ru", "la",
    "lo", "wa", "we", "ta", "tu", "si", "so", "ba", "bu", "ga", "go", "ja", "ke", "mbo",
    "nde", "ndi", "sha", "ya", "ra", "ti", "ke", "mo",
)


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class DemoSpec:
    """Size and seed of the demo network."""

    stations: int = 50  # daily climate stations
    start_year: int = 1991
    years: int = 30
    aws_stations: int = 3  # hourly automatic weather stations
    aws_years: int = 2  # last N years of the period, hourly
    seed: int = 20261127

    def __post_init__(self) -> None:
        """Reject specs that cannot produce a meaningful network."""
        if self.stations < 1 or self.years < 1:
            raise ValueError("need at least one daily station and one year")
        if self.aws_stations < 0 or not 0 <= self.aws_years <= self.years:
            raise ValueError("aws_stations must be >= 0 and 0 <= aws_years <= years")
        if self.aws_stations and not self.aws_years:
            raise ValueError("AWS stations need at least one year of hourly data")
        if self.stations > 8999 or self.aws_stations > 999:
            raise ValueError("too many stations for the 6NNNN WIGOS id block")


@dataclass(frozen=True)
class DemoDataset:
    """Paths of the files written by :func:`generate_demo_data`."""

    folder: Path
    stations_csv: Path  # folder/stations.csv
    daily_files: tuple[Path, ...]  # folder/daily/<wigos_id>.csv (long form)
    aws_files: tuple[Path, ...]  # folder/aws/<wigos_id>_hourly.csv (wide form)
    aws_mapping: Path  # folder/aws/mapping.yaml
    manifest: Path  # folder/manifest.json
    observation_count: int  # number of non-empty values written in all files


@dataclass(frozen=True)
class Station:
    """One station of the demo network plus the local-climate knobs of its series."""

    wigos_id: str
    name: str
    latitude: float
    longitude: float
    elevation: float  # m
    wetness: float  # multiplier on the wet-day probability
    temp_offset: float  # K, local anomaly (exposure, cold-air pooling, ...)
    wind_factor: float  # multiplier on the mean wind speed
    cluster: bool = False  # one of the dense cluster's stations (shares its regional weather)


@dataclass(frozen=True)
class RegionalWeather:
    """The cluster's shared weather, one value per day: standard normal series for the
    wet-day draw (``rain``), and unit-variance AR(1) series for the mean temperature's and
    the diurnal range's day-to-day anomalies (``temperature``, ``dtr``)."""

    rain: np.ndarray
    temperature: np.ndarray
    dtr: np.ndarray


class InjectedError(NamedTuple):
    """One erroneous daily value, in integer tenths of the element's unit."""

    station: int  # index into the daily network
    element: int  # index into DAILY_ELEMENTS
    day: int  # index into the daily date axis
    kind: str
    true_tenths: int
    recorded_tenths: int


# --------------------------------------------------------------------------- small helpers


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for one (stream, station, component) key."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def _circular_days(delta: np.ndarray) -> np.ndarray:
    """Wrap day-of-year differences into [-182.6, 182.6) so seasonal bumps wrap over New Year."""
    return (delta + 182.625) % 365.25 - 182.625


def _day_of_year(dates: np.ndarray) -> np.ndarray:
    """1-based day of year of ``datetime64[D]`` dates."""
    return (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1


def _years_since(dates: np.ndarray, start_year: int) -> np.ndarray:
    """Fractional years elapsed since ``start_year``-01-01 (drives the warming trend)."""
    return (dates - np.datetime64(f"{start_year:04d}-01-01", "D")).astype(np.float64) / 365.25


def daily_dates(start_year: int, years: int) -> np.ndarray:
    """All days from ``start_year``-01-01 to the end of the last year, as ``datetime64[D]``."""
    return np.arange(
        np.datetime64(f"{start_year:04d}-01-01", "D"),
        np.datetime64(f"{start_year + years:04d}-01-01", "D"),
        dtype="datetime64[D]",
    )


def ar1(innovations: np.ndarray, phi: float, initial: float = 0.0, block: int = 64) -> np.ndarray:
    """AR(1) filter ``x[t] = phi * x[t-1] + e[t]`` with ``x[-1] = initial``, vectorised.

    Within a block ``x[t] = phi**t * (phi * carry + cumsum(e[k] * phi**-k))``; blocks
    are short so ``phi**-k`` cannot overflow or lose precision, and only the block
    loop (n / 64 iterations) runs in Python.
    """
    e = np.asarray(innovations, dtype=np.float64)
    out = np.empty_like(e)
    k = np.arange(block, dtype=np.float64)
    up, down = phi**k, phi**-k
    carry = float(initial)
    for start in range(0, e.size, block):
        chunk = e[start:start + block]
        m = chunk.size
        out[start:start + m] = up[:m] * (phi * carry + np.cumsum(chunk * down[:m]))
        carry = out[start + m - 1]
    return out


def _stationary_ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation ``sd``."""
    innovations = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), n)
    return ar1(innovations, phi, initial=rng.normal(0.0, sd))


def format_scaled(scaled: np.ndarray, decimals: int, missing: np.ndarray | None = None) -> pa.Array:
    """Format integers holding value * 10**decimals as fixed-point strings ("%.Nf").

    Working on integers avoids float formatting in a Python loop and guarantees the
    text round-trips to the value recorded in the manifest.  ``missing`` entries
    become nulls, which the CSV writer emits as empty fields.
    """
    scaled = np.asarray(scaled, dtype=np.int64)
    magnitude = np.abs(scaled)
    unit = 10**decimals
    sign = pc.if_else(pa.array(scaled < 0), "-", "")
    whole = pc.cast(pa.array(magnitude // unit), pa.string())
    if decimals:
        fraction = pc.utf8_lpad(pc.cast(pa.array(magnitude % unit), pa.string()), decimals, "0")
        text = pc.binary_join_element_wise(sign, whole, ".", fraction, "")
    else:
        text = pc.binary_join_element_wise(sign, whole, "")
    if missing is not None and missing.any():
        text = pc.if_else(pa.array(missing), pa.scalar(None, pa.string()), text)
    return text


def _scale(values: np.ndarray, decimals: int) -> np.ndarray:
    """Round floats to ``decimals`` and return them as scaled integers."""
    return np.rint(np.asarray(values) * 10**decimals).astype(np.int64)


def _write_csv(path: Path, columns: dict[str, pa.Array]) -> None:
    """Write string columns as an unquoted CSV with a plain header and ``\\n`` line ends."""
    options = pacsv.WriteOptions(quoting_style="none", quoting_header="none", eol="\n", batch_size=1 << 16)
    pacsv.write_csv(pa.table(columns), path, options)


# --------------------------------------------------------------------------- network


def _terrain_elevation(lat: float, lon: float) -> float:
    """Smooth fictional terrain: low east coast, plateau rising westwards, central highland massif."""
    plateau = 1100.0 * np.clip((41.8 - lon) / 6.5, 0.0, 1.0) ** 1.3
    massif = 1700.0 * np.exp(-((lat + 0.4) ** 2 + (lon - 36.9) ** 2) / (2 * 1.2**2))
    northern_lowland = -400.0 * np.clip((lat - 2.0) / 3.0, 0.0, 1.0)  # semi-arid northern plains
    return float(max(plateau + massif + northern_lowland, 0.0) + 15.0)


def _station_name(rng: np.random.Generator, taken: set[str]) -> str:
    """Plausible, unique, comma-free place name built from Bantu-like syllables."""
    while True:
        parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(2, 4)))
        name = "".join(_SYLLABLES[p] for p in parts).capitalize()
        if name not in taken and len(name) >= 4:
            taken.add(name)
            return name


def _make_station(
    seed: int, key: int, number: int, highland: bool, taken: set[str], suffix: str, cluster: bool = False
) -> Station:
    """Draw one station's location, altitude and climate knobs from its own stream."""
    rng = _rng(seed, _STREAM_NETWORK, key)
    if cluster:
        # Uniform over a disc around the cluster's centre (radius * sqrt(u): uniform in area).
        radius = CLUSTER_RADIUS_DEG * float(np.sqrt(rng.random()))
        angle = 2 * np.pi * float(rng.random())
        lat = CLUSTER_CENTRE[0] + radius * float(np.sin(angle))
        lon = CLUSTER_CENTRE[1] + radius * float(np.cos(angle))
        elevation = float(np.clip(_terrain_elevation(lat, lon) * rng.lognormal(0.0, 0.15), 2.0, 2700.0))
    elif highland:
        # On the massif, high enough for cool months with Fahrenheit TMAX <= 60.
        lat = float(np.clip(-0.4 + rng.normal(0, 0.5), -5, 5))
        lon = float(np.clip(36.9 + rng.normal(0, 0.5), 34, 42))
        elevation = float(rng.uniform(*HIGHLAND_ELEVATION))
    else:
        lat, lon = float(rng.uniform(-5, 5)), float(rng.uniform(34, 42))
        # Multiplicative roughness keeps coastal stations near sea level instead of piling up at a clip.
        elevation = float(np.clip(_terrain_elevation(lat, lon) * rng.lognormal(0.0, 0.15), 2.0, 2700.0))
    # The east is semi-arid, highlands catch more rain; the coast and plains are windier.
    wetness = float(np.clip(1.15 - 0.07 * (lon - 34) + 0.1 * elevation / 1000 + rng.normal(0, 0.08), 0.45, 1.4))
    temp_offset = float(rng.normal(0.0, 0.5))
    wind_factor = float(np.clip(0.8 + 0.06 * (lon - 34) + rng.normal(0, 0.15), 0.5, 1.6))
    name = _station_name(rng, taken) + suffix
    return Station(
        wigos_id=f"0-20000-0-{number}",
        name=name,
        latitude=round(lat, 5),
        longitude=round(lon, 5),
        elevation=round(elevation, 1),
        wetness=wetness,
        temp_offset=temp_offset,
        wind_factor=wind_factor,
        cluster=cluster,
    )


def cluster_indices(stations: int) -> tuple[int, ...]:
    """Indices of the dense cluster's daily stations: the first :data:`CLUSTER_SIZE` that are
    neither station 0 nor a highland one."""
    candidates = [i for i in range(1, stations) if i % HIGHLAND_EVERY != 0]
    return tuple(candidates[:CLUSTER_SIZE])


def station_network(spec: DemoSpec) -> tuple[tuple[Station, ...], tuple[Station, ...]]:
    """Daily and AWS stations of the demo network (every 10th daily station is a highland one,
    and the first dozen others form the dense cluster)."""
    taken: set[str] = set()
    cluster = set(cluster_indices(spec.stations))
    daily = tuple(
        _make_station(spec.seed, i, DAILY_FIRST_ID + i, i % HIGHLAND_EVERY == 0, taken, "", i in cluster)
        for i in range(spec.stations)
    )
    aws = tuple(
        _make_station(spec.seed, _AWS_INDEX_OFFSET + j, AWS_FIRST_ID + j, False, taken, " AWS")
        for j in range(spec.aws_stations)
    )
    return daily, aws


# --------------------------------------------------------------------------- climate series


def rainy_season(doy: np.ndarray) -> np.ndarray:
    """0..1 strength of the bimodal East African rains: long rains (MAM, peak mid-April)
    and short rains (OND, peak early November)."""
    long_rains = np.exp(-0.5 * (_circular_days(doy - 110.0) / 22.0) ** 2)
    short_rains = np.exp(-0.5 * (_circular_days(doy - 312.0) / 20.0) ** 2)
    return long_rains + 0.76 * short_rains


def wet_probability(doy: np.ndarray, wetness: float) -> np.ndarray:
    """Seasonal wet-day probability: ~7 % in the dry seasons, up to ~57 % at the peak of the rains."""
    return np.clip((0.07 + 0.50 * rainy_season(doy)) * wetness, 0.01, 0.9)


def precipitation_series(
    doy: np.ndarray, wetness: float, rng: np.random.Generator, regional: np.ndarray | None = None
) -> np.ndarray:
    """Daily precipitation in tenths of mm from a wet/dry Markov chain with gamma amounts.

    The chain ``P(wet | dry) = p01``, ``P(wet | wet) = p11`` (p01 <= p11, stationary
    probability ``p``) is vectorised: a uniform below p01 forces a wet day, one at or
    above p11 a dry day, and in between the day repeats the previous state -- a
    forward fill.  ``regional`` (standard normal, one per day): a cluster station's
    uniforms share :data:`CLUSTER_RAIN_SHARE` of their variance with it (a Gaussian
    copula), so its neighbours tend to be wet on the same days.
    """
    n = doy.size
    p = wet_probability(doy, wetness)
    persistence = 0.35  # lag-1 autocorrelation of the wet/dry state
    p01 = p * (1.0 - persistence)
    p11 = p + (1.0 - p) * persistence
    u = rng.random(n)
    if regional is not None:
        own = np.clip(u, 1e-12, 1.0 - 1e-12)
        own = np.log(own / (1.0 - own)) / _LOGISTIC_NORMAL  # the same draw, as a normal deviate
        mixed = np.sqrt(CLUSTER_RAIN_SHARE) * regional + np.sqrt(1.0 - CLUSTER_RAIN_SHARE) * own
        u = 1.0 / (1.0 + np.exp(-_LOGISTIC_NORMAL * mixed))
    initial_wet = rng.random() < p[0]
    # Amounts are drawn for every day (then masked) so the wet pattern does not shift the stream.
    mean_amount = 5.0 + 7.0 * rainy_season(doy)  # mm per wet day; heavier falls in the rainy seasons
    shape = 0.75
    amounts = rng.gamma(shape, mean_amount / shape)

    decided = (u < p01) | (u >= p11)
    last_decided = np.maximum.accumulate(np.where(decided, np.arange(n), -1))
    wet = np.where(last_decided >= 0, u[np.maximum(last_decided, 0)] < p01[np.maximum(last_decided, 0)], initial_wet)

    tenths = np.clip(np.rint(amounts * 10), 1, 3000).astype(np.int64)  # a wet day has >= 0.1 mm
    return np.where(wet, tenths, 0)


def temperature_series(
    station: Station, dates: np.ndarray, start_year: int, wet: np.ndarray, rng: np.random.Generator,
    regional: RegionalWeather | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Daily TMAX and TMIN (degC, unrounded) for one station.

    Mean = sea-level mean - lapse rate x altitude + seasonal cycle (warm Feb-Mar, cool
    Jul-Aug) + warming trend + AR(1) weather noise; wet days are cooler.  The diurnal
    range (~8-14 K) is wider in the dry seasons and narrower under rain cloud.  With
    ``regional`` (a cluster station), the weather noise is mostly the cluster's.
    """
    doy = _day_of_year(dates).astype(np.float64)
    n = doy.size
    angle = 2 * np.pi * (doy - 65.0) / 365.25
    seasonal = 1.6 * np.cos(angle) + 0.4 * np.cos(2 * angle)
    weather = _stationary_ar1(rng, n, phi=0.75, sd=1.1)
    dtr_noise = _stationary_ar1(rng, n, phi=0.5, sd=0.9)
    if regional is not None:
        weather = _shared(weather, 1.1 * regional.temperature, CLUSTER_TEMPERATURE_SHARE)
        dtr_noise = _shared(dtr_noise, 0.9 * regional.dtr, CLUSTER_DTR_SHARE)
    mean = (
        SEA_LEVEL_MEAN_TEMP
        - LAPSE_RATE * station.elevation / 1000.0
        + station.temp_offset
        + seasonal
        + WARMING_TREND / 10.0 * _years_since(dates, start_year)
        + weather
        - 0.6 * wet
    )
    dtr = 13.5 - 5.0 * wet_probability(doy, 1.0) - 2.5 * wet + dtr_noise
    dtr = np.clip(dtr, 4.0, 18.0)  # keeps tmax well above tmin on every genuine day
    return mean + dtr / 2.0, mean - dtr / 2.0


def _shared(own: np.ndarray, regional: np.ndarray, share: float) -> np.ndarray:
    """``share`` of the variance from the regional series, the rest from the station's own
    (both of the same variance, so the mix keeps it)."""
    return np.sqrt(share) * regional + np.sqrt(1.0 - share) * own


def regional_weather(spec: DemoSpec, dates: np.ndarray) -> RegionalWeather:
    """The cluster's shared weather series for ``dates`` (its own stream, drawn once)."""
    n = dates.size
    rain = _rng(spec.seed, _STREAM_CLUSTER, 0, _COMPONENT_PRECIP).normal(0.0, 1.0, n)
    temperature = _stationary_ar1(_rng(spec.seed, _STREAM_CLUSTER, 0, _COMPONENT_TEMP), n, phi=0.75, sd=1.0)
    dtr = _stationary_ar1(_rng(spec.seed, _STREAM_CLUSTER, 0, _COMPONENT_DTR), n, phi=0.5, sd=1.0)
    return RegionalWeather(rain=rain, temperature=temperature, dtr=dtr)


def _hourly_temperature(tmax: np.ndarray, tmin: np.ndarray) -> np.ndarray:
    """Hourly temperature: cosine ramps between TMIN at 06:00 and TMAX at 15:00 local time.

    The evening decline runs towards the *next* morning's minimum, so the curve is
    continuous across midnight.
    """
    days = tmax.size
    anchor_time = np.empty(2 * days + 2)
    anchor_value = np.empty(2 * days + 2)
    anchor_time[0], anchor_value[0] = -9.0, tmax[0]  # 15:00 the day before the series
    anchor_time[1:-1:2], anchor_value[1:-1:2] = 24.0 * np.arange(days) + 6.0, tmin
    anchor_time[2:-1:2], anchor_value[2:-1:2] = 24.0 * np.arange(days) + 15.0, tmax
    anchor_time[-1], anchor_value[-1] = 24.0 * days + 6.0, tmin[-1]
    hours = np.arange(24 * days, dtype=np.float64)
    i = np.searchsorted(anchor_time, hours, side="right") - 1
    frac = (hours - anchor_time[i]) / (anchor_time[i + 1] - anchor_time[i])
    return anchor_value[i] + (anchor_value[i + 1] - anchor_value[i]) * (1.0 - np.cos(np.pi * frac)) / 2.0


def _hourly_rain(daily_tenths: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spread each wet day's total over 1-4 consecutive afternoon/evening hours (convective rain)."""
    days = daily_tenths.size
    # Draw for every day so the stream does not depend on the wet pattern.
    n_hours = rng.integers(1, 5, days)
    first_hour = rng.integers(13, 20, days)
    weights = rng.exponential(1.0, (days, 4))
    weights[np.arange(4)[None, :] >= n_hours[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    rain = np.zeros((days, 24))
    rows = np.repeat(np.arange(days), 4)
    cols = (first_hour[:, None] + np.arange(4)[None, :]).ravel()
    rain[rows, cols] = (weights * (daily_tenths[:, None] / 10.0)).ravel()
    return rain.ravel()


def aws_series(station: Station, dates: np.ndarray, start_year: int, seed: int, index: int) -> dict[str, np.ndarray]:
    """Hourly AWS columns in file units (degC, %, knot, degree, kPa, mm) for ``dates``.

    ``dates`` are local (Africa/Nairobi) days; each contributes 24 hours from 00:00.
    """
    doy = _day_of_year(dates)
    hours_in_day = np.tile(np.arange(24.0), dates.size)
    doy_hourly = np.repeat(doy, 24).astype(np.float64)
    rain_daily = precipitation_series(doy, station.wetness, _rng(seed, _STREAM_AWS, index, _COMPONENT_PRECIP))
    wet = rain_daily > 0
    tmax, tmin = temperature_series(station, dates, start_year, wet, _rng(seed, _STREAM_AWS, index, _COMPONENT_TEMP))
    rng = _rng(seed, _STREAM_AWS, index, _COMPONENT_HOURLY)
    n_hours = 24 * dates.size

    rain = _hourly_rain(rain_daily, rng)
    air_temp = _hourly_temperature(tmax, tmin) + rng.normal(0.0, 0.25, n_hours)

    # Dew point roughly constant through the day, so RH mirrors the temperature cycle.
    depression = np.clip(1.0 + 5.0 * (1.0 - wet_probability(doy, station.wetness)) - 1.5 * wet
                         + rng.normal(0.0, 0.8, dates.size), 0.0, None)
    dew_point = np.repeat(tmin - depression, 24) + rng.normal(0.0, 0.4, n_hours)
    a, b = 17.62, 243.12  # Magnus coefficients over water
    rel_hum = 100.0 * np.exp(a * dew_point / (b + dew_point) - a * air_temp / (b + air_temp))
    rel_hum = np.where(rain > 0, np.maximum(rel_hum, 90.0 + 10.0 * rng.random(n_hours)), rel_hum)
    rel_hum = np.clip(rel_hum, 5.0, 100.0)

    # Wind: calm nights, afternoon maximum, day-to-day variability; written in knots.
    daily_wind = 3.0 * station.wind_factor * np.exp(_stationary_ar1(rng, dates.size, phi=0.6, sd=0.3))
    diurnal = 0.55 + 0.9 * np.clip(np.sin(np.pi * (hours_in_day - 8.0) / 12.0), 0.0, None)
    speed_m_s = np.repeat(daily_wind, 24) * diurnal * rng.gamma(4.0, 0.25, n_hours)
    speed_kt = speed_m_s / KNOT_IN_M_S
    # Monsoon: north-easterlies in Dec-Mar, south-easterlies in May-Oct.
    monsoon = 92.5 - 47.5 * np.cos(2 * np.pi * (doy_hourly - 30.0) / 365.25)
    direction = monsoon + np.repeat(_stationary_ar1(rng, dates.size, phi=0.5, sd=25.0), 24) + rng.normal(0, 20, n_hours)
    direction = (np.rint(direction).astype(np.int64) - 1) % 360 + 1  # 1..360, north = 360
    direction = np.where(np.rint(speed_kt * 10) == 0, 0, direction)  # calm reports 0

    # Station pressure: barometric altitude law, seasonal and synoptic changes, semidiurnal tide.
    base = 1013.25 * (1.0 - 2.25577e-5 * station.elevation) ** 5.25588
    synoptic = np.interp(np.arange(n_hours, dtype=np.float64), 24.0 * np.arange(dates.size) + 12.0,
                         _stationary_ar1(rng, dates.size, phi=0.8, sd=1.0))
    pressure_hpa = (base + 1.5 * np.cos(2 * np.pi * (doy_hourly - 200.0) / 365.25) + synoptic
                    + 1.3 * np.cos(4 * np.pi * (hours_in_day - 10.0) / 24.0) + rng.normal(0.0, 0.1, n_hours))

    return {
        "air_temp": air_temp,
        "rel_hum": rel_hum,
        "wind_speed_kt": speed_kt,
        "wind_dir": direction.astype(np.float64),
        "pressure_kpa": pressure_hpa / 10.0,
        "rain": rain,
    }


def _missing_mask(n_days: int, seed: int, station: int) -> np.ndarray:
    """Genuinely missing days, shape (elements, days): a fixed small number per element, >= 1."""
    mask = np.zeros((len(DAILY_ELEMENTS), n_days), dtype=bool)
    count = min(n_days, max(1, round(MISSING_RATE * n_days)))
    for e in range(len(DAILY_ELEMENTS)):
        rng = _rng(seed, _STREAM_MISSING, station, e)
        mask[e, rng.choice(n_days, size=count, replace=False)] = True
    return mask


def daily_station_values(
    station: Station, index: int, dates: np.ndarray, spec: DemoSpec, regional: RegionalWeather | None = None
) -> np.ndarray:
    """True daily values in integer tenths, shape (elements, days) in DAILY_ELEMENTS order.

    A cluster station shares ``regional`` weather (:func:`regional_weather`; drawn here when
    not given)."""
    doy = _day_of_year(dates)
    if station.cluster and regional is None:
        regional = regional_weather(spec, dates)
    shared = regional if station.cluster else None
    prcp = precipitation_series(doy, station.wetness, _rng(spec.seed, _STREAM_DAILY, index, _COMPONENT_PRECIP),
                                shared.rain if shared is not None else None)
    tmax, tmin = temperature_series(
        station, dates, spec.start_year, prcp > 0, _rng(spec.seed, _STREAM_DAILY, index, _COMPONENT_TEMP), shared
    )
    return np.stack([prcp, _scale(tmax, 1), _scale(tmin, 1)])


# --------------------------------------------------------------------------- injected errors


def error_counts(spec: DemoSpec) -> dict[str, int]:
    """Target number of events per error kind, scaled with station-years (>= 1 each); spatial
    outliers with the cluster's station-years (none without a cluster of at least
    :data:`CLUSTER_MIN_STATIONS`)."""
    scale = spec.stations * spec.years / REFERENCE_STATION_YEARS
    counts = {kind: max(1, round(base * scale)) for kind, base in BASE_ERROR_COUNTS.items()}
    cluster = len(cluster_indices(spec.stations))
    counts["spatial_outlier"] = (
        max(1, round(SPATIAL_OUTLIERS * cluster * spec.years / REFERENCE_CLUSTER_STATION_YEARS))
        if cluster >= CLUSTER_MIN_STATIONS else 0
    )
    return counts


def _is_free(busy: np.ndarray, station: int, first: int, stop: int) -> bool:
    """True when days [first, stop) and their error margin hold no error or missing value."""
    return not busy[station, max(0, first - ERROR_MARGIN_DAYS):stop + ERROR_MARGIN_DAYS].any()


def _reserve(busy: np.ndarray, station: int, first: int, stop: int) -> None:
    """Mark days [first, stop) (plus margin) as taken."""
    busy[station, max(0, first - ERROR_MARGIN_DAYS):stop + ERROR_MARGIN_DAYS] = True


def _fahrenheit_tenths(celsius_tenths: np.ndarray) -> np.ndarray:
    """Exact F = C * 9/5 + 32 in tenths (C*9/5 is a multiple of 0.02, so no rounding ties)."""
    return np.rint(np.asarray(celsius_tenths) * 9 / 5).astype(np.int64) + 320


def pick_unit_mistakes(
    values: np.ndarray, busy: np.ndarray, month_starts: np.ndarray, count: int, rng: np.random.Generator
) -> list[InjectedError]:
    """Station-months of TMAX and TMIN keyed in Fahrenheit, only where every F value is <= 60."""
    n_stations, _, n_days = values.shape
    bounds = np.append(month_starts, n_days)
    candidates = []
    for s in range(n_stations):
        hottest = np.maximum.reduceat(values[s, TMAX], month_starts)
        cool = np.flatnonzero(_fahrenheit_tenths(hottest) <= FAHRENHEIT_MAX_TENTHS)
        candidates.extend((s, int(m)) for m in cool)
    errors: list[InjectedError] = []
    for c in rng.permutation(len(candidates)):
        if count == 0:
            break
        s, m = candidates[c]
        first, stop = int(bounds[m]), int(bounds[m + 1])
        if not _is_free(busy, s, first, stop):
            continue
        _reserve(busy, s, first, stop)
        for e in (TMAX, TMIN):
            celsius = values[s, e, first:stop]
            fahrenheit = _fahrenheit_tenths(celsius)
            errors.extend(
                InjectedError(s, e, first + d, "unit_mistake", int(celsius[d]), int(fahrenheit[d]))
                for d in range(stop - first)
            )
        count -= 1
    return errors


def pick_flat_lines(values: np.ndarray, busy: np.ndarray, count: int, rng: np.random.Generator) -> list[InjectedError]:
    """Runs of 7-15 days where one temperature element repeats the run's first value.

    Rejects runs whose stuck value equals a neighbouring genuine value (the run would
    look longer than recorded) or would fall on the wrong side of the partner element
    (the run would also look like tmin > tmax).
    """
    n_stations, _, n_days = values.shape
    errors: list[InjectedError] = []
    for _ in range(200 * count):
        if count == 0:
            break
        s = int(rng.integers(n_stations))
        e = TMAX if rng.random() < 0.5 else TMIN
        length = int(rng.integers(FLAT_LINE_DAYS[0], FLAT_LINE_DAYS[1] + 1))
        if n_days < length + 2:
            break
        first = int(rng.integers(1, n_days - length))
        stop = first + length
        series = values[s, e]
        stuck = int(series[first])
        if not _is_free(busy, s, first, stop) or stuck in (series[first - 1], series[stop]):
            continue
        partner = values[s, TMIN if e == TMAX else TMAX, first:stop]
        if (e == TMAX and (stuck <= partner).any()) or (e == TMIN and (stuck >= partner).any()):
            continue
        _reserve(busy, s, first, stop)
        errors.extend(InjectedError(s, e, d, "flat_line", int(series[d]), stuck) for d in range(first, stop))
        count -= 1
    return errors


def pick_swaps(values: np.ndarray, busy: np.ndarray, count: int, rng: np.random.Generator) -> list[InjectedError]:
    """Days whose TMAX and TMIN were swapped (one entry per element)."""
    n_stations, _, n_days = values.shape
    errors: list[InjectedError] = []
    for _ in range(200 * count):
        if count == 0:
            break
        s, d = int(rng.integers(n_stations)), int(rng.integers(n_days))
        tmax, tmin = int(values[s, TMAX, d]), int(values[s, TMIN, d])
        if not _is_free(busy, s, d, d + 1) or tmax <= tmin:
            continue
        _reserve(busy, s, d, d + 1)
        errors += [InjectedError(s, TMAX, d, "tmin_gt_tmax", tmax, tmin),
                   InjectedError(s, TMIN, d, "tmin_gt_tmax", tmin, tmax)]
        count -= 1
    return errors


def pick_temperature_spikes(
    values: np.ndarray, busy: np.ndarray, count: int, rng: np.random.Generator
) -> list[InjectedError]:
    """Single temperature values shifted by 12-20 K, away from the partner element, within limits."""
    n_stations, _, n_days = values.shape
    errors: list[InjectedError] = []
    for _ in range(200 * count):
        if count == 0:
            break
        s, d = int(rng.integers(n_stations)), int(rng.integers(n_days))
        e = TMAX if rng.random() < 0.5 else TMIN
        shift = int(np.rint(rng.uniform(*SPIKE_KELVIN) * 10)) * (1 if e == TMAX else -1)
        true = int(values[s, e, d])
        recorded = true + shift
        if not _is_free(busy, s, d, d + 1) or not TEMP_LIMITS_TENTHS[0] <= recorded <= TEMP_LIMITS_TENTHS[1]:
            continue
        _reserve(busy, s, d, d + 1)
        errors.append(InjectedError(s, e, d, "spike", true, recorded))
        count -= 1
    return errors


def pick_precipitation_spikes(
    values: np.ndarray, busy: np.ndarray, count: int, rng: np.random.Generator
) -> list[InjectedError]:
    """A huge isolated rain value (200-500 mm) on a dry day between two dry days."""
    n_stations, _, n_days = values.shape
    errors: list[InjectedError] = []
    for _ in range(200 * count):
        if count == 0 or n_days < 3:
            break
        s, d = int(rng.integers(n_stations)), int(rng.integers(1, n_days - 1))
        recorded = int(np.rint(rng.uniform(*RAIN_SPIKE_MM) * 10))
        if not _is_free(busy, s, d, d + 1) or values[s, PRCP, d - 1:d + 2].any():
            continue
        _reserve(busy, s, d, d + 1)
        errors.append(InjectedError(s, PRCP, d, "spike", 0, min(recorded, PRCP_LIMITS_TENTHS[1])))
        count -= 1
    return errors


def pick_spatial_outliers(
    values: np.ndarray, busy: np.ndarray, stations: tuple[int, ...], count: int, rng: np.random.Generator
) -> list[InjectedError]:
    """Single TMAX or TMIN values of cluster ``stations`` moved by 4.5-7.5 K (either way),
    keeping TMIN below TMAX by at least 0.5 K and inside the limits."""
    _, _, n_days = values.shape
    errors: list[InjectedError] = []
    for _ in range(200 * count):
        if count == 0 or not stations:
            break
        s, d = stations[int(rng.integers(len(stations)))], int(rng.integers(n_days))
        e = TMAX if rng.random() < 0.5 else TMIN
        shift = int(np.rint(rng.uniform(*SPATIAL_OUTLIER_KELVIN) * 10)) * (1 if rng.random() < 0.5 else -1)
        true = int(values[s, e, d])
        recorded = true + shift
        partner = int(values[s, TMIN if e == TMAX else TMAX, d])
        apart = recorded - partner if e == TMAX else partner - recorded
        if (not _is_free(busy, s, d, d + 1) or apart < 5
                or not TEMP_LIMITS_TENTHS[0] <= recorded <= TEMP_LIMITS_TENTHS[1]):
            continue
        _reserve(busy, s, d, d + 1)
        errors.append(InjectedError(s, e, d, "spatial_outlier", true, recorded))
        count -= 1
    return errors


def inject_errors(values: np.ndarray, missing: np.ndarray, dates: np.ndarray, spec: DemoSpec) -> list[InjectedError]:
    """Choose all injected errors for the network (values untouched).

    Kinds are placed largest first (whole months, then runs, then single days) so the
    big blocks still find room; every kind has its own stream so adding one kind does
    not move the others.
    """
    counts = error_counts(spec)
    # Temperature errors block both TMAX and TMIN of a day: one error kind per day.
    busy_temp = missing[:, TMAX] | missing[:, TMIN]
    busy_prcp = missing[:, PRCP].copy()
    months = dates.astype("datetime64[M]")
    month_starts = np.flatnonzero(np.r_[True, months[1:] != months[:-1]])
    seed = spec.seed
    errors = pick_unit_mistakes(values, busy_temp, month_starts, counts["unit_mistake"], _rng(seed, _STREAM_ERRORS, 0))
    errors += pick_flat_lines(values, busy_temp, counts["flat_line"], _rng(seed, _STREAM_ERRORS, 1))
    errors += pick_swaps(values, busy_temp, counts["tmin_gt_tmax"], _rng(seed, _STREAM_ERRORS, 2))
    errors += pick_temperature_spikes(values, busy_temp, counts["temperature_spike"], _rng(seed, _STREAM_ERRORS, 3))
    errors += pick_precipitation_spikes(values, busy_prcp, counts["precipitation_spike"], _rng(seed, _STREAM_ERRORS, 4))
    errors += pick_spatial_outliers(values, busy_temp, cluster_indices(spec.stations), counts["spatial_outlier"],
                                    _rng(seed, _STREAM_ERRORS, 5))
    return sorted(errors, key=lambda x: (x.station, x.element, x.day))


def apply_errors(values: np.ndarray, errors: list[InjectedError]) -> np.ndarray:
    """Copy of ``values`` with the recorded (erroneous) values written in."""
    recorded = values.copy()
    if errors:
        s, e, d, _, _, r = (np.array(column) for column in zip(*errors))
        recorded[s, e, d] = r.astype(recorded.dtype)
    return recorded


# --------------------------------------------------------------------------- writers


def _stations_csv(daily: tuple[Station, ...], aws: tuple[Station, ...], daily_open: str, aws_open: str) -> bytes:
    """stations.csv content (names are comma-free by construction, so no quoting needed)."""
    lines = [",".join(STATIONS_HEADER)]
    for stations, opened in ((daily, daily_open), (aws, aws_open)):
        for st in stations:
            lines.append(",".join([
                st.wigos_id, st.name, f"{st.latitude:.5f}", f"{st.longitude:.5f}", f"{st.elevation:.1f}",
                TERRITORY, WMO_REGION, TIMEZONE, STATUS, opened, "",
            ]))
    return ("\n".join(lines) + "\n").encode("utf-8")


def _manifest_json(spec: DemoSpec, observation_count: int, errors: list[dict]) -> bytes:
    """manifest.json with one error entry per line (valid JSON, diff- and grep-friendly)."""
    head = json.dumps({"spec": asdict(spec), "observation_count": observation_count})[:-1]
    body = ",\n".join("  " + json.dumps(entry) for entry in errors)
    return (head + ', "errors": [\n' + body + ("\n" if errors else "") + "]}\n").encode("utf-8")


def _dataset(folder: Path, spec: DemoSpec, observation_count: int) -> DemoDataset:
    """The paths of the demo files of ``spec`` in ``folder`` (the layout of generate_demo_data)."""
    daily_stations, aws_stations = station_network(spec)
    return DemoDataset(
        folder=folder,
        stations_csv=folder / "stations.csv",
        daily_files=tuple(folder / "daily" / f"{st.wigos_id}.csv" for st in daily_stations),
        aws_files=tuple(folder / "aws" / f"{st.wigos_id}_hourly.csv" for st in aws_stations),
        aws_mapping=folder / "aws" / "mapping.yaml",
        manifest=folder / "manifest.json",
        observation_count=observation_count,
    )


def read_demo_dataset(folder: Path) -> tuple[DemoDataset, DemoSpec] | None:
    """The dataset :func:`generate_demo_data` wrote into ``folder`` and its spec, read from the
    manifest without writing anything; None when the folder holds none."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.is_file():
        return None
    content = json.loads(manifest.read_text())
    spec = DemoSpec(**content["spec"])
    return _dataset(Path(folder), spec, content["observation_count"]), spec


def generate_demo_data(
    folder: Path, spec: DemoSpec = DemoSpec(), progress: Callable[[int, int], None] | None = None
) -> DemoDataset:
    """Write the demo network into ``folder`` and return the paths written.

    Files: ``stations.csv``, ``daily/<wigos_id>.csv``, ``aws/<wigos_id>_hourly.csv``,
    ``aws/mapping.yaml`` and ``manifest.json`` (see the module docstring for the
    error representation).  Existing files of the same name are overwritten; other
    files in ``folder`` are left alone.  ``progress(done, total)`` is called after
    each file is written.
    """
    folder = Path(folder)
    daily_stations, aws_stations = station_network(spec)
    layout = _dataset(folder, spec, 0)
    for subfolder in (folder / "daily", folder / "aws"):
        subfolder.mkdir(parents=True, exist_ok=True)
    total = 1 + len(daily_stations) + len(aws_stations) + 2
    done = 0

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    dates = daily_dates(spec.start_year, spec.years)
    aws_dates = daily_dates(spec.start_year + spec.years - spec.aws_years, spec.aws_years)
    n_days = dates.size

    aws_open = str(aws_dates[0]) if aws_dates.size else str(dates[0])
    layout.stations_csv.write_bytes(_stations_csv(daily_stations, aws_stations, str(dates[0]), aws_open))
    tick()

    # All true daily values in memory (50 x 3 x 11k int64 is ~13 MB) because error
    # placement needs the whole network at once.
    regional = regional_weather(spec, dates)
    values = np.stack([daily_station_values(st, i, dates, spec, regional) for i, st in enumerate(daily_stations)])
    missing = np.stack([_missing_mask(n_days, spec.seed, i) for i in range(len(daily_stations))])
    errors = inject_errors(values, missing, dates, spec)
    recorded = apply_errors(values, errors)

    date_text = pa.array(np.datetime_as_string(dates, unit="D"))
    time_column = pa.concat_arrays([date_text] * len(DAILY_ELEMENTS))
    element_column = pa.array(np.repeat(np.array(DAILY_ELEMENTS), n_days))
    observation_count = 0
    for i, (st, path) in enumerate(zip(daily_stations, layout.daily_files)):
        _write_csv(path, {
            "station": pa.array(np.full(len(DAILY_ELEMENTS) * n_days, st.wigos_id)),
            "element": element_column,
            "time": time_column,
            "value": format_scaled(recorded[i].ravel(), 1, missing[i].ravel()),
        })
        observation_count += int((~missing[i]).sum())
        tick()

    datetime_column = pa.array([], pa.string())
    if aws_dates.size:
        hours = np.arange(aws_dates[0].astype("datetime64[m]"), (aws_dates[-1] + 1).astype("datetime64[m]"),
                          np.timedelta64(60, "m"))
        datetime_column = pc.replace_substring(pa.array(np.datetime_as_string(hours, unit="m")), "T", " ")
    for j, (st, path) in enumerate(zip(aws_stations, layout.aws_files)):
        series = aws_series(st, aws_dates, spec.start_year, spec.seed, j)
        columns = {"datetime": datetime_column}
        for name in AWS_HEADER[1:]:
            columns[name] = format_scaled(_scale(series[name], AWS_DECIMALS[name]), AWS_DECIMALS[name])
        _write_csv(path, columns)
        observation_count += len(series["air_temp"]) * (len(AWS_HEADER) - 1)
        tick()

    layout.aws_mapping.write_bytes(AWS_MAPPING_YAML.encode("utf-8"))
    tick()

    entries = [
        {
            "station": daily_stations[err.station].wigos_id,
            "element": DAILY_ELEMENTS[err.element],
            "time": str(dates[err.day]),
            "kind": err.kind,
            "true_value": err.true_tenths / 10,
            "recorded_value": err.recorded_tenths / 10,
        }
        for err in errors
    ]
    layout.manifest.write_bytes(_manifest_json(spec, observation_count, entries))
    tick()
    return replace(layout, observation_count=observation_count)


# --------------------------------------------------------------------------- real-data-like airport record

AIRPORT_TIMEZONE = "Etc/GMT+6"  # local standard time (UTC-6), the climatological day of the daily record
AIRPORT_ID = "0-20000-0-72001"
AIRPORT_ELEVATION = 190.0  # m
AIRPORT_DAILY_HEADER = ("station", "element", "time", "value")
AIRPORT_HOURLY_HEADER = ("datetime", "temp_f", "dewpoint_f", "rh", "wind_kt", "wind_dir", "pressure_hpa")
# Hours without a report (logger or link outages) and days without a daily value.
AIRPORT_OUTAGES_PER_YEAR = 12
AIRPORT_MISSING_DAYS_RATE = 0.003

AIRPORT_DAILY_MAPPING_YAML = r"""layout: long
source: airport-daily
time: {column: time, format: "%Y-%m-%d", timezone: Etc/GMT+6}
duration: P1D
units: {TMAX: degF, TMIN: degF, PRCP: in}
"""

AIRPORT_HOURLY_MAPPING_YAML = r"""layout: wide
source: airport-hourly
time: {column: datetime, format: "%Y-%m-%d %H:%M", timezone: UTC}
duration: PT1H
station: {filename_pattern: "^(?P<station>[0-9]+-[0-9]+-[0-9]+-[0-9A-Za-z]+)_hourly\\.csv$"}
unmapped_columns: refuse
columns:
  temp_f: {element: TMEAN, units: degF}
  dewpoint_f: {element: TDEW, units: degF}
  rh: {element: RH, units: "%"}
  wind_kt: {element: WSPD, units: knot}
  wind_dir: {element: WDIR, units: degree}
  pressure_hpa: {element: PRES, units: hPa}
"""


@dataclass(frozen=True)
class AirportSpec:
    """Length and seed of the real-data-like airport record: ``years`` of daily values,
    the last ``hourly_years`` of them also hourly."""

    start_year: int = 1991
    years: int = 30
    hourly_years: int = 3
    seed: int = 20261203

    def __post_init__(self) -> None:
        """Reject records that cannot be made."""
        if self.years < 1 or not 0 <= self.hourly_years <= self.years:
            raise ValueError("need at least one year, and 0 <= hourly_years <= years")


@dataclass(frozen=True)
class AirportDataset:
    """Paths of the files written by :func:`generate_airport_data`, and their value counts."""

    folder: Path
    stations_csv: Path  # folder/stations.csv
    daily_file: Path  # folder/daily/<wigos_id>.csv (long form, degF and inches)
    daily_mapping: Path  # folder/daily/mapping.yaml
    hourly_file: Path | None  # folder/hourly/<wigos_id>_hourly.csv (wide form)
    hourly_mapping: Path | None  # folder/hourly/mapping.yaml
    daily_values: int
    hourly_values: int


def _smooth_ar(rng: np.random.Generator, n: int, hours: float, sd: np.ndarray | float) -> np.ndarray:
    """A smooth hourly anomaly: an AR(1) series filtered once more by the same AR(1) (so its
    hour-to-hour changes are small, as a synoptic field's are), scaled to standard deviation
    ``sd`` (which may vary with the season)."""
    phi = float(np.exp(-1.0 / hours))
    series = ar1(ar1(rng.normal(0.0, 1.0, n), phi), phi)
    return series / series.std() * sd


def _diurnal_shape(hour: np.ndarray) -> np.ndarray:
    """-1 at 06:00 local, +1 at 15:00, cosine ramps between (a faster rise than fall)."""
    rising = (hour >= 6) & (hour < 15)
    since_peak = (hour - 15) % 24
    return np.where(rising, -np.cos(np.pi * (hour - 6) / 9.0), np.cos(np.pi * since_peak / 15.0))


def _fronts(rng: np.random.Generator, n_hours: int, winter: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cold-front passages: their hours and temperature falls (K).

    About one every four days in winter and one a week in summer; the fall is gamma
    distributed, 2-3 K typically and over 10 K a few times a year (winter and spring)."""
    rate = (0.14 + 0.12 * winter) / 24.0  # per hour
    hours = np.flatnonzero(rng.random(n_hours) < rate)
    size = rng.gamma(2.2, 0.9 + 1.0 * winter[hours])
    return hours, size


def _front_effects(n_hours: int, hours: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hour-by-hour temperature change (warm sector ahead, sharp fall at the front), the
    pressure trough and a 0..1 "near a front" weight (cloud, rain, wind), for every hour."""
    change = np.zeros(n_hours)
    pressure = np.zeros(n_hours)
    near = np.zeros(n_hours)
    # The warm sector: a rise of 60 % of the coming fall over the 30 hours before the front.
    ahead = np.arange(-30, 0)
    rise = np.full(ahead.size, 0.6 / ahead.size)
    fall_hours = np.arange(0, 5)
    fall = np.array([0.1, 0.25, 0.3, 0.2, 0.15])
    trough_hours = np.arange(-36, 37)
    trough = -np.exp(-0.5 * (trough_hours / 12.0) ** 2)
    weight_hours = np.arange(-12, 13)
    weight = np.exp(-0.5 * (weight_hours / 6.0) ** 2)
    for offsets, shape, target, scale in (
        (ahead, rise, change, size), (fall_hours, -fall, change, size),
        (trough_hours, trough, pressure, 1.4 * size), (weight_hours, weight, near, np.ones_like(size)),
    ):  # four shapes, each spread over all fronts at once
        at = hours[:, None] + offsets[None, :]
        inside = (at >= 0) & (at < n_hours)
        np.add.at(target, at[inside], (scale[:, None] * shape[None, :])[inside])
    return change, pressure, np.clip(near, 0.0, 1.0)


def airport_weather(spec: AirportSpec) -> dict[str, np.ndarray]:
    """The airport's true hourly weather (local standard time hours from ``start_year``-01-01):
    ``temperature`` and ``dew_point`` (degC), ``humidity`` (%), ``wind_speed`` (m/s),
    ``wind_direction`` (degrees), ``pressure`` (hPa), ``rain`` (mm per local day), and the
    local dates of the days."""
    rng = _rng(spec.seed, _STREAM_AIRPORT, 0, _COMPONENT_HOURLY)
    dates = daily_dates(spec.start_year, spec.years)
    n_days = dates.size
    n = 24 * n_days
    hour = np.tile(np.arange(24.0), n_days)
    doy = np.repeat(_day_of_year(dates), 24).astype(np.float64) + hour / 24.0
    # 1 in late January, 0 in late July: the strength of winter's synoptic activity.
    winter = 0.5 + 0.5 * np.cos(2 * np.pi * (doy - 22.0) / 365.25)

    front_hours, front_size = _fronts(rng, n, winter)
    front_change, trough, near = _front_effects(n, front_hours, front_size)
    relax = float(np.exp(-1.0 / 60.0))  # air-mass anomalies relax over about 2.5 days
    air_mass = ar1(front_change - front_change.mean(), relax)
    air_mass += _smooth_ar(rng, n, 20.0, 2.4 + 1.2 * winter)
    cloud = np.clip(0.45 + _smooth_ar(rng, n, 10.0, 0.3) + 0.5 * near, 0.0, 1.0)
    cloud_day = np.repeat(cloud.reshape(n_days, 24).mean(axis=1), 24)
    amplitude = (5.5 - 1.5 * winter) * (1.0 - 0.6 * cloud_day)
    seasonal = 10.5 - 13.5 * np.cos(2 * np.pi * (doy - 22.0) / 365.25)
    temperature = (seasonal + air_mass - air_mass.mean() + amplitude * _diurnal_shape(hour)
                   + _smooth_ar(rng, n, 1.5, 0.35))

    # Dew point: a small depression under cloud and at night, a large one on clear
    # afternoons and in the dry air behind a front.
    dry_air = np.clip(-(air_mass - air_mass.mean()), 0.0, None) * 0.35 + np.abs(_smooth_ar(rng, n, 48.0, 2.0))
    depression = np.clip(1.0 + 5.0 * (1.0 - cloud) * (1.0 + np.clip(_diurnal_shape(hour), 0.0, None)) + dry_air,
                         0.3, 30.0)
    dew_point = temperature - depression
    a, b = 17.62, 243.12  # Magnus coefficients over water
    humidity = np.clip(100.0 * np.exp(a * dew_point / (b + dew_point) - a * temperature / (b + temperature)), 3, 100)

    base = 1013.25 * (1.0 - 2.25577e-5 * AIRPORT_ELEVATION) ** 5.25588
    pressure = (base + _smooth_ar(rng, n, 30.0, 4.0 + 4.5 * winter) + trough - trough.mean()
                + 0.5 * np.cos(4 * np.pi * (hour - 10.0) / 24.0) + rng.normal(0.0, 0.08, n))

    mixing = 0.7 + 0.5 * np.clip(np.sin(np.pi * (hour - 8.0) / 12.0), 0.0, None)  # afternoon mixing
    wind_speed = ((3.5 + 1.5 * winter) * np.exp(_smooth_ar(rng, n, 8.0, 0.35)) * mixing * (1.0 + 0.6 * near)
                  * rng.gamma(25.0, 1.0 / 25.0, n))
    wind_speed = 22.0 * np.tanh(wind_speed / 22.0)  # hourly means of an inland airport stay below gale
    # South-westerlies veering north-westerly behind fronts, wandering hour to hour.
    behind = np.zeros(n)
    at = front_hours[:, None] + np.arange(0, 36)[None, :]
    inside = at < n
    np.add.at(behind, at[inside], 1.0)
    wind_direction = (225.0 + 80.0 * np.clip(behind, 0.0, 1.0) + _smooth_ar(rng, n, 6.0, 35.0)
                      + rng.normal(0.0, 12.0, n)) % 360.0

    # Rain: likely on days with a front or thick cloud; gamma amounts, heavier in summer.
    near_day = near.reshape(n_days, 24).max(axis=1)
    cloud_daily = cloud.reshape(n_days, 24).mean(axis=1)
    chance = np.clip(0.06 + 0.55 * near_day + 0.35 * np.clip(cloud_daily - 0.6, 0.0, None), 0.0, 0.9)
    summer_day = 1.0 - winter.reshape(n_days, 24)[:, 0]
    amounts = rng.gamma(0.7, (6.0 + 6.0 * summer_day) / 0.7)
    rain = np.where(rng.random(n_days) < chance, amounts, 0.0)
    return {"temperature": temperature, "dew_point": dew_point, "humidity": humidity,
            "wind_speed": wind_speed, "wind_direction": wind_direction, "pressure": pressure,
            "rain": rain, "dates": dates}


def _outages(rng: np.random.Generator, n: int, per_year: float, longest: int) -> np.ndarray:
    """Hours lost to outages (True), in blocks of 1..``longest`` hours."""
    lost = np.zeros(n, dtype=bool)
    starts = np.flatnonzero(rng.random(n) < per_year / 8766.0)
    for start, length in zip(starts.tolist(), rng.integers(1, longest + 1, starts.size).tolist()):  # a dozen a year
        lost[start:start + length] = True
    return lost


def generate_airport_data(folder: Path, spec: AirportSpec = AirportSpec()) -> AirportDataset:
    """Write the real-data-like airport record into ``folder`` (see the module docstring):
    ``stations.csv``, ``daily/<wigos_id>.csv`` with ``daily/mapping.yaml`` and, when
    ``spec.hourly_years``, ``hourly/<wigos_id>_hourly.csv`` with ``hourly/mapping.yaml``."""
    folder = Path(folder)
    (folder / "daily").mkdir(parents=True, exist_ok=True)
    weather = airport_weather(spec)
    dates = weather["dates"]
    n_days = dates.size
    stations_csv = folder / "stations.csv"
    stations_csv.write_text(
        ",".join(STATIONS_HEADER) + "\n"
        + ",".join([AIRPORT_ID, "Prairie Field Airport", "41.80000", "-92.10000", f"{AIRPORT_ELEVATION:.1f}",
                    "XMA", "IV", AIRPORT_TIMEZONE, STATUS, str(dates[0]), ""]) + "\n",
        encoding="utf-8",
    )
    rng = _rng(spec.seed, _STREAM_AIRPORT, 0, _COMPONENT_PRECIP)
    by_day = weather["temperature"].reshape(n_days, 24)
    # Max/min thermometers catch the peaks between the hours.
    tmax = by_day.max(axis=1) + np.abs(rng.normal(0.0, 0.4, n_days))
    tmin = by_day.min(axis=1) - np.abs(rng.normal(0.0, 0.4, n_days))
    fahrenheit = {"TMAX": np.rint(tmax * 1.8 + 32.0), "TMIN": np.rint(tmin * 1.8 + 32.0)}
    inches = np.rint(weather["rain"] / 25.4 * 100.0)  # hundredths of an inch
    columns: dict[str, list[pa.Array]] = {name: [] for name in AIRPORT_DAILY_HEADER}
    daily_values = 0
    for element in ("PRCP", "TMAX", "TMIN"):
        missing = rng.random(n_days) < AIRPORT_MISSING_DAYS_RATE
        text = (format_scaled(inches.astype(np.int64), 2, missing) if element == "PRCP"
                else format_scaled(fahrenheit[element].astype(np.int64), 0, missing))
        columns["station"].append(pa.array(np.full(n_days, AIRPORT_ID)))
        columns["element"].append(pa.array(np.full(n_days, element)))
        columns["time"].append(pa.array(np.datetime_as_string(dates, unit="D")))
        columns["value"].append(text)
        daily_values += int((~missing).sum())
    daily_file = folder / "daily" / f"{AIRPORT_ID}.csv"
    _write_csv(daily_file, {name: pa.concat_arrays(parts) for name, parts in columns.items()})
    daily_mapping = folder / "daily" / "mapping.yaml"
    daily_mapping.write_text(AIRPORT_DAILY_MAPPING_YAML, encoding="utf-8")

    hourly_file = hourly_mapping = None
    hourly_values = 0
    if spec.hourly_years:
        (folder / "hourly").mkdir(parents=True, exist_ok=True)
        first = 24 * (n_days - daily_dates(spec.start_year + spec.years - spec.hourly_years, spec.hourly_years).size)
        part = slice(first, None)
        # Local standard time is UTC-6: the hour h of a local day is h + 6 in UTC.
        local = np.arange(dates[0].astype("datetime64[h]"), (dates[-1] + 1).astype("datetime64[h]"))[part]
        times = local + np.timedelta64(6, "h")
        kept = ~_outages(rng, times.size, AIRPORT_OUTAGES_PER_YEAR, 6)
        speed_kt = np.rint(weather["wind_speed"][part] / KNOT_IN_M_S)
        direction = np.rint(weather["wind_direction"][part] / 10.0) * 10.0
        direction = np.where(speed_kt == 0, 0.0, np.where(direction == 0, 360.0, direction))  # calm: 0
        recorded = {
            "temp_f": np.rint(weather["temperature"][part] * 1.8 + 32.0),
            "dewpoint_f": np.rint(weather["dew_point"][part] * 1.8 + 32.0),
            "rh": np.rint(weather["humidity"][part]),
            "wind_kt": speed_kt,
            "wind_dir": direction,
            "pressure_hpa": np.rint(weather["pressure"][part]),
        }
        hourly = {"datetime": pc.replace_substring(
            pa.array(np.datetime_as_string(times[kept].astype("datetime64[m]"), unit="m")), "T", " ")}
        for name, values in recorded.items():
            hourly[name] = format_scaled(values[kept].astype(np.int64), 0)
        hourly_file = folder / "hourly" / f"{AIRPORT_ID}_hourly.csv"
        _write_csv(hourly_file, hourly)
        hourly_mapping = folder / "hourly" / "mapping.yaml"
        hourly_mapping.write_text(AIRPORT_HOURLY_MAPPING_YAML, encoding="utf-8")
        hourly_values = int(kept.sum()) * len(recorded)
    return AirportDataset(folder, stations_csv, daily_file, daily_mapping, hourly_file, hourly_mapping,
                          daily_values, hourly_values)
