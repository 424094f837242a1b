"""DAYCLI: the daily climate values of a station-month as BUFR (sequence 3 07 075).

Encoding is done by WMO's own tools: csv2bufr with WMO's ``daycli-template`` (a copy of which
travels with the project under ``opencdms_kernel/resources/csv2bufr-templates``, see its
README) and ecCodes underneath (:mod:`.bufr`).  This module only builds the CSV rows the
template expects, one row (one BUFR message) per day, from the products' days
(:func:`~opencdms_kernel.products.days.station_days`: station-local days, the one rule for
choosing between sources, days made from sub-daily values, the QC policy), so its values are
the ones the monthly summaries, CLIMAT and the reports are made of:

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
  set).  A value the QC policy excludes is missing; a value csv2bufr finds outside the
  template's valid range is also set to missing by csv2bufr, and its warning is returned in
  :attr:`DaycliBufr.warnings` rather than dropped.
* Each quantity's period is the one of the value sent: a reported daily value's own start
  (its ``phenomenon_time``, e.g. 00:00 UTC, or local midnight), a day made from sub-daily
  values the station's local midnight, as a day offset and a time in UTC.
* The quality flags are filled from quality control (associated field significance 5, the
  DAYCLI 8-bit quality indicator of code table 0 31 021): 0 "checked and declared good" for a
  value that passed QC or that a reviewer accepted or corrected, 1 "checked and declared
  suspect" for a suspect value (it counts until a reviewer rejects it), 7 "data unchecked" for
  a value no QC run has covered.  A day made from sub-daily values takes the worst flag of
  the values it was made of.  A missing value has no flag.
* Station metadata (position, height, sensor height, averaging method, siting classes) is not
  in the archive; the caller passes a :class:`DaycliStation` (see :func:`station_metadata`),
  and what it does not know is encoded as missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import duckdb

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import bufr
from opencdms_kernel.products.climat import check_year_month, split_wigos_id, station_selection
from opencdms_kernel.products.days import station_days
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    SUB_DAILY_RULE,
    CompletenessRule,
    Period,
    ProductParameterError,
    QcPolicy,
)
from opencdms_kernel.products.store import Replaced, write_versioned
from opencdms_kernel.vocabulary import FinalFlag, QcStatus

if TYPE_CHECKING:
    from opencdms_kernel.db.engine import Datastore

DAYCLI_PREFIX = "products/daycli"
TEMPLATES_DIR = bufr.TEMPLATES_DIR
TEMPLATE_NAME = "daycli-template"
TEMPLATE_FILE = bufr.template_file(TEMPLATE_NAME)

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
# The quantities of a day: (DaycliDay field, element, template column prefix of its period).
QUANTITIES = (
    ("precipitation", "PRCP", "precipitation"),
    ("fresh_snow_depth", None, "fresh_snow"),
    ("total_snow_depth", "SNWD", "total_snow"),
    ("maximum_temperature", "TMAX", "maximum_temperature"),
    ("minimum_temperature", "TMIN", "minimum_temperature"),
    ("mean_temperature", "TMEAN", "average_temperature"),
)
_FLAG_COLUMNS = {
    "precipitation": "precipitation_flag", "fresh_snow_depth": "fresh_snow_depth_flag",
    "total_snow_depth": "total_snow_depth_flag", "maximum_temperature": "maximum_temperature_flag",
    "minimum_temperature": "minimum_temperature_flag", "mean_temperature": "average_temperature_flag",
}

# DAYCLI quality flags: code table 0 31 021, associated field significance 5 (8-bit indicator
# of quality control), which the template sets.
FLAG_GOOD = 0  # data checked and declared good
FLAG_SUSPECT = 1  # data checked and declared suspect
FLAG_UNCHECKED = 7  # data unchecked


class DaycliEncodingError(bufr.BufrEncodingError):
    """csv2bufr could not encode a day; the message names the station and the day."""


def daycli_flag(qc_status: str | None, final_flag: str | None = None) -> int:
    """The DAYCLI quality flag of a value that counts, from its QC status and final flag."""
    if final_flag in (FinalFlag.VERIFIED, FinalFlag.CORRECTED) or qc_status == QcStatus.PASSED:
        return FLAG_GOOD
    if qc_status == QcStatus.SUSPECT:
        return FLAG_SUSPECT
    return FLAG_UNCHECKED


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
    """The daily values of one day (archive units: degC, mm, cm); ``None`` is missing.

    ``flags``: the DAYCLI quality flag per quantity (field name -> code figure; absent: missing);
    ``starts``: when each quantity's period began (UTC; absent: 00:00 UTC of the day).
    """

    day: date
    maximum_temperature: float | None = None
    minimum_temperature: float | None = None
    mean_temperature: float | None = None
    precipitation: float | None = None
    total_snow_depth: float | None = None
    fresh_snow_depth: float | None = None
    flags: Mapping[str, int] = field(default_factory=dict)
    starts: Mapping[str, datetime] = field(default_factory=dict)


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
    """A DAYCLI file written to the bucket, or why none was (``key`` None); ``version`` and
    ``replaced`` say which version it is and the earlier one it replaced."""

    wigos_id: str
    year: int
    month: int
    key: str | None
    bufr: DaycliBufr | None
    days: tuple[DaycliDay, ...] = field(default=())
    reason: str | None = None
    metadata_key: str | None = None
    version: int | None = None
    replaced: Replaced | None = None

    @property
    def empty(self) -> bool:
        return self.key is None


# --------------------------------------------------------------------------- CSV rows


def _period_start(day: date, start: datetime | None) -> tuple[str, str, str, str]:
    """(day offset, hour, minute, second) of a period's start, in UTC, from the nominal day."""
    if start is None:
        return ("0", "0", "0", "0")
    utc = start.astimezone(timezone.utc)
    return (str((utc.date() - day).days), str(utc.hour), str(utc.minute), str(utc.second))


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
            "latitude": bufr.fixed(station.latitude, 5),
            "longitude": bufr.fixed(station.longitude, 5),
            "station_height_above_msl": bufr.fixed(station.elevation, 1),
            "temperature_siting_classification": bufr.code(station.temperature_siting_class),
            "precipitation_siting_classification": bufr.code(station.precipitation_siting_class),
            "averaging_method": bufr.code(station.averaging_method),
            "year": str(day.day.year),
            "month": str(day.day.month),
            "day": str(day.day.day),
            "precipitation": bufr.fixed(day.precipitation, 1),
            "fresh_snow_depth": bufr.fixed(day.fresh_snow_depth, 2, scale=-2),  # cm -> m
            "total_snow_depth": bufr.fixed(day.total_snow_depth, 2, scale=-2),  # cm -> m
            "thermometer_height": bufr.fixed(station.thermometer_height, 2),
            "maximum_temperature": bufr.fixed(day.maximum_temperature, 2, offset=KELVIN),
            "minimum_temperature": bufr.fixed(day.minimum_temperature, 2, offset=KELVIN),
            "average_temperature": bufr.fixed(day.mean_temperature, 2, offset=KELVIN),
        }
        for name, _, prefix in QUANTITIES:
            start = _period_start(day.day, day.starts.get(name))
            for part, text in zip(("day_offset", "hour", "minute", "second"), start):
                row[f"{prefix}_{part}"] = text
            present = getattr(day, name) is not None
            row[_FLAG_COLUMNS[name]] = bufr.code(day.flags.get(name)) if present else ""
        rows.append(row)
    return rows


