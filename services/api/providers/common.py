"""Pieces every provider shares: time parameters, CQL2 to SQL, sort keys, GeoJSON.

SQL is built with SQLAlchemy Core: every value a client sends is a bound parameter, and every
column a client names (property filters, ``sortby``, CQL2 attributes) is looked up in the
provider's own mapping of field name to column, so nothing a client sends is ever SQL text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Iterable, Mapping

import sqlalchemy as sa

from services.api.errors import ApiParameterError

_CRS: dict[str, Any] = {}


def provider_definition(provider_def: dict[str, Any]) -> dict[str, Any]:
    """``provider_def`` with its storage CRS as a parsed ``pyproj.CRS``, made once per process.

    pygeoapi builds a provider object for every request, and its ``BaseProvider.__init__``
    parses the storage CRS from its URI each time (about 1.4 ms, pyproj); given a ``pyproj.CRS``
    it uses it as it is.  pyproj's CRS objects are thread-safe (pyproj >= 3.1).
    """
    from pygeoapi.crs import DEFAULT_STORAGE_CRS, get_crs

    uri = str(provider_def.get("storage_crs", DEFAULT_STORAGE_CRS))
    crs = _CRS.get(uri)
    if crs is None:
        crs = _CRS[uri] = get_crs(uri)
    return {**provider_def, "storage_crs": crs}

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}:?\d{2})?$")


@dataclass(frozen=True)
class Interval:
    """A half-open UTC interval [start, end); None is open."""

    start: datetime | None
    end: datetime | None

    def condition(self, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """``column`` inside the interval, as a bound SQL condition."""
        clauses = []
        if self.start is not None:
            clauses.append(column >= self.start)
        if self.end is not None:
            clauses.append(column < self.end)
        return sa.and_(sa.true(), *clauses)


def _instant(text: str, parameter: str, *, end: bool) -> datetime:
    """One ISO 8601 date or date-time, in UTC; a date is its day's start (or, as an end, the next day's)."""
    text = text.strip()
    try:
        if _DATE.match(text):
            day = date.fromisoformat(text)
            start = datetime.combine(day, time(0), tzinfo=timezone.utc)
            return start + timedelta(days=1) if end else start
        if _DATETIME.match(text):
            value = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
            if value.tzinfo is None:
                value = value.replace(tzinfo=timezone.utc)
            return value.astimezone(timezone.utc)
    except (ValueError, OverflowError) as exc:
        raise ApiParameterError(parameter, f"{text[:40]!r} is not a valid date or time ({exc})") from exc
    raise ApiParameterError(parameter, f"{text[:40]!r} is not an ISO 8601 date or date-time (e.g. 2020-01-31T06:00:00Z)")


def parse_datetime(text: str | None, parameter: str = "datetime") -> Interval | None:
    """``datetime`` as an interval: an instant (a date: that whole day), ``a/b``, ``../b``, ``a/..``.

    An instant with a time is exactly that instant: [t, t + 1 µs).
    """
    if text is None or text == "":
        return None
    if len(text) > 100:
        raise ApiParameterError(parameter, "too long for a date, a time or an interval")
    if "/" in text:
        parts = text.split("/")
        if len(parts) != 2:
            raise ApiParameterError(parameter, "an interval is start/end (either may be '..')")
        first, last = (part.strip() for part in parts)
        start = None if first in ("", "..") else _instant(first, parameter, end=False)
        stop = None if last in ("", "..") else _instant(last, parameter, end=True)
        if stop is not None and _DATETIME.match(last):
            stop = stop + timedelta(microseconds=1)  # an end time is included
        if start is not None and stop is not None and stop <= start:
            raise ApiParameterError(parameter, "the interval ends before it starts")
        return Interval(start, stop)
    if _DATE.match(text.strip()):
        return Interval(_instant(text, parameter, end=False), _instant(text, parameter, end=True))
    moment = _instant(text, parameter, end=False)
    return Interval(moment, moment + timedelta(microseconds=1))


def iso(value: datetime | date | None) -> str | None:
    """RFC 3339 text (UTC, ``Z``) of a time, or a date as YYYY-MM-DD."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.isoformat()


