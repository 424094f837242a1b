"""CLIMAT in BUFR: the same report as the text of :mod:`.climat`, as BUFR sequence 3 07 073.

One message per station-month, descriptors 3 01 150 (WIGOS identifier) and 3 07 073 (3 07 071
monthly values, 3 07 072 normals), encoded by WMO's csv2bufr with our mapping template
``climat-template`` (``opencdms_kernel/resources/csv2bufr-templates/templates``; WMO's
template repository has none for CLIMAT).  The template follows BUFR Table D as published by
WMO (wmo-im/BUFR4): the replicated pairs of 0 08 050 / 0 08 020 (missing days and years)
carry the qualifiers the table names, section 3's counts the conditions of code table
0 08 052, section 4's days the qualifier of code table 0 08 053 (0: one day, 1: more than
one day).

The figures are those of the text report, not re-derived: every value is written at the
precision the text form gives it (tenths of a degree and of a hPa, whole millimetres and hours,
tenths of a millimetre for the highest daily amount), so the two forms say the same thing to
the last digit.  Units are BUFR's: K, Pa, kg m-2.  The precipitation period is the one
Table D fixes (the month from 06 UTC on day 1); the days we sum are station-local days, as
every product's are.  What the archive does not know (station type, sensor heights, wind,
visibility, thunderstorm and hail days) is encoded as missing, or from :class:`ClimatStation`.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Mapping
from zoneinfo import ZoneInfo

import duckdb

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products.bufr import Encoded, code, encode, fixed, template_columns
from opencdms_kernel.products.bufr import template_metadata as bufr_template_metadata
from opencdms_kernel.products.climat import (
    CLIMAT_PREFIX,
    CLIMAT_RULE,
    SECTION3_COUNTS,
    SECTION4_EXTREMES,
    ClimatData,
    ClimatExtreme,
    ClimatMonthly,
    ClimatNormals,
    climat_from_archive,
    split_wigos_id,
)
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    CompletenessRule,
    NormalsRule,
    ProductParameterError,
    QcPolicy,
    figure,
)
from opencdms_kernel.products.store import Replaced, write_versioned

if TYPE_CHECKING:
    from opencdms_kernel.db.engine import Datastore

TEMPLATE_NAME = "climat-template"
KELVIN = Decimal("273.15")


@dataclass(frozen=True)
class ClimatStation:
    """Station metadata the BUFR form carries; ``None`` is encoded as missing.

    ``station_type``: code table 0 02 001 (0 automatic, 1 manned, 2 hybrid); ``timezone``: the
    IANA zone of the station's day, for 0 04 074 (UTC - LT, whole hours only).
    """

    wigos_id: str
    name: str | None = None
    latitude: float | None = None
    longitude: float | None = None
    elevation: float | None = None
    barometer_elevation: float | None = None
    thermometer_height: float | None = None
    station_type: int | None = None
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        split_wigos_id(self.wigos_id)
        for name, low, high in (("latitude", -90, 90), ("longitude", -180, 180), ("elevation", -400, 9000)):
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ProductParameterError(name, f"{value} is outside {low}..{high}")
        if self.name is not None and (len(self.name) > 20 or not self.name.isascii() or "," in self.name):
            # 0 01 015 holds 20 characters of IA5; the CSV csv2bufr reads is unquoted.
            object.__setattr__(self, "name", self.name.encode("ascii", "replace").decode().replace(",", " ")[:20])


def utc_minus_local_hours(zone: str, year: int, month: int) -> int | None:
    """0 04 074 for the start of the month: UTC - LT in whole hours (None: not whole hours)."""
    offset = datetime(year, month, 1, tzinfo=ZoneInfo(zone)).utcoffset()
    if offset is None or offset.total_seconds() % 3600:
        return None
    return -int(offset.total_seconds() // 3600)


def _tenths_kelvin(value: float | None) -> str:
    """A temperature at the text form's precision (tenths of degC, half away from zero) in K."""
    if value is None:
        return ""
    return format(figure(value, 1) + KELVIN, "f")


def _pascal(value: float | None) -> str:
    """A pressure in hPa at tenths (the text form's precision) as Pa."""
    return fixed(value, -1, scale=2)


