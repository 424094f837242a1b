"""Administration (Panel): stations, elements, QC rules, the event service's routes, people's roles.

For administrators only: anyone whose hub role (``OPENCDMS_HUB_ROLE``, set by the hub in each
server) is not ``admin`` gets a page that says so, and nothing else.  A thin page: every read
and write is a kernel function (``opencdms_kernel.admin``, ``opencdms_kernel.hub_users``) that
checks the administrator again and names the field at fault when it refuses; refusals are shown
next to that field.

Served in an administrator's hub server, or standalone for development::

    OPENCDMS_HUB_ROLE=admin panel serve apps/admin.py
"""

from __future__ import annotations

import html
import io
import os
from dataclasses import asdict
from datetime import datetime
from typing import Any, Callable, Mapping

import pandas as pd
import panel as pn

from apps._panel import message, shared
from opencdms_kernel.admin.access import AdminOnlyError, Administrator, administrator
from opencdms_kernel.admin.elements import list_elements
from opencdms_kernel.admin.files import read_config_text, save_config_text
from opencdms_kernel.admin.rules import (
    RELATION_FIELDS,
    relation_from_form,
    save_relation,
    save_threshold,
    threshold_from_form,
    threshold_parameters,
)
from opencdms_kernel.admin.stations import (
    STATION_FIELDS,
    add_station,
    close_station,
    edit_station,
    export_station_file,
    import_station_file,
    list_stations,
)
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError, ParameterError
from opencdms_kernel.hub_users import HubUsers, approval_page
from opencdms_kernel.qc.model import THRESHOLD_TESTS, Severity
from opencdms_kernel.qc.rules import (
    OPERATORS,
    PARAMETER_COLUMNS,
    current_relations,
    current_thresholds,
    relation_versions,
    threshold_versions,
)
from opencdms_kernel.settings import Settings, load_settings
from opencdms_kernel.stations import StationFormat
from opencdms_kernel.vocabulary import HubRole

TITLE = "OpenCDMS administration"
ROWS_SHOWN = 200  # rows of a rule table drawn at once (derived thresholds run to thousands)
NO_ROLE = "(no role)"
# Each Panel component draws in a shadow root of its own: styles go with the component.
FIELD_ERROR_STYLE = [":host { color: #b00020; font-size: 0.85em; }"]
STATION_LABELS = {
    "wigos_id": "WIGOS id", "name": "Name", "latitude": "Latitude", "longitude": "Longitude",
    "elevation": "Elevation (m)", "territory": "Territory", "wmo_region": "WMO region", "timezone": "Time zone",
    "status": "Status", "opened": "Opened (YYYY-MM-DD)", "closed": "Closed (YYYY-MM-DD)",
}


def cell(value: object) -> object:
    """A value as a table shows it: nothing for None, yes/no, times to the minute."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M %Z").strip()
    return value


def table(rows: list[Mapping[str, Any]], columns: list[str] | None = None) -> pd.DataFrame:
    """Rows as a DataFrame for a table pane (an empty one keeps its columns)."""
    chosen = columns or (list(rows[0]) if rows else [])
    return pd.DataFrame([[cell(row.get(name)) for name in chosen] for row in rows], columns=chosen)


class Form:
    """Text fields with a refusal line under each: a kernel ParameterError naming one of the
    fields is shown under it; any other error in the form's message line."""

    def __init__(self, prefix: str, fields: Mapping[str, pn.widgets.Widget]) -> None:
        self.fields = dict(fields)
        self.errors = {name: pn.pane.HTML("", css_classes=["field-error", f"{prefix}-{name}-error"], margin=(0, 10),
                                          width=230, stylesheets=FIELD_ERROR_STYLE)
                       for name in self.fields}
        self.message = pn.pane.HTML("", css_classes=[f"{prefix}-message"], sizing_mode="stretch_width")

    def cell(self, name: str) -> pn.Column:
        return pn.Column(self.fields[name], self.errors[name], margin=0)

    def values(self, names: list[str] | None = None) -> dict[str, Any]:
        return {name: self.fields[name].value for name in names or self.fields}

    def clear(self, message: bool = True) -> None:
        for pane in self.errors.values():
            pane.object = ""
        if message:
            self.message.object = ""

    def run(self, action: Callable[[], str]) -> bool:
        """Run ``action``; its text as the success message, or its refusal where it belongs."""
        self.clear()
        try:
            self.message.object = message(action(), "ok")
            return True
        except ParameterError as exc:
            if exc.parameter in self.errors:
                self.errors[exc.parameter].object = html.escape(exc.reason)
                self.message.object = message(f"Not saved: {STATION_LABELS.get(exc.parameter, exc.parameter)}: "
                                              f"{exc.reason}", "error")
            else:
                self.message.object = message(f"Not saved: {exc}", "error")
        except OpenCDMSError as exc:
            self.message.object = message(f"Not saved: {exc}", "error")
        return False


