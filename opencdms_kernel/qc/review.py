"""What a QC reviewer works through: flagged values with their tests and rules, each value in
context, decisions on one or many, and the values whose source changed since a decision.

- :func:`review_items`: the suspect and failed values of a station, element and period (from
  PostgreSQL, the system of record: the archive does not carry the per-test entries), each
  with every test's entry of ``result_quality`` and the rule row it names (the exact version
  that judged it, read by id: rules are never edited);
- :func:`value_context`: the series around a value, its neighbours' values over the same days
  and the station's normal for the month.  The neighbours are the stations within the radius
  of the spatial (buddy) rule in force for the value's series and month — resolved by
  :func:`opencdms_kernel.qc.rules.resolve`, the rule the check itself used; without one, the
  nearest stations.  The normal is the explorer's (:func:`opencdms_kernel.explore.station_normal`);
- :func:`source_change_table`: :func:`~.manual.source_changes` laid out for review.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
from intake.readers.entry import Catalog

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import ParameterError
from opencdms_kernel.explore import Normal, catalog_connections, marks, station_normal
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.manual import source_changes
from opencdms_kernel.qc.model import (
    Decision,
    FinalFlag,
    ObservationKey,
    ObservationNotFoundError,
    QcParameterError,
    QcStatus,
    QcTest,
    UnknownQcReferenceError,
)
from opencdms_kernel.qc.rules import PARAMETERS, load_rules, resolve
from opencdms_kernel.vocabulary import ElementInfo, wigos_id_problem

# The statuses a reviewer works through (the only ones the filter accepts).
REVIEW_STATUSES: tuple[QcStatus, ...] = (QcStatus.SUSPECT, QcStatus.FAILED)
DEFAULT_LIMIT = 500
CONTEXT_DAYS = 15  # days each side of the value
MAX_NEIGHBOURS = 5
# Members of a test's entry that the item shows in their own columns; the rest are details.
_ENTRY_FIELDS = ("result", "flag", "rule", "version", "run", "threshold", "fallback")


@dataclass(frozen=True)
class TestResult:
    """One test's entry of a value's ``result_quality``, with the rule it names described."""

    test: str
    result: str | None
    flag: str | None
    rule: str | None  # "qc_threshold:12", "qc_relation:3", "element:TMAX"
    version: int | None
    run: int | None
    level: str | None  # the threshold's level: station, network, global
    fallback: str | None  # why a network or global rule stood in for the station's own
    details: Mapping[str, Any] = field(default_factory=dict)
    rule_text: str = ""

    def describe(self) -> str:
        """``range: above_range (failed)``."""
        return f"{self.test}: {self.flag or ''}" + (f" ({self.result})" if self.result else "")


@dataclass(frozen=True)
class ManualEntry:
    """A person's earlier decision on the value (its ``manual`` entry)."""

    decision: Decision
    reason: str
    by: str
    at: str | None
    source_value: float | None
    original_value: float | None
    source_changed: Mapping[str, Any] | None


@dataclass(frozen=True)
class ReviewItem:
    """A flagged value: its key, value, status, every test's result and any decision."""

    key: ObservationKey
    units: str | None
    value: float | None
    qc_status: QcStatus
    final_flag: FinalFlag | None
    version: int
    results: tuple[TestResult, ...]
    decision: ManualEntry | None

    @property
    def id(self) -> str:
        """A text id of the value (its natural key), stable across queries."""
        k = self.key
        return (f"{k.station}|{k.element}|{k.phenomenon_time.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%SZ}"
                f"|{k.duration_seconds}|{k.level:g}|{k.source or ''}")


@dataclass(frozen=True)
class ReviewList:
    """The items of one filter (at most its limit) and how many match in all."""

    items: tuple[ReviewItem, ...]
    total: int

    def by_id(self, item_id: str) -> ReviewItem:
        for item in self.items:
            if item.id == item_id:
                return item
        raise ParameterError("item", f"{item_id!r} is not in the list (refresh it)")


