"""The errors injected into the demo's daily files, and their entries in ``manifest.json``.

A known set of errors is written into the daily files and listed in the manifest so that
quality control can be scored against ground truth (``tests/test_qc_demo.py``).  About 0.1 %
of the daily values are erroneous.

Manifest error representation
-----------------------------
``manifest.json`` has exactly three keys: ``spec`` (the :class:`~.network.DemoSpec`
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
  is for.  Injected only at stations of the dense cluster (:mod:`.network`), where
  every station has neighbours within 150 km; a network without such a cluster has
  none of this kind.

Errors never overlap each other or a missing value, and are separated from
other errors by at least :data:`ERROR_MARGIN_DAYS` days.  ``true_value`` is
always a number here (the schema allows ``null`` for errors whose truth is
unknown).  Missing values (empty ``value`` fields) are not errors and are not
listed.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from opencdms_kernel.demo.climate import DAILY_ELEMENTS, PRCP, TMAX, TMIN
from opencdms_kernel.demo.network import CLUSTER_MIN_STATIONS, DemoSpec, Station, cluster_indices
from opencdms_kernel.demo.streams import STREAM_ERRORS, stream

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


class InjectedError(NamedTuple):
    """One erroneous daily value, in integer tenths of the element's unit."""

    station: int  # index into the daily network
    element: int  # index into DAILY_ELEMENTS
    day: int  # index into the daily date axis
    kind: str
    true_tenths: int
    recorded_tenths: int


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
    errors = pick_unit_mistakes(values, busy_temp, month_starts, counts["unit_mistake"], stream(seed, STREAM_ERRORS, 0))
    errors += pick_flat_lines(values, busy_temp, counts["flat_line"], stream(seed, STREAM_ERRORS, 1))
    errors += pick_swaps(values, busy_temp, counts["tmin_gt_tmax"], stream(seed, STREAM_ERRORS, 2))
    errors += pick_temperature_spikes(values, busy_temp, counts["temperature_spike"], stream(seed, STREAM_ERRORS, 3))
    errors += pick_precipitation_spikes(values, busy_prcp, counts["precipitation_spike"], stream(seed, STREAM_ERRORS, 4))
    errors += pick_spatial_outliers(values, busy_temp, cluster_indices(spec.stations), counts["spatial_outlier"],
                                    stream(seed, STREAM_ERRORS, 5))
    return sorted(errors, key=lambda x: (x.station, x.element, x.day))


def apply_errors(values: np.ndarray, errors: list[InjectedError]) -> np.ndarray:
    """Copy of ``values`` with the recorded (erroneous) values written in."""
    recorded = values.copy()
    if errors:
        s, e, d, _, _, r = (np.array(column) for column in zip(*errors))
        recorded[s, e, d] = r.astype(recorded.dtype)
    return recorded


def manifest_entries(
    errors: list[InjectedError], stations: tuple[Station, ...], dates: np.ndarray
) -> list[dict[str, object]]:
    """The manifest's ``errors`` entries (see the module docstring) of ``errors`` placed in the
    daily ``stations`` over ``dates``, in the order given."""
    return [
        {
            "station": stations[err.station].wigos_id,
            "element": DAILY_ELEMENTS[err.element],
            "time": str(dates[err.day]),
            "kind": err.kind,
            "true_value": err.true_tenths / 10,
            "recorded_value": err.recorded_tenths / 10,
        }
        for err in errors
    ]
