"""``discovery-metadata``: OGC API - Records, one WCMP2 (WMO Core Metadata Profile 2) record per dataset.

Each collection this service offers with data (stations, observations, monthly summaries,
normals, the gridded analysis) gets one discovery record, generated from the same things the
configuration is (the settings, the datastore's extents), so the records and the collections
cannot disagree.  Records are validated in the tests with ``pywcmp``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError

from opencdms_kernel.db.schema import observation, station
from services.api import config as api_config
from services.api.errors import ApiParameterError, provider_errors
from services.api.providers.common import parse_datetime, provider_definition
from services.api.providers.common import select_properties as only
from services.api.runtime import runtime

# (collection, title, description, resolution, WIS2 topic after the centre's data/core/)
DATASETS: tuple[tuple[str, str, str, str, str], ...] = (
    (api_config.OBSERVATIONS, "Surface climate observations",
     "Daily and sub-daily surface observations of the national network, as quality controlled, with each "
     "value's QC status; served live through OGC API - EDR.", "P1D", "climate/surface-based-observations/daily"),
    (api_config.STATIONS, "Observing stations",
     "The stations of the network (WIGOS identifiers, location, elevation, time zone, operating dates).",
     "P1D", "climate/surface-based-observations/daily"),
    (api_config.MONTHLY, "Monthly climate summaries",
     "Monthly means, totals and extremes per station and element, with the WMO completeness rule applied.",
     "P1M", "climate/surface-based-observations/monthly"),
    (api_config.NORMALS, "Climate normals",
     "Climate normals per station, element and calendar month (WMO normals rule).",
     "P1M", "climate/surface-based-observations/monthly"),
    (api_config.GRIDDED, "Gridded daily analysis",
     "Gridded daily mean temperature and precipitation analysis (CF NetCDF), through OGC API - EDR.",
     "P1D", "climate/experimental"),
)

FIELDS: dict[str, dict[str, Any]] = {
    "title": {"type": "string", "title": "Title"},
    "description": {"type": "string", "title": "Description"},
    "type": {"type": "string", "title": "Resource type"},
    "wmo:dataPolicy": {"type": "string", "title": "WMO data policy"},
}


def _extent() -> tuple[list[float], str]:
    with runtime().datastore.engine.connect() as connection:
        box = connection.execute(sa.select(
            sa.func.min(station.c.longitude), sa.func.min(station.c.latitude),
            sa.func.max(station.c.longitude), sa.func.max(station.c.latitude))).one()
        first = connection.execute(sa.select(sa.func.min(observation.c.phenomenon_time))).scalar()
    bbox = [float(v) for v in box] if box[0] is not None else list(api_config.WHOLE_WORLD)
    if bbox[0] == bbox[2]:
        bbox[0], bbox[2] = bbox[0] - 0.01, bbox[2] + 0.01
    if bbox[1] == bbox[3]:
        bbox[1], bbox[3] = bbox[1] - 0.01, bbox[3] + 0.01
    begin = first.date().isoformat() if first is not None else "1900-01-01"
    return bbox, begin


def discovery_records() -> list[dict[str, Any]]:
    """The WCMP2 records of this service's datasets (GeoJSON features)."""
    settings = runtime().settings
    url = api_config.base_url(settings)
    centre = settings.centre_id
    bbox, begin = _extent()
    minx, miny, maxx, maxy = bbox
    polygon = [[[minx, miny], [minx, maxy], [maxx, maxy], [maxx, miny], [minx, miny]]]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    offered = _offered_collections()
    records = []
    for collection, title, description, resolution, topic in DATASETS:
        if collection not in offered:
            continue
        identifier = f"urn:wmo:md:{centre}:opencdms.{collection}"
        items_rel = (f"{url}/collections/{collection}/position" if collection in (api_config.OBSERVATIONS, api_config.GRIDDED)
                     else f"{url}/collections/{collection}/items")
        records.append({
            "id": identifier,
            "conformsTo": ["http://wis.wmo.int/spec/wcmp/2/conf/core"],
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": polygon},
            "time": {"interval": [begin, ".."], "resolution": resolution},
            "properties": {
                "title": title,
                "description": description,
                "keywords": ["climate", "observations", collection],
                "themes": [{
                    "concepts": [{"id": "climate", "title": "Climate",
                                  "url": "https://codes.wmo.int/wis/topic-hierarchy/earth-system-discipline/climate"}],
                    "scheme": "https://codes.wmo.int/wis/topic-hierarchy/earth-system-discipline",
                }],
                "contacts": [{
                    "organization": centre,
                    "name": "Climate data management",
                    "links": [{"rel": "about", "type": "text/html", "href": url}],
                    "roles": ["host", "producer"],
                }],
                "wmo:dataPolicy": "core",
                "language": {"code": "en"},
                "type": "dataset",
                "created": now,
                "updated": now,
            },
            "links": [
                {"rel": "collection", "type": "application/json", "href": f"{url}/collections/{collection}",
                 "title": f"{title} (OGC API collection)"},
                {"rel": "data", "type": "application/json", "href": items_rel, "title": f"{title}: data access"},
                {"rel": "items", "type": "application/geo+json", "href": "mqtt://localhost:1883",
                 "channel": f"origin/a/wis2/{centre}/data/core/{topic}",
                 "title": "Notifications of new data (WIS2)"},
                {"rel": "license", "type": "text/html", "href": "https://creativecommons.org/licenses/by/4.0/",
                 "title": "CC-BY 4.0"},
            ],
        })
    return records


def _offered_collections() -> set[str]:
    """Collections the generated configuration offers (the gridded one only when present)."""
    settings = runtime().settings
    offered = {api_config.OBSERVATIONS, api_config.STATIONS, api_config.MONTHLY, api_config.NORMALS}
    if api_config._gridded_collection(settings, "") is not None:  # noqa: SLF001 - the one rule for it
        offered.add(api_config.GRIDDED)
    return offered


class DiscoveryRecordsProvider(BaseProvider):
    """The WCMP2 records as OGC API - Records items."""

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
            if filterq is not None:
                raise ApiParameterError("filter", "CQL2 filters are not offered for records; use q or properties")
            parse_datetime(datetime_)  # checked; every record covers the store's whole period
            records = discovery_records()
            if q:
                words = q.lower().split()
                records = [r for r in records if all(
                    word in (r["properties"]["title"] + " " + r["properties"]["description"]).lower() for word in words)]
            for name, value in properties or []:
                records = [r for r in records if str(r["properties"].get(name)) == str(value)]
            for entry in reversed(sortby or []):
                records.sort(key=lambda r: str(r["properties"].get(entry["property"], "")),
                             reverse=entry.get("order") == "-")
            page = records[offset: offset + limit] if resulttype != "hits" else []
            features = []
            for record in page:
                shown = dict(record)
                shown["properties"] = only(record["properties"], select_properties)
                if skip_geometry:
                    shown["geometry"] = None
                features.append(shown)
            return {"type": "FeatureCollection", "features": features, "numberMatched": len(records),
                    "numberReturned": len(features)}

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            for record in discovery_records():
                if record["id"] == str(identifier):
                    return record
        raise ProviderItemNotFoundError(user_msg=f"no record {str(identifier)[:80]!r}")