def _check_filter(stations: Sequence[str] | None, elements: Sequence[str] | None,
                  statuses: Sequence[QcStatus | str], limit: int,
                  start: date | None, end: date | None) -> tuple[list[str] | None, list[str] | None, list[str]]:
    # An empty choice is no filter (a menu with nothing chosen means every station).
    if stations is not None:
        stations = ([stations] if isinstance(stations, str) else list(stations)) or None
    if stations is not None:
        for wigos_id in stations:
            if not isinstance(wigos_id, str) or (problem := wigos_id_problem(wigos_id)) is not None:
                raise QcParameterError("stations", problem or f"{wigos_id!r} is not a WIGOS identifier")
    if elements is not None:
        elements = ([elements] if isinstance(elements, str) else list(elements)) or None
    chosen = []
    for status in statuses:
        try:
            value = QcStatus(status)
        except ValueError:
            value = None
        if value not in REVIEW_STATUSES:
            raise QcParameterError("statuses", f"{status!r} is not one of {', '.join(s.value for s in REVIEW_STATUSES)}")
        chosen.append(value.value)
    if not chosen:
        raise QcParameterError("statuses", "choose suspect, failed or both")
    if not isinstance(limit, int) or not 1 <= limit <= 10_000:
        raise QcParameterError("limit", f"{limit!r} is not a number from 1 to 10000")
    if start is not None and end is not None and end < start:
        raise QcParameterError("end", f"the period ends ({end}) before it starts ({start})")
    return stations, elements, chosen


_ITEMS_WHERE = """
    FROM observation AS o
    JOIN station AS s ON s.id = o.station_id
    JOIN element AS e ON e.id = o.element_id
    JOIN source AS src ON src.id = o.source_id
    WHERE o.status = 'latest' AND o.qc_status = ANY(:statuses)
      AND (CAST(:stations AS text[]) IS NULL OR s.wigos_id = ANY(:stations))
      AND (CAST(:elements AS text[]) IS NULL OR e.code = ANY(:elements))
      AND (CAST(:start AS timestamptz) IS NULL OR o.phenomenon_time >= :start)
      AND (CAST(:end AS timestamptz) IS NULL OR o.phenomenon_time < :end)
      AND (:include_decided OR NOT o.result_quality ? 'manual')
"""
_ITEMS_SQL = sa.text(
    """
    SELECT s.wigos_id, e.code, e.units, o.phenomenon_time, o.duration_seconds, o.level, src.name AS source,
           o.value, o.qc_status, o.final_flag, o.version, o.result_quality
    """ + _ITEMS_WHERE + """
    ORDER BY o.qc_status = :failed DESC, s.wigos_id, e.code, o.phenomenon_time, o.duration_seconds, o.level, src.name
    LIMIT :limit
    """
)
_COUNT_SQL = sa.text("SELECT count(*)" + _ITEMS_WHERE)
_THRESHOLD_RULES_SQL = sa.text(
    """
    SELECT q.id, q.version, q.test, e.code AS element, s.wigos_id AS station, q.month, q.duration_seconds,
           q.severity, q.active, q.low, q.high, q.max_change, q.max_gap_seconds, q.max_run, q.min_spread,
           q.exclude_value, q.radius_km, q.min_neighbours, q.max_z, q.resolution, q.min_difference
    FROM qc_threshold AS q JOIN element AS e ON e.id = q.element_id LEFT JOIN station AS s ON s.id = q.station_id
    WHERE q.id = ANY(:ids)
    """
)
_RELATION_RULES_SQL = sa.text(
    """
    SELECT q.id, q.version, l.code AS left, q.operator, r.code AS right, q.right_value, q.tolerance, q.severity
    FROM qc_relation AS q JOIN element AS l ON l.id = q.left_element_id
    LEFT JOIN element AS r ON r.id = q.right_element_id
    WHERE q.id = ANY(:ids)
    """
)


