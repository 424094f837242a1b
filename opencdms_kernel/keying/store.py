"""The keying store: sheets, their keyings held apart, differences, resolutions, the commit.

A *sheet* is one form for one station and one period (table ``keying_sheet``).  Keying 1 and
keying 2 (``keying_entry``) each have their keyer, cells, version and times.  The flow:

1. :func:`open_sheet` tells a person which keying is theirs (the first keyer keeps keying 1;
   on a double-keyed form another person gets keying 2) and gives them **their own** cells only:
   the second keyer never sees the first keying (:func:`read_keying` refuses it too).
2. :func:`save_keying` checks every cell (:mod:`~opencdms_kernel.keying.checks`: errors refuse
   the save, warnings need a reason) and writes the keying in one transaction, **if** its version
   is still the one the person opened: otherwise :class:`KeyingConflictError` says who saved it
   and when, and nothing is written.
3. When the sheet is ready — a single-keyed form once saved; a double-keyed one when both
   keyings agree, or every difference is resolved by a supervisor (:func:`resolve_difference`) —
   the database function ``keying_commit`` writes the values as observations (source ``keying``)
   through the audited path, each under its author's name (migration 0009).  A clerk's database
   role may not write ``observation``; it may run that function, which checks readiness itself.
   An edit after the commit is a new save; once ready again, the changed values become new
   versions of their observations (the history keeps the old ones).

Who may do what: clerks (and admins) key; QC reviewers and admins (:data:`SUPERVISOR_ROLES`)
see and resolve differences and read the audit, never on a sheet they keyed themselves.
``role`` is the person's hub role (``settings.hub_role``); the database role enforces the same
from below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping

import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import ConflictError, NotFoundError, OpenCDMSError, ParameterError
from opencdms_kernel.keying.checks import (
    CellKey,
    CheckedCell,
    SheetRules,
    cell_key_text,
    check_cell,
    check_sheet,
    display_text,
    load_sheet_rules,
    parse_cell_key,
)
from opencdms_kernel.keying.form import Clock, Form, SheetPeriod
from opencdms_kernel.vocabulary import HubRole

SUPERVISOR_ROLES = frozenset({HubRole.QC_REVIEWER, HubRole.ADMIN})
KEYING_ROLES = frozenset({HubRole.CLERK, HubRole.ADMIN})
NOT_READY = "55000"  # object_not_in_prerequisite_state: keying_commit's refusal
INSUFFICIENT_PRIVILEGE = "42501"
CHECK_VIOLATION = "23514"
JSON_VALUE = sa.JSON(none_as_null=True)  # None binds as SQL NULL, not as the JSON null


class SheetStatus(StrEnum):
    """Where a sheet is."""

    NEW = "new"  # nothing saved yet
    KEYING = "keying"  # keyed once, waiting for the second keying
    DIFFERENCES = "differences"  # both keyings saved, some cells differ and are not resolved
    COMMITTED = "committed"  # the values are observations (until a later save changes a keying)


class KeyingConflictError(ConflictError):
    """The keying was saved by someone else after the person opened it: nothing was written."""

    def __init__(self, message: str, saved_by: str | None = None, saved_at: datetime | None = None) -> None:
        self.saved_by = saved_by
        self.saved_at = saved_at
        super().__init__(message)


class SheetNotReadyError(ConflictError):
    """The sheet cannot become observations yet (second keying missing, differences unresolved)."""


class KeyingAccessError(OpenCDMSError):
    """The person may not do this with this sheet (blind keying, supervisors only, own sheet)."""

    http_status = 403


class KeyingCheckError(ParameterError):
    """Cells fail their checks: errors to correct, warnings without a reason; names each cell."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        self.problems = problems
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        super().__init__("cells", shown)


class UnknownStationError(NotFoundError):
    """No station has the WIGOS identifier given."""


@dataclass(frozen=True)
class CellInput:
    """What a person typed in a cell, and the reason for keeping a value that warns."""

    text: str
    reason: str | None = None


