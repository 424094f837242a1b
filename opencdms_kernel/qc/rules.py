"""QC rules: versioned thresholds (``qc_threshold``) and inter-element relations (``qc_relation``).

A rule is never edited: :func:`add_thresholds` and :func:`add_relations` insert the next
version of each rule's scope (identical ones are skipped), and a database trigger refuses
UPDATE and DELETE.  A run uses the newest version of every scope among the rows that existed
when it started (``as_of``, recorded in ``qc_run``), so its results can be traced to the exact
rule rows, which each finding names (``"rule": "qc_threshold:12", "version": 3``).

Which threshold applies to a value: the most specific active rule of the test for the value's
element — station before network, then calendar month, then duration.  The range test's last
fallback is the element's physical range (``element.valid_min/valid_max``).  Each cell
(series and calendar month) records the *level* of the rule in force: ``station`` (a rule of
that station, usually derived from its own history), ``network`` (a rule for every station,
for the series' duration) or ``global`` (a rule for every station and duration); each finding
names it, and why a station's own threshold did not apply (:func:`with_fallback_reasons`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest.load import identify_writer
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import (
    THRESHOLD_TESTS,
    QcParameterError,
    QcTest,
    Severity,
    UnknownQcReferenceError,
)

OPERATORS = ("<", "<=", "=", ">=", ">")

# Parameters of each threshold test: (column, required).
PARAMETERS: dict[QcTest, tuple[tuple[str, bool], ...]] = {
    QcTest.RANGE: (("low", False), ("high", False)),
    QcTest.STEP: (("max_change", True), ("max_gap_seconds", False)),
    QcTest.PERSISTENCE: (("max_run", True), ("exclude_value", False), ("min_spread", False),
                         ("max_gap_seconds", False), ("resolution", False)),
    QcTest.SPATIAL: (("radius_km", True), ("min_neighbours", True), ("max_z", True), ("min_difference", False)),
}
PARAMETER_COLUMNS = ("low", "high", "max_change", "max_gap_seconds", "max_run", "min_spread",
                     "exclude_value", "radius_km", "min_neighbours", "max_z", "resolution", "min_difference")
# The level of a cell's rule (Resolved.level): no rule, the station's own, the network's
# (every station, one duration), global (every station and duration).
LEVELS = ("none", "station", "network", "global")
NO_RULE, STATION, NETWORK, GLOBAL = range(4)


@dataclass(frozen=True)
class Threshold:
    """One threshold rule as people write it (codes, not ids).

    Scope: ``station`` (WIGOS id; None: the whole network), ``month`` (1..12; None: every
    month), ``duration_seconds`` (None: any).  ``active=False`` withdraws the rule of that scope.
    ``resolution`` (persistence): how finely the values the rule was made for are recorded
    (a run of equal values is longer, normally, in coarser values).  ``min_difference``
    (spatial): a value closer than this to its neighbours is never an outlier.  ``history_values``:
    how many values of the station's history a derived rule came from (provenance only: a
    rule that differs in nothing else is not a new version).
    """

    test: QcTest
    element: str
    station: str | None = None
    month: int | None = None
    duration_seconds: int | None = None
    severity: Severity = Severity.SUSPECT
    active: bool = True
    low: float | None = None
    high: float | None = None
    max_change: float | None = None
    max_gap_seconds: int | None = None
    max_run: int | None = None
    min_spread: float | None = None
    exclude_value: float | None = None
    radius_km: float | None = None
    min_neighbours: int | None = None
    max_z: float | None = None
    resolution: float | None = None
    history_values: int | None = None
    min_difference: float | None = None


@dataclass(frozen=True)
class Relation:
    """One inter-element relation: ``left <operator> right (+/- tolerance)``; ``right`` is an
    element code, or None with ``right_value`` a constant."""

    left: str
    operator: str
    right: str | None = None
    right_value: float | None = None
    tolerance: float = 0.0
    severity: Severity = Severity.SUSPECT
    active: bool = True


@dataclass(frozen=True)
class RelationRule:
    """A relation in force, with ids (as a run uses it)."""

    id: int
    version: int
    left_element_id: int
    operator: str
    right_element_id: int | None
    right_value: float | None
    tolerance: float
    severity: Severity


@dataclass(frozen=True)
class RuleSet:
    """The rules in force for one run: the newest active version of every scope among the
    rows with ``id <= as_of``.  ``thresholds`` has qc_threshold's columns."""

    thresholds: pa.Table
    relations: tuple[RelationRule, ...]
    threshold_as_of: int
    relation_as_of: int

    def for_test(self, test: QcTest) -> pa.Table:
        return self.thresholds.filter(pc.equal(self.thresholds.column("test"), test.value))


