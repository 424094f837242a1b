"""Station/month thresholds derived from a station's own history, stored as new rule versions.

A network-wide limit cannot suit every station: a day-to-day TMAX change of 10 °C is a
gross error on the equator and a cold front in Iowa, a run of twelve equal hourly pressures
is a stuck sensor in tenths of hPa and a quiet afternoon in whole hPa.  So each station gets
limits per element, duration and calendar month from its own record, and the network (or
global) rule applies only where that record is too short — each finding then says which
level of threshold judged it and why (:func:`opencdms_kernel.qc.rules.with_fallback_reasons`).

Every derivation here is pure (values in, :class:`~opencdms_kernel.qc.rules.Threshold` out)
and robust to the errors still in the history it learns from:

* **Range** (:func:`derive_range_thresholds`): Tukey's fences, ``Q1 - k * IQR`` and
  ``Q3 + k * IQR`` of the station's values for the calendar month.  Quartiles barely move
  when a few values are wrong (a whole month keyed in Fahrenheit is one value in ten of that
  calendar month over ten years), so the fences can be derived from data that still holds
  the errors they are meant to find.  With k = 3 a normal variable passes 4.7 standard
  deviations from its mean.  Accumulated elements (rain, evaporation) are skewed and mostly
  zero: their upper fence comes from the non-zero values, with a larger k, and they get no
  lower fence (the element's physical minimum applies).
* **Step** (:func:`derive_step_thresholds`): the sizes of the changes between consecutive
  values of the calendar month and the months either side; ``max_change = q99 + k *
  max(q99 - q90, resolution)``, where a tail that falls off exponentially reaches 1 in
  100 000 for k = 3 (a Gaussian tail falls faster, so it is looser there; the fronts of a
  mid-latitude winter, which make the tail heavier than Gaussian, are inside it; in whole
  hPa both percentiles are often 1, and the spread is then one step).  The 90th and 99th
  percentiles stand on hundreds of changes, so the odd spike in the history does not move
  them.
* **Persistence** (:func:`derive_persistence_thresholds`): the lengths of the runs of equal
  consecutive values (runs of the excluded value, dry days or calm, left out), from the
  same months; ``max_run`` is the length a longer run reaches with a probability below
  ``10**-(2 + k)`` by the station's own runs, their tail extrapolated geometrically from
  the 90th and 99th percentile (:func:`opencdms_kernel.qc.series.run_length_limits`), at
  least ``min_run``.  Runs are longer when values are recorded coarsely, and the history is
  recorded as the station records, so the limit fits the resolution; the rule states it
  (``resolution``, see :func:`opencdms_kernel.qc.series.resolutions`).

A station-month with fewer than ``min_values`` values of that calendar month in its record
gets no threshold.  :func:`derive_and_store_thresholds` reads the archive (values a person
rejected left out), derives, and stores the thresholds that differ from those in force as
new versions, with the number of values each came from (``history_values``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, datetime
from typing import Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa

from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.qc.frame import Frame, FrameRequest, load_frame, reading_archive
from opencdms_kernel.qc.model import QcParameterError, QcTest
from opencdms_kernel.qc.rules import Threshold, add_thresholds
from opencdms_kernel.qc.scope import parse_tests, resolve_scope
from opencdms_kernel.qc.series import (
    TAIL_QUANTILES,
    gap_us,
    grouped_quantiles,
    month_window,
    resolutions,
    run_length_limits,
    tail_limit,
    value_runs,
)

DERIVED_TESTS: tuple[QcTest, ...] = (QcTest.RANGE, QcTest.STEP, QcTest.PERSISTENCE)


@dataclass(frozen=True)
class DerivationMethod:
    """How one element's station/month range fences are derived.

    ``positive_only``: from the values above zero, upper fence only (accumulations).
    ``min_values``: fewer values in a station-month give no threshold (the network or
    physical limits then apply).  ``min_iqr``: floor of the IQR, so that a station-month of
    nearly identical values does not flag every other value.
    """

    k: float = 3.0
    positive_only: bool = False
    min_values: int = 60
    min_iqr: float = 0.5

    def __post_init__(self) -> None:
        if self.k <= 0 or self.min_values < 4 or self.min_iqr < 0:
            raise QcParameterError("method", "k must be > 0, min_values >= 4 and min_iqr >= 0")


@dataclass(frozen=True)
class StepMethod:
    """How one element's station/month step limits are derived: ``k`` (see the module
    docstring), ``min_values`` of the calendar month in the station's record, and a floor
    ``min_change`` (a station-month of nearly constant values must not flag every change)."""

    k: float = 3.0
    min_values: int = 120
    min_change: float = 1.0

    def __post_init__(self) -> None:
        if self.k <= 0 or self.min_values < 20 or self.min_change <= 0:
            raise QcParameterError("method", "k must be > 0, min_values >= 20 and min_change > 0")


@dataclass(frozen=True)
class PersistenceMethod:
    """How one element's station/month run limits are derived: ``k``, ``min_values`` as for
    steps, a floor ``min_run``, and ``exclude_value``, whose runs are normal (0 mm, calm)."""

    k: float = 3.0
    min_values: int = 120
    min_run: int = 3
    exclude_value: float | None = None

    def __post_init__(self) -> None:
        if self.k <= 0 or self.min_values < 20 or self.min_run < 1:
            raise QcParameterError("method", "k must be > 0, min_values >= 20 and min_run >= 1")


_TEMPERATURE = DerivationMethod(k=3.0, min_iqr=0.5)
DEFAULT_METHODS: Mapping[str, DerivationMethod] = {
    "TMAX": _TEMPERATURE, "TMIN": _TEMPERATURE, "TMEAN": _TEMPERATURE, "TDEW": _TEMPERATURE,
    "TSOIL": _TEMPERATURE,
    "PRES": DerivationMethod(k=3.0, min_iqr=1.0), "MSLP": DerivationMethod(k=3.0, min_iqr=1.0),
    "RH": DerivationMethod(k=3.0, min_iqr=2.0),
    "PRCP": DerivationMethod(k=8.0, positive_only=True, min_values=20, min_iqr=1.0),
    "EVAP": DerivationMethod(k=8.0, positive_only=True, min_values=20, min_iqr=1.0),
}
# The elements with a network step rule (migration 0002), in their units.
_STEP_TEMPERATURE = StepMethod(min_change=2.0)
DEFAULT_STEP_METHODS: Mapping[str, StepMethod] = {
    "TMAX": _STEP_TEMPERATURE, "TMIN": _STEP_TEMPERATURE, "TMEAN": _STEP_TEMPERATURE,
    "TDEW": _STEP_TEMPERATURE, "TSOIL": _STEP_TEMPERATURE,
    "PRES": StepMethod(min_change=1.0), "MSLP": StepMethod(min_change=1.0),
    "RH": StepMethod(min_change=10.0), "WSPD": StepMethod(min_change=3.0),
}
# The elements with a network persistence rule, with the same excluded values.
_RUN = PersistenceMethod()
DEFAULT_PERSISTENCE_METHODS: Mapping[str, PersistenceMethod] = {
    "TMAX": _RUN, "TMIN": _RUN, "TMEAN": _RUN, "TDEW": _RUN, "TSOIL": _RUN, "PRES": _RUN, "MSLP": _RUN,
    "PRCP": PersistenceMethod(min_run=2, exclude_value=0.0), "RH": PersistenceMethod(exclude_value=100.0),
    "WSPD": PersistenceMethod(exclude_value=0.0), "WDIR": PersistenceMethod(exclude_value=0.0),
    "WGUST": PersistenceMethod(exclude_value=0.0), "SUN": PersistenceMethod(min_run=2, exclude_value=0.0),
    "EVAP": PersistenceMethod(min_run=2, exclude_value=0.0),
}


def min_values_needed(test: QcTest, code: str) -> int:
    """Values of a calendar month the default derivation of ``test`` needs for ``code`` (0: it
    derives none for that element)."""
    table: Mapping[str, DerivationMethod | StepMethod | PersistenceMethod] = {
        QcTest.RANGE: DEFAULT_METHODS, QcTest.STEP: DEFAULT_STEP_METHODS,
        QcTest.PERSISTENCE: DEFAULT_PERSISTENCE_METHODS,
    }.get(test, {})  # type: ignore[assignment]
    method = table.get(code)
    return method.min_values if method is not None else 0


# --------------------------------------------------------------------------- range

# Month of the middle of each period, in UTC: the same rule as the checks (frame.months).
_DERIVE_SQL = """
WITH input AS (
    SELECT o.station, o.element, o.duration_seconds,
           month(make_timestamp(epoch_us(o.phenomenon_time) + CAST(o.duration_seconds AS BIGINT) * 500000)) AS month,
           o.value, m.k, m.positive_only, m.min_values, m.min_iqr
    FROM observations_input AS o JOIN methods AS m ON m.element = o.element
    WHERE o.value IS NOT NULL AND isfinite(o.value) AND (NOT m.positive_only OR o.value > 0)
), quartiles AS (
    SELECT station, element, duration_seconds, month, any_value(k) AS k,
           any_value(positive_only) AS positive_only, any_value(min_iqr) AS min_iqr,
           any_value(min_values) AS min_values, count(*) AS n,
           quantile_cont(value, 0.25) AS q1, quantile_cont(value, 0.75) AS q3
    FROM input
    GROUP BY station, element, duration_seconds, month
)
SELECT station, element, duration_seconds, month, n,
       CASE WHEN positive_only THEN NULL
            ELSE round(q1 - k * greatest(q3 - q1, min_iqr), 2) END AS low,
       round(q3 + k * greatest(q3 - q1, min_iqr), 2) AS high
