"""QC review (Panel): suspect and failed values by station, element and period, each with its
tests' results and rules; the chosen value in context (its series, its neighbours, the
station's normal); accept, reject or correct it with a reason; the same decision on many
values after a confirmation; and the values whose source changed since a decision.

A thin page: the queries are ``opencdms_kernel.qc.review``'s and every decision goes through
``opencdms_kernel.qc.manual`` (audited, recorded for the person the settings name,
``OPENCDMS_USER``; the hub sets it in each user's server).

    panel serve apps/qc_review.py
"""

from __future__ import annotations

import html
from typing import Any

import holoviews as hv
import pandas as pd
import panel as pn
from intake.readers.entry import Catalog

from apps._panel import message, refusal, session_page, setup, shared_catalog
from opencdms_kernel import explore
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.explore import Mark
from opencdms_kernel.qc.manual import check_decision
from opencdms_kernel.qc.manual import decide_many
from opencdms_kernel.qc.model import Decision
from opencdms_kernel.qc.review import (
    REVIEW_STATUSES,
    ReviewItem,
    ReviewList,
    ValueContext,
    items_table,
    review_items,
    source_change_table,
    value_context,
)
from opencdms_kernel.settings import Settings, load_settings

TITLE = "OpenCDMS QC review"
NEIGHBOUR_COLOURS = ("#7f7f7f", "#bcbd22", "#8c564b", "#e377c2", "#17becf")
MARK_COLOURS = {Mark.SUSPECT.value: "#f0a202", Mark.FAILED.value: "#d62728", Mark.REJECTED.value: "#6a1b9a",
                Mark.CORRECTED.value: "#2ca02c", Mark.VERIFIED.value: "#17becf"}
PAST_TENSE = {Decision.ACCEPT: "accepted", Decision.REJECT: "rejected", Decision.CORRECT: "corrected"}


def context_plot(context: ValueContext) -> hv.Overlay:
    """The value's days at its station, its neighbours over the same days, the normal of its
    month (when the normal is of daily means, so comparable with the values) and the value."""
    key = context.key
    axis = ("value", f"{key.element} ({context.units})")
    layers: list[hv.Element] = [hv.Curve(context.series, "time", axis, label=key.station).opts(
        color="#4a6fa5", line_width=2)]
    for colour, (wigos_id, rows) in zip(NEIGHBOUR_COLOURS, context.neighbours.groupby("wigos_id", sort=False)):
        layers.append(hv.Curve(rows, "time", axis, label=f"{rows['label'].iloc[0]}, {rows['km'].iloc[0]:.0f} km")
                      .opts(color=colour, line_dash="dashed", line_width=1))
    if context.normal_value is not None and context.normal is not None and context.normal.statistic == "mean":
        ends = context.series["time"].iloc[[0, -1]] if len(context.series) else pd.Series([], dtype=object)
        layers.append(hv.Curve(pd.DataFrame({"time": ends, "value": context.normal_value}), "time", axis,
                               label=f"normal {context.normal.period.label}").opts(color="#2ca02c", line_dash="dotted",
                                                                                     line_width=2))
    marked = context.series[context.series["mark"] != Mark.UNFLAGGED.value]
    for mark, rows in marked.groupby("mark"):
        layers.append(hv.Scatter(rows, "time", axis, label=str(mark)).opts(
            color=MARK_COLOURS.get(str(mark), "#000000"), size=8))
    this = pd.DataFrame({"time": [pd.Timestamp(key.phenomenon_time)], "value": [context.value]})
    layers.append(hv.Scatter(this, "time", axis, label="this value").opts(
        marker="circle", size=18, fill_alpha=0, line_color="#d62728", line_width=3))
    return hv.Overlay(layers).opts(
        title=f"{key.element} at {key.station} around {key.phenomenon_time:%Y-%m-%d %H:%M} UTC",
        responsive=True, height=340, legend_position="right", toolbar="above", shared_axes=False)


