"""Spatial (buddy) check: each value against its neighbours at the same time.

Rules (``qc_threshold`` test ``spatial``) per element and duration: ``radius_km``,
``min_neighbours`` and ``max_z``.  Each value and each neighbour's value becomes an anomaly
(the value minus its series' median for the calendar month), so that stations at different
altitudes compare.  The difference between a value's anomaly and the median anomaly of its
neighbours is turned into a robust z-score with the median and MAD of that station's
differences in the same calendar month (the spread of such differences follows the seasons:
where showers are local, a wet season's days differ more between neighbours than a dry
season's); beyond ``max_z`` — and at least ``min_difference`` away, where the rule sets one
(a local shower takes 2 K off one station's maximum, which is many spreads where neighbours
agree within a few tenths) — the value is flagged ``outlier``.  Where fewer than
``min_neighbours`` neighbours have a value, the value is skipped, and the run records how
many values of which series were skipped and why.  All of it is one DuckDB query.
"""

from __future__ import annotations

from typing import Mapping

import duckdb
import numpy as np
import pyarrow as pa

from opencdms_kernel.qc.flags import Findings
from opencdms_kernel.qc.frame import Frame, StationInfo
from opencdms_kernel.qc.model import QcTest, SkippedCheck
from opencdms_kernel.qc.rules import Resolved

# Values a series needs in a calendar month (with enough neighbours) before its spread there
# can be estimated.
MIN_VALUES_FOR_SPREAD = 10
# Smallest spread used (in the element's units): identical neighbours do not give infinite z.
MIN_SPREAD = 0.05

_SQL = f"""
WITH anomaly AS (
    SELECT o.*, o.value - median(o.value) OVER (PARTITION BY o.series, o.month) AS anomaly
    FROM obs AS o
), pairs AS (
    SELECT a.id AS station_id, b.id AS neighbour_id,
           2 * 6371.0 * asin(sqrt(power(sin(radians(b.latitude - a.latitude) / 2), 2)
               + cos(radians(a.latitude)) * cos(radians(b.latitude))
               * power(sin(radians(b.longitude - a.longitude) / 2), 2))) AS km
    FROM stations AS a, stations AS b
    WHERE a.id <> b.id
), target AS (
    SELECT a.*, c.radius_km, c.min_neighbours, c.max_z, c.min_difference
    FROM anomaly AS a JOIN cells AS c ON c.cell = a.cell
    WHERE a.in_scope
), buddies AS (
    SELECT t.frame_row, count(DISTINCT n.station_id) AS neighbours,
           median(n.anomaly) AS neighbour_anomaly
    FROM target AS t
    JOIN pairs AS p ON p.station_id = t.station_id AND p.km <= t.radius_km
    JOIN anomaly AS n ON n.station_id = p.neighbour_id AND n.element = t.element
                     AND n.duration = t.duration AND n.time = t.time
    GROUP BY t.frame_row
), scored AS (
    SELECT t.frame_row, t.series, t.month, t.cell, t.max_z, t.min_difference, t.min_neighbours, t.radius_km,
           coalesce(b.neighbours, 0) AS neighbours,
           t.anomaly - b.neighbour_anomaly AS difference
    FROM target AS t LEFT JOIN buddies AS b ON b.frame_row = t.frame_row
), scale AS (
    SELECT series, month, median(difference) AS centre, 1.4826 * mad(difference) AS spread, count(*) AS n
    FROM scored WHERE neighbours >= min_neighbours
    GROUP BY series, month
)
SELECT s.frame_row, s.series, s.cell, s.neighbours, s.min_neighbours, s.radius_km, s.max_z,
       s.min_difference, coalesce(c.n, 0) AS series_values,
       s.difference - c.centre AS departure,
       (s.difference - c.centre) / greatest(c.spread, {MIN_SPREAD}) AS z
FROM scored AS s LEFT JOIN scale AS c ON c.series = s.series AND c.month = s.month
"""