# --------------------------------------------------------------------------- stations


def stations_tab(datastore: Datastore, admin: Administrator) -> pn.Column:
    """Stations: the list, one form to add or edit, close, import and export."""
    listing = pn.pane.DataFrame(sizing_mode="stretch_width", index=False, na_rep="", css_classes=["station-table"])
    chooser = pn.widgets.Select(name="Station to edit or close", options=[""], css_classes=["station-choice"])
    form = Form("station", {
        name: pn.widgets.TextInput(name=STATION_LABELS[name], css_classes=[f"station-{name}"], width=220)
        for name in STATION_FIELDS
    })
    form.fields["timezone"].placeholder = "UTC"
    form.fields["status"].placeholder = "operational"
    reason = pn.widgets.TextInput(name="Reason (kept in the station's history)", css_classes=["station-reason"],
                                  width=460)
    add_button = pn.widgets.Button(name="Add station", button_type="primary", css_classes=["station-add"])
    save_button = pn.widgets.Button(name="Save changes", button_type="primary", css_classes=["station-save"])
    close_day = pn.widgets.TextInput(name="Closing date (YYYY-MM-DD)", css_classes=["station-close-date"], width=220)
    close_button = pn.widgets.Button(name="Close station", button_type="warning", css_classes=["station-close"])
    upload = pn.widgets.FileInput(accept=".csv,text/csv", css_classes=["station-upload"])
    import_button = pn.widgets.Button(name="Import CSV", css_classes=["station-import"])
    layout = pn.widgets.Select(name="Export format", options=[item.value for item in StationFormat], width=160)
    file_message = pn.pane.HTML("", css_classes=["station-file-message"], sizing_mode="stretch_width")

    def refresh() -> None:
        rows = list_stations(datastore)
        listing.object = table([{**item.station.model_dump(), "changed": item.changed_at} for item in rows],
                               [*STATION_FIELDS, "changed"])
        chooser.options = ["", *(item.station.wigos_id for item in rows)]

    def load(event: object = None) -> None:
        form.clear(message=False)  # what was just done stays said
        chosen = next((item.station for item in list_stations(datastore) if item.station.wigos_id == chooser.value),
                      None)
        for name, widget in form.fields.items():
            value = getattr(chosen, name) if chosen is not None else None
            widget.value = "" if value is None else str(value)

    def add(event: object) -> None:
        def action() -> str:
            added = add_station(datastore, admin, form.values(), reason=reason.value)
            return f"Station {added.wigos_id} ({added.name}) added."
        if form.run(action):
            refresh()
            chooser.value = form.fields["wigos_id"].value.strip()

    def save(event: object) -> None:
        def action() -> str:
            if not chooser.value:
                raise ParameterError("wigos_id", "choose the station to change first (Station to edit or close)")
            changed = edit_station(datastore, admin, chooser.value, form.values(), reason=reason.value)
            return f"Station {changed.wigos_id} saved."
        if form.run(action):
            refresh()

    def close(event: object) -> None:
        def action() -> str:
            if not chooser.value:
                raise ParameterError("wigos_id", "choose the station to close first (Station to edit or close)")
            closed = close_station(datastore, admin, chooser.value, close_day.value, reason=reason.value)
            return f"Station {closed.wigos_id} closed on {closed.closed}."
        if form.run(action):
            refresh()
            load()

    def import_file(event: object) -> None:
        if not upload.value:
            file_message.object = message("Choose a CSV file first.", "error")
            return
        try:
            count = import_station_file(datastore, admin, upload.filename or "stations.csv", upload.value,
                                        reason=reason.value)
        except OpenCDMSError as exc:
            file_message.object = message(f"Nothing imported: {exc}", "error")
            return
        file_message.object = message(f"{count} station(s) imported from {upload.filename}.", "ok")
        refresh()

    def export() -> io.BytesIO:
        name, data = export_station_file(datastore, layout.value)
        download.filename = name
        return io.BytesIO(data)

    download = pn.widgets.FileDownload(callback=export, filename="stations.csv", label="Export CSV",
                                       css_classes=["station-export"], button_type="default")
    chooser.param.watch(load, "value")
    add_button.on_click(add)
    save_button.on_click(save)
    close_button.on_click(close)
    import_button.on_click(import_file)
    refresh()
    grid = pn.GridBox(*(form.cell(name) for name in STATION_FIELDS), ncols=4)
    return pn.Column(
        pn.pane.Markdown("### Stations"),
        pn.Column(listing, max_height=260, scroll=True, sizing_mode="stretch_width"),
        chooser, grid, reason, pn.Row(add_button, save_button), form.message,
        pn.Row(close_day, close_button),
        pn.pane.Markdown("#### Import and export (our columns, or wis2box's station_list.csv)"),
        pn.Row(upload, import_button, layout, download), file_message,
        sizing_mode="stretch_width",
    )


