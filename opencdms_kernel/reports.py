"""Tables, plots and HTML reports shared by the notebooks in ``notebooks/``.

The notebooks are the processes; this module keeps them short.  It holds what several of them
need and what is not a climate computation of its own (those live in :mod:`.products` and
:mod:`.qc`):

- reading the parameters people type (``"2020-07"``, ``"1991-2020"``, ``"2020-01-31"``) with
  errors that name the parameter;
- small read-only tables for display: a station's days (the products' own, so a report shows
  what its figures are made of), station labels and time zones (from the catalog's station
  table), counts of flagged values, the flagged values of a QC scope, the monthly data
  availability (from :func:`~opencdms_kernel.products.monthly_summaries`, counting every
  value present);
- plots made with matplotlib's object API (:class:`~matplotlib.figure.Figure`, never pyplot),
  so no global state or GUI backend is involved and the same figure serves the notebook and
  the report (matplotlib is imported on the first plot only);
- :class:`Report`: a self-contained HTML page (tables, PNG images inline as ``data:`` URIs, no
  scripts, fonts or styles from elsewhere) that opens offline and is written whole to the
  bucket.

Nothing here writes to the datastore.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    Period,
    ProductParameterError,
    QcPolicy,
    figure,
    statistic_of,
)

if TYPE_CHECKING:
    import duckdb
    from matplotlib.figure import Figure

    from opencdms_kernel.bucket import Bucket
    from opencdms_kernel.db.engine import Datastore

HTML_MEDIA_TYPE = "text/html"
CSV_MEDIA_TYPE = "text/csv"
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
JSON_MEDIA_TYPE = "application/json"
BUFR_MEDIA_TYPE = "application/bufr"
TEXT_MEDIA_TYPE = "text/plain"

# Colours used across plots, so an element looks the same in every report.
ELEMENT_COLOURS = {"TMAX": "#d62728", "TMIN": "#1f77b4", "TMEAN": "#7f7f7f", "PRCP": "#2ca02c"}
FLAG_COLOURS = {"suspect": "#ff7f0e", "failed": "#000000"}


# --------------------------------------------------------------------------- parameters


def parse_month(text: str, parameter: str = "month") -> tuple[int, int]:
    """``"2020-07"`` as ``(2020, 7)``; anything else fails naming ``parameter``."""
    match = re.fullmatch(r"\s*(\d{4})-(\d{1,2})\s*", text or "")
    if not match or not 1 <= int(match.group(2)) <= 12:
        raise ProductParameterError(parameter, f"{text!r} is not a month like 2020-07")
    return int(match.group(1)), int(match.group(2))


def parse_period(text: str, parameter: str = "period") -> Period:
    """``"1991-2020"`` or ``"2020"`` as a :class:`Period`; errors name ``parameter``."""
    try:
        return Period.parse(text)
    except ProductParameterError as exc:
        raise ProductParameterError(parameter, exc.reason) from None


def parse_day(text: str | None, parameter: str) -> date | None:
    """``"2020-01-31"`` as a date, None or ``""`` as None (no limit); errors name ``parameter``."""
    if not text or not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise ProductParameterError(parameter, f"{text!r} is not a day like 2020-01-31") from None


def optional_list(values: Sequence[str] | str | None) -> list[str] | None:
    """A list parameter where empty means "all": ``[]``/``""``/None become None.

    A single string is accepted as a one-item list (a person typing ``stations="0-20000-0-60001"``).
    """
    if values is None:
        return None
    if isinstance(values, str):
        values = [part for part in re.split(r"[,\s]+", values) if part]
    cleaned = [str(value).strip() for value in values if str(value).strip()]
    return cleaned or None


def month_label(year: int, month: int) -> str:
    """``2020-07``."""
    return f"{year:04d}-{month:02d}"


# --------------------------------------------------------------------------- tables


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
        return f"{text} ({row['qc_status']})" if row["qc_status"] in FLAG_COLOURS else text

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
               count(*) FILTER (WHERE qc_status = 'suspect') AS suspect,
               count(*) FILTER (WHERE qc_status = 'failed') AS failed
        FROM observations
        WHERE year BETWEEN $first AND $last AND ($wigos_id IS NULL OR wigos_id = $wigos_id)
        GROUP BY element ORDER BY element
        """,
        {"first": period.start_year, "last": period.end_year, "wigos_id": wigos_id},
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
        .where(observation.c.status == "latest", observation.c.qc_status.in_(("suspect", "failed")))
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
        sa.case((observation.c.qc_status == "failed", 0), else_=1), station.c.wigos_id, element.c.code,
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


