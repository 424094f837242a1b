"""Stations as an administrator keeps them: the form's text in, checked stations out.

The writes are :mod:`opencdms_kernel.stations`' own (one transaction each, the row before every
change in ``station_history`` with who and why); this module adds what a form needs: its text
read into values, the WIGOS identifier checked by the vocabulary's rules first (so that the
reason a person reads is WMO-No. 1160's, not a regular expression), every refusal a
:class:`~opencdms_kernel.errors.ParameterError` naming the form's field, and the administrator
check before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Mapping

import sqlalchemy as sa

from opencdms_kernel import stations
from opencdms_kernel.admin.access import Administrator, require_admin
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import station, station_history
from opencdms_kernel.errors import IngestFileError, ParameterError
from opencdms_kernel.stations import COLUMNS, StationFormat
from opencdms_kernel.vocabulary import Station, wigos_id_problem

# The form's fields, in the station table's order (the vocabulary's Station model).
STATION_FIELDS: tuple[str, ...] = COLUMNS
MAX_UPLOAD_BYTES = 5_000_000  # a station list of a few thousand rows is a few hundred kB


@dataclass(frozen=True)
class StationRow:
    """A station as the administration lists it: its values and when it last changed."""

    station: Station
    changed_at: datetime


@dataclass(frozen=True)
class StationChange:
    """One entry of a station's history: the row before a change, who made it, when and why."""

    superseded_at: datetime
    superseded_by: str
    database_role: str
    reason: str | None
    before: Mapping[str, object]


def _form_values(form: Mapping[str, object]) -> dict[str, object]:
    """The form's fields that name station attributes, text stripped; unknown names refused."""
    unknown = sorted(set(form) - set(STATION_FIELDS))
    if unknown:
        raise ParameterError(unknown[0], f"not a station attribute (attributes: {', '.join(STATION_FIELDS)})")
    return {name: value.strip() if isinstance(value, str) else value for name, value in form.items()}


def check_wigos_id(text: object) -> str:
    """``text`` as a WIGOS station identifier, or a ParameterError naming ``wigos_id`` with the
    rule it breaks (the vocabulary's :func:`~opencdms_kernel.vocabulary.wigos_id_problem`)."""
    if not isinstance(text, str) or not text.strip():
        raise ParameterError("wigos_id", "a station needs its WIGOS identifier (e.g. 0-20000-0-63740)")
    problem = wigos_id_problem(text.strip())
    if problem is not None:
        raise ParameterError("wigos_id", problem)
    return text.strip()


def add_station(datastore: Datastore, admin: Administrator, form: Mapping[str, object], *,
                reason: str | None = None) -> Station:
    """Add the station the form describes; ParameterError naming the field at fault,
    StationExistsError (409) when its WIGOS identifier is taken."""
    require_admin(admin)
    values = _form_values(form)
    values["wigos_id"] = check_wigos_id(values.get("wigos_id"))
    return stations.create_station(datastore, values, user=admin.user, reason=_reason(reason))


def edit_station(datastore: Datastore, admin: Administrator, wigos_id: str, form: Mapping[str, object], *,
                 reason: str | None = None) -> Station:
    """Change the attributes the form names of station ``wigos_id`` (its WIGOS identifier stays)."""
    require_admin(admin)
    values = _form_values(form)
    if "wigos_id" in values and values["wigos_id"] != wigos_id:
        raise ParameterError("wigos_id", "a station's WIGOS identifier cannot be changed: add a new station")
    values.pop("wigos_id", None)
    return stations.update_station(datastore, wigos_id, values, user=admin.user, reason=_reason(reason))


def close_station(datastore: Datastore, admin: Administrator, wigos_id: str, closed: date | str, *,
                  reason: str | None = None) -> Station:
    """Close station ``wigos_id`` on ``closed`` (a date, or its ISO text); nothing is deleted."""
    require_admin(admin)
    return stations.close_station(datastore, wigos_id, _day(closed, "closed"), user=admin.user,
                                  reason=_reason(reason))


def import_station_file(datastore: Datastore, admin: Administrator, file_name: str, content: bytes, *,
                        reason: str | None = None) -> int:
    """Insert or update the stations of an uploaded CSV (ours or wis2box's station_list.csv),
    all or none; IngestFileError naming the file, line and column of the first bad value."""
    require_admin(admin)
    if len(content) > MAX_UPLOAD_BYTES:
        raise IngestFileError(file_name, f"{len(content)} bytes: a station list is at most {MAX_UPLOAD_BYTES} bytes")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise IngestFileError(file_name, f"not UTF-8 text (byte {exc.start})") from exc
    return stations.import_station_text(datastore, file_name, text, user=admin.user,
                                        reason=_reason(reason) or f"stations imported from {file_name}")


def export_station_file(datastore: Datastore, layout: StationFormat | str = StationFormat.OPENCDMS) -> tuple[str, bytes]:
    """(file name, CSV bytes) of every station, in ``layout`` (what :func:`import_station_file` reads)."""
    try:
        chosen = StationFormat(layout)
    except ValueError:
        raise ParameterError("layout", f"{str(layout)[:40]!r} is not one of "
                             + ", ".join(item.value for item in StationFormat)) from None
    name = "station_list.csv" if chosen is StationFormat.WIS2BOX else "stations.csv"
    return name, stations.export_stations(datastore, chosen).encode("utf-8")


def list_stations(datastore: Datastore) -> list[StationRow]:
    """Every station, open or closed, by WIGOS identifier."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(
            sa.select(*(station.c[name] for name in COLUMNS), station.c.changed_at).order_by(station.c.wigos_id)
        ).all()
    return [StationRow(Station.model_construct(**{name: row._mapping[name] for name in COLUMNS}), row.changed_at)
            for row in rows]


def station_changes(datastore: Datastore, wigos_id: str, limit: int = 50) -> list[StationChange]:
    """The latest changes of station ``wigos_id``, newest first (the rows they superseded)."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(
            sa.select(station_history).where(station_history.c.wigos_id == wigos_id)
            .order_by(station_history.c.id.desc()).limit(limit)
        ).all()
    return [StationChange(row.superseded_at, row.superseded_by, row.superseded_by_role, row.reason,
                          {name: row.old_row.get(name) for name in COLUMNS}) for row in rows]


def _reason(reason: str | None) -> str | None:
    return reason.strip() if reason and reason.strip() else None


def _day(value: date | str, field: str) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        raise ParameterError(field, f"{str(value)[:40]!r} is not a date like 2024-12-31") from None