# --------------------------------------------------------------------------- elements


def elements_tab(datastore: Datastore) -> pn.Column:
    """Elements: read-only (the kernel has no writer for them)."""
    rows = [asdict(item) for item in list_elements(datastore)]
    return pn.Column(
        pn.pane.Markdown("### Elements\nSeeded from the vocabulary (`db/elements.csv`); shown, not edited here."),
        pn.pane.DataFrame(table(rows), index=False, na_rep="", sizing_mode="stretch_width", css_classes=["element-table"]),
        sizing_mode="stretch_width",
    )


# --------------------------------------------------------------------------- QC rules


def thresholds_panel(datastore: Datastore, admin: Administrator, element_codes: list[str]) -> pn.Column:
    """Thresholds in force, and a form that stores a new version of one scope."""
    tests = [test.value for test in THRESHOLD_TESTS]
    widgets: dict[str, pn.widgets.Widget] = {
        "test": pn.widgets.Select(name="Test", options=tests, css_classes=["threshold-test"], width=160),
        "element": pn.widgets.Select(name="Element", options=element_codes, css_classes=["threshold-element"],
                                     width=160),
        "station": pn.widgets.TextInput(name="Station (empty: network)", css_classes=["threshold-station"], width=200),
        "month": pn.widgets.TextInput(name="Month 1-12 (empty: all)", css_classes=["threshold-month"], width=160),
        "duration_seconds": pn.widgets.TextInput(name="Duration (P1D, PT1H; empty: any)",
                                                 css_classes=["threshold-duration_seconds"], width=200),
        "severity": pn.widgets.Select(name="Severity", options=[item.value for item in Severity], width=140),
        "active": pn.widgets.Checkbox(name="Active (untick to withdraw the rule)", value=True),
        **{name: pn.widgets.TextInput(name=name, css_classes=[f"threshold-{name}"], width=160)
           for name in PARAMETER_COLUMNS},
    }
    form = Form("threshold", widgets)
    reason = pn.widgets.TextInput(name="Reason (required)", css_classes=["threshold-reason"], width=460)
    save_button = pn.widgets.Button(name="Save as a new version", button_type="primary", css_classes=["threshold-save"])
    versions_button = pn.widgets.Button(name="Show this scope's versions", css_classes=["threshold-versions"])
    listing = pn.pane.DataFrame(index=False, na_rep="", sizing_mode="stretch_width", css_classes=["threshold-table"])
    versions = pn.pane.DataFrame(index=False, na_rep="", sizing_mode="stretch_width", css_classes=["threshold-history"])
    shown = pn.pane.HTML("")
    parameter_row = pn.GridBox(ncols=4)

    def show_parameters(event: object = None) -> None:
        names = threshold_parameters(widgets["test"].value)
        parameter_row.objects = [form.cell(name) for name in names]
        for name in PARAMETER_COLUMNS:
            if name not in names:
                widgets[name].value = ""

    def refresh(event: object = None) -> None:
        rows = [row for row in current_thresholds(datastore)
                if row["test"] == widgets["test"].value and row["element"] == widgets["element"].value]
        columns = ["version", "station", "month", "duration_seconds", "severity",
                   *threshold_parameters(widgets["test"].value), "created_by", "created_at", "reason"]
        listing.object = table(rows[:ROWS_SHOWN], columns)
        shown.object = html.escape(f"{min(len(rows), ROWS_SHOWN)} of {len(rows)} rules in force for "
                                   f"{widgets['test'].value} {widgets['element'].value}")

    def scope() -> dict[str, Any]:
        threshold = threshold_from_form(form.values())
        return {"test": threshold.test, "element": threshold.element, "station": threshold.station,
                "month": threshold.month, "duration_seconds": threshold.duration_seconds}

    def load_versions() -> int:
        rows = threshold_versions(datastore, **scope())
        versions.object = table(rows, ["version", "active", "severity", *threshold_parameters(widgets["test"].value),
                                       "method", "created_by", "created_at", "reason"])
        return len(rows)

    def show_versions(event: object) -> None:
        form.run(lambda: f"{load_versions()} version(s) of this scope.")

    def save(event: object) -> None:
        def action() -> str:
            saved = save_threshold(datastore, admin, form.values(), reason.value)
            load_versions()
            if not saved.added:
                return f"Unchanged: version {saved.version} in force already says this."
            return f"Saved as version {saved.version} (the earlier versions are kept)."
        if form.run(action):
            refresh()

    widgets["test"].param.watch(lambda event: (show_parameters(), refresh()), "value")
    widgets["element"].param.watch(refresh, "value")
    save_button.on_click(save)
    versions_button.on_click(show_versions)
    show_parameters()
    refresh()
    scope_row = pn.GridBox(*(form.cell(name) for name in ("test", "element", "station", "month",
                                                          "duration_seconds", "severity")), ncols=4)
    return pn.Column(
        pn.pane.Markdown("### Thresholds\nA change is stored as the scope's next version; the old versions stay, "
                         "with who changed them, when and why."),
        scope_row, parameter_row, widgets["active"], reason, pn.Row(save_button, versions_button), form.message,
        versions, shown, pn.Column(listing, max_height=300, scroll=True, sizing_mode="stretch_width"),
        sizing_mode="stretch_width",
    )


