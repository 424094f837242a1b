"""Plots for notebooks and reports, made with matplotlib's object API.

Every figure is a :class:`~matplotlib.figure.Figure` made by :func:`new_figure`, never through
pyplot, so no global state or GUI backend is involved and the same figure serves the notebook
and the report (:meth:`~opencdms_kernel.reports.page.Report.figure`).  matplotlib is imported on
the first plot only: notebooks that only ingest or export do not pay for it.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from opencdms_kernel.vocabulary import Month, QcStatus

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Colours used across plots, so an element looks the same in every report.
ELEMENT_COLOURS = {"TMAX": "#d62728", "TMIN": "#1f77b4", "TMEAN": "#7f7f7f", "PRCP": "#2ca02c"}
# The flagged statuses (tables.FLAGGED_STATUSES), circled in plots and used as bar colours.
FLAG_COLOURS = {QcStatus.SUSPECT: "#ff7f0e", QcStatus.FAILED: "#000000"}


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
    ax.set_xticklabels([str(months[i][0]) if months[i][1] == 1 else str(Month(*months[i])) for i in chosen])


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
