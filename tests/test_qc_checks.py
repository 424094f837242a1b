"""The QC check families on small hand-made archives (no database): what each flags, and what not.

Each test builds an in-memory DuckDB ``observations`` view with the archive's columns, reads it
with the QC frame loader and runs one check with hand-written rules, so that every expected
flag (and every expected silence) is stated here.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from itertools import count

import duckdb
import numpy as np
import pyarrow as pa
import pytest

from opencdms_kernel.qc import QcTest, derive_range_thresholds
from opencdms_kernel.qc.consistency import check_consistency
from opencdms_kernel.qc.flags import staged_rows
from opencdms_kernel.qc.frame import ElementInfo, Frame, FrameRequest, StationInfo, load_frame
from opencdms_kernel.qc.persistence import check_persistence
from opencdms_kernel.qc.range import check_range
from opencdms_kernel.qc.rules import _THRESHOLD_SCHEMA, RelationRule, RuleSet, resolve
from opencdms_kernel.qc.model import Severity
from opencdms_kernel.qc.spatial import check_spatial
from opencdms_kernel.qc.step import check_step
from opencdms_kernel.qc.thresholds import DerivationMethod

TMAX = ElementInfo(1, "TMAX", -90.0, 60.0)
TMIN = ElementInfo(2, "TMIN", -90.0, 60.0)
TMEAN = ElementInfo(3, "TMEAN", -90.0, 60.0)
PRCP = ElementInfo(4, "PRCP", 0.0, 2000.0)
TDEW = ElementInfo(11, "TDEW", -100.0, 40.0)
ELEMENTS = (TMAX, TMIN, TMEAN, PRCP, TDEW)
DAY = 86400
START = datetime(2001, 1, 1, tzinfo=timezone.utc)


def day(n: int) -> datetime:
    return START + timedelta(days=n)


def archive(rows: list[tuple[int, str, datetime, float | None]], duration: int = DAY) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose ``observations`` view holds ``rows`` (station id, element,
    time, value) with the archive's columns (shuffled, so the loader has to sort)."""
    order = np.random.default_rng(7).permutation(len(rows))
    rows = [rows[i] for i in order]
    table = pa.table({
        "wigos_id": [f"0-20000-0-{s}" for s, _, _, _ in rows],
        "station_id": pa.array([s for s, _, _, _ in rows], pa.int32()),
        "phenomenon_time": pa.array([t for _, _, t, _ in rows], pa.timestamp("us", tz="UTC")),
        "duration_seconds": pa.array([duration] * len(rows), pa.int32()),
        "level": pa.array([0.0] * len(rows), pa.float32()),
        "source_id": pa.array([1] * len(rows), pa.int16()),
        "value": pa.array([v for _, _, _, v in rows], pa.float64()),
        "qc_status": ["none"] * len(rows),
        "final_flag": pa.array([None] * len(rows), pa.string()),
        "version": pa.array([1] * len(rows), pa.int32()),
        "changed_at": pa.array([START] * len(rows), pa.timestamp("us", tz="UTC")),
        "element": [e for _, e, _, _ in rows],
        "year": pa.array([t.year for _, _, t, _ in rows], pa.int32()),
    })
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.register("observation_rows", table)
    connection.execute("CREATE TABLE observations AS SELECT * FROM observation_rows")
    return connection


def frame_of(rows: list[tuple[int, str, datetime, float | None]], **request: object) -> Frame:
    defaults: dict[str, object] = dict(
        elements=ELEMENTS, scope_element_ids=frozenset(e.id for e in ELEMENTS), read_station_ids=None,
        scope_station_ids=None, start=None, end=None, margin_seconds=2 * DAY,
    )
    return load_frame(archive(rows), FrameRequest(**{**defaults, **request}))  # type: ignore[arg-type]


_ids = count(1)


def rules(*thresholds: dict[str, object], relations: tuple[RelationRule, ...] = ()) -> RuleSet:
    """A rule set from threshold rows given as dicts (test, element_id, scope, parameters)."""
    rows = []
    for given in thresholds:
        row: dict[str, object] = {name: None for name in _THRESHOLD_SCHEMA.names}
        row.update(id=next(_ids), version=1, severity="suspect")
        row.update(given)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=_THRESHOLD_SCHEMA)
    return RuleSet(table, relations, threshold_as_of=0, relation_as_of=0)