@dataclass(frozen=True)
class KeyedCell:
    """A cell of one keying as saved: the text typed, the reason kept with it, who typed it."""

    text: str
    canonical: str
    reason: str | None = None
    by: str | None = None


@dataclass(frozen=True)
class StoredValue:
    """What the datastore holds for one cell of a sheet (source ``keying``)."""

    text: str  # as the form shows it
    value: float | None
    flag: str | None
    version: int
    changed_by: str
    changed_at: datetime
    comment: str | None


@dataclass(frozen=True)
class EntryInfo:
    """One keying's bookkeeping (never its cells): who keys it, its version, the last save."""

    keying: int
    keyed_by: str
    version: int
    saved_by: str
    saved_at: datetime


@dataclass(frozen=True)
class SheetView:
    """A sheet as one person opens it: which keying is theirs (``keying``; None: nothing to
    key for them, ``note`` says why), its version then, their own cells, what is stored."""

    form: Form
    station: str
    station_name: str
    period: SheetPeriod
    user: str
    role: HubRole | None
    sheet_id: int | None
    status: SheetStatus
    keying: int | None
    version: int
    cells: Mapping[CellKey, KeyedCell]
    stored: Mapping[CellKey, StoredValue]
    entries: tuple[EntryInfo, ...]
    differences: tuple[CellKey, ...]  # unresolved cells: positions only, never the other keying
    rules: SheetRules
    opened_at: datetime
    note: str = ""

    @property
    def is_supervisor(self) -> bool:
        """May see and resolve this sheet's differences (a supervisor who did not key it)."""
        return self.role in SUPERVISOR_ROLES and all(entry.keyed_by != self.user for entry in self.entries)

    @property
    def keyers(self) -> dict[int, str]:
        return {entry.keying: entry.keyed_by for entry in self.entries}

    def label(self, key: CellKey) -> str:
        return self.period.cell_label(*key)

    def check(self, key: CellKey, text: str) -> CheckedCell:
        """One cell checked on its own (the app's inline check; rows and columns: :meth:`check_all`)."""
        return check_cell(self.form, self.rules, key, text)

    def check_all(self, texts: Mapping[CellKey, str]) -> dict[CellKey, CheckedCell]:
        """Every cell checked, with its row (relations) and column (accumulated days)."""
        return check_sheet(self.form, self.rules, self.period, texts)


@dataclass(frozen=True)
class SaveResult:
    """What a save did: the keying's new version, the sheet's status, observations written."""

    sheet_id: int
    keying: int
    version: int
    status: SheetStatus
    written: int
    differences: int
    message: str


@dataclass(frozen=True)
class Difference:
    """One cell where the keyings differ (for a supervisor): both texts, and the current
    resolution if one matches them."""

    key: CellKey
    label: str
    first: str | None
    second: str | None
    first_canonical: str | None
    second_canonical: str | None
    resolved: bool
    resolved_text: str | None = None
    resolved_by: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class ResolveResult:
    """After a resolution: the sheet's status, differences left, observations written."""

    status: SheetStatus
    remaining: int
    written: int
    message: str


@dataclass(frozen=True)
class AuditEvent:
    """One line of a sheet's story: a save, a resolution, a commit, a stored version."""

    at: datetime
    who: str
    login: str | None
    action: str
    text: str
    detail: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading


def identify_writer(connection: sa.Connection, user: str, reason: str) -> None:
    """The audit's writer and reason for this transaction: ingest's own function, imported when
    something is written (the ingest package brings pandas and DuckDB, which opening a sheet does
    not need)."""
    from opencdms_kernel.ingest.load import identify_writer as identify

    identify(connection, user, reason)


_STATION_SQL = sa.text("SELECT id, name, timezone FROM station WHERE wigos_id = :wigos_id")
_SHEET_SQL = sa.text("SELECT id, status FROM keying_sheet WHERE form = :form AND station_id = :station AND period = :period")
_ENTRIES_SQL = sa.text(
    "SELECT keying, keyed_by, version, saved_by, saved_at FROM keying_entry WHERE sheet_id = :sheet ORDER BY keying")
