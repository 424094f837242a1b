"""SQL pieces shared by the products: the selection, the station-local day, the QC policy,
and the one rule for choosing between several values of a day.

All values chosen by users (stations, elements, QC statuses, years, thresholds) are bound as
parameters; only fixed fragments and names generated here are formatted into statements.

**The day.**  Every product works on station-local days: a value belongs to the local day (of
the station's IANA time zone; UTC when the station has none) in which the middle of its
period falls.  The middle, so that a daily value labelled 00:00 UTC and one labelled at local
midnight both fall on their own day for any zone within 12 hours of UTC.

**Several values for one day** (sources, levels, a re-delivered file): the one changed most
recently counts, then the lowest source id, then the lowest level (:data:`PREFERENCE`).  A
value the QC policy excludes never wins over one it counts.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator, Mapping, Sequence

import duckdb
import pyarrow as pa

from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    Element,
    Period,
    ProductParameterError,
    ProductReferenceError,
    QcPolicy,
    Station,
    check_elements,
    check_period,
    check_qc_policy,
    check_timezone,
    is_utc,
)
from opencdms_kernel.vocabulary import QcStatus

DAY_SECONDS = 86400


@dataclass(frozen=True)
class Selection:
    """What a product reads: a period, elements, stations (None: all), QC policy, time zones.

    ``zones`` holds only the stations whose day is not the UTC day; the others need no time
    zone arithmetic, which keeps the common all-UTC case cheap.
    """

    period: Period
    elements: tuple[Element, ...]
    stations: tuple[str, ...] | None
    qc: QcPolicy
    zones: tuple[Station, ...]

    def describe(self) -> str:
        """E.g. ``TMAX, PRCP at all stations in 1991-2020``."""
        where = "all stations" if self.stations is None else ", ".join(self.stations)
        return f"{', '.join(e.value for e in self.elements)} at {where} in {self.period.label}"

    def parameters(self) -> dict[str, object]:
        """The JSON-ready parameters of the selection (for product metadata)."""
        return {
            "elements": [e.value for e in self.elements],
            "stations": None if self.stations is None else list(self.stations),
            "qc": self.qc.as_dict(),
            "timezones": {s.wigos_id: s.timezone for s in self.zones},
        }


def select(
    connection: duckdb.DuckDBPyConnection,
    period: Period | str,
    elements: Sequence[str] | str,
    stations: Sequence[str] | str | None,
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
) -> Selection:
    """Check a product's selection parameters against the archive and build its Selection.

    Raises :class:`ProductParameterError` or :class:`ProductReferenceError` naming the
    parameter: a station that the archive (or a ``stations`` relation, when the connection
    has one) does not know is an error; a known station without data in the period is not.
    """
    period = check_period(period)
    checked_elements = check_elements(elements)
    qc = check_qc_policy(qc)
    wanted = _check_station_ids(connection, stations)
    zones = dict(_relation_timezones(connection))
    for wigos_id, zone in (timezones or {}).items():
        zones[wigos_id] = check_timezone(zone, wigos_id)
    local = tuple(
        Station(wigos_id, zone)
        for wigos_id, zone in sorted(zones.items())
        if not is_utc(zone) and (wanted is None or wigos_id in wanted)
    )
    return Selection(period, checked_elements, wanted, qc, local)


def _check_station_ids(connection: duckdb.DuckDBPyConnection, stations: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if stations is None:
        return None
    if isinstance(stations, str):
        stations = (stations,)
    ids = []
    for wigos_id in stations:
        if not isinstance(wigos_id, str) or not wigos_id.strip():
            raise ProductParameterError("stations", f"a station must be a WIGOS id, not {wigos_id!r}")
        ids.append(wigos_id.strip())
    ids = list(dict.fromkeys(ids))
    if not ids:
        raise ProductParameterError("stations", "an empty list selects nothing; pass None for all stations")
    relation = "stations" if _has_relation(connection, "stations", "wigos_id") else "observations"
    # The relation name is one of two fixed words; the ids are bound.
    known = {
        row[0]
        for row in connection.execute(
            f"SELECT DISTINCT wigos_id FROM {relation} WHERE wigos_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
        ).fetchall()
    }
    for wigos_id in ids:
        if wigos_id not in known:
            raise ProductReferenceError("stations", wigos_id, f"station '{wigos_id}' is not in the archive")
    return tuple(ids)


def _has_relation(connection: duckdb.DuckDBPyConnection, name: str, *columns: str) -> bool:
    found = {
        row[0]
        for row in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [name]
        ).fetchall()
    }
    return bool(found) and all(column in found for column in columns)


def _relation_timezones(connection: duckdb.DuckDBPyConnection) -> Iterator[tuple[str, str]]:
    """Time zones from a ``stations`` relation (wigos_id, timezone), when the archive has one."""
    if not _has_relation(connection, "stations", "wigos_id", "timezone"):
        return
    for wigos_id, zone in connection.execute(
        "SELECT wigos_id, timezone FROM stations WHERE timezone IS NOT NULL"
    ).fetchall():
        yield wigos_id, check_timezone(zone, wigos_id)


# --------------------------------------------------------------------------- registered tables


@contextmanager
def registered(connection: duckdb.DuckDBPyConnection, table: pa.Table | None) -> Iterator[str | None]:
    """A unique name under which ``table`` is visible to SQL on ``connection`` (then removed).

    ``None`` registers nothing and yields ``None``, for optional inputs such as time zones.
    """
    if table is None:
        yield None
        return
    name = f"_opencdms_products_{uuid.uuid4().hex[:12]}"
    connection.register(name, table)
    try:
        yield name
    finally:
        connection.unregister(name)


def zones_table(selection: Selection) -> pa.Table | None:
    """The non-UTC stations' zones as a table to join, or None when every station is UTC."""
    if not selection.zones:
        return None
    return pa.table(
        {
            "wigos_id": pa.array([s.wigos_id for s in selection.zones], pa.string()),
            "timezone": pa.array([s.timezone for s in selection.zones], pa.string()),
        }
    )