def check_spatial(frame: Frame, resolved: Resolved, stations: Mapping[int, StationInfo]) -> Findings:
    """Outliers against neighbours within the rule's radius; values with too few neighbours,
    or in a series with too few comparable values, are skipped with a reason."""
    if not resolved.any:
        return Findings.empty(QcTest.SPATIAL)
    with_rule = np.flatnonzero(resolved.rule_id[frame.cell] > 0)
    if not frame.in_scope[with_rule].any():
        return Findings.empty(QcTest.SPATIAL)
    series = frame.row_series()[with_rule]
    obs = pa.table({
        "frame_row": with_rule.astype(np.int64),
        "series": series,
        "station_id": frame.series_station[series],
        "element": frame.series_element[series],
        "duration": frame.series_duration[series],
        "time": frame.time[with_rule],
        "value": frame.value[with_rule],
        "month": frame.month[with_rule],
        "cell": frame.cell[with_rule],
        "in_scope": frame.in_scope[with_rule],
    })
    used_cells = np.unique(frame.cell[with_rule])
    cells = pa.table({
        "cell": used_cells,
        "radius_km": resolved.params["radius_km"][used_cells],
        "min_neighbours": resolved.params["min_neighbours"][used_cells],
        "max_z": resolved.params["max_z"][used_cells],
        "min_difference": np.nan_to_num(resolved.params["min_difference"][used_cells]),  # NaN: no floor
    })
    known = [stations[i] for i in np.unique(frame.series_station).tolist() if i in stations]
    station_table = pa.table({
        "id": pa.array([s.id for s in known], pa.int32()),
        "latitude": pa.array([s.latitude for s in known], pa.float64()),
        "longitude": pa.array([s.longitude for s in known], pa.float64()),
    })
    with duckdb.connect() as db:
        db.register("obs", obs)
        db.register("cells", cells)
        db.register("stations", station_table)
        scored = db.sql(_SQL).to_arrow_table()
    frame_row = scored.column("frame_row").to_numpy()
    neighbours = scored.column("neighbours").to_numpy()
    min_neighbours = scored.column("min_neighbours").to_numpy()
    series_values = scored.column("series_values").to_numpy()
    z = scored.column("z").to_numpy(zero_copy_only=False).astype(np.float64)
    departure = scored.column("departure").to_numpy(zero_copy_only=False).astype(np.float64)
    too_few_neighbours = neighbours < min_neighbours
    too_few_values = ~too_few_neighbours & (series_values < MIN_VALUES_FOR_SPREAD)
    skipped_mask = too_few_neighbours | too_few_values
    with np.errstate(invalid="ignore"):
        outlier = (~skipped_mask & (np.abs(z) > scored.column("max_z").to_numpy())
                   & (np.abs(departure) >= scored.column("min_difference").to_numpy()))
    skipped = _skipped(frame, scored, too_few_neighbours, too_few_values, stations)
    tested = int((~skipped_mask).sum())
    rows = frame_row[outlier]
    if not rows.size:
        return Findings.empty(QcTest.SPATIAL, tested=tested, skipped_values=int(skipped_mask.sum()),
                              skipped=skipped)
    order = np.argsort(rows)
    rows = rows[order]
    return Findings.of_thresholds(
        QcTest.SPATIAL, rows, frame, resolved,
        flag=pa.array(np.full(rows.size, "outlier")),
        details={"z": pa.array(z[outlier][order]), "difference": pa.array(departure[outlier][order]),
                 "neighbours": pa.array(neighbours[outlier][order].astype(np.int64))},
        tested=tested,
        skipped_values=int(skipped_mask.sum()),
        skipped=skipped,
    )


def _skipped(
    frame: Frame, scored: pa.Table, too_few_neighbours: np.ndarray, too_few_values: np.ndarray,
    stations: Mapping[int, StationInfo],
) -> tuple[SkippedCheck, ...]:
    """One entry per series and reason: how many values were skipped."""
    series = scored.column("series").to_numpy()
    radius = scored.column("radius_km").to_numpy()
    needed = scored.column("min_neighbours").to_numpy()
    entries = []
    for mask, reason in ((too_few_neighbours, "fewer than {needed:g} neighbours with a value within {radius:g} km"),
                         (too_few_values, f"fewer than {MIN_VALUES_FOR_SPREAD} values of the calendar month "
                                          "with enough neighbours to estimate the spread")):
        if not mask.any():
            continue
        keys, first, counts = np.unique(series[mask], return_index=True, return_counts=True)
        for key, index, count in zip(keys.tolist(), first.tolist(), counts.tolist()):  # per series
            station = stations.get(int(frame.series_station[key]))
            entries.append(SkippedCheck(
                test=QcTest.SPATIAL,
                station=station.wigos_id if station else str(frame.series_station[key]),
                element=frame.elements[int(frame.series_element[key])].code,
                values=int(count),
                reason=reason.format(needed=needed[mask][index], radius=radius[mask][index]),
            ))
    return tuple(entries)
