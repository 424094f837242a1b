"""CLIMAT (FM 71-XII) monthly climate reports: sections 0, 1 and 2 as WMO text.

What is implemented (WMO-No. 306, Manual on Codes, Vol. I.1, Part A, FM 71-XII CLIMAT)::

    Section 0   CLIMAT MMJJJ IIiii
    Section 1   111 1PoPoPoPo 2PPPP 3sTTTststst 4sTxTxTxsTnTnTn 5eee 6R1R1R1R1Rdnrnr
                    7S1S1S1pspsps 8mPmPmTmTmTxmTn 9mememRmRmSmS
    Section 2   222 0YbYbYcYc 1PoPoPoPo 2PPPP 3sTTTststst 4sTxTxTxsTnTnTn 5eee
                    6R1R1R1R1nrnr 7S1S1S1 8yPyPyTyTyTxyTx 9yeyeyRyRySyS

Sections 3 (333, days beyond thresholds) and 4 (444, extremes) are not produced, nor the
geopotential that high-level stations may report in 2PPPP instead of the sea-level pressure.

Notes on the form, because they are easy to get wrong:

* Not every group is five characters.  In sections 1 and 2 of FM 71 the groups are written as
  the code form shows them, one word each: ``3sTTTststst`` is 8 characters, ``4sTxTxTxsTnTnTn``
  9, ``6R1R1R1R1Rdnrnr`` 8, ``7S1S1S1pspsps`` 7, groups 8 and 9 are 7.  CLIMAT reports as
  circulated look like this (Byrd AWS, July 2023: ``111 18023 31296108 412411361 8000000
  9313131``) and decoders read them so (NCEI's climat_decoder reads group 4 as one 9-character
  word).
* Each group starts with its own indicator figure, so a group whose data are all missing is
  left out of the report; when only part of a group is missing, the missing figures are
  replaced by solidi (``/``), e.g. ``7215///`` for a sunshine total without its percentage of
  the normal.  A report with no data at all is ``CLIMAT MMJJJ IIiii NIL=``.
* Signs: ``s`` is 0 for a value positive or zero and 1 for a negative value; the value itself
  is in tenths of a degree, without sign.  The sign is taken *after* rounding, so -0.04 degC
  is ``0000``, not ``1000``.
* Pressures are in tenths of hPa with the thousands digit omitted (1012.6 hPa -> ``0126``).
* Rounding is half away from zero on the decimal value (27.85 -> 27.9), as in WMO practice,
  and is done with :mod:`decimal` so that binary floating point cannot turn 27.85 into 27.8.
* Lines of text are at most 69 characters (Manual on the GTS, WMO-No. 386); a section that is
  longer continues on the next line.  The report ends with ``=``.

The monthly values (:class:`ClimatMonthly`) and normals (:class:`ClimatNormals`) can be built
from the daily values of the Parquet archive with :func:`climat_from_archive`; see the
completeness rules there.  :func:`produce_climat` does both and writes
``products/climat/<wigos_id>/<YYYY-MM>.txt`` to the bucket.
"""

from __future__ import annotations

import calendar
import math
import re
import statistics
from dataclasses import dataclass, fields
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Mapping, Sequence

import duckdb

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.errors import UnknownReferenceError
from opencdms_kernel.products.model import CompletenessRule, NormalsRule, ProductParameterError
from opencdms_kernel.stations import WIGOS_ID

CLIMAT_PREFIX = "products/climat"

# Manual on the GTS (WMO-No. 386): a line of text in a bulletin is at most 69 characters.
MAX_LINE = 69



# --------------------------------------------------------------------------- parameters


def check_year_month(year: object, month: object) -> tuple[int, int]:
    """``(year, month)`` as integers, or :class:`ProductParameterError` naming the bad one."""
    if isinstance(year, bool) or not isinstance(year, int) or not 1800 <= year <= 2999:
        raise ProductParameterError("year", f"{year!r} is not a year between 1800 and 2999")
    if isinstance(month, bool) or not isinstance(month, int) or not 1 <= month <= 12:
        raise ProductParameterError("month", f"{month!r} is not a month number 1..12")
    return year, month


