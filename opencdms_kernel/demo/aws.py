"""The demo's automatic weather stations: hourly series in a logger's "foreign" units.

Each AWS writes one wide file, ``aws/<wigos_id>_hourly.csv`` (:data:`AWS_HEADER`), in degrees
Celsius, percent, knots, degrees and kilopascals, so that its ingest mapping
(:data:`AWS_MAPPING_YAML`) has to convert units.  The hours come from the same daily climate
as the daily stations (:mod:`.climate`): temperature follows cosine ramps from TMIN at 06:00
to TMAX at 15:00 local time, a wet day's rain falls in a few afternoon hours, humidity mirrors
the temperature cycle under a near-constant dew point, the wind has calm nights and monsoon
directions, and station pressure has its altitude, season, synoptic changes and tide.
"""

from __future__ import annotations

import numpy as np

from opencdms_kernel.demo.climate import precipitation_series, temperature_series, wet_probability
from opencdms_kernel.demo.network import Station
from opencdms_kernel.demo.streams import (
    COMPONENT_HOURLY,
    COMPONENT_PRECIP,
    COMPONENT_TEMP,
    STREAM_AWS,
    day_of_year,
    stationary_ar1,
    stream,
)

AWS_HEADER = ("datetime", "air_temp", "rel_hum", "wind_speed_kt", "wind_dir", "pressure_kpa", "rain")
# Decimals written per AWS column (RH and direction as whole numbers, like most loggers).
AWS_DECIMALS = {"air_temp": 1, "rel_hum": 0, "wind_speed_kt": 1, "wind_dir": 0, "pressure_kpa": 2, "rain": 1}

# The mapping the AWS files are ingested with; written verbatim (not via yaml.dump) so the file is
# exactly the documented ingest format (the timezone is network.TIMEZONE).
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
    doy = day_of_year(dates)
    hours_in_day = np.tile(np.arange(24.0), dates.size)
    doy_hourly = np.repeat(doy, 24).astype(np.float64)
    rain_daily = precipitation_series(doy, station.wetness, stream(seed, STREAM_AWS, index, COMPONENT_PRECIP))
    wet = rain_daily > 0
    tmax, tmin = temperature_series(station, dates, start_year, wet, stream(seed, STREAM_AWS, index, COMPONENT_TEMP))
    rng = stream(seed, STREAM_AWS, index, COMPONENT_HOURLY)
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
    daily_wind = 3.0 * station.wind_factor * np.exp(stationary_ar1(rng, dates.size, phi=0.6, sd=0.3))
    diurnal = 0.55 + 0.9 * np.clip(np.sin(np.pi * (hours_in_day - 8.0) / 12.0), 0.0, None)
    speed_m_s = np.repeat(daily_wind, 24) * diurnal * rng.gamma(4.0, 0.25, n_hours)
    speed_kt = speed_m_s / KNOT_IN_M_S
    # Monsoon: north-easterlies in Dec-Mar, south-easterlies in May-Oct.
    monsoon = 92.5 - 47.5 * np.cos(2 * np.pi * (doy_hourly - 30.0) / 365.25)
    direction = monsoon + np.repeat(stationary_ar1(rng, dates.size, phi=0.5, sd=25.0), 24) + rng.normal(0, 20, n_hours)
    direction = (np.rint(direction).astype(np.int64) - 1) % 360 + 1  # 1..360, north = 360
    direction = np.where(np.rint(speed_kt * 10) == 0, 0, direction)  # calm reports 0

    # Station pressure: barometric altitude law, seasonal and synoptic changes, semidiurnal tide.
    base = 1013.25 * (1.0 - 2.25577e-5 * station.elevation) ** 5.25588
    synoptic = np.interp(np.arange(n_hours, dtype=np.float64), 24.0 * np.arange(dates.size) + 12.0,
                         stationary_ar1(rng, dates.size, phi=0.8, sd=1.0))
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
