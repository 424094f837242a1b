"""Seeded random streams, daily time axes and AR(1) noise: what every demo generator shares.

Everything the demo writes is derived from one seed (``DemoSpec.seed``, ``AirportSpec.seed``)
through :class:`numpy.random.SeedSequence` spawn keys of the form
``(stream, station_index, component)`` (the gridded analysis: ``(stream, component)``).  Each
purpose, station and component draws from its own independent stream, so the output does not
depend on the order in which stations are generated, adding one purpose does not move the
others, and the same spec always yields byte-identical files.  The streams are numbered here,
once, so that no two generators can pick the same one.
"""

from __future__ import annotations

import numpy as np

# First element of every spawn key: one independent stream per purpose.
STREAM_NETWORK = 1  # station locations, elevations and climate knobs (network.py)
STREAM_DAILY = 2  # daily station values (climate.py)
STREAM_AWS = 3  # hourly AWS values (aws.py)
STREAM_MISSING = 4  # genuinely missing daily values (dataset.py)
STREAM_ERRORS = 5  # injected errors, one component per kind (injected_errors.py)
STREAM_GRID = 6  # the gridded analysis (gridded.py)
STREAM_CLUSTER = 7  # the dense cluster's shared regional weather (climate.py)
STREAM_AIRPORT = 8  # the real-data-like airport record (airport.py)

# Last element of a spawn key: which series of a station the stream feeds.
COMPONENT_PRECIP = 0
COMPONENT_TEMP = 1
COMPONENT_HOURLY = 2
COMPONENT_DTR = 3


def stream(seed: int, *key: int) -> np.random.Generator:
    """The independent generator of one spawn ``key`` (stream, station, component) of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def daily_dates(start_year: int, years: int) -> np.ndarray:
    """All days from ``start_year``-01-01 to the end of the last year, as ``datetime64[D]``."""
    return np.arange(
        np.datetime64(f"{start_year:04d}-01-01", "D"),
        np.datetime64(f"{start_year + years:04d}-01-01", "D"),
        dtype="datetime64[D]",
    )


def day_of_year(dates: np.ndarray) -> np.ndarray:
    """1-based day of year of ``datetime64[D]`` dates."""
    return (dates - dates.astype("datetime64[Y]")).astype(np.int64) + 1


def years_since(dates: np.ndarray, start_year: int) -> np.ndarray:
    """Fractional years elapsed since ``start_year``-01-01 (drives the warming trend)."""
    return (dates - np.datetime64(f"{start_year:04d}-01-01", "D")).astype(np.float64) / 365.25


def circular_days(delta: np.ndarray) -> np.ndarray:
    """Wrap day-of-year differences into [-182.6, 182.6) so seasonal bumps wrap over New Year."""
    return (delta + 182.625) % 365.25 - 182.625


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


def stationary_ar1(rng: np.random.Generator, n: int, phi: float, sd: float) -> np.ndarray:
    """Stationary AR(1) noise of ``n`` steps with marginal standard deviation ``sd``.

    Draws the innovations first, then the initial state, from ``rng`` (the order is part of
    every stream's layout: changing it changes every generated file)."""
    innovations = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), n)
    return ar1(innovations, phi, initial=rng.normal(0.0, sd))