def split_wigos_id(wigos_id: str) -> tuple[int, int, int, str]:
    """The four parts of a WIGOS station identifier (series, issuer, issue number, local id)."""
    match = WIGOS_ID.match(wigos_id) if isinstance(wigos_id, str) else None
    if match is None:
        raise ProductParameterError("wigos_id", f"{wigos_id!r} is not a WIGOS identifier (e.g. 0-20000-0-63740)")
    series, issuer, number, local = match.groups()
    return int(series), int(issuer), int(number), local


def station_index(wigos_id: str) -> str:
    """The WMO block and station number IIiii of a station, from its WIGOS identifier.

    Stations with a WMO index carry it as the local identifier (0-20000-0-63740 -> 63740).
    CLIMAT identifies the station only by IIiii, so a station without one cannot report.
    """
    local = split_wigos_id(wigos_id)[3]
    if not re.fullmatch(r"\d{5}", local):
        raise ProductParameterError(
            "wigos_id",
            f"{wigos_id!r}: the local identifier {local!r} is not a 5-digit WMO block and station "
            "number IIiii, which CLIMAT needs",
        )
    return local


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class ClimatMonthly:
    """The monthly values of Section 1 for one station and month; ``None`` means missing.

    Units: pressures hPa, temperatures degC, vapour pressure hPa, precipitation mm, sunshine
    hours.  ``precipitation_quintile`` is Rd (0: less than any value of the reference period,
    1-5: the quintile, 6: more than any value).  ``missing_days_*`` are the numbers of days
    missing from the records of each group (mPmP, mTmT, mTx, mTn, meme, mRmR, mSmS).
    """

    wigos_id: str
    year: int
    month: int
    station_pressure: float | None = None
    sea_level_pressure: float | None = None
    mean_temperature: float | None = None
    temperature_std: float | None = None
    mean_max_temperature: float | None = None
    mean_min_temperature: float | None = None
    vapour_pressure: float | None = None
    precipitation: float | None = None
    precipitation_quintile: int | None = None
    precipitation_days: int | None = None
    sunshine: float | None = None
    sunshine_percent_of_normal: float | None = None
    missing_days_pressure: int | None = None
    missing_days_temperature: int | None = None
    missing_days_max_temperature: int | None = None
    missing_days_min_temperature: int | None = None
    missing_days_vapour_pressure: int | None = None
    missing_days_precipitation: int | None = None
    missing_days_sunshine: int | None = None

    def __post_init__(self) -> None:
        station_index(self.wigos_id)
        check_year_month(self.year, self.month)
        days = calendar.monthrange(self.year, self.month)[1]
        # The limits are those of the code figures: a value that does not fit cannot be sent.
        _check_range(self, ("station_pressure", "sea_level_pressure"), 0.0, 1100.0, upper_open=True)
        _check_range(self, ("mean_temperature", "mean_max_temperature", "mean_min_temperature"), -99.9, 99.9)
        _check_range(self, ("temperature_std", "vapour_pressure"), 0.0, 99.9)
        _check_range(self, ("precipitation",), 0.0, 9998.0)
        _check_range(self, ("sunshine", "sunshine_percent_of_normal"), 0.0, 999.0)
        _check_int(self, ("precipitation_quintile",), 0, 6)
        _check_int(self, ("precipitation_days",), 0, days)
        _check_int(self, tuple(f.name for f in fields(self) if f.name.startswith("missing_days_")), 0, days)

    @property
    def station_index(self) -> str:
        return station_index(self.wigos_id)