FROM quartiles
WHERE n >= min_values
ORDER BY station, element, duration_seconds, month
"""


def derive_range_thresholds(
    observations: pa.Table, methods: Mapping[str, DerivationMethod] = DEFAULT_METHODS
) -> list[Threshold]:
    """Station/month range thresholds from ``observations`` (columns ``station`` (WIGOS id),
    ``element`` (code), ``phenomenon_time`` (UTC), ``duration_seconds``, ``value``).

    Elements without a method get none.  Pure: no database, no files.
    """
    missing = {"station", "element", "phenomenon_time", "duration_seconds", "value"} - set(observations.column_names)
    if missing:
        raise QcParameterError("observations", f"missing column(s) {', '.join(sorted(missing))}")
    method_table = pa.table({
        "element": list(methods),
        "k": [m.k for m in methods.values()],
        "positive_only": [m.positive_only for m in methods.values()],
        "min_values": [m.min_values for m in methods.values()],
        "min_iqr": [m.min_iqr for m in methods.values()],
    })
    with duckdb.connect() as db:
        db.execute("SET TimeZone = 'UTC'")
        db.register("observations_input", observations)
        db.register("methods", method_table)
        rows = db.sql(_DERIVE_SQL).fetchall()
    return [
        Threshold(test=QcTest.RANGE, element=element, station=station, month=int(month),
                  duration_seconds=int(duration), low=low, high=high, history_values=int(n))
        for station, element, duration, month, n, low, high in rows  # one per threshold
    ]


# --------------------------------------------------------------------------- step and persistence


@dataclass(frozen=True)
class _Scopes:
    """The threshold scopes of a frame's series: station, element and duration (a series
    also has a level and a source, which thresholds do not distinguish)."""

    of_series: np.ndarray  # scope index of each series
    station: np.ndarray  # per scope: station id
    element: np.ndarray  # per scope: index into frame.elements
    duration: np.ndarray  # per scope: seconds
    history: np.ndarray  # per scope cell (scope * 12 + month): values in the record

    @property
    def count(self) -> int:
        return int(self.station.size)


def _scopes(frame: Frame) -> _Scopes:
    keys = np.rec.fromarrays([frame.series_station, frame.series_element, frame.series_duration],
                             names="station,element,duration")
    unique, of_series = np.unique(keys, return_inverse=True)
    of_series = of_series.astype(np.int64).ravel()
    per_cell = np.bincount(frame.cell, minlength=frame.series_count * 12).reshape(-1, 12)
    history = np.zeros((unique.size, 12), np.int64)
    np.add.at(history, of_series, per_cell)
    return _Scopes(of_series, unique["station"].astype(np.int64), unique["element"].astype(np.int64),
                   unique["duration"].astype(np.int64), history.ravel())


def _per_scope(scopes: _Scopes, frame: Frame, methods: Mapping[str, object], field: str,
               default: float = np.nan) -> np.ndarray:
    """A method parameter per scope (``default`` where the element has no method)."""
    values = np.array([getattr(methods[e.code], field) if e.code in methods else default for e in frame.elements],
                      dtype=np.float64)
    return values[scopes.element] if frame.elements else np.empty(0)


def _thresholds(
    test: QcTest, frame: Frame, scopes: _Scopes, stations: Mapping[int, str], cells: np.ndarray,
    gap_seconds: np.ndarray, parameters: dict[str, list[float | int]],
) -> list[Threshold]:
    """One threshold per scope cell in ``cells``, with ``parameters`` (one value per cell; NaN:
    none)."""
    scope, month = cells // 12, cells % 12
    return [
        Threshold(
            test=test, element=frame.elements[int(scopes.element[s])].code, station=stations[int(scopes.station[s])],
            month=int(m) + 1, duration_seconds=int(scopes.duration[s]), max_gap_seconds=int(gap_seconds[s]),
            history_values=int(scopes.history[cell]),
            **{name: _number(values[index]) for name, values in parameters.items()},  # type: ignore[arg-type]
        )
        for index, (cell, s, m) in enumerate(zip(cells.tolist(), scope.tolist(), month.tolist()))  # per threshold
    ]


def _number(value: float | int) -> float | int | None:
    """A parameter as stored: NaN is none."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _scope_resolutions(frame: Frame, scopes: _Scopes, series: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The resolution of each scope's history (of the ``rows`` chosen): the coarsest of its
    series' (there is one series per scope, usually)."""
    per_series = resolutions(frame.value[rows], series[rows], frame.series_count)
    resolution = np.full(scopes.count, np.nan)
    np.fmax.at(resolution, scopes.of_series, per_series)
    return resolution


