"""Station metadata in and out as CSV: our own columns, or wis2box's ``station_list.csv``.

Each row becomes a :class:`~opencdms_kernel.vocabulary.Station` (WIGOS id, coordinates, a
known IANA time zone…); the first bad value stops the import with its line and column, and
nothing is written.
"""

from __future__ import annotations

import csv
import io
from datetime import date
from enum import Enum
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import station
from opencdms_kernel.errors import ConflictError, IngestFileError, NotFoundError, ParameterError
from opencdms_kernel.vocabulary import Station, parse_wigos_id

COLUMNS = tuple(Station.model_fields)
REQUIRED = ("wigos_id", "name", "latitude", "longitude")


class StationFormat(str, Enum):
    """Column layouts of a station list."""

    OPENCDMS = "opencdms"  # COLUMNS
    WIS2BOX = "wis2box"  # wis2box's metadata/station/station_list.csv


WIS2BOX_COLUMNS = (
    "station_name", "wigos_station_identifier", "traditional_station_identifier", "facility_type",
    "latitude", "longitude", "elevation", "barometer_height", "territory_name", "wmo_region",
)
# wis2box -> our column; the other wis2box columns have no place in the station table.
_FROM_WIS2BOX = {
    "station_name": "name", "wigos_station_identifier": "wigos_id", "latitude": "latitude",
    "longitude": "longitude", "elevation": "elevation", "territory_name": "territory",
    "wmo_region": "wmo_region",
}
# WMO regional associations as wis2box names them, by Roman numeral.
WIS2BOX_REGIONS = {
    "I": "africa", "II": "asia", "III": "south_america", "IV": "north_central_america_caribbean",
    "V": "south_west_pacific", "VI": "europe",
}


def _detect(header: list[str]) -> StationFormat:
    return StationFormat.WIS2BOX if "wigos_station_identifier" in header else StationFormat.OPENCDMS


def parse_stations(file: str, text: str) -> list[Station]:
    """The stations of a CSV in either format (told by its header), checked row by row."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip() for name in reader.fieldnames or []]
    layout = _detect(header)
    required = [w for w, ours in _FROM_WIS2BOX.items() if ours in REQUIRED] if layout is StationFormat.WIS2BOX \
        else list(REQUIRED)
    missing = [name for name in required if name not in header]
    if missing:
        raise IngestFileError(file, f"missing required column(s) {', '.join(missing)}", line=1)
    stations = []
    for line, record in enumerate(reader, start=2):
        if layout is StationFormat.WIS2BOX:
            fields = {ours: record.get(theirs) or "" for theirs, ours in _FROM_WIS2BOX.items()}
        else:
            fields = {name: record.get(name) or "" for name in COLUMNS if name in header}
        try:
            stations.append(Station(**fields))
        except ValidationError as exc:
            error = exc.errors()[0]
            field = str(error["loc"][0]) if error["loc"] else "-"
            if layout is StationFormat.WIS2BOX:
                field = next((w for w, ours in _FROM_WIS2BOX.items() if ours == field), field)
            value = record.get(field, "")
            raise IngestFileError(file, f"column {field!r}: {value!r}: {error['msg']}", line=line) from exc
    return stations


def import_stations(datastore: Datastore, path: Path, *, user: str | None = None, reason: str | None = None) -> int:
    """Insert or update the stations of a CSV file (by WIGOS id), all or none; returns the count."""
    return import_station_text(datastore, str(path), path.read_text(encoding="utf-8-sig"), user=user, reason=reason)


def import_station_text(datastore: Datastore, file: str, text: str, *, user: str | None = None,
                        reason: str | None = None) -> int:
    """:func:`import_stations` for a CSV already read (an upload); ``file`` names it in errors.
    ``user`` (and ``reason``) name the writer in the stations' history; without them the
    history names the database login."""
    stations = parse_stations(file, text)
    if not stations:
        return 0
    statement = insert(station)
    changeable = [name for name in COLUMNS if name != "wigos_id"]
    upsert = statement.on_conflict_do_update(
        index_elements=[station.c.wigos_id],
        set_={**{name: statement.excluded[name] for name in changeable}, "changed_at": sa.func.now()},
        # A station imported again unchanged keeps its row (and writes no history entry).
        where=sa.or_(*(station.c[name].is_distinct_from(statement.excluded[name]) for name in changeable)),
    )
    with datastore.engine.begin() as connection:
        if user is not None:
            _identify_writer(connection, user, reason or f"stations imported from {file}")
        connection.execute(upsert, [item.model_dump() for item in stations])
    return len(stations)


def export_stations(datastore: Datastore, layout: StationFormat = StationFormat.OPENCDMS) -> str:
    """All stations as CSV text, in a format :func:`import_stations` reads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with datastore.engine.connect() as connection:
        rows = connection.execute(
            sa.select(*(station.c[name] for name in COLUMNS)).order_by(station.c.wigos_id)).all()
    if layout is StationFormat.WIS2BOX:
        writer.writerow(WIS2BOX_COLUMNS)
        for row in rows:
            writer.writerow(_wis2box_row(row))
    else:
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def _wis2box_row(row: sa.Row) -> list[object]:
    """One station as a wis2box station_list.csv line (facility type: a fixed land station)."""
    traditional = parse_wigos_id(row.wigos_id).local_id
    region = WIS2BOX_REGIONS.get((row.wmo_region or "").strip().upper(), row.wmo_region or "")
    return [row.name, row.wigos_id, traditional, "landFixed", row.latitude, row.longitude,
            "" if row.elevation is None else row.elevation, "", row.territory or "", region]