def review_items(
    datastore: Datastore,
    *,
    stations: Sequence[str] | str | None = None,
    elements: Sequence[str] | str | None = None,
    start: date | None = None,
    end: date | None = None,
    statuses: Sequence[QcStatus | str] = REVIEW_STATUSES,
    include_decided: bool = False,
    limit: int = DEFAULT_LIMIT,
) -> ReviewList:
    """The current values flagged ``statuses`` at ``stations`` (WIGOS ids; None: all) of
    ``elements`` (codes; None: all) from ``start`` to ``end`` (UTC days, inclusive), failed
    first, then by station, element and time; at most ``limit``.  Values a person already
    decided on are left out unless ``include_decided`` (a rejected value stays failed)."""
    stations, elements, chosen = _check_filter(stations, elements, statuses, limit, start, end)
    parameters = {
        "statuses": chosen, "stations": stations, "elements": elements, "include_decided": include_decided,
        "start": None if start is None else datetime.combine(start, time.min, timezone.utc),
        "end": None if end is None else datetime.combine(end, time.min, timezone.utc) + timedelta(days=1),
        "failed": QcStatus.FAILED.value, "limit": limit,
    }
    with datastore.engine.connect() as connection:
        _check_known(connection, stations, elements)
        rows = connection.execute(_ITEMS_SQL, parameters).all()
        total = int(connection.execute(_COUNT_SQL, parameters).scalar_one())
        rules = _rules_of(connection, [row.result_quality for row in rows])
    items = tuple(_item(row, rules) for row in rows)
    return ReviewList(items, total)


def _check_known(connection: sa.Connection, stations: list[str] | None, elements: list[str] | None) -> None:
    if stations:
        known = set(connection.execute(sa.text("SELECT wigos_id FROM station WHERE wigos_id = ANY(:w)"),
                                       {"w": stations}).scalars())
        if unknown := tuple(w for w in stations if w not in known):
            raise UnknownQcReferenceError("stations", "station", unknown)
    if elements:
        known = set(connection.execute(sa.text("SELECT code FROM element WHERE code = ANY(:c)"),
                                       {"c": elements}).scalars())
        if unknown := tuple(c for c in elements if c not in known):
            raise UnknownQcReferenceError("elements", "element", unknown)


def _rules_of(connection: sa.Connection, qualities: Sequence[Mapping[str, Any] | None]) -> dict[str, str]:
    """Rule label -> description, for every rule the entries name (two queries in all)."""
    labels = {entry.get("rule") for quality in qualities for entry in (quality or {}).values()
              if isinstance(entry, Mapping) and isinstance(entry.get("rule"), str)}
    ids: dict[str, list[int]] = {"qc_threshold": [], "qc_relation": []}
    codes = []
    for label in labels:
        table, _, ident = label.partition(":")
        if table in ids and ident.isdigit():
            ids[table].append(int(ident))
        elif table == "element":
            codes.append(ident)
    described: dict[str, str] = {}
    if ids["qc_threshold"]:
        for row in connection.execute(_THRESHOLD_RULES_SQL, {"ids": ids["qc_threshold"]}).mappings():
            described[f"qc_threshold:{row['id']}"] = describe_threshold(row)
    if ids["qc_relation"]:
        for row in connection.execute(_RELATION_RULES_SQL, {"ids": ids["qc_relation"]}).mappings():
            described[f"qc_relation:{row['id']}"] = describe_relation(row)
    if codes:
        for row in connection.execute(sa.text(
                "SELECT code, units, valid_min, valid_max FROM element WHERE code = ANY(:c)"), {"c": codes}):
            described[f"element:{row.code}"] = (f"physical range of {row.code}: {row.valid_min:g} to "
                                               f"{row.valid_max:g} {row.units}")
    return described


