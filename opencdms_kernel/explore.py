"""Queries of the explorer app: stations, a time series with its QC marks, the monthly
climatology against the 1991-2020 normal, anomalies, data availability, and a selection as CSV
or NetCDF.

Everything is read through the intake catalog (:func:`opencdms_kernel.catalog.open_catalog`):
its entries where they fit (``stations``, ``elements``, ``products``, ``observations_live`` for
the downloads), and its connections (:func:`catalog_connections`) for what no entry offers fast
enough, which runs in the database that holds the rows — PostgreSQL for the live series, DuckDB
over the Parquet archive for monthly values — so that nothing loops over values in Python.

Where each figure comes from, and why:

- the **time series** is the live datastore's (the rows ``observations_live`` reads): a value a
  reviewer has just rejected is shown rejected at once.  PostgreSQL packs the values into three
  ``bytea`` (times, values, mark codes) that numpy reads whole: 30 years of daily values arrive
  as one row, not 10,958 rows of Python objects (reading them through the entry took about
  ten times longer).  A series longer than ``max_points`` (30 years of hourly values) is drawn
  from daily aggregates made by PostgreSQL, with its flagged values kept one by one;
- **monthly values** are the products' own (:func:`~opencdms_kernel.products.monthly_summaries`
  over the archive: station-local days, the WMO completeness rule), so the climatology and the
  anomalies are made of the same months as the normals.  The archive lags the datastore until
  its next export;
- the **normal** is a stored normals product of the station (``products`` entry), else the
  kernel's :func:`~opencdms_kernel.products.climate_normals` computed on the archive; where
  neither gives one, there is no normal (never one made another way here);
- **availability** is :func:`opencdms_kernel.reports.availability` (days with a value, every QC
  status counting) summed over each station's years.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from enum import StrEnum
from typing import Any, Sequence

import numpy as np
import pandas as pd
import sqlalchemy as sa
import xarray as xr
from intake.readers.entry import Catalog

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.catalog import CONNECTIONS_PARAMETER, CatalogError, Connections
from opencdms_kernel.errors import ParameterError, UnknownReferenceError
from opencdms_kernel.products import (
    STANDARD_NORMAL_PERIOD,
    NormalsSpec,
    ProductKind,
    ProductReferenceError,
    climate_normals,
    monthly_summaries,
)
from opencdms_kernel.products.model import UNSUMMARISED_ELEMENTS, Statistic, statistic_of
from opencdms_kernel.reports.tables import availability as monthly_availability
from opencdms_kernel.vocabulary import FinalFlag, Period, QcStatus, elements, wigos_id_problem

# Above this many values a series is drawn from daily aggregates (its flagged values stay one
# by one): 30 years of daily values (10,958) are drawn whole, 30 years of hourly ones are not.
MAX_SERIES_POINTS = 40_000
DAY_SECONDS = 86400


class Mark(StrEnum):
    """How a value is marked on a plot: what people decided first, then what QC found."""

    REJECTED = "rejected"  # a person rejected it
    CORRECTED = "corrected"  # a person corrected it
    VERIFIED = "verified"  # a person accepted it
    FAILED = "failed"  # an automatic test found it wrong, nobody decided yet
    SUSPECT = "suspect"  # an automatic test found it doubtful, nobody decided yet
    UNFLAGGED = "unflagged"  # passed, or not checked


# The marks drawn as markers over the line (in drawing order: the worst on top).
FLAGGED_MARKS: tuple[Mark, ...] = (Mark.VERIFIED, Mark.CORRECTED, Mark.SUSPECT, Mark.FAILED, Mark.REJECTED)

# Which mark a value gets: the first rule that holds (a column and its value), else unflagged.
# The one definition of marks: the SQL of the series and :func:`marks` are both made from it.
MARK_RULES: tuple[tuple[Mark, str, str], ...] = (
    (Mark.REJECTED, "final_flag", FinalFlag.REJECTED.value),
    (Mark.CORRECTED, "final_flag", FinalFlag.CORRECTED.value),
    (Mark.VERIFIED, "final_flag", FinalFlag.VERIFIED.value),
    (Mark.FAILED, "qc_status", QcStatus.FAILED.value),
    (Mark.SUSPECT, "qc_status", QcStatus.SUSPECT.value),
)
MARK_CODES: tuple[Mark, ...] = (*(mark for mark, _, _ in MARK_RULES), Mark.UNFLAGGED)


def marks(qc_status: pd.Series, final_flag: pd.Series) -> np.ndarray:
    """The :class:`Mark` of each value from its ``qc_status`` and ``final_flag`` (whole columns)."""
    columns = {"qc_status": qc_status.astype("string").fillna("").to_numpy(),
               "final_flag": final_flag.astype("string").fillna("").to_numpy()}
    return np.select([columns[column] == word for _, column, word in MARK_RULES],
                     [mark.value for mark, _, _ in MARK_RULES], default=Mark.UNFLAGGED.value).astype(object)


def _mark_names(codes: np.ndarray) -> np.ndarray:
    """Mark codes (indexes into :data:`MARK_CODES`) as the marks' names."""
    return np.array([mark.value for mark in MARK_CODES], dtype=object)[codes]