# --------------------------------------------------------------------------- the usable values


def local_time_sql(zones: str | None, offset_us: str) -> str:
    """Station-local wall-clock microseconds of ``phenomenon_time + offset_us`` (alias ``o``).

    Computed on integers: the session time zone (which DuckDB's casts of TIMESTAMPTZ follow)
    never matters.  Only stations listed in ``zones`` (joined as ``z``) pay for time zone
    rules; the others are read as UTC.
    """
    utc = f"epoch_us(o.phenomenon_time) + {offset_us}"
    if zones is None:
        return f"({utc})"
    return f"(CASE WHEN z.timezone IS NULL THEN {utc} ELSE epoch_us(timezone(z.timezone, make_timestamptz({utc}))) END)"


# The one rule for choosing between several values of one day or slot: as an ORDER BY, the
# first row wins.  ``counted`` (the QC policy counts the value) comes first, so an excluded
# value never wins over a counted one; then the latest change, the lowest source, the lowest
# level.  Daily values made from sub-daily ones (``derived``) have no source: they are only
# made for days without any reported daily value, so they never compete with one.
PREFERENCE = "counted DESC, changed_at DESC NULLS LAST, source_id NULLS LAST, level NULLS LAST"


def qc_condition(statuses: Sequence[str], column: str = "o.qc_status") -> str:
    """A condition true for values whose QC status is one of ``statuses`` (NULL is 'none').

    Written with literals, not bound: a constant IN list is pushed into the Parquet scan (a
    bound list is evaluated row by row after reading), which matters for the rare statuses
    read on their own.  Safe, because the statuses are checked against the archive's fixed
    set (:class:`~opencdms_kernel.products.model.QcPolicy`) before they get here.
    """
    known = [QcStatus(status) for status in statuses if status in tuple(QcStatus)]
    if len(known) != len(statuses) or not known:
        raise ProductParameterError("qc", f"unknown QC statuses {[str(s) for s in statuses]!r}")
    condition = f"{column} IN ({', '.join(repr(status.value) for status in known)})"
    return f"({condition} OR {column} IS NULL)" if QcStatus.NONE in known else condition


