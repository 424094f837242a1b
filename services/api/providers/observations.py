"""``observations``: OGC API - EDR (and Features ``items``) on the live datastore.

Values are read from ``observation`` rows with ``status = 'latest'``, so a correction is served
on the next request.  Stations are the EDR locations (``/locations/{wigos_id}``); a position,
radius, area or cube query picks the stations it covers (by their coordinates: no PostGIS) and
answers one CoverageJSON PointSeries per station, level and duration (a CoverageCollection),
built with covjson-pydantic's models.  ``parameter-name`` takes element codes; each element
``E`` comes with ``E_qc``, the QC status of every value (categories none, passed, suspect,
failed), and ``qc-status=passed,suspect`` keeps only values of those statuses.  Where several
sources give the same value key, the lowest source id is served.

GeoJSON (``f=geojson``) and CSV (``f=csv``) are made from the same coverage by
:mod:`services.api.formatters`.

Speed (``bench/api.py``): values travel as arrays, never as a Python object per value.
PostgreSQL packs each station's and element's values into binary columns, numpy reads them,
the coverage's envelope comes from covjson-pydantic's models, and orjson writes the arrays;
for CoverageJSON that JSON is the answer (:func:`services.api.context.offer_body`), so
pygeoapi's own ``json.dumps`` never walks the values.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import psycopg as postgresql_psycopg
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError, ProviderNoDataError
from pygeoapi.provider.base_edr import BaseEDRProvider

from opencdms_kernel.db.schema import element, observation, station
from opencdms_kernel.vocabulary import QcStatus
from services.api.context import offer_body, request_parameter
from services.api.errors import ApiParameterError, provider_errors
from services.api.providers.common import (
    Interval,
    bbox_condition,
    cql_condition,
    iso,
    json_number,
    order_by,
    parse_datetime,
    point_feature,
    property_conditions,
    provider_definition,
    select_properties as only,
)
from services.api.runtime import runtime

QC_STATUSES = tuple(status.value for status in QcStatus)  # CoverageJSON category codes follow this order
QC_SUFFIX = "_qc"
MAX_VALUES = 2_000_000  # one answer; beyond it the client is asked to narrow the query
POSITION_TOLERANCE_DEGREES = 0.01  # a position names the stations within about a kilometre
DISTANCE_UNITS_KM = {"km": 1.0, "m": 0.001, "mi": 1.609344, "nm": 1.852}
EARTH_RADIUS_KM = 6371.0088
_CACHE_SECONDS = 60.0
MAX_POSITION_POINTS = 1000  # a MULTIPOINT names at most this many positions
# pygeoapi's request formats it answers with CoverageJSON (no f, or f=json).
COVERAGE_JSON_FORMATS = (None, "json")


@dataclass(frozen=True)
class ElementInfo:
    """One element of the vocabulary as the datastore holds it."""

    id: int
    code: str
    name: str
    standard_name: str
    cell_method: str | None
    units: str


@dataclass(frozen=True)
class StationPoint:
    """A station as a location."""

    id: int
    wigos_id: str
    name: str
    longitude: float
    latitude: float
    elevation: float | None


_elements: tuple[float, dict[str, ElementInfo]] | None = None
_elements_lock = threading.Lock()


def known_elements() -> dict[str, ElementInfo]:
    """The element table by code (read at most once a minute per process: it rarely changes)."""
    global _elements
    with _elements_lock:
        if _elements is not None and time.monotonic() - _elements[0] < _CACHE_SECONDS:
            return _elements[1]
    with runtime().datastore.engine.connect() as connection:
        rows = connection.execute(sa.select(element).order_by(element.c.code)).all()
    found = {row.code: ElementInfo(row.id, row.code, row.name, row.standard_name, row.cell_method, row.units)
             for row in rows}
    with _elements_lock:
        _elements = (time.monotonic(), found)
    return found


def element_fields() -> dict[str, dict[str, Any]]:
    """The EDR parameters: every element (title, unit, CF standard name) and its QC status."""
    fields: dict[str, dict[str, Any]] = {}
    for code, info in known_elements().items():
        fields[code] = {"type": "number", "title": info.name, "x-ogc-unit": info.units,
                        "description": f"{info.name} ({info.cell_method or 'point'}), CF {info.standard_name}",
                        "x-cf-standard-name": info.standard_name}
    return fields


def _stations(condition: sa.ColumnElement[bool] = sa.true(), connection: sa.Connection | None = None) -> list[StationPoint]:
    """The stations matching ``condition`` (on ``connection``, else on one of the pool's)."""
    query = sa.select(station.c.id, station.c.wigos_id, station.c.name, station.c.longitude, station.c.latitude,
                      station.c.elevation).where(condition).order_by(station.c.wigos_id)
    if connection is not None:
        return [StationPoint(*row) for row in connection.execute(query)]
    with runtime().datastore.engine.connect() as own:
        return [StationPoint(*row) for row in own.execute(query)]


def haversine_km(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Great-circle distance in kilometres."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi, dlmb = phi2 - phi1, math.radians(lon2 - lon1)
    a = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def _points(wkt: Any) -> list[tuple[float, float]]:
    """The points of a POINT or MULTIPOINT geometry (shapely, as pygeoapi parsed ``coords``)."""
    kind = getattr(wkt, "geom_type", None)
    if kind == "Point":
        points = [(wkt.x, wkt.y)]
    elif kind == "MultiPoint":
        points = [(point.x, point.y) for point in wkt.geoms]
    else:
        raise ApiParameterError("coords", f"a POINT or MULTIPOINT is needed, not {kind or 'nothing'}")
    for x, y in points:
        if not (math.isfinite(x) and math.isfinite(y) and -180 <= x <= 180 and -90 <= y <= 90):
            raise ApiParameterError("coords", "longitude must be within ±180 and latitude within ±90")
    return points


def _levels(z: Any) -> tuple[float | None, float | None] | list[float] | None:
    """``z``: one level, a list ``a,b``, or an interval ``a/b`` (metres above ground)."""
    if z is None or z == "":
        return None
    text = str(z)
    try:
        if "/" in text:
            low, high = (float(part) for part in text.split("/", 1))
            if not (math.isfinite(low) and math.isfinite(high)) or low > high:
                raise ValueError("bad interval")
            return (low, high)
        values = [float(part) for part in text.split(",")]
        if not all(math.isfinite(value) for value in values):
            raise ValueError("not finite")
        return values
    except ValueError as exc:
        raise ApiParameterError("z", f"{text[:40]!r} is not a level, a list of levels or an interval low/high") from exc


def _qc_filter() -> list[str] | None:
    text = request_parameter("qc-status")
    if text is None or text == "":
        return None
    wanted = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [part for part in wanted if part not in QC_STATUSES]
    if unknown or not wanted:
        raise ApiParameterError("qc-status", f"a comma-separated list of {', '.join(QC_STATUSES)}")
    return wanted


def _parameter_codes(names: Iterable[str] | None) -> list[ElementInfo]:
    """The elements named by ``parameter-name`` (all when none); an unknown name is a 400."""
    elements = known_elements()
    wanted = [name.strip() for name in (names or []) if name.strip()]
    if not wanted:
        return list(elements.values())
    chosen: dict[str, ElementInfo] = {}
    for name in wanted:
        code = name[: -len(QC_SUFFIX)] if name.endswith(QC_SUFFIX) else name
        if code not in elements:
            raise ApiParameterError("parameter-name", f"{name[:40]!r} is not an element code "
                                    f"(known: {', '.join(elements)})")
        chosen[code] = elements[code]
    return list(chosen.values())


@dataclass(frozen=True, eq=False)
class Series:
    """The values of one station, level and duration: one time axis, one array per element.

    Arrays, not rows: the values arrive packed from PostgreSQL (:func:`read_series`) and leave
    as JSON through orjson's numpy support, so no Python code runs once per value.
    """

    point: StationPoint
    level: float
    duration: int
    times: np.ndarray  # datetime64[us] (UTC), ascending, unique
    values: dict[str, np.ndarray]  # element code -> float64; NaN: no value
    qc: dict[str, np.ndarray]  # element code -> int16 index into QC_STATUSES; -1: no value at that time


# Binary timestamps (timestamptz_send) count microseconds from 2000-01-01T00:00Z.
POSTGRES_EPOCH_MICROSECONDS = 946_684_800 * 1_000_000
ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NAIVE_UTC | orjson.OPT_UTC_Z
_NO_QC = -1


@lru_cache(maxsize=1)
def _referencing() -> list[Any]:
    """The coverages' reference systems (CRS84, Gregorian time), as covjson-pydantic models."""
    from covjson_pydantic.reference_system import ReferenceSystem, ReferenceSystemConnectionObject

    return [
        ReferenceSystemConnectionObject(coordinates=["x", "y"], system=ReferenceSystem(
            type="GeographicCRS", id="http://www.opengis.net/def/crs/OGC/1.3/CRS84")),
        ReferenceSystemConnectionObject(coordinates=["t"], system=ReferenceSystem(
            type="TemporalRS", calendar="Gregorian")),
    ]


@lru_cache(maxsize=1)
def _axis_models() -> tuple[Any, Any]:
    """covjson-pydantic's ``ValuesAxis[float]`` and ``ValuesAxis[datetime]``, made once (pydantic
    keeps parametrised models in a weak cache and would otherwise rebuild them now and then)."""
    from covjson_pydantic.domain import ValuesAxis

    return ValuesAxis[float], ValuesAxis[datetime]


def coverage_parameters(elements: list[ElementInfo]) -> dict[str, Any]:
    """CoverageJSON parameters: each element (unit, CF standard name) and its QC status."""
    from covjson_pydantic.observed_property import Category, ObservedProperty
    from covjson_pydantic.parameter import Parameter
    from covjson_pydantic.unit import Symbol, Unit

    parameters: dict[str, Any] = {}
    for info in elements:
        parameters[info.code] = Parameter(
            id=info.code, label={"en": info.name},
            description={"en": f"{info.name}; cell method: {info.cell_method or 'point'}"},
            observedProperty=ObservedProperty(
                id=f"https://vocab.nerc.ac.uk/standard_name/{info.standard_name}/",
                label={"en": info.standard_name},
            ),
            unit=Unit(label={"en": info.units}, symbol=Symbol(value=info.units, type="http://www.opengis.net/def/uom/UCUM/")),
        )
        parameters[info.code + QC_SUFFIX] = Parameter(
            id=info.code + QC_SUFFIX, label={"en": f"QC status of {info.code}"},
            observedProperty=ObservedProperty(
                label={"en": "quality control status"},
                categories=[Category(id=status, label={"en": status}) for status in QC_STATUSES],
            ),
            categoryEncoding={status: number for number, status in enumerate(QC_STATUSES)},
        )
    return parameters


@lru_cache(maxsize=256)
def _parameters_json(elements: tuple[ElementInfo, ...]) -> dict[str, Any]:
    """:func:`coverage_parameters` dumped (the same elements give the same document: cached)."""
    from covjson_pydantic.parameter import Parameters

    return Parameters(coverage_parameters(list(elements))).model_dump(mode="json", exclude_none=True)


def coverage_document(series: list[Series], elements: list[ElementInfo]) -> dict[str, Any]:
    """A CoverageCollection of PointSeries, ready for :func:`coverage_json`.

    The structure (domain, axes, reference systems, parameters, each range's type, axis names
    and shape) is built and checked with covjson-pydantic's models; the long arrays (the time
    axis and each range's values) are then put in as numpy arrays, typed by their dtypes
    (datetime64, float64, int16), rather than validated one value at a time.  A time with no
    value is null in the value range and in the QC range.
    """
    from covjson_pydantic.coverage import Coverage, CoverageCollection
    from covjson_pydantic.domain import Axes, Domain, DomainType
    from covjson_pydantic.ndarray import NdArrayFloat, NdArrayInt

    referencing = _referencing()
    number_axis, time_axis = _axis_models()
    documents = []
    for one in series:
        count = len(one.times)
        first = one.times[0].astype(datetime).replace(tzinfo=timezone.utc)
        # The models check the envelope with one value per array; numpy's arrays replace them below.
        ranges: dict[str, Any] = {}
        for code in one.values:
            ranges[code] = NdArrayFloat(axisNames=["t"], shape=[1], values=[None])
            ranges[code + QC_SUFFIX] = NdArrayInt(axisNames=["t"], shape=[1], values=[None])
        document = Coverage(
            id=f"{one.point.wigos_id}/{one.level:g}/{one.duration}",
            domain=Domain(
                domainType=DomainType.point_series,
                axes=Axes(x=number_axis(values=[one.point.longitude]),
                          y=number_axis(values=[one.point.latitude]),
                          z=number_axis(values=[one.level]),
                          t=time_axis(values=[first])),
                referencing=referencing,
            ),
            ranges=ranges,
            # Extra members (CoverageJSON allows them): what a client needs to name the series.
            wigos_id=one.point.wigos_id, station_name=one.point.name, duration_seconds=one.duration,
        ).model_dump(mode="json", exclude_none=True)
        for array in document["ranges"].values():
            array["shape"] = [count]
        document["domain"]["axes"]["t"]["values"] = one.times
        for code, values in one.values.items():
            document["ranges"][code]["values"] = values
            statuses = one.qc[code]
            missing = np.flatnonzero(statuses == _NO_QC)
            if missing.size:
                listed: list[int | None] = statuses.tolist()
                for index in missing.tolist():
                    listed[index] = None
                document["ranges"][code + QC_SUFFIX]["values"] = listed
            else:
                document["ranges"][code + QC_SUFFIX]["values"] = statuses
        documents.append(document)
    present = {name for document in documents for name in document["ranges"]}
    collection = CoverageCollection(domainType=DomainType.point_series, coverages=[],
                                    referencing=referencing).model_dump(mode="json", exclude_none=True)
    collection["coverages"] = documents
    parameters = _parameters_json(tuple(elements))
    collection["parameters"] = {name: parameter for name, parameter in parameters.items() if name in present}
    return collection


def coverage_json(document: dict[str, Any]) -> bytes:
    """A :func:`coverage_document` as JSON (numpy arrays natively; NaN and infinities are null)."""
    return orjson.dumps(document, option=ORJSON_OPTIONS)


def coverage_dict(document: dict[str, Any]) -> dict[str, Any]:
    """A :func:`coverage_document` with plain lists, strings and numbers (for pygeoapi's HTML
    page and our GeoJSON/CSV formatters): the JSON answer read back, so all formats agree."""
    return orjson.loads(coverage_json(document))


def _packed(column: sa.ColumnElement[Any]) -> sa.ColumnElement[bytes]:
    """A group's values of ``column`` (a ``*send()`` binary value each) concatenated into one bytea."""
    return sa.func.string_agg(column, sa.literal(b"", sa.LargeBinary), type_=sa.LargeBinary)


@dataclass(frozen=True)
class _Shape:
    """Which optional conditions a values query has (each shape is compiled once)."""

    start: bool
    end: bool
    levels: str | None  # "interval", "list" or None
    qc: bool


@lru_cache(maxsize=32)
def _values_statement(shape: _Shape) -> Any:
    """The values query of one shape, compiled: one row per station and element with values,
    the count and six packed columns.  Every value is a named bound parameter (arrays for the
    stations, elements, levels and QC statuses), so the text never depends on the request.

    A LATERAL subquery per (station, element) pair makes each pair one plain aggregate over an
    index scan (no GROUP BY, so no sort or hash of the rows); each pair reads at most
    ``MAX_VALUES + 1`` rows, and :func:`read_series` stops fetching pairs once the total passes it.
    """
    o = observation
    stations = (sa.func.unnest(sa.bindparam("stations", type_=ARRAY(sa.Integer)))
                .table_valued("id").render_derived(name="s"))
    elements = (sa.func.unnest(sa.bindparam("elements", type_=ARRAY(sa.SmallInteger)))
                .table_valued("id").render_derived(name="e"))
    conditions = [o.c.station_id == stations.c.id, o.c.element_id == elements.c.id, o.c.status == "latest"]
    if shape.start:
        conditions.append(o.c.phenomenon_time >= sa.bindparam("start", type_=sa.DateTime(timezone=True)))
    if shape.end:
        conditions.append(o.c.phenomenon_time < sa.bindparam("end", type_=sa.DateTime(timezone=True)))
    if shape.levels == "interval":
        conditions.append(o.c.level.between(sa.bindparam("low", type_=sa.REAL), sa.bindparam("high", type_=sa.REAL)))
    elif shape.levels == "list":
        conditions.append(o.c.level == sa.func.any(sa.bindparam("levels", type_=ARRAY(sa.REAL))))
    if shape.qc:
        conditions.append(o.c.qc_status == sa.func.any(sa.bindparam("statuses", type_=ARRAY(sa.Text))))
    qc_code = sa.cast(sa.case({status: number for number, status in enumerate(QC_STATUSES)},
                              value=o.c.qc_status, else_=_NO_QC), sa.SmallInteger)
    rows = (sa.select(o.c.phenomenon_time, o.c.duration_seconds, o.c.level, o.c.source_id,
                      sa.func.coalesce(o.c.value, sa.literal(math.nan, sa.Double)).label("value"),
                      qc_code.label("qc"))
            .where(*conditions)
            .limit(sa.bindparam("most", type_=sa.Integer))
            .correlate(stations, elements)
            .lateral("r"))
    packed = (sa.select(sa.func.count().label("count"),
                        _packed(sa.func.timestamptz_send(rows.c.phenomenon_time)).label("times"),
                        _packed(sa.func.int4send(rows.c.duration_seconds)).label("durations"),
                        _packed(sa.func.float4send(rows.c.level)).label("levels"),
                        _packed(sa.func.int2send(rows.c.source_id)).label("sources"),
                        _packed(sa.func.float8send(rows.c.value)).label("values"),
                        _packed(sa.func.int2send(rows.c.qc)).label("statuses"))
              .select_from(rows)
              .lateral("packed"))
    query = (sa.select(stations.c.id.label("station_id"), elements.c.id.label("element_id"), *packed.c)
             .select_from(stations.join(elements, sa.true()).join(packed, sa.true()))
             .where(packed.c.count > 0))
    return query.compile(dialect=postgresql_psycopg.dialect())


@dataclass(frozen=True)
class _Packed:
    """One station's element's values as PostgreSQL packed them."""

    station_id: int
    element_id: int
    count: int
    times: bytes
    durations: bytes
    levels: bytes
    sources: bytes
    values: bytes
    statuses: bytes


def read_series(chosen: list[StationPoint], elements: list[ElementInfo], interval: Interval | None,
                levels: Any, qc: list[str] | None, connection: sa.Connection | None = None) -> list[Series]:
    """The latest values of ``chosen`` stations, grouped per station, level and duration.

    PostgreSQL packs each station's and element's values into a few ``bytea`` (the binary
    representation of every time, duration, level, source, value and QC status, concatenated:
    :func:`_values_statement`), so one row arrives per station and element and numpy reads each
    column at once.  All aggregates of one group consume its rows in the same order, so the
    arrays line up; their order is then fixed here, not assumed.  Where several sources give
    the same value key, the lowest source id is served.  ``connection``: read on it (else on
    one of the pool's).
    """
    if connection is None:
        with runtime().datastore.engine.connect() as own:
            return read_series(chosen, elements, interval, levels, qc, own)
    by_station = {point.id: point for point in chosen}
    by_element = {info.id: info.code for info in elements}
    shape = _Shape(start=interval is not None and interval.start is not None,
                   end=interval is not None and interval.end is not None,
                   levels="interval" if isinstance(levels, tuple) else "list" if isinstance(levels, list) else None,
                   qc=qc is not None)
    statement = _values_statement(shape)
    given: dict[str, Any] = {"stations": sorted(by_station), "elements": sorted(by_element), "most": MAX_VALUES + 1}
    if shape.start:
        given["start"] = interval.start  # type: ignore[union-attr]
    if shape.end:
        given["end"] = interval.end  # type: ignore[union-attr]
    if shape.levels == "interval":
        given["low"], given["high"] = levels
    elif shape.levels == "list":
        given["levels"] = levels
    if shape.qc:
        given["statuses"] = qc
    parameters = statement.construct_params(given)
    groups: dict[tuple[int, float, int], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    total = 0
    # The driver's own cursor, for binary results (bytea as it is, not as hex text).  For
    # several pairs it is a cursor on the server, one pair per fetch, so a query over too
    # many values stops early (one pair alone stops at its LIMIT: no extra round trips).
    # The pool rolls the connection back when it is returned.
    driver = connection.connection.driver_connection
    if len(by_station) * len(by_element) == 1:
        cursor = driver.cursor(binary=True)  # type: ignore[union-attr]
    else:
        cursor = driver.cursor(name="opencdms_values", binary=True)  # type: ignore[union-attr]
        cursor.itersize = 1
    with cursor:
        cursor.execute(statement.string, parameters)
        for found in cursor:
            packed = _Packed(*found)
            total += packed.count
            if total > MAX_VALUES:
                raise ApiParameterError("datetime", f"more than {MAX_VALUES} values; ask for fewer stations, "
                                        "elements or a shorter period")
            for (duration, level), arrays in _unpack(packed):
                groups.setdefault((packed.station_id, level, duration), {})[by_element[packed.element_id]] = arrays
    series = [_series(by_station[station_id], level, duration, found)
              for (station_id, level, duration), found in groups.items()]
    return sorted(series, key=lambda one: (one.point.wigos_id, one.level, one.duration))


def _unpack(row: _Packed) -> Iterator[tuple[tuple[int, float], tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A station's element's packed values as (duration, level) -> (times, values, QC codes).

    Times ascend and are unique within each (duration, level); of values with the same key from
    several sources, the lowest source's is kept.
    """
    times = (np.frombuffer(row.times, ">i8").astype(np.int64) + POSTGRES_EPOCH_MICROSECONDS).view("datetime64[us]")
    durations = np.frombuffer(row.durations, ">i4").astype(np.int32)
    heights = np.frombuffer(row.levels, ">f4").astype(np.float32)
    values = np.frombuffer(row.values, ">f8").astype(np.float64)
    statuses = np.frombuffer(row.statuses, ">i2").astype(np.int16)
    uniform = bool((durations == durations[0]).all() and (heights == heights[0]).all())
    if uniform and (times.size == 1 or bool((times[1:] > times[:-1]).all())):
        # The usual case: one duration and level, in time order, so no key repeats.
        yield (int(durations[0]), _level(heights[0])), (times, values, statuses)
        return
    sources = np.frombuffer(row.sources, ">i2").astype(np.int16)
    order = np.lexsort((sources, times, heights, durations))  # the last key sorts first
    times, durations, heights, values, statuses = (array[order] for array in (times, durations, heights, values,
                                                                               statuses))
    new_series = np.ones(times.size, dtype=bool)
    new_series[1:] = (durations[1:] != durations[:-1]) | (heights[1:] != heights[:-1])
    first_of_key = new_series.copy()
    first_of_key[1:] |= times[1:] != times[:-1]
    starts = np.flatnonzero(new_series).tolist() + [times.size]
    for begin, end in zip(starts[:-1], starts[1:]):
        keep = begin + np.flatnonzero(first_of_key[begin:end])
        yield (int(durations[begin]), _level(heights[begin])), (times[keep], values[keep], statuses[keep])


def _level(height: np.float32) -> float:
    """A REAL level as the float PostgreSQL prints for it (0.1, not 0.10000000149011612)."""
    return float(str(height))


def _series(point: StationPoint, level: float, duration: int,
            found: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Series:
    """One series from its elements' arrays: one time axis, each element's values placed on it."""
    axes = [times for times, _, _ in found.values()]
    if all(np.array_equal(axes[0], other) for other in axes[1:]):
        return Series(point, level, duration, axes[0], {code: v for code, (_, v, _) in found.items()},
                      {code: q for code, (_, _, q) in found.items()})
    union = np.unique(np.concatenate(axes))
    values: dict[str, np.ndarray] = {}
    statuses: dict[str, np.ndarray] = {}
    for code, (times, numbers, codes) in found.items():
        slots = np.searchsorted(union, times)
        values[code] = np.full(union.size, np.nan)
        values[code][slots] = numbers
        statuses[code] = np.full(union.size, _NO_QC, dtype=np.int16)
        statuses[code][slots] = codes
    return Series(point, level, duration, union, values, statuses)


class ObservationsEDRProvider(BaseEDRProvider):
    """EDR queries over ``observation`` (latest versions)."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_definition(provider_def))
        self._fields = {}

    def get_fields(self) -> dict[str, dict[str, Any]]:
        with provider_errors():
            if not self._fields:
                self._fields = element_fields()
            return self._fields

    @property
    def fields(self) -> dict[str, dict[str, Any]]:
        return self.get_fields()

    def get_parameters(self, parameters: Any = (), as_list: bool = False) -> Any:
        """Collection ``parameter_names``: each element with its unit and CF standard name (the
        ``_qc`` companions every answer carries are described in the collection's description)."""
        with provider_errors():
            built = {name: parameter.model_dump(mode="json", exclude_none=True)
                     for name, parameter in coverage_parameters(list(known_elements().values())).items()
                     if not name.endswith(QC_SUFFIX)}
        for parameter in built.values():
            parameter["name"] = parameter["label"]["en"]
        return list(built.values()) if as_list else built

    # ---- the queries (pygeoapi finds them by name)

    def position(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            points = _points(kwargs.get("wkt"))
            if len(points) > MAX_POSITION_POINTS:
                raise ApiParameterError("coords", f"at most {MAX_POSITION_POINTS} positions")
            tolerance = POSITION_TOLERANCE_DEGREES
            near = sa.or_(*(sa.and_(station.c.longitude.between(x - tolerance, x + tolerance),
                                    station.c.latitude.between(y - tolerance, y + tolerance)) for x, y in points))
            return self._coverage(near, **kwargs)

    def radius(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            points = _points(kwargs.get("wkt"))
            within, units = kwargs.get("within"), (kwargs.get("within_units") or "km").lower()
            if units not in DISTANCE_UNITS_KM:
                raise ApiParameterError("within-units", f"one of {', '.join(DISTANCE_UNITS_KM)}")
            try:
                distance = float(within) * DISTANCE_UNITS_KM[units]
            except (TypeError, ValueError) as exc:
                raise ApiParameterError("within", "a distance (a number) is required") from exc
            if not (math.isfinite(distance) and 0 <= distance <= 20_100):
                raise ApiParameterError("within", "between 0 and half the Earth's circumference")
            return self._coverage(sa.true(), lambda s: any(
                haversine_km(x, y, s.longitude, s.latitude) <= distance for x, y in points), **kwargs)

    def area(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            from shapely.geometry import Point

            shape = kwargs.get("wkt")
            if getattr(shape, "geom_type", None) not in ("Polygon", "MultiPolygon") or not shape.is_valid:
                raise ApiParameterError("coords", "a valid POLYGON or MULTIPOLYGON is needed")
            minx, miny, maxx, maxy = shape.bounds
            return self._coverage(bbox_condition([minx, miny, maxx, maxy], station.c.longitude, station.c.latitude),
                                  lambda s: shape.covers(Point(s.longitude, s.latitude)), **kwargs)

    def cube(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            return self._coverage(bbox_condition(kwargs.get("bbox"), station.c.longitude, station.c.latitude), **kwargs)

    def locations(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            location_id = kwargs.get("location_id")
            if location_id:
                return self._coverage(station.c.wigos_id == str(location_id),
                                      not_found=f"no station {str(location_id)[:40]!r}", **kwargs)
            chosen = _stations(bbox_condition(kwargs.get("bbox"), station.c.longitude, station.c.latitude))
            limit = kwargs.get("limit") or len(chosen)
            features = [point_feature(s.wigos_id, s.longitude, s.latitude, {"name": s.name, "wigos_id": s.wigos_id})
                        for s in chosen[:limit]]
            return {"type": "FeatureCollection", "features": features}

    # ---- reading the values

    def _coverage(self, where: sa.ColumnElement[bool], keep: Callable[[StationPoint], bool] | None = None, *,
                  not_found: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """The coverage of the stations ``where`` selects (and ``keep`` keeps), read on one
        connection; ``not_found``: the 404 message when no station matches (a named location)."""
        elements = _parameter_codes(kwargs.get("select_properties"))
        interval = parse_datetime(kwargs.get("datetime_"))
        levels = _levels(kwargs.get("z"))
        qc = _qc_filter()
        with runtime().datastore.engine.connect() as connection:
            chosen = [point for point in _stations(where, connection) if keep is None or keep(point)]
            if not chosen:
                if not_found is not None:
                    raise ProviderItemNotFoundError(user_msg=not_found)
                raise ProviderNoDataError(user_msg="no station at the place asked for")
            series = read_series(chosen, elements, interval, levels, qc, connection)
        if not series:
            raise ProviderNoDataError(user_msg="no values match the query")
        document = coverage_document(series, elements)
        # CoverageJSON (pygeoapi's f=json): our serialisation goes out as it is, and pygeoapi
        # serialises a stand-in (its json.dumps would cost more than everything else).
        if kwargs.get("format_") in COVERAGE_JSON_FORMATS and offer_body(coverage_json(document)):
            return {"type": "CoverageCollection", "coverages": []}
        return coverage_dict(document)



# --------------------------------------------------------------------------- items


ITEM_FIELDS: dict[str, dict[str, Any]] = {
    "wigos_id": {"type": "string", "title": "WIGOS station identifier"},
    "element": {"type": "string", "title": "Element code"},
    "phenomenon_time": {"type": "string", "format": "date-time", "title": "Phenomenon time"},
    "duration_seconds": {"type": "integer", "title": "Duration (s)", "minimum": 0},
    "level": {"type": "number", "title": "Level (m)"},
    "source_id": {"type": "integer", "title": "Source", "minimum": 0, "maximum": 32767},
    "value": {"type": "number", "title": "Value"},
    "qc_status": {"type": "string", "title": "QC status"},
    "version": {"type": "integer", "title": "Version"},
}


def _item_columns() -> dict[str, sa.ColumnElement[Any]]:
    o = observation
    return {
        "wigos_id": station.c.wigos_id, "element": element.c.code, "phenomenon_time": o.c.phenomenon_time,
        "duration_seconds": o.c.duration_seconds, "level": o.c.level, "source_id": o.c.source_id,
        "value": o.c.value, "qc_status": o.c.qc_status, "version": o.c.version,
    }


def _item_id(row: Any) -> str:
    return (f"{row.wigos_id}~{row.element}~{iso(row.phenomenon_time)}~{row.duration_seconds}"
            f"~{row.level:g}~{row.source_id}")


class ObservationItemsProvider(BaseProvider):
    """Each latest observation as a feature (``/collections/observations/items``)."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_definition(provider_def))
        self._fields = dict(ITEM_FIELDS)

    def get_fields(self) -> dict[str, dict[str, Any]]:
        return dict(ITEM_FIELDS)

    def _select(self) -> Any:
        o = observation
        return (sa.select(station.c.wigos_id, station.c.longitude, station.c.latitude, element.c.code.label("element"),
                          o.c.phenomenon_time, o.c.duration_seconds, o.c.level, o.c.source_id, o.c.value,
                          o.c.qc_status, o.c.version)
                .select_from(o.join(station, station.c.id == o.c.station_id).join(element, element.c.id == o.c.element_id))
                .where(o.c.status == "latest"))

    def _feature(self, row: Any, skip_geometry: bool = False, wanted: list[str] | None = None) -> dict[str, Any]:
        properties = {
            "wigos_id": row.wigos_id, "element": row.element, "phenomenon_time": iso(row.phenomenon_time),
            "duration_seconds": row.duration_seconds, "level": row.level, "source_id": row.source_id,
            "value": json_number(row.value), "qc_status": row.qc_status, "version": row.version,
        }
        return point_feature(_item_id(row), row.longitude, row.latitude, only(properties, wanted),
                             skip_geometry=skip_geometry)

    def query(self, offset: int = 0, limit: int = 10, resulttype: str = "results", bbox: list[float] | None = None,
              datetime_: str | None = None, properties: list[tuple[str, Any]] | None = None,
              sortby: list[dict[str, str]] | None = None, select_properties: list[str] | None = None,
              skip_geometry: bool = False, q: str | None = None, filterq: Any = None, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            columns = _item_columns()
            conditions = [bbox_condition(bbox, station.c.longitude, station.c.latitude)]
            interval = parse_datetime(datetime_)
            if interval is not None:
                conditions.append(interval.condition(observation.c.phenomenon_time))
            conditions += property_conditions(properties or [], columns, ITEM_FIELDS)
            if filterq is not None:
                conditions.append(cql_condition(filterq, columns, ITEM_FIELDS))
            base = self._select().where(*conditions)
            with runtime().datastore.engine.connect() as connection:
                # Counting every matching value of a large store would cost more than the page.
                matched = None
                if resulttype == "hits":
                    matched = connection.execute(sa.select(sa.func.count()).select_from(base.subquery())).scalar_one()
                    return {"type": "FeatureCollection", "features": [], "numberMatched": matched, "numberReturned": 0}
                query = base.order_by(*order_by(sortby or [], columns), observation.c.station_id,
                                      observation.c.element_id, observation.c.phenomenon_time,
                                      observation.c.duration_seconds, observation.c.level,
                                      observation.c.source_id).offset(offset).limit(limit)
                rows = connection.execute(query).all()
            features = [self._feature(row, skip_geometry, select_properties) for row in rows]
            return {"type": "FeatureCollection", "features": features, "numberReturned": len(features)}

    def get(self, identifier: str, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            parts = str(identifier).split("~")
            if len(parts) != 6:
                raise ProviderItemNotFoundError(user_msg="an observation id is wigos~element~time~duration~level~source")
            wigos_id, code, when, duration, level, source = parts
            interval = parse_datetime(when, "id")
            try:
                duration_value, level_value, source_value = int(duration), float(level), int(source)
                if not (0 <= duration_value < 2**31 and 0 <= source_value <= 32767 and math.isfinite(level_value)):
                    raise ValueError("out of range")
            except ValueError as exc:
                raise ProviderItemNotFoundError(user_msg="malformed observation id") from exc
            o = observation
            query = self._select().where(
                station.c.wigos_id == wigos_id, element.c.code == code,
                interval.condition(o.c.phenomenon_time) if interval else sa.false(),
                o.c.duration_seconds == duration_value, o.c.level == level_value, o.c.source_id == source_value)
            with runtime().datastore.engine.connect() as connection:
                row = connection.execute(query).first()
        if row is None:
            raise ProviderItemNotFoundError(user_msg="no such observation")
        return self._feature(row)