# --------------------------------------------------------------------------- plots


def new_figure(width: float = 9.0, height: float = 4.0) -> Figure:
    """A matplotlib figure not tied to pyplot (no global state, no GUI backend)."""
    # Imported here: notebooks that only ingest or export should not pay for matplotlib.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def figure_png(figure: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _month_axis_ticks(ax: Any, months: Sequence[tuple[int, int]]) -> None:
    """Label a monthly axis (positions 0..n-1) with years, thinned so they stay readable."""
    starts = [i for i, (_, month) in enumerate(months) if month == 1] or [0]
    step = max(1, math.ceil(len(starts) / 15))
    chosen = starts[::step]
    ax.set_xticks(chosen)
    ax.set_xticklabels([str(months[i][0]) if months[i][1] == 1 else month_label(*months[i]) for i in chosen])


# The classes of a month in the availability heat map, in the order of their colours: what a
# climatologist asks of a month is whether it gives a monthly value under the WMO rule.
AVAILABILITY_CLASSES = (
    ("no value", "#ffffff"),
    ("fails the 3/5 rule", "#f4a261"),
    ("meets the 3/5 rule", "#8ecae6"),
    ("complete", "#1d3557"),
)


def availability_class(frame: pd.DataFrame) -> np.ndarray:
    """Index into :data:`AVAILABILITY_CLASSES` of each month of an :func:`availability` frame."""
    values = frame["value_days"].to_numpy() > 0
    meets = frame["meets_rule"].fillna(False).to_numpy(dtype=bool)
    complete = frame["complete"].fillna(False).to_numpy(dtype=bool)
    return np.select([complete, meets, values], [3, 2, 1], default=0)