_OWN_CELLS_SQL = sa.text("SELECT cells FROM keying_entry WHERE sheet_id = :sheet AND keying = :keying")
_UNRESOLVED_SQL = sa.text("SELECT cell FROM keying_cells(:sheet) WHERE state = 'unresolved'")


def _station(connection: sa.Connection, wigos_id: str) -> sa.Row:
    row = connection.execute(_STATION_SQL, {"wigos_id": wigos_id}).first()
    if row is None:
        raise UnknownStationError(f"no station {wigos_id!r}")
    return row


def _entries(connection: sa.Connection, sheet_id: int | None) -> tuple[EntryInfo, ...]:
    if sheet_id is None:
        return ()
    return tuple(EntryInfo(row.keying, row.keyed_by, row.version, row.saved_by, row.saved_at)
                 for row in connection.execute(_ENTRIES_SQL, {"sheet": sheet_id}))


def _keyed_cells(raw: Mapping[str, Any]) -> dict[CellKey, KeyedCell]:
    return {parse_cell_key(key): KeyedCell(text=cell.get("text", ""), canonical=cell.get("canonical", ""),
                                           reason=(cell.get("override") or {}).get("reason"), by=cell.get("by"))
            for key, cell in raw.items()}


def _stored(connection: sa.Connection, form: Form, sheet_id: int | None) -> dict[CellKey, StoredValue]:
    if sheet_id is None:
        return {}
    stored = {}
    for row in connection.execute(sa.text(
            "SELECT cell, version, value, result_quality, changed_at, changed_by, comment "
            "FROM keying_observations(:sheet) WHERE is_current AND status = 'latest'"), {"sheet": sheet_id}):
        key = parse_cell_key(row.cell)
        flag = (row.result_quality or {}).get("ingest", {}).get("flag")
        stored[key] = StoredValue(display_text(form.element(key[1]), form.codes, row.value, flag), row.value, flag,
                                  row.version, row.changed_by, row.changed_at, row.comment)
    return stored


def _slot(form: Form, entries: tuple[EntryInfo, ...], user: str, role: HubRole | None) -> tuple[int | None, str]:
    """Which keying ``user`` keys on this sheet, or None and why not."""
    if role is not None and role not in KEYING_ROLES:
        return None, f"a {role.value} does not key sheets (clerks and admins do)"
    by_number = {entry.keying: entry for entry in entries}
    if not form.double_keying:
        return 1, ""
    first, second = by_number.get(1), by_number.get(2)
    if first is None or first.keyed_by == user:
        return 1, ""
    if second is None or second.keyed_by == user:
        return 2, ""
    return None, f"keyed twice already (by {first.keyed_by} and {second.keyed_by})"


def open_sheet(datastore: Datastore, form: Form, station: str, period: str, *, user: str,
               role: HubRole | str | None = None) -> SheetView:
    """Open a sheet for ``user``: their keying (and its version, for the save's check), their
    own cells, what is stored, the positions of unresolved differences."""
    hub_role = HubRole(role) if role is not None else None
    sheet_period = form.period(period)
    with datastore.engine.connect() as connection:
        station_row = _station(connection, station)
        rules = load_sheet_rules(connection, form, station_row.id, sheet_period)
        sheet = connection.execute(_SHEET_SQL, {"form": form.name, "station": station_row.id,
                                                "period": sheet_period.label}).first()
        sheet_id = sheet.id if sheet is not None else None
        entries = _entries(connection, sheet_id)
        keying, note = _slot(form, entries, user, hub_role)
        version = next((entry.version for entry in entries if entry.keying == keying), 0)
        cells: dict[CellKey, KeyedCell] = {}
        if keying is not None and version:
            cells = _keyed_cells(connection.execute(_OWN_CELLS_SQL, {"sheet": sheet_id, "keying": keying}).scalar_one())
        stored = _stored(connection, form, sheet_id)
        unresolved = tuple(sorted(parse_cell_key(cell) for cell in connection.execute(
            _UNRESOLVED_SQL, {"sheet": sheet_id}).scalars())) if sheet_id is not None and form.double_keying else ()
        opened_at = connection.execute(sa.text("SELECT now()")).scalar_one()
    return SheetView(
        form=form, station=station, station_name=station_row.name, period=sheet_period, user=user, role=hub_role,
        sheet_id=sheet_id, status=SheetStatus(sheet.status) if sheet is not None else SheetStatus.NEW,
        keying=keying, version=version, cells=cells, stored=stored, entries=entries, differences=unresolved,
        rules=rules, opened_at=opened_at, note=note,
    )