def flagged(frame: Frame, rows: np.ndarray) -> list[tuple[int, str, int]]:
    """(station, element code, day number) of frame rows."""
    series = frame.series_of(rows)
    days = (frame.time[rows] - int(START.timestamp()) * 1_000_000) // (DAY * 1_000_000)
    return [(int(frame.series_station[s]), frame.elements[frame.series_element[s]].code, int(d))
            for s, d in zip(series, days)]


# --------------------------------------------------------------------------- step


def test_step_flags_the_spike_alone_and_a_lasting_jump_once() -> None:
    values = [20.0, 20.5, 21.0, 35.0, 21.2, 21.4, 21.0, 31.0, 31.2, 31.1, 30.9]
    rows = [(1, "TMAX", day(i), v) for i, v in enumerate(values)]
    rows += [(1, "TMAX", day(20), 20.0), (1, "TMAX", day(22), 40.0)]  # a day missing between: not consecutive
    frame = frame_of(rows)
    found = check_step(frame, resolve(rules({"test": "step", "element_id": 1, "max_change": 8.0}), QcTest.STEP, frame))
    assert flagged(frame, found.rows) == [(1, "TMAX", 3), (1, "TMAX", 7)]
    assert found.flag.to_pylist() == ["spike", "step"]
    assert found.details["change"].to_pylist() == pytest.approx([14.0, 10.0])
    assert found.tested == len(rows) and not found.failed.any()


def test_step_applies_only_where_a_rule_exists() -> None:
    rows = [(1, "PRCP", day(i), v) for i, v in enumerate([0.0, 0.0, 150.0, 0.0])]
    frame = frame_of(rows)
    found = check_step(frame, resolve(rules({"test": "step", "element_id": 1, "max_change": 8.0}), QcTest.STEP, frame))
    assert found.rows.size == 0 and found.tested == 0


# --------------------------------------------------------------------------- persistence


def test_persistence_flags_long_runs_whole_but_not_dry_spells() -> None:
    tmax = [20.1, 22.0, 22.0, 22.0, 22.0, 22.0, 22.0, 19.0, 18.0, 18.0, 18.0, 18.0, 18.0, 17.5]
    prcp = [0.0] * 30 + [2.5, 2.5, 2.5, 0.0, 1.0, 1.0, 3.0]
    rows = [(1, "TMAX", day(i), v) for i, v in enumerate(tmax)] + [(1, "PRCP", day(i), v) for i, v in enumerate(prcp)]
    frame = frame_of(rows)
    ruleset = rules(
        {"test": "persistence", "element_id": 1, "max_run": 5},
        {"test": "persistence", "element_id": 4, "max_run": 2, "exclude_value": 0.0},
    )
    found = check_persistence(frame, resolve(ruleset, QcTest.PERSISTENCE, frame))
    # Six equal TMAX values (days 1-6) exceed 5; five (days 8-12) do not; thirty dry days are
    # normal; three equal rain amounts (days 30-32) exceed 2, two (34-35) do not.
    assert flagged(frame, found.rows) == [(1, "TMAX", d) for d in range(1, 7)] + [(1, "PRCP", d) for d in (30, 31, 32)]
    assert found.details["length"].to_pylist() == [6] * 6 + [3] * 3
    assert found.details["since"].to_pylist()[0] == day(1)


def test_persistence_variance_floor_flags_a_stuck_noisy_sensor() -> None:
    rng = np.random.default_rng(3)
    normal = 25 + rng.normal(0, 1.5, 30)
    stuck = 24.0 + np.array([0.0, 0.1, 0.0, 0.1, 0.1, 0.0, 0.1, 0.0])
    values = np.round(np.concatenate([normal[:10], stuck, normal[10:]]), 1)
    frame = frame_of([(1, "TMAX", day(i), float(v)) for i, v in enumerate(values)])
    ruleset = rules({"test": "persistence", "element_id": 1, "max_run": 5, "min_spread": 0.5})
    found = check_persistence(frame, resolve(ruleset, QcTest.PERSISTENCE, frame))
    days = [d for _, _, d in flagged(frame, found.rows)]
    assert set(range(10, 18)) <= set(days) and len(days) <= 10
    assert "low_spread" in found.flag.to_pylist()


# --------------------------------------------------------------------------- consistency