def catalog_connections(catalog: Catalog) -> Connections:
    """The datastore and bucket of the installation a catalog reads (opened on first use)."""
    connections = catalog.user_parameters[CONNECTIONS_PARAMETER].default
    if not isinstance(connections, Connections):
        raise CatalogError("open the catalog with opencdms_kernel.catalog.open_catalog(settings)")
    return connections


# --------------------------------------------------------------------------- stations and elements


def station_list(catalog: Catalog) -> pd.DataFrame:
    """Every station with its location (the catalog's ``stations``), and ``label``
    ("Name (WIGOS id)") for menus and hover text."""
    stations = catalog.stations.read()
    stations["label"] = stations["name"] + " (" + stations["wigos_id"] + ")"
    return stations


def element_list(catalog: Catalog) -> pd.DataFrame:
    """Every element (the catalog's ``elements``): code, name, units, cell method, range."""
    return catalog.elements.read()


def _station(value: object, parameter: str = "station") -> str:
    if not isinstance(value, str) or (problem := wigos_id_problem(value.strip())) is not None:
        raise ParameterError(parameter, problem if isinstance(value, str) else f"{value!r} is not a WIGOS identifier")
    return value.strip()


def _element(value: object, parameter: str = "element") -> str:
    code = value.strip().upper() if isinstance(value, str) else value
    if code not in elements():
        raise ParameterError(parameter, f"{value!r} is not an element code (known: {', '.join(elements())})")
    return code  # type: ignore[return-value]


def _known_station(connections: Connections, station: str) -> dict[str, Any]:
    """The station's row (name, location, time zone), or an error naming the parameter."""
    with connections.datastore().engine.connect() as connection:
        row = connection.execute(sa.text(
            "SELECT wigos_id, name, latitude, longitude, elevation, timezone FROM station WHERE wigos_id = :w"),
            {"w": station}).mappings().one_or_none()
    if row is None:
        raise UnknownReferenceError(f"parameter 'station': unknown station '{station}' (not in the datastore)")
    return dict(row)


def data_years(catalog: Catalog, station: str, element: str) -> tuple[int, int] | None:
    """The first and last UTC year with a value of ``element`` at ``station`` (None: no value)."""
    station, element = _station(station), _element(element)
    with catalog_connections(catalog).datastore().engine.connect() as connection:
        row = connection.execute(sa.text(
            """
            SELECT extract(year FROM min(o.phenomenon_time) AT TIME ZONE 'UTC')::int AS first,
                   extract(year FROM max(o.phenomenon_time) AT TIME ZONE 'UTC')::int AS last
            FROM observation AS o
            WHERE o.station_id = (SELECT id FROM station WHERE wigos_id = :station)
              AND o.element_id = (SELECT id FROM element WHERE code = :element)
              AND o.status = 'latest' AND o.value IS NOT NULL
            """), {"station": station, "element": element}).one()
    return None if row.first is None else (int(row.first), int(row.last))


# --------------------------------------------------------------------------- the time series