def read_keying(datastore: Datastore, view: SheetView, keying: int) -> dict[CellKey, KeyedCell]:
    """The cells of keying ``keying`` of the sheet: for its own keyer, or a supervisor who did
    not key the sheet.  Keying is blind: a keyer never reads the other keying."""
    entry = next((e for e in view.entries if e.keying == keying), None)
    if entry is None or view.sheet_id is None:
        raise NotFoundError(f"keying {keying} of this sheet has not been saved")
    if entry.keyed_by != view.user and not view.is_supervisor:
        raise KeyingAccessError(
            f"keying {keying} of {view.form.name}, station {view.station}, {view.period.label} is "
            f"{entry.keyed_by}'s; keying is blind: {view.user} may not read it")
    with datastore.engine.connect() as connection:
        return _keyed_cells(connection.execute(_OWN_CELLS_SQL, {"sheet": view.sheet_id, "keying": keying}).scalar_one())


# --------------------------------------------------------------------------- saving


def _problems(view: SheetView, checked: Mapping[CellKey, CheckedCell], cells: Mapping[CellKey, CellInput]) -> tuple[str, ...]:
    problems = []
    for key, cell in checked.items():
        label = view.label(key)
        problems += [f"{label}: {finding.message}" for finding in cell.errors]
        reason = (cells[key].reason or "").strip()
        if cell.warnings and not reason:
            problems.append(f"{label}: give a reason to keep it ({cell.warnings[0].message})")
    return tuple(problems)


def _cell_json(cell: CheckedCell, reason: str | None, by: str) -> dict[str, Any]:
    assert cell.value is not None
    stored: dict[str, Any] = {"text": cell.text.strip(), "canonical": cell.value.canonical,
                              "kind": cell.value.kind.value, "value": cell.value.value, "by": by}
    if cell.value.flag is not None:
        stored["flag"] = cell.value.flag
    if cell.days is not None:
        stored["days"] = cell.days
    if cell.warnings:
        stored["override"] = {"reason": (reason or "").strip(), "warnings": [f.message for f in cell.warnings]}
    return stored


_ENSURE_SHEET_SQL = sa.text(
    """
    INSERT INTO keying_sheet (form, station_id, period, period_start, row_step, row_origin, row_numbers, time_zone,
                              duration_seconds, level, elements, double_keying, created_by)
    VALUES (:form, :station, :period, :start, :step, :origin, :rows, :zone, :duration, :level, :elements,
            :double, :user)
    ON CONFLICT ON CONSTRAINT keying_sheet_once DO NOTHING
    """
)
_LOCK_SHEET_SQL = sa.text(
    "SELECT id, status, elements, double_keying, duration_seconds FROM keying_sheet "
    "WHERE form = :form AND station_id = :station AND period = :period FOR UPDATE")
_LOCK_ENTRIES_SQL = sa.text(
    "SELECT keying, keyed_by, version, saved_by, saved_at, cells FROM keying_entry WHERE sheet_id = :sheet "
    "ORDER BY keying FOR UPDATE")