def test_consistency_flags_both_values_of_a_broken_relation() -> None:
    rows = [(1, "TMAX", day(0), 25.0), (1, "TMIN", day(0), 15.0),
            (1, "TMAX", day(1), 14.0), (1, "TMIN", day(1), 24.0),  # swapped
            (1, "TMIN", day(2), 30.0),  # no TMAX that day: nothing to compare
            (2, "TMAX", day(1), 10.0), (1, "TMEAN", day(3), 20.0), (1, "TDEW", day(3), 20.3),
            (1, "TMEAN", day(4), 20.0), (1, "TDEW", day(4), 20.8), (1, "PRCP", day(5), -1.0)]
    relations = (
        RelationRule(101, 2, TMIN.id, "<=", TMAX.id, None, 0.0, Severity.FAILED),
        RelationRule(102, 1, TDEW.id, "<=", TMEAN.id, None, 0.5, Severity.SUSPECT),
        RelationRule(103, 1, PRCP.id, ">=", None, 0.0, 0.0, Severity.FAILED),
    )
    frame = frame_of(rows)
    found = check_consistency(frame, relations)
    # Frame order: elements as requested (TMAX, TMIN, TMEAN, PRCP, TDEW), then station, time.
    assert flagged(frame, found.rows) == [(1, "TMAX", 1), (1, "TMIN", 1), (1, "TMEAN", 4), (1, "PRCP", 5), (1, "TDEW", 4)]
    assert found.flag.to_pylist() == ["TMIN<=TMAX", "TMIN<=TMAX", "TDEW<=TMEAN", "PRCP>=0", "TDEW<=TMEAN"]
    assert found.rule.to_pylist() == ["qc_relation:101"] * 2 + ["qc_relation:102", "qc_relation:103", "qc_relation:102"]
    assert found.version.to_pylist() == [2, 2, 1, 1, 1]
    assert found.failed.tolist() == [True, True, False, True, False]
    assert found.details["other"].to_pylist() == [24.0, 14.0, 20.8, None, 20.0]


# --------------------------------------------------------------------------- range


def test_range_takes_the_most_specific_threshold_then_the_physical_limits() -> None:
    july, august = datetime(2001, 7, 15, tzinfo=timezone.utc), datetime(2001, 8, 15, tzinfo=timezone.utc)
    rows = [(1, "TMAX", july, 22.0), (1, "TMAX", august, 35.0), (2, "TMAX", july, 27.0),
            (2, "TMAX", august, 31.0), (3, "TMAX", july, 70.0), (3, "TMIN", july, 9.0)]
    ruleset = rules(
        {"id": 1, "test": "range", "element_id": 1, "low": 0.0, "high": 30.0},
        {"id": 2, "test": "range", "element_id": 1, "month": 7, "low": 5.0, "high": 25.0, "version": 3},
        {"id": 3, "test": "range", "element_id": 1, "station_id": 1, "low": -5.0, "high": 40.0},
        {"id": 4, "test": "range", "element_id": 1, "station_id": 1, "month": 7, "duration_seconds": DAY,
         "low": 10.0, "high": 20.0, "severity": "failed"},
    )
    frame = frame_of(rows)
    found = check_range(frame, resolve(ruleset, QcTest.RANGE, frame))
    assert [(s, e) for s, e, _ in flagged(frame, found.rows)] == [(1, "TMAX"), (2, "TMAX"), (2, "TMAX"), (3, "TMAX")]
    assert found.rule.to_pylist() == ["qc_threshold:4", "qc_threshold:2", "qc_threshold:1", "element:TMAX"]
    assert found.version.to_pylist() == [1, 3, 1, None]
    assert found.flag.to_pylist() == ["above_range", "above_range", "above_range", "above_physical_limit"]
    assert found.failed.tolist() == [True, False, False, True]
    assert found.details["high"].to_pylist() == [20.0, 25.0, 30.0, 60.0]


def test_range_and_scope_context_values_are_not_flagged() -> None:
    rows = [(1, "TMAX", day(i), 99.0 if i in (0, 9) else 20.0) for i in range(10)]
    frame = frame_of(rows, start=day(3), end=day(6))
    found = check_range(frame, resolve(rules(), QcTest.RANGE, frame))
    assert found.rows.size == 0  # the 99s lie in the margin read for context only
    assert found.tested == 4


# --------------------------------------------------------------------------- spatial


