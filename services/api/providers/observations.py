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
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable

import sqlalchemy as sa
from pygeoapi.provider.base import BaseProvider, ProviderItemNotFoundError, ProviderNoDataError
from pygeoapi.provider.base_edr import BaseEDRProvider

from opencdms_kernel.db.schema import element, observation, station
from services.api.context import request_parameter
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
    select_properties as only,
)
from services.api.runtime import runtime

QC_STATUSES = ("none", "passed", "suspect", "failed")
QC_SUFFIX = "_qc"
MAX_VALUES = 2_000_000  # one answer; beyond it the client is asked to narrow the query
POSITION_TOLERANCE_DEGREES = 0.01  # a position names the stations within about a kilometre
DISTANCE_UNITS_KM = {"km": 1.0, "m": 0.001, "mi": 1.609344, "nm": 1.852}
EARTH_RADIUS_KM = 6371.0088
_CACHE_SECONDS = 60.0


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


def _stations(condition: sa.ColumnElement[bool] = sa.true()) -> list[StationPoint]:
    query = sa.select(station.c.id, station.c.wigos_id, station.c.name, station.c.longitude, station.c.latitude,
                      station.c.elevation).where(condition).order_by(station.c.wigos_id)
    with runtime().datastore.engine.connect() as connection:
        return [StationPoint(*row) for row in connection.execute(query)]


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


class _Series:
    """Values of one station, level and duration, by time and element."""

    def __init__(self, point: StationPoint, level: float, duration: int) -> None:
        self.point = point
        self.level = level
        self.duration = duration
        self.times: list[datetime] = []
        self.index: dict[datetime, int] = {}
        self.values: dict[str, dict[int, tuple[float | None, str]]] = {}

    def add(self, code: str, when: datetime, value: float | None, qc: str) -> None:
        slot = self.index.get(when)
        if slot is None:
            slot = self.index[when] = len(self.times)
            self.times.append(when)
        self.values.setdefault(code, {})[slot] = (value, qc)


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


def build_coverage(series: list[_Series], elements: list[ElementInfo]) -> dict[str, Any]:
    """A CoverageCollection of PointSeries (covjson-pydantic models), as a dict."""
    from covjson_pydantic.coverage import Coverage, CoverageCollection
    from covjson_pydantic.domain import Axes, Domain, DomainType, ValuesAxis
    from covjson_pydantic.ndarray import NdArrayFloat, NdArrayInt
    from covjson_pydantic.parameter import Parameters
    from covjson_pydantic.reference_system import ReferenceSystem, ReferenceSystemConnectionObject

    referencing = [
        ReferenceSystemConnectionObject(coordinates=["x", "y"], system=ReferenceSystem(
            type="GeographicCRS", id="http://www.opengis.net/def/crs/OGC/1.3/CRS84")),
        ReferenceSystemConnectionObject(coordinates=["t"], system=ReferenceSystem(type="TemporalRS", calendar="Gregorian")),
    ]
    codes = [info.code for info in elements]
    qc_number = {status: number for number, status in enumerate(QC_STATUSES)}
    coverages = []
    for one in series:
        order = sorted(range(len(one.times)), key=one.times.__getitem__)
        times = [one.times[i] for i in order]
        ranges: dict[str, Any] = {}
        for code in codes:
            by_slot = one.values.get(code)
            if by_slot is None:
                continue
            values = [by_slot.get(i, (None, None)) for i in order]
            ranges[code] = NdArrayFloat(axisNames=["t"], shape=[len(times)], values=[v for v, _ in values])
            ranges[code + QC_SUFFIX] = NdArrayInt(axisNames=["t"], shape=[len(times)],
                                                  values=[qc_number.get(q) if q else None for _, q in values])
        coverages.append(Coverage(
            id=f"{one.point.wigos_id}/{one.level:g}/{one.duration}",
            domain=Domain(
                domainType=DomainType.point_series,
                axes=Axes(x=ValuesAxis[float](values=[one.point.longitude]),
                          y=ValuesAxis[float](values=[one.point.latitude]),
                          z=ValuesAxis[float](values=[one.level]),
                          t=ValuesAxis[datetime](values=times)),
                referencing=referencing,
            ),
            ranges=ranges,
            # Extra members (CoverageJSON allows them): what a client needs to name the series.
            wigos_id=one.point.wigos_id, station_name=one.point.name, duration_seconds=one.duration,
        ))
    parameters = {name: parameter for name, parameter in coverage_parameters(elements).items()
                  if any(name in coverage.ranges for coverage in coverages)}
    collection = CoverageCollection(domainType=DomainType.point_series, coverages=coverages,
                                    parameters=Parameters(parameters), referencing=referencing)
    return collection.model_dump(mode="json", exclude_none=True)