def _lock_sheet(connection: sa.Connection, view: SheetView, station_id: int, time_zone: str) -> sa.Row:
    """The sheet's row, created if missing (two first saves at once: one creates it), locked."""
    form, period = view.form, view.period
    parameters = {"form": form.name, "station": station_id, "period": period.label}
    connection.execute(_ENSURE_SHEET_SQL, {
        **parameters, "start": period.start, "step": period.step, "origin": period.origin, "rows": list(period.rows),
        "zone": "UTC" if form.clock is Clock.UTC else time_zone, "duration": int(form.duration.total_seconds()),
        "level": form.level, "elements": list(form.codes_of), "double": form.double_keying, "user": view.user})
    sheet = connection.execute(_LOCK_SHEET_SQL, parameters).one()
    if (list(sheet.elements) != list(form.codes_of) or sheet.double_keying != form.double_keying
            or sheet.duration_seconds != int(form.duration.total_seconds())):
        raise ConflictError(f"form {form.name} changed since sheet {sheet.id} was started (elements, duration or "
                            "double keying): the sheet keeps the form it was started with")
    return sheet


def _commit(connection: sa.Connection, sheet_id: int) -> int:
    """``keying_commit`` in the caller's transaction (a savepoint, so a refusal is reported
    cleanly); its refusals become the kernel's errors."""
    try:
        with connection.begin_nested():
            return int(connection.execute(sa.text("SELECT keying_commit(:sheet)"), {"sheet": sheet_id}).scalar_one())
    except sa.exc.DBAPIError as exc:
        state = getattr(exc.orig, "sqlstate", None)
        message = getattr(getattr(exc.orig, "diag", None), "message_primary", None) or str(exc.orig)
        if state == NOT_READY:
            raise SheetNotReadyError(message) from exc
        if state == CHECK_VIOLATION:
            raise KeyingCheckError((message,)) from exc
        if state == INSUFFICIENT_PRIVILEGE:
            raise KeyingAccessError(message) from exc
        raise


def _settle(connection: sa.Connection, sheet_id: int, double_keying: bool) -> tuple[SheetStatus, int, int]:
    """After a change: commit the sheet if it is ready, else record why not.
    Returns (status, observations written, unresolved differences)."""
    if double_keying:
        keyings = connection.execute(sa.text("SELECT count(*) FROM keying_entry WHERE sheet_id = :s"),
                                     {"s": sheet_id}).scalar_one()
        if keyings < 2:
            connection.execute(sa.text("UPDATE keying_sheet SET status = 'keying' WHERE id = :s AND status <> 'keying'"),
                               {"s": sheet_id})
            return SheetStatus.KEYING, 0, 0
        unresolved = connection.execute(sa.text(
            "SELECT count(*) FROM keying_cells(:s) WHERE state = 'unresolved'"), {"s": sheet_id}).scalar_one()
        if unresolved:
            return SheetStatus.DIFFERENCES, 0, int(unresolved)
    return SheetStatus.COMMITTED, _commit(connection, sheet_id), 0


