"""SQL pieces shared by the products: the selection of usable values, local days, bit masks.

All values chosen by users (stations, elements, QC statuses, years, thresholds) are bound as
parameters; only fixed fragments and names generated here are formatted into statements.
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
    Element,
    Period,
    ProductParameterError,
    ProductReferenceError,
    Station,
    check_elements,
    check_qc,
    check_timezone,
    is_utc,
)

DAY_SECONDS = 86400


@dataclass(frozen=True)
class Selection:
    """What a product reads: a period, elements, stations (None: all), usable QC, time zones.

    ``zones`` holds only the stations whose day is not the UTC day; the others need no time
    zone arithmetic, which keeps the common all-UTC case cheap.
    """

    period: Period
    elements: tuple[Element, ...]
    stations: tuple[str, ...] | None
    usable_qc: tuple[str, ...]
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
            "usable_qc": list(self.usable_qc),
            "timezones": {s.wigos_id: s.timezone for s in self.zones},
        }


def select(
    connection: duckdb.DuckDBPyConnection,
    period: Period,
    elements: Sequence[str] | str,
    stations: Sequence[str] | str | None,
    usable_qc: Sequence[str] | str,
    timezones: Mapping[str, str] | None,
) -> Selection:
    """Check a product's selection parameters against the archive and build its Selection.

    Raises :class:`ProductParameterError` or :class:`ProductReferenceError` naming the
    parameter: a station that the archive (or a ``stations`` relation, when the connection
    has one) does not know is an error; a known station without data in the period is not.
    """
    if not isinstance(period, Period):
        raise ProductParameterError("period", f"expected a Period(start_year, end_year), not {period!r}")
    checked_elements = check_elements(elements)
    qc = check_qc(usable_qc)
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


def usable_rows_sql(
    selection: Selection,
    zones: str | None,
    *,
    daily: bool,
    columns: str,
) -> tuple[str, list[object]]:
    """``SELECT <columns> FROM observations AS o …`` over the usable values of the selection.

    ``daily``: values of one day (``duration_seconds = 86400``), else sub-daily ones.  Usable:
    a value that is not NULL or NaN and whose QC status is one of ``selection.usable_qc``.
    In ``columns``, ``local_mid_us`` is the station-local wall-clock time of the middle of the
    value's period (microseconds since 1970): the middle, so a daily value labelled 00:00 UTC
    and one labelled at local midnight both fall on their own day for any zone within
    12 hours of UTC.  Rows are limited to the UTC years around the period (a local day can
    start in the UTC year before); the caller limits them to the local days it wants.
    """
    period = selection.period
    sql = f"""
        SELECT {columns}
        FROM (SELECT o.wigos_id, o.element, o.value, o.changed_at, o.source_id, o.level,
                     o.duration_seconds, o.phenomenon_time,
                     {local_time_sql(zones, "CAST(o.duration_seconds AS BIGINT) * 500000")} AS local_mid_us
              FROM observations AS o
              {"" if zones is None else f"LEFT JOIN {zones} AS z ON z.wigos_id = o.wigos_id"}
              WHERE list_contains(?, o.element)
                AND o.year BETWEEN ? AND ?
                AND o.phenomenon_time >= ? AND o.phenomenon_time < ?
                AND o.duration_seconds {"=" if daily else "<"} {DAY_SECONDS}
                AND o.value IS NOT NULL AND NOT isnan(o.value)
                AND list_contains(?, o.qc_status)
                {"" if selection.stations is None else "AND o.wigos_id IN (SELECT unnest(?::VARCHAR[]))"}
             ) AS u
    """
    # The UTC years of the period, plus a margin of two days in the years either side (the
    # partition year is UTC; no station-local day is further than that from UTC): the years
    # prune partitions, the times row groups.  One range, not "inside the years OR near their
    # edges": the same rows, and an OR costs ~7 % of a monthly summary.
    first = datetime(period.start_year, 1, 1, tzinfo=timezone.utc) - timedelta(days=2)
    last = datetime(period.end_year + 1, 1, 1, tzinfo=timezone.utc) + timedelta(days=2)
    params: list[object] = [
        [e.value for e in selection.elements],
        period.start_year - 1,
        period.end_year + 1,
        first,
        last,
        list(selection.usable_qc),
    ]
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


# --------------------------------------------------------------------------- runs of missing values


def missing_bits_sql(present: str, width: str) -> str:
    """The bits of missing values: the zero bits of ``present`` among its low ``width`` bits.

    ``present`` has bit i set when value i (day, year) is there; NULL means none is.  ``width``
    is at most 62, so that ``1 << width`` fits a BIGINT.
    """
    return f"(~coalesce({present}, CAST(0 AS BIGINT)) & ((CAST(1 AS BIGINT) << {width}) - 1))"


def with_longest_run(source: str, missing: str, bits: int, output: str) -> str:
    """``SELECT *, <longest run of set bits of column missing> AS output FROM (source)``.

    ``run_k`` has bit i set where bits i … i+k-1 of ``missing`` are all set: ``run_1`` is
    ``missing`` and ``run_k = run_(k-1) & run_(k-1) >> 1``.  Runs are nested (one of k holds one
    of k - 1), so the longest run is the number of k in 1 … ``bits`` with ``run_k`` not zero.
    Each step is its own projection, so a row costs about three integer operations per bit
    (some 90 for a month) — far cheaper than a window function over the days, and written as
    nested projections because DuckDB evaluates every branch of a CASE and would not share
    repeated sub-expressions.
    """
    query = f"SELECT *, {missing} AS run_1 FROM ({source}) AS run_source"
    for k in range(2, bits + 1):
        query = f"SELECT *, run_{k - 1} & (run_{k - 1} >> 1) AS run_{k} FROM ({query}) AS run_step_{k}"
    runs = ", ".join(f"run_{k}" for k in range(1, bits + 1))
    total = " + ".join(f"CAST(run_{k} <> 0 AS INTEGER)" for k in range(1, bits + 1))
    return f"SELECT * EXCLUDE ({runs}), CAST({total} AS INTEGER) AS {output} FROM ({query}) AS run_total"


def arrow(connection: duckdb.DuckDBPyConnection, sql: str, params: Sequence[object]) -> pa.Table:
    """The result of ``sql`` as an Arrow table (a relation's result is handed over without a copy)."""
    return connection.sql(sql, params=list(params)).to_arrow_table()