@dataclass(frozen=True, eq=False)
class Resolved:
    """The rule of one test in force for every cell (series * 12 + month) of a frame.

    ``rule_id`` 0: no rule.  ``params``: float64 arrays, NaN where the rule has no value.
    ``level``: an index into :data:`LEVELS`.  ``fallback``: per cell, why the station's own
    threshold does not apply where a network or global one does (None: not known, or a
    station rule applies); see :func:`with_fallback_reasons`.
    """

    rule_id: np.ndarray  # int64
    version: np.ndarray  # int32
    failed: np.ndarray  # bool: severity 'failed'
    params: dict[str, np.ndarray]
    level: np.ndarray  # int8
    fallback: np.ndarray | None = None  # object (str or None)

    @property
    def any(self) -> bool:
        return bool((self.rule_id > 0).any())

    def level_names(self, cells: np.ndarray) -> pa.Array:
        """The level of the rule of each of ``cells`` (for the few flagged values)."""
        return pa.array(np.array(LEVELS, dtype=object)[self.level[cells]].tolist(), pa.string())

    def fallback_reasons(self, cells: np.ndarray) -> pa.Array:
        """Why each of ``cells`` is judged by a network or global rule (null elsewhere)."""
        if self.fallback is None:
            return pa.nulls(cells.size, pa.string())
        return pa.array(self.fallback[cells].tolist(), pa.string())


# --------------------------------------------------------------------------- reading


_CURRENT_THRESHOLDS_SQL = sa.text(
    """
    SELECT t.* FROM (
        SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
        FROM qc_threshold AS q
        WHERE q.id <= :as_of
        ORDER BY test, element_id, station_id, month, duration_seconds, version DESC
    ) AS t
    WHERE t.active
    ORDER BY t.id
    """
)
_CURRENT_RELATIONS_SQL = sa.text(
    """
    SELECT t.* FROM (
        SELECT DISTINCT ON (left_element_id, operator, right_element_id, right_value) q.*
        FROM qc_relation AS q
        WHERE q.id <= :as_of
        ORDER BY left_element_id, operator, right_element_id, right_value, version DESC
    ) AS t
    WHERE t.active
    ORDER BY t.severity = :failed DESC, t.id
    """
)
_THRESHOLD_SCHEMA = pa.schema([
    ("id", pa.int64()), ("test", pa.string()), ("element_id", pa.int16()), ("station_id", pa.int32()),
    ("month", pa.int16()), ("duration_seconds", pa.int32()), ("version", pa.int32()),
    ("severity", pa.string()),
    *((name, pa.float64()) for name in PARAMETER_COLUMNS),
    ("history_values", pa.int64()),
])


def load_rules(connection: sa.Connection) -> RuleSet:
    """The rules in force now (read in the caller's transaction)."""
    threshold_as_of = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM qc_threshold")).scalar_one()
    relation_as_of = connection.execute(sa.text("SELECT coalesce(max(id), 0) FROM qc_relation")).scalar_one()
    result = connection.execute(_CURRENT_THRESHOLDS_SQL, {"as_of": threshold_as_of})
    names = list(result.keys())
    columns = list(zip(*result.all())) or [()] * len(names)  # column-wise, in C
    thresholds = pa.table(
        {field.name: pa.array(columns[names.index(field.name)], type=field.type) for field in _THRESHOLD_SCHEMA},
        schema=_THRESHOLD_SCHEMA,
    )
    relations = tuple(
        RelationRule(
            id=row.id, version=row.version, left_element_id=row.left_element_id, operator=row.operator,
            right_element_id=row.right_element_id, right_value=row.right_value, tolerance=row.tolerance,
            severity=Severity(row.severity),
        )
        for row in connection.execute(_CURRENT_RELATIONS_SQL,
                                       {"as_of": relation_as_of, "failed": Severity.FAILED.value})
    )
    return RuleSet(thresholds, relations, int(threshold_as_of), int(relation_as_of))