@dataclass(frozen=True)
class Series:
    """One station's values of one element, and their QC marks.

    ``values``: ``time`` (UTC), ``value``, ``mark`` — every value, or with ``aggregated`` set
    (e.g. ``"daily mean"``) one row per UTC day with ``low`` and ``high`` besides the mean.
    ``flagged``: every value whose mark is not ``unflagged``, one by one (``time, value,
    qc_status, final_flag, mark, duration_seconds, level, source_id``), also when the values are
    aggregated.  ``count``: how many values the period holds.
    """

    station: str
    element: str
    units: str
    values: pd.DataFrame
    flagged: pd.DataFrame
    count: int
    aggregated: str | None = None

    def marked(self, mark: Mark) -> pd.DataFrame:
        """The flagged values with ``mark``."""
        return self.flagged[self.flagged["mark"] == mark.value]


_FLAGGED_COLUMNS = ["time", "value", "qc_status", "final_flag", "mark", "duration_seconds", "level", "source_id"]

_SERIES_WHERE = """
    WHERE o.station_id = (SELECT id FROM station WHERE wigos_id = %(station)s)
      AND o.element_id = (SELECT id FROM element WHERE code = %(element)s)
      AND o.status = 'latest'
      AND (CAST(%(start)s AS timestamptz) IS NULL OR o.phenomenon_time >= %(start)s)
      AND (CAST(%(end)s AS timestamptz) IS NULL OR o.phenomenon_time < %(end)s)
"""
_COUNT_SQL = "SELECT count(*) FROM observation AS o" + _SERIES_WHERE
# The marks in SQL, as codes into MARK_CODES: the column names come from MARK_RULES, the
# words are bound.
_MARK_SQL = ("CAST(CASE " + " ".join(f"WHEN o.{column} = %(mark_{code})s THEN {code}"
                                     for code, (_, column, _) in enumerate(MARK_RULES))
             + f" ELSE {len(MARK_RULES)} END AS smallint)")
_MARK_WORDS: dict[str, object] = {f"mark_{code}": word for code, (_, _, word) in enumerate(MARK_RULES)} | {
    "unflagged": len(MARK_RULES)}
# Every value of the series packed by PostgreSQL into three bytea (the binary form of each
# time, value and mark code, concatenated, in key order): one row arrives and numpy reads each
# column at once, instead of 11,000 rows of Python objects for 30 years of daily values.
_PACKED_SQL = (
    """
    SELECT count(*), string_agg(timestamptz_send(r.phenomenon_time), ''::bytea),
           string_agg(float8send(r.value), ''::bytea), string_agg(int2send(r.mark), ''::bytea)
    FROM (SELECT o.phenomenon_time, coalesce(o.value, 'NaN'::float8) AS value, """ + _MARK_SQL + """ AS mark
          FROM observation AS o""" + _SERIES_WHERE + """
          ORDER BY o.phenomenon_time, o.duration_seconds, o.level, o.source_id) AS r
    """
)
# One row per UTC day: the mean, lowest and highest value (30 years of hourly values become
# 10,958 rows), for series too long to draw value by value.
_DAILY_SQL = (
    """
    SELECT date_trunc('day', o.phenomenon_time, 'UTC') AS time, avg(o.value) AS value,
           min(o.value) AS low, max(o.value) AS high
    FROM observation AS o""" + _SERIES_WHERE + """
    GROUP BY 1 ORDER BY 1
    """
)
# The flagged values one by one (they are few), with what the marks are made of.
_FLAGGED_SQL = (
    """
    SELECT r.time, r.value, r.qc_status, r.final_flag, r.mark, r.duration_seconds, r.level, r.source_id
    FROM (SELECT o.phenomenon_time AS time, o.value, o.qc_status, o.final_flag, o.duration_seconds, o.level,
                 o.source_id, """ + _MARK_SQL + """ AS mark
          FROM observation AS o""" + _SERIES_WHERE + """) AS r
    WHERE r.mark < %(unflagged)s
    ORDER BY r.time, r.duration_seconds, r.level, r.source_id
    """
)
POSTGRES_EPOCH_MICROSECONDS = 946_684_800 * 1_000_000  # 2000-01-01, PostgreSQL's epoch, in Unix µs


