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

from opencdms_kernel.demo.streams import ar1
from opencdms_kernel.qc import (
    PersistenceMethod,
    QcTest,
    StepMethod,
    derive_persistence_thresholds,
    derive_range_thresholds,
    derive_step_thresholds,
)
from opencdms_kernel.qc.consistency import check_consistency
from opencdms_kernel.qc.flags import staged_rows
from opencdms_kernel.qc.frame import ElementInfo, Frame, FrameRequest, StationInfo, load_frame
from opencdms_kernel.qc.persistence import check_persistence
from opencdms_kernel.qc.range import check_range
from opencdms_kernel.qc.rules import _THRESHOLD_SCHEMA, RelationRule, RuleSet, resolve
from opencdms_kernel.qc.model import Severity
from opencdms_kernel.qc.series import resolutions, run_length_limits
from opencdms_kernel.qc.spatial import check_spatial
from opencdms_kernel.qc.step import check_step
from opencdms_kernel.qc.thresholds import DerivationMethod

TMAX = ElementInfo(1, "TMAX", -90.0, 60.0)
TMIN = ElementInfo(2, "TMIN", -90.0, 60.0)
TMEAN = ElementInfo(3, "TMEAN", -90.0, 60.0)
PRCP = ElementInfo(4, "PRCP", 0.0, 2000.0)
TDEW = ElementInfo(11, "TDEW", -100.0, 40.0)
PRES = ElementInfo(8, "PRES", 450.0, 1100.0)
ELEMENTS = (TMAX, TMIN, TMEAN, PRCP, TDEW, PRES)
DAY = 86400
HOUR = 3600
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


def frame_of(rows: list[tuple[int, str, datetime, float | None]], duration: int = DAY, **request: object) -> Frame:
    defaults: dict[str, object] = dict(
        elements=ELEMENTS, scope_element_ids=frozenset(e.id for e in ELEMENTS), read_station_ids=None,
        scope_station_ids=None, start=None, end=None, margin_seconds=2 * DAY,
    )
    return load_frame(archive(rows, duration), FrameRequest(**{**defaults, **request}))  # type: ignore[arg-type]


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


def test_a_step_back_from_a_block_is_not_flagged_but_a_lasting_jump_is() -> None:
    # Ten days keyed 18 K too high (the way a month in Fahrenheit looks), then a front that stays.
    values = [20.0, 20.4, 20.1] + [38.0, 38.5, 38.2, 38.8, 38.1, 38.0, 38.6, 38.3, 38.4, 38.2] + [20.3, 20.0, 20.2]
    values += [20.1, 9.0, 9.4, 9.1]
    frame = frame_of([(1, "TMAX", day(i), v) for i, v in enumerate(values)])
    found = check_step(frame, resolve(rules({"test": "step", "element_id": 1, "max_change": 8.0}), QcTest.STEP, frame))
    # Day 3 enters the block (flagged); day 13, back at the old level, is the first good value
    # again; day 17's fall does not come back within the block's reach, so it is a step.
    assert flagged(frame, found.rows) == [(1, "TMAX", 3), (1, "TMAX", 17)]


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


def test_resolution_is_the_smallest_common_step_of_the_values() -> None:
    rng = np.random.default_rng(2)
    pressure = 1000 + np.cumsum(rng.normal(0, 0.8, 500))
    fahrenheit = 50 + np.cumsum(rng.normal(0, 2, 500))
    celsius = (np.rint(fahrenheit) - 32) * 5 / 9
    series = [np.rint(pressure), np.round(pressure, 1), np.round(celsius, 6), np.round(celsius, 1)]
    found = resolutions(np.concatenate(series), np.repeat(np.arange(4), 500), 4)
    # Whole hPa, tenths, whole °F in °C; whole °F in tenths of °C steps by 0.5 or 0.6, whose
    # common divisor 0.1 is not how finely it was recorded.
    assert found.tolist() == pytest.approx([1.0, 0.1, 5 / 9, 0.5], abs=1e-5)
    assert np.isnan(resolutions(np.array([1.0, 2.0, 3.0]), np.zeros(3, np.int64), 1)[0])  # too few changes


