"""A small gridded daily analysis of the demo territory, written to the bucket as NetCDF-4.

The fields are synthetic, drawn from the same climate model as the demo stations
(:mod:`.climate` and :mod:`.network`: its terrain, lapse rate, bimodal rainy seasons and warming
trend), so maps and station series tell one story.  They are *not* an interpolation of the
observations.  Daily mean temperature (``TMEAN``) and daily precipitation total (``PRCP``) on a
regular latitude/longitude grid (0.5° by default) over the demo network's bounding box, for the
last years of the demo period (two by default): about 0.5 MB compressed, 2 MB in memory.  The
catalog's ``gridded_analysis`` entry reads it.

Everything is derived from ``DemoSpec.seed`` through its own :class:`numpy.random.SeedSequence`
stream (:data:`~.streams.STREAM_GRID`), so the same spec always gives the same values.  The
weather is a few smooth spatial patterns whose amplitudes follow AR(1) series in time:
neighbouring cells and days are alike, as in a real analysis.
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.demo.climate import (
    LAPSE_RATE,
    LOGISTIC_NORMAL,
    SEA_LEVEL_MEAN_TEMP,
    rainy_season,
    seasonal_cycle,
    warming,
    wet_probability,
)
from opencdms_kernel.demo.network import DemoSpec, station_network, terrain_elevation, wetness_at
from opencdms_kernel.demo.streams import STREAM_GRID, daily_dates, day_of_year, stationary_ar1, stream

GRIDDED_KEY = "gridded/analysis.nc"

# The grid's components of its stream (numbered before the stations' COMPONENT_* were shared;
# kept, so the analysis of a spec stays what it was).
_COMPONENT_TEMP, _COMPONENT_RAIN = 0, 1

# Smooth patterns per field: products of low-order cosines across the box.
_MODES_PER_AXIS = 3


def _axis(low: float, high: float, resolution: float) -> np.ndarray:
    """Multiples of ``resolution`` covering [low, high], widened to whole cells."""
    first = math.floor(low / resolution)
    last = math.ceil(high / resolution)
    return np.round(np.arange(first, last + 1) * resolution, 6)


def _patterns(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Smooth unit-variance spatial patterns, shape (pattern, lat, lon)."""
    y = (lat - lat.min()) / max(float(np.ptp(lat)), 1e-9)
    x = (lon - lon.min()) / max(float(np.ptp(lon)), 1e-9)
    patterns = [
        np.cos(np.pi * i * y)[:, None] * np.cos(np.pi * j * x)[None, :]
        for i in range(_MODES_PER_AXIS)
        for j in range(_MODES_PER_AXIS)
    ]
    stacked = np.stack(patterns)
    return stacked / stacked.std(axis=(1, 2), keepdims=True).clip(min=1e-9)


def _weather(rng: np.random.Generator, days: int, patterns: np.ndarray, phi: float, sd: float) -> np.ndarray:
    """Anomalies (day, lat, lon): each pattern's amplitude is a stationary AR(1) series."""
    count = patterns.shape[0]
    # The large-scale pattern (index 0, uniform) carries most of the variance.
    weights = np.array([1.0] + [0.5 / math.sqrt(count - 1)] * (count - 1))
    amplitudes = np.stack([stationary_ar1(rng, days, phi, 1.0) for _ in range(count)])
    field = np.einsum("pd,p,pyx->dyx", amplitudes, weights, patterns)
    return sd * field / field.std()