# Most specific first: station, then month, then duration (True: the rule names it).
_SPECIFICITY = tuple(
    (station, month, duration)
    for station in (True, False) for month in (True, False) for duration in (True, False)
)


def resolve(rules: RuleSet, test: QcTest, frame: Frame) -> Resolved:
    """The rule of ``test`` in force for every cell of ``frame`` (a few small DuckDB joins)."""
    cells = frame.series_count * 12
    resolved = Resolved(
        rule_id=np.zeros(cells, np.int64),
        version=np.zeros(cells, np.int32),
        failed=np.zeros(cells, bool),
        params={name: np.full(cells, np.nan) for name in PARAMETER_COLUMNS},
        level=np.zeros(cells, np.int8),
    )
    table = rules.for_test(test)
    if not table.num_rows or not cells:
        return resolved
    element_ids = np.array([element.id for element in frame.elements], np.int16)
    series = np.repeat(np.arange(frame.series_count, dtype=np.int32), 12)
    cell_table = pa.table({
        "cell": np.arange(cells, dtype=np.int32),
        "element_id": element_ids[frame.series_element][series],
        "station_id": frame.series_station[series],
        "duration_seconds": frame.series_duration[series],
        "month": np.tile(np.arange(1, 13, dtype=np.int16), frame.series_count),
    })
    branches = []
    for priority, (station, month, duration) in enumerate(_SPECIFICITY):
        conditions = ["r.element_id = c.element_id"]
        for named, column in ((station, "station_id"), (month, "month"), (duration, "duration_seconds")):
            conditions.append(f"r.{column} = c.{column}" if named else f"r.{column} IS NULL")
        branches.append(f"SELECT c.cell, r.id, {priority} AS priority FROM cells AS c "
                        f"JOIN rules AS r ON {' AND '.join(conditions)}")
    with duckdb.connect() as db:
        db.register("cells", cell_table)
        db.register("rules", table)
        chosen = db.sql(
            "SELECT b.cell, r.* FROM (SELECT cell, arg_min(id, priority) AS id FROM ("
            + " UNION ALL ".join(branches)
            + ") GROUP BY cell) AS b JOIN rules AS r ON r.id = b.id"
        ).to_arrow_table()
    at = chosen.column("cell").to_numpy()
    resolved.rule_id[at] = chosen.column("id").to_numpy()
    resolved.version[at] = chosen.column("version").to_numpy()
    resolved.failed[at] = chosen.column("severity").to_numpy(zero_copy_only=False) == Severity.FAILED.value
    for name in PARAMETER_COLUMNS:
        resolved.params[name][at] = chosen.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
    has_station = chosen.column("station_id").is_valid().to_numpy(zero_copy_only=False)
    has_duration = chosen.column("duration_seconds").is_valid().to_numpy(zero_copy_only=False)
    resolved.level[at] = np.where(has_station, STATION, np.where(has_duration, NETWORK, GLOBAL))
    return resolved


MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December")


def with_fallback_reasons(resolved: Resolved, history: np.ndarray, needed: np.ndarray) -> Resolved:
    """``resolved`` with the reason, per cell judged by a network or global rule, why no
    station threshold applies: ``history`` holds the station's values of that calendar month
    (its whole record, not only the period checked; -1: not counted), ``needed`` how many a
    derivation needs (0: the element has no derivation method for the test)."""
    fallback = np.full(resolved.level.size, None, dtype=object)
    cells = np.flatnonzero((resolved.level == NETWORK) | (resolved.level == GLOBAL))
    for cell in cells.tolist():  # one per series and month judged by a fallback, not per value
        month = MONTH_NAMES[cell % 12]
        have, need = int(history[cell]), int(needed[cell])
        if need <= 0:
            fallback[cell] = "no station threshold: none is derived for this element and test"
        elif have < 0:
            fallback[cell] = "no station threshold in force"
        elif have < need:
            fallback[cell] = f"station history too short: {have} values of {month}, {need} needed"
        else:
            fallback[cell] = f"no station threshold derived yet ({have} values of {month} available)"
    return replace(resolved, fallback=fallback)