def _extreme(row: dict[str, str], name: str, extreme: ClimatExtreme | None, *, temperature: bool) -> None:
    if extreme is None:
        return
    row[name] = _tenths_kelvin(extreme.value) if temperature else fixed(extreme.value, 1)
    row[f"{name}_day"] = str(extreme.day)
    row[f"{name}_qualifier"] = "1" if extreme.several_days else "0"


def climat_row(station: ClimatStation, monthly: ClimatMonthly, normals: ClimatNormals | None) -> dict[str, str]:
    """The template's CSV row (column -> text) of one report; empty text is missing."""
    series, issuer, issue_number, local = split_wigos_id(station.wigos_id)
    block, number = (local[:2], local[2:]) if len(local) == 5 and local.isdigit() else ("", "")
    m = monthly
    offset = utc_minus_local_hours(station.timezone, m.year, m.month)
    row = {column: "" for column in COLUMNS}
    row.update({
        "wsi_series": str(series), "wsi_issuer": str(issuer), "wsi_issue_number": str(issue_number), "wsi_local": local,
        "wmo_block_number": str(int(block)) if block else "", "wmo_station_number": str(int(number)) if number else "",
        "station_name": station.name or "", "station_type": code(station.station_type),
        "year": str(m.year), "month": str(m.month), "days_in_month": str(calendar.monthrange(m.year, m.month)[1]),
        "latitude": fixed(station.latitude, 5), "longitude": fixed(station.longitude, 5),
        "station_height_above_msl": fixed(station.elevation, 1),
        "barometer_height_above_msl": fixed(station.barometer_elevation, 1),
        "thermometer_height": fixed(station.thermometer_height, 2),
        "utc_minus_local_hours": code(offset),
        # Section 1, at the text form's precision.
        "station_pressure": _pascal(m.station_pressure), "sea_level_pressure": _pascal(m.sea_level_pressure),
        "mean_temperature": _tenths_kelvin(m.mean_temperature),
        "mean_max_temperature": _tenths_kelvin(m.mean_max_temperature),
        "mean_min_temperature": _tenths_kelvin(m.mean_min_temperature),
        "vapour_pressure": _pascal(m.vapour_pressure), "temperature_std": fixed(m.temperature_std, 1),
        "precipitation": fixed(m.precipitation, 0), "precipitation_quintile": code(m.precipitation_quintile),
        "precipitation_days": code(m.precipitation_days),
        "sunshine": fixed(m.sunshine, 0), "sunshine_percent_of_normal": fixed(m.sunshine_percent_of_normal, 0),
    })
    for name in ("pressure", "temperature", "max_temperature", "min_temperature", "vapour_pressure",
                 "precipitation", "sunshine"):
        row[f"missing_days_{name}"] = code(getattr(m, f"missing_days_{name}"))
    # Section 3 and 4.
    for name, *_ in SECTION3_COUNTS:
        row[name] = code(getattr(m, name))
    for name, element, _ in SECTION4_EXTREMES:
        _extreme(row, name, getattr(m, name), temperature=element != "PRCP")
    if normals is not None:
        n = normals
        row.update({
            "normals_first_year": str(n.first_year), "normals_last_year": str(n.last_year),
            "normal_station_pressure": _pascal(n.station_pressure),
            "normal_sea_level_pressure": _pascal(n.sea_level_pressure),
            "normal_mean_temperature": _tenths_kelvin(n.mean_temperature),
            "normal_mean_max_temperature": _tenths_kelvin(n.mean_max_temperature),
            "normal_mean_min_temperature": _tenths_kelvin(n.mean_min_temperature),
            "normal_vapour_pressure": _pascal(n.vapour_pressure),
            "normal_temperature_std": fixed(n.temperature_std, 1),
            "normal_sunshine": fixed(n.sunshine, 0),
            "normal_precipitation": fixed(n.precipitation, 0),
            "normal_precipitation_days": code(n.precipitation_days),
        })
        for name in ("pressure", "temperature", "extreme_temperatures", "vapour_pressure", "precipitation",
                     "sunshine", "max_temperature", "min_temperature"):
            row[f"missing_years_{name}"] = code(getattr(n, f"missing_years_{name}"))
    return row


# The template's columns (its ``data:`` values), in a stable order.
COLUMNS = tuple(sorted(template_columns(TEMPLATE_NAME)))