def daycli_csv(station: DaycliStation, days: Sequence[DaycliDay]) -> str:
    """The CSV text csv2bufr reads: a header row then one row per day."""
    return bufr.csv_text(COLUMNS, daycli_rows(station, days))


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
    labels = [day.day.isoformat() for day in days]
    try:
        encoded = bufr.encode(TEMPLATE_NAME, COLUMNS, daycli_rows(station, days), labels,
                              originating_centre=originating_centre, originating_subcentre=originating_subcentre)
    except bufr.BufrEncodingError as exc:
        raise DaycliEncodingError(f"DAYCLI {station.wigos_id} {exc}") from exc
    return DaycliBufr(messages=encoded.messages, days=tuple(d.day for d in days), warnings=encoded.warnings)


# --------------------------------------------------------------------------- from the products layer


def daycli_days_from_archive(
    connection: duckdb.DuckDBPyConnection,
    wigos_id: str,
    year: int,
    month: int,
    *,
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
    sub_daily_rule: CompletenessRule = SUB_DAILY_RULE,
) -> list[DaycliDay]:
    """The station-local days of the month on which the station has at least one DAYCLI
    value that counts, in order, with their QC flags and periods.

    ``connection`` has the archive's ``observations`` view.  Raises
    :class:`~opencdms_kernel.errors.UnknownReferenceError` for a station not in the archive.
    """
    year, month = check_year_month(year, month)
    selection = station_selection(connection, wigos_id, Period(year, year), DAYCLI_ELEMENTS, qc, timezones)
    rows = station_days(connection, selection, sub_daily_rule=sub_daily_rule)
    by_day: dict[date, dict[str, Any]] = {}
    for row in rows.to_pylist():
        if row["value"] is None or (row["day"].year, row["day"].month) != (year, month):
            continue
        by_day.setdefault(row["day"], {})[row["element"]] = row
    days = []
    for day in sorted(by_day):
        values: dict[str, Any] = {}
        flags: dict[str, int] = {}
        starts: dict[str, datetime] = {}
        for name, element, _ in QUANTITIES:
            row = by_day[day].get(element) if element else None
            if row is None:
                continue
            values[name] = row["value"]
            flags[name] = daycli_flag(row["qc_status"], row["final_flag"])
            if row["period_start"] is not None:
                starts[name] = row["period_start"]
        days.append(DaycliDay(day=day, flags=flags, starts=starts, **values))
    return days


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
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
) -> DaycliProduct:
    """Encode a station-month as DAYCLI BUFR and write it to the bucket, with a JSON beside it
    (QC policy, flags and the values excluded); an earlier file of the month is kept as a version.

    A month without any value writes nothing and returns an empty product whose ``reason``
    says so; an unknown station or a bad year/month raises an error naming it.
    """
    year, month = check_year_month(year, month)
    if station is None:
        station = DaycliStation(wigos_id=wigos_id)
    elif station.wigos_id != wigos_id:
        raise ProductParameterError("station", f"is for {station.wigos_id!r}, not for wigos_id {wigos_id!r}")
    days = daycli_days_from_archive(connection, wigos_id, year, month, qc=qc, timezones=timezones)
    if not days:
        return DaycliProduct(
            wigos_id, year, month, None, None,
            reason=f"no daily values for station {wigos_id} in {year:04d}-{month:02d}",
        )
    encoded = encode_daycli(
        station, days, originating_centre=originating_centre, originating_subcentre=originating_subcentre
    )
    key = daycli_key(wigos_id, year, month)
    metadata_key = key.removesuffix(".bufr") + ".json"
    flags: dict[str, int] = {}
    for day in days:
        for figure in day.flags.values():
            flags[str(figure)] = flags.get(str(figure), 0) + 1
    metadata = {
        "kind": "daycli", "wigos_id": wigos_id, "year": year, "month": month, "days": len(days),
        "timezone": (timezones or {}).get(wigos_id, "UTC"),
        "qc": {"policy": qc.as_dict(), "flags": dict(sorted(flags.items())),
               "flag_meaning": {str(FLAG_GOOD): "checked, good", str(FLAG_SUSPECT): "checked, suspect",
                                str(FLAG_UNCHECKED): "unchecked"}},
        "warnings": list(encoded.warnings),
        "template": bufr.template_metadata(TEMPLATE_NAME),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    written = write_versioned(bucket, {
        key: encoded.data,
        metadata_key: (json.dumps(metadata, indent=2) + "\n").encode("utf-8"),
    })
    return DaycliProduct(wigos_id, year, month, key, encoded, tuple(days), None, metadata_key, written.version,
                         written.replaced)


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
    return bufr.template_metadata(TEMPLATE_NAME)
