"""The demo's climate model: a station's true daily TMAX, TMIN and PRCP.

Equatorial East-African-like weather: a sea-level mean temperature cooled by the lapse rate
with altitude, a weak seasonal cycle (warm February-March, cool July-August), a warming trend
so that a 30-year series has a visible one, AR(1) day-to-day weather, and bimodal rains (the
long rains in March-May, the short rains in October-December) from a wet/dry Markov chain
with gamma amounts.  Wet days are cooler and have a narrower diurnal range.

At the dense cluster's stations (:mod:`.network`) most of the day-to-day temperature variance
and of the diurnal range's, and the chance of a wet day, come from regional series drawn once
for the cluster (:func:`regional_weather`); the rest is each station's own.

The gridded analysis (:mod:`.gridded`) draws from the same model, so maps and station series
tell one story.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from opencdms_kernel.demo.files import scaled_integers
from opencdms_kernel.demo.network import DemoSpec, Station
from opencdms_kernel.demo.streams import (
    COMPONENT_DTR,
    COMPONENT_PRECIP,
    COMPONENT_TEMP,
    STREAM_CLUSTER,
    STREAM_DAILY,
    circular_days,
    day_of_year,
    stationary_ar1,
    stream,
    years_since,
)

# Alphabetical, because the daily files are sorted by element then time.
DAILY_ELEMENTS: tuple[str, ...] = ("PRCP", "TMAX", "TMIN")
PRCP, TMAX, TMIN = 0, 1, 2  # indices into DAILY_ELEMENTS

SEA_LEVEL_MEAN_TEMP = 25.5  # degC, annual mean air temperature at sea level
LAPSE_RATE = 6.5  # K per km of altitude
WARMING_TREND = 0.2  # K per decade, so the 30-year series has a visible trend

# Shares of variance that are regional (the same at every cluster station).
CLUSTER_TEMPERATURE_SHARE = 0.9
CLUSTER_DTR_SHARE = 0.7
CLUSTER_RAIN_SHARE = 0.75

# The logistic curve 1 / (1 + exp(-1.702 z)) is within 0.01 of the normal CDF: it turns a
# normal deviate into a uniform-looking probability (and back) without scipy.
LOGISTIC_NORMAL = 1.702


@dataclass(frozen=True)
class RegionalWeather:
    """The cluster's shared weather, one value per day: standard normal series for the
    wet-day draw (``rain``), and unit-variance AR(1) series for the mean temperature's and
    the diurnal range's day-to-day anomalies (``temperature``, ``dtr``)."""

    rain: np.ndarray
    temperature: np.ndarray
    dtr: np.ndarray


def rainy_season(doy: np.ndarray) -> np.ndarray:
    """0..1 strength of the bimodal East African rains: long rains (MAM, peak mid-April)
    and short rains (OND, peak early November)."""
    long_rains = np.exp(-0.5 * (circular_days(doy - 110.0) / 22.0) ** 2)
    short_rains = np.exp(-0.5 * (circular_days(doy - 312.0) / 20.0) ** 2)
    return long_rains + 0.76 * short_rains


def wet_probability(doy: np.ndarray, wetness: float) -> np.ndarray:
    """Seasonal wet-day probability: ~7 % in the dry seasons, up to ~57 % at the peak of the rains."""
    return np.clip((0.07 + 0.50 * rainy_season(doy)) * wetness, 0.01, 0.9)


def seasonal_cycle(doy: np.ndarray) -> np.ndarray:
    """The mean temperature's seasonal anomaly (K) on day of year ``doy`` (float): warm
    February-March, cool July-August."""
    angle = 2 * np.pi * (doy - 65.0) / 365.25
    return 1.6 * np.cos(angle) + 0.4 * np.cos(2 * angle)


def warming(dates: np.ndarray, start_year: int) -> np.ndarray:
    """The warming trend's anomaly (K) on ``dates``, zero on ``start_year``-01-01."""
    return WARMING_TREND / 10.0 * years_since(dates, start_year)


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
        own = np.log(own / (1.0 - own)) / LOGISTIC_NORMAL  # the same draw, as a normal deviate
        mixed = np.sqrt(CLUSTER_RAIN_SHARE) * regional + np.sqrt(1.0 - CLUSTER_RAIN_SHARE) * own
        u = 1.0 / (1.0 + np.exp(-LOGISTIC_NORMAL * mixed))
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
    doy = day_of_year(dates).astype(np.float64)
    n = doy.size
    weather = stationary_ar1(rng, n, phi=0.75, sd=1.1)
    dtr_noise = stationary_ar1(rng, n, phi=0.5, sd=0.9)
    if regional is not None:
        weather = _shared(weather, 1.1 * regional.temperature, CLUSTER_TEMPERATURE_SHARE)
        dtr_noise = _shared(dtr_noise, 0.9 * regional.dtr, CLUSTER_DTR_SHARE)
    mean = (
        SEA_LEVEL_MEAN_TEMP
        - LAPSE_RATE * station.elevation / 1000.0
        + station.temp_offset
        + seasonal_cycle(doy)
        + warming(dates, start_year)
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
    rain = stream(spec.seed, STREAM_CLUSTER, 0, COMPONENT_PRECIP).normal(0.0, 1.0, n)
    temperature = stationary_ar1(stream(spec.seed, STREAM_CLUSTER, 0, COMPONENT_TEMP), n, phi=0.75, sd=1.0)
    dtr = stationary_ar1(stream(spec.seed, STREAM_CLUSTER, 0, COMPONENT_DTR), n, phi=0.5, sd=1.0)
    return RegionalWeather(rain=rain, temperature=temperature, dtr=dtr)


def daily_station_values(
    station: Station, index: int, dates: np.ndarray, spec: DemoSpec, regional: RegionalWeather | None = None
) -> np.ndarray:
    """True daily values in integer tenths, shape (elements, days) in DAILY_ELEMENTS order.

    A cluster station shares ``regional`` weather (:func:`regional_weather`; drawn here when
    not given)."""
    doy = day_of_year(dates)
    if station.cluster and regional is None:
        regional = regional_weather(spec, dates)
    shared = regional if station.cluster else None
    prcp = precipitation_series(doy, station.wetness, stream(spec.seed, STREAM_DAILY, index, COMPONENT_PRECIP),
                                shared.rain if shared is not None else None)
    tmax, tmin = temperature_series(
        station, dates, spec.start_year, prcp > 0, stream(spec.seed, STREAM_DAILY, index, COMPONENT_TEMP), shared
    )
    return np.stack([prcp, scaled_integers(tmax, 1), scaled_integers(tmin, 1)])
