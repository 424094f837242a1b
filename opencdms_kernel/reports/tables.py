"""Small read-only tables for notebooks and reports.

A station's days (the products' own, so a report shows what its figures are made of), station
labels and time zones (from the catalog's station table), counts of flagged values and the
flagged values of a QC scope, the monthly data availability (from
:func:`~opencdms_kernel.products.monthly_summaries`, counting every value present), annual
values and annual cycles from monthly summaries, and the layouts of monthly and normals
products for display.  Nothing here writes anything.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from opencdms_kernel.products.model import DEFAULT_QC_POLICY, Period, QcPolicy, figure, statistic_of
from opencdms_kernel.vocabulary import QcStatus

if TYPE_CHECKING:
    import duckdb

    from opencdms_kernel.db.engine import Datastore

# The QC statuses a table marks beside a value (and the plots circle, see figures.FLAG_COLOURS).
FLAGGED_STATUSES: tuple[QcStatus, ...] = (QcStatus.SUSPECT, QcStatus.FAILED)


def station_names(stations: pd.DataFrame) -> dict[str, str]:
    """WIGOS id -> "Name (WIGOS id)" for labels, from a station table (the catalog's ``stations``)."""
    return {row.wigos_id: f"{row.name} ({row.wigos_id})" for row in stations.itertuples()}


def station_timezones_of(stations: pd.DataFrame) -> dict[str, str]:
    """WIGOS id -> IANA time zone, from a station table (the catalog's ``stations``), for the
    products' ``timezones`` parameter: the station-local day."""
    return {
        wigos_id: zone for wigos_id, zone in zip(stations["wigos_id"], stations["timezone"])
        if isinstance(zone, str) and zone
    }


def daily_values(
    connection: "duckdb.DuckDBPyConnection",
    wigos_id: str,
    first_day: date,
    last_day: date,
    elements: Sequence[str] = ("TMAX", "TMIN", "PRCP"),
    timezone_name: str = "UTC",
    qc: QcPolicy = DEFAULT_QC_POLICY,
) -> pd.DataFrame:
    """A station's days from the archive: ``day, element, value, qc_status, final_flag, counted``.

    The products' days (:func:`~opencdms_kernel.products.station_days`: the station-local day,
    the rule for choosing between sources, days made from sub-daily values), so the table of a
    report shows the values its monthly figures are made of.  A day whose values the QC policy
    excludes is listed with the excluded value and ``counted`` false, so a report can show what
    was left out.
    """
    from opencdms_kernel.products import Period, station_days  # noqa: PLC0415 - reports import products lazily
    from opencdms_kernel.products.sql import select  # noqa: PLC0415

    selection = select(connection, Period(first_day.year, last_day.year), list(elements), [wigos_id], qc,
                       {wigos_id: timezone_name or "UTC"})
    days = station_days(connection, selection).to_pandas()
    days = days[(days["day"] >= first_day) & (days["day"] <= last_day)]
    frame = pd.DataFrame({
        "day": days["day"], "element": days["element"],
        "value": days["value"].where(days["counted"], days["excluded_value"]),
        "qc_status": days["qc_status"], "final_flag": days["final_flag"], "counted": days["counted"],
    })
    return frame.sort_values(["day", "element"]).reset_index(drop=True)


def daily_table(daily: pd.DataFrame) -> pd.DataFrame:
    """Days as rows, elements as columns; a flagged value is followed by its QC status, and a
    value the QC policy excluded says so."""
    if daily.empty:
        return pd.DataFrame(columns=["day"])

    def shown(row: pd.Series) -> str:
        text = "" if pd.isna(row["value"]) else format(figure(row["value"], 1), "f")
        if "counted" in row and not row["counted"]:
            return f"{text} ({row['qc_status']}, excluded)"
        return f"{text} ({row['qc_status']})" if row["qc_status"] in FLAGGED_STATUSES else text

    cells = daily.assign(shown=daily.apply(shown, axis=1))
    table = cells.pivot(index="day", columns="element", values="shown").fillna("")
    table.columns.name = None
    return table.reset_index()


def availability(
    connection: "duckdb.DuckDBPyConnection",
    period: Period,
    *,
    elements: Sequence[str] = ("TMAX", "TMIN", "PRCP"),
    stations: Sequence[str] | None = None,
    timezones: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Days with a value per station, element and month of ``period``.

    Columns ``wigos_id, element, year, month, days_in_month, value_days, fraction,
    meets_rule`` (the WMO 3/5 rule for a monthly value) ``, complete``.  Computed by
    :func:`~opencdms_kernel.products.monthly_summaries` with every QC status counting
    (:data:`~opencdms_kernel.products.EVERY_VALUE`): the question here is whether a value was
    received, not whether it is usable.
    """
    from opencdms_kernel.products import EVERY_VALUE, monthly_summaries

    product = monthly_summaries(
        connection, period, elements=list(elements), stations=stations, qc=EVERY_VALUE,
        thresholds=(), timezones=timezones,
    )
    frame = product.table.select(
        ["wigos_id", "element", "year", "month", "days_in_month", "value_days", "meets_rule", "complete"]
    ).to_pandas()
    frame["fraction"] = frame["value_days"] / frame["days_in_month"]
    return frame


def flag_counts(
    connection: "duckdb.DuckDBPyConnection", period: Period, wigos_id: str | None = None
) -> pd.DataFrame:
    """Values per element in the archive, and how many of them are flagged suspect or failed.

    Columns ``element, values, suspect, failed``.  Unflagged values are not split into
    "checked" and "not checked": the archive only carries the flags (the coverage of QC runs
    is in PostgreSQL, see :func:`opencdms_kernel.qc.attach_quality_view`).
    """
    return connection.execute(
        """
        SELECT element, count(*) AS "values",
               count(*) FILTER (WHERE qc_status = $suspect) AS suspect,
               count(*) FILTER (WHERE qc_status = $failed) AS failed
        FROM observations
        WHERE year BETWEEN $first AND $last AND ($wigos_id IS NULL OR wigos_id = $wigos_id)
        GROUP BY element ORDER BY element
        """,
        {"first": period.start_year, "last": period.end_year, "wigos_id": wigos_id,
         "suspect": QcStatus.SUSPECT.value, "failed": QcStatus.FAILED.value},
    ).df()


def flagged_values(
    datastore: "Datastore",
    *,
    stations: Sequence[str] | None = None,
    elements: Sequence[str] | None = None,
    start: date | None = None,
    end: date | None = None,
    limit: int = 200,
) -> pd.DataFrame:
    """Current values whose QC status is suspect or failed, with what flagged them.

    Read from PostgreSQL (the system of record): the archive does not carry the per-test
    entries.  ``start``/``end`` are UTC days, inclusive; None is no limit.  At most ``limit``
    rows, failed first, then by station, element and time.
    """
    import sqlalchemy as sa

    from opencdms_kernel.db.schema import element, observation, station

    query = (
        sa.select(
            station.c.wigos_id, element.c.code.label("element"), observation.c.phenomenon_time,
            observation.c.value, observation.c.qc_status, observation.c.result_quality,
        )
        .select_from(
            observation.join(station, station.c.id == observation.c.station_id)
            .join(element, element.c.id == observation.c.element_id)
        )
        .where(observation.c.status == "latest",
               observation.c.qc_status.in_([status.value for status in FLAGGED_STATUSES]))
    )
    if stations:
        query = query.where(station.c.wigos_id.in_(list(stations)))
    if elements:
        query = query.where(element.c.code.in_(list(elements)))
    if start is not None:
        query = query.where(observation.c.phenomenon_time >= datetime.combine(start, time.min, timezone.utc))
    if end is not None:
        after = datetime.combine(end, time.min, timezone.utc) + timedelta(days=1)
        query = query.where(observation.c.phenomenon_time < after)
    query = query.order_by(
        sa.case((observation.c.qc_status == QcStatus.FAILED.value, 0), else_=1), station.c.wigos_id, element.c.code,
        observation.c.phenomenon_time,
    ).limit(limit)
    with datastore.engine.connect() as connection:
        rows = connection.execute(query).all()
    frame = pd.DataFrame(
        [
            {
                "wigos_id": row.wigos_id,
                "element": row.element,
                "time (UTC)": row.phenomenon_time.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M"),
                "value": row.value,
                "qc_status": row.qc_status,
                "flags": describe_entries(row.result_quality),
            }
            for row in rows
        ],
        columns=["wigos_id", "element", "time (UTC)", "value", "qc_status", "flags"],
    )
    return frame


def describe_entries(result_quality: Mapping[str, Any] | None) -> str:
    """``range: above_range (failed); step: jump (suspect)`` from a ``result_quality`` value."""
    parts = []
    for test, entry in sorted((result_quality or {}).items()):
        if test == "ingest" or not isinstance(entry, Mapping):
            continue
        flag = entry.get("flag") or entry.get("decision") or ""
        result = entry.get("result")
        parts.append(f"{test}: {flag}" + (f" ({result})" if result else ""))
    return "; ".join(parts)


def annual_values(monthly: pd.DataFrame) -> pd.DataFrame:
    """Per element and year, from monthly summaries: mean of the 12 monthly means, sum of the 12 totals.

    A year lacking any month's value has none: the year's value is only given when every
    month met the completeness rule (the monthly product's own rule).
    """
    rows = []
    for (element_code, year), group in monthly.groupby(["element", "year"], sort=True):
        column = statistic_of(element_code).value  # "mean" or "total": the product's column
        values = group[column]
        complete = len(group) == 12 and values.notna().all()
        rows.append({
            "element": element_code, "year": int(year), "statistic": column,
            "value": (values.sum() if column == "total" else values.mean()) if complete else np.nan,
            "months": int(values.notna().sum()),
        })
    return pd.DataFrame(rows, columns=["element", "year", "statistic", "value", "months"])


def month_overview(monthly: pd.DataFrame, labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """One row per station for one month of monthly summaries: the network at a glance.

    Per element its monthly statistic (``TMAX mean``, ``PRCP total`` …), the highest TMAX,
    the lowest TMIN, days of precipitation >= 1 mm, the missing days, and what quality control
    did to the month: the suspect values it used and the values the QC policy excluded.  A
    statistic the month does not qualify for (WMO completeness rule) is empty.
    """
    table = pd.DataFrame({"wigos_id": sorted(monthly["wigos_id"].unique())})
    for code, rows in monthly.groupby("element", sort=True):
        rows = rows.set_index("wigos_id")
        statistic = statistic_of(code).value
        table[f"{code} {statistic}"] = table["wigos_id"].map(rows[statistic])
        if code == "TMAX":
            table["TMAX highest"] = table["wigos_id"].map(rows["highest"])
        if code == "TMIN":
            table["TMIN lowest"] = table["wigos_id"].map(rows["lowest"])
        if code == "PRCP" and "days_PRCP_ge_1" in rows:
            table["PRCP days >= 1 mm"] = table["wigos_id"].map(rows["days_PRCP_ge_1"])
        table[f"{code} missing days"] = table["wigos_id"].map(rows["missing_days"])
        if "suspect_values" in rows:
            table[f"{code} suspect used"] = table["wigos_id"].map(rows["suspect_values"])
            table[f"{code} excluded"] = table["wigos_id"].map(rows["excluded_values"])
    table.insert(0, "station", table["wigos_id"].map(lambda wigos_id: (labels or {}).get(wigos_id, wigos_id)))
    return table.drop(columns="wigos_id")


def normals_table(
    normals: pd.DataFrame, element: str, statistic: str, labels: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """One statistic of a normals product: stations as rows, months 1-12 and ``year`` as columns."""
    rows = normals[(normals["element"] == element) & (normals["statistic"] == statistic)].copy()
    rows["column"] = rows["month"].map(lambda month: "year" if pd.isna(month) else str(int(month)))
    table = rows.pivot(index="wigos_id", columns="column", values="value")
    table = table.reindex(columns=[str(m) for m in range(1, 13)] + ["year"])
    table.columns.name = None
    table.index = [(labels or {}).get(wigos_id, wigos_id) for wigos_id in table.index]
    table.index.name = "station"
    return table.reset_index()


def normals_cycles(normals: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per station, its monthly normals for a climograph: mean temperatures and PRCP totals."""
    wanted = normals["month"].notna() & (
        ((normals["statistic"] == "mean") & normals["element"].isin(["TMAX", "TMIN", "TMEAN"]))
        | ((normals["statistic"] == "total") & (normals["element"] == "PRCP"))
    )
    rows = normals[wanted].assign(month=lambda frame: frame["month"].astype(int))
    return {
        wigos_id: group[["element", "month", "value"]].reset_index(drop=True)
        for wigos_id, group in rows.groupby("wigos_id", sort=True)
    }


def monthly_cycle(monthly: pd.DataFrame) -> pd.DataFrame:
    """The average annual cycle of monthly summaries: per element and calendar month, the
    mean of the monthly means (temperatures) or of the monthly totals (PRCP) over the years
    that have one.  Not a WMO normal (no rule on the number of years): a description."""
    rows = []
    for (code, month), group in monthly.groupby(["element", "month"], sort=True):
        column = statistic_of(code).value
        rows.append({"element": code, "month": int(month), "value": group[column].mean(),
                     "years": int(group[column].notna().sum())})
    return pd.DataFrame(rows, columns=["element", "month", "value", "years"])
