"""Open the intake catalog (``catalog/opencdms.yaml``) with one installation's settings.

The YAML (intake 2, readers API) says *what* there is: entries, their parameters, the SQL.
This module holds the settings-dependent part: :func:`open_catalog` gives the catalog a
:class:`Connections` for the installation, and the small readers named in the YAML use it.
The YAML holds no URL and no credential.

Why our own readers rather than intake's stock ones: intake's DuckDB readers run
``INSTALL httpfs`` / ``INSTALL postgres``, which cannot be downloaded here; its SQL reader
takes a database URL (with its password) as an argument of the catalog; the embedded
PostgreSQL has no URL until it is started; and parameters must be checked (an unknown element
or a key outside ``incoming/`` is an error naming the entry and the parameter, not an empty
table).  Every parameter value is bound by the database driver, never formatted into SQL.

    cat = open_catalog()                       # Settings() from the OPENCDMS_* variables
    cat.stations.read()                        # pandas DataFrame
    cat.observations_live.read(station="0-20000-0-60001", element="TMAX",
                               start="2020-01-01", end="2020-01-31")
    cat.gridded_analysis.read()                # xarray Dataset
"""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import pandas as pd
import sqlalchemy as sa
import xarray as xr
from intake.readers.entry import Catalog
from intake.readers.readers import BaseReader
from sqlalchemy.engine import make_url

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket, bucket_key_problem, open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import OpenCDMSError, ParameterError
from opencdms_kernel.products.model import Element, ProductKind
from opencdms_kernel.products.store import is_product_name, list_products, product_metadata, read_product
from opencdms_kernel.settings import Settings, shipped_folder
from opencdms_kernel.vocabulary import Period, wigos_id_problem

CATALOG_PATH = shipped_folder("catalog") / "opencdms.yaml"
CONNECTIONS_PARAMETER = "opencdms"  # the catalog-level parameter the readers take it from
INCOMING_PREFIX = "incoming/"


class CatalogError(OpenCDMSError):
    """A catalog entry cannot be read; the message names the entry."""


class CatalogParameterError(CatalogError, ParameterError):
    """A parameter of a catalog entry is invalid: the kernel's :class:`ParameterError` (HTTP
    400, exit code 2), whose message ``parameter 'x': reason`` is preceded by the entry:
    ``catalog entry 'e', parameter 'x': reason``."""

    def __init__(self, entry: str, parameter: str, reason: str) -> None:
        super().__init__(parameter, reason)
        self.entry = entry
        self.args = (f"catalog entry '{entry}', {self.args[0]}",)


class Connections:
    """The datastore and bucket of one installation, opened on first use from its settings.

    One per opened catalog, shared by its readers (and threads).  It is never pickled or
    saved: it holds credentials, which must not end up in a catalog file.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._datastore: Datastore | None = None
        self._bucket: Bucket | None = None

    def datastore(self) -> Datastore:
        """The PostgreSQL datastore (the embedded server is started if none is configured)."""
        with self._lock:
            if self._datastore is None:
                self._datastore = Datastore.open(self.settings)
            return self._datastore

    def bucket(self) -> Bucket:
        """The file bucket (local folder or S3)."""
        with self._lock:
            if self._bucket is None:
                self._bucket = open_bucket(self.settings)
            return self._bucket

    def close(self) -> None:
        """Close the connection pool to the datastore, if one was opened.

        An embedded PostgreSQL is left running: other code of this process may share it (its
        wheel keeps one handle per process), and it stops when the process exits.
        """
        with self._lock:
            if self._datastore is not None:
                self._datastore.engine.dispose()
                self._datastore = None

    def __repr__(self) -> str:
        # Not the settings: the database URL may hold a password.
        url = self.settings.database_url
        database = "embedded" if url is None else make_url(url).render_as_string(hide_password=True)
        return f"Connections(database={database!r}, bucket={self.settings.bucket_url!r})"

    def __reduce__(self) -> Any:
        # intake pickles unknown objects when an entry is copied into another catalog.
        raise TypeError("catalog connections hold credentials and are not saved; call open_catalog() where needed")


def open_catalog(settings: Settings | None = None, path: Path | str | None = None) -> Catalog:
    """The OpenCDMS intake catalog, reading the installation named by ``settings``.

    ``settings``: None reads the ``OPENCDMS_*`` environment now.  ``path``: another catalog
    file in the same form (default: ``catalog/opencdms.yaml`` of this project).  Nothing is
    connected until an entry is read.  Entries: ``list(catalog)``; their parameters:
    ``catalog.entries[name].user_parameters``.
    """
    source = str(path or CATALOG_PATH)
    catalog = Catalog.from_yaml_file(source)
    placeholder = catalog.user_parameters.get(CONNECTIONS_PARAMETER)
    if placeholder is None:
        raise CatalogError(f"{source}: no catalog parameter '{CONNECTIONS_PARAMETER}' for the connections")
    catalog.user_parameters[CONNECTIONS_PARAMETER] = placeholder.with_default(
        Connections(settings if settings is not None else Settings())
    )
    for name, description in catalog.entries.items():
        description.kwargs.setdefault("entry", name)  # readers name their entry in errors
    return catalog


def close_catalog(catalog: Catalog) -> None:
    """Close what the catalog's readers opened (see :meth:`Connections.close`)."""
    connections = catalog.user_parameters[CONNECTIONS_PARAMETER].default
    if isinstance(connections, Connections):
        connections.close()