class ObservationsEDRProvider(BaseEDRProvider):
    """EDR queries over ``observation`` (latest versions)."""

    def __init__(self, provider_def: dict[str, Any]) -> None:
        super().__init__(provider_def)
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
            chosen = [s for s in _stations() if any(
                abs(s.longitude - x) <= POSITION_TOLERANCE_DEGREES and abs(s.latitude - y) <= POSITION_TOLERANCE_DEGREES
                for x, y in points)]
            return self._coverage(chosen, **kwargs)

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
            chosen = [s for s in _stations() if any(
                haversine_km(x, y, s.longitude, s.latitude) <= distance for x, y in points)]
            return self._coverage(chosen, **kwargs)

    def area(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            from shapely.geometry import Point

            shape = kwargs.get("wkt")
            if getattr(shape, "geom_type", None) not in ("Polygon", "MultiPolygon") or not shape.is_valid:
                raise ApiParameterError("coords", "a valid POLYGON or MULTIPOLYGON is needed")
            minx, miny, maxx, maxy = shape.bounds
            candidates = _stations(bbox_condition([minx, miny, maxx, maxy], station.c.longitude, station.c.latitude))
            chosen = [s for s in candidates if shape.covers(Point(s.longitude, s.latitude))]
            return self._coverage(chosen, **kwargs)

    def cube(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            chosen = _stations(bbox_condition(kwargs.get("bbox"), station.c.longitude, station.c.latitude))
            return self._coverage(chosen, **kwargs)

    def locations(self, **kwargs: Any) -> dict[str, Any]:
        with provider_errors():
            location_id = kwargs.get("location_id")
            if location_id:
                chosen = _stations(station.c.wigos_id == str(location_id))
                if not chosen:
                    raise ProviderItemNotFoundError(user_msg=f"no station {str(location_id)[:40]!r}")
                return self._coverage(chosen, **kwargs)
            chosen = _stations(bbox_condition(kwargs.get("bbox"), station.c.longitude, station.c.latitude))
            limit = kwargs.get("limit") or len(chosen)
            features = [point_feature(s.wigos_id, s.longitude, s.latitude, {"name": s.name, "wigos_id": s.wigos_id})
                        for s in chosen[:limit]]
            return {"type": "FeatureCollection", "features": features}

    # ---- reading the values

    def _coverage(self, chosen: list[StationPoint], **kwargs: Any) -> dict[str, Any]:
        elements = _parameter_codes(kwargs.get("select_properties"))
        interval = parse_datetime(kwargs.get("datetime_"))
        levels = _levels(kwargs.get("z"))
        qc = _qc_filter()
        if not chosen:
            raise ProviderNoDataError(user_msg="no station at the place asked for")
        series = read_series(chosen, elements, interval, levels, qc)
        if not series:
            raise ProviderNoDataError(user_msg="no values match the query")
        return build_coverage(series, elements)


def read_series(chosen: list[StationPoint], elements: list[ElementInfo], interval: Interval | None,
                levels: Any, qc: list[str] | None) -> list[_Series]:
    """The latest values of ``chosen`` stations, grouped per station, level and duration."""
    o = observation
    by_station = {point.id: point for point in chosen}
    by_element = {info.id: info.code for info in elements}
    conditions = [o.c.status == "latest", o.c.station_id.in_(list(by_station)), o.c.element_id.in_(list(by_element))]
    if interval is not None:
        conditions.append(interval.condition(o.c.phenomenon_time))
    if isinstance(levels, tuple):
        conditions.append(o.c.level.between(levels[0], levels[1]))
    elif isinstance(levels, list):
        conditions.append(o.c.level.in_(levels))
    if qc is not None:
        conditions.append(o.c.qc_status.in_(qc))
    key = (o.c.station_id, o.c.element_id, o.c.phenomenon_time, o.c.duration_seconds, o.c.level)
    query = (sa.select(o.c.station_id, o.c.level, o.c.duration_seconds, o.c.element_id, o.c.phenomenon_time,
                       o.c.value, o.c.qc_status)
             .where(*conditions)
             .distinct(*key)
             .order_by(*key, o.c.source_id)
             .limit(MAX_VALUES + 1))
    groups: dict[tuple[int, float, int], _Series] = {}
    count = 0
    with runtime().datastore.engine.connect() as connection:
        for station_id, level, duration, element_id, when, value, qc_status in connection.execute(query):
            count += 1
            if count > MAX_VALUES:
                raise ApiParameterError("datetime", f"more than {MAX_VALUES} values; ask for fewer stations, "
                                        "elements or a shorter period")
            group = groups.get((station_id, level, duration))
            if group is None:
                group = groups[(station_id, level, duration)] = _Series(by_station[station_id], level, duration)
            group.add(by_element[element_id], when, json_number(value), qc_status)
    return [groups[key] for key in sorted(groups, key=lambda k: (by_station[k[0]].wigos_id, k[1], k[2]))]


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
        super().__init__(provider_def)
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
