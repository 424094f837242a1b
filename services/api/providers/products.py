"""``monthly-summaries`` and ``normals``: the stored products (``products/<kind>/…``) as features.

Every current product of the kind (:func:`~opencdms_kernel.products.store.list_products`) is
read through the product store, one feature per row, placed at its station.  Products change
when a notebook or the CLI writes one, so the rows are kept per process for a short while
(:data:`CACHE_SECONDS`) instead of being read from the bucket for every page.  Property
filters, bbox, datetime (the row's period start), sortby and paging; CQL2 is not offered here.
"""

from __future__ import annotations

import math
import threading
import time
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError

from opencdms_kernel.db.schema import station
from opencdms_kernel.products.store import list_products, read_product
from services.api.errors import ApiParameterError, provider_errors
from services.api.providers.common import iso, parse_datetime, point_feature, provider_definition, typed_value
from services.api.providers.common import select_properties as only
from services.api.runtime import runtime

CACHE_SECONDS = 30.0

COMMON_FIELDS: dict[str, dict[str, Any]] = {
    "product": {"type": "string", "title": "Product name"},
    "period": {"type": "string", "title": "Product period"},
    "wigos_id": {"type": "string", "title": "WIGOS station identifier"},
    "element": {"type": "string", "title": "Element code"},
    "month": {"type": "integer", "title": "Month"},
    "period_start": {"type": "string", "format": "date", "title": "Start of the row's period"},
    "meets_rule": {"type": "boolean", "title": "Meets the completeness rule"},
    "suspect_values": {"type": "integer", "title": "Suspect values used"},
    "excluded_values": {"type": "integer", "title": "Values excluded by the QC policy"},
}
FIELDS: dict[str, dict[str, dict[str, Any]]] = {
    "monthly": {**COMMON_FIELDS, **{
        "year": {"type": "integer", "title": "Year"},
        "mean": {"type": "number", "title": "Mean"}, "total": {"type": "number", "title": "Total"},
        "highest": {"type": "number", "title": "Highest"}, "lowest": {"type": "number", "title": "Lowest"},
        "value_days": {"type": "integer", "title": "Days with a value"},
        "missing_days": {"type": "integer", "title": "Days missing"},
        "complete": {"type": "boolean", "title": "Complete month"},
    }},
    "normals": {**COMMON_FIELDS, **{
        "statistic": {"type": "string", "title": "Statistic"}, "value": {"type": "number", "title": "Normal"},
        "years": {"type": "integer", "title": "Years used"}, "missing_years": {"type": "integer", "title": "Years missing"},
    }},
}

_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
_cache_lock = threading.Lock()


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (date, datetime)):
        return iso(value)
    return value


def product_rows(kind: str) -> list[dict[str, Any]]:
    """Every row of every current product of ``kind``, with its product and station position."""
    with _cache_lock:
        cached = _cache.get(kind)
        if cached is not None and time.monotonic() - cached[0] < CACHE_SECONDS:
            return cached[1]
    current = runtime()
    with current.datastore.engine.connect() as connection:
        places = {row.wigos_id: (row.longitude, row.latitude)
                  for row in connection.execute(sa.select(station.c.wigos_id, station.c.longitude, station.c.latitude))}
    fields = FIELDS[kind]
    rows: list[dict[str, Any]] = []
    for key in list_products(current.bucket, kind):
        if not key.endswith(".json"):
            continue
        table, metadata = read_product(current.bucket, key)
        name = key.rsplit("/", 1)[-1].removesuffix(".json")
        period = str(metadata.get("period", {}).get("label") if isinstance(metadata.get("period"), dict)
                     else metadata.get("period", ""))
        for number, record in enumerate(table.to_pylist()):
            row = {field: _clean(record.get(field)) for field in fields if field in record}
            row["product"], row["period"] = name, period
            if kind == "monthly" and record.get("year") and record.get("month"):
                row["period_start"] = f"{record['year']:04d}-{record['month']:02d}-01"
            row["_id"] = f"{name}~{number}"
            row["_place"] = places.get(record.get("wigos_id"))
            rows.append(row)
    with _cache_lock:
        _cache[kind] = (time.monotonic(), rows)
    return rows


class ProductsProvider(BaseProvider):
    """Rows of stored products as features (``data``: the product kind)."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_definition(provider_def))
        if self.data not in FIELDS:
            raise ValueError(f"products provider: unknown kind {self.data!r}")
        self._fields = dict(FIELDS[self.data])

    def get_fields(self) -> dict[str, dict[str, Any]]:
        return dict(FIELDS[self.data])

    def _feature(self, row: dict[str, Any], skip_geometry: bool = False, wanted: list[str] | None = None) -> dict[str, Any]:
        properties = {key: value for key, value in row.items() if not key.startswith("_")}
        place = row["_place"]
        if place is None:
            return {"type": "Feature", "id": row["_id"], "geometry": None, "properties": only(properties, wanted)}
        return point_feature(row["_id"], place[0], place[1], only(properties, wanted), skip_geometry=skip_geometry)

    def query(self, offset: int = 0, limit: int = 10, resulttype: str = "results", bbox: list[float] | None = None,
              datetime_: str | None = None, properties: list[tuple[str, Any]] | None = None,
              sortby: list[dict[str, str]] | None = None, select_properties: list[str] | None = None,
              skip_geometry: bool = False, q: str | None = None, filterq: Any = None, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            if filterq is not None:
                raise ApiParameterError("filter", "CQL2 filters are not offered for products; use property filters")
            fields = FIELDS[self.data]
            wanted = [(name, typed_value(name, fields[name], value)) for name, value in properties or []]
            interval = parse_datetime(datetime_)
            rows = []
            for row in product_rows(self.data):
                if any(row.get(name) != (iso(value) if isinstance(value, date) else value) for name, value in wanted):
                    continue
                if bbox and (row["_place"] is None or not _inside(bbox, row["_place"])):
                    continue
                if interval is not None and not _in_interval(row.get("period_start"), interval):
                    continue
                rows.append(row)
            for entry in reversed(sortby or []):
                name = entry["property"]
                rows.sort(key=lambda r: (r.get(name) is None, r.get(name) if r.get(name) is not None else 0),
                          reverse=entry.get("order") == "-")
            page = rows[offset: offset + limit] if resulttype != "hits" else []
            return {"type": "FeatureCollection",
                    "features": [self._feature(row, skip_geometry, select_properties) for row in page],
                    "numberMatched": len(rows), "numberReturned": len(page)}

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            for row in product_rows(self.data):
                if row["_id"] == str(identifier):
                    return self._feature(row)
        raise ProviderItemNotFoundError(user_msg=f"no product row {str(identifier)[:60]!r}")


def _inside(bbox: list[float], place: tuple[float, float]) -> bool:
    box = [bbox[0], bbox[1], bbox[3], bbox[4]] if len(bbox) == 6 else bbox
    minx, miny, maxx, maxy = box
    x, y = place
    inside_x = minx <= x <= maxx if minx <= maxx else (x >= minx or x <= maxx)
    return inside_x and miny <= y <= maxy


def _in_interval(start: str | None, interval: Any) -> bool:
    if start is None:
        return False
    moment = datetime.fromisoformat(start).replace(tzinfo=timezone.utc)
    return (interval.start is None or moment >= interval.start) and (interval.end is None or moment < interval.end)