def json_number(value: Any) -> float | None:
    """A float JSON can carry (NaN and infinities become null)."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


# --------------------------------------------------------------------------- filters


def typed_value(field: str, schema: Mapping[str, Any], text: Any) -> Any:
    """A query-string value converted to the field's JSON type, or ApiParameterError."""
    kind = schema.get("type")
    try:
        if kind == "number":
            number = float(text)
            if not math.isfinite(number):
                raise ValueError("not finite")
            return number
        if kind == "integer":
            number = int(text)
            low, high = schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1)
            if not low <= number <= high:
                raise ValueError(f"outside {low}..{high}")
            return number
        if schema.get("format") == "date":
            return date.fromisoformat(str(text))
        if schema.get("format") == "date-time":
            return _instant(str(text), field, end=False)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ApiParameterError(field, f"{str(text)[:40]!r} is not a valid {schema.get('format') or kind}") from exc
    value = str(text)
    if len(value) > 1000:
        raise ApiParameterError(field, "longer than 1,000 characters")
    if "\x00" in value:
        raise ApiParameterError(field, "a NUL character is not allowed")
    return value


def property_conditions(
    properties: Iterable[tuple[str, Any]], columns: Mapping[str, sa.ColumnElement[Any]],
    fields: Mapping[str, Mapping[str, Any]],
) -> list[sa.ColumnElement[bool]]:
    """``name=value`` filters on known fields (pygeoapi passes only those) as bound equalities."""
    conditions = []
    for name, value in properties:
        if name not in columns:
            raise ApiParameterError(name, "not a queryable property of this collection")
        conditions.append(columns[name] == typed_value(name, fields.get(name, {}), value))
    return conditions


def order_by(
    sortby: Iterable[Mapping[str, str]], columns: Mapping[str, sa.ColumnElement[Any]]
) -> list[sa.ColumnElement[Any]]:
    """``sortby`` entries (pygeoapi checked their names against the fields) as ORDER BY terms."""
    terms = []
    for entry in sortby or []:
        name = entry.get("property")
        if name not in columns:
            raise ApiParameterError("sortby", f"{str(name)[:40]!r} is not a sortable property")
        column = columns[name]
        terms.append(column.desc().nulls_last() if entry.get("order") == "-" else column.asc().nulls_last())
    return terms