def save_keying(datastore: Datastore, view: SheetView, cells: Mapping[CellKey, CellInput]) -> SaveResult:
    """Save ``view.user``'s keying of the sheet: every cell of it (an empty text removes a cell),
    checked, in one transaction, only if the keying's version is still the one opened.

    Errors and unexplained warnings raise :class:`KeyingCheckError` naming each cell; a keying
    saved by someone else since it was opened raises :class:`KeyingConflictError` saying who
    and when; nothing is written then.  A ready sheet is committed in the same transaction."""
    if view.keying is None:
        raise KeyingAccessError(f"{view.user} has nothing to key on this sheet: {view.note}")
    form, period = view.form, view.period
    label = f"{form.name}, station {view.station}, {period.label}"
    texts = {key: cell.text for key, cell in cells.items()}
    with datastore.engine.begin() as connection:
        identify_writer(connection, view.user, f"keying {view.keying} of {label}")
        station_row = _station(connection, view.station)
        rules = load_sheet_rules(connection, form, station_row.id, period)
        checked = check_sheet(form, rules, period, texts)
        problems = _problems(view, checked, cells)
        if problems:
            raise KeyingCheckError(problems)
        sheet = _lock_sheet(connection, view, station_row.id, station_row.timezone)
        entries = {row.keying: row for row in connection.execute(_LOCK_ENTRIES_SQL, {"sheet": sheet.id})}
        current = entries.get(view.keying)
        if (current.version if current is not None else 0) != view.version:
            assert current is not None  # a version the person saw cannot disappear
            raise KeyingConflictError(
                f"keying {view.keying} of {label} was saved by {current.saved_by} at "
                f"{current.saved_at.astimezone(timezone.utc):%Y-%m-%d %H:%M:%S} UTC after you opened it "
                f"(it is at version {current.version}, you opened version {view.version}); nothing of yours "
                "was saved: open the sheet again", current.saved_by, current.saved_at)
        other = entries.get(3 - view.keying)
        if form.double_keying and other is not None and other.keyed_by == view.user:
            raise KeyingAccessError(f"{view.user} keyed keying {other.keying} of {label}: the other keying must "
                                    "be another person's")
        previous = (current.cells if current is not None else {}) or {}
        stored_cells = {}
        for key, cell in checked.items():
            text_key = cell_key_text(key)
            before = previous.get(text_key) or {}
            reason = cells[key].reason
            same = (before.get("canonical") == cell.value.canonical  # type: ignore[union-attr]
                    and (before.get("override") or {}).get("reason") == ((reason or "").strip() or None
                                                                       if cell.warnings else None))
            stored_cells[text_key] = _cell_json(cell, reason, before.get("by", view.user) if same else view.user)
        parameters = {"sheet": sheet.id, "keying": view.keying, "cells": stored_cells}
        if current is None:
            connection.execute(sa.text(
                "INSERT INTO keying_entry (sheet_id, keying, keyed_by, keyed_by_role, cells, saved_by) "
                "VALUES (:sheet, :keying, '', '', CAST(:cells AS jsonb), '')").bindparams(
                sa.bindparam("cells", type_=JSON_VALUE)), parameters)
        else:
            connection.execute(sa.text(
                "UPDATE keying_entry SET cells = CAST(:cells AS jsonb) WHERE sheet_id = :sheet AND keying = :keying"
            ).bindparams(sa.bindparam("cells", type_=JSON_VALUE)), parameters)
        version = connection.execute(sa.text(
            "SELECT version FROM keying_entry WHERE sheet_id = :sheet AND keying = :keying"), parameters).scalar_one()
        status, written, unresolved = _settle(connection, sheet.id, form.double_keying)
        if status is SheetStatus.DIFFERENCES:
            connection.execute(sa.text("UPDATE keying_sheet SET status = 'differences' WHERE id = :s"), {"s": sheet.id})
    message = _save_message(view.keying, version, len(stored_cells), status, written, unresolved, form.double_keying)
    return SaveResult(sheet.id, view.keying, version, status, written, unresolved, message)


def _save_message(keying: int, version: int, cells: int, status: SheetStatus, written: int, unresolved: int,
                  double_keying: bool) -> str:
    saved = f"keying {keying} saved (version {version}, {cells} cell{'s' if cells != 1 else ''})" if double_keying \
        else f"saved (version {version}, {cells} cell{'s' if cells != 1 else ''})"
    if status is SheetStatus.KEYING:
        return f"{saved}; waiting for the second keying (another person keys the sheet blind)"
    if status is SheetStatus.DIFFERENCES:
        return (f"{saved}; {unresolved} cell{'s differ' if unresolved != 1 else ' differs'} from the other keying: "
                "check them against the form, or a supervisor resolves them")
    agreed = "both keyings agree; " if double_keying else ""
    return f"{saved}; {agreed}{written} observation{'s' if written != 1 else ''} written"


def commit_sheet(datastore: Datastore, view: SheetView) -> int:
    """Write a ready sheet as observations (normally done by the save or resolution that makes
    it ready); :class:`SheetNotReadyError` says what is missing.  Returns the values written."""
    if view.sheet_id is None:
        raise SheetNotReadyError(f"nothing of {view.form.name}, station {view.station}, {view.period.label} is saved")
    with datastore.engine.begin() as connection:
        identify_writer(connection, view.user, f"commit of sheet {view.sheet_id}")
        return _commit(connection, view.sheet_id)


