"""The data-entry page (``apps/data_entry.ipynb``): widgets only; every rule is the kernel's
(:mod:`opencdms_kernel.keying`).

Layout: the sheet's choice (station, form, period), a line saying whose keying this is, the
grid as on paper (rows: days or hours; columns: the form's elements), the findings of the
checks with a reason box for each warning, Save, the message line, and for a supervisor the
differences between the keyings and the sheet's audit.

Keyboard (the page's template adds the keys, ``apps/jupyter/voila/templates/opencdms``): Tab
and Enter move to the next cell of the row and on to the next row, Shift+Tab/Shift+Enter back,
the arrow keys up and down move within a column, Alt+R goes to the reason box of the cell's
warning (Enter or Esc comes back), Ctrl+S saves.  The widgets carry the CSS classes the keys
look for: ``kc`` and ``kc-<row>-<element>`` on cells, ``kr-<row>-<element>`` on reason boxes,
``keying-save``, ``keying-open``, ``keying-period``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import ipywidgets as widgets

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.keying import (
    CellInput,
    CellKey,
    CheckedCell,
    Difference,
    Form,
    SheetStatus,
    SheetView,
    list_differences,
    open_sheet,
    resolve_difference,
    save_keying,
    sheet_audit,
    shipped_forms,
    station_choices,
)
from opencdms_kernel.settings import Settings

CELL_WIDTH = "86px"
LABEL_WIDTH = "64px"


@dataclass
class _Grid:
    """The cell widgets of one form (built once, reused for every sheet of that form)."""

    form: Form
    box: widgets.GridBox
    cells: dict[CellKey, widgets.Text]
    row_layouts: dict[int, widgets.Layout]
    states: dict[CellKey, str] = field(default_factory=dict)  # "", "warning", "error"


def _cell_class(key: CellKey) -> str:
    return f"kc-{key[0]}-{key[1]}"


class DataEntryApp:
    """One person's data-entry page: acts for ``settings.user`` with ``settings.hub_role``."""

    def __init__(self, settings: Settings, datastore: Datastore) -> None:
        self.settings = settings
        self.datastore = datastore
        self.user = settings.user
        self.role = settings.hub_role
        self.forms = shipped_forms()
        self.view: SheetView | None = None
        self._grids: dict[str, _Grid] = {}
        self._reasons: dict[CellKey, widgets.Text] = {}
        self._lines: dict[tuple[CellKey, bool], tuple[widgets.HTML, widgets.Widget]] = {}
        self._loading = False
        self._checked: dict[CellKey, CheckedCell] = {}

        stations = station_choices(datastore)
        self.station = widgets.Dropdown(options=[(f"{name} ({wigos})", wigos) for wigos, name in stations],
                                        description="Station", layout=widgets.Layout(width="420px"))
        self.form = widgets.Dropdown(options=[(form.title, name) for name, form in self.forms.items()],
                                     description="Form", layout=widgets.Layout(width="360px"))
        # A fixed placeholder: changing it while someone types would reset the box (the widget
        # redraws its text from the last value sent, and a box sends on Enter or on leaving it).
        self.period = widgets.Text(description="Period", continuous_update=False,
                                   placeholder="2020-07 or 2020-07-15", layout=widgets.Layout(width="220px"))
        self.period.add_class("keying-period")
        self.open_button = widgets.Button(description="Open sheet", button_style="primary")
        self.open_button.add_class("keying-open")
        self.heading = widgets.HTML()
        self.heading.add_class("keying-heading")
        self.grid_area = widgets.VBox()
        self.findings = widgets.VBox()
        self.findings.add_class("keying-findings")
        self.save_button = widgets.Button(description="Save (Ctrl+S)", button_style="success", disabled=True)
        self.save_button.add_class("keying-save")
        self.message = widgets.HTML()
        self.message.add_class("keying-message")
        self.supervision = widgets.VBox()
        self.supervision.add_class("keying-supervision")
        self.audit = widgets.HTML()
        self.audit.add_class("keying-audit")

        self.open_button.on_click(lambda _: self.open())
        self.save_button.on_click(lambda _: self.save())
        who = html.escape(f"{self.user}" + (f" ({self.role.value})" if self.role else ""))
        self.widget = widgets.VBox([
            widgets.HTML(f"<p>Keying as <b>{who}</b>. Tab or Enter: next cell; "
                         "arrows: up and down a column; Alt+R: reason for a warning; Ctrl+S: save. "
                         "Codes: M missing, T trace, A accumulated (see the form's columns).</p>"),
            widgets.HBox([self.station, self.form, self.period, self.open_button]),
            self.heading, self.grid_area, self.findings,
            widgets.HBox([self.save_button]), self.message, self.supervision, self.audit,
        ])
        self.widget.add_class("keying-app")
        # The grid of the form shown first, made now: in a preheated kernel (the hub's Voilà)
        # that is before anyone asks for the page, and opening a sheet then only fills it in.
        self._grid(self._current_form)

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> "DataEntryApp":
        """The page for the person the server runs for (``OPENCDMS_USER``, ``OPENCDMS_HUB_ROLE``)."""
        settings = settings or Settings()
        return cls(settings, Datastore.open(settings))

    @property
    def _current_form(self) -> Form:
        return self.forms[self.form.value]

    # ------------------------------------------------------------------ the grid

    def _grid(self, form: Form) -> _Grid:
        if form.name in self._grids:
            return self._grids[form.name]
        rows = form.period(form.period_example)
        # Every row a sheet of this form can have (31 days, or its hours); a shorter month hides some.
        all_rows = tuple(range(1, 32)) if form.layout.value == "days_of_month" else rows.rows
        header: list[widgets.Widget] = [widgets.HTML("<b>Day</b>" if len(all_rows) == 31 else "<b>Hour</b>")]
        header += [widgets.HTML(f"<b title='{html.escape(element.code)}'>{html.escape(element.heading)}</b>"
                                f"<br><small>{html.escape(element.display_units)}</small>")
                   for element in form.elements]
        children = list(header)
        cells: dict[CellKey, widgets.Text] = {}
        row_layouts: dict[int, widgets.Layout] = {}
        for row in all_rows:
            # One layout per row, shared by its widgets (hiding a row is one change), and the
            # classes given at creation: a few hundred widget messages fewer per grid.
            row_layouts[row] = layout = widgets.Layout(width="auto")
            label = widgets.HTML(f"<span class='kr-label'>{rows.row_label(row) if len(all_rows) != 31 else row}</span>",
                                 layout=layout)
            children.append(label)
            for element in form.elements:
                key = (row, element.code)
                cell = widgets.Text(continuous_update=False, layout=layout, _dom_classes=("kc", _cell_class(key)))
                cell.observe(self._changed, "value")
                cells[key] = cell
                children.append(cell)
        box = widgets.GridBox(children, layout=widgets.Layout(
            grid_template_columns=f"{LABEL_WIDTH} " + " ".join([CELL_WIDTH] * len(form.elements)),
            grid_gap="2px 6px"))
        box.add_class("keying-grid")
        grid = _Grid(form, box, cells, row_layouts)
        self._grids[form.name] = grid
        return grid

    def _show(self, view: SheetView) -> None:
        """Put a sheet into its grid: the person's own cells, or what is stored when they do not key."""
        grid = self._grid(view.form)
        rows = set(view.period.rows)
        editable = view.keying is not None
        self._loading = True
        try:
            for row, layout in grid.row_layouts.items():
                layout.display = None if row in rows else "none"
            for key, cell in grid.cells.items():
                if editable:
                    cell.value = view.cells[key].text if key in view.cells else ""
                else:
                    cell.value = view.stored[key].text if key in view.stored else ""
                cell.disabled = not editable
                stored = view.stored.get(key)
                cell.tooltip = (f"stored: {stored.text} (version {stored.version}, {stored.changed_by})"
                                if stored is not None else None)
                if key in view.differences:
                    cell.add_class("kc-diff")
                else:
                    cell.remove_class("kc-diff")
            self._reasons = {}
            self._lines = {}
            for key, keyed in view.cells.items():
                if keyed.reason:
                    self._reason_box(key).value = keyed.reason
        finally:
            self._loading = False
        self.grid_area.children = [grid.box]
        self._recheck()

    def _texts(self) -> dict[CellKey, str]:
        assert self.view is not None
        grid = self._grid(self.view.form)
        rows = set(self.view.period.rows)
        return {key: cell.value for key, cell in grid.cells.items() if key[0] in rows and cell.value.strip()}

    def _changed(self, change: dict) -> None:
        if not self._loading and self.view is not None:
            self._recheck()

    def _recheck(self) -> None:
        """Check every cell (the kernel's checks, no database) and show what they found; a sheet
        shown read-only (what is stored) is not checked again."""
        assert self.view is not None
        grid = self._grid(self.view.form)
        try:
            self._checked = self.view.check_all(self._texts()) if self.view.keying is not None else {}
        except OpenCDMSError as exc:
            self._say(str(exc), ok=False)
            return
        self._show_findings()  # first: a cell turning yellow has its reason box already
        for key, cell in grid.cells.items():
            found = self._checked.get(key)
            state = "error" if found is not None and found.errors else "warning" if found is not None and found.warnings else ""
            if grid.states.get(key, "") != state:
                for name in ("kc-warning", "kc-error"):
                    cell.remove_class(name)
                if state:
                    cell.add_class(f"kc-{state}")
                grid.states[key] = state

    def _reason_box(self, key: CellKey) -> widgets.Text:
        if key not in self._reasons:
            box = widgets.Text(placeholder="reason to keep this value", continuous_update=False,
                               layout=widgets.Layout(width="320px"))
            box.add_class("keying-reason")
            box.add_class(f"kr-{key[0]}-{key[1]}")
            self._reasons[key] = box
        return self._reasons[key]

    def _finding_line(self, key: CellKey, warning: bool) -> tuple[widgets.HTML, widgets.Widget]:
        """The line of a cell's findings (kept while the cell has findings: a line redrawn
        while someone types its reason would lose what they typed)."""
        if (key, warning) not in self._lines:
            label = widgets.HTML()
            self._lines[(key, warning)] = (label, widgets.HBox([label, self._reason_box(key)]) if warning else label)
        return self._lines[(key, warning)]

    def _show_findings(self) -> None:
        assert self.view is not None
        lines: list[widgets.Widget] = []
        for key, cell in self._checked.items():
            if not cell.findings:
                continue
            kind = "error" if cell.errors else "warning"
            text = "; ".join(html.escape(f.message) for f in cell.findings)
            label, line = self._finding_line(key, kind == "warning")
            label.value = (f"<span class='kf-{kind} kf-{key[0]}-{key[1]}'><b>{html.escape(self.view.label(key))}"
                           f"</b> ({kind}): {text}</span>")
            lines.append(line)
        if list(self.findings.children) != lines:
            self.findings.children = lines

    # ------------------------------------------------------------------ actions

    def _say(self, text: str, *, ok: bool) -> None:
        kind = "keying-ok" if ok else "keying-error"
        self.message.value = f"<div class='{kind}' role='status'>{html.escape(text)}</div>"

    def open(self, *, keep_message: bool = False) -> None:
        """Open the chosen sheet for this person (and focus its first cell)."""
        try:
            view = open_sheet(self.datastore, self._current_form, self.station.value, self.period.value,
                              user=self.user, role=self.role)
        except OpenCDMSError as exc:
            self._say(str(exc), ok=False)
            return
        self.view = view
        if not keep_message:
            self.message.value = ""
        self.heading.value = self._heading(view)
        self._show(view)
        self.save_button.disabled = view.keying is None
        self._show_supervision(view)
        if view.keying is not None:
            first = self._grid(view.form).cells[(view.period.rows[0], view.form.elements[0].code)]
            first.focus()

    def _heading(self, view: SheetView) -> str:
        form, station = html.escape(view.form.title), html.escape(f"{view.station_name} ({view.station})")
        place = f"{form} — {station} — {html.escape(view.period.label)}"
        status = {SheetStatus.NEW: "not keyed yet", SheetStatus.KEYING: "waiting for the second keying",
                  SheetStatus.DIFFERENCES: f"{len(view.differences)} difference(s) between the keyings",
                  SheetStatus.COMMITTED: f"stored as observations ({len(view.stored)} values)"}[view.status]
        if view.keying is None:
            who = f"You do not key this sheet: {html.escape(view.note)}."
        elif view.form.double_keying:
            who = f"<b class='keying-which'>Keying {view.keying} of 2</b> (blind: the other keying is not shown)."
        else:
            who = "<b class='keying-which'>Keying 1 of 1</b> (this form is keyed once)."
        keyers = ", ".join(f"keying {n}: {html.escape(name)}" for n, name in sorted(view.keyers.items()))
        return (f"<div><b>{place}</b><br>{who} Sheet: <span class='keying-status'>{status}</span>"
                + (f" ({keyers})" if keyers else "") + "</div>")

    def save(self) -> None:
        """Save this person's keying (the kernel checks, version check, commit when ready)."""
        if self.view is None or self.view.keying is None:
            return
        texts = self._texts()
        cells = {key: CellInput(text, self._reasons[key].value if key in self._reasons else None)
                 for key, text in texts.items()}
        try:
            result = save_keying(self.datastore, self.view, cells)
        except OpenCDMSError as exc:
            self._say(str(exc), ok=False)
            return
        self._say(result.message, ok=True)
        self.open(keep_message=True)

    # ------------------------------------------------------------------ supervision

    def _show_supervision(self, view: SheetView) -> None:
        if not view.is_supervisor or view.sheet_id is None:
            self.supervision.children = []
            self.audit.value = ""
            return
        try:
            differences = list_differences(self.datastore, view)
            events = sheet_audit(self.datastore, view)
        except OpenCDMSError as exc:
            self._say(str(exc), ok=False)
            return
        keyers = view.keyers
        rows: list[widgets.Widget] = [widgets.HTML(f"<h3>Differences between the keyings ({len(differences)})</h3>")]
        for difference in differences:
            first = html.escape(difference.first or "empty")
            second = html.escape(difference.second or "empty")
            text = (f"<b>{html.escape(difference.label)}</b>: keying 1 <code>{first}</code> "
                    f"({html.escape(keyers.get(1, '?'))}) · keying 2 <code>{second}</code> "
                    f"({html.escape(keyers.get(2, '?'))})")
            if difference.resolved:
                text += (f" — resolved: <code>{html.escape(difference.resolved_text or 'empty')}</code> by "
                         f"{html.escape(difference.resolved_by or '')}: {html.escape(difference.reason or '')}")
            label = widgets.HTML(text)
            value = widgets.Text(placeholder="value on the form", layout=widgets.Layout(width="140px"))
            reason = widgets.Text(placeholder="why", layout=widgets.Layout(width="260px"))
            button = widgets.Button(description="Resolve")
            slug = f"{difference.key[0]}-{difference.key[1]}"
            for member, name in ((value, "kd-value"), (reason, "kd-reason"), (button, "kd-resolve")):
                member.add_class(name)
                member.add_class(f"{name}-{slug}")
            button.on_click(lambda _, d=difference, v=value, r=reason: self._resolve(d, v.value, r.value))
            rows.append(widgets.HBox([label, value, reason, button]))
        self.supervision.children = rows
        lines = "".join(
            f"<tr><td>{event.at:%Y-%m-%d %H:%M:%S}</td><td>{html.escape(event.who)}</td>"
            f"<td>{html.escape(event.login or '')}</td><td>{html.escape(event.action)}</td>"
            f"<td>{html.escape(event.text)}</td></tr>" for event in events)
        self.audit.value = ("<h3>Audit</h3><table class='keying-audit-table'><tr><th>when (UTC)</th><th>who</th>"
                            f"<th>login</th><th>what</th><th></th></tr>{lines}</table>")

    def _resolve(self, difference: Difference, value: str, reason: str) -> None:
        assert self.view is not None
        try:
            result = resolve_difference(self.datastore, self.view, difference, value, reason=reason)
        except OpenCDMSError as exc:
            self._say(str(exc), ok=False)
            return
        self._say(result.message, ok=True)
        self.open(keep_message=True)