def _bounds(start: date | datetime | str | None, end: date | datetime | str | None) -> tuple[datetime | None, datetime | None]:
    """``start`` as the first instant included and ``end`` as the first instant after (UTC);
    dates are whole UTC days, both included."""
    def instant(value: date | datetime | str | None, parameter: str, after: bool) -> datetime | None:
        if value is None or value == "":
            return None
        if isinstance(value, str):
            try:
                value = date.fromisoformat(value) if len(value.strip()) == 10 else datetime.fromisoformat(value)
            except ValueError:
                raise ParameterError(parameter, f"{value!r} is not an ISO date (e.g. 2020-01-31)") from None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        if isinstance(value, date):
            moment = datetime.combine(value, time.min, timezone.utc)
            return moment + timedelta(days=1) if after else moment
        raise ParameterError(parameter, f"{value!r} is not a date")

    first, after = instant(start, "start", False), instant(end, "end", True)
    if first is not None and after is not None and after <= first:
        raise ParameterError("end", f"the period ends before it starts ({start} to {end})")
    return first, after


def series(
    catalog: Catalog,
    station: str,
    element: str,
    start: date | datetime | str | None = None,
    end: date | datetime | str | None = None,
    *,
    max_points: int = MAX_SERIES_POINTS,
) -> Series:
    """``element`` at ``station`` from ``start`` to ``end`` (UTC days, both included; None: no
    limit) as it is now in the datastore, each value with its :class:`Mark`."""
    station, element = _station(station), _element(element)
    first, after = _bounds(start, end)
    connections = catalog_connections(catalog)
    _known_station(connections, station)
    bounds = {"station": station, "element": element, "start": first, "end": after} | _MARK_WORDS
    units = elements()[element].units
    with connections.datastore().engine.connect() as connection:
        # The driver's own cursor, for binary results (bytea as it is, not as hex text).
        with connection.connection.driver_connection.cursor(binary=True) as cursor:  # type: ignore[union-attr]
            count = int(cursor.execute(_COUNT_SQL, bounds).fetchone()[0])
            flagged = _frame(cursor.execute(_FLAGGED_SQL, bounds), _FLAGGED_COLUMNS)
            if count <= max_points:
                values = _unpacked(cursor.execute(_PACKED_SQL, bounds).fetchone())
                aggregated = None
            else:
                values = _frame(cursor.execute(_DAILY_SQL, bounds), ["time", "value", "low", "high"])
                values["mark"] = Mark.UNFLAGGED.value
                aggregated = "daily mean"
    flagged["mark"] = _mark_names(flagged["mark"].to_numpy(dtype=int))
    return Series(station, element, units, values, flagged, count, aggregated)


def _frame(cursor: Any, columns: list[str]) -> pd.DataFrame:
    """A cursor's rows as a frame, ``time`` in UTC."""
    frame = pd.DataFrame(cursor.fetchall(), columns=columns)
    frame["time"] = pd.to_datetime(frame["time"], utc=True)
    for column in ("value", "low", "high"):
        if column in frame:
            frame[column] = frame[column].astype(float)
    return frame


def _unpacked(row: tuple[int, bytes | None, bytes | None, bytes | None]) -> pd.DataFrame:
    """The packed series (:data:`_PACKED_SQL`) as ``time, value, mark`` columns."""
    count, times, values, codes = row
    if not count:
        return pd.DataFrame({"time": pd.Series(dtype="datetime64[us, UTC]"), "value": pd.Series(dtype=float),
                             "mark": pd.Series(dtype=object)})
    microseconds = np.frombuffer(times, ">i8").astype(np.int64) + POSTGRES_EPOCH_MICROSECONDS
    return pd.DataFrame({
        "time": pd.DatetimeIndex(microseconds.view("datetime64[us]"), tz="UTC"),
        "value": np.frombuffer(values, ">f8").astype(np.float64),
        "mark": _mark_names(np.frombuffer(codes, ">i2")),
    })


# --------------------------------------------------------------------------- normals


@dataclass(frozen=True)
class Normal:
    """A station's monthly normal of one element over a 30-year period.

    ``months``: January to December, None where the rule of years is not met; ``statistic``:
    ``mean`` (of the monthly means) or ``total`` (mean of the monthly totals); ``source``: the
    stored product it was read from, or that it was computed from the archive.
    """

    station: str
    element: str
    period: Period
    statistic: str
    months: tuple[float | None, ...]
    source: str

    @property
    def given(self) -> int:
        """How many months have a normal."""
        return sum(value is not None for value in self.months)

    def of_month(self, month: int) -> float | None:
        """The normal of calendar month ``month`` (1-12)."""
        return self.months[month - 1]