# --------------------------------------------------------------------------- supervision


def _require_supervisor(view: SheetView) -> None:
    if view.role not in SUPERVISOR_ROLES:
        raise KeyingAccessError(f"{view.user}: only a supervisor (qc-reviewer or admin) sees and resolves the "
                                "differences between keyings")
    if not view.is_supervisor:
        raise KeyingAccessError(f"{view.user} keyed this sheet: another supervisor resolves its differences")
    if view.sheet_id is None:
        raise NotFoundError(f"nothing of {view.form.name}, station {view.station}, {view.period.label} is saved")


_CELLS_SQL = sa.text(
    "SELECT cell, first, second, state, final, resolved_by, reason FROM keying_cells(:sheet) "
    "WHERE state IN ('unresolved', 'resolved')")


def list_differences(datastore: Datastore, view: SheetView) -> tuple[Difference, ...]:
    """The cells where the two keyings differ, in the form's order, each with both texts and the
    resolution in force (if any): for a supervisor who did not key the sheet."""
    _require_supervisor(view)
    with datastore.engine.connect() as connection:
        rows = connection.execute(_CELLS_SQL, {"sheet": view.sheet_id}).all()
    order = view.form.codes_of
    differences = []
    for row in rows:
        key = parse_cell_key(row.cell)
        first, second, final = row.first or {}, row.second or {}, row.final or {}
        differences.append(Difference(
            key=key, label=view.label(key), first=first.get("text"), second=second.get("text"),
            first_canonical=first.get("canonical"), second_canonical=second.get("canonical"),
            resolved=row.state == "resolved", resolved_text=final.get("text") if row.state == "resolved" else None,
            resolved_by=row.resolved_by if row.state == "resolved" else None,
            reason=row.reason if row.state == "resolved" else None))
    return tuple(sorted(differences, key=lambda d: (d.key[0], order.index(d.key[1]))))


def resolve_difference(datastore: Datastore, view: SheetView, difference: Difference, text: str, *,
                       reason: str) -> ResolveResult:
    """A supervisor's decision on one differing cell: the value it holds (``text`` as typed on
    the form, e.g. one of the two keyings; empty: the cell stays empty), and why.  The cell's
    keyings must still be the ones listed (else :class:`KeyingConflictError`).  When it was the
    last difference, the sheet becomes observations in the same transaction."""
    _require_supervisor(view)
    if not reason or not reason.strip():
        raise ParameterError("reason", "say why this value is the right one")
    checked = view.check(difference.key, text) if text.strip() else None
    if checked is not None and checked.errors:
        raise KeyingCheckError(tuple(f"{difference.label}: {f.message}" for f in checked.errors))
    with datastore.engine.begin() as connection:
        identify_writer(connection, view.user, reason.strip())
        row = connection.execute(sa.text(
            "SELECT first, second, state FROM keying_cells(:sheet) WHERE cell = :cell"),
            {"sheet": view.sheet_id, "cell": cell_key_text(difference.key)}).first()
        first, second = (row.first, row.second) if row is not None else (None, None)
        now = ((first or {}).get("canonical"), (second or {}).get("canonical"))
        if row is None or row.state == "agreed" or now != (difference.first_canonical, difference.second_canonical):
            raise KeyingConflictError(
                f"{difference.label}: the keyings changed since the differences were listed "
                f"(now {now[0] or 'empty'} / {now[1] or 'empty'}): list them again")
        resolved = None
        if checked is not None and checked.value is not None:
            chosen = checked.value.canonical
            author = ((first or {}).get("by") if chosen == now[0] else (second or {}).get("by") if chosen == now[1]
                      else view.user)
            resolved = _cell_json(checked, reason, author or view.user)
        connection.execute(sa.text(
            "INSERT INTO keying_resolution (sheet_id, cell, first, second, resolved, reason, resolved_by, "
            "resolved_by_role) VALUES (:sheet, :cell, CAST(:first AS jsonb), CAST(:second AS jsonb), "
            "CAST(:resolved AS jsonb), :reason, '', '')").bindparams(
            sa.bindparam("first", type_=JSON_VALUE), sa.bindparam("second", type_=JSON_VALUE),
            sa.bindparam("resolved", type_=JSON_VALUE)),
            {"sheet": view.sheet_id, "cell": cell_key_text(difference.key), "first": first, "second": second,
             "resolved": resolved, "reason": reason.strip()})
        remaining = connection.execute(sa.text(
            "SELECT count(*) FROM keying_cells(:s) WHERE state = 'unresolved'"), {"s": view.sheet_id}).scalar_one()
        written = _commit(connection, view.sheet_id) if remaining == 0 else 0
    if remaining:
        return ResolveResult(SheetStatus.DIFFERENCES, int(remaining), 0,
                             f"{difference.label} resolved; {remaining} difference(s) left")
    return ResolveResult(SheetStatus.COMMITTED, 0, written,
                         f"{difference.label} resolved; every difference is resolved: "
                         f"{written} observation{'s' if written != 1 else ''} written")