def describe_threshold(row: Mapping[str, Any]) -> str:
    """``range rule 12 v3 (station 0-20000-0-60001, month 1, daily): low 10, high 42; failed``."""
    test = QcTest(row["test"])
    scope = [f"station {row['station']}" if row["station"] else "network",
             f"month {row['month']}" if row["month"] else "every month",
             ("daily" if row["duration_seconds"] == 86400 else f"{row['duration_seconds']} s")
             if row["duration_seconds"] is not None else "any duration"]
    values = ", ".join(f"{name.replace('_', ' ')} {row[name]:g}" for name, _ in PARAMETERS[test]
                       if row[name] is not None)
    withdrawn = "" if row.get("active", True) else " (withdrawn)"
    return f"{test.value} rule {row['id']} v{row['version']} ({', '.join(scope)}): {values}; {row['severity']}{withdrawn}"


def describe_relation(row: Mapping[str, Any]) -> str:
    """``relation 3 v1: TMIN <= TMAX (tolerance 0); failed``."""
    right = row["right"] if row["right"] is not None else f"{row['right_value']:g}"
    return (f"relation {row['id']} v{row['version']}: {row['left']} {row['operator']} {right} "
            f"(tolerance {row['tolerance']:g}); {row['severity']}")


def _item(row: sa.Row, rules: Mapping[str, str]) -> ReviewItem:
    quality = row.result_quality or {}
    results = []
    for test, entry in sorted(quality.items()):
        if test in ("ingest", "manual") or not isinstance(entry, Mapping):
            continue
        label = entry.get("rule")
        results.append(TestResult(
            test=test, result=entry.get("result"), flag=entry.get("flag"), rule=label,
            version=entry.get("version"), run=entry.get("run"), level=entry.get("threshold"),
            fallback=entry.get("fallback"),
            details={k: v for k, v in entry.items() if k not in _ENTRY_FIELDS},
            rule_text=rules.get(label, label or "") if isinstance(label, str) else "",
        ))
    manual = quality.get("manual")
    decision = None
    if isinstance(manual, Mapping) and manual.get("decision"):
        decision = ManualEntry(Decision(manual["decision"]), manual.get("reason", ""), manual.get("by", ""),
                               manual.get("at"), manual.get("source_value"), manual.get("original_value"),
                               manual.get("source_changed"))
    key = ObservationKey(station=row.wigos_id, element=row.code, phenomenon_time=row.phenomenon_time,
                         duration_seconds=row.duration_seconds, level=row.level, source=row.source)
    return ReviewItem(key, row.units, row.value, QcStatus(row.qc_status),
                      FinalFlag(row.final_flag) if row.final_flag else None, row.version, tuple(results), decision)


def items_table(items: Sequence[ReviewItem]) -> pd.DataFrame:
    """The items as a table: ``id, station, element, time (UTC), value, status, flag, tests,
    rules, decision``."""
    columns = ["id", "station", "element", "time (UTC)", "value", "status", "flag", "tests", "rules", "decision"]
    return pd.DataFrame([
        {
            "id": item.id, "station": item.key.station, "element": item.key.element,
            "time (UTC)": item.key.phenomenon_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "value": item.value, "status": item.qc_status.value,
            "flag": item.final_flag.value if item.final_flag else "",
            "tests": "; ".join(result.describe() for result in item.results),
            "rules": "; ".join(result.rule_text for result in item.results if result.rule_text),
            "decision": "" if item.decision is None else f"{item.decision.decision.value} by {item.decision.by}",
        }
        for item in items
    ], columns=columns)


# --------------------------------------------------------------------------- a value in context


@dataclass(frozen=True)
class ValueContext:
    """A value with the days around it, its neighbours over the same days and the normal.

    ``series``: the station's values (``time, value, mark``); ``neighbours``: one row per
    neighbour value (``wigos_id, label, km, time, value``); ``stations``: the neighbours
    (``wigos_id, label, km``); ``neighbour_rule`` says how they were chosen; ``normal``: the
    station's normal of the element (None: none) and ``normal_value`` that of the value's month.
    """

    key: ObservationKey
    value: float | None
    units: str | None
    month: int
    series: pd.DataFrame
    neighbours: pd.DataFrame
    stations: pd.DataFrame
    radius_km: float | None
    neighbour_rule: str
    normal: Normal | None
    normal_value: float | None