# --------------------------------------------------------------------------- one station at a time
# The writes of OGC API - Features Part 4 (services/api): create, replace, update, close.  Each is
# one transaction that names its writer for the audit (identify_writer: ``opencdms.user`` and
# ``opencdms.reason``, as every other writer does) and stamps ``changed_at``; nothing is deleted.
# The row before each change goes to ``station_history`` (migration 0008) with that writer and
# reason; the administration app (opencdms_kernel/admin/stations.py) writes through these too.

STATION_STATUS_CLOSED = "closed"


def get_station(datastore: Datastore, wigos_id: str) -> Station:
    """The station ``wigos_id`` (NotFoundError when there is none)."""
    with datastore.engine.connect() as connection:
        row = connection.execute(sa.select(*(station.c[name] for name in COLUMNS))
                                 .where(station.c.wigos_id == wigos_id)).one_or_none()
    if row is None:
        raise StationNotFoundError(f"no station {wigos_id[:60]!r}")
    return Station.model_construct(**row._mapping)  # as stored (checked when it was written)


def _checked(fields: dict[str, object], what: str) -> Station:
    """``fields`` as a Station, or a ParameterError naming the first field at fault."""
    try:
        return Station(**fields)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or what
        raise ParameterError(field, str(error["msg"])) from exc


def create_station(datastore: Datastore, fields: dict[str, object], *, user: str, reason: str | None = None) -> Station:
    """Add a new station (ConflictError when its WIGOS id exists already)."""
    new = _checked(fields, "station")
    with datastore.engine.begin() as connection:
        _identify_writer(connection, user, reason or f"station {new.wigos_id} created")
        inserted = connection.execute(
            insert(station).values(**new.model_dump()).on_conflict_do_nothing(index_elements=[station.c.wigos_id])
            .returning(station.c.id)
        ).first()
    if inserted is None:
        raise StationExistsError(f"station {new.wigos_id} exists already")
    return new


def replace_station(datastore: Datastore, wigos_id: str, fields: dict[str, object], *, user: str,
                    reason: str | None = None) -> Station:
    """Replace every attribute of station ``wigos_id`` (what ``fields`` leaves out takes its default)."""
    if fields.get("wigos_id", wigos_id) != wigos_id:
        raise ParameterError("wigos_id", f"{str(fields['wigos_id'])[:60]!r} is not the station replaced ({wigos_id})")
    new = _checked({**fields, "wigos_id": wigos_id}, "station")
    return _write(datastore, wigos_id, lambda _: new, user=user, reason=reason or f"station {wigos_id} replaced")


def update_station(datastore: Datastore, wigos_id: str, changes: dict[str, object], *, user: str,
                   reason: str | None = None) -> Station:
    """Change the attributes named in ``changes`` of station ``wigos_id``; the rest stay."""
    unknown = sorted(set(changes) - set(COLUMNS))
    if unknown:
        raise ParameterError(unknown[0], f"not a station attribute (attributes: {', '.join(COLUMNS)})")
    if changes.get("wigos_id", wigos_id) != wigos_id:
        raise ParameterError("wigos_id", "a station's WIGOS identifier cannot be changed")

    def merged(current: Station) -> Station:
        return _checked({**current.model_dump(), **changes}, "station")

    return _write(datastore, wigos_id, merged, user=user, reason=reason or f"station {wigos_id} updated")


def close_station(datastore: Datastore, wigos_id: str, closed: date, *, user: str, reason: str | None = None) -> Station:
    """Close station ``wigos_id`` on ``closed`` (status ``closed``); a closed station keeps its
    closing date.  The station and its observations stay: nothing is deleted."""

    def closing(current: Station) -> Station:
        if current.closed is not None and current.status == STATION_STATUS_CLOSED:
            return current
        return _checked({**current.model_dump(), "closed": current.closed or closed,
                         "status": STATION_STATUS_CLOSED}, "closed")

    return _write(datastore, wigos_id, closing, user=user, reason=reason or f"station {wigos_id} closed")


def _write(datastore: Datastore, wigos_id: str, change: Callable[[Station], Station], *, user: str,
           reason: str) -> Station:
    """Read station ``wigos_id`` locked, apply ``change``, write it if it differs (one transaction)."""
    with datastore.engine.begin() as connection:
        row = connection.execute(sa.select(*(station.c[name] for name in COLUMNS))
                                 .where(station.c.wigos_id == wigos_id).with_for_update()).one_or_none()
        if row is None:
            raise StationNotFoundError(f"no station {wigos_id[:60]!r}")
        current = Station.model_construct(**row._mapping)  # as stored; what is written is checked
        new = change(current)
        if new != current:
            _identify_writer(connection, user, reason)
            connection.execute(sa.update(station).where(station.c.wigos_id == wigos_id)
                               .values(**new.model_dump(exclude={"wigos_id"}), changed_at=sa.func.now()))
    return new


def _identify_writer(connection: sa.Connection, user: str, reason: str) -> None:
    """The audit's writer and reason for this transaction: the ingest's own function, imported
    when a station is written (it brings pyarrow, which reading stations does not need)."""
    from opencdms_kernel.ingest.load import identify_writer

    identify_writer(connection, user, reason)


class StationNotFoundError(NotFoundError):
    """No station has the WIGOS identifier given."""


class StationExistsError(ConflictError):
    """A station with that WIGOS identifier exists already."""