def relations_panel(datastore: Datastore, admin: Administrator, element_codes: list[str]) -> pn.Column:
    """Inter-element relations in force, and a form that stores a new version of one."""
    widgets: dict[str, pn.widgets.Widget] = {
        "left": pn.widgets.Select(name="Left element", options=element_codes, css_classes=["relation-left"], width=160),
        "operator": pn.widgets.Select(name="Operator", options=list(OPERATORS), value="<=", width=100),
        "right": pn.widgets.Select(name="Right element", options=["", *element_codes], css_classes=["relation-right"],
                                   width=160),
        "right_value": pn.widgets.TextInput(name="or a constant", css_classes=["relation-right_value"], width=140),
        "tolerance": pn.widgets.TextInput(name="Tolerance", value="0", css_classes=["relation-tolerance"], width=120),
        "severity": pn.widgets.Select(name="Severity", options=[item.value for item in Severity], width=140),
        "active": pn.widgets.Checkbox(name="Active (untick to withdraw)", value=True),
    }
    form = Form("relation", widgets)
    reason = pn.widgets.TextInput(name="Reason (required)", css_classes=["relation-reason"], width=460)
    save_button = pn.widgets.Button(name="Save as a new version", button_type="primary", css_classes=["relation-save"])
    listing = pn.pane.DataFrame(index=False, na_rep="", sizing_mode="stretch_width", css_classes=["relation-table"])
    versions = pn.pane.DataFrame(index=False, na_rep="", sizing_mode="stretch_width", css_classes=["relation-history"])

    def refresh() -> None:
        listing.object = table(current_relations(datastore), ["version", "left", "operator", "right", "right_value",
                                                              "tolerance", "severity", "created_by", "created_at",
                                                              "reason"])

    def save(event: object) -> None:
        def action() -> str:
            saved = save_relation(datastore, admin, form.values(list(RELATION_FIELDS)), reason.value)
            relation = relation_from_form(form.values(list(RELATION_FIELDS)))
            versions.object = table(relation_versions(datastore, relation.left, relation.operator, relation.right,
                                                      relation.right_value),
                                    ["version", "active", "tolerance", "severity", "created_by", "created_at", "reason"])
            if not saved.added:
                return f"Unchanged: version {saved.version} in force already says this."
            return f"Saved as version {saved.version} (the earlier versions are kept)."
        if form.run(action):
            refresh()

    save_button.on_click(save)
    refresh()
    return pn.Column(
        pn.pane.Markdown("### Relations between elements (consistency test)"),
        pn.GridBox(*(form.cell(name) for name in RELATION_FIELDS if name != "active"), ncols=4),
        widgets["active"], reason, save_button, form.message, versions, listing, sizing_mode="stretch_width",
    )