_STATION_SQL = sa.text("SELECT id, wigos_id, name, latitude, longitude FROM station WHERE wigos_id = :w")
# Great-circle distance (the haversine, on a sphere of 6371 km, as the spatial check measures it).
_NEAREST_SQL = sa.text(
    """
    SELECT wigos_id, label, km FROM (
        SELECT s.wigos_id, s.name || ' (' || s.wigos_id || ')' AS label,
               2 * 6371.0 * asin(sqrt(power(sin(radians(s.latitude - :lat) / 2), 2)
                   + cos(radians(:lat)) * cos(radians(s.latitude))
                   * power(sin(radians(s.longitude - :lon) / 2), 2))) AS km
        FROM station AS s WHERE s.id <> :id
    ) AS d
    WHERE CAST(:radius AS float8) IS NULL OR km <= :radius
    ORDER BY km, wigos_id LIMIT :limit
    """
)
_WINDOW_SQL = sa.text(
    """
    SELECT s.wigos_id, o.phenomenon_time AS time, o.value, o.qc_status, o.final_flag
    FROM observation AS o JOIN station AS s ON s.id = o.station_id
    WHERE s.wigos_id = ANY(:stations) AND o.element_id = :element_id AND o.duration_seconds = :duration
      AND o.level = :level AND o.status = 'latest' AND o.phenomenon_time BETWEEN :first AND :last
    ORDER BY s.wigos_id, o.phenomenon_time
    """
)


def _series_month(key: ObservationKey) -> int:
    """The calendar month QC gives the value: the UTC month of the middle of its period."""
    return (key.phenomenon_time.astimezone(timezone.utc) + timedelta(seconds=key.duration_seconds / 2)).month


def spatial_radius(connection: sa.Connection, station_id: int, element: ElementInfo, key: ObservationKey,
                   source_id: int) -> tuple[float | None, str]:
    """The radius of the spatial rule in force for the value's series and month, and the rule
    (``qc_threshold:<id> v<version>``); (None, "") without one.  Resolved by the rules' own
    :func:`~opencdms_kernel.qc.rules.resolve` on a frame of this one series."""
    frame = Frame(
        elements=(element,), series_element=np.zeros(1, np.int16),
        series_station=np.array([station_id], np.int32), series_duration=np.array([key.duration_seconds], np.int32),
        series_level=np.array([key.level], np.float32), series_source=np.array([source_id], np.int16),
        bounds=np.zeros(2, np.int64), time=np.empty(0, np.int64), value=np.empty(0), version=np.empty(0, np.int32),
        candidate=np.empty(0, bool), in_scope=np.empty(0, bool), month=np.empty(0, np.int8),
        cell=np.empty(0, np.int32),
    )
    resolved = resolve(load_rules(connection), QcTest.SPATIAL, frame)
    cell = _series_month(key) - 1  # series 0
    if resolved.rule_id[cell] <= 0:
        return None, ""
    return (float(resolved.params["radius_km"][cell]),
            f"qc_threshold:{int(resolved.rule_id[cell])} v{int(resolved.version[cell])}")


