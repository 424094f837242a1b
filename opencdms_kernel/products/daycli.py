"""DAYCLI: the daily climate values of a station-month as BUFR (sequence 3 07 075).

Encoding is done by WMO's own tools: csv2bufr with WMO's ``daycli-template`` (a copy of which
travels with the project under ``opencdms_kernel/resources/csv2bufr-templates``, see its
README) and ecCodes underneath.  This module only builds the CSV rows the template expects,
one row (one BUFR message) per day, from the archive's daily values:

=========  ============================  =============================================
element    template column               conversion
=========  ============================  =============================================
TMAX       ``maximum_temperature``       degC -> K (+273.15), 0.01 K as in the template
TMIN       ``minimum_temperature``       degC -> K
TMEAN      ``average_temperature``       degC -> K
PRCP       ``precipitation``             mm = kg m-2, 0.1 mm
SNWD       ``total_snow_depth``          cm -> m, 0.01 m
(none)     ``fresh_snow_depth``          no element in the archive: always missing
=========  ============================  =============================================

Why these choices:

* A missing value is an empty CSV field, which csv2bufr encodes as BUFR "missing" (all bits
  set).  Values failed by quality control are treated as missing; a value csv2bufr finds
  outside the template's valid range is also set to missing by csv2bufr, and its warning is
  returned in :attr:`DaycliBufr.warnings` rather than dropped.
* The archive's daily values cover the UTC day (00:00 plus 86 400 s), so every period starts
  on the nominal day (offset 0) at 00:00:00 UTC; snow depth is read at 00:00 UTC.
* The template's quality-flag columns are left empty (missing): the DAYCLI flag code list is
  being revised by WMO, and mapping our QC states onto it is a decision still to be made.
* Station metadata (position, height, sensor height, averaging method, siting classes) is not
  in the archive; the caller passes a :class:`DaycliStation` (see :func:`station_metadata`),
  and what it does not know is encoded as missing.
"""

from __future__ import annotations

import calendar
import copy
import csv
import io
import json
import os
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import duckdb

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.products.climat import check_year_month, read_daily_values, split_wigos_id
from opencdms_kernel.products.model import ProductParameterError

if TYPE_CHECKING:
    from opencdms_kernel.db.engine import Datastore

DAYCLI_PREFIX = "products/daycli"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "resources" / "csv2bufr-templates" / "templates"
TEMPLATE_NAME = "daycli-template"
TEMPLATE_FILE = TEMPLATES_DIR / f"{TEMPLATE_NAME}.json"

DAYCLI_ELEMENTS = ("TMAX", "TMIN", "TMEAN", "PRCP", "SNWD")
KELVIN = Decimal("273.15")

# The template's columns, in the order of WMO's sample file.
COLUMNS = (
    "wsi_series", "wsi_issuer", "wsi_issue_number", "wsi_local",
    "wmo_block_number", "wmo_station_number", "latitude", "longitude", "station_height_above_msl",
    "temperature_siting_classification", "precipitation_siting_classification", "averaging_method",
    "year", "month", "day",
    "precipitation_day_offset", "precipitation_hour", "precipitation_minute", "precipitation_second",
    "precipitation", "precipitation_flag",
    "fresh_snow_day_offset", "fresh_snow_hour", "fresh_snow_minute", "fresh_snow_second",
    "fresh_snow_depth", "fresh_snow_depth_flag",
    "total_snow_day_offset", "total_snow_hour", "total_snow_minute", "total_snow_second",
    "total_snow_depth", "total_snow_depth_flag",
    "thermometer_height",
    "maximum_temperature_day_offset", "maximum_temperature_hour", "maximum_temperature_minute",
    "maximum_temperature_second", "maximum_temperature", "maximum_temperature_flag",
    "minimum_temperature_day_offset", "minimum_temperature_hour", "minimum_temperature_minute",
    "minimum_temperature_second", "minimum_temperature", "minimum_temperature_flag",
    "average_temperature_day_offset", "average_temperature_hour", "average_temperature_minute",
    "average_temperature_second", "average_temperature", "average_temperature_flag",
)
# Each quantity's period: (day offset, hour, minute, second) of its beginning, UTC.
_UTC_DAY = ("0", "0", "0", "0")


