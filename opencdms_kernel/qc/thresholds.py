"""Station/month range thresholds derived from the data, stored as new rule versions.

:func:`derive_range_thresholds` is pure: observations in, thresholds out (one per station,
element, duration and calendar month with enough values).  The limits are Tukey's fences,
``Q1 - k * IQR`` and ``Q3 + k * IQR`` of the station's own values for that calendar month:
quartiles barely move when a few values are wrong (a whole month keyed in Fahrenheit is one
value in ten of that calendar month over ten years), so the fences can be derived from data
that still holds the errors they are meant to find.  With k = 3 a normal variable passes
4.7 standard deviations from its mean.  Accumulated elements (rain, evaporation) are skewed
and mostly zero: their upper fence comes from the non-zero values, with a larger k, and they
get no lower fence (the element's physical minimum applies).

:func:`derive_and_store_range_thresholds` reads the archive, derives, and stores the result
with :func:`opencdms_kernel.qc.rules.add_thresholds` (a new version where a fence changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Mapping, Sequence

import duckdb
import pyarrow as pa

from opencdms_kernel.archive import connect_archive, export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.qc.model import QcParameterError, QcTest
from opencdms_kernel.qc.rules import Threshold, add_thresholds
from opencdms_kernel.qc.scope import resolve_scope


@dataclass(frozen=True)
class DerivationMethod:
    """How one element's station/month fences are derived.

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


_TEMPERATURE = DerivationMethod(k=3.0, min_iqr=0.5)
DEFAULT_METHODS: Mapping[str, DerivationMethod] = {
    "TMAX": _TEMPERATURE, "TMIN": _TEMPERATURE, "TMEAN": _TEMPERATURE, "TDEW": _TEMPERATURE,
    "TSOIL": _TEMPERATURE,
    "PRES": DerivationMethod(k=3.0, min_iqr=1.0), "MSLP": DerivationMethod(k=3.0, min_iqr=1.0),
    "RH": DerivationMethod(k=3.0, min_iqr=2.0),
    "PRCP": DerivationMethod(k=8.0, positive_only=True, min_values=20, min_iqr=1.0),
    "EVAP": DerivationMethod(k=8.0, positive_only=True, min_values=20, min_iqr=1.0),
}

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
                  duration_seconds=int(duration), low=low, high=high)
        for station, element, duration, month, _, low, high in rows  # one per threshold
    ]


@dataclass(frozen=True)
class DerivedThresholds:
    """What :func:`derive_and_store_range_thresholds` did."""

    derived: int  # thresholds derived from the data
    stored: int  # new versions stored (the others equal the thresholds in force)


_ARCHIVE_SQL = """
SELECT wigos_id AS station, element, phenomenon_time, duration_seconds, value
FROM observations
WHERE list_contains($elements, element)
  AND ($stations IS NULL OR list_contains($stations, station_id))
  AND ($start IS NULL OR phenomenon_time >= $start)
  AND ($end IS NULL OR phenomenon_time <= $end)
  AND value IS NOT NULL AND final_flag IS DISTINCT FROM 'rejected'
"""


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
    """Derive station/month range thresholds from the archived values (rejected values left
    out) and store those that differ from the thresholds in force as new versions."""
    with datastore.engine.connect() as connection:
        scope = resolve_scope(connection, stations=stations, elements=elements, start=start, end=end, tests=None)
    codes = [e.code for e in scope.elements if e.code in methods]
    export_archive(datastore, bucket)
    archive = connect_archive(bucket)
    try:
        observations = archive.sql(_ARCHIVE_SQL, params={
            "elements": codes,
            "stations": sorted(scope.station_ids) if scope.station_ids is not None else None,
            "start": scope.start, "end": scope.end,
        }).to_arrow_table()
    finally:
        archive.close()
    thresholds = derive_range_thresholds(observations, methods)
    period = f"{scope.start:%Y-%m-%d}" if scope.start else "start"
    period += f"..{scope.end:%Y-%m-%d}" if scope.end else "..end"
    method = f"derived: quartiles -/+ k*IQR of the station's values per calendar month, {period}"
    stored = add_thresholds(
        datastore, thresholds, user=user, method=method,
        reason=reason or "station/month range thresholds derived from the archived values",
    )
    return DerivedThresholds(derived=len(thresholds), stored=stored)
