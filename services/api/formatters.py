"""GeoJSON and CSV made from an EDR CoverageJSON answer (``f=geojson``, ``f=csv``).

One row (CSV) or feature (GeoJSON) per station, level, duration and time, with every element's
value and QC status as columns/properties.  A FeatureCollection (the ``items`` and
``locations`` answers of the same collection) passes through as GeoJSON and is flattened to CSV.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from pygeoapi.formatter.base import BaseFormatter, FormatterSerializationError

QC_SUFFIX = "_qc"


def coverage_rows(document: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One dict per station, level, duration and time of a CoverageCollection (or Coverage)."""
    coverages = document.get("coverages") if document.get("type") == "CoverageCollection" else [document]
    parameters = document.get("parameters") or {}
    for coverage in coverages or []:
        axes = coverage["domain"]["axes"]
        x, y = axes["x"]["values"][0], axes["y"]["values"][0]
        z = axes.get("z", {}).get("values", [None])[0]
        times = axes["t"]["values"]
        ranges = coverage["ranges"]
        names = [name for name in ranges if not name.endswith(QC_SUFFIX)]
        categories: dict[str, dict[int, str]] = {}
        for name in ranges:
            if name.endswith(QC_SUFFIX):
                encoding = (parameters.get(name) or coverage.get("parameters", {}).get(name) or {}).get("categoryEncoding", {})
                categories[name] = {number: label for label, number in encoding.items()}
        for index, when in enumerate(times):
            row: dict[str, Any] = {"wigos_id": coverage.get("wigos_id"), "longitude": x, "latitude": y, "level": z,
                                   "duration_seconds": coverage.get("duration_seconds"), "time": when}
            for name in names:
                row[name] = ranges[name]["values"][index]
                qc = ranges.get(name + QC_SUFFIX)
                if qc is not None:
                    number = qc["values"][index]
                    row[name + QC_SUFFIX] = categories.get(name + QC_SUFFIX, {}).get(number) if number is not None else None
            yield row


def _features(document: dict[str, Any]) -> list[dict[str, Any]]:
    if document.get("type") == "FeatureCollection":
        return document.get("features", [])
    return [
        {"type": "Feature", "id": f"{row['wigos_id']}~{row['level']}~{row['duration_seconds']}~{row['time']}",
         "geometry": {"type": "Point", "coordinates": [row.pop("longitude"), row.pop("latitude")]},
         "properties": row}
        for row in coverage_rows(document)
    ]


class CoverageGeoJSONFormatter(BaseFormatter):
    """``f=geojson``: a FeatureCollection of points, one per station and time."""

    def __init__(self, formatter_def: dict[str, Any]) -> None:
        super().__init__({**formatter_def, "name": "geojson"})
        self.f = "geojson"
        self.mimetype = "application/geo+json"
        self.extension = "geojson"

    def write(self, options: dict[str, Any] = {}, data: dict[str, Any] | None = None) -> str:  # noqa: B006 - pygeoapi's signature
        if not isinstance(data, dict):
            raise FormatterSerializationError("nothing to format")
        if data.get("type") == "FeatureCollection":
            return json.dumps(data)
        return json.dumps({"type": "FeatureCollection", "features": _features(data)})


class CoverageCSVFormatter(BaseFormatter):
    """``f=csv``: one row per station, level, duration and time; a column per element and QC status."""

    def __init__(self, formatter_def: dict[str, Any]) -> None:
        super().__init__({**formatter_def, "name": "csv"})
        self.f = "csv"
        self.mimetype = "text/csv; charset=utf-8"
        self.extension = "csv"

    def write(self, options: dict[str, Any] = {}, data: dict[str, Any] | None = None) -> str:  # noqa: B006 - pygeoapi's signature
        if not isinstance(data, dict):
            raise FormatterSerializationError("nothing to format")
        if data.get("type") == "FeatureCollection":
            rows = []
            for feature in data.get("features", []):
                geometry = feature.get("geometry") or {}
                coordinates = geometry.get("coordinates") or [None, None]
                rows.append({"id": feature.get("id"), "longitude": coordinates[0], "latitude": coordinates[1],
                             **feature.get("properties", {})})
        else:
            rows = list(coverage_rows(data))
        columns: list[str] = []
        for row in rows:
            columns.extend(key for key in row if key not in columns)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