def value_context(catalog: Catalog, key: ObservationKey, *, days: int = CONTEXT_DAYS,
                  max_neighbours: int = MAX_NEIGHBOURS) -> ValueContext:
    """The value ``key`` with ``days`` days each side at its station, the same days at its
    neighbours (at most ``max_neighbours``, nearest first) and the station's normal."""
    if not isinstance(days, int) or not 1 <= days <= 366:
        raise QcParameterError("days", f"{days!r} is not a number of days from 1 to 366")
    if key.phenomenon_time.tzinfo is None:
        raise QcParameterError("key.phenomenon_time", "give the time with its time zone (e.g. UTC)")
    datastore = catalog_connections(catalog).datastore()
    with datastore.engine.connect() as connection:
        station = connection.execute(_STATION_SQL, {"w": key.station}).one_or_none()
        if station is None:
            raise UnknownQcReferenceError("key.station", "station", (key.station,))
        element = connection.execute(sa.text(
            "SELECT id, code, valid_min, valid_max, units FROM element WHERE code = :c"), {"c": key.element}).one_or_none()
        if element is None:
            raise UnknownQcReferenceError("key.element", "element", (key.element,))
        source_id = connection.execute(sa.text(
            "SELECT o.source_id FROM observation AS o JOIN source AS src ON src.id = o.source_id "
            "WHERE o.station_id = :s AND o.element_id = :e AND o.phenomenon_time = :t AND o.duration_seconds = :d "
            "AND o.level = :l AND (CAST(:source AS text) IS NULL OR src.name = :source) ORDER BY o.source_id LIMIT 1"),
            {"s": station.id, "e": element.id, "t": key.phenomenon_time, "d": key.duration_seconds,
             "l": key.level, "source": key.source}).scalar_one_or_none()
        if source_id is None:
            raise ObservationNotFoundError(f"no observation of {key.element} at station {key.station} at "
                                           f"{key.phenomenon_time.isoformat()}")
        info = ElementInfo(element.id, element.code, element.valid_min, element.valid_max, element.units)
        radius, rule = spatial_radius(connection, station.id, info, key, source_id)
        nearest = pd.DataFrame(connection.execute(_NEAREST_SQL, {
            "lat": station.latitude, "lon": station.longitude, "id": station.id, "radius": radius,
            "limit": max_neighbours}).mappings().all(), columns=["wigos_id", "label", "km"])
        reach = timedelta(days=days)
        window = pd.DataFrame(connection.execute(_WINDOW_SQL, {
            "stations": [key.station, *nearest["wigos_id"]], "element_id": element.id,
            "duration": key.duration_seconds, "level": key.level,
            "first": key.phenomenon_time - reach, "last": key.phenomenon_time + reach}).mappings().all(),
            columns=["wigos_id", "time", "value", "qc_status", "final_flag"])
    window["time"] = pd.to_datetime(window["time"], utc=True)
    own = window[window["wigos_id"] == key.station]
    series = pd.DataFrame({"time": own["time"], "value": own["value"].astype(float),
                           "mark": marks(own["qc_status"], own["final_flag"])}).reset_index(drop=True)
    others = window[window["wigos_id"] != key.station].merge(nearest, on="wigos_id")
    neighbours = others[["wigos_id", "label", "km", "time", "value"]].reset_index(drop=True)
    at = series[series["time"] == pd.Timestamp(key.phenomenon_time)]
    value = None if at.empty or pd.isna(at["value"].iloc[0]) else float(at["value"].iloc[0])
    how = (f"stations within {radius:g} km (spatial rule {rule})" if radius is not None
           else f"no spatial rule for this series: the {max_neighbours} nearest stations")
    normal = station_normal(catalog, key.station, key.element)
    month = _series_month(key)
    return ValueContext(key, value, element.units, month, series, neighbours, nearest, radius, how, normal,
                        None if normal is None else normal.of_month(month))


# --------------------------------------------------------------------------- decisions


def source_change_table(datastore: Datastore, limit: int = 1000) -> pd.DataFrame:
    """Decided values whose source has since delivered another value, for review: ``station,
    element, time (UTC), source, decision, value`` (in force) ``, decided on`` (the source value
    the decision was made on) ``, new source value, delivered``."""
    columns = ["station", "element", "time (UTC)", "source", "decision", "value", "decided on",
               "new source value", "delivered"]
    return pd.DataFrame([
        {
            "station": change.station, "element": change.element,
            "time (UTC)": change.phenomenon_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "source": change.source, "decision": change.decision.value, "value": change.value,
            "decided on": change.source_value, "new source value": change.new_source_value,
            "delivered": change.delivered_at or "",
        }
        for change in source_changes(datastore, limit)
    ], columns=columns)
