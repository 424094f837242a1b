"""A QC run from start to end: scope, snapshot, checks, sparse write-back, coverage record.

1. The request is checked (unknown stations or elements, start after end, unknown tests:
   errors naming the parameter) and a ``qc_run`` row is written with status ``running``.
2. The Parquet archive is brought up to date (``export_archive`` rewrites only partitions
   changed since the last export) and its watermark becomes the run's ``data_as_of``.
3. The values in scope — plus context: a time margin for consecutive-value checks, the
   partner elements of relations, the station's other elements for the persistence check,
   the neighbours of the stations for the spatial check — are read from the archive into
   sorted columns (:mod:`.frame`).
4. The rule of each test in force for every series and calendar month is resolved, with its
   level (station, network, global); where a network or global rule stands in for the
   station's own, the station's record of that calendar month is counted in the archive, so
   that findings and the run can say why (too short, or not derived yet).
5. Each test computes its findings over whole columns (:mod:`.range`, :mod:`.step`,
   :mod:`.persistence`, :mod:`.consistency`, :mod:`.spatial`).
6. Findings and previously flagged values are staged and merged into PostgreSQL in one
   transaction (:mod:`.flags`), which also marks the run ``finished`` with its counts (values
   tested per threshold level) and its fallbacks: the flags and the coverage record become
   visible together.
"""

from __future__ import annotations

import time
from datetime import date, datetime
from types import MappingProxyType
from typing import Callable, Sequence

import duckdb
import numpy as np
import sqlalchemy as sa

from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest.load import identify_writer, lock_ingest
from opencdms_kernel.qc.consistency import check_consistency
from opencdms_kernel.qc.flags import Findings, staged_rows, write_back
from opencdms_kernel.qc.frame import ElementInfo, Frame, FrameRequest, load_frame, reading_archive
from opencdms_kernel.qc.model import (
    THRESHOLD_TESTS,
    QcParameterError,
    QcRunResult,
    QcStatus,
    QcTest,
    TestCounts,
)
from opencdms_kernel.qc.persistence import check_persistence
from opencdms_kernel.qc.range import check_range
from opencdms_kernel.qc.rules import (
    GLOBAL,
    LEVELS,
    MONTH_NAMES,
    NETWORK,
    NO_RULE,
    Resolved,
    RuleSet,
    load_rules,
    resolve,
    with_fallback_reasons,
)
from opencdms_kernel.qc.scope import Scope, resolve_scope
from opencdms_kernel.qc.spatial import check_spatial
from opencdms_kernel.qc.step import check_step
from opencdms_kernel.qc.tables import qc_run
from opencdms_kernel.qc.thresholds import DERIVED_TESTS, min_values_needed

Progress = Callable[[str, int, int], None]

STAGES = ("archive", "read", *(test.value for test in QcTest), "write")
# Context read before and after the period, at least: consecutive-value checks need the
# values just outside it.
MIN_MARGIN_SECONDS = 2 * 86400


def run_qc(
    datastore: Datastore,
    bucket: Bucket,
    *,
    user: str,
    stations: Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    start: date | datetime | None = None,
    end: date | datetime | None = None,
    tests: Sequence[QcTest | str] | None = None,
    progress: Progress | None = None,
) -> QcRunResult:
    """Run the QC tests (default: all) on the observations in scope and write the flags back.

    ``stations``: WIGOS ids; ``elements``: codes; ``start``/``end``: inclusive, UTC (a date
    covers its whole UTC day).  None means no limit.  Flags are set, values never changed.
    ``progress(stage, done, total)`` is called as the stages (:data:`STAGES`) finish.
    """
    started = time.perf_counter()
    if not isinstance(user, str) or not user.strip():
        raise QcParameterError("user", "name who runs QC (it is recorded with every change)")
    with datastore.engine.connect() as connection:
        scope = resolve_scope(connection, stations=stations, elements=elements, start=start, end=end, tests=tests)
    with datastore.engine.begin() as connection:
        run_id = connection.execute(
            sa.insert(qc_run).values(
                requested_by=user,
                tests=[test.value for test in scope.tests],
                station_ids=sorted(scope.station_ids) if scope.station_ids is not None else None,
                element_ids=None if scope.all_elements_in_scope else sorted(scope.element_ids),
                period_start=scope.start,
                period_end=scope.end,
            ).returning(qc_run.c.id)
        ).scalar_one()
    try:
        return _run(datastore, bucket, scope, run_id, user, progress, started)
    except BaseException as exc:
        with datastore.engine.begin() as connection:
            connection.execute(
                sa.update(qc_run).where(qc_run.c.id == run_id)
                .values(status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=sa.func.clock_timestamp())
            )
        raise