def _default_gaps(frame: Frame, scopes: _Scopes) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive rows (the gap a rule without ``max_gap_seconds`` allows: the duration, or
    an hour for point values) and that gap in seconds per scope."""
    no_rule = np.full(frame.series_count * 12, np.nan)
    linked = frame.consecutive(gap_us(frame, no_rule))
    gap_seconds = np.where(scopes.duration > 0, scopes.duration, 3600)
    return linked, gap_seconds


def derive_step_thresholds(
    frame: Frame, stations: Mapping[int, str], methods: Mapping[str, StepMethod] = DEFAULT_STEP_METHODS
) -> list[Threshold]:
    """Station/month step limits (``max_change``) from the changes between consecutive values
    of each series in ``frame`` (see the module docstring).  ``stations``: WIGOS id by station
    id.  Pure: no database, no files."""
    if not frame.rows:
        return []
    scopes = _scopes(frame)
    k = _per_scope(scopes, frame, methods, "k")
    floor = _per_scope(scopes, frame, methods, "min_change")
    needed = _per_scope(scopes, frame, methods, "min_values")
    linked, gap_seconds = _default_gaps(frame, scopes)
    series = frame.row_series()
    with_method = ~np.isnan(k)[scopes.of_series[series]]
    rows = np.flatnonzero(linked & with_method)
    change = np.abs(frame.value[rows] - frame.value[rows - 1])
    groups, changes = month_window(scopes.of_series[series[rows]] * 12 + frame.month[rows], change)
    quantiles = grouped_quantiles(changes, groups, scopes.count * 12, TAIL_QUANTILES)
    cell_scope = np.repeat(np.arange(scopes.count), 12)
    step = _scope_resolutions(frame, scopes, series, with_method)[cell_scope]
    limit = np.fmax(tail_limit(quantiles[:, 0], quantiles[:, 1], k[cell_scope], np.nan_to_num(step)),
                    floor[cell_scope])
    limit = np.ceil(np.round(limit * 10, 6)) / 10  # up to a tenth: a limit, not a measurement
    cells = np.flatnonzero(~np.isnan(limit) & (scopes.history >= needed[cell_scope]))
    return _thresholds(QcTest.STEP, frame, scopes, stations, cells, gap_seconds,
                       {"max_change": limit[cells].tolist()})


def derive_persistence_thresholds(
    frame: Frame, stations: Mapping[int, str],
    methods: Mapping[str, PersistenceMethod] = DEFAULT_PERSISTENCE_METHODS,
) -> list[Threshold]:
    """Station/month run limits (``max_run``) from the runs of equal consecutive values of
    each series in ``frame``, with the resolution the series are recorded at (see the module
    docstring).  Pure: no database, no files."""
    if not frame.rows:
        return []
    scopes = _scopes(frame)
    k = _per_scope(scopes, frame, methods, "k")
    floor = _per_scope(scopes, frame, methods, "min_run")
    needed = _per_scope(scopes, frame, methods, "min_values")
    exclude_by_element = np.array([methods[e.code].exclude_value if e.code in methods
                                   and methods[e.code].exclude_value is not None else np.nan
                                   for e in frame.elements], dtype=np.float64)
    exclude = np.repeat(exclude_by_element[frame.series_element], 12) if frame.elements else np.empty(0)
    linked, gap_seconds = _default_gaps(frame, scopes)
    series = frame.row_series()
    starts, lengths = value_runs(frame, linked, exclude)
    keep = ~np.isnan(k)[scopes.of_series[series[starts]]]
    starts, lengths = starts[keep], lengths[keep]
    groups = scopes.of_series[series[starts]] * 12 + frame.month[starts]
    cell_scope = np.repeat(np.arange(scopes.count), 12)
    limit = np.full(scopes.count * 12, np.nan)
    for value in np.unique(k[~np.isnan(k)]).tolist():  # one k for all elements, usually
        uses = (k[scopes.of_series[series[starts]]] == value)
        found, _ = run_length_limits(lengths[uses], groups[uses], scopes.count * 12, value, window=True)
        limit = np.where(k[cell_scope] == value, found, limit)
    limit = np.fmax(limit, floor[cell_scope])
    cells = np.flatnonzero(~np.isnan(limit) & (scopes.history >= needed[cell_scope]))
    resolution = _scope_resolutions(frame, scopes, series, ~np.isnan(k)[scopes.of_series[series]])
    exclude_per_scope = exclude_by_element[scopes.element] if frame.elements else np.empty(0)
    return _thresholds(QcTest.PERSISTENCE, frame, scopes, stations, cells, gap_seconds, {
        "max_run": limit[cells].astype(np.int64).tolist(),
        "exclude_value": exclude_per_scope[cells // 12].tolist(),
        "resolution": np.round(resolution[cells // 12], 6).tolist(),
    })


# --------------------------------------------------------------------------- storing


@dataclass(frozen=True)
class DerivedThresholds:
    """What :func:`derive_and_store_thresholds` did: thresholds derived from the data, new
    versions stored (the others equal the thresholds in force), and station-months whose
    record was too short for a threshold (the network or global rule applies there)."""

    derived: int
    stored: int
    too_short: int = 0


_ARCHIVE_SQL = """
SELECT wigos_id AS station, element, phenomenon_time, duration_seconds, value
FROM observations
WHERE list_contains($elements, element)
  AND ($stations IS NULL OR list_contains($stations, station_id))
  AND ($start IS NULL OR phenomenon_time >= $start)
  AND ($end IS NULL OR phenomenon_time <= $end)
  AND value IS NOT NULL AND final_flag IS DISTINCT FROM 'rejected'
