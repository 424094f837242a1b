"""A QC run from start to end: scope, snapshot, checks, sparse write-back, coverage record.

1. The request is checked (unknown stations or elements, start after end, unknown tests:
   errors naming the parameter) and a ``qc_run`` row is written with status ``running``.
2. The Parquet archive is brought up to date (``export_archive`` rewrites only partitions
   changed since the last export) and its watermark becomes the run's ``data_as_of``.
3. The values in scope — plus context: a time margin for consecutive-value checks, the
   partner elements of relations, the neighbours of the stations for the spatial check — are
   read from the archive into sorted columns (:mod:`.frame`).
4. Each test computes its findings over whole columns (:mod:`.range`, :mod:`.step`,
   :mod:`.persistence`, :mod:`.consistency`, :mod:`.spatial`).
5. Findings and previously flagged values are staged and merged into PostgreSQL in one
   transaction (:mod:`.flags`), which also marks the run ``finished`` with its counts: the
   flags and the coverage record become visible together.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import date, datetime
from types import MappingProxyType
from typing import Callable, Iterator, Sequence

import numpy as np
import sqlalchemy as sa

from opencdms_kernel.archive import Manifest, archive_files, connect_archive, export_archive, read_manifest
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest.load import identify_writer, lock_ingest
from opencdms_kernel.qc.consistency import check_consistency
from opencdms_kernel.qc.flags import Findings, staged_rows, write_back
from opencdms_kernel.qc.frame import ElementInfo, Frame, FrameRequest, load_frame
from opencdms_kernel.qc.model import (
    QcParameterError,
    QcRunResult,
    QcStatus,
    QcTest,
    TestCounts,
)
from opencdms_kernel.qc.persistence import check_persistence
from opencdms_kernel.qc.range import check_range
from opencdms_kernel.qc.rules import RuleSet, load_rules, resolve
from opencdms_kernel.qc.scope import Scope, resolve_scope
from opencdms_kernel.qc.spatial import check_spatial
from opencdms_kernel.qc.step import check_step
from opencdms_kernel.qc.tables import qc_run

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
    with _archive_read_lock(datastore):
        manifest = read_manifest(bucket)
        archive = connect_archive(bucket, manifest)
        try:
            archive.execute("SET TimeZone = 'UTC'")
            frame = load_frame(archive, _frame_request(scope, rules), _archive_files(bucket, manifest))
        finally:
            archive.close()
    done("read")
    findings: list[Findings] = []
    for test in QcTest:
        if test in scope.tests:
            findings.append(_check(test, frame, rules, scope))
        done(test.value)
    staged = staged_rows(frame, findings, run_id)
    counts, status_counts, checked = _counts(frame, findings)
    skipped = tuple(entry for found in findings for entry in found.skipped)
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


@contextmanager
def _archive_read_lock(datastore: Datastore) -> Iterator[None]:
    """Hold the archive exporters' advisory lock while reading, so that no export replaces
    partition files under the reader (exports wait; reads take about a second)."""
    with datastore.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('opencdms.archive'))"))
        try:
            yield
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('opencdms.archive'))"))


def _archive_files(bucket: Bucket, manifest: Manifest | None) -> Callable[[str], list[str]]:
    """The Parquet files of one element in the archive generation read, as DuckDB names them."""

    def files(code: str) -> list[str]:
        return archive_files(bucket, manifest, code)

    return files


def _frame_request(scope: Scope, rules: RuleSet) -> FrameRequest:
    """What to read: the scope, plus partner elements of relations and the neighbours of
    the stations in scope, and a time margin covering the longest consecutive-value rule."""
    wanted = set(scope.element_ids)
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


def _check(test: QcTest, frame: Frame, rules: RuleSet, scope: Scope) -> Findings:
    if test is QcTest.RANGE:
        return check_range(frame, resolve(rules, test, frame))
    if test is QcTest.STEP:
        return check_step(frame, resolve(rules, test, frame))
    if test is QcTest.PERSISTENCE:
        return check_persistence(frame, resolve(rules, test, frame))
    if test is QcTest.CONSISTENCY:
        return check_consistency(frame, rules.relations)
    return check_spatial(frame, resolve(rules, test, frame), scope.stations)


def _counts(frame: Frame, findings: list[Findings]) -> tuple[dict[QcTest, TestCounts], dict[QcStatus, int], int]:
    """Per test (tested, suspect, failed, skipped), and the automatic status of the values
    checked: the worst result of any test, passed where none raised anything."""
    counts = {
        found.test: TestCounts(tested=found.tested, suspect=found.suspect_count, failed=found.failed_count,
                               skipped=found.skipped_values)
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