def cql_condition(
    node: Any, columns: Mapping[str, sa.ColumnElement[Any]], fields: Mapping[str, Mapping[str, Any]]
) -> sa.ColumnElement[bool]:
    """A CQL2 filter (pygeofilter's AST, as pygeoapi parsed it) as a bound SQL condition.

    Comparisons, BETWEEN, LIKE, IN, IS NULL, AND/OR/NOT on the collection's properties; spatial
    and temporal operators are refused with a 400 that says to use ``bbox`` and ``datetime``.
    """
    from pygeofilter import ast, values

    def value(item: Any, field: str) -> Any:
        if isinstance(item, ast.Attribute):
            raise ApiParameterError("filter", "comparing two properties is not supported")
        if isinstance(item, (values.Geometry, values.Envelope)):
            raise ApiParameterError("filter", "spatial filters are not supported here; use bbox")
        if isinstance(item, (bool, int, float, str, date, datetime)):
            if isinstance(item, str):
                return typed_value(field, fields.get(field, {}), item)
            if isinstance(item, datetime) and item.tzinfo is None:
                return item.replace(tzinfo=timezone.utc)
            return item
        raise ApiParameterError("filter", f"unsupported value {type(item).__name__}")

    def column(item: Any) -> tuple[str, sa.ColumnElement[Any]]:
        if not isinstance(item, ast.Attribute):
            raise ApiParameterError("filter", "the left side of a comparison must be a property")
        if item.name not in columns:
            raise ApiParameterError("filter", f"{str(item.name)[:40]!r} is not a queryable property")
        return item.name, columns[item.name]

    def walk(item: Any) -> sa.ColumnElement[bool]:
        if isinstance(item, ast.And):
            return sa.and_(walk(item.lhs), walk(item.rhs))
        if isinstance(item, ast.Or):
            return sa.or_(walk(item.lhs), walk(item.rhs))
        if isinstance(item, ast.Not):
            return sa.not_(walk(item.sub_node))
        if isinstance(item, ast.Comparison):
            name, col = column(item.lhs)
            right = value(item.rhs, name)
            operators = {
                ast.Equal: col.__eq__, ast.NotEqual: col.__ne__, ast.LessThan: col.__lt__,
                ast.LessEqual: col.__le__, ast.GreaterThan: col.__gt__, ast.GreaterEqual: col.__ge__,
            }
            return operators[type(item)](right)
        if isinstance(item, ast.Between):
            name, col = column(item.lhs)
            clause = col.between(value(item.low, name), value(item.high, name))
            return sa.not_(clause) if item.not_ else clause
        if isinstance(item, ast.Like):
            name, col = column(item.lhs)
            pattern = str(item.pattern)
            # CQL2 wildcards (% and _ by default, or the declared ones) to SQL LIKE, escaping the rest.
            translated = "".join(
                "%" if char == item.wildcard else "_" if char == item.singlechar
                else "\\" + char if char in "%_\\" else char
                for char in pattern
            )
            target = sa.cast(col, sa.Text)
            clause = target.ilike(translated, escape="\\") if item.nocase else target.like(translated, escape="\\")
            return sa.not_(clause) if item.not_ else clause
        if isinstance(item, ast.In):
            name, col = column(item.lhs)
            clause = col.in_([value(sub, name) for sub in item.sub_nodes])
            return sa.not_(clause) if item.not_ else clause
        if isinstance(item, ast.IsNull):
            _, col = column(item.lhs)
            return col.is_not(None) if item.not_ else col.is_(None)
        if isinstance(item, ast.Include):
            return sa.false() if item.not_ else sa.true()
        if isinstance(item, (ast.SpatialComparisonPredicate, ast.SpatialDistancePredicate, ast.BBox)):
            raise ApiParameterError("filter", "spatial filters are not supported here; use bbox")
        if isinstance(item, ast.TemporalPredicate):
            raise ApiParameterError("filter", "temporal operators are not supported here; use datetime")
        raise ApiParameterError("filter", f"the operator {type(item).__name__} is not supported here")

    return walk(node)


def bbox_condition(
    bbox: list[float] | None, longitude: sa.ColumnElement[Any], latitude: sa.ColumnElement[Any]
) -> sa.ColumnElement[bool]:
    """Points inside ``bbox`` (minx, miny, maxx, maxy; a box across the antimeridian has minx > maxx)."""
    if not bbox:
        return sa.true()
    if len(bbox) == 6:
        bbox = [bbox[0], bbox[1], bbox[3], bbox[4]]
    minx, miny, maxx, maxy = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise ApiParameterError("bbox", "coordinates must be finite numbers")
    if miny > maxy:
        raise ApiParameterError("bbox", "the south edge is north of the north edge")
    latitude_ok = latitude.between(miny, maxy)
    if minx <= maxx:
        return sa.and_(latitude_ok, longitude.between(minx, maxx))
    return sa.and_(latitude_ok, sa.or_(longitude >= minx, longitude <= maxx))


def point_feature(identifier: Any, longitude: float, latitude: float, properties: dict[str, Any],
                  *, skip_geometry: bool = False, elevation: float | None = None) -> dict[str, Any]:
    """A GeoJSON point feature."""
    coordinates = [longitude, latitude] if elevation is None else [longitude, latitude, elevation]
    return {
        "type": "Feature",
        "id": identifier,
        "geometry": None if skip_geometry else {"type": "Point", "coordinates": coordinates},
        "properties": properties,
    }


def select_properties(properties: dict[str, Any], wanted: list[str] | None) -> dict[str, Any]:
    """Only the properties asked for (``properties=a,b``), all when none were named."""
    if not wanted:
        return properties
    return {key: value for key, value in properties.items() if key in wanted}