def encode_climat(
    station: ClimatStation,
    monthly: ClimatMonthly,
    normals: ClimatNormals | None = None,
    *,
    originating_centre: int | None = None,
    originating_subcentre: int | None = None,
) -> Encoded:
    """One BUFR message (3 01 150 + 3 07 073) of a CLIMAT report, via csv2bufr."""
    if station.wigos_id != monthly.wigos_id:
        raise ProductParameterError("station", f"is for {station.wigos_id!r}, not for {monthly.wigos_id!r}")
    label = f"CLIMAT {monthly.wigos_id} {monthly.year:04d}-{monthly.month:02d}"
    return encode(TEMPLATE_NAME, COLUMNS, [climat_row(station, monthly, normals)], [label],
                  originating_centre=originating_centre, originating_subcentre=originating_subcentre)


@dataclass(frozen=True)
class ClimatBufrProduct:
    """A CLIMAT BUFR file written to the bucket, or why none was (``key`` None)."""

    wigos_id: str
    year: int
    month: int
    key: str | None
    bufr: Encoded | None
    data: ClimatData
    version: int | None = None
    replaced: Replaced | None = None

    @property
    def empty(self) -> bool:
        return self.key is None


def climat_bufr_key(wigos_id: str, year: int, month: int) -> str:
    """Bucket key: ``products/climat/<wigos_id>/<YYYY-MM>.bufr`` (beside the text report)."""
    split_wigos_id(wigos_id)
    return f"{CLIMAT_PREFIX}/{wigos_id}/{year:04d}-{month:02d}.bufr"


def produce_climat_bufr(
    connection: duckdb.DuckDBPyConnection,
    bucket: Bucket,
    wigos_id: str,
    year: int,
    month: int,
    *,
    station: ClimatStation | None = None,
    normals_period: tuple[int, int] | None = (1991, 2020),
    rule: CompletenessRule = CLIMAT_RULE,
    normals_rule: NormalsRule = NormalsRule(),
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
    originating_centre: int | None = None,
    originating_subcentre: int | None = None,
) -> ClimatBufrProduct:
    """Encode the CLIMAT report of one station and month as BUFR and write it (earlier
    versions are kept).  The values are :func:`~.climat.climat_from_archive`'s, as for the text."""
    if station is None:
        station = ClimatStation(wigos_id=wigos_id, timezone=(timezones or {}).get(wigos_id, "UTC"))
    elif station.wigos_id != wigos_id:
        raise ProductParameterError("station", f"is for {station.wigos_id!r}, not for wigos_id {wigos_id!r}")
    data = climat_from_archive(connection, wigos_id, year, month, normals_period=normals_period, rule=rule,
                               normals_rule=normals_rule, qc=qc, timezones=timezones)
    if data.monthly is None:
        return ClimatBufrProduct(wigos_id, year, month, None, None, data)
    bufr = encode_climat(station, data.monthly, data.normals, originating_centre=originating_centre,
                         originating_subcentre=originating_subcentre)
    key = climat_bufr_key(wigos_id, year, month)
    written = write_versioned(bucket, {key: b"".join(bufr.messages)})
    return ClimatBufrProduct(wigos_id, year, month, key, bufr, data, written.version, written.replaced)


def climat_station(datastore: "Datastore", wigos_id: str) -> ClimatStation:
    """A :class:`ClimatStation` from the station table (name, position, height, time zone)."""
    import sqlalchemy as sa  # noqa: PLC0415 - only this helper needs the datastore

    from opencdms_kernel.db.schema import station as station_table  # noqa: PLC0415
    from opencdms_kernel.errors import UnknownReferenceError  # noqa: PLC0415

    split_wigos_id(wigos_id)
    query = sa.select(station_table.c.name, station_table.c.latitude, station_table.c.longitude,
                      station_table.c.elevation, station_table.c.timezone).where(station_table.c.wigos_id == wigos_id)
    with datastore.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        raise UnknownReferenceError(f"parameter 'wigos_id': no station {wigos_id!r}")
    return ClimatStation(wigos_id=wigos_id, name=row.name, latitude=row.latitude, longitude=row.longitude,
                         elevation=row.elevation, timezone=row.timezone or "UTC")


def template_metadata() -> dict[str, object]:
    """The ``metadata`` block of the CLIMAT template (label, version, id …)."""
    return bufr_template_metadata(TEMPLATE_NAME)