class DaycliEncodingError(OpenCDMSError):
    """csv2bufr could not encode a day; the message names the station and the day."""


@dataclass(frozen=True)
class DaycliStation:
    """Station metadata DAYCLI carries; ``None`` is encoded as missing.

    ``averaging_method`` is the code figure of the method used to calculate the daily mean
    temperature; the siting classes are WMO's combined siting and measurement quality
    classification (WMO-No. 8, Annex 1.B) for temperature and precipitation.
    """

    wigos_id: str
    latitude: float | None = None
    longitude: float | None = None
    elevation: float | None = None
    thermometer_height: float | None = None
    averaging_method: int | None = None
    temperature_siting_class: int | None = None
    precipitation_siting_class: int | None = None

    def __post_init__(self) -> None:
        split_wigos_id(self.wigos_id)
        for name, low, high in (("latitude", -90, 90), ("longitude", -180, 180), ("elevation", -400, 9000)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ProductParameterError(name, f"{value} is outside {low}..{high}")


@dataclass(frozen=True)
class DaycliDay:
    """The daily values of one day (archive units: degC, mm, cm); ``None`` is missing."""

    day: date
    maximum_temperature: float | None = None
    minimum_temperature: float | None = None
    mean_temperature: float | None = None
    precipitation: float | None = None
    total_snow_depth: float | None = None
    fresh_snow_depth: float | None = None


@dataclass(frozen=True)
class DaycliBufr:
    """Encoded BUFR: the messages (one per day, in day order) and csv2bufr's warnings."""

    messages: tuple[bytes, ...]
    days: tuple[date, ...]
    warnings: tuple[str, ...] = ()

    @property
    def data(self) -> bytes:
        """All messages one after the other: a BUFR file."""
        return b"".join(self.messages)


@dataclass(frozen=True)
class DaycliProduct:
    """A DAYCLI file written to the bucket, or why none was (``key`` None)."""

    wigos_id: str
    year: int
    month: int
    key: str | None
    bufr: DaycliBufr | None
    days: tuple[DaycliDay, ...] = field(default=())
    reason: str | None = None

    @property
    def empty(self) -> bool:
        return self.key is None


# --------------------------------------------------------------------------- CSV rows


def _fixed(value: float | None, decimals: int, offset: Decimal = Decimal(0), scale: int = 0) -> str:
    """A number for the CSV at the template's precision (half away from zero); '' if missing."""
    if value is None:
        return ""
    number = (Decimal(repr(float(value))).scaleb(scale) + offset).quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
    return format(number, "f")


def _code(value: int | None) -> str:
    return "" if value is None else str(value)


def daycli_rows(station: DaycliStation, days: Sequence[DaycliDay]) -> list[dict[str, str]]:
    """The template's CSV rows (column -> text), one per day; empty text is missing."""
    series, issuer, issue_number, local = split_wigos_id(station.wigos_id)
    # Block and station number only exist for stations whose local id is a WMO index IIiii.
    block, number = (local[:2], local[2:]) if len(local) == 5 and local.isdigit() else ("", "")
    rows = []
    for day in days:
        row = {
            "wsi_series": str(series),
            "wsi_issuer": str(issuer),
            "wsi_issue_number": str(issue_number),
            "wsi_local": local,
            "wmo_block_number": str(int(block)) if block else "",
            "wmo_station_number": str(int(number)) if number else "",
            "latitude": _fixed(station.latitude, 5),
            "longitude": _fixed(station.longitude, 5),
            "station_height_above_msl": _fixed(station.elevation, 1),
            "temperature_siting_classification": _code(station.temperature_siting_class),
            "precipitation_siting_classification": _code(station.precipitation_siting_class),
            "averaging_method": _code(station.averaging_method),
            "year": str(day.day.year),
            "month": str(day.day.month),
            "day": str(day.day.day),
            "precipitation": _fixed(day.precipitation, 1),
            "fresh_snow_depth": _fixed(day.fresh_snow_depth, 2, scale=-2),  # cm -> m
            "total_snow_depth": _fixed(day.total_snow_depth, 2, scale=-2),  # cm -> m
            "thermometer_height": _fixed(station.thermometer_height, 2),
            "maximum_temperature": _fixed(day.maximum_temperature, 2, offset=KELVIN),
            "minimum_temperature": _fixed(day.minimum_temperature, 2, offset=KELVIN),
            "average_temperature": _fixed(day.mean_temperature, 2, offset=KELVIN),
        }
        for prefix in ("precipitation", "fresh_snow", "total_snow", "maximum_temperature",
                       "minimum_temperature", "average_temperature"):
            for part, text in zip(("day_offset", "hour", "minute", "second"), _UTC_DAY):
                row[f"{prefix}_{part}"] = text
        for flag in ("precipitation_flag", "fresh_snow_depth_flag", "total_snow_depth_flag",
                     "maximum_temperature_flag", "minimum_temperature_flag", "average_temperature_flag"):
            row[flag] = ""
        rows.append(row)
    return rows


def daycli_csv(station: DaycliStation, days: Sequence[DaycliDay]) -> str:
    """The CSV text csv2bufr reads: a header row then one row per day."""
    out = io.StringIO()
    # The template says QUOTE_NONE; none of our fields can contain a comma or a quote.
    writer = csv.DictWriter(out, fieldnames=COLUMNS, quoting=csv.QUOTE_NONE, lineterminator="\n")
    writer.writeheader()
    writer.writerows(daycli_rows(station, days))
    return out.getvalue()


# --------------------------------------------------------------------------- csv2bufr


@lru_cache(maxsize=1)
def _csv2bufr() -> Any:
    """csv2bufr, imported on first use with its template search path set to our copy.

    csv2bufr reads ``CSV2BUFR_TEMPLATES`` once, when it is imported, and indexes the folder;
    without it, it indexes the current directory.  The template itself is loaded by path
    (:func:`_template`), so a different value set by the operator does no harm.
    """
    os.environ.setdefault("CSV2BUFR_TEMPLATES", str(TEMPLATES_DIR))
    import csv2bufr  # noqa: PLC0415 - heavy, and needs the variable above before import

    return csv2bufr


@lru_cache(maxsize=1)
def _template() -> dict[str, Any]:
    _csv2bufr()
    import csv2bufr.templates as c2bt  # noqa: PLC0415

    if not TEMPLATE_FILE.is_file():
        raise DaycliEncodingError(f"the DAYCLI template is missing: {TEMPLATE_FILE}")
    template = c2bt.load_template(str(TEMPLATE_FILE), isFile=True)
    return template


def _template_for(originating_centre: int | None, originating_subcentre: int | None) -> dict[str, Any]:
    """The template with the BUFR originating centre set (csv2bufr's default is 'missing')."""
    template = copy.deepcopy(_template())
    for key, value in (("bufrHeaderCentre", originating_centre), ("bufrHeaderSubCentre", originating_subcentre)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
            raise ProductParameterError(
                "originating_centre" if key == "bufrHeaderCentre" else "originating_subcentre",
                f"{value!r} is not a code figure 0..65535 (Common code table C-11/C-12)",
            )
        for entry in template["header"]:
            if entry["eccodes_key"] == key:
                entry["value"] = f"const:{value}"
    return template


def encode_daycli(
    station: DaycliStation,
    days: Sequence[DaycliDay],
    *,
    originating_centre: int | None = None,
    originating_subcentre: int | None = None,
) -> DaycliBufr:
    """BUFR messages (sequence 3 07 075, one per day) for the given days, via csv2bufr.

    Raises :class:`DaycliEncodingError` naming the day when csv2bufr cannot encode it.
    """
    if not days:
        return DaycliBufr(messages=(), days=())
    csv2bufr = _csv2bufr()
    template = _template_for(originating_centre, originating_subcentre)
    messages: list[bytes] = []
    warnings: list[str] = []
    results = csv2bufr.transform(daycli_csv(station, days), template)
    for day, result in zip(days, results, strict=True):
        status = result["_meta"]["result"]
        if result["bufr4"] is None:
            errors = "; ".join(status.get("errors") or []) or status.get("message", "unknown error")
            raise DaycliEncodingError(f"DAYCLI {station.wigos_id} {day.day.isoformat()}: csv2bufr failed: {errors}")
        messages.append(result["bufr4"])
        warnings.extend(f"{day.day.isoformat()}: {w}" for w in status.get("warnings") or [])
    return DaycliBufr(messages=tuple(messages), days=tuple(d.day for d in days), warnings=tuple(warnings))


# --------------------------------------------------------------------------- from the archive


def daycli_days_from_archive(
    connection: duckdb.DuckDBPyConnection, wigos_id: str, year: int, month: int
) -> list[DaycliDay]:
    """The days of the month on which the station has at least one DAYCLI value, in order.

    ``connection`` has the archive's ``observations`` view.  Values failed by quality control
    count as missing; a day with nothing else is left out.  Raises
    :class:`~opencdms_kernel.errors.UnknownReferenceError` for a station not in the archive.
    """
    year, month = check_year_month(year, month)
    days = [date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]
    daily = read_daily_values(connection, wigos_id, DAYCLI_ELEMENTS, days)
    found = sorted({day for values in daily.values() for day in values})

    def get(element: str, day: date) -> float | None:
        return daily.get(element, {}).get(day)

    return [
        DaycliDay(
            day=day,
            maximum_temperature=get("TMAX", day),
            minimum_temperature=get("TMIN", day),
            mean_temperature=get("TMEAN", day),
            precipitation=get("PRCP", day),
            total_snow_depth=get("SNWD", day),
        )
        for day in found
    ]


def daycli_key(wigos_id: str, year: int, month: int) -> str:
    """Bucket key of the file: ``products/daycli/<wigos_id>/<YYYY-MM>.bufr``."""
    split_wigos_id(wigos_id)
    return f"{DAYCLI_PREFIX}/{wigos_id}/{year:04d}-{month:02d}.bufr"


def produce_daycli(
    connection: duckdb.DuckDBPyConnection,
    bucket: Bucket,
    wigos_id: str,
    year: int,
    month: int,
    *,
    station: DaycliStation | None = None,
    originating_centre: int | None = None,
    originating_subcentre: int | None = None,
) -> DaycliProduct:
    """Encode a station-month as DAYCLI BUFR and write it to the bucket.

    A month without any value writes nothing and returns an empty product whose ``reason``
    says so; an unknown station or a bad year/month raises an error naming it.
    """
    year, month = check_year_month(year, month)
    if station is None:
        station = DaycliStation(wigos_id=wigos_id)
    elif station.wigos_id != wigos_id:
        raise ProductParameterError("station", f"is for {station.wigos_id!r}, not for wigos_id {wigos_id!r}")
    days = daycli_days_from_archive(connection, wigos_id, year, month)
    if not days:
        return DaycliProduct(
            wigos_id, year, month, None, None,
            reason=f"no daily values for station {wigos_id} in {year:04d}-{month:02d}",
        )
    bufr = encode_daycli(
        station, days, originating_centre=originating_centre, originating_subcentre=originating_subcentre
    )
    key = daycli_key(wigos_id, year, month)
    bucket.write_bytes(key, bufr.data)
    return DaycliProduct(wigos_id, year, month, key, bufr, tuple(days))


def station_metadata(datastore: "Datastore", wigos_id: str) -> DaycliStation:
    """A :class:`DaycliStation` from the station table (position and height; the rest missing)."""
    import sqlalchemy as sa  # noqa: PLC0415 - only this helper needs the datastore

    from opencdms_kernel.db.schema import station as station_table  # noqa: PLC0415
    from opencdms_kernel.errors import UnknownReferenceError  # noqa: PLC0415

    split_wigos_id(wigos_id)
    query = sa.select(station_table.c.latitude, station_table.c.longitude, station_table.c.elevation).where(
        station_table.c.wigos_id == wigos_id
    )
    with datastore.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise UnknownReferenceError(f"parameter 'wigos_id': no station {wigos_id!r}")
    return DaycliStation(wigos_id=wigos_id, latitude=row.latitude, longitude=row.longitude, elevation=row.elevation)


def template_metadata() -> dict[str, Any]:
    """The ``metadata`` block of the DAYCLI template in use (label, version, id...)."""
    return json.loads(TEMPLATE_FILE.read_text(encoding="utf-8"))["metadata"]