def availability_heatmap(
    frame: pd.DataFrame, *, rows: str = "wigos_id", labels: Mapping[str, str] | None = None, title: str = ""
) -> Figure:
    """Heat map of the months: one row per ``rows`` value, one column per month, coloured by class.

    ``frame`` as :func:`availability` returns it (for one element when ``rows`` is the station,
    for one station when ``rows`` is the element).  A month is complete, meets the WMO 3/5 rule
    (a monthly value can be given), fails it, or has no value (white).
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    months = sorted({(int(y), int(m)) for y, m in zip(frame["year"], frame["month"])})
    keys = sorted(frame[rows].unique())
    position = {month: i for i, month in enumerate(months)}
    row_of = {key: i for i, key in enumerate(keys)}
    grid = np.zeros((len(keys), len(months)), dtype=int)
    for key, year, month, kind in zip(frame[rows], frame["year"], frame["month"], availability_class(frame)):
        grid[row_of[key], position[(int(year), int(month))]] = kind
    figure = new_figure(10.0, max(2.4, 0.28 * len(keys) + 1.6))
    ax = figure.add_subplot()
    colours = ListedColormap([colour for _, colour in AVAILABILITY_CLASSES])
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=colours, vmin=-0.5, vmax=len(AVAILABILITY_CLASSES) - 0.5)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([(labels or {}).get(key, key) for key in keys], fontsize=8)
    _month_axis_ticks(ax, months)
    ax.set_title(title)
    counts = np.bincount(grid.ravel(), minlength=len(AVAILABILITY_CLASSES))
    ax.legend(
        handles=[Patch(facecolor=colour, edgecolor="#999999", label=f"{name} ({count:,})")
                 for (name, colour), count in zip(AVAILABILITY_CLASSES, counts)],
        loc="upper center", bbox_to_anchor=(0.5, -0.06 if len(keys) > 6 else -0.18), ncol=4, fontsize=8, frameon=False,
    )
    return figure


def daily_figure(daily: pd.DataFrame, title: str = "") -> Figure:
    """Daily temperatures (lines) and precipitation (bars) of a station; flagged values marked."""
    figure = new_figure(9.0, 4.5)
    ax = figure.add_subplot()
    temperatures = [e for e in ("TMAX", "TMIN", "TMEAN") if e in set(daily["element"])]
    for code in temperatures:
        series = daily[daily["element"] == code]
        ax.plot(series["day"], series["value"], marker=".", color=ELEMENT_COLOURS.get(code), label=code)
    _mark_flags(ax, daily[daily["element"].isin(temperatures)])
    ax.set_ylabel("temperature (°C)")
    if "PRCP" in set(daily["element"]):
        rain = daily[daily["element"] == "PRCP"]
        twin = ax.twinx()
        twin.bar(rain["day"], rain["value"], color=ELEMENT_COLOURS["PRCP"], alpha=0.4, label="PRCP")
        _mark_flags(twin, rain)
        twin.set_ylabel("precipitation (mm)")
        twin.set_ylim(bottom=0)
        twin.legend(loc="upper right")
        ax.set_zorder(twin.get_zorder() + 1)  # temperatures drawn over the rain bars
        ax.patch.set_visible(False)
    if temperatures:
        ax.legend(loc="upper left")
    ax.set_title(title)
    figure.autofmt_xdate()
    return figure


def _mark_flags(ax: Any, values: pd.DataFrame) -> None:
    for status, colour in FLAG_COLOURS.items():
        flagged = values[values["qc_status"] == status]
        if not flagged.empty:
            ax.scatter(flagged["day"], flagged["value"], s=60, facecolors="none", edgecolors=colour,
                       linewidths=1.5, label=f"QC {status}", zorder=5)


def monthly_series_figure(monthly: pd.DataFrame, title: str = "") -> Figure:
    """Monthly mean temperatures (lines) and monthly precipitation totals (bars) over time.

    ``monthly``: monthly summaries of one station (``element, year, month, mean, total``).
    """
    figure = new_figure(10.0, 5.0)
    temperature_ax, rain_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    for code in ("TMAX", "TMEAN", "TMIN"):
        series = monthly[monthly["element"] == code]
        if not series.empty:
            temperature_ax.plot(_month_starts(series), series["mean"], color=ELEMENT_COLOURS[code], label=code, linewidth=1)
    temperature_ax.set_ylabel("monthly mean (°C)")
    if temperature_ax.lines:
        temperature_ax.legend(loc="upper left", ncols=3)
    rain = monthly[monthly["element"] == "PRCP"]
    if not rain.empty:
        rain_ax.bar(_month_starts(rain), rain["total"], width=25, color=ELEMENT_COLOURS["PRCP"])
    rain_ax.set_ylabel("monthly total (mm)")
    temperature_ax.set_title(title)
    return figure


def _month_starts(frame: pd.DataFrame) -> pd.Series:
    return pd.to_datetime(pd.DataFrame({"year": frame["year"], "month": frame["month"], "day": 1}))


def annual_cycle_figure(cycle: pd.DataFrame, title: str = "", *, ax: Any = None) -> Figure | None:
    """A climograph: mean temperatures per calendar month (lines) and precipitation (bars).

    ``cycle``: ``element, month, value`` (TMAX/TMIN/TMEAN means, PRCP totals).  Drawn into
    ``ax`` when given (small multiples), else into a new figure, which is returned.
    """
    figure = None
    if ax is None:
        figure = new_figure(6.0, 3.6)
        ax = figure.add_subplot()
    rain = cycle[cycle["element"] == "PRCP"].sort_values("month")
    twin = ax.twinx()
    if not rain.empty:
        twin.bar(rain["month"], rain["value"], color=ELEMENT_COLOURS["PRCP"], alpha=0.45)
    twin.set_ylim(bottom=0)
    twin.set_ylabel("mm", fontsize=8)
    for code in ("TMAX", "TMEAN", "TMIN"):
        series = cycle[cycle["element"] == code].sort_values("month")
        if not series.empty:
            ax.plot(series["month"], series["value"], marker="o", markersize=3, color=ELEMENT_COLOURS[code], label=code)
    ax.set_zorder(twin.get_zorder() + 1)  # lines above the bars
    ax.patch.set_visible(False)
    ax.set_xticks(range(1, 13))
    ax.set_xticklabels("JFMAMJJASOND")
    ax.set_ylabel("°C", fontsize=8)
    ax.set_title(title, fontsize=9)
    return figure


def climographs(cycles: Mapping[str, pd.DataFrame], labels: Mapping[str, str] | None = None, columns: int = 3) -> Figure:
    """Small multiples of :func:`annual_cycle_figure`, one per station (key: WIGOS id)."""
    count = max(1, len(cycles))
    rows = math.ceil(count / columns)
    figure = new_figure(4.0 * min(columns, count), 2.8 * rows)
    axes = np.atleast_1d(figure.subplots(rows, min(columns, count), squeeze=False)).ravel()
    for ax, (wigos_id, cycle) in zip(axes, cycles.items()):
        annual_cycle_figure(cycle, (labels or {}).get(wigos_id, wigos_id), ax=ax)
    for ax in axes[len(cycles):]:
        ax.set_visible(False)
    handles, names = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, names, loc="outside lower center", ncols=len(names))
    return figure


def station_bars_figure(table: pd.DataFrame, columns: Mapping[str, str], title: str = "") -> Figure:
    """One horizontal bar chart per column (label -> column of ``table``), stations as rows.

    ``table`` has a ``station`` column with the labels.
    """
    shown = {label: column for label, column in columns.items() if column in table}
    figure = new_figure(3.4 * max(1, len(shown)), max(2.5, 0.3 * len(table) + 1.2))
    axes = np.atleast_1d(figure.subplots(1, max(1, len(shown)), sharey=True, squeeze=False)).ravel()
    positions = np.arange(len(table))
    for ax, (label, column) in zip(axes, shown.items()):
        code = label.split()[0]
        ax.barh(positions, table[column].astype(float), color=ELEMENT_COLOURS.get(code, "#7f7f7f"))
        ax.set_title(label, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels(table["station"], fontsize=8)
    axes[0].invert_yaxis()
    figure.suptitle(title)
    return figure


def station_map_figure(table: pd.DataFrame, value: str, label: str, title: str = "") -> Figure:
    """Stations at their longitude/latitude, coloured by ``value`` (no base map: works offline)."""
    figure = new_figure(6.0, 5.0)
    ax = figure.add_subplot()
    points = ax.scatter(table["longitude"], table["latitude"], c=table[value].astype(float), cmap="viridis_r",
                        s=70, edgecolors="black", linewidths=0.5)
    figure.colorbar(points, ax=ax, label=label)
    ax.set_xlabel("longitude (°E)")
    ax.set_ylabel("latitude (°N)")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.set_title(title)
    return figure


def counts_figure(table: pd.DataFrame, category: str, columns: Sequence[str], title: str = "") -> Figure:
    """Grouped bars: one group per ``category`` value, one bar per column (e.g. suspect, failed)."""
    figure = new_figure(7.0, 3.5)
    ax = figure.add_subplot()
    positions = np.arange(len(table))
    width = 0.8 / max(1, len(columns))
    for i, column in enumerate(columns):
        ax.bar(positions + i * width, table[column], width, label=column, color=FLAG_COLOURS.get(column))
    ax.set_xticks(positions + width * (len(columns) - 1) / 2)
    ax.set_xticklabels(table[category])
    ax.set_ylabel("values")
    ax.legend()
    ax.set_title(title)
    return figure


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class Picture:
    """A PNG image that shows itself in a notebook (and was added to a report)."""

    png: bytes = field(repr=False)  # not in the notebook's text/plain output
    caption: str = ""

    def _repr_png_(self) -> bytes:
        return self.png


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 64rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
p.meta { color: #666; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.85rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; }
"""