# The QC part of the WHERE clause of rows_sql, by what the caller reads.
_QC_FILTERS = {
    "counted": lambda qc: f"AND {qc_condition(qc.counted)}",
    "excluded": lambda qc: f"AND {qc_condition(qc.excluded)}" if qc.excluded else "AND false",
    "all": lambda qc: "",
}


def rows_sql(
    selection: Selection,
    zones: str | None,
    *,
    daily: bool,
    columns: str,
    qc_values: str = "counted",
    where: str = "",
) -> tuple[str, list[object]]:
    """``SELECT <columns> FROM observations AS o …`` over the selection's values.

    ``daily``: values of one day (``duration_seconds = 86400``), else sub-daily ones.  Rows
    with a value (not NULL or NaN): ``qc_values`` ``"counted"`` only those the QC policy
    counts, ``"excluded"`` only those it excludes, ``"all"`` both; ``where`` adds a condition
    on the columns below.  Available to ``columns``: ``wigos_id,
    element, value, qc_status, final_flag, changed_at, source_id, level, duration_seconds,
    phenomenon_time``, ``counted`` (the policy counts the value), ``suspect`` (1 for a suspect
    value, else 0) and ``local_mid_us``, the station-local wall-clock time of the middle of the
    value's period (microseconds since 1970, see the module's note on the day).  Rows are
    limited to the UTC years around the period (a local day can start in the UTC year
    before); the caller limits them to the local days it wants.
    """
    period = selection.period
    counted = qc_condition(selection.qc.counted)
    sql = f"""
        SELECT {columns}
        FROM (SELECT o.wigos_id, o.element, o.value, o.qc_status, o.final_flag, o.changed_at, o.source_id,
                     o.level, o.duration_seconds, o.phenomenon_time,
                     {counted} AS counted,
                     CAST(o.qc_status = '{QcStatus.SUSPECT.value}' AS INTEGER) AS suspect,
                     {local_time_sql(zones, "CAST(o.duration_seconds AS BIGINT) * 500000")} AS local_mid_us
              FROM observations AS o
              {"" if zones is None else f"LEFT JOIN {zones} AS z ON z.wigos_id = o.wigos_id"}
              WHERE list_contains(?, o.element)
                AND o.year BETWEEN ? AND ?
                AND o.phenomenon_time >= ? AND o.phenomenon_time < ?
                AND o.duration_seconds {"=" if daily else "<"} {DAY_SECONDS}
                AND o.value IS NOT NULL AND NOT isnan(o.value)
                {_QC_FILTERS[qc_values](selection.qc)}
                {"" if selection.stations is None else "AND o.wigos_id IN (SELECT unnest(?::VARCHAR[]))"}
             ) AS u
        {f"WHERE {where}" if where else ""}
    """
    # The UTC years of the period, plus a margin of two days in the years either side (the
    # partition year is UTC; no station-local day is further than that from UTC): the years
    # prune partitions, the times row groups.  One range, not "inside the years OR near their
    # edges": the same rows, and an OR costs ~7 % of a monthly summary.
    first = datetime(period.start_year, 1, 1, tzinfo=timezone.utc) - timedelta(days=2)
    last = datetime(period.end_year + 1, 1, 1, tzinfo=timezone.utc) + timedelta(days=2)
    params: list[object] = [[e.value for e in selection.elements], period.start_year - 1, period.end_year + 1,
                            first, last]
    if selection.stations is not None:
        params.append(list(selection.stations))
    return sql, params


LOCAL_DAY = "CAST(make_timestamp(local_mid_us) AS DATE)"


def local_bounds_us(period: Period) -> tuple[int, int]:
    """The period as local wall-clock microseconds since 1970: [first day 00:00, day after the last)."""
    epoch = datetime(1970, 1, 1)
    start = datetime(period.start_year, 1, 1) - epoch
    end = datetime(period.end_year + 1, 1, 1) - epoch
    return start // timedelta(microseconds=1), end // timedelta(microseconds=1)


def arrow(connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object]) -> pa.Table:
    """The result of ``sql`` as an Arrow table (a relation's result is handed over without a copy)."""
    return connection.sql(sql, params=list(params)).to_arrow_table()