def gridded_analysis(spec: DemoSpec = DemoSpec(), years: int = 2, resolution: float = 0.5) -> xr.Dataset:
    """The gridded daily analysis of the last ``years`` years of ``spec``'s period (CF-1.10).

    Variables ``TMEAN`` (degC, daily mean) and ``PRCP`` (mm, daily total), dimensions
    ``(time, lat, lon)``; the grid covers the bounding box of ``spec``'s stations.
    """
    if not 1 <= years <= spec.years:
        raise ValueError(f"years must be between 1 and the demo period's {spec.years}, not {years}")
    if not 0.05 <= resolution <= 5.0:
        raise ValueError(f"resolution must be between 0.05 and 5 degrees, not {resolution}")
    daily, aws = station_network(spec)
    stations = daily + aws
    lat = _axis(min(s.latitude for s in stations), max(s.latitude for s in stations), resolution)
    lon = _axis(min(s.longitude for s in stations), max(s.longitude for s in stations), resolution)
    first_year = spec.start_year + spec.years - years
    dates = daily_dates(first_year, years)
    doy = day_of_year(dates).astype(np.float64)
    elevation = np.vectorize(terrain_elevation)(lat[:, None], lon[None, :])
    wetness = np.clip(wetness_at(lon[None, :], elevation), 0.45, 1.4)
    patterns = _patterns(lat, lon)

    rain_rng = stream(spec.seed, STREAM_GRID, _COMPONENT_RAIN)
    latent = _weather(rain_rng, dates.size, patterns, phi=0.35, sd=1.0)
    latent += rain_rng.normal(0.0, 0.5, latent.shape)  # showers: small-scale, day to day
    chance = 1.0 / (1.0 + np.exp(-LOGISTIC_NORMAL * latent / math.sqrt(1.25)))
    wet_p = wet_probability(doy, 1.0)[:, None, None] * wetness[None, :, :]
    wet_p = np.clip(wet_p, 0.01, 0.9)
    # Where it rains, the lower the draw the heavier the fall: -log(chance / p) is exponential(1).
    mean_amount = (5.0 + 7.0 * rainy_season(doy))[:, None, None]
    wet = chance < wet_p
    prcp = np.where(wet, mean_amount * -np.log(np.where(wet, chance / wet_p, 1.0)), 0.0)

    temp_rng = stream(spec.seed, STREAM_GRID, _COMPONENT_TEMP)
    tmean = (
        SEA_LEVEL_MEAN_TEMP
        - LAPSE_RATE * elevation[None, :, :] / 1000.0
        + (seasonal_cycle(doy) + warming(dates, spec.start_year))[:, None, None]
        + _weather(temp_rng, dates.size, patterns, phi=0.75, sd=1.1)
        - 0.6 * wet
    )

    time = dates.astype("datetime64[ns]")
    bounds = np.stack([time, (dates + 1).astype("datetime64[ns]")], axis=1)
    dataset = xr.Dataset(
        {
            "TMEAN": (("time", "lat", "lon"), np.round(tmean, 2).astype(np.float32), {
                "standard_name": "air_temperature",
                "long_name": "Daily mean air temperature",
                "units": "degC",
                "cell_methods": "time: mean",
            }),
            "PRCP": (("time", "lat", "lon"), np.round(prcp, 1).astype(np.float32), {
                "standard_name": "lwe_thickness_of_precipitation_amount",
                "long_name": "Daily precipitation total",
                "units": "mm",
                "cell_methods": "time: sum",
            }),
            "time_bnds": (("time", "nv"), bounds),
        },
        coords={
            "time": ("time", time, {"standard_name": "time", "axis": "T", "bounds": "time_bnds"}),
            "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north", "axis": "Y"}),
            "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east", "axis": "X"}),
        },
        attrs={
            "Conventions": "CF-1.10",
            "title": "OpenCDMS demo gridded daily analysis",
            "institution": "OpenCDMS Workbench (demo data)",
            "source": "synthetic fields from the demo network's climate model (opencdms_kernel.demo.gridded)",
            "comment": "Synthetic demonstration data, not an analysis of observations.",
            "geospatial_lat_resolution": f"{resolution} degree",
            "geospatial_lon_resolution": f"{resolution} degree",
            "demo_seed": spec.seed,
        },
    )
    return dataset


def analysis_bytes(dataset: xr.Dataset) -> bytes:
    """The dataset as NetCDF-4 bytes (h5netcdf), compressed, times as days since the start."""
    start = str(dataset["time"].values[0])[:10]
    encoding = {
        "TMEAN": {"zlib": True, "complevel": 4},
        "PRCP": {"zlib": True, "complevel": 4},
        "time": {"units": f"days since {start}", "calendar": "standard", "dtype": "int32"},
        "time_bnds": {"units": f"days since {start}", "calendar": "standard", "dtype": "int32"},
    }
    return bytes(dataset.to_netcdf(engine="h5netcdf", encoding=encoding))


def write_gridded_analysis(
    bucket: Bucket,
    spec: DemoSpec = DemoSpec(),
    *,
    years: int = 2,
    resolution: float = 0.5,
    key: str = GRIDDED_KEY,
) -> str:
    """Write :func:`gridded_analysis` of ``spec`` to ``key`` in the bucket (whole); return the key.

    The catalog entry ``gridded_analysis`` reads ``gridded/analysis.nc``, the default key.
    """
    bucket.write_bytes(key, analysis_bytes(gridded_analysis(spec, years, resolution)))
    return key
