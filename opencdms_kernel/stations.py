"""Station metadata in and out as CSV (one row per WIGOS station)."""

from __future__ import annotations

import csv
import io
import re
from datetime import date
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import station
from opencdms_kernel.errors import IngestFileError

COLUMNS = (
    "wigos_id", "name", "latitude", "longitude", "elevation", "territory", "wmo_region",
    "timezone", "status", "opened", "closed",
)
REQUIRED = ("wigos_id", "name", "latitude", "longitude")
# A WIGOS identifier: series-issuer-issue number-local identifier (the station table's check).
WIGOS_ID = re.compile(r"^([0-9]{1,5})-([0-9]{1,5})-([0-9]{1,5})-([0-9A-Za-z]{1,16})$")


def _number(file: str, line: int, field: str, text: str, low: float, high: float) -> float | None:
    if not text.strip():
        if field in REQUIRED:
            raise IngestFileError(file, f"column '{field}' is empty", line=line)
        return None
    try:
        value = float(text)
    except ValueError as exc:
        raise IngestFileError(file, f"column '{field}': {text!r} is not a number", line=line) from exc
    if not low <= value <= high:
        raise IngestFileError(file, f"column '{field}': {value} is outside {low}..{high}", line=line)
    return value


def _date(file: str, line: int, field: str, text: str) -> date | None:
    if not text.strip():
        return None
    try:
        return date.fromisoformat(text.strip())
    except ValueError as exc:
        raise IngestFileError(file, f"column '{field}': {text!r} is not a date (YYYY-MM-DD)", line=line) from exc


def parse_stations(file: str, text: str) -> list[dict[str, object]]:
    """Rows of a stations CSV, checked; the first bad value raises an error naming line and column."""
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    missing = [name for name in REQUIRED if name not in header]
    if missing:
        raise IngestFileError(file, f"missing required column(s) {', '.join(missing)}", line=1)
    rows = []
    for line, record in enumerate(reader, start=2):
        wigos_id = (record.get("wigos_id") or "").strip()
        if not WIGOS_ID.match(wigos_id):
            raise IngestFileError(file, f"column 'wigos_id': {wigos_id!r} is not a WIGOS identifier", line=line)
        if not (record.get("name") or "").strip():
            raise IngestFileError(file, "column 'name' is empty", line=line)
        row: dict[str, object] = {
            "wigos_id": wigos_id,
            "name": record["name"].strip(),
            "latitude": _number(file, line, "latitude", record["latitude"] or "", -90, 90),
            "longitude": _number(file, line, "longitude", record["longitude"] or "", -180, 180),
            "elevation": _number(file, line, "elevation", record.get("elevation") or "", -500, 9000),
            "opened": _date(file, line, "opened", record.get("opened") or ""),
            "closed": _date(file, line, "closed", record.get("closed") or ""),
        }
        for name, default in (("territory", None), ("wmo_region", None), ("timezone", "UTC"), ("status", "operational")):
            row[name] = (record.get(name) or "").strip() or default
        rows.append(row)
    return rows


def import_stations(datastore: Datastore, path: Path) -> int:
    """Insert or update the stations of a CSV file (by WIGOS id), all or none; returns the count."""
    rows = parse_stations(str(path), path.read_text(encoding="utf-8-sig"))
    if not rows:
        return 0
    statement = insert(station)
    upsert = statement.on_conflict_do_update(
        index_elements=[station.c.wigos_id],
        set_={
            **{name: statement.excluded[name] for name in COLUMNS if name != "wigos_id"},
            "changed_at": sa.func.now(),
        },
    )
    with datastore.engine.begin() as connection:
        connection.execute(upsert, rows)
    return len(rows)


def export_stations(datastore: Datastore) -> str:
    """All stations as CSV text, in the format :func:`import_stations` reads."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    with datastore.engine.connect() as connection:
        for row in connection.execute(sa.select(*(station.c[name] for name in COLUMNS)).order_by(station.c.wigos_id)):
            writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()