def _normal_months(rows: pd.DataFrame) -> tuple[float | None, ...]:
    by_month = {int(m): (None if pd.isna(v) else float(v)) for m, v in zip(rows["month"], rows["value"])
                if not pd.isna(m)}
    return tuple(by_month.get(month) for month in range(1, 13))


def stored_normal(catalog: Catalog, station: str, element: str,
                  period: Period = STANDARD_NORMAL_PERIOD) -> Normal | None:
    """The station's normal from a stored normals product of ``period`` (the newest that has the
    station and element), or None."""
    statistic = statistic_of(element).value
    products = catalog.products.read(kind=ProductKind.NORMALS.value, period=period.label)
    for product in products.sort_values("created_at", ascending=False).itertuples():  # a few products
        table = catalog.products.read(kind=ProductKind.NORMALS.value, period=period.label, name=product.name)
        rows = table[(table["wigos_id"] == station) & (table["element"] == element)
                     & (table["statistic"] == statistic)]
        if not rows.empty:
            return Normal(station, element, period, statistic, _normal_months(rows),
                          f"stored product {product.key}")
    return None


def station_normal(catalog: Catalog, station: str, element: str,
                   period: Period = STANDARD_NORMAL_PERIOD) -> Normal | None:
    """The station's normal of ``element``: a stored product's, else computed by
    :func:`~opencdms_kernel.products.climate_normals` from the archive; None when there is
    none (an element without monthly values, e.g. a direction, or no data in the archive).
    A normal whose years do not meet the rule has ``given == 0``."""
    station, element = _station(station), _element(element)
    if element in UNSUMMARISED_ELEMENTS:
        return None
    found = stored_normal(catalog, station, element, period)
    if found is not None:
        return found
    connections = catalog_connections(catalog)
    zone = _known_station(connections, station)["timezone"] or "UTC"
    statistic = statistic_of(element)
    # The normals spec of this one element: a mean or a total, nothing else.
    spec = NormalsSpec(means=(element,) if statistic is Statistic.MEAN else (),
                       totals=(element,) if statistic is Statistic.TOTAL else (), extremes=(), thresholds=())
    archive = connect_archive(connections.bucket())
    try:
        product = climate_normals(archive, period, stations=[station], spec=spec, timezones={station: zone})
    except ProductReferenceError:
        return None  # the archive has no value of the station at all
    finally:
        archive.close()
    rows = product.table.to_pandas()
    rows = rows[(rows["element"] == element) & (rows["statistic"] == statistic.value)]
    if rows.empty:
        return None
    return Normal(station, element, period, statistic.value, _normal_months(rows), "computed from the archive")


def normal_text(normal: Normal | None) -> str:
    """What a page says about a normal: where it comes from, or that there is none."""
    if normal is None:
        return "no normal"
    if normal.given == 0:
        return f"no normal: the {normal.period.label} record does not meet the rule of years"
    return f"normal {normal.period.label} ({normal.statistic}, {normal.given} of 12 months), {normal.source}"


# --------------------------------------------------------------------------- monthly values


def monthly_values(catalog: Catalog, station: str, element: str, period: Period) -> pd.DataFrame:
    """The station's monthly values of ``period`` (the products' monthly summaries from the
    archive): ``year, month, time`` (first day, UTC) ``, value`` (mean or total; empty where
    the month does not meet the completeness rule) ``, value_days, missing_days, meets_rule``."""
    station, element = _station(station), _element(element)
    if element in UNSUMMARISED_ELEMENTS:
        raise ParameterError("element", f"{element} has no monthly value (an angle has no arithmetic mean)")
    connections = catalog_connections(catalog)
    zone = _known_station(connections, station)["timezone"] or "UTC"
    archive = connect_archive(connections.bucket())
    try:
        product = monthly_summaries(archive, period, elements=[element], stations=[station], thresholds=(),
                                    timezones={station: zone})
    except ProductReferenceError:
        product = None  # no value of the station in the archive
    finally:
        archive.close()
    columns = ["year", "month", "time", "value", "value_days", "missing_days", "meets_rule"]
    if product is None or product.table.num_rows == 0:
        return pd.DataFrame(columns=columns)
    table = product.table.to_pandas()
    table["value"] = table[statistic_of(element).value]
    table["time"] = pd.to_datetime(dict(year=table["year"], month=table["month"], day=1), utc=True)
    return table[columns].reset_index(drop=True)


