"""The pygeoapi configuration, generated; the OpenAPI document, generated and cached.

Nothing is kept by hand in two places: collections take their titles and descriptions from the
intake catalog (``catalog/opencdms.yaml``), their extents from the datastore, every process from
the notebook registry, and the server block from :class:`~opencdms_kernel.settings.Settings`.
:func:`write_config` writes the YAML only when its content changed, and :func:`ensure_openapi`
regenerates the OpenAPI document only when the configuration's digest changed (it is kept as
``openapi-<digest>.yml`` beside the configuration), so a restart with nothing changed costs
neither.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from opencdms_kernel.catalog import open_catalog
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import observation, station
from opencdms_kernel.demo.gridded import GRIDDED_KEY
from opencdms_kernel.notebooks.registry import NotebookRegistry, open_registry
from services.api.providers.ingest_ledger import COLLECTION as INGEST_LEDGER, ledger_resource
from opencdms_kernel.settings import Settings

log = logging.getLogger(__name__)

# Collection ids (URL path segments).
STATIONS = "stations"
OBSERVATIONS = "observations"
RECORDS = "discovery-metadata"
MONTHLY = "monthly-summaries"
NORMALS = "climate-normals"
GRIDDED = "gridded-analysis"

WHOLE_WORLD = [-180.0, -90.0, 180.0, 90.0]
CONFIG_FILE = "pygeoapi-config.yml"
PROVIDERS = "services.api.providers"


@dataclass(frozen=True)
class ApiFiles:
    """Where the generated configuration and OpenAPI document live."""

    config: Path
    openapi: Path
    digest: str


def api_folder(settings: Settings) -> Path:
    """The folder of the generated files: ``<var_dir>/api``."""
    return settings.var_dir / "api"


def base_url(settings: Settings) -> str:
    """The URL clients reach the API at (no trailing slash)."""
    if settings.api_public_url:
        return settings.api_public_url.rstrip("/")
    return f"http://{settings.api_host}:{settings.api_port}{settings.api_prefix}"


def static_folder() -> Path:
    """The local copies of the scripts and styles pygeoapi's pages would load from CDNs."""
    return Path(__file__).resolve().parent / "static" / "node_modules"


# --------------------------------------------------------------------------- the document


