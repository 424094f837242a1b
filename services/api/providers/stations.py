"""``stations``: OGC API - Features over the ``station`` table (the system of record).

bbox, datetime (when the station was in operation: opened before the interval's end and not
closed before its start), property filters, ``q`` (name), CQL2 (see
:func:`~services.api.providers.common.cql_condition`), sortby, paging; ``numberMatched`` lets
pygeoapi add the ``next`` link.

Features Part 4 (the collection is ``editable``; the auth layer lets only callers with the
scope ``custom:opencdms:transactions`` through, administrators in the hub's roles), through the
kernel's station functions (one transaction each, the writer named for the audit):

- ``POST …/items`` (a GeoJSON Feature): create (409 if the WIGOS id exists);
- ``PUT …/items/{wigos_id}``: replace every attribute (what the feature leaves out takes its
  default);
- ``PATCH …/items/{wigos_id}``: update the attributes the feature names (geometry optional);
- ``DELETE …/items/{wigos_id}``: close the station (``closed`` = today in its time zone,
  ``status`` = closed): stations and their observations are never deleted.

A feature is ``{"type": "Feature", "geometry": {"type": "Point", "coordinates": [lon, lat
(, elevation)]}, "properties": {...}}`` with the properties of :data:`FIELDS`; ``id`` (or
``properties.wigos_id``) is the WIGOS id.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError

from opencdms_kernel import stations as kernel_stations
from opencdms_kernel.db.schema import station
from services.api.context import current_caller, current_method
from services.api.errors import ApiParameterError, provider_errors
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

    # ---- Features Part 4

    def create(self, item: Any) -> str:
        with provider_errors():
            fields = station_fields(item, identifier=None, partial=False)
            created = kernel_stations.create_station(runtime().datastore, fields, user=_writer())
            return created.wigos_id

    def update(self, identifier: str, item: Any) -> bool:
        with provider_errors():
            partial = current_method() == "PATCH"
            fields = station_fields(item, identifier=str(identifier), partial=partial)
            if partial:
                kernel_stations.update_station(runtime().datastore, str(identifier), fields, user=_writer())
            else:
                kernel_stations.replace_station(runtime().datastore, str(identifier), fields, user=_writer())
            return True

    def delete(self, identifier: str) -> bool:
        with provider_errors():
            datastore = runtime().datastore
            current = kernel_stations.get_station(datastore, str(identifier))
            try:
                zone = ZoneInfo(current.timezone)
            except (ValueError, ZoneInfoNotFoundError):  # a stored zone this machine does not know
                zone = ZoneInfo("UTC")
            today = datetime.now(zone).date()
            kernel_stations.close_station(datastore, str(identifier), today, user=_writer())
            return True

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            with runtime().datastore.engine.connect() as connection:
                row = connection.execute(sa.select(station).where(station.c.wigos_id == str(identifier))).one_or_none()
        if row is None:
            raise ProviderItemNotFoundError(user_msg=f"no station {str(identifier)[:40]!r}")
        return station_feature(row)


def _writer() -> str:
    """The audit's writer of a change through the API: the hub user (or service) who asked."""
    return current_caller().name


def station_fields(item: Any, *, identifier: str | None, partial: bool) -> dict[str, object]:
    """The station attributes of a GeoJSON Feature (``item``: the request body).

    ``identifier``: the WIGOS id of the item changed (its feature may repeat it, not contradict
    it); ``partial``: only the attributes present (a PATCH), geometry optional.  The values are
    checked by the kernel (the vocabulary's Station); here only the shape of the document.
    """
    if isinstance(item, (bytes, bytearray, str)):
        try:
            item = json.loads(item)
        except (ValueError, RecursionError) as exc:  # not JSON, not UTF-8, or nested too deep
            raise ApiParameterError("body", f"not a JSON document ({str(exc)[:80]})") from exc
    if not isinstance(item, dict) or item.get("type") != "Feature":
        raise ApiParameterError("body", 'a GeoJSON Feature ({"type": "Feature", "geometry": …, "properties": …})')
    properties = item.get("properties") or {}
    if not isinstance(properties, dict):
        raise ApiParameterError("properties", "must be an object")
    unknown = sorted(name for name in properties if name not in FIELDS)
    if unknown:
        raise ApiParameterError(str(unknown[0])[:60], f"not a station property (properties: {', '.join(FIELDS)})")
    fields: dict[str, object] = dict(properties)
    named = [value for value in (item.get("id"), properties.get("wigos_id")) if value is not None]
    if identifier is not None:
        named.append(identifier)
    if any(not isinstance(value, str) for value in named) or len(set(named)) > 1:
        raise ApiParameterError("id", "the feature's id, its wigos_id and the item's address must name one station")
    if named:
        fields["wigos_id"] = named[0]
    geometry = item.get("geometry")
    if geometry is None:
        if not partial:
            raise ApiParameterError("geometry", "a station needs a Point geometry (longitude, latitude)")
        if identifier is not None:
            fields.pop("wigos_id", None)
        return fields
    coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
    if (not isinstance(geometry, dict) or geometry.get("type") != "Point" or not isinstance(coordinates, list)
            or len(coordinates) not in (2, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coordinates)):
        raise ApiParameterError("geometry", "a Point with [longitude, latitude] or [longitude, latitude, elevation]")
    fields["longitude"], fields["latitude"] = float(coordinates[0]), float(coordinates[1])
    if len(coordinates) == 3:
        if "elevation" in properties and properties["elevation"] != coordinates[2]:
            raise ApiParameterError("elevation", "the geometry's third coordinate and the elevation property differ")
        fields["elevation"] = float(coordinates[2])
    if partial and identifier is not None:
        fields.pop("wigos_id", None)
    return fields
