"""The explorer (Panel + HoloViews): the station map, a time series with its QC marks, the
monthly climatology against the 1991-2020 normal, anomalies, data availability (station x
year), and the selection as CSV or NetCDF.

A thin page: every figure comes from ``opencdms_kernel.explore`` (queries aggregate in
PostgreSQL or DuckDB); this file lays out widgets and turns frames into plots.  The map works
offline: stations on plain longitude/latitude axes, map tiles only when the
``apps_map_tile_url`` setting names a tile server.

    panel serve apps/explorer.py
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import date
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
from intake.readers.entry import Catalog

from apps._panel import message, refusal, session_page, setup, shared_catalog
from opencdms_kernel import explore
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.explore import Climatology, Mark, Normal, Series
from opencdms_kernel.settings import Settings, load_settings
from opencdms_kernel.vocabulary import Period

TITLE = "OpenCDMS explorer"
DEFAULT_ELEMENT = "TMAX"
CLIMATOLOGY_YEARS = 10  # the default climatology period: the last ten years with data
# One marker and colour per QC mark; what a person decided is drawn apart from what QC found.
MARK_STYLE: dict[Mark, dict[str, Any]] = {
    Mark.SUSPECT: {"marker": "triangle", "color": "#f0a202", "size": 9},
    Mark.FAILED: {"marker": "x", "color": "#d62728", "size": 11},
    Mark.REJECTED: {"marker": "square", "color": "#6a1b9a", "size": 9},
    Mark.CORRECTED: {"marker": "diamond", "color": "#2ca02c", "size": 9},
    Mark.VERIFIED: {"marker": "circle", "color": "#17becf", "size": 7},
}
LINE_COLOUR = "#4a6fa5"
PLOT_OPTIONS: dict[str, Any] = {"responsive": True, "height": 320, "toolbar": "above", "tools": ["hover"],
                                "active_tools": ["box_zoom"]}


# --------------------------------------------------------------------------- plots (frames in, objects out)


def map_plot(stations: pd.DataFrame, chosen: str | None, tile_url: str | None) -> hv.Overlay:
    """Stations as points on longitude/latitude axes (or on tiles, projected, when a tile URL
    is set); the chosen one ringed."""
    frame = stations[["wigos_id", "label", "longitude", "latitude", "elevation", "status"]].copy()
    x, y = "longitude", "latitude"
    layers: list[hv.Element] = []
    if tile_url:
        frame["x"], frame["y"] = hv.util.transform.lon_lat_to_easting_northing(frame["longitude"], frame["latitude"])
        x, y = "x", "y"
        layers.append(hv.Tiles(tile_url))
    points = hv.Points(frame, [x, y], ["label", "wigos_id", "elevation", "status"], label="stations").opts(
        size=9, color=LINE_COLOUR, tools=["hover"], nonselection_alpha=0.6)
    layers.append(points)
    picked = frame[frame["wigos_id"] == chosen]
    layers.append(hv.Points(picked, [x, y], ["label"], label="chosen").opts(
        size=16, fill_alpha=0, line_color="#d62728", line_width=3))
    return hv.Overlay(layers).opts(
        responsive=True, height=360, title="Stations", show_grid=not tile_url, legend_position="top_right",
        xlabel="longitude (°)" if not tile_url else "", ylabel="latitude (°)" if not tile_url else "",
        active_tools=["wheel_zoom"])


def series_plot(data: Series) -> hv.Overlay:
    """The values as a line, and the flagged values as markers: one marker and colour per QC
    mark, named in the legend.

    Two layers whatever the marks (colour and marker are mapped from the ``mark`` column), so
    that a redraw inside a :class:`holoviews.DynamicMap` only replaces the data of the plot it
    already has, and little is left to build (the argument is named ``data`` for the
    :class:`holoviews.streams.Pipe` that feeds it)."""
    axis = ("value", f"{data.element} ({data.units})")
    label = data.element + (f" ({data.aggregated})" if data.aggregated else "")
    # framewise: the axes follow each new series (a DynamicMap keeps its first ranges otherwise).
    line = hv.Curve(data.values, "time", axis, label=label).opts(color=LINE_COLOUR, line_width=1, framewise=True)
    marks = hv.Scatter(data.flagged, "time", [axis, "mark", "qc_status", "final_flag"]).opts(
        color="mark", cmap={mark.value: style["color"] for mark, style in MARK_STYLE.items()},
        marker=hv.dim("mark").categorize({mark.value: style["marker"] for mark, style in MARK_STYLE.items()}),
        size=11, tools=["hover"], framewise=True, show_legend=True)
    return (line * marks).opts(
        title=f"{data.element} at {data.station}: {data.count} values, {len(data.flagged)} flagged",
        legend_position="top_left", responsive=True, height=320, toolbar="above", active_tools=["box_zoom"],
        framewise=True)


def climatology_plot(climate: Climatology, normal: Normal | None) -> hv.Overlay:
    """Monthly means (or totals) of the period as bars, the normal as a line with points."""
    table = climate.table.assign(month_name=pd.Categorical(
        [date(2000, m, 1).strftime("%b") for m in climate.table["month"]],
        categories=[date(2000, m, 1).strftime("%b") for m in range(1, 13)], ordered=True))
    axis = (f"{climate.statistic}", f"{climate.element} {climate.statistic} ({climate.units})")
    layers: list[hv.Element] = [
        hv.Bars(table, "month_name", [("value", axis[1]), "years"], label=f"{climate.period.label}").opts(
            color=LINE_COLOUR, alpha=0.7)]
    if normal is not None and normal.given:
        layers.append(hv.Curve(table, "month_name", ("normal", axis[1]), label=f"normal {normal.period.label}").opts(
            color="#d62728", line_width=2))
        layers.append(hv.Scatter(table, "month_name", ("normal", axis[1])).opts(color="#d62728", size=7))
    return hv.Overlay(layers).opts(title=f"Monthly climatology {climate.period.label} against the normal",
                                   legend_position="top_left", xlabel="month", **PLOT_OPTIONS)


def anomaly_plot(frame: pd.DataFrame, element: str, units: str) -> hv.Overlay:
    """Each month's departure from its normal, above in red, below in blue."""
    data = frame.dropna(subset=["anomaly"]).assign(
        side=lambda f: np.where(f["anomaly"] >= 0, "above", "below"))
    spikes = hv.Spikes(data, "time", [("anomaly", f"{element} anomaly ({units})"), "side"]).opts(
        color="side", cmap={"above": "#d62728", "below": "#1f77b4"}, line_width=3)
    ends = frame["time"].iloc[[0, -1]] if len(frame) else pd.Series([], dtype="datetime64[us, UTC]")
    zero = hv.Curve(pd.DataFrame({"time": ends, "anomaly": 0.0}), "time", "anomaly").opts(
        color="#555555", line_width=1)
    title = "Monthly anomalies against the normal" + ("" if len(data) else ": no normal, no anomaly")
    # Not linked to the series' time axis: the anomalies cover the climatology's years only.
    return (spikes * zero).opts(title=title, shared_axes=False, **PLOT_OPTIONS)