def build_config(settings: Settings, datastore: Datastore | None = None) -> dict[str, Any]:
    """The pygeoapi configuration of this installation, as a dict.

    ``datastore``: read the stations' bounding box and the observations' first time for the
    extents; without it (or with an empty store) the extents are the whole world, open-ended.
    """
    catalog = open_catalog(settings)
    entries = {name: dict(catalog.entries[name].metadata) for name in catalog.entries}
    bbox, begin = _extents(datastore)
    spatial = {"bbox": bbox, "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}
    temporal = {"begin": begin, "end": None}
    url = base_url(settings)

    def described(entry: str, extra: str = "") -> str:
        metadata = entries.get(entry, {})
        text = " ".join(str(part) for part in (metadata.get("description"), metadata.get("text"), extra) if part)
        return text.strip() or entry

    resources: dict[str, Any] = {
        STATIONS: {
            "type": "collection",
            "title": "Stations",
            "description": described("stations", "Also editable through OGC API - Features Part 4 by administrators."),
            "keywords": ["stations", "WIGOS", "observing network"],
            "extents": {"spatial": spatial, "temporal": dict(temporal)},
            "providers": [{
                "type": "feature", "name": f"{PROVIDERS}.stations.StationsProvider", "data": "station",
                "id_field": "wigos_id", "title_field": "name", "time_field": "opened",
                # Features Part 4 for administrators (scope custom:opencdms:transactions, auth.py).
                "editable": True,
            }],
        },
        OBSERVATIONS: {
            "type": "collection",
            "title": "Observations",
            "description": described(
                "observations_live",
                "EDR queries (position, radius, area, cube, locations) answer CoverageJSON (f=json), "
                "GeoJSON (f=geojson) or CSV (f=csv); parameter-name takes element codes; qc-status="
                "none,passed,suspect,failed keeps values of those QC statuses (e.g. leave out failed).",
            ),
            "keywords": ["observations", "climate", "EDR"],
            "extents": {"spatial": spatial, "temporal": dict(temporal)},
            "limits": {"default_items": 100, "max_items": 10_000, "on_exceed": "error"},
            "providers": [
                {"type": "edr", "name": f"{PROVIDERS}.observations.ObservationsEDRProvider", "data": "observation"},
                {"type": "feature", "name": f"{PROVIDERS}.observations.ObservationItemsProvider",
                 "data": "observation", "id_field": "id", "time_field": "phenomenon_time"},
            ],
            "formatters": [
                {"name": "services.api.formatters.CoverageGeoJSONFormatter"},
                {"name": "services.api.formatters.CoverageCSVFormatter"},
            ],
        },
        MONTHLY: _product_collection(
            "Monthly summaries", described("products", "Monthly summaries per station and element."),
            "monthly", spatial, temporal,
        ),
        NORMALS: _product_collection(
            "Climate normals", described("products", "Climate normals per station, element and month."),
            "normals", spatial, temporal,
        ),
        RECORDS: {
            "type": "collection",
            "title": "Discovery metadata",
            "description": "One WMO Core Metadata Profile 2 record per dataset this service offers.",
            "keywords": ["metadata", "WCMP2", "records"],
            "extents": {"spatial": spatial, "temporal": dict(temporal)},
            "providers": [{
                "type": "record", "name": f"{PROVIDERS}.records.DiscoveryRecordsProvider", "data": "records",
                "id_field": "id", "time_field": "created", "title_field": "title",
            }],
        },
    }
    gridded = _gridded_collection(settings, described("gridded_analysis"))
    if gridded is not None:
        resources[GRIDDED] = gridded
    resources[INGEST_LEDGER] = ledger_resource()  # what the event service's sweep compares with
    resources.update(_processes(open_registry(settings.notebook_folder)))

    return {
        "server": {
            "bind": {"host": settings.api_host, "port": settings.api_port},
            "url": url,
            "mimetype": "application/json; charset=UTF-8",
            "encoding": "utf-8",
            "gzip": False,
            "languages": ["en-US"],
            # CORS is ours (app.py): pygeoapi's would allow every origin and method.
            "cors": False,
            "pretty_print": False,
            "limits": {"default_items": 100, "max_items": 1000, "on_exceed": "error"},
            # No tile server is reachable offline: a blank local tile (app.py) instead of OSM.
            "map": {"url": f"{url}/vendor/blank-tile.png", "attribution": "no base map (offline)"},
            # The schema requires both; jobs live in the datastore's job table, results under runs/ in the bucket.
            "manager": {"name": "services.api.processes.JobManager", "connection": "job table of the datastore",
                        "output_dir": "runs/ in the bucket"},
            "admin": False,
        },
        "logging": {"level": "ERROR"},
        "metadata": {
            "identification": {
                "title": catalog.metadata.get("title", "OpenCDMS Workbench"),
                "description": catalog.metadata.get("description", "OpenCDMS Workbench"),
                "keywords": ["climate", "observations", "WMO", "OpenCDMS"],
                "keywords_type": "theme",
                "terms_of_service": "https://creativecommons.org/licenses/by/4.0/",
                "url": url,
            },
            "license": {"name": "CC-BY 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
            "provider": {"name": settings.centre_id, "url": url},
            "contact": {"name": settings.centre_id, "position": "Climate data management",
                        "url": url, "role": "pointOfContact"},
        },
        "resources": resources,
    }


def _product_collection(
    title: str, description: str, kind: str, spatial: dict[str, Any], temporal: dict[str, Any]
) -> dict[str, Any]:
    return {
        "type": "collection",
        "title": title,
        "description": description,
        "keywords": ["climate products", kind],
        "extents": {"spatial": spatial, "temporal": dict(temporal)},
        "providers": [{
            "type": "feature", "name": f"{PROVIDERS}.products.ProductsProvider", "data": kind,
            "id_field": "id", "time_field": "period_start",
        }],
    }


def _gridded_collection(settings: Settings, description: str) -> dict[str, Any] | None:
    """pygeoapi's own xarray EDR provider over the analysis, when the bucket is a folder and has it."""
    if settings.bucket_protocol != "file":
        return None  # pygeoapi's xarray provider opens a path; an S3 bucket is left out (documented)
    path = Path(settings.bucket_root) / GRIDDED_KEY
    if not path.is_file():
        return None
    return {
        "type": "collection",
        "title": "Gridded analysis",
        "description": description,
        "keywords": ["gridded", "analysis", "NetCDF"],
        "extents": {"spatial": {"bbox": WHOLE_WORLD, "crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"}},
        "providers": [{
            "type": "edr", "name": "xarray-edr", "data": str(path),
            "x_field": "lon", "y_field": "lat", "time_field": "time",
            "format": {"name": "netcdf", "mimetype": "application/x-netcdf"},
        }],
    }


def _processes(registry: NotebookRegistry) -> dict[str, Any]:
    """One pygeoapi process resource per registered notebook (the description is generated by
    :class:`services.api.processes.NotebookProcessor` from the registry at request time)."""
    return {
        info.name: {
            "type": "process",
            "processor": {"name": "services.api.processes.NotebookProcessor", "notebook": info.name},
        }
        for info in registry.notebooks()
    }


def _extents(datastore: Datastore | None) -> tuple[list[float], datetime | None]:
    if datastore is None:
        return WHOLE_WORLD, None
    with datastore.engine.connect() as connection:
        box = connection.execute(sa.select(
            sa.func.min(station.c.longitude), sa.func.min(station.c.latitude),
            sa.func.max(station.c.longitude), sa.func.max(station.c.latitude),
        )).one()
        first = connection.execute(sa.select(sa.func.min(observation.c.phenomenon_time))).scalar()
    bbox = [float(value) for value in box] if box[0] is not None else WHOLE_WORLD
    # A datetime, not text: pygeoapi compares requested times with the extent as datetimes.
    begin = first.astimezone(timezone.utc) if first is not None else None
    return bbox, begin


# --------------------------------------------------------------------------- files


def config_text(config: dict[str, Any]) -> str:
    """The configuration as YAML (stable key order, so equal configurations are equal text)."""
    return "# Generated by `opencdms api config`; edit the settings, catalog or notebooks instead.\n" + yaml.safe_dump(
        config, sort_keys=True, default_flow_style=False, allow_unicode=True
    )


def digest_of(text: str) -> str:
    """A short digest of the configuration text (names the cached OpenAPI document)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def write_config(settings: Settings, datastore: Datastore | None = None) -> tuple[Path, bool]:
    """Generate the configuration; write it only if it changed.  Returns the path and whether it was written."""
    folder = api_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CONFIG_FILE
    text = config_text(build_config(settings, datastore))
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path, False
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return path, True


def ensure_openapi(config_path: Path) -> ApiFiles:
    """The OpenAPI document of ``config_path``, generated only if none exists for its digest."""
    from pygeoapi.openapi import generate_openapi_document

    text = config_path.read_text(encoding="utf-8")
    digest = digest_of(text)
    openapi = config_path.parent / f"openapi-{digest}.yml"
    if not openapi.is_file():
        # pygeoapi's generator reads PYGEOAPI_CONFIG for some plugins' defaults.
        os.environ["PYGEOAPI_CONFIG"] = str(config_path)
        document = generate_openapi_document(config_path, "yaml")
        temporary = openapi.with_suffix(".tmp")
        temporary.write_text(document, encoding="utf-8")
        os.replace(temporary, openapi)
        for stale in config_path.parent.glob("openapi-*.yml"):
            if stale != openapi:
                stale.unlink(missing_ok=True)
    return ApiFiles(config=config_path, openapi=openapi, digest=digest)


def validate_config(config_path: Path) -> None:
    """Validate against pygeoapi's configuration schema (raises jsonschema's ValidationError)."""
    from pygeoapi.config import validate_config as pygeoapi_validate
    from pygeoapi.util import yaml_load

    with config_path.open(encoding="utf-8") as handle:
        pygeoapi_validate(yaml_load(handle))


def validate_openapi(openapi_path: Path) -> None:
    """Validate against the OpenAPI 3.0 schema (raises jsonschema's ValidationError)."""
    from pygeoapi.openapi import validate_openapi_document

    with openapi_path.open(encoding="utf-8") as handle:
        validate_openapi_document(yaml.safe_load(handle))


def as_json(config: dict[str, Any]) -> str:
    """The configuration as JSON (for logs and tests)."""
    return json.dumps(config, sort_keys=True, default=str)
