"""The demo network: where its stations stand, and the local-climate knobs of each.

A small, realistic-looking national network for a fictional East-African-like territory
(ISO 3166 user-assigned code ``XEA``, so it cannot clash with a real country): daily climate
stations on a smooth fictional terrain (a low east coast, a plateau rising westwards, a central
highland massif) and a few hourly automatic weather stations.  Every tenth daily station
(:data:`HIGHLAND_EVERY`) sits high on the massif, cool enough for a month keyed in Fahrenheit
to pass the physical range check (see :mod:`.injected_errors`).

The dense cluster
-----------------
The first :data:`CLUSTER_SIZE` daily stations that are not highland ones (indices 1-9 and
11-13) stand within 50 km of :data:`CLUSTER_CENTRE`, as the stations of a capital region do,
so that each has a dozen neighbours within the buddy check's 150 km.  Their weather is shared
as it is over such distances (:func:`opencdms_kernel.demo.climate.regional_weather`); stations
elsewhere keep independent weather.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opencdms_kernel.demo.streams import STREAM_NETWORK, stream

TIMEZONE = "Africa/Nairobi"
TERRITORY = "XEA"  # ISO 3166 user-assigned range (X..): cannot clash with a real country
WMO_REGION = "I"
STATUS = "operational"
DAILY_FIRST_ID = 60001
AWS_FIRST_ID = 69001

HIGHLAND_EVERY = 10  # station indices 0, 10, 20, ... sit on the cool highland massif
HIGHLAND_ELEVATION = (2750.0, 3000.0)  # m; cool enough for Fahrenheit TMAX <= 60 in cool months

CLUSTER_SIZE = 12
CLUSTER_CENTRE = (-1.6, 38.3)  # latitude, longitude: east of the massif, on the plateau
CLUSTER_RADIUS_DEG = 0.45  # about 50 km: any two cluster stations are within 100 km
CLUSTER_MIN_STATIONS = 4  # each then has at least 3 neighbours, the buddy check's minimum

_AWS_INDEX_OFFSET = 100_000  # keeps AWS network keys apart from daily station keys

_SYLLABLES = (
    "ka", "ki", "ko", "ma", "mi", "mu", "na", "ni", "nya", "nga", "ngo", "ri", "ru", "la",
    "lo", "wa", "we", "ta", "tu", "si", "so", "ba", "bu", "ga", "go", "ja", "ke", "mbo",
    "nde", "ndi", "sha", "ya", "ra", "ti", "ke", "mo",
)


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


def terrain_elevation(lat: float, lon: float) -> float:
    """Smooth fictional terrain: low east coast, plateau rising westwards, central highland massif.

    The stations' elevations are drawn around it and the gridded analysis uses it too, so the
    two agree."""
    plateau = 1100.0 * np.clip((41.8 - lon) / 6.5, 0.0, 1.0) ** 1.3
    massif = 1700.0 * np.exp(-((lat + 0.4) ** 2 + (lon - 36.9) ** 2) / (2 * 1.2**2))
    northern_lowland = -400.0 * np.clip((lat - 2.0) / 3.0, 0.0, 1.0)  # semi-arid northern plains
    return float(max(plateau + massif + northern_lowland, 0.0) + 15.0)


def wetness_at(lon: float | np.ndarray, elevation: float | np.ndarray) -> float | np.ndarray:
    """The territory's wetness multiplier at a place, before a station's own variation and the
    clip to [0.45, 1.4]: the east is semi-arid, highlands catch more rain."""
    return 1.15 - 0.07 * (lon - 34) + 0.1 * elevation / 1000


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
    rng = stream(seed, STREAM_NETWORK, key)
    if cluster:
        # Uniform over a disc around the cluster's centre (radius * sqrt(u): uniform in area).
        radius = CLUSTER_RADIUS_DEG * float(np.sqrt(rng.random()))
        angle = 2 * np.pi * float(rng.random())
        lat = CLUSTER_CENTRE[0] + radius * float(np.sin(angle))
        lon = CLUSTER_CENTRE[1] + radius * float(np.cos(angle))
        elevation = float(np.clip(terrain_elevation(lat, lon) * rng.lognormal(0.0, 0.15), 2.0, 2700.0))
    elif highland:
        # On the massif, high enough for cool months with Fahrenheit TMAX <= 60.
        lat = float(np.clip(-0.4 + rng.normal(0, 0.5), -5, 5))
        lon = float(np.clip(36.9 + rng.normal(0, 0.5), 34, 42))
        elevation = float(rng.uniform(*HIGHLAND_ELEVATION))
    else:
        lat, lon = float(rng.uniform(-5, 5)), float(rng.uniform(34, 42))
        # Multiplicative roughness keeps coastal stations near sea level instead of piling up at a clip.
        elevation = float(np.clip(terrain_elevation(lat, lon) * rng.lognormal(0.0, 0.15), 2.0, 2700.0))
    # The coast and plains are windier.
    wetness = float(np.clip(wetness_at(lon, elevation) + rng.normal(0, 0.08), 0.45, 1.4))
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