@dataclass(frozen=True)
class Climatology:
    """A station's monthly climatology of ``period`` beside its normal.

    ``table``: one row per calendar month: ``month, value`` (mean over the years of the
    monthly values that meet the rule), ``years`` (how many), ``normal`` (empty without one),
    ``difference`` (value - normal).
    """

    station: str
    element: str
    units: str
    period: Period
    statistic: str
    table: pd.DataFrame
    normal: Normal | None


def climatology(catalog: Catalog, station: str, element: str, period: Period,
                normal: Normal | None = None, monthly: pd.DataFrame | None = None) -> Climatology:
    """The monthly climatology of ``period`` at ``station`` against its 1991-2020 normal
    (``normal``: already looked up, else :func:`station_normal`; ``monthly``: the period's
    :func:`monthly_values`, when already read)."""
    station, element = _station(station), _element(element)
    if monthly is None:
        monthly = monthly_values(catalog, station, element, period)
    if normal is None:
        normal = station_normal(catalog, station, element)
    frame = monthly.assign(value=pd.to_numeric(monthly["value"]))
    grouped = frame.groupby("month")["value"].agg(["mean", "count"]).reindex(range(1, 13))
    table = pd.DataFrame({
        "month": np.arange(1, 13),
        "value": grouped["mean"].to_numpy(dtype=float),
        "years": grouped["count"].fillna(0).to_numpy(dtype=int),
        "normal": np.array([np.nan if normal is None or v is None else v
                            for v in (normal.months if normal else [None] * 12)], dtype=float),
    })
    table["difference"] = table["value"] - table["normal"]
    return Climatology(station, element, elements()[element].units, period, statistic_of(element).value,
                       table, normal)