def availability_plot(frame: pd.DataFrame, element: str) -> hv.HeatMap:
    """Share of the days with a value, per station and year."""
    heat = hv.HeatMap(frame, ["year", "label"], [("fraction", "days with a value"), "value_days", "days"])
    return heat.opts(cmap="Blues", clim=(0, 1), colorbar=True, xrotation=45, tools=["hover"],
                     title=f"Data availability of {element} (share of days with a value)", responsive=True,
                     height=max(220, 28 * frame["label"].nunique() + 120), toolbar="above", ylabel="", xlabel="year")


def empty_series() -> Series:
    """A series without values (what the plot shows before anything is chosen)."""
    values = pd.DataFrame({"time": pd.Series(dtype="datetime64[us, UTC]"), "value": pd.Series(dtype=float),
                           "mark": pd.Series(dtype=object)})
    flagged = pd.DataFrame({column: pd.Series(dtype=object) for column in
                            ("time", "value", "qc_status", "final_flag", "mark")})
    return Series("", "", "", values, flagged, 0)


# --------------------------------------------------------------------------- the page


@dataclass
class Choice:
    """What the person chose."""

    station: str
    element: str
    start: date | None
    end: date | None
    period: Period | None


class Explorer:
    """The page's widgets and their callbacks (one per browser session)."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stations = explore.station_list(catalog)
        elements = explore.element_list(catalog)
        labels = dict(zip(self.stations["label"], self.stations["wigos_id"]))
        first = self.stations["wigos_id"].iloc[0] if len(self.stations) else None
        self.station = pn.widgets.Select(name="Station", options=labels, value=first)
        self.element = pn.widgets.Select(
            name="Element", options={f"{c} ({n})": c for c, n in zip(elements["code"], elements["name"])},
            value=DEFAULT_ELEMENT if DEFAULT_ELEMENT in set(elements["code"]) else elements["code"].iloc[0])
        self.start = pn.widgets.DatePicker(name="From (UTC)")
        self.end = pn.widgets.DatePicker(name="To (UTC)")
        self.period = pn.widgets.IntRangeSlider(name="Climatology and anomalies: years", start=1990, end=2020,
                                                value=(2011, 2020), step=1)
        self.status = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["explorer-status"])
        self.normal_note = pn.pane.HTML("", css_classes=["explorer-normal"])
        self.csv = pn.widgets.FileDownload(callback=self._csv, filename="selection.csv", label="Download CSV",
                                           button_type="primary", css_classes=["download-csv"])
        self.netcdf = pn.widgets.FileDownload(callback=self._netcdf, filename="selection.nc",
                                              label="Download NetCDF", css_classes=["download-netcdf"])
        self.map = pn.pane.HoloViews(sizing_mode="stretch_width", css_classes=["explorer-map"])
        # The series is redrawn in place: new data through the pipe, the same plot.
        self._series_pipe = hv.streams.Pipe(data=empty_series())
        self.series = pn.pane.HoloViews(hv.DynamicMap(series_plot, streams=[self._series_pipe]),
                                        sizing_mode="stretch_width", css_classes=["explorer-series"])
        self.climatology = pn.pane.HoloViews(sizing_mode="stretch_width", css_classes=["explorer-climatology"])
        self.anomalies = pn.pane.HoloViews(sizing_mode="stretch_width", css_classes=["explorer-anomalies"])
        self.availability = pn.pane.HoloViews(sizing_mode="stretch_width", css_classes=["explorer-availability"])
        self.flagged = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, height=220,
                                            pagination="local", page_size=50, css_classes=["explorer-flagged"])
        self._normals: dict[tuple[str, str], Normal | None] = {}
        self._setting_years = False  # the pickers are being set from the data: no redraw per picker
        self.station.param.watch(self._station_changed, "value")
        self.element.param.watch(self._element_changed, "value")
        for widget in (self.start, self.end):
            widget.param.watch(self._dates_changed, "value")
        self.period.param.watch(lambda _: self.draw_climate(), "value_throttled")

    # ------------------------------------------------------------------ reading the choice

    def choice(self) -> Choice:
        low, high = self.period.value
        return Choice(self.station.value, self.element.value, self.start.value, self.end.value, Period(low, high))

    def _report(self, error: Exception) -> None:
        self.status.object = refusal(error)

    # ------------------------------------------------------------------ drawing

    def load(self) -> None:
        """Everything for the chosen station and element."""
        self.status.object = message("Drawing…", "info")
        self._set_years()
        self.draw_map()
        self.draw_series()
        self.draw_climate()
        self.draw_availability()
        self._drawn()

    def _drawn(self) -> None:
        """Say what is shown (unless something else was said meanwhile: a refusal, no values)."""
        if self.status.object == message("Drawing…", "info"):
            label = self.station.labels[self.station.values.index(self.station.value)] \
                if self.station.value in self.station.values else self.station.value
            self.status.object = message(f"Showing {self.element.value} at {label}.", "ok")

    def _set_years(self) -> None:
        """The date pickers and the period slider follow the years the series has."""
        if self.station.value is None:
            return
        years = explore.data_years(self.catalog, self.station.value, self.element.value)
        if years is None:
            self.status.object = message(f"No {self.element.value} values at {self.station.value}.", "info")
            return
        first, last = years
        self._setting_years = True
        try:
            self.start.value, self.end.value = date(first, 1, 1), date(last, 12, 31)
        finally:
            self._setting_years = False
        self.period.param.update(start=first, end=max(last, first + 1),
                                 value=(max(first, last - CLIMATOLOGY_YEARS + 1), last))

    def draw_map(self) -> None:
        self.map.object = map_plot(self.stations, self.station.value, self.settings.apps_map_tile_url)

    def draw_series(self) -> None:
        choice = self.choice()
        if choice.station is None:
            return
        try:
            found = explore.series(self.catalog, choice.station, choice.element, choice.start, choice.end)
        except OpenCDMSError as error:
            self._report(error)
            return
        self._series_pipe.send(found)
        shown = found.flagged[["time", "value", "mark", "qc_status", "final_flag"]].copy()
        shown["time"] = shown["time"].dt.strftime("%Y-%m-%d %H:%M")
        self.flagged.value = shown.rename(columns={"time": "time (UTC)"})

    def draw_climate(self) -> None:
        choice = self.choice()
        if choice.station is None or choice.period is None:
            return
        try:
            normal = self._normal(choice.station, choice.element)
            self.normal_note.object = message(explore.normal_text(normal), "info")
            months = explore.monthly_values(self.catalog, choice.station, choice.element, choice.period)
            climate = explore.climatology(self.catalog, choice.station, choice.element, choice.period, normal,
                                          months)
            monthly = explore.anomalies(self.catalog, choice.station, choice.element, choice.period, normal,
                                        months)
        except OpenCDMSError as error:
            self._report(error)
            self.climatology.object = None
            self.anomalies.object = None
            return
        self.climatology.object = climatology_plot(climate, normal)
        self.anomalies.object = anomaly_plot(monthly, choice.element, climate.units)

    def _normal(self, station: str, element: str) -> Normal | None:
        """The station's normal, looked up once per page (a period slider moved needs no new one)."""
        if (station, element) not in self._normals:
            self._normals[(station, element)] = explore.station_normal(self.catalog, station, element)
        return self._normals[(station, element)]

    def draw_availability(self) -> None:
        try:
            frame = explore.availability(self.catalog, self.element.value)
        except OpenCDMSError as error:
            self._report(error)
            return
        self.availability.object = availability_plot(frame, self.element.value) if len(frame) else None
        if not len(frame):
            self.status.object = message(f"The archive has no {self.element.value} values yet.", "info")

    # ------------------------------------------------------------------ callbacks

    def _station_changed(self, _: object) -> None:
        self.status.object = message("Drawing…", "info")
        self._set_years()
        self.draw_map()
        self.draw_series()
        self.draw_climate()
        self._drawn()

    def _element_changed(self, _: object) -> None:
        self.load()

    def _dates_changed(self, _: object) -> None:
        if not self._setting_years:
            self.draw_series()

    def _selection(self) -> tuple[pd.DataFrame, Choice]:
        choice = self.choice()
        return explore.selection(self.catalog, choice.station, choice.element, choice.start, choice.end), choice

    def _csv(self) -> io.BytesIO:
        rows, choice = self._selection()
        self.csv.filename = f"{choice.station}_{choice.element}.csv"
        return io.BytesIO(explore.selection_csv(rows))

    def _netcdf(self) -> io.BytesIO:
        rows, choice = self._selection()
        self.netcdf.filename = f"{choice.station}_{choice.element}.nc"
        dataset = explore.selection_dataset(self.catalog, rows, choice.station, choice.element)
        return io.BytesIO(explore.selection_netcdf(dataset))

    # ------------------------------------------------------------------ layout

    def page(self) -> pn.viewable.Viewable:
        legend = " · ".join(f"{m.value}: {s['marker']}" for m, s in MARK_STYLE.items())
        sidebar = pn.Column(
            self.station, self.element, self.start, self.end, self.period, self.csv, self.netcdf,
            pn.pane.Markdown(f"QC marks — {legend}"), width=300)
        main = pn.Column(
            self.status,
            pn.Row(self.map, self.series, sizing_mode="stretch_width"),
            pn.pane.Markdown("**Flagged values of the series**"), self.flagged,
            self.normal_note,
            pn.Row(self.climatology, self.anomalies, sizing_mode="stretch_width"),
            self.availability,
            sizing_mode="stretch_width")
        return pn.Column(pn.pane.Markdown(f"## {TITLE}"), pn.Row(sidebar, main, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width", css_classes=["explorer-page"])


def build(settings: Settings) -> pn.viewable.Viewable:
    """The explorer page for one browser session."""
    return session_page(lambda: Explorer(settings, shared_catalog(settings)))


if __name__.startswith("bokeh"):  # `panel serve apps/explorer.py`: one page per browser session
    setup()
    build(load_settings()).servable(title=TITLE)