# --------------------------------------------------------------------------- the audit


def _describe(row: sa.Row, view: SheetView) -> str:
    detail = row.detail or {}
    if row.action == "saved":
        changed = detail.get("changed") or {}
        return (f"saved keying {row.keying} (version {row.version}, {detail.get('cells', 0)} cells, "
                f"{len(changed)} changed)")
    if row.action == "resolved":
        return (f"resolved {view.label(parse_cell_key(row.cell))}: {detail.get('first') or 'empty'} / {detail.get('second') or 'empty'} -> "
                f"{detail.get('resolved') or 'empty'} ({detail.get('reason')})")
    return (f"committed: {detail.get('written', 0)} observation(s) written"
            + (f", {detail['kept_decided']} kept as a QC reviewer decided" if detail.get("kept_decided") else ""))


def sheet_audit(datastore: Datastore, view: SheetView) -> tuple[AuditEvent, ...]:
    """The sheet's story for a supervisor, oldest first: every save (who, which login, which
    cells changed), resolution (who, why) and commit, and every stored version of its
    observations (who wrote it, who superseded it and why)."""
    _require_supervisor(view)
    events: list[AuditEvent] = []
    with datastore.engine.connect() as connection:
        for row in connection.execute(sa.text(
                "SELECT action, keying, version, cell, detail, done_by, done_by_role, done_at FROM keying_log "
                "WHERE sheet_id = :sheet ORDER BY id"), {"sheet": view.sheet_id}):
            events.append(AuditEvent(row.done_at, row.done_by, row.done_by_role, row.action, _describe(row, view),
                                     dict(row.detail or {})))
        for row in connection.execute(sa.text(
                "SELECT * FROM keying_observations(:sheet) ORDER BY cell, version"), {"sheet": view.sheet_id}):
            key = parse_cell_key(row.cell)
            flag = (row.result_quality or {}).get("ingest", {}).get("flag")
            shown = display_text(view.form.element(key[1]), view.form.codes, row.value, flag)
            events.append(AuditEvent(row.changed_at, row.changed_by, None, "stored",
                                     f"{view.label(key)} = {shown} (version {row.version}): {row.comment or ''}"))
            if not row.is_current:
                events.append(AuditEvent(row.superseded_at, row.superseded_by, row.superseded_by_role, "superseded",
                                         f"{view.label(key)} version {row.version} superseded: {row.reason or ''}"))
    return tuple(sorted(events, key=lambda event: event.at))



def station_choices(datastore: Datastore) -> list[tuple[str, str]]:
    """(WIGOS id, name) of the stations a sheet may be keyed for, by name (closed ones too:
    old paper records are keyed long after a station closed)."""
    with datastore.engine.connect() as connection:
        return [(row.wigos_id, row.name) for row in connection.execute(sa.text(
            "SELECT wigos_id, name FROM station ORDER BY name, wigos_id"))]
