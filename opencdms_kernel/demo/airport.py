"""A real-data-like record: one mid-latitude airport station, daily and hourly, without errors.

:func:`generate_airport_data` writes a different kind of record from the demo network's: one
fictional airport (UTC-6) whose daily TMAX/TMIN are in whole degrees Fahrenheit and
precipitation in hundredths of an inch, and whose hourly file has whole-degree Fahrenheit
temperature and dew point, whole-percent humidity, whole-knot wind, wind direction in tens of
degrees and pressure in whole hPa.  The weather has a continental seasonal cycle, cold fronts
(a sharp fall after a warm sector, a pressure trough, a wind shift) and calm anticyclonic
spells.  It holds no injected errors: every value QC flags there is a false positive.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.demo.aws import KNOT_IN_M_S
from opencdms_kernel.demo.files import DAILY_HEADER, STATIONS_HEADER, format_scaled, write_csv
from opencdms_kernel.demo.network import STATUS
from opencdms_kernel.demo.streams import (
    COMPONENT_HOURLY,
    COMPONENT_PRECIP,
    STREAM_AIRPORT,
    ar1,
    daily_dates,
    day_of_year,
    stream,
)

AIRPORT_TIMEZONE = "Etc/GMT+6"  # local standard time (UTC-6), the climatological day of the daily record
AIRPORT_ID = "0-20000-0-72001"
AIRPORT_ELEVATION = 190.0  # m
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
    rng = stream(spec.seed, STREAM_AIRPORT, 0, COMPONENT_HOURLY)
    dates = daily_dates(spec.start_year, spec.years)
    n_days = dates.size
    n = 24 * n_days
    hour = np.tile(np.arange(24.0), n_days)
    doy = np.repeat(day_of_year(dates), 24).astype(np.float64) + hour / 24.0
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
    rng = stream(spec.seed, STREAM_AIRPORT, 0, COMPONENT_PRECIP)
    by_day = weather["temperature"].reshape(n_days, 24)
    # Max/min thermometers catch the peaks between the hours.
    tmax = by_day.max(axis=1) + np.abs(rng.normal(0.0, 0.4, n_days))
    tmin = by_day.min(axis=1) - np.abs(rng.normal(0.0, 0.4, n_days))
    fahrenheit = {"TMAX": np.rint(tmax * 1.8 + 32.0), "TMIN": np.rint(tmin * 1.8 + 32.0)}
    inches = np.rint(weather["rain"] / 25.4 * 100.0)  # hundredths of an inch
    columns: dict[str, list[pa.Array]] = {name: [] for name in DAILY_HEADER}
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
    write_csv(daily_file, {name: pa.concat_arrays(parts) for name, parts in columns.items()})
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
        write_csv(hourly_file, hourly)
        hourly_mapping = folder / "hourly" / "mapping.yaml"
        hourly_mapping.write_text(AIRPORT_HOURLY_MAPPING_YAML, encoding="utf-8")
        hourly_values = int(kept.sum()) * len(recorded)
    return AirportDataset(folder, stations_csv, daily_file, daily_mapping, hourly_file, hourly_mapping,
                          daily_values, hourly_values)