def anomalies(catalog: Catalog, station: str, element: str, period: Period,
              normal: Normal | None = None, monthly: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each month of ``period`` against the normal of its calendar month: ``time, year, month,
    value, normal, anomaly`` (empty where the month has no value or no normal; ``normal`` and
    ``monthly`` as for :func:`climatology`)."""
    if monthly is None:
        monthly = monthly_values(catalog, station, element, period)
    if normal is None:
        normal = station_normal(catalog, station, element)
    months = np.array([np.nan if normal is None or v is None else v
                       for v in (normal.months if normal else [None] * 12)], dtype=float)
    frame = monthly[["time", "year", "month"]].copy()
    frame["value"] = pd.to_numeric(monthly["value"]).astype(float)
    frame["normal"] = months[frame["month"].to_numpy(dtype=int) - 1] if len(frame) else np.empty(0)
    frame["anomaly"] = frame["value"] - frame["normal"]
    return frame.reset_index(drop=True)


# --------------------------------------------------------------------------- availability


def availability(catalog: Catalog, element: str, period: Period | None = None,
                 stations: Sequence[str] | None = None) -> pd.DataFrame:
    """Data availability per station and year of ``element`` (None: the years the archive
    holds): ``wigos_id, label, year, value_days, days, fraction`` (days with a value over the
    days of the year; from the archive, every QC status counting)."""
    element = _element(element)
    connections = catalog_connections(catalog)
    columns = ["wigos_id", "label", "year", "value_days", "days", "fraction"]
    known = station_list(catalog)
    archive = connect_archive(connections.bucket())
    try:
        if period is None:
            first, last = archive.execute(
                "SELECT min(year), max(year) FROM observations WHERE element = $element",
                {"element": element}).fetchone()
            if first is None:
                return pd.DataFrame(columns=columns)
            period = Period(int(first), int(last))
        zones = {w: z for w, z in zip(known["wigos_id"], known["timezone"]) if isinstance(z, str) and z}
        try:
            monthly = monthly_availability(archive, period, elements=[element], stations=stations, timezones=zones)
        except ProductReferenceError:
            return pd.DataFrame(columns=columns)
    finally:
        archive.close()
    if monthly.empty:
        return pd.DataFrame(columns=columns)
    yearly = monthly.groupby(["wigos_id", "year"], as_index=False)[["value_days", "days_in_month"]].sum()
    yearly = yearly.rename(columns={"days_in_month": "days"})
    yearly["fraction"] = yearly["value_days"] / yearly["days"]
    yearly["label"] = yearly["wigos_id"].map(dict(zip(known["wigos_id"], known["label"]))).fillna(yearly["wigos_id"])
    return yearly[columns].sort_values(["wigos_id", "year"]).reset_index(drop=True)


# --------------------------------------------------------------------------- the selection as files


def selection(catalog: Catalog, station: str, element: str,
              start: date | datetime | str | None = None, end: date | datetime | str | None = None) -> pd.DataFrame:
    """Every value of the selection as stored now (the catalog's ``observations_live``): the
    rows a download holds."""
    station, element = _station(station), _element(element)
    first, after = _bounds(start, end)
    _known_station(catalog_connections(catalog), station)
    return catalog.observations_live.read(
        station=station, element=element,
        start=None if first is None else first.isoformat(),
        end=None if after is None else (after - timedelta(microseconds=1)).isoformat())


def selection_csv(rows: pd.DataFrame) -> bytes:
    """The rows of :func:`selection` as CSV (UTF-8, times in ISO 8601 UTC)."""
    frame = rows.copy()
    for column in ("phenomenon_time", "changed_at"):
        if column in frame:
            frame[column] = pd.to_datetime(frame[column], utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


def selection_dataset(catalog: Catalog, rows: pd.DataFrame, station: str, element: str) -> xr.Dataset:
    """The rows of :func:`selection` as a CF-1.8 discrete-sampling-geometry time series of one
    station (``featureType: timeSeries``): the element's values with standard name, units and
    cell method, their QC status and final flag, and the station's location."""
    station, element = _station(station), _element(element)
    info = _known_station(catalog_connections(catalog), station)
    described = elements()[element]
    times = pd.to_datetime(rows["phenomenon_time"], utc=True).dt.tz_localize(None).to_numpy("datetime64[ns]")
    dataset = xr.Dataset(
        {
            element: ("obs", rows["value"].to_numpy(dtype=float), {
                "standard_name": described.standard_name, "long_name": described.name, "units": described.units,
                "cell_methods": described.cell_method, "coordinates": "time lat lon alt station_id",
                "ancillary_variables": "qc_status final_flag"}),
            "qc_status": ("obs", rows["qc_status"].astype(str).to_numpy(dtype=object),
                          {"long_name": "quality control status (none, passed, suspect, failed)"}),
            "final_flag": ("obs", rows["final_flag"].fillna("").astype(str).to_numpy(dtype=object),
                           {"long_name": "final quality flag (good, suspect, bad, verified, corrected, rejected)"}),
            "duration_seconds": ("obs", rows["duration_seconds"].to_numpy(dtype=np.int32),
                                 {"long_name": "period the value covers", "units": "s"}),
            "station_id": ((), station, {"cf_role": "timeseries_id", "long_name": info["name"]}),
        },
        coords={
            "time": ("obs", times, {"standard_name": "time", "long_name": "start of the observed period"}),
            "lat": ((), float(info["latitude"]), {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ((), float(info["longitude"]), {"standard_name": "longitude", "units": "degrees_east"}),
            "alt": ((), np.nan if info["elevation"] is None else float(info["elevation"]),
                    {"standard_name": "height_above_mean_sea_level", "units": "m", "positive": "up"}),
        },
        attrs={"Conventions": "CF-1.8", "featureType": "timeSeries",
               "title": f"{described.name} at {info['name']} ({station})",
               "source": "OpenCDMS Workbench datastore (latest versions)",
               "history": f"{datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ} exported by the explorer"},
    )
    dataset["time"].encoding.update({"units": "seconds since 1970-01-01 00:00:00", "calendar": "proleptic_gregorian"})
    return dataset


def selection_netcdf(dataset: xr.Dataset) -> bytes:
    """A dataset as NetCDF-4 bytes (h5netcdf)."""
    return bytes(dataset.to_netcdf(engine="h5netcdf"))


def read_netcdf(data: bytes) -> xr.Dataset:
    """NetCDF bytes (as :func:`selection_netcdf` writes them) back into a loaded dataset."""
    with xr.open_dataset(io.BytesIO(data), engine="h5netcdf") as dataset:
        return dataset.load()