# --------------------------------------------------------------------------- readers


class OpenCDMSReader(BaseReader):
    """Base of the catalog's readers: parameters are set by ``read(**values)`` or ``reader(**values)``.

    The YAML gives each entry ``connections`` (the catalog's :class:`Connections`), its
    ``parameters`` (name → value, defaults filled in by intake) and fixed arguments (a query,
    a key).  Only the declared parameters can be set, so a caller passing on user input can
    never replace a query or a key.
    """

    output_instance = "pandas:DataFrame"

    def __call__(self, **values: Any) -> "OpenCDMSReader":
        """The same entry with other parameter values (intake's way to derive a reader)."""
        kwargs = dict(self.kwargs)
        kwargs["parameters"] = self._parameters(kwargs, values)
        return type(self)(metadata=self.metadata, **kwargs)

    def read(self, **values: Any) -> Any:
        """Read the entry with ``values`` over the parameters' defaults."""
        kwargs = dict(self.kwargs)
        parameters = self._parameters(kwargs, values)
        entry = kwargs.pop("entry", type(self).__name__)
        connections = kwargs.pop("connections", None)
        del kwargs["parameters"]
        if not isinstance(connections, Connections):
            raise CatalogError(f"catalog entry '{entry}': open the catalog with opencdms_kernel.catalog.open_catalog()")
        return self._read(connections, entry, parameters, **kwargs)

    def _parameters(self, kwargs: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
        declared = dict(kwargs.setdefault("parameters", {}) or {})
        for name in values:
            if name not in declared:
                entry = kwargs.get("entry", type(self).__name__)
                known = ", ".join(declared) or "none"
                raise CatalogParameterError(entry, name, f"not a parameter of this entry (its parameters: {known})")
        return declared | dict(values)

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any], **fixed: Any) -> Any:
        raise NotImplementedError


class PostgresQuery(OpenCDMSReader):
    """A query of the PostgreSQL datastore (``query``), parameters bound, as a DataFrame."""

    imports = {"sqlalchemy", "pandas"}

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any], query: str) -> pd.DataFrame:
        with connections.datastore().engine.connect() as connection:
            values = self._bind(connection, entry, parameters)
            frame = pd.read_sql(sa.text(query), connection, params=values)
        return _utc(frame)

    def _bind(self, connection: sa.Connection, entry: str, parameters: dict[str, Any]) -> dict[str, Any]:
        return parameters


class LiveObservations(PostgresQuery):
    """Observations from PostgreSQL; station and element are checked against the datastore.

    Binds ``:station``, ``:element`` (NULL: all), ``:start`` (first instant included) and
    ``:end`` (first instant excluded) for :func:`observation_parameters`.
    """

    def _bind(self, connection: sa.Connection, entry: str, parameters: dict[str, Any]) -> dict[str, Any]:
        values = observation_parameters(entry, parameters)
        known = {code for (code,) in connection.execute(sa.text("SELECT code FROM element"))}
        _check_element(entry, values["element"], known)
        if values["station"] is not None:
            found = connection.execute(
                sa.text("SELECT 1 FROM station WHERE wigos_id = :wigos_id"), {"wigos_id": values["station"]}
            ).first()
            if found is None:
                raise CatalogParameterError(entry, "station", f"unknown station '{values['station']}' (not in the datastore)")
        return values