def rule_labels(table: str, ids: np.ndarray) -> pa.Array:
    """``"<table>:<id>"`` for each id (ids of the few flagged values only)."""
    return pc.binary_join_element_wise(
        pa.scalar(f"{table}:"), pa.array(ids.astype(np.int64)).cast(pa.string()), ""
    )


# --------------------------------------------------------------------------- writing


def _reference_ids(connection: sa.Connection) -> tuple[dict[str, int], dict[str, int]]:
    stations = dict(connection.execute(sa.text("SELECT wigos_id, id FROM station")).all())
    elements = dict(connection.execute(sa.text("SELECT code, id FROM element")).all())
    return stations, elements


def _check_known(parameter: str, kind: str, names: set[str], known: dict[str, int]) -> None:
    unknown = sorted(name for name in names if name not in known)
    if unknown:
        raise UnknownQcReferenceError(parameter, kind, tuple(unknown))


def _validate_threshold(index: int, threshold: Threshold) -> None:
    where = f"thresholds[{index}]"
    try:
        test = QcTest(threshold.test)
    except ValueError:
        raise QcParameterError(f"{where}.test", f"{threshold.test!r} is not one of "
                               + ", ".join(t.value for t in THRESHOLD_TESTS)) from None
    if test not in THRESHOLD_TESTS:
        raise QcParameterError(f"{where}.test", f"{test.value} rules are relations (add_relations)")
    if threshold.month is not None and not 1 <= threshold.month <= 12:
        raise QcParameterError(f"{where}.month", f"{threshold.month} is not a month (1..12)")
    if threshold.duration_seconds is not None and threshold.duration_seconds < 0:
        raise QcParameterError(f"{where}.duration_seconds", "must be >= 0")
    allowed = {name for name, _ in PARAMETERS[test]}
    for name in PARAMETER_COLUMNS:
        value = getattr(threshold, name)
        if value is None:
            continue
        if name not in allowed:
            raise QcParameterError(f"{where}.{name}", f"is not a parameter of the {test.value} test")
        if not math.isfinite(value):
            raise QcParameterError(f"{where}.{name}", f"{value} is not a finite number")
    if threshold.history_values is not None and threshold.history_values < 0:
        raise QcParameterError(f"{where}.history_values", "must be >= 0")
    if not threshold.active:
        return
    for name, required in PARAMETERS[test]:
        if required and getattr(threshold, name) is None:
            raise QcParameterError(f"{where}.{name}", f"is required for the {test.value} test")
    if test is QcTest.RANGE:
        if threshold.low is None and threshold.high is None:
            raise QcParameterError(f"{where}.low", "a range rule needs low, high or both")
        if threshold.low is not None and threshold.high is not None and threshold.low > threshold.high:
            raise QcParameterError(f"{where}.low", f"{threshold.low} is above high ({threshold.high})")
    for name in ("max_change", "max_gap_seconds", "max_run", "min_spread", "radius_km", "min_neighbours", "max_z",
                 "resolution", "min_difference"):
        value = getattr(threshold, name)
        if value is not None and value <= 0:
            raise QcParameterError(f"{where}.{name}", f"must be positive, not {value}")