def tests_table(item: ReviewItem) -> pd.DataFrame:
    """One row per test that raised something on the item: result, flag, rule, level, details."""
    return pd.DataFrame([
        {"test": r.test, "result": r.result or "", "flag": r.flag or "", "rule": r.rule_text or (r.rule or ""),
         "threshold level": r.level or "", "why this level": r.fallback or "",
         "details": ", ".join(f"{k} {v}" for k, v in r.details.items() if v is not None)}
        for r in item.results
    ], columns=["test", "result", "flag", "rule", "threshold level", "why this level", "details"])


class Review:
    """The page's widgets and callbacks (one per browser session)."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.user = settings.user
        self.catalog = catalog
        self.datastore = explore.catalog_connections(catalog).datastore()
        stations = explore.station_list(catalog)
        elements = explore.element_list(catalog)
        self.list = ReviewList((), 0)
        self.stations = pn.widgets.MultiChoice(name="Stations (none: all)",
                                               options=dict(zip(stations["label"], stations["wigos_id"])))
        self.elements = pn.widgets.MultiChoice(name="Elements (none: all)", options=list(elements["code"]))
        self.start = pn.widgets.DatePicker(name="From (UTC)")
        self.end = pn.widgets.DatePicker(name="To (UTC)")
        self.statuses = pn.widgets.CheckButtonGroup(name="Status", options=[s.value for s in REVIEW_STATUSES],
                                                    value=[s.value for s in REVIEW_STATUSES])
        self.include_decided = pn.widgets.Checkbox(name="include values already decided")
        self.show = pn.widgets.Button(name="Show", button_type="primary", css_classes=["review-show"])
        self.count = pn.pane.HTML("", css_classes=["review-count"])
        self.items = pn.widgets.Tabulator(
            items_table(()), disabled=True, selectable=True, show_index=False, hidden_columns=["id"],
            pagination="local", page_size=25, height=420, sizing_mode="stretch_width",
            css_classes=["review-items"])
        self.context = pn.pane.HoloViews(None, sizing_mode="stretch_width", css_classes=["review-context"])
        self.context_note = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["review-context-note"])
        self.tests = pn.widgets.Tabulator(pd.DataFrame(columns=["test"]), disabled=True, show_index=False,
                                          sizing_mode="stretch_width", css_classes=["review-tests"])
        self.decision = pn.widgets.RadioButtonGroup(name="Decision", options=[d.value for d in Decision],
                                                    value=Decision.ACCEPT.value, css_classes=["review-decision"])
        self.corrected = pn.widgets.FloatInput(name="Corrected value", value=None, disabled=True,
                                               css_classes=["review-corrected"])
        self.reason = pn.widgets.TextInput(name="Reason (required)", placeholder="why: what was checked, against what",
                                           css_classes=["review-reason"])
        self.apply_one = pn.widgets.Button(name="Apply to the chosen value", button_type="primary",
                                           css_classes=["review-apply"])
        self.apply_many = pn.widgets.Button(name="Apply to every selected value…", css_classes=["review-apply-many"])
        self.confirm_text = pn.pane.HTML("", css_classes=["review-confirm-text"])
        self.confirm = pn.widgets.Button(name="Confirm", button_type="danger", css_classes=["review-confirm"])
        self.cancel = pn.widgets.Button(name="Cancel", css_classes=["review-cancel"])
        self.confirmation = pn.Column(self.confirm_text, pn.Row(self.confirm, self.cancel), visible=False,
                                      css_classes=["review-confirmation"])
        self.feedback = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["review-feedback"])
        self.changes = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, pagination="local",
                                            page_size=50, sizing_mode="stretch_width", css_classes=["review-changes"])
        self.changes_note = pn.pane.HTML("", css_classes=["review-changes-note"])
        self.refresh_changes = pn.widgets.Button(name="Refresh", css_classes=["review-changes-refresh"])
        self._pending: list[ReviewItem] = []

        self.show.on_click(lambda _: self.refresh())
        self.items.param.watch(self._selected, "selection")
        self.decision.param.watch(self._decision_changed, "value")
        self.apply_one.on_click(lambda _: self._apply_one())
        self.apply_many.on_click(lambda _: self._ask_many())
        self.confirm.on_click(lambda _: self._confirmed())
        self.cancel.on_click(lambda _: self._cancelled())
        self.refresh_changes.on_click(lambda _: self.refresh_source_changes())

    # ------------------------------------------------------------------ lists

    def refresh(self) -> None:
        """The items of the filter, the chosen value and the pending confirmation cleared."""
        try:
            self.list = review_items(
                self.datastore, stations=self.stations.value or None, elements=self.elements.value or None,
                start=self.start.value, end=self.end.value, statuses=self.statuses.value,
                include_decided=self.include_decided.value)
        except OpenCDMSError as error:
            self.feedback.object = refusal(error)
            return
        self.items.selection = []
        self.items.value = items_table(self.list.items)
        shown = len(self.list.items)
        self.count.object = message(
            f"{shown} of {self.list.total} flagged values shown" if shown < self.list.total
            else f"{shown} flagged value{'s' if shown != 1 else ''}", "info")
        self._show_context(None)
        self._cancelled()

    def refresh_source_changes(self) -> None:
        try:
            table = source_change_table(self.datastore)
        except OpenCDMSError as error:
            self.changes_note.object = refusal(error)
            return
        self.changes.value = table
        self.changes_note.object = message(
            f"{len(table)} decided value{'s' if len(table) != 1 else ''} whose source delivered another value "
            "since the decision" if len(table) else "No source changed since a decision.", "info")

    def load(self) -> None:
        self.refresh()
        self.refresh_source_changes()

    # ------------------------------------------------------------------ the chosen value

    def chosen(self) -> list[ReviewItem]:
        return [self.list.items[index] for index in self.items.selection if index < len(self.list.items)]

    def _selected(self, _: object) -> None:
        chosen = self.chosen()
        self.apply_many.name = (f"Apply to the {len(chosen)} selected values…" if len(chosen) > 1
                                else "Apply to every selected value…")
        self._show_context(chosen[0] if chosen else None)

    def _show_context(self, item: ReviewItem | None) -> None:
        if item is None:
            self.context.object = None
            self.context_note.object = message("Choose a value in the table to see it in context.", "info")
            self.tests.value = pd.DataFrame(columns=["test"])
            return
        self.tests.value = tests_table(item)
        try:
            context = value_context(self.catalog, item.key)
        except OpenCDMSError as error:
            self.context_note.object = refusal(error)
            return
        self.context.object = context_plot(context)
        normal = explore.normal_text(context.normal)
        month_normal = ("" if context.normal_value is None
                        else f"; {context.normal.statistic} of month {context.month}: "  # type: ignore[union-attr]
                        f"{context.normal_value:.1f} {context.units}")
        decided = ("" if item.decision is None else
                   f" Decided before: {item.decision.decision.value} by {item.decision.by} ({item.decision.reason}).")
        self.context_note.object = message(
            f"{item.key.element} {item.value} {context.units or ''} at {item.key.station}, "
            f"{item.key.phenomenon_time:%Y-%m-%d %H:%M} UTC: {item.qc_status.value}. Neighbours: "
            f"{context.neighbour_rule} ({len(context.stations)} found). {normal}{month_normal}.{decided}", "info")

    # ------------------------------------------------------------------ decisions

    def _decision_changed(self, event: Any) -> None:
        correcting = event.new == Decision.CORRECT.value
        self.corrected.disabled = not correcting
        if not correcting:
            self.corrected.value = None

    def _form(self) -> tuple[str, str, float | None]:
        return self.decision.value, self.reason.value or "", self.corrected.value

    def _apply_one(self) -> None:
        chosen = self.chosen()
        if not chosen:
            self.feedback.object = message("Choose a value in the table first.", "error")
            return
        self._decide(chosen[:1])

    def _ask_many(self) -> None:
        chosen = self.chosen()
        if len(chosen) < 2:
            self.feedback.object = message("Select several values in the table (Ctrl- or Shift-click) first.", "error")
            return
        decision, reason, corrected = self._form()
        try:
            chosen_decision = check_decision(decision, reason, self.user, corrected)
        except OpenCDMSError as error:
            self.feedback.object = refusal(error)
            return
        self._pending = chosen
        elements = sorted({item.key.element for item in chosen})
        stations = sorted({item.key.station for item in chosen})
        self.confirm_text.object = (
            f'<div class="confirm-question"><b>{html.escape(chosen_decision.value.capitalize())} {len(chosen)} '
            f"values</b> ({html.escape(', '.join(elements))} at {len(stations)} "
            f"station{'s' if len(stations) > 1 else ''}) with the reason “{html.escape(reason.strip())}”? "
            "They are recorded together, or not at all.</div>")
        self.confirmation.visible = True

    def _confirmed(self) -> None:
        pending, self._pending = self._pending, []
        self.confirmation.visible = False
        if pending:
            self._decide(pending)

    def _cancelled(self) -> None:
        self._pending = []
        self.confirmation.visible = False

    def _decide(self, items: list[ReviewItem]) -> None:
        decision, reason, corrected = self._form()
        try:
            results = decide_many(self.datastore, [item.key for item in items], decision, reason, self.user,
                                   corrected)
        except OpenCDMSError as error:
            self.feedback.object = refusal(error)
            return
        done = PAST_TENSE[results[0].decision]
        what = (f"{items[0].key.element} at {items[0].key.station}, {items[0].key.phenomenon_time:%Y-%m-%d %H:%M} UTC"
                if len(items) == 1 else f"{len(items)} values")
        self.feedback.object = message(f"{what.capitalize() if len(items) > 1 else what}: {done} by {self.user} "
                                       f"({reason.strip()}).", "ok")
        self.reason.value = ""
        self.refresh()
        self.refresh_source_changes()

    # ------------------------------------------------------------------ layout

    def page(self) -> pn.viewable.Viewable:
        filters = pn.Row(self.stations, self.elements, self.start, self.end,
                         pn.Column(pn.pane.HTML("Status"), self.statuses), pn.Column(self.include_decided, self.show),
                         sizing_mode="stretch_width")
        form = pn.Column(
            pn.pane.Markdown("**Decision**"), self.decision, self.corrected, self.reason,
            pn.Row(self.apply_one, self.apply_many), self.confirmation, self.feedback, sizing_mode="stretch_width")
        flagged = pn.Row(
            pn.Column(self.count, self.items, sizing_mode="stretch_width"),
            pn.Column(self.context, self.context_note, pn.pane.Markdown("**Tests and rules**"), self.tests, form,
                      sizing_mode="stretch_width"),
            sizing_mode="stretch_width")
        changes = pn.Column(
            pn.pane.Markdown("Values a person decided on whose source has since delivered another value: the "
                             "decision stays in force until someone decides again (the next decision is made "
                             "on the new source value)."),
            pn.Row(self.changes_note, self.refresh_changes), self.changes, sizing_mode="stretch_width")
        return pn.Column(
            pn.pane.Markdown(f"## {TITLE}\nDecisions are recorded for **{html.escape(self.user)}**."),
            filters,
            pn.Tabs(("Flagged values", flagged), ("Source changed since the decision", changes),
                    dynamic=False, sizing_mode="stretch_width", css_classes=["review-tabs"]),
            sizing_mode="stretch_width", css_classes=["review-page"])


def build(settings: Settings) -> pn.viewable.Viewable:
    """The QC review page for one browser session."""
    return session_page(lambda: Review(settings, shared_catalog(settings)))


if __name__.startswith("bokeh"):  # `panel serve apps/qc_review.py`: one page per browser session
    setup()
    build(load_settings()).servable(title=TITLE)