"""

_METHOD_TEXT = {
    QcTest.RANGE: "derived: quartiles -/+ k*IQR of the station's values per calendar month",
    QcTest.STEP: "derived: q99 + k*(q99 - q90) of the station's changes between consecutive values, "
                 "calendar month and the months either side",
    QcTest.PERSISTENCE: "derived: q99 + k*(q99 - q90) of the lengths of the station's runs of equal values, "
                        "calendar month and the months either side, at the resolution recorded",
}


def derive_and_store_thresholds(
    datastore: Datastore,
    bucket: Bucket,
    *,
    user: str,
    tests: Sequence[QcTest | str] = DERIVED_TESTS,
    stations: Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    methods: Mapping[str, DerivationMethod] = DEFAULT_METHODS,
    step_methods: Mapping[str, StepMethod] = DEFAULT_STEP_METHODS,
    persistence_methods: Mapping[str, PersistenceMethod] = DEFAULT_PERSISTENCE_METHODS,
    reason: str | None = None,
) -> DerivedThresholds:
    """Derive station/month thresholds of ``tests`` (range, step, persistence) from the
    archived values (rejected values left out) and store those that differ from the
    thresholds in force as new versions."""
    chosen = parse_tests(tests)
    if set(chosen) - set(DERIVED_TESTS):
        raise QcParameterError("tests", f"only {', '.join(t.value for t in DERIVED_TESTS)} thresholds are derived")
    with datastore.engine.connect() as connection:
        scope = resolve_scope(connection, stations=stations, elements=elements, start=start, end=end, tests=None)
    by_id = {s.id: s.wigos_id for s in scope.stations.values()}
    sequence_methods = {QcTest.STEP: step_methods, QcTest.PERSISTENCE: persistence_methods}
    sequence_codes = {e.code for test in chosen if test in sequence_methods for e in scope.elements
                      if e.code in sequence_methods[test]}
    export_archive(datastore, bucket)
    derived: dict[QcTest, list[Threshold]] = {}
    too_short = 0
    with reading_archive(datastore, bucket) as (archive, files):
        if QcTest.RANGE in chosen:
            observations = archive.sql(_ARCHIVE_SQL, params={
                "elements": [e.code for e in scope.elements if e.code in methods],
                "stations": sorted(scope.station_ids) if scope.station_ids is not None else None,
                "start": scope.start, "end": scope.end,
            }).to_arrow_table()
            derived[QcTest.RANGE] = derive_range_thresholds(observations, methods)
        if sequence_codes:
            frame = load_frame(archive, FrameRequest(
                elements=tuple(e for e in scope.elements if e.code in sequence_codes),
                scope_element_ids=frozenset(e.id for e in scope.elements if e.code in sequence_codes),
                read_station_ids=scope.station_ids, scope_station_ids=scope.station_ids,
                start=scope.start, end=scope.end, margin_seconds=0, without_rejected=True,
            ), files)
            for test, derive in ((QcTest.STEP, derive_step_thresholds),
                                 (QcTest.PERSISTENCE, derive_persistence_thresholds)):
                if test in chosen:
                    derived[test] = derive(frame, by_id, sequence_methods[test])  # type: ignore[operator]
                    too_short += _too_short(frame, sequence_methods[test], len(derived[test]))
    period = f"{scope.start:%Y-%m-%d}" if scope.start else "start"
    period += f"..{scope.end:%Y-%m-%d}" if scope.end else "..end"
    stored = 0
    for test, thresholds in derived.items():
        stored += add_thresholds(
            datastore, thresholds, user=user, method=f"{_METHOD_TEXT[test]}, {period}",
            reason=reason or f"station/month {test.value} thresholds derived from the archived values",
        )
    return DerivedThresholds(derived=sum(len(t) for t in derived.values()), stored=stored, too_short=too_short)


def _too_short(frame: Frame, methods: Mapping[str, StepMethod | PersistenceMethod], derived: int) -> int:
    """Station-months of elements with a method that have values but got no threshold."""
    scopes = _scopes(frame)
    with_method = ~np.isnan(_per_scope(scopes, frame, methods, "min_values"))
    cells = np.repeat(with_method, 12) & (scopes.history > 0)
    return max(int(cells.sum()) - derived, 0)


def derive_and_store_range_thresholds(
    datastore: Datastore,
    bucket: Bucket,
    *,
    user: str,
    stations: Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    methods: Mapping[str, DerivationMethod] = DEFAULT_METHODS,
    reason: str | None = None,
) -> DerivedThresholds:
    """Derive and store station/month range thresholds only (see
    :func:`derive_and_store_thresholds`)."""
    return derive_and_store_thresholds(
        datastore, bucket, user=user, tests=(QcTest.RANGE,), stations=stations, elements=elements,
        start=start, end=end, methods=methods, reason=reason,
    )