_INSERT_THRESHOLDS_SQL = sa.text(
    """
    WITH new AS (
        SELECT * FROM unnest(
            CAST(:test AS text[]), CAST(:element_id AS smallint[]), CAST(:station_id AS integer[]),
            CAST(:month AS smallint[]), CAST(:duration_seconds AS integer[]), CAST(:active AS boolean[]),
            CAST(:severity AS text[]), CAST(:low AS float8[]), CAST(:high AS float8[]),
            CAST(:max_change AS float8[]), CAST(:max_gap_seconds AS integer[]), CAST(:max_run AS integer[]),
            CAST(:min_spread AS float8[]), CAST(:exclude_value AS float8[]), CAST(:radius_km AS float8[]),
            CAST(:min_neighbours AS integer[]), CAST(:max_z AS float8[]), CAST(:resolution AS float8[]),
            CAST(:min_difference AS float8[]), CAST(:history_values AS integer[]))
        AS n (test, element_id, station_id, month, duration_seconds, active, severity, low, high,
              max_change, max_gap_seconds, max_run, min_spread, exclude_value, radius_km,
              min_neighbours, max_z, resolution, min_difference, history_values)
    ), current AS (
        SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
        FROM qc_threshold AS q
        WHERE q.element_id IN (SELECT element_id FROM new)
        ORDER BY test, element_id, station_id, month, duration_seconds, version DESC
    )
    INSERT INTO qc_threshold (test, element_id, station_id, month, duration_seconds, version, active,
                              severity, low, high, max_change, max_gap_seconds, max_run, min_spread,
                              exclude_value, radius_km, min_neighbours, max_z, resolution,
                              min_difference, history_values, method, reason)
    SELECT n.test, n.element_id, n.station_id, n.month, n.duration_seconds,
           coalesce(c.version, 0) + 1, n.active, n.severity, n.low, n.high, n.max_change,
           n.max_gap_seconds, n.max_run, n.min_spread, n.exclude_value, n.radius_km,
           n.min_neighbours, n.max_z, n.resolution, n.min_difference, n.history_values, :method, :reason
    FROM new AS n
    LEFT JOIN current AS c
      ON c.test = n.test AND c.element_id = n.element_id
     AND coalesce(c.station_id, -1) = coalesce(n.station_id, -1)
     AND coalesce(c.month, -1) = coalesce(n.month, -1)
     AND coalesce(c.duration_seconds, -1) = coalesce(n.duration_seconds, -1)
    WHERE CASE WHEN c.id IS NULL THEN n.active
               ELSE (c.active, c.severity, c.low, c.high, c.max_change, c.max_gap_seconds, c.max_run,
                     c.min_spread, c.exclude_value, c.radius_km, c.min_neighbours, c.max_z, c.resolution,
                     c.min_difference)
                    IS DISTINCT FROM
                    (n.active, n.severity, n.low, n.high, n.max_change, n.max_gap_seconds, n.max_run,
                     n.min_spread, n.exclude_value, n.radius_km, n.min_neighbours, n.max_z, n.resolution,
                     n.min_difference) END
    """
)


def add_thresholds(
    datastore: Datastore, thresholds: Sequence[Threshold], *, user: str, reason: str, method: str = "manual"
) -> int:
    """Store ``thresholds`` as new versions of their scopes, all or none; returns how many rows
    were added (a threshold identical to the one in force adds nothing)."""
    if not reason or not reason.strip():
        raise QcParameterError("reason", "say why the thresholds change")
    for index, threshold in enumerate(thresholds):
        _validate_threshold(index, threshold)
    scopes = [(QcTest(t.test), t.element, t.station, t.month, t.duration_seconds) for t in thresholds]
    if len(set(scopes)) != len(scopes):
        seen: set = set()
        for index, scope in enumerate(scopes):
            if scope in seen:
                raise QcParameterError(f"thresholds[{index}]", "the same scope is given twice")
            seen.add(scope)
    if not thresholds:
        return 0
    with datastore.engine.begin() as connection:
        identify_writer(connection, user, reason)
        stations, elements = _reference_ids(connection)
        _check_known("thresholds", "element", {t.element for t in thresholds}, elements)
        _check_known("thresholds", "station", {t.station for t in thresholds if t.station}, stations)
        connection.execute(sa.text("LOCK TABLE qc_threshold IN SHARE ROW EXCLUSIVE MODE"))
        columns: dict[str, list[object]] = {
            "test": [QcTest(t.test).value for t in thresholds],
            "element_id": [elements[t.element] for t in thresholds],
            "station_id": [stations[t.station] if t.station else None for t in thresholds],
            "month": [t.month for t in thresholds],
            "duration_seconds": [t.duration_seconds for t in thresholds],
            "active": [t.active for t in thresholds],
            "severity": [Severity(t.severity).value for t in thresholds],
        }
        for name in (*PARAMETER_COLUMNS, "history_values"):
            columns[name] = [getattr(t, name) for t in thresholds]
        result = connection.execute(_INSERT_THRESHOLDS_SQL, {**columns, "method": method, "reason": reason})
        return result.rowcount