@dataclass
class Report:
    """An HTML report built section by section, then written whole to the bucket.

    ``parameters`` (the notebook's) are listed at the end, so a report says how it was made.
    The methods return what they added in a form a notebook shows (a DataFrame, a
    :class:`Picture`), so a cell adds to the report and shows the same thing.
    """

    title: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    made_by: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def preformatted(self, text: str, caption: str = "") -> None:
        label = f"<p><strong>{html.escape(caption)}</strong></p>" if caption else ""
        self.parts.append(f"{label}<pre>{html.escape(text)}</pre>")

    def table(self, frame: pd.DataFrame, caption: str = "", *, decimals: int = 1, index: bool = False) -> pd.DataFrame:
        """Add ``frame`` as a table (numbers rounded to ``decimals``); returns it for display."""
        rendered = frame.to_html(
            index=index, na_rep="", border=0, classes="data", escape=True,
            # Rounded as CLIMAT and the BUFR messages round (half away from zero), so a figure
            # of the report is the figure of the messages to the last digit.
            float_format=lambda value: format(figure(value, decimals), "f"),
        )
        if caption:
            rendered = rendered.replace(">", f"><caption>{html.escape(caption)}</caption>", 1)
        self.parts.append(rendered)
        return frame

    def figure(self, figure: Figure, caption: str = "") -> Picture:
        """Add the figure as an inline PNG; returns it as a :class:`Picture` for the notebook."""
        png = figure_png(figure)
        encoded = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption or self.title, quote=True)
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{alt}">{caption_html}</figure>')
        return Picture(png, caption)

    def to_html(self) -> str:
        made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        by = f" by {html.escape(self.made_by)}" if self.made_by else ""
        parameters = ""
        if self.parameters:
            rows = "".join(
                f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(_parameter_text(value))}</td></tr>"
                for name, value in self.parameters.items()
            )
            parameters = f"<h2>Parameters</h2><table><tr><th>name</th><th>value</th></tr>{rows}</table>"
        description = f"<p>{html.escape(self.description)}</p>" if self.description else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{description}\n"
            f"<p class=\"meta\">Made {made}{by} (OpenCDMS Workbench)</p>\n"
            + "\n".join(self.parts)
            + f"\n{parameters}\n</body>\n</html>\n"
        )

    def write(self, bucket: "Bucket", key: str) -> str:
        """Write the report to ``key`` in the bucket (whole, never half-written); returns the key."""
        bucket.write_bytes(key, self.to_html().encode("utf-8"))
        return key


def _parameter_text(value: Any) -> str:
    if value is None or value == []:
        return "(none: all)" if value == [] else "(none)"
    if isinstance(value, str):
        return value if value else "(empty)"
    return json.dumps(value, default=str)


def write_csv(bucket: "Bucket", key: str, frame: pd.DataFrame) -> str:
    """Write ``frame`` as CSV (UTF-8, no index) to ``key``; returns the key."""
    bucket.write_bytes(key, frame.to_csv(index=False).encode("utf-8"))
    return key


def read_text(bucket: "Bucket", key: str) -> str:
    """An object of the bucket as text (for tests and notebooks showing what they wrote)."""
    return bucket.fs.cat_file(bucket.path(key)).decode("utf-8")