class ArchiveObservations(OpenCDMSReader):
    """Observations from the Parquet archive through DuckDB (``query`` over ``observations``).

    Binds ``$station``, ``$element``, ``$start``, ``$end`` as :class:`LiveObservations` does.
    """

    imports = {"duckdb", "pandas"}

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any], query: str) -> pd.DataFrame:
        values = observation_parameters(entry, parameters)
        _check_element(entry, values["element"], {element.value for element in Element})
        connection = connect_archive(connections.bucket())
        try:
            frame = connection.execute(query, values).df()
            if frame.empty and values["station"] is not None:
                # Only now, when it matters: is the station known to the archive at all?
                known = connection.execute(
                    "SELECT 1 FROM observations WHERE wigos_id = $station LIMIT 1", {"station": values["station"]}
                ).fetchone()
                if known is None:
                    raise CatalogParameterError(entry, "station", f"unknown station '{values['station']}' (not in the archive)")
        finally:
            connection.close()
        return _utc(frame)


class StoredProducts(OpenCDMSReader):
    """Products in the bucket: without ``name`` a list of them, with it the product's table.

    The product's table comes with its JSON metadata in ``frame.attrs["metadata"]``.
    """

    imports = {"pandas", "pyarrow"}

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any]) -> pd.DataFrame:
        kind, name, period = parameters.get("kind"), parameters.get("name"), parameters.get("period")
        kinds = [member.value for member in ProductKind]
        if kind is not None and kind not in kinds:
            raise CatalogParameterError(entry, "kind", f"unknown kind {kind!r} (known: {', '.join(kinds)})")
        if period is not None:
            try:  # products are kept under the period's canonical text (1991-2020; 2020 is 2020-2020)
                period = Period.parse(period, "period").label
            except ParameterError as exc:
                raise CatalogParameterError(entry, "period", exc.reason) from None
        bucket = connections.bucket()
        if name is None:
            return _product_list(bucket, kind, period)
        if not is_product_name(name):
            raise CatalogParameterError(entry, "name", f"{name!r} is not a product name (letters, digits, '.', '_', '-')")
        found = [key for key, product in _stored(bucket, kind, period) if product.name == name]
        if not found:
            raise CatalogParameterError(entry, "name", f"no product {name!r} matches kind={kind}, period={period}")
        if len(found) > 1:
            raise CatalogParameterError(entry, "name", f"{name!r} names several products ({', '.join(found)}): give kind and period")
        table, metadata = read_product(bucket, found[0])
        frame = table.to_pandas()
        frame.attrs["metadata"] = metadata
        return frame


class IncomingCSV(OpenCDMSReader):
    """One CSV file under ``incoming/`` in the bucket (``key``), as pandas reads it."""

    imports = {"pandas"}

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any]) -> pd.DataFrame:
        key = parameters.get("key")
        if not isinstance(key, str) or not key:
            raise CatalogParameterError(entry, "key", "give the object key of a file, e.g. incoming/obs.csv")
        if problem := bucket_key_problem(key, (INCOMING_PREFIX,)):
            raise CatalogParameterError(entry, "key", f"{key!r} is not a key under {INCOMING_PREFIX}: {problem}")
        if not key.lower().endswith(".csv"):
            raise CatalogParameterError(entry, "key", f"{key!r} is not a CSV file (.csv)")
        bucket = connections.bucket()
        path = bucket.path(key)
        bucket.fs.invalidate_cache(path.rsplit("/", 1)[0])
        if not bucket.fs.isfile(path):
            raise CatalogParameterError(entry, "key", f"no object {key!r} in the bucket {bucket.url('')}")
        with bucket.fs.open(path, "rb") as handle:
            return pd.read_csv(handle)


class BucketDataset(OpenCDMSReader):
    """A NetCDF file in the bucket (``key``), read whole into an xarray Dataset."""

    imports = {"xarray", "h5netcdf"}
    output_instance = "xarray:Dataset"

    def _read(self, connections: Connections, entry: str, parameters: dict[str, Any], key: str) -> xr.Dataset:
        bucket = connections.bucket()
        path = bucket.path(key)
        bucket.fs.invalidate_cache(path.rsplit("/", 1)[0])
        if not bucket.fs.isfile(path):
            raise CatalogError(f"catalog entry '{entry}': no object {bucket.url(key)} (the demo loader writes it)")
        # Loaded whole (a few MB) so that the file can be closed: no handle on S3 left open.
        with bucket.fs.open(path, "rb") as handle, xr.open_dataset(handle, engine="h5netcdf") as dataset:
            return dataset.load()