_INSERT_RELATION_SQL = sa.text(
    """
    WITH current AS (
        SELECT q.* FROM qc_relation AS q
        WHERE q.left_element_id = :left AND q.operator = :operator
          AND q.right_element_id IS NOT DISTINCT FROM :right
          AND q.right_value IS NOT DISTINCT FROM :right_value
        ORDER BY q.version DESC LIMIT 1
    )
    INSERT INTO qc_relation (left_element_id, operator, right_element_id, right_value, tolerance,
                             version, active, severity, method, reason)
    SELECT :left, :operator, :right, :right_value, :tolerance,
           coalesce((SELECT version FROM current), 0) + 1, :active, :severity, :method, :reason
    WHERE CASE WHEN NOT EXISTS (SELECT 1 FROM current) THEN :active
               ELSE (SELECT (c.tolerance, c.active, c.severity) IS DISTINCT FROM
                            (CAST(:tolerance AS float8), CAST(:active AS boolean), CAST(:severity AS text))
                     FROM current AS c) END
    """
)


def add_relations(
    datastore: Datastore, relations: Sequence[Relation], *, user: str, reason: str, method: str = "manual"
) -> int:
    """Store ``relations`` as new versions (a relation is identified by its left element,
    operator and right element or constant); returns how many rows were added."""
    if not reason or not reason.strip():
        raise QcParameterError("reason", "say why the relations change")
    for index, relation in enumerate(relations):
        where = f"relations[{index}]"
        if relation.operator not in OPERATORS:
            raise QcParameterError(f"{where}.operator", f"{relation.operator!r} is not one of {', '.join(OPERATORS)}")
        if (relation.right is None) == (relation.right_value is None):
            raise QcParameterError(f"{where}.right", "give either a right element or a right_value")
        if relation.right == relation.left:
            raise QcParameterError(f"{where}.right", "an element cannot be related to itself")
        if not math.isfinite(relation.tolerance) or relation.tolerance < 0:
            raise QcParameterError(f"{where}.tolerance", "must be a number >= 0")
    added = 0
    with datastore.engine.begin() as connection:
        identify_writer(connection, user, reason)
        _, elements = _reference_ids(connection)
        _check_known("relations", "element",
                     {r.left for r in relations} | {r.right for r in relations if r.right}, elements)
        connection.execute(sa.text("LOCK TABLE qc_relation IN SHARE ROW EXCLUSIVE MODE"))
        for relation in relations:  # one statement per relation: there are a handful
            added += connection.execute(_INSERT_RELATION_SQL, {
                "left": elements[relation.left], "operator": relation.operator,
                "right": elements[relation.right] if relation.right else None,
                "right_value": relation.right_value, "tolerance": relation.tolerance,
                "active": relation.active, "severity": Severity(relation.severity).value,
                "method": method, "reason": reason,
            }).rowcount
    return added