# --------------------------------------------------------------------------- routes and schedules


def routes_tab(settings: Settings, admin: Administrator) -> pn.Column:
    """The event service's routes.yml as text: checked by the service's own parser before it is
    written, written atomically, and only if nobody saved it since it was opened."""
    from services.events.routes import parse_routes, routes_file

    path = routes_file(settings)
    state: dict[str, str | None] = {"digest": None}
    editor = pn.widgets.TextAreaInput(name=str(path), height=520, sizing_mode="stretch_width",
                                      css_classes=["routes-text"], stylesheets=["textarea { font-family: monospace; }"])
    feedback = pn.pane.HTML("", css_classes=["routes-message"], sizing_mode="stretch_width")
    check_button = pn.widgets.Button(name="Check", css_classes=["routes-check"])
    save_button = pn.widgets.Button(name="Save", button_type="primary", css_classes=["routes-save"])
    reload_button = pn.widgets.Button(name="Reload from file", css_classes=["routes-reload"])

    def check(text: str) -> object:
        return parse_routes(text, path.name)

    def reload(event: object = None) -> None:
        try:
            current = read_config_text(path)
        except OpenCDMSError as exc:
            feedback.object = message(str(exc), "error")
            return
        editor.value = current.text
        state["digest"] = current.digest
        feedback.object = ""

    def run_check(event: object) -> None:
        try:
            config = check(editor.value)
        except OpenCDMSError as exc:
            feedback.object = message(f"Invalid: {exc}", "error")
            return
        feedback.object = message(f"Valid: {len(config.routes)} routes, {len(config.schedules)} schedules.", "ok")

    def save(event: object) -> None:
        try:
            saved = save_config_text(admin, path, editor.value, check, expected_digest=state["digest"])
        except OpenCDMSError as exc:
            feedback.object = message(f"Not saved: {exc}", "error")
            return
        state["digest"] = saved.digest
        feedback.object = message(f"Saved {path.name}; the event service reads it when it starts.", "ok")

    check_button.on_click(run_check)
    save_button.on_click(save)
    reload_button.on_click(reload)
    reload()
    return pn.Column(
        pn.pane.Markdown("### Routes and schedules of the event service\nChecked before saving; an error names "
                         "the route or schedule and the field."),
        editor, pn.Row(check_button, save_button, reload_button), feedback, sizing_mode="stretch_width",
    )


# --------------------------------------------------------------------------- users and roles


