"""``stations``: OGC API - Features over the ``station`` table (the system of record).

bbox, datetime (when the station was in operation: opened before the interval's end and not
closed before its start), property filters, ``q`` (name), CQL2 (see
:func:`~services.api.providers.common.cql_condition`), sortby, paging; ``numberMatched`` lets
pygeoapi add the ``next`` link.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError

from opencdms_kernel.db.schema import station
from services.api.errors import provider_errors
from services.api.providers.common import (
    bbox_condition,
    cql_condition,
    iso,
    order_by,
    parse_datetime,
    point_feature,
    property_conditions,
    provider_definition,
    select_properties as only,
)
from services.api.runtime import runtime

FIELDS: dict[str, dict[str, Any]] = {
    "wigos_id": {"type": "string", "title": "WIGOS station identifier"},
    "name": {"type": "string", "title": "Station name"},
    "elevation": {"type": "number", "title": "Elevation", "x-ogc-unit": "m"},
    "territory": {"type": "string", "title": "Territory"},
    "wmo_region": {"type": "string", "title": "WMO region"},
    "timezone": {"type": "string", "title": "IANA time zone"},
    "status": {"type": "string", "title": "Operating status"},
    "opened": {"type": "string", "format": "date", "title": "Opened"},
    "closed": {"type": "string", "format": "date", "title": "Closed"},
}
COLUMNS: dict[str, sa.ColumnElement[Any]] = {name: station.c[name] for name in FIELDS}


def station_feature(row: Any, *, skip_geometry: bool = False, wanted: list[str] | None = None) -> dict[str, Any]:
    """One station row as a GeoJSON feature (id: the WIGOS id)."""
    properties = {
        "wigos_id": row.wigos_id, "name": row.name, "elevation": row.elevation, "territory": row.territory,
        "wmo_region": row.wmo_region, "timezone": row.timezone, "status": row.status,
        "opened": iso(row.opened), "closed": iso(row.closed),
    }
    return point_feature(row.wigos_id, row.longitude, row.latitude, only(properties, wanted),
                         skip_geometry=skip_geometry)


class StationsProvider(BaseProvider):
    """Stations as features; the datastore comes from the process's runtime."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_definition(provider_def))
        self._fields = dict(FIELDS)

    def get_fields(self) -> dict[str, dict[str, Any]]:
        return dict(FIELDS)

    def query(self, offset: int = 0, limit: int = 10, resulttype: str = "results", bbox: list[float] | None = None,
              datetime_: str | None = None, properties: list[tuple[str, Any]] | None = None,
              sortby: list[dict[str, str]] | None = None, select_properties: list[str] | None = None,
              skip_geometry: bool = False, q: str | None = None, filterq: Any = None, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            conditions = [bbox_condition(bbox, station.c.longitude, station.c.latitude)]
            interval = parse_datetime(datetime_)
            if interval is not None:
                if interval.end is not None:
                    conditions.append(sa.or_(station.c.opened.is_(None), station.c.opened < interval.end))
                if interval.start is not None:
                    conditions.append(sa.or_(station.c.closed.is_(None), station.c.closed >= interval.start.date()))
            conditions += property_conditions(properties or [], COLUMNS, FIELDS)
            if q:
                conditions.append(station.c.name.ilike("%" + q.replace("\\", "\\\\").replace("%", "\\%")
                                                       .replace("_", "\\_") + "%", escape="\\"))
            if filterq is not None:
                conditions.append(cql_condition(filterq, COLUMNS, FIELDS))
            where = sa.and_(*conditions)
            with runtime().datastore.engine.connect() as connection:
                matched = connection.execute(sa.select(sa.func.count()).select_from(station).where(where)).scalar_one()
                if resulttype == "hits":
                    return {"type": "FeatureCollection", "features": [], "numberMatched": matched,
                            "numberReturned": 0}
                query = (sa.select(station).where(where)
                         .order_by(*order_by(sortby or [], COLUMNS), station.c.wigos_id)
                         .offset(offset).limit(limit))
                rows = connection.execute(query).all()
            features = [station_feature(row, skip_geometry=skip_geometry, wanted=select_properties) for row in rows]
            return {"type": "FeatureCollection", "features": features, "numberMatched": matched,
                    "numberReturned": len(features)}

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            with runtime().datastore.engine.connect() as connection:
                row = connection.execute(sa.select(station).where(station.c.wigos_id == str(identifier))).one_or_none()
        if row is None:
            raise ProviderItemNotFoundError(user_msg=f"no station {str(identifier)[:40]!r}")
        return station_feature(row)