@pytest.mark.parametrize("repeat", [0.035, 0.3, 0.7, 0.85])
def test_run_limits_extrapolate_the_runs_own_geometric_tail(repeat: float) -> None:
    lengths = np.random.default_rng(1).geometric(1 - repeat, 20_000)
    usual, runs = run_length_limits(lengths, np.zeros(lengths.size, np.int64), 1, k=3.0)
    rarer, _ = run_length_limits(lengths, np.zeros(lengths.size, np.int64), 1, k=5.0)
    # A run longer than the limit has a probability of 10**-(2 + k): repeat**limit <= that.
    assert usual[0] == pytest.approx(np.log(1e-5) / np.log(repeat), abs=1.5) and runs[0] == lengths.size
    assert rarer[0] == pytest.approx(np.log(1e-7) / np.log(repeat), abs=2.0) and rarer[0] > usual[0]


def pressure_station(rng: np.random.Generator, hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Hourly station pressure (synoptic swings, tide, noise) and temperature, unrounded."""
    hour = np.arange(hours)
    phi = np.exp(-1 / 30)
    synoptic = ar1(ar1(rng.normal(0, 1, hours), phi), phi)
    pressure = (1000 + 5 * synoptic / synoptic.std() + 0.5 * np.cos(4 * np.pi * (hour % 24 - 10) / 24)
                + rng.normal(0, 0.12, hours))
    temperature = 15 + 5 * np.cos(2 * np.pi * (hour % 24 - 15) / 24) + np.cumsum(rng.normal(0, 0.2, hours))
    return pressure, temperature


def test_persistence_judges_runs_by_the_resolution_and_the_other_elements() -> None:
    rng = np.random.default_rng(4)
    hours = 24 * 60
    pressure, temperature = pressure_station(rng, hours)
    whole, tenths, temp = np.rint(pressure), np.round(pressure, 1), np.round(temperature, 1)
    frozen = temp.copy()
    whole[700:720], frozen[700:720] = whole[700], frozen[700]  # station 1's logger froze for 20 hours
    tenths[300:312] = tenths[300]  # station 2's pressure sensor stuck for 12 hours, the rest moved on
    start = datetime(2001, 1, 1, tzinfo=timezone.utc)
    rows = [(station, element, start + timedelta(hours=h), float(values[h]))
            for station, series in ((1, {"PRES": whole, "TMEAN": frozen}), (2, {"PRES": tenths, "TMEAN": temp}))
            for element, values in series.items() for h in range(hours)]
    frame = frame_of(rows, duration=HOUR)
    ruleset = rules(*({"test": "persistence", "element_id": e.id, "duration_seconds": HOUR, "max_run": 8,
                       "resolution": 0.1} for e in (PRES, TMEAN)))
    found = check_persistence(frame, resolve(ruleset, QcTest.PERSISTENCE, frame))
    hour = (frame.time[found.rows] - int(start.timestamp()) * 1_000_000) // (HOUR * 1_000_000)
    by_series: dict[tuple[int, str], list[int]] = {}
    for (station, element, _), h in zip(flagged(frame, found.rows), hour.tolist()):
        by_series.setdefault((station, element), []).append(h)
    # Whole hPa has many genuine runs longer than 8 hours; none is flagged while the
    # temperature keeps changing.  The frozen logger is: every element repeated.
    genuine = np.diff(np.flatnonzero(np.r_[True, whole[1:] != whole[:-1], True]))
    assert (genuine > 8).sum() >= 20 and (genuine >= 12).sum() >= 4
    assert set(by_series) == {(1, "PRES"), (1, "TMEAN"), (2, "PRES")}
    assert set(range(700, 720)) <= set(by_series[(1, "PRES")]) <= set(range(690, 730))
    assert by_series[(1, "TMEAN")] == list(range(700, 720))
    # In tenths a 12-hour run is a stuck sensor, though the temperature moved on.
    assert by_series[(2, "PRES")] == list(range(300, 312))
    details = {name: found.details[name].to_pylist() for name in ("others", "resolution", "limit", "threshold")}
    station = [s for s, _, _ in flagged(frame, found.rows)]
    assert {(s, o) for s, o in zip(station, details["others"])} == {(1, "unchanged"), (2, "changing")}
    assert set(zip([e for _, e, _ in flagged(frame, found.rows)], station, details["resolution"])) == {
        ("PRES", 1, 1.0), ("TMEAN", 1, 0.1), ("PRES", 2, 0.1)}
    # The frozen logger is held to the rule's 8; while the others change, the stuck sensor is
    # judged against its own runs in tenths (at 1 in 10 million), which still end before 12.
    limits = {(s, limit) for s, limit in zip(station, details["limit"])}
    assert {limit for s, limit in limits if s == 1} == {8}
    assert all(8 <= limit < 12 for s, limit in limits if s == 2) and set(details["threshold"]) == {"network"}


def test_derived_step_and_persistence_thresholds_follow_the_station_and_the_month() -> None:
    rng = np.random.default_rng(9)
    days = 365 * 8
    dates = [datetime(2000, 1, 1, tzinfo=timezone.utc) + timedelta(days=d) for d in range(days)]
    month = np.array([d.month for d in dates])
    # Day-to-day changes four times as large in January as in July; recorded in whole degrees.
    weather = np.cumsum(rng.normal(0, np.where(month == 1, 4.0, np.where(month == 7, 1.0, 2.0)))) * 0.3
    tmax = np.rint(15 + 10 * np.sin(2 * np.pi * (np.arange(days) - 100) / 365.25) + weather - weather.mean())
    keep = ~((month == 6) & (np.arange(days) > 365))  # June only in the first year: too short
    rows = [(1, "TMAX", d, float(v)) for d, v, k in zip(dates, tmax, keep) if k]
    frame = frame_of(rows)
    stations = {1: "0-20000-0-1"}
    steps = {t.month: t for t in derive_step_thresholds(frame, stations, {"TMAX": StepMethod(min_change=1.0)})}
    assert 6 not in steps and len(steps) == 11  # 30 June values: fewer than the 120 needed
    assert steps[1].max_change >= steps[7].max_change + 3
    assert all(t.test is QcTest.STEP and t.station == "0-20000-0-1" and t.duration_seconds == DAY
               and t.max_gap_seconds == DAY for t in steps.values())
    assert steps[7].history_values == 8 * 31 and steps[1].history_values == 8 * 31
    # July: q99 + 3 * max(q99 - q90, resolution) of the changes of June to August.
    change = np.abs(np.diff(tmax))[keep[1:] & keep[:-1]]
    summer = np.isin(month[1:][keep[1:] & keep[:-1]], (6, 7, 8))
    q90, q99 = np.quantile(change[summer], [0.9, 0.99])
    assert steps[7].max_change == pytest.approx(np.ceil((q99 + 3 * max(q99 - q90, 1.0)) * 10) / 10)
    runs = {t.month: t for t in derive_persistence_thresholds(frame, stations, {"TMAX": PersistenceMethod()})}
    assert 6 not in runs and all(t.resolution == 1.0 for t in runs.values())  # whole degrees
    assert runs[7].max_run > runs[1].max_run >= 3  # small changes in whole degrees repeat more
    assert all(t.exclude_value is None and t.history_values == 8 * 31 for t in (runs[1], runs[7]))


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
    assert found.details["threshold"].to_pylist() == ["global"]  # the rule names no station or duration
    isolated, *march = found.skipped
    assert (isolated.station, isolated.element, isolated.values) == ("0-20000-0-9", "TMAX", 60)
    assert "fewer than 3 neighbours" in isolated.reason and "100 km" in isolated.reason
    # The spread is estimated per calendar month: day 59 (1 March) is alone in its month.
    assert sorted(s.station for s in march) == [f"0-20000-0-{i}" for i in range(1, 6)]
    assert all(s.values == 1 and "fewer than 10 values of the calendar month" in s.reason for s in march)
    assert found.skipped_values == 60 + 5 and found.tested == 5 * 59
    # A minimum difference: the 8 K outlier is far out in z, but not 10 K from its neighbours.
    floor = rules({"test": "spatial", "element_id": 1, "radius_km": 100.0, "min_neighbours": 3, "max_z": 5.0,
                   "min_difference": 10.0})
    assert check_spatial(frame, resolve(floor, QcTest.SPATIAL, frame), stations).rows.size == 0
    assert found.details["difference"].to_pylist() == [pytest.approx(8.0, abs=1.0)]


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
                                         "run": 42, "low": -90.0, "high": 60.0, "threshold": "global"}}
    assert entries[(1, 1)]["consistency"] == {"result": "failed", "flag": "TMIN<=TMAX", "rule": "qc_relation:7",
                                              "version": 2, "run": 42, "other": 26.0}
    assert set(entries[(2, 1)]) == {"consistency"}
    assert all(row["version"] == 1 and row["station_id"] == 1 for row in staged)