def current_thresholds(datastore: Datastore, test: QcTest | None = None) -> list[dict[str, object]]:
    """The threshold rows in force (newest active version of every scope), with codes."""
    sql = """
        SELECT t.id, t.version, t.test, e.code AS element, s.wigos_id AS station, t.month,
               t.duration_seconds, t.severity, t.low, t.high, t.max_change, t.max_gap_seconds,
               t.max_run, t.min_spread, t.exclude_value, t.radius_km, t.min_neighbours, t.max_z,
               t.resolution, t.min_difference, t.history_values, t.method, t.reason, t.created_at,
               t.created_by
        FROM (SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
              FROM qc_threshold AS q
              ORDER BY test, element_id, station_id, month, duration_seconds, version DESC) AS t
        JOIN element AS e ON e.id = t.element_id
        LEFT JOIN station AS s ON s.id = t.station_id
        WHERE t.active AND (CAST(:test AS text) IS NULL OR t.test = :test)
        ORDER BY t.test, e.code, s.wigos_id NULLS FIRST, t.month NULLS FIRST, t.duration_seconds NULLS FIRST
    """
    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text(sql), {"test": test.value if test else None}).mappings().all()
    return [dict(row) for row in rows]


def current_relations(datastore: Datastore) -> list[dict[str, object]]:
    """The relation rows in force (newest active version of every relation), with codes."""
    sql = """
        SELECT t.id, t.version, l.code AS left, t.operator, r.code AS right, t.right_value, t.tolerance,
               t.severity, t.method, t.reason, t.created_at, t.created_by
        FROM (SELECT DISTINCT ON (left_element_id, operator, right_element_id, right_value) q.*
              FROM qc_relation AS q
              ORDER BY left_element_id, operator, right_element_id, right_value, version DESC) AS t
        JOIN element AS l ON l.id = t.left_element_id
        LEFT JOIN element AS r ON r.id = t.right_element_id
        WHERE t.active
        ORDER BY l.code, t.operator, r.code NULLS LAST, t.right_value
    """
    with datastore.engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.text(sql)).mappings().all()]


def threshold_versions(datastore: Datastore, test: QcTest | str, element: str, station: str | None = None,
                       month: int | None = None, duration_seconds: int | None = None) -> list[dict[str, object]]:
    """Every version of one threshold scope, newest first: the values, whether it was active,
    and who wrote it, when and why (rows are never changed, so this is the rule's whole story)."""
    sql = """
        SELECT q.id, q.version, q.active, q.test, e.code AS element, s.wigos_id AS station, q.month,
               q.duration_seconds, q.severity, q.low, q.high, q.max_change, q.max_gap_seconds, q.max_run,
               q.min_spread, q.exclude_value, q.radius_km, q.min_neighbours, q.max_z, q.resolution,
               q.min_difference, q.history_values, q.method, q.reason, q.created_at, q.created_by
        FROM qc_threshold AS q
        JOIN element AS e ON e.id = q.element_id
        LEFT JOIN station AS s ON s.id = q.station_id
        WHERE q.test = :test AND e.code = :element AND s.wigos_id IS NOT DISTINCT FROM CAST(:station AS text)
          AND q.month IS NOT DISTINCT FROM CAST(:month AS smallint)
          AND q.duration_seconds IS NOT DISTINCT FROM CAST(:duration AS integer)
        ORDER BY q.version DESC
    """
    parameters = {"test": QcTest(test).value, "element": element, "station": station, "month": month,
                  "duration": duration_seconds}
    with datastore.engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.text(sql), parameters).mappings().all()]


def relation_versions(datastore: Datastore, left: str, operator: str, right: str | None = None,
                      right_value: float | None = None) -> list[dict[str, object]]:
    """Every version of one relation, newest first, with who wrote it, when and why."""
    sql = """
        SELECT q.id, q.version, q.active, l.code AS left, q.operator, r.code AS right, q.right_value,
               q.tolerance, q.severity, q.method, q.reason, q.created_at, q.created_by
        FROM qc_relation AS q
        JOIN element AS l ON l.id = q.left_element_id
        LEFT JOIN element AS r ON r.id = q.right_element_id
        WHERE l.code = :left AND q.operator = :operator AND r.code IS NOT DISTINCT FROM CAST(:right AS text)
          AND q.right_value IS NOT DISTINCT FROM CAST(:right_value AS float8)
        ORDER BY q.version DESC
    """
    parameters = {"left": left, "operator": operator, "right": right, "right_value": right_value}
    with datastore.engine.connect() as connection:
        return [dict(row) for row in connection.execute(sa.text(sql), parameters).mappings().all()]