def users_tab(admin: Administrator) -> pn.Column:
    """People and their roles, through the hub's API (an administrator's server token)."""
    header = pn.pane.Markdown("### Users and roles\nA role is a hub group; a changed role applies from the "
                              "person's next server start.")
    try:
        hub = HubUsers.from_environment()
    except OpenCDMSError as exc:
        return pn.Column(header, pn.pane.HTML(message(str(exc), "error"), css_classes=["users-message"]))
    listing = pn.pane.DataFrame(index=False, na_rep="", sizing_mode="stretch_width", css_classes=["users-table"])
    person = pn.widgets.Select(name="User", options=[], css_classes=["users-person"], width=220)
    role = pn.widgets.Select(name="Role", options=[*(item.value for item in HubRole), NO_ROLE],
                             css_classes=["users-role"], width=180)
    change = pn.widgets.Button(name="Change role", button_type="primary", css_classes=["users-change"])
    feedback = pn.pane.HTML("", css_classes=["users-message"], sizing_mode="stretch_width")
    approvals = approval_page(os.environ.get("JUPYTERHUB_BASE_URL", "/"))

    def refresh() -> None:
        try:
            users = hub.list_users()
        except OpenCDMSError as exc:
            feedback.object = message(str(exc), "error")
            return
        listing.object = table([{"name": user.name, "role": user.role.value if user.role else NO_ROLE,
                                 "groups": ", ".join(user.groups), "hub administrator": user.admin,
                                 "server running": user.server_running, "last activity": user.last_activity}
                                for user in users],
                               ["name", "role", "groups", "hub administrator", "server running", "last activity"])
        person.options = [user.name for user in users]

    def apply(event: object) -> None:
        wanted = None if role.value == NO_ROLE else role.value
        try:
            changed = hub.set_role(admin, person.value, wanted)
        except OpenCDMSError as exc:
            feedback.object = message(f"Not changed: {exc}", "error")
            return
        shown = changed.role.value if changed.role else NO_ROLE
        feedback.object = message(f"{changed.name} is now {shown}.", "ok")
        refresh()

    change.on_click(apply)
    pn.state.on_session_destroyed(lambda context: hub.close())
    refresh()
    return pn.Column(
        header, listing, pn.Row(person, role, change), feedback,
        pn.pane.HTML(f'<p>New sign-ups are approved on the hub\'s <a href="{html.escape(approvals)}" target="_blank">'
                     "authorization page</a> (NativeAuthenticator has no API for it).</p>"),
        sizing_mode="stretch_width",
    )


# --------------------------------------------------------------------------- the page


def refusal_page(error: AdminOnlyError) -> pn.Column:
    """What anyone but an administrator sees."""
    return pn.Column(
        pn.pane.Markdown(f"## {TITLE}"),
        pn.pane.HTML(message(f"Not allowed. {error}", "error"), css_classes=["admin-refused"],
                     sizing_mode="stretch_width"),
        css_classes=["admin-refusal"], sizing_mode="stretch_width",
    )


def build(settings: Settings) -> pn.viewable.Viewable:
    """The page for the person ``settings`` act for: the administration, or the refusal."""
    try:
        admin = administrator(settings)
    except AdminOnlyError as exc:
        return refusal_page(exc)
    datastore = shared("opencdms-admin-datastore", lambda: Datastore.open(settings))
    codes = [row.code for row in list_elements(datastore)]
    return pn.Column(
        pn.pane.Markdown(f"## {TITLE}\nSigned in as **{html.escape(admin.user)}** (administrator); every change is "
                         "recorded under this name."),
        pn.Tabs(
            ("Stations", stations_tab(datastore, admin)),
            ("Elements", elements_tab(datastore)),
            ("QC rules", pn.Column(thresholds_panel(datastore, admin, codes), relations_panel(datastore, admin, codes),
                                   sizing_mode="stretch_width")),
            ("Routes and schedules", routes_tab(settings, admin)),
            ("Users and roles", users_tab(admin)),
            dynamic=False, sizing_mode="stretch_width", css_classes=["admin-tabs"],
        ),
        sizing_mode="stretch_width", css_classes=["admin-page"],
    )


if __name__.startswith("bokeh"):  # `panel serve apps/admin.py`: one page per browser session
    pn.extension()
    build(load_settings()).servable(title=TITLE)