def _run(
    datastore: Datastore, bucket: Bucket, scope: Scope, run_id: int, user: str,
    progress: Progress | None, started: float,
) -> QcRunResult:
    stage_seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def done(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        stage_seconds[stage] = now - clock
        clock = now
        if progress is not None:
            progress(stage, STAGES.index(stage) + 1, len(STAGES))

    exported = export_archive(datastore, bucket)
    done("archive")
    with datastore.engine.connect() as connection:
        rules = load_rules(connection)
    with reading_archive(datastore, bucket) as (archive, files):
        frame = load_frame(archive, _frame_request(scope, rules), files)
        resolved = {test: resolve(rules, test, frame) for test in THRESHOLD_TESTS if test in scope.tests}
        if QcTest.RANGE in resolved:  # where no range rule applies, the physical range does
            resolved[QcTest.RANGE].level[resolved[QcTest.RANGE].level == NO_RULE] = GLOBAL
        resolved = _explain_fallbacks(archive, frame, resolved, whole_record=scope.start is None and scope.end is None)
    done("read")
    findings: list[Findings] = []
    for test in QcTest:
        if test in scope.tests:
            findings.append(_check(test, frame, rules, resolved, scope))
        done(test.value)
    staged = staged_rows(frame, findings, run_id)
    counts, status_counts, checked = _counts(frame, findings, resolved)
    skipped = tuple(entry for found in findings for entry in found.skipped)
    fallbacks = _fallbacks(frame, resolved, scope)
    with datastore.engine.begin() as connection:
        identify_writer(connection, user, f"quality control run {run_id}")
        lock_ingest(connection)  # merges and QC write-backs touch the same rows one at a time
        written, stale = write_back(connection, staged, scope.tests)
        connection.execute(
            sa.update(qc_run).where(qc_run.c.id == run_id).values(
                status="finished",
                threshold_as_of=rules.threshold_as_of,
                relation_as_of=rules.relation_as_of,
                data_as_of=exported.watermark,
                checked=checked,
                written=written,
                stale=stale,
                counts={test.value: vars(c) for test, c in counts.items()},
                skipped=[{**vars(s), "test": s.test.value} for s in skipped],
                fallbacks=fallbacks,
                seconds=time.perf_counter() - started,
                finished_at=sa.func.clock_timestamp(),
            )
        )
    done("write")
    return QcRunResult(
        run_id=run_id,
        tests=scope.tests,
        checked=checked,
        counts=MappingProxyType(counts),
        status_counts=MappingProxyType(status_counts),
        written=written,
        stale=stale,
        skipped=skipped,
        data_as_of=exported.watermark,
        seconds=time.perf_counter() - started,
        stage_seconds=MappingProxyType(stage_seconds),
    )


def _frame_request(scope: Scope, rules: RuleSet) -> FrameRequest:
    """What to read: the scope, plus partner elements of relations, the station's other
    elements (persistence asks whether they changed during a run) and the neighbours of the
    stations in scope, and a time margin covering the longest consecutive-value rule."""
    wanted = set(scope.element_ids)
    if QcTest.PERSISTENCE in scope.tests:
        wanted = {e.id for e in scope.all_elements}
    if QcTest.CONSISTENCY in scope.tests:
        for relation in rules.relations:
            sides = {relation.left_element_id, relation.right_element_id} - {None}
            if sides & scope.element_ids:
                wanted |= sides  # type: ignore[arg-type]
    elements: tuple[ElementInfo, ...] = tuple(e for e in scope.all_elements if e.id in wanted)
    read_stations = scope.station_ids
    if read_stations is not None and QcTest.SPATIAL in scope.tests:
        read_stations = _with_neighbours(scope, rules)
    return FrameRequest(
        elements=elements,
        scope_element_ids=scope.element_ids,
        read_station_ids=read_stations,
        scope_station_ids=scope.station_ids,
        start=scope.start,
        end=scope.end,
        margin_seconds=_margin_seconds(rules),
    )


def _margin_seconds(rules: RuleSet) -> int:
    """Enough context for the longest run and the widest gap of the rules in force."""
    table = rules.thresholds
    gaps = [value for name in ("max_gap_seconds", "duration_seconds")
            for value in table.column(name).to_pylist() if value is not None]
    runs = [value for value in table.column("max_run").to_pylist() if value is not None]
    gap = max(gaps, default=86400)
    return int(max(MIN_MARGIN_SECONDS, gap * (max(runs, default=1) + 2)))


def _with_neighbours(scope: Scope, rules: RuleSet) -> frozenset[int]:
    """The stations in scope and every station within the largest spatial radius of them."""
    radii = [r for r in rules.for_test(QcTest.SPATIAL).column("radius_km").to_pylist() if r is not None]
    assert scope.station_ids is not None
    if not radii:
        return scope.station_ids
    ids = np.array(sorted(scope.stations), dtype=np.int64)
    latitude = np.radians([scope.stations[i].latitude for i in ids])
    longitude = np.radians([scope.stations[i].longitude for i in ids])
    chosen = np.isin(ids, np.fromiter(scope.station_ids, np.int64))
    # Haversine distances from each chosen station to every station (stations, not values).
    dlat = latitude[None, :] - latitude[chosen][:, None]
    dlon = longitude[None, :] - longitude[chosen][:, None]
    a = np.sin(dlat / 2) ** 2 + np.cos(latitude[chosen])[:, None] * np.cos(latitude)[None, :] * np.sin(dlon / 2) ** 2
    km = 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    near = (km <= max(radii)).any(axis=0)
    return frozenset(ids[near].tolist()) | scope.station_ids


_HISTORY_SQL = """
SELECT station_id, element, duration_seconds,
       CAST(month(make_timestamp(epoch_us(phenomenon_time) + CAST(duration_seconds AS BIGINT) * 500000)) - 1
            AS INTEGER) AS month,
       count(*) AS n
FROM observations
WHERE value IS NOT NULL AND list_contains($stations, station_id) AND list_contains($elements, element)
GROUP BY ALL
"""


def _explain_fallbacks(
    archive: duckdb.DuckDBPyConnection, frame: Frame, resolved: dict[QcTest, Resolved], whole_record: bool
) -> dict[QcTest, Resolved]:
    """The resolved rules of the tests whose thresholds are derived, with the reason why a
    network or global rule applies where it does: the station's record of that calendar
    month, against what the default derivation needs.  ``whole_record``: the frame holds
    every value of its series, so it is counted there; otherwise the archive is."""
    derived = [test for test in resolved if test in DERIVED_TESTS]
    fallback = np.zeros(frame.series_count * 12, bool)
    for test in derived:
        fallback |= resolved[test].level >= NETWORK
    if not fallback.any():
        return resolved
    if whole_record:
        history = np.bincount(frame.cell, minlength=frame.series_count * 12).astype(np.int64)
    else:
        history = _archived_history(archive, frame, np.unique(np.flatnonzero(fallback) // 12))
    explained = dict(resolved)
    for test in derived:
        per_element = np.array([min_values_needed(test, e.code) for e in frame.elements], np.int64)
        needed = np.repeat(per_element[frame.series_element], 12)
        explained[test] = with_fallback_reasons(resolved[test], history, needed)
    return explained


def _archived_history(archive: duckdb.DuckDBPyConnection, frame: Frame, series: np.ndarray) -> np.ndarray:
    """Per cell of ``series``: the station's values of that calendar month in the whole
    archive (-1 for the cells of other series)."""
    codes = sorted({frame.elements[int(frame.series_element[s])].code for s in series})
    counted = archive.sql(_HISTORY_SQL, params={
        "stations": sorted(set(frame.series_station[series].tolist())), "elements": codes,
    }).fetchall()
    by_key = {(station, element, duration, month): n for station, element, duration, month, n in counted}
    history = np.full(frame.series_count * 12, -1, np.int64)
    for s in series.tolist():  # one per series judged by a fallback somewhere
        key = (int(frame.series_station[s]), frame.elements[int(frame.series_element[s])].code,
               int(frame.series_duration[s]))
        history[s * 12:(s + 1) * 12] = [by_key.get((*key, month), 0) for month in range(12)]
    return history


def _fallbacks(frame: Frame, resolved: dict[QcTest, Resolved], scope: Scope) -> list[dict[str, object]]:
    """For the qc_run row: per test, series and reason, the values in scope judged by a
    network or global threshold instead of the station's own, and in which months."""
    entries: list[dict[str, object]] = []
    for test, rules in resolved.items():
        if test not in DERIVED_TESTS or rules.fallback is None:
            continue
        cells = np.flatnonzero((rules.level >= NETWORK) & (frame.scope_counts > 0))
        grouped: dict[tuple[int, int, str], list[int]] = {}
        for cell in cells.tolist():  # one per series and month judged by a fallback
            reason = str(rules.fallback[cell])
            # The reason without its month and counts: one entry per kind of reason.
            kind = reason.split(":")[0].split(" (")[0]
            grouped.setdefault((cell // 12, int(rules.level[cell]), kind), []).append(cell)
        for (series, level, kind), group in grouped.items():
            station = scope.stations.get(int(frame.series_station[series]))
            entries.append({
                "test": test.value,
                "station": station.wigos_id if station else str(frame.series_station[series]),
                "element": frame.elements[int(frame.series_element[series])].code,
                "duration_seconds": int(frame.series_duration[series]),
                "threshold": LEVELS[level],
                "values": int(frame.scope_counts[group].sum()),
                "months": [MONTH_NAMES[cell % 12] for cell in group],
                "reason": kind,
                "detail": [str(rules.fallback[cell]) for cell in group],
            })
    return entries


def _check(test: QcTest, frame: Frame, rules: RuleSet, resolved: dict[QcTest, Resolved], scope: Scope) -> Findings:
    if test is QcTest.RANGE:
        return check_range(frame, resolved[test])
    if test is QcTest.STEP:
        return check_step(frame, resolved[test])
    if test is QcTest.PERSISTENCE:
        return check_persistence(frame, resolved[test])
    if test is QcTest.CONSISTENCY:
        return check_consistency(frame, rules.relations)
    return check_spatial(frame, resolved[test], scope.stations)


def _counts(
    frame: Frame, findings: list[Findings], resolved: dict[QcTest, Resolved]
) -> tuple[dict[QcTest, TestCounts], dict[QcStatus, int], int]:
    """Per test (tested, suspect, failed, skipped, and for threshold tests the values tested
    per level of threshold), and the automatic status of the values checked: the worst
    result of any test, passed where none raised anything."""
    counts = {
        found.test: TestCounts(tested=found.tested, suspect=found.suspect_count, failed=found.failed_count,
                               skipped=found.skipped_values, thresholds=_by_level(frame, resolved.get(found.test)))
        for found in findings
    }
    checked = int(frame.in_scope.sum())
    failed_rows = np.unique(np.concatenate([f.rows[f.failed] for f in findings] or [np.empty(0, np.int64)]))
    suspect_rows = np.unique(np.concatenate([f.rows[~f.failed] for f in findings] or [np.empty(0, np.int64)]))
    suspect_rows = np.setdiff1d(suspect_rows, failed_rows, assume_unique=True)
    status_counts = {
        QcStatus.PASSED: checked - failed_rows.size - suspect_rows.size,
        QcStatus.SUSPECT: int(suspect_rows.size),
        QcStatus.FAILED: int(failed_rows.size),
    }
    return counts, status_counts, checked


def _by_level(frame: Frame, rules: Resolved | None) -> dict[str, int]:
    """Values in scope per level of the threshold that judged them (none for relations)."""
    if rules is None:
        return {}
    per_level = np.bincount(rules.level, weights=frame.scope_counts, minlength=len(LEVELS))
    return {LEVELS[level]: int(n) for level, n in enumerate(per_level.tolist()) if level != NO_RULE and n}