def test_spatial_flags_an_outlier_and_skips_an_isolated_station_with_a_reason() -> None:
    rng = np.random.default_rng(11)
    weather = 25 + np.cumsum(rng.normal(0, 1, 60))
    stations = {i: StationInfo(i, f"0-20000-0-{i}", -1.0 + 0.05 * i, 36.0 + 0.03 * i) for i in range(1, 6)}
    stations[9] = StationInfo(9, "0-20000-0-9", 4.0, 41.0)  # about 600 km away
    rows = []
    for station in stations:
        offset = station * 0.7  # each station has its own level; anomalies remove it
        for d in range(60):
            value = weather[d] + offset + rng.normal(0, 0.3)
            if station == 3 and d == 40:
                value += 8.0
            rows.append((station, "TMAX", day(d), round(float(value), 1)))
    frame = frame_of(rows)
    ruleset = rules({"test": "spatial", "element_id": 1, "radius_km": 100.0, "min_neighbours": 3, "max_z": 5.0})
    found = check_spatial(frame, resolve(ruleset, QcTest.SPATIAL, frame), stations)
    assert flagged(frame, found.rows) == [(3, "TMAX", 40)]
    assert found.details["neighbours"].to_pylist() == [4]
    assert len(found.skipped) == 1
    skipped = found.skipped[0]
    assert (skipped.station, skipped.element, skipped.values) == ("0-20000-0-9", "TMAX", 60)
    assert "fewer than 3 neighbours" in skipped.reason and "100 km" in skipped.reason
    assert found.skipped_values == 60 and found.tested == 5 * 60


# --------------------------------------------------------------------------- derived thresholds, entries


def test_derive_range_thresholds_uses_quartiles_of_each_station_month() -> None:
    rng = np.random.default_rng(5)
    times, values, elements = [], [], []
    for d in range(365 * 4):
        moment = datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(days=d)
        times += [moment, moment]
        values += [20 + 5 * (moment.month == 7) + rng.normal(0, 1), float(rng.gamma(0.8, 6)) if rng.random() < 0.4 else 0.0]
        elements += ["TMAX", "PRCP"]
    table = pa.table({"station": ["0-20000-0-1"] * len(times), "element": elements,
                      "phenomenon_time": pa.array(times, pa.timestamp("us", tz="UTC")),
                      "duration_seconds": pa.array([DAY] * len(times), pa.int32()), "value": values})
    derived = derive_range_thresholds(table, {"TMAX": DerivationMethod(k=3.0),
                                              "PRCP": DerivationMethod(k=8.0, positive_only=True, min_values=20)})
    by_key = {(t.element, t.month): t for t in derived}
    assert len(derived) == 24
    months = np.array([t.month for t in times])
    tmax, prcp = np.array(values[0::2]), np.array(values[1::2])
    for month in range(1, 13):
        q1, q3 = np.quantile(tmax[months[0::2] == month], [0.25, 0.75])
        assert by_key[("TMAX", month)].low == pytest.approx(q1 - 3 * (q3 - q1), abs=0.006)
        assert by_key[("TMAX", month)].high == pytest.approx(q3 + 3 * (q3 - q1), abs=0.006)
        wet = prcp[(months[1::2] == month) & (prcp > 0)]
        q1, q3 = np.quantile(wet, [0.25, 0.75])
        assert by_key[("PRCP", month)].low is None
        assert by_key[("PRCP", month)].high == pytest.approx(q3 + 8 * max(q3 - q1, 0.5), abs=0.006)
    assert by_key[("TMAX", 7)].low > by_key[("TMAX", 6)].low + 3  # July is warmer here
    assert all(t.station == "0-20000-0-1" and t.duration_seconds == DAY for t in derived)
    too_few = derive_range_thresholds(table.slice(0, 100), {"TMAX": DerivationMethod(min_values=60)})
    assert too_few == []


def test_findings_become_one_entry_per_test_with_rule_version_and_run() -> None:
    rows = [(1, "TMAX", day(0), 25.0), (1, "TMIN", day(0), 26.0), (1, "TMAX", day(1), 75.0)]
    frame = frame_of(rows)
    relations = (RelationRule(7, 2, TMIN.id, "<=", TMAX.id, None, 0.0, Severity.FAILED),)
    found = [check_range(frame, resolve(rules(), QcTest.RANGE, frame)), check_consistency(frame, relations)]
    staged = staged_rows(frame, found, run_id=42).to_pylist()
    entries = {(row["element_id"], row["phenomenon_time"].day): json.loads(row["entries"]) for row in staged}
    assert entries[(1, 2)] == {"range": {"result": "failed", "flag": "above_physical_limit", "rule": "element:TMAX",
                                         "run": 42, "low": -90.0, "high": 60.0}}
    assert entries[(1, 1)]["consistency"] == {"result": "failed", "flag": "TMIN<=TMAX", "rule": "qc_relation:7",
                                              "version": 2, "run": 42, "other": 26.0}
    assert set(entries[(2, 1)]) == {"consistency"}
    assert all(row["version"] == 1 and row["station_id"] == 1 for row in staged)
