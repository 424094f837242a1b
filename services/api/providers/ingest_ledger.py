"""``ingest-ledger``: the kernel's ``ingest_ledger`` table as OGC API - Features, read-only.

For the event service, which holds no database credentials: its sweep asks which objects of
``incoming/`` are loaded (``filter=object_key IN ('incoming/a.csv', …)``, CQL2 text), and a
chain after an ingest reads what the load delivered (one item: ``loaded`` = the stations and the
first and last UTC day of the values whose current version that load wrote).  One feature per
ledger entry (an ingest attempt), no geometry.  Property filters, CQL2 (comparisons, IN, LIKE…),
sortby and paging; nothing is ever written through it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError

from opencdms_kernel.db.schema import ingest_ledger, observation, station
from services.api.errors import provider_errors
from services.api.providers.common import cql_condition, order_by, property_conditions
from services.api.providers.common import select_properties as only
from services.api.runtime import runtime

COLLECTION = "ingest-ledger"

FIELDS: dict[str, dict[str, Any]] = {
    "object_key": {"type": "string", "title": "Object key in the bucket"},
    "size_bytes": {"type": "integer", "title": "Size of the object", "minimum": 0, "maximum": 2**63 - 1},
    "checksum": {"type": "string", "title": "SHA-256 of the object"},
    "status": {"type": "string", "title": "loading, loaded, failed, skipped, interrupted or reverted"},
    "rows_read": {"type": "integer", "title": "Rows read"},
    "rows_inserted": {"type": "integer", "title": "Values new"},
    "rows_updated": {"type": "integer", "title": "Values changed"},
    "rows_unchanged": {"type": "integer", "title": "Values unchanged"},
    "rows_rejected": {"type": "integer", "title": "Rows rejected"},
    "reject_report": {"type": "string", "title": "Key of the reject report"},
    "error": {"type": "string", "title": "Why the load failed"},
    "started_at": {"type": "string", "format": "date-time", "title": "Started"},
    "finished_at": {"type": "string", "format": "date-time", "title": "Finished"},
    "loaded_at": {"type": "string", "format": "date-time", "title": "Committed"},
    "ingested_by": {"type": "string", "title": "Who ingested it"},
    "reverted_at": {"type": "string", "format": "date-time", "title": "Reverted"},
}
COLUMNS: dict[str, sa.ColumnElement[Any]] = {name: ingest_ledger.c[name] for name in FIELDS}
COLUMNS["id"] = ingest_ledger.c.id


def ledger_resource() -> dict[str, Any]:
    """The collection's entry in the generated pygeoapi configuration (``resources[COLLECTION]``)."""
    return {
        "type": "collection",
        "title": "Ingest ledger",
        "description": "One entry per ingest attempt of a bucket object: key, size, checksum, status, row counts. "
                       "An item also tells what its load delivered (stations, first and last day).",
        "keywords": ["ingest", "ledger", "incoming"],
        "extents": {"spatial": {"bbox": [-180.0, -90.0, 180.0, 90.0],
                                "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
        "providers": [{
            "type": "feature", "name": "services.api.providers.ingest_ledger.IngestLedgerProvider",
            "data": "ingest_ledger", "id_field": "id", "time_field": "started_at", "title_field": "object_key",
        }],
    }


def _stamp(value: Any) -> str | None:
    # Full precision: the sweep compares it with the object's modification time.
    return value.isoformat() if value is not None else None


def ledger_feature(row: Any, wanted: list[str] | None = None, loaded: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ledger row as a feature without geometry (id: the ledger id)."""
    properties = {name: row._mapping[name] for name in FIELDS}
    for name in ("started_at", "finished_at", "loaded_at", "reverted_at"):
        properties[name] = _stamp(properties[name])
    properties = only(properties, wanted)
    if loaded is not None:
        properties["loaded"] = loaded
    return {"type": "Feature", "id": row.id, "geometry": None, "properties": properties}


def loaded_scope(connection: sa.Connection, ledger_id: int, started_at: Any) -> dict[str, Any]:
    """What one load delivered: the stations and the first and last UTC day of the values it wrote.

    The values whose current version the load wrote carry its ``ingest_id``; ``changed_at`` is at
    or after the entry's start, which lets PostgreSQL use the BRIN index on ``changed_at``
    instead of reading the whole table.
    """
    day = sa.func.timezone("UTC", observation.c.phenomenon_time)
    rows = connection.execute(
        sa.select(station.c.wigos_id, sa.func.min(day), sa.func.max(day))
        .select_from(observation.join(station, station.c.id == observation.c.station_id))
        .where(observation.c.ingest_id == ledger_id, observation.c.changed_at >= started_at)
        .group_by(station.c.wigos_id).order_by(station.c.wigos_id)
    ).all()
    if not rows:
        return {"stations": [], "start": None, "end": None}
    return {"stations": [row[0] for row in rows],
            "start": min(row[1] for row in rows).date().isoformat(),
            "end": max(row[2] for row in rows).date().isoformat()}


class IngestLedgerProvider(BaseProvider):
    """The ingest ledger as features; the datastore comes from the process's runtime."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_def)
        self._fields = dict(FIELDS)

    def get_fields(self) -> dict[str, dict[str, Any]]:
        return dict(FIELDS)

    def query(self, offset: int = 0, limit: int = 10, resulttype: str = "results", bbox: list[float] | None = None,
              datetime_: str | None = None, properties: list[tuple[str, Any]] | None = None,
              sortby: list[dict[str, str]] | None = None, select_properties: list[str] | None = None,
              skip_geometry: bool = False, q: str | None = None, filterq: Any = None, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            conditions = property_conditions(properties or [], COLUMNS, FIELDS)
            if filterq is not None:
                conditions.append(cql_condition(filterq, COLUMNS, FIELDS))
            where = sa.and_(sa.true(), *conditions)
            with runtime().datastore.engine.connect() as connection:
                matched = connection.execute(
                    sa.select(sa.func.count()).select_from(ingest_ledger).where(where)).scalar_one()
                if resulttype == "hits":
                    return {"type": "FeatureCollection", "features": [], "numberMatched": matched,
                            "numberReturned": 0}
                rows = connection.execute(
                    sa.select(ingest_ledger).where(where)
                    .order_by(*order_by(sortby or [], COLUMNS), ingest_ledger.c.id)
                    .offset(offset).limit(limit)
                ).all()
            features = [ledger_feature(row, select_properties) for row in rows]
            return {"type": "FeatureCollection", "features": features, "numberMatched": matched,
                    "numberReturned": len(features)}

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        text = str(identifier)
        if not text.isdigit() or len(text) > 18:
            raise ProviderItemNotFoundError(user_msg=f"no ledger entry {text[:40]!r}")
        with provider_errors():
            with runtime().datastore.engine.connect() as connection:
                row = connection.execute(
                    sa.select(ingest_ledger).where(ingest_ledger.c.id == int(text))).one_or_none()
                if row is None:
                    raise ProviderItemNotFoundError(user_msg=f"no ledger entry {text!r}")
                return ledger_feature(row, loaded=loaded_scope(connection, row.id, row.started_at))