@dataclass(frozen=True)
class ClimatNormals:
    """The normals of Section 2 for the same month, over ``first_year``..``last_year``.

    Same units as :class:`ClimatMonthly`; ``missing_years_*`` are the numbers of years missing
    from the calculation of each normal (yPyP, yTyT, yTxyTx, yeye, yRyR, ySyS).
    """

    first_year: int
    last_year: int
    station_pressure: float | None = None
    sea_level_pressure: float | None = None
    mean_temperature: float | None = None
    temperature_std: float | None = None
    mean_max_temperature: float | None = None
    mean_min_temperature: float | None = None
    vapour_pressure: float | None = None
    precipitation: float | None = None
    precipitation_days: int | None = None
    sunshine: float | None = None
    missing_years_pressure: int | None = None
    missing_years_temperature: int | None = None
    missing_years_extreme_temperatures: int | None = None
    missing_years_vapour_pressure: int | None = None
    missing_years_precipitation: int | None = None
    missing_years_sunshine: int | None = None

    def __post_init__(self) -> None:
        for name in ("first_year", "last_year"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1800 <= value <= 2999:
                raise ProductParameterError(name, f"{value!r} is not a year between 1800 and 2999")
        if self.last_year <= self.first_year:
            raise ProductParameterError("last_year", f"{self.last_year} is not after first_year {self.first_year}")
        _check_range(self, ("station_pressure", "sea_level_pressure"), 0.0, 1100.0, upper_open=True)
        _check_range(self, ("mean_temperature", "mean_max_temperature", "mean_min_temperature"), -99.9, 99.9)
        _check_range(self, ("temperature_std", "vapour_pressure"), 0.0, 99.9)
        _check_range(self, ("precipitation",), 0.0, 9998.0)
        _check_range(self, ("sunshine",), 0.0, 999.0)
        _check_int(self, ("precipitation_days",), 0, 31)
        years = self.last_year - self.first_year + 1
        _check_int(self, tuple(f.name for f in fields(self) if f.name.startswith("missing_years_")), 0, min(years, 99))

    def has_values(self) -> bool:
        """True when at least one normal (not only missing-year counts) is known."""
        return any(
            getattr(self, f.name) is not None
            for f in fields(self)
            if f.name not in ("first_year", "last_year") and not f.name.startswith("missing_years_")
        )


def _check_range(obj: object, names: tuple[str, ...], low: float, high: float, upper_open: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProductParameterError(name, f"{value!r} is not a number")
        if value < low or value > high or (upper_open and value >= high):
            bound = f"{low}..{high}" + (" (exclusive)" if upper_open else "")
            raise ProductParameterError(name, f"{value} is outside {bound}, which the code form can carry")


def _check_int(obj: object, names: tuple[str, ...], low: int, high: int) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ProductParameterError(name, f"{value!r} is not a whole number in {low}..{high}")


# --------------------------------------------------------------------------- encoding


def _rounded(value: float, decimals: int) -> int:
    """``value`` in units of 10**-decimals, rounded half away from zero on its decimal form."""
    # repr() gives the shortest decimal that reads back as the same float: 27.85 stays 27.85.
    return int(Decimal(repr(float(value))).scaleb(decimals).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _digits(value: int | None, width: int) -> str | None:
    return None if value is None else f"{value:0{width}d}"


def _tenths(value: float | None, width: int) -> str | None:
    """An unsigned quantity in tenths (vapour pressure, standard deviation)."""
    return None if value is None else f"{_rounded(value, 1):0{width}d}"


def _whole(value: float | None, width: int) -> str | None:
    """A quantity in whole units (precipitation mm, sunshine hours, percentages)."""
    return None if value is None else f"{_rounded(value, 0):0{width}d}"


def _signed_tenths(value: float | None) -> str | None:
    """``sTTT``: sign figure (0 positive or zero, 1 negative) then tenths of a degree."""
    if value is None:
        return None
    tenths = _rounded(value, 1)  # the sign of the *rounded* value: -0.04 is reported as 0000
    return f"{1 if tenths < 0 else 0}{abs(tenths):03d}"


def _pressure(value: float | None) -> str | None:
    """``PPPP``: tenths of hPa with the thousands digit omitted (1012.6 -> 0126)."""
    return None if value is None else f"{_rounded(value, 1) % 10000:04d}"


def _capped_digit(value: int | None) -> str | None:
    """A one-figure count of missing days (mTx, mTn): 9 stands for nine or more.

    Section 1 group 8 is ``8mPmPmTmTmTxmTn``: one figure each for Tx and Tn.  Counts above 9
    cannot be written; they are sent as 9, the convention of the other one-figure counts of
    missing days in the CLIMAT family (CLIMAT TEMP).
    """
    return None if value is None else str(min(value, 9))


def _group(indicator: str, *parts: tuple[str | None, int]) -> str | None:
    """One group: its indicator then each part; missing parts become solidi, all missing -> None."""
    if all(text is None for text, _ in parts):
        return None
    return indicator + "".join("/" * width if text is None else text for text, width in parts)


def section1_groups(monthly: ClimatMonthly) -> list[str]:
    """The groups of Section 1 (without ``111``), those with no data left out."""
    m = monthly
    groups = [
        # 1PoPoPoPo: mean station-level pressure.
        _group("1", (_pressure(m.station_pressure), 4)),
        # 2PPPP: mean sea-level pressure.
        _group("2", (_pressure(m.sea_level_pressure), 4)),
        # 3sTTTststst: mean air temperature; standard deviation of the daily means.
        _group("3", (_signed_tenths(m.mean_temperature), 4), (_tenths(m.temperature_std, 3), 3)),
        # 4sTxTxTxsTnTnTn: means of the daily maximum and of the daily minimum temperature.
        _group("4", (_signed_tenths(m.mean_max_temperature), 4), (_signed_tenths(m.mean_min_temperature), 4)),
        # 5eee: mean vapour pressure, tenths of hPa.
        _group("5", (_tenths(m.vapour_pressure, 3), 3)),
        # 6R1R1R1R1Rdnrnr: total precipitation (mm), its quintile, days with >= 1 mm.
        _group(
            "6",
            (_whole(m.precipitation, 4), 4),
            (_digits(m.precipitation_quintile, 1), 1),
            (_digits(m.precipitation_days, 2), 2),
        ),
        # 7S1S1S1pspsps: total sunshine (hours) and its percentage of the normal.
        _group("7", (_whole(m.sunshine, 3), 3), (_whole(m.sunshine_percent_of_normal, 3), 3)),
    ]
    value_groups = [g for g in groups if g is not None]
    if not value_groups:
        return []  # counts of missing days alone say nothing: no section 1
    counts = [
        # 8mPmPmTmTmTxmTn: days missing for pressure, air temperature, Tx, Tn.
        _group(
            "8",
            (_digits(m.missing_days_pressure, 2), 2),
            (_digits(m.missing_days_temperature, 2), 2),
            (_capped_digit(m.missing_days_max_temperature), 1),
            (_capped_digit(m.missing_days_min_temperature), 1),
        ),
        # 9mememRmRmSmS: days missing for vapour pressure, precipitation, sunshine.
        _group(
            "9",
            (_digits(m.missing_days_vapour_pressure, 2), 2),
            (_digits(m.missing_days_precipitation, 2), 2),
            (_digits(m.missing_days_sunshine, 2), 2),
        ),
    ]
    return value_groups + [g for g in counts if g is not None]


def section2_groups(normals: ClimatNormals) -> list[str]:
    """The groups of Section 2 (without ``222``); empty when no normal is known."""
    if not normals.has_values():
        return []
    n = normals
    groups = [
        # 0YbYbYcYc: last two figures of the first and the last year of the period.
        f"0{n.first_year % 100:02d}{n.last_year % 100:02d}",
        _group("1", (_pressure(n.station_pressure), 4)),
        _group("2", (_pressure(n.sea_level_pressure), 4)),
        _group("3", (_signed_tenths(n.mean_temperature), 4), (_tenths(n.temperature_std, 3), 3)),
        _group("4", (_signed_tenths(n.mean_max_temperature), 4), (_signed_tenths(n.mean_min_temperature), 4)),
        _group("5", (_tenths(n.vapour_pressure, 3), 3)),
        # 6R1R1R1R1nrnr: no quintile in the normals.
        _group("6", (_whole(n.precipitation, 4), 4), (_digits(n.precipitation_days, 2), 2)),
        # 7S1S1S1: no percentage in the normals.
        _group("7", (_whole(n.sunshine, 3), 3)),
        # 8yPyPyTyTyTxyTx: years missing for pressure, air temperature, extreme temperatures.
        _group(
            "8",
            (_digits(n.missing_years_pressure, 2), 2),
            (_digits(n.missing_years_temperature, 2), 2),
            (_digits(n.missing_years_extreme_temperatures, 2), 2),
        ),
        # 9yeyeyRyRySyS: years missing for vapour pressure, precipitation, sunshine.
        _group(
            "9",
            (_digits(n.missing_years_vapour_pressure, 2), 2),
            (_digits(n.missing_years_precipitation, 2), 2),
            (_digits(n.missing_years_sunshine, 2), 2),
        ),
    ]
    return [g for g in groups if g is not None]


def _wrap(words: list[str]) -> list[str]:
    """Words joined by spaces in lines of at most MAX_LINE characters."""
    lines: list[str] = []
    current = ""
    for word in words:
        if current and len(current) + 1 + len(word) > MAX_LINE:
            lines.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        lines.append(current)
    return lines


def format_climat(monthly: ClimatMonthly, normals: ClimatNormals | None = None) -> str:
    """The CLIMAT report text (FM 71) of one station and month; ``=`` ends it.

    Section 0 on the first line, then each section on lines of its own.  Without any data the
    report is ``CLIMAT MMJJJ IIiii NIL=``.
    """
    # Section 0: MM month, JJJ the last three figures of the year, IIiii the station.
    section0 = f"CLIMAT {monthly.month:02d}{monthly.year % 1000:03d} {monthly.station_index}"
    sections = []
    groups1 = section1_groups(monthly)
    if groups1:
        sections.append(["111", *groups1])
    groups2 = section2_groups(normals) if normals is not None else []
    if groups2:
        sections.append(["222", *groups2])
    if not sections:
        return f"{section0} NIL="
    lines = [section0]
    for words in sections:
        lines.extend(_wrap(words))
    lines[-1] += "="
    return "\n".join(lines)


# --------------------------------------------------------------------------- from daily values


# WMO-No. 1203 (2017): no monthly value if more than 10 daily values are missing or five or
# more consecutive ones, i.e. at most 10 missing and at most 4 in a row.  CLIMAT applies it to
# every element, totals (precipitation, sunshine) included, and reports the missing days beside
# the value (groups 8 and 9).
CLIMAT_RULE = CompletenessRule(max_missing=10, max_consecutive_missing=4, totals_require_complete=False)


def vapour_pressure_hpa(dew_point_c: float) -> float:
    """Saturation vapour pressure over water at the dew point (hPa): the actual vapour pressure.

    Magnus formula of the WMO Guide to Instruments and Methods of Observation (WMO-No. 8,
    Annex 4.B): e_w(t) = 6.112 exp(17.62 t / (243.12 + t)).
    """
    return 6.112 * math.exp(17.62 * dew_point_c / (243.12 + dew_point_c))


# The archive elements each CLIMAT quantity is computed from.
CLIMAT_ELEMENTS = ("PRES", "MSLP", "TMEAN", "TMAX", "TMIN", "TDEW", "PRCP", "SUN")

_Daily = Mapping[str, Mapping[date, float]]  # element -> day -> value


@dataclass(frozen=True)
class _MonthStats:
    """The monthly values of one year-month (``None``: not computable) and its missing days."""

    values: dict[str, float | int | None]
    missing: dict[str, int]


def _month_days(year: int, month: int) -> list[date]:
    return [date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]


def _month_stats(year: int, month: int, daily: _Daily, rule: CompletenessRule) -> _MonthStats:
    days = _month_days(year, month)

    def series(element: str) -> tuple[list[float], list[bool]]:
        by_day = daily.get(element, {})
        present = [day in by_day for day in days]
        return [by_day[day] for day in days if day in by_day], present

    values: dict[str, float | int | None] = {}
    missing: dict[str, int] = {}

    def usable(element: str) -> list[float] | None:
        got, present = series(element)
        missing[element] = present.count(False)
        return got if got and rule.allows(present) else None

    pres, mslp = usable("PRES"), usable("MSLP")
    tmean, tmax, tmin = usable("TMEAN"), usable("TMAX"), usable("TMIN")
    tdew, prcp, sun = usable("TDEW"), usable("PRCP"), usable("SUN")
    values["station_pressure"] = statistics.fmean(pres) if pres else None
    values["sea_level_pressure"] = statistics.fmean(mslp) if mslp else None
    values["mean_temperature"] = statistics.fmean(tmean) if tmean else None
    # Sample standard deviation of the daily means about the monthly mean (needs two days).
    values["temperature_std"] = statistics.stdev(tmean) if tmean and len(tmean) > 1 else None
    values["mean_max_temperature"] = statistics.fmean(tmax) if tmax else None
    values["mean_min_temperature"] = statistics.fmean(tmin) if tmin else None
    # Mean of the daily vapour pressures, each from the day's (mean) dew point.
    values["vapour_pressure"] = statistics.fmean(vapour_pressure_hpa(t) for t in tdew) if tdew else None
    values["precipitation"] = math.fsum(prcp) if prcp else None
    values["precipitation_days"] = sum(1 for r in prcp if r >= 1.0) if prcp else None
    values["sunshine"] = math.fsum(sun) if sun else None
    # mPmP counts the pressure reported: station pressure, else sea-level pressure.
    missing["pressure"] = missing["PRES"] if pres is not None or mslp is None else missing["MSLP"]
    return _MonthStats(values, missing)


def precipitation_quintile(total: float, reference_totals: Sequence[float]) -> int:
    """Rd: where ``total`` falls among the monthly totals of the reference period.

    0 below every reference value, 6 above every one, otherwise the quintile 1..5.  Quintile
    limits lie between order statistics (for 30 years: between the 6th and 7th, 12th and
    13th, ... values); a total equal to a limit counts in the lower quintile.
    """
    ordered = sorted(reference_totals)
    if not ordered:
        raise ValueError("reference_totals is empty")
    if total < ordered[0]:
        return 0
    if total > ordered[-1]:
        return 6
    n = len(ordered)
    limits = []
    for k in range(1, 5):
        position = n * k / 5
        whole = int(position)
        if position == whole:
            limits.append((ordered[whole - 1] + ordered[whole]) / 2)
        else:
            limits.append(ordered[whole])
    return 1 + sum(1 for limit in limits if total > limit)


@dataclass(frozen=True)
class ClimatData:
    """What :func:`climat_from_archive` found: the month's values and, if computable, normals.

    ``monthly`` is ``None`` (and ``reason`` says why) when the station has no daily value in the
    month.
    """

    wigos_id: str
    year: int
    month: int
    monthly: ClimatMonthly | None
    normals: ClimatNormals | None
    reason: str | None = None


_DAILY_SQL = """
SELECT element,
       CAST(epoch(phenomenon_time) // 86400 AS BIGINT) AS day_number,
       value,
       source_id,
       level
FROM observations
WHERE wigos_id = $wigos_id
  AND element IN (SELECT unnest($elements))
  AND year BETWEEN $first_year AND $last_year
  AND duration_seconds = 86400
  AND value IS NOT NULL
  AND coalesce(qc_status, 'none') <> 'failed'
  AND CAST(epoch(phenomenon_time) // 86400 AS BIGINT) IN (SELECT unnest($days))
-- One value per element and day: when several sources or levels report, the lowest source id
-- (then level) wins, so the result does not depend on file order.
QUALIFY row_number() OVER (PARTITION BY element, day_number ORDER BY source_id, level) = 1
"""

_STATION_SQL = "SELECT 1 FROM observations WHERE wigos_id = $wigos_id LIMIT 1"

_EPOCH = date(1970, 1, 1)


def read_daily_values(
    connection: duckdb.DuckDBPyConnection,
    wigos_id: str,
    elements: Iterable[str],
    days: Sequence[date],
) -> dict[str, dict[date, float]]:
    """Daily values (duration one day, 00:00 UTC) of a station on the given days.

    Values failed by quality control are left out, i.e. treated as missing.  Raises
    :class:`UnknownReferenceError` when the archive has no value at all for ``wigos_id``.
    """
    split_wigos_id(wigos_id)
    if connection.execute(_STATION_SQL, {"wigos_id": wigos_id}).fetchone() is None:
        raise UnknownReferenceError(f"parameter 'wigos_id': station {wigos_id!r} has no observations in the archive")
    if not days:
        return {}
    numbers = sorted({(day - _EPOCH).days for day in days})
    rows = connection.execute(
        _DAILY_SQL,
        {
            "wigos_id": wigos_id,
            "elements": list(elements),
            "first_year": min(days).year,
            "last_year": max(days).year,
            "days": numbers,
        },
    ).fetchall()
    daily: dict[str, dict[date, float]] = {}
    for element, day_number, value, _source, _level in rows:
        daily.setdefault(element, {})[date.fromordinal(_EPOCH.toordinal() + day_number)] = float(value)
    return daily


def climat_from_archive(
    connection: duckdb.DuckDBPyConnection,
    wigos_id: str,
    year: int,
    month: int,
    *,
    normals_period: tuple[int, int] | None = (1991, 2020),
    rule: CompletenessRule = CLIMAT_RULE,
    normals_rule: NormalsRule = NormalsRule(),
) -> ClimatData:
    """Monthly values and normals of one station and month from the archive's daily values.

    ``connection`` has the ``observations`` view of :func:`opencdms_kernel.archive.connect_archive`.
    Elements: PRES (station pressure), MSLP, TMEAN (daily mean temperature), TMAX, TMIN,
    TDEW (vapour pressure from the dew point), PRCP, SUN.  Normals are the means of the
    monthly values (same completeness rule) of the years of ``normals_period`` that have
    them; Rd (precipitation quintile) and the sunshine percentage need those normals.
    ``normals_period=None`` leaves Section 2 out.
    """
    year, month = check_year_month(year, month)
    station_index(wigos_id)
    if normals_period is not None:
        first, last = normals_period
        ClimatNormals(first_year=first, last_year=last)  # checks the period, naming the bad year
        years = sorted(set(range(first, last + 1)) | {year})
    else:
        years = [year]
    days = [day for y in years for day in _month_days(y, month)]
    daily = read_daily_values(connection, wigos_id, CLIMAT_ELEMENTS, days)
    target_days = set(_month_days(year, month))
    if not any(day in target_days for values in daily.values() for day in values):
        return ClimatData(
            wigos_id, year, month, None, None,
            reason=f"no daily values for station {wigos_id} in {year:04d}-{month:02d}",
        )

    def of_year(y: int) -> _Daily:
        return {e: {d: v for d, v in values.items() if d.year == y} for e, values in daily.items()}

    stats = _month_stats(year, month, of_year(year), rule)
    normals = None
    quintile = None
    sunshine_percent = None
    if normals_period is not None:
        per_year = {y: _month_stats(y, month, of_year(y), rule) for y in range(normals_period[0], normals_period[1] + 1)}
        normals = _normals(normals_period, per_year, normals_rule)
        totals = [s.values["precipitation"] for s in per_year.values() if s.values["precipitation"] is not None]
        if stats.values["precipitation"] is not None and normals.precipitation is not None:
            quintile = precipitation_quintile(stats.values["precipitation"], totals)  # type: ignore[arg-type]
        if stats.values["sunshine"] is not None and normals.sunshine:
            sunshine_percent = 100.0 * stats.values["sunshine"] / normals.sunshine  # type: ignore[operator]
        if not normals.has_values():
            normals = None
    v = stats.values
    monthly = ClimatMonthly(
        wigos_id=wigos_id,
        year=year,
        month=month,
        station_pressure=v["station_pressure"],  # type: ignore[arg-type]
        sea_level_pressure=v["sea_level_pressure"],  # type: ignore[arg-type]
        mean_temperature=v["mean_temperature"],  # type: ignore[arg-type]
        temperature_std=v["temperature_std"],  # type: ignore[arg-type]
        mean_max_temperature=v["mean_max_temperature"],  # type: ignore[arg-type]
        mean_min_temperature=v["mean_min_temperature"],  # type: ignore[arg-type]
        vapour_pressure=v["vapour_pressure"],  # type: ignore[arg-type]
        precipitation=v["precipitation"],  # type: ignore[arg-type]
        precipitation_quintile=quintile,
        precipitation_days=v["precipitation_days"],  # type: ignore[arg-type]
        sunshine=v["sunshine"],  # type: ignore[arg-type]
        sunshine_percent_of_normal=min(sunshine_percent, 999.0) if sunshine_percent is not None else None,
        missing_days_pressure=stats.missing["pressure"],
        missing_days_temperature=stats.missing["TMEAN"],
        missing_days_max_temperature=stats.missing["TMAX"],
        missing_days_min_temperature=stats.missing["TMIN"],
        missing_days_vapour_pressure=stats.missing["TDEW"],
        missing_days_precipitation=stats.missing["PRCP"],
        missing_days_sunshine=stats.missing["SUN"],
    )
    return ClimatData(wigos_id, year, month, monthly, normals)


def _normals(period: tuple[int, int], per_year: Mapping[int, _MonthStats], rule: NormalsRule) -> ClimatNormals:
    years = sorted(per_year)

    def normal(name: str) -> tuple[float | None, int]:
        present = [per_year[y].values[name] is not None for y in years]
        missing = present.count(False)
        if not rule.allows(present):
            return None, missing
        return statistics.fmean(per_year[y].values[name] for y in years if per_year[y].values[name] is not None), missing  # type: ignore[misc]

    values = {}
    missing = {}
    for name in (
        "station_pressure", "sea_level_pressure", "mean_temperature", "temperature_std",
        "mean_max_temperature", "mean_min_temperature", "vapour_pressure", "precipitation",
        "precipitation_days", "sunshine",
    ):
        values[name], missing[name] = normal(name)
    days = values.pop("precipitation_days")
    # yTxyTx: one count for the extremes; a year lacking either mean counts as missing.
    extremes = sum(
        1 for y in years
        if per_year[y].values["mean_max_temperature"] is None or per_year[y].values["mean_min_temperature"] is None
    )
    pressure_name = "station_pressure" if values["station_pressure"] is not None or values["sea_level_pressure"] is None else "sea_level_pressure"
    return ClimatNormals(
        first_year=period[0],
        last_year=period[1],
        **values,  # type: ignore[arg-type]
        precipitation_days=None if days is None else _rounded(days, 0),
        missing_years_pressure=missing[pressure_name],
        missing_years_temperature=missing["mean_temperature"],
        missing_years_extreme_temperatures=extremes,
        missing_years_vapour_pressure=missing["vapour_pressure"],
        missing_years_precipitation=missing["precipitation"],
        missing_years_sunshine=missing["sunshine"],
    )


# --------------------------------------------------------------------------- product


@dataclass(frozen=True)
class ClimatProduct:
    """A CLIMAT report written to the bucket, or why none was (``key`` and ``text`` None)."""

    wigos_id: str
    year: int
    month: int
    key: str | None
    text: str | None
    data: ClimatData

    @property
    def empty(self) -> bool:
        return self.key is None

    @property
    def reason(self) -> str | None:
        return self.data.reason


def climat_key(wigos_id: str, year: int, month: int) -> str:
    """Bucket key of the report: ``products/climat/<wigos_id>/<YYYY-MM>.txt``."""
    split_wigos_id(wigos_id)
    return f"{CLIMAT_PREFIX}/{wigos_id}/{year:04d}-{month:02d}.txt"


def produce_climat(
    connection: duckdb.DuckDBPyConnection,
    bucket: Bucket,
    wigos_id: str,
    year: int,
    month: int,
    *,
    normals_period: tuple[int, int] | None = (1991, 2020),
    rule: CompletenessRule = CLIMAT_RULE,
    normals_rule: NormalsRule = NormalsRule(),
) -> ClimatProduct:
    """Build the CLIMAT report of one station and month from the archive and write it.

    A month without any daily value writes nothing and returns an empty product whose
    ``reason`` says so; an unknown station or a bad year/month raises an error naming it.
    """
    data = climat_from_archive(
        connection, wigos_id, year, month, normals_period=normals_period, rule=rule, normals_rule=normals_rule
    )
    if data.monthly is None:
        return ClimatProduct(wigos_id, year, month, None, None, data)
    text = format_climat(data.monthly, data.normals)
    key = climat_key(wigos_id, year, month)
    bucket.write_bytes(key, (text + "\n").encode("ascii"))
    return ClimatProduct(wigos_id, year, month, key, text, data)