# --------------------------------------------------------------------------- parameters


def observation_parameters(entry: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Checked bind values of the observation entries: station, element, start, end.

    ``start``/``end``: ISO dates or times (naive ones are UTC), both included; a date as
    ``end`` includes that whole day.  Bound as ``start`` (first instant included) and
    ``end`` (first instant after the period).
    """
    station, element = parameters.get("station"), parameters.get("element")
    if station is not None:
        if not isinstance(station, str):
            raise CatalogParameterError(entry, "station", f"{station!r} is not a WIGOS identifier (e.g. 0-20000-0-60001)")
        if (problem := wigos_id_problem(station.strip())) is not None:
            raise CatalogParameterError(entry, "station", problem)
        station = station.strip()
    if element is not None:
        if not isinstance(element, str) or not element.strip():
            raise CatalogParameterError(entry, "element", f"{element!r} is not an element code (e.g. TMAX)")
        element = element.strip().upper()
    start = _instant(entry, "start", parameters.get("start"), end=False)
    end = _instant(entry, "end", parameters.get("end"), end=True)
    if start is not None and end is not None and end <= start:
        raise CatalogParameterError(entry, "end", f"the period ends before it starts ({parameters.get('start')} to {parameters.get('end')})")
    return {"station": station, "element": element, "start": start, "end": end}


def _instant(entry: str, parameter: str, value: Any, *, end: bool) -> datetime | None:
    """A start as the first instant included; an end as the first instant excluded (UTC)."""
    if value is None:
        return None
    whole_day = isinstance(value, date) and not isinstance(value, datetime)
    if isinstance(value, str):
        text = value.strip()
        whole_day = len(text) == 10  # YYYY-MM-DD
        try:
            value = date.fromisoformat(text) if whole_day else datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise CatalogParameterError(entry, parameter, f"{text!r} is not an ISO date or time (e.g. 2020-01-31)") from None
    if whole_day:
        instant = datetime(value.year, value.month, value.day, tzinfo=timezone.utc)
        return instant + timedelta(days=1) if end else instant
    if not isinstance(value, datetime):
        raise CatalogParameterError(entry, parameter, f"{value!r} is not a date or time")
    instant = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    # Times are stored to the microsecond, so the instant after an included end is 1 µs later.
    return instant + timedelta(microseconds=1) if end else instant


def _check_element(entry: str, element: str | None, known: set[str]) -> None:
    if element is not None and element not in known:
        raise CatalogParameterError(entry, "element", f"unknown element '{element}' (known: {', '.join(sorted(known))})")


# --------------------------------------------------------------------------- helpers


def _utc(frame: pd.DataFrame) -> pd.DataFrame:
    """Time columns in UTC, whatever the database session's time zone."""
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.tz_convert("UTC")
    return frame


class _StoredName(NamedTuple):
    kind: str
    period: str
    name: str


def _stored(bucket: Bucket, kind: str | None, period: str | None) -> list[tuple[str, _StoredName]]:
    """The metadata keys of the stored products (``products/<kind>/<period>/<name>.json``),
    optionally of one kind and period, with the parts of their keys."""
    found = []
    for key in list_products(bucket, kind):
        _, product_kind, product_period, file_name = key.split("/", 3)
        if period is None or product_period == period:
            found.append((key, _StoredName(product_kind, product_period, file_name.removesuffix(".json"))))
    return found


def _product_list(bucket: Bucket, kind: str | None, period: str | None) -> pd.DataFrame:
    """One row per stored product (its metadata), optionally of one kind and period."""
    rows = []
    for key, stored in _stored(bucket, kind, period):
        metadata = product_metadata(bucket, key)
        rows.append({
            "key": key.removesuffix(".json"),
            "kind": stored.kind,
            "period": stored.period,
            "name": stored.name,
            "rows": metadata.get("rows"),
            "empty": metadata.get("empty"),
            "description": metadata.get("description"),
            "note": metadata.get("note"),
            "created_at": metadata.get("created_at"),
        })
    columns = ["key", "kind", "period", "name", "rows", "empty", "description", "note", "created_at"]
    return pd.DataFrame(rows, columns=columns)