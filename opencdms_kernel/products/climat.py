"""CLIMAT (FM 71-XII) monthly climate reports: sections 0 to 4 as WMO text.

What is implemented (WMO-No. 306, Manual on Codes, Vol. I.1, Part A, FM 71-XII CLIMAT)::

    Section 0   CLIMAT MMJJJ IIiii
    Section 1   111 1PoPoPoPo 2PPPP 3sTTTststst 4sTxTxTxsTnTnTn 5eee 6R1R1R1R1Rdnrnr
                    7S1S1S1pspsps 8mPmPmTmTmTxmTn 9mememRmRmSmS
    Section 2   222 0YbYbYcYc 1PoPoPoPo 2PPPP 3sTTTststst 4sTxTxTxsTnTnTn 5eee
                    6R1R1R1R1nrnr 7S1S1S1 8yPyPyTyTyTxyTx 9yeyeyRyRySyS
    Section 3   333 0T25T25T30T30 1T35T35T40T40 2Tn0Tn0Tx0Tx0 3R01R01R05R05
                    4R10R10R50R50 5R100R100R150R150 6s00s00s01s01 7s10s10s50s50
    Section 4   444 0sTxdTxdTxdyxyx 1sTndTndTndynyn 2sTaxTaxTaxyaxyax 3sTanTanTanyanyan
                    4RxRxRxRxyryr

Section 3 counts the days of the month beyond thresholds: Tx >= 25, 30, 35, 40 degC; Tn < 0
and Tx < 0 degC; precipitation >= 1, 5, 10, 50, 100, 150 mm; snow depth > 0, 1, 10, 50 cm.
Section 4 gives the month's extremes and the day they occurred: the highest and lowest daily
mean temperature, the highest maximum and lowest minimum temperature, the highest daily
precipitation (tenths of mm).  Not produced, for want of the elements: groups 8 (days with
10-minute mean wind >= 10, 20, 30 m/s) and 9 (visibility) of section 3, groups 5 (highest
wind speed), 6 (days with thunderstorm, hail) and 7 (times of the extreme-temperature
readings) of section 4, and the geopotential that high-level stations may report in 2PPPP.

Notes on the form, because they are easy to get wrong:

* Not every group is five characters.  In sections 1 and 2 of FM 71 the groups are written as
  the code form shows them, one word each: ``3sTTTststst`` is 8 characters, ``4sTxTxTxsTnTnTn``
  9, ``6R1R1R1R1Rdnrnr`` 8, ``7S1S1S1pspsps`` 7, groups 8 and 9 are 7.  CLIMAT reports as
  circulated look like this (Byrd AWS, July 2023: ``111 18023 31296108 412411361 8000000
  9313131``) and decoders read them so (NCEI's climat_decoder reads group 4 as one 9-character
  word).  Section 3 groups are 5 characters, group 5 seven; section 4 groups 7 (group 2 and 3
  too: a sign figure, three figures of tenths, two of the day).
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
* The day of an extreme (section 4) is the day of its first occurrence; when the value
  occurred on more than one day of the month, 50 is added to that day (as the BUFR form says
  with its day-of-occurrence qualifier, code table 0 08 053).
* Lines of text are at most 69 characters (Manual on the GTS, WMO-No. 386); a section that is
  longer continues on the next line.  The report ends with ``=``.

The values come from the products layer, not from queries of this module's own:
:func:`climat_from_archive` takes the month's statistics from
:func:`~opencdms_kernel.products.summaries.monthly_table` (the station-local day, the rule for
choosing between sources, days made from sub-daily values, the QC policy and the completeness
rule are those of every product) and the normals from
:func:`~opencdms_kernel.products.normals.normals_from_monthly`.  What is left here is the
code form: which statistic goes in which group and how it is written.  :func:`produce_climat`
writes ``products/climat/<wigos_id>/<YYYY-MM>.txt`` (earlier versions are kept); the BUFR form
(sequence 3 07 073) is in :mod:`.climat_bufr`.
"""

from __future__ import annotations

import calendar
import json
import math
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products.completeness import MAX_MASK_BITS
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    SUB_DAILY_RULE,
    CompletenessRule,
    Element,
    NormalsRule,
    Period,
    ProductParameterError,
    ProductReferenceError,
    QcPolicy,
    Threshold,
    figure,
)
from opencdms_kernel.products.normals import NormalStatistic, check_normals_rule, normals_from_monthly
from opencdms_kernel.products.sql import Selection, select
from opencdms_kernel.products.store import Replaced, write_versioned
from opencdms_kernel.products.summaries import check_rule, monthly_table
from opencdms_kernel.vocabulary import Month, check_year, parse_wigos_id

CLIMAT_PREFIX = "products/climat"

# Manual on the GTS (WMO-No. 386): a line of text in a bulletin is at most 69 characters.
MAX_LINE = 69



# --------------------------------------------------------------------------- parameters


def check_year_month(year: object, month: object) -> tuple[int, int]:
    """``(year, month)`` as integers, or :class:`ProductParameterError` naming the bad one
    (``year`` or ``month``), by the vocabulary's :class:`~opencdms_kernel.vocabulary.Month`."""
    try:
        checked = Month(year, month)  # type: ignore[arg-type]
    except ProductParameterError as exc:
        raise ProductParameterError(exc.parameter.removeprefix("month."), exc.reason) from None
    return checked.year, checked.month


def split_wigos_id(wigos_id: str) -> tuple[int, int, int, str]:
    """The four parts of a WIGOS station identifier (series, issuer, issue number, local id),
    by the system's one definition (:func:`opencdms_kernel.vocabulary.parse_wigos_id`)."""
    if not isinstance(wigos_id, str):
        raise ProductParameterError("wigos_id", f"{wigos_id!r} is not a WIGOS identifier (e.g. 0-20000-0-63740)")
    try:
        parts = parse_wigos_id(wigos_id)
    except ValueError as exc:
        raise ProductParameterError("wigos_id", str(exc)) from None
    return parts.series, parts.issuer, parts.issue_number, parts.local_id


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
class ClimatExtreme:
    """An extreme of the month (section 4): the value, the day it first occurred, and whether it
    occurred on more than one day (``several_days``)."""

    value: float
    day: int
    several_days: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ProductParameterError("extreme", f"{self.value!r} is not a number")
        if isinstance(self.day, bool) or not isinstance(self.day, int) or not 1 <= self.day <= 31:
            raise ProductParameterError("extreme", f"{self.day!r} is not a day of the month")

    @property
    def day_figures(self) -> str:
        """The two figures of the day: 50 added when the value occurred on more than one day."""
        return f"{self.day + (50 if self.several_days else 0):02d}"


# Section 3: (field, element, comparison, threshold) of each count, in the order of the groups.
SECTION3_COUNTS = (
    ("days_max_ge_25", "TMAX", ">=", 25.0), ("days_max_ge_30", "TMAX", ">=", 30.0),
    ("days_max_ge_35", "TMAX", ">=", 35.0), ("days_max_ge_40", "TMAX", ">=", 40.0),
    ("days_min_below_0", "TMIN", "<", 0.0), ("days_max_below_0", "TMAX", "<", 0.0),
    ("days_precipitation_ge_1", "PRCP", ">=", 1.0), ("days_precipitation_ge_5", "PRCP", ">=", 5.0),
    ("days_precipitation_ge_10", "PRCP", ">=", 10.0), ("days_precipitation_ge_50", "PRCP", ">=", 50.0),
    ("days_precipitation_ge_100", "PRCP", ">=", 100.0), ("days_precipitation_ge_150", "PRCP", ">=", 150.0),
    ("days_snow_above_0", "SNWD", ">", 0.0), ("days_snow_above_1", "SNWD", ">", 1.0),
    ("days_snow_above_10", "SNWD", ">", 10.0), ("days_snow_above_50", "SNWD", ">", 50.0),
)
# Section 4: (field, element, extreme of the month's daily values).
SECTION4_EXTREMES = (
    ("highest_daily_mean_temperature", "TMEAN", "highest"),
    ("lowest_daily_mean_temperature", "TMEAN", "lowest"),
    ("highest_temperature", "TMAX", "highest"),
    ("lowest_temperature", "TMIN", "lowest"),
    ("highest_daily_precipitation", "PRCP", "highest"),
)


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
    # Section 3: numbers of days beyond thresholds (see SECTION3_COUNTS).
    days_max_ge_25: int | None = None
    days_max_ge_30: int | None = None
    days_max_ge_35: int | None = None
    days_max_ge_40: int | None = None
    days_min_below_0: int | None = None
    days_max_below_0: int | None = None
    days_precipitation_ge_1: int | None = None
    days_precipitation_ge_5: int | None = None
    days_precipitation_ge_10: int | None = None
    days_precipitation_ge_50: int | None = None
    days_precipitation_ge_100: int | None = None
    days_precipitation_ge_150: int | None = None
    days_snow_above_0: int | None = None
    days_snow_above_1: int | None = None
    days_snow_above_10: int | None = None
    days_snow_above_50: int | None = None
    # Section 4: extremes and their days.
    highest_daily_mean_temperature: ClimatExtreme | None = None
    lowest_daily_mean_temperature: ClimatExtreme | None = None
    highest_temperature: ClimatExtreme | None = None
    lowest_temperature: ClimatExtreme | None = None
    highest_daily_precipitation: ClimatExtreme | None = None

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
        _check_int(self, tuple(name for name, *_ in SECTION3_COUNTS), 0, days)
        for name, element, _ in SECTION4_EXTREMES:
            extreme = getattr(self, name)
            if extreme is None:
                continue
            if not isinstance(extreme, ClimatExtreme):
                raise ProductParameterError(name, f"expected a ClimatExtreme, not {extreme!r}")
            if extreme.day > days:
                raise ProductParameterError(name, f"day {extreme.day} is not in {self.year:04d}-{self.month:02d}")
            low, high = (0.0, 999.9) if element == "PRCP" else (-99.9, 99.9)
            if not low <= extreme.value <= high:
                raise ProductParameterError(name, f"{extreme.value} is outside {low}..{high}, which the code form can carry")

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
    # Not in the text form (yTx counts both); BUFR reports them apart (0 08 050 = 7, 8).
    missing_years_max_temperature: int | None = None
    missing_years_min_temperature: int | None = None

    def __post_init__(self) -> None:
        for name in ("first_year", "last_year"):
            check_year(getattr(self, name), name)
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
    """``value`` in units of 10**-decimals, rounded as every product publishes figures
    (:func:`~opencdms_kernel.products.model.figure`: half away from zero on the decimal form)."""
    return int(figure(value, decimals).scaleb(decimals))


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


def section3_groups(monthly: ClimatMonthly) -> list[str]:
    """The groups of Section 3 (without ``333``): numbers of days, two figures each."""
    m = monthly

    def days(*names: str) -> tuple[tuple[str | None, int], ...]:
        return tuple((_digits(getattr(m, name), 2), 2) for name in names)

    groups = [
        _group("0", *days("days_max_ge_25", "days_max_ge_30")),                          # 0T25T25T30T30
        _group("1", *days("days_max_ge_35", "days_max_ge_40")),                          # 1T35T35T40T40
        _group("2", *days("days_min_below_0", "days_max_below_0")),                      # 2Tn0Tn0Tx0Tx0
        _group("3", *days("days_precipitation_ge_1", "days_precipitation_ge_5")),        # 3R01R01R05R05
        _group("4", *days("days_precipitation_ge_10", "days_precipitation_ge_50")),      # 4R10R10R50R50
        _group("5", *days("days_precipitation_ge_100", "days_precipitation_ge_150")),    # 5R100R100R150R150
        _group("6", *days("days_snow_above_0", "days_snow_above_1")),                    # 6s00s00s01s01
        _group("7", *days("days_snow_above_10", "days_snow_above_50")),                  # 7s10s10s50s50
    ]
    return [g for g in groups if g is not None]


def section4_groups(monthly: ClimatMonthly) -> list[str]:
    """The groups of Section 4 (without ``444``): extremes and the day they (first) occurred."""
    m = monthly

    def temperature(extreme: ClimatExtreme | None) -> tuple[tuple[str | None, int], ...]:
        if extreme is None:
            return ((None, 4), (None, 2))
        return ((_signed_tenths(extreme.value), 4), (extreme.day_figures, 2))

    rain = m.highest_daily_precipitation
    groups = [
        _group("0", *temperature(m.highest_daily_mean_temperature)),   # 0sTxdTxdTxdyxyx
        _group("1", *temperature(m.lowest_daily_mean_temperature)),    # 1sTndTndTndynyn
        _group("2", *temperature(m.highest_temperature)),              # 2sTaxTaxTaxyaxyax
        _group("3", *temperature(m.lowest_temperature)),               # 3sTanTanTanyanyan
        # 4RxRxRxRxyryr: the highest daily amount in tenths of a millimetre.
        _group("4", (None if rain is None else _tenths(rain.value, 4), 4), (None if rain is None else rain.day_figures, 2)),
    ]
    return [g for g in groups if g is not None]


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

    Section 0 on the first line, then each section (1 to 4) on lines of its own.  Without any data the
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
    groups3 = section3_groups(monthly)
    if groups3:
        sections.append(["333", *groups3])
    groups4 = section4_groups(monthly)
    if groups4:
        sections.append(["444", *groups4])
    if not sections:
        return f"{section0} NIL="
    lines = [section0]
    for words in sections:
        lines.extend(_wrap(words))
    lines[-1] += "="
    return "\n".join(lines)


# --------------------------------------------------------------------------- from the products layer


# WMO-No. 1203 (2017): no monthly value if more than 10 daily values are missing or five or
# more consecutive ones, i.e. at most 10 missing and at most 4 in a row.  CLIMAT applies it to
# every element, totals (precipitation, sunshine) included, and reports the missing days beside
# the value (groups 8 and 9).  It is applied by the same code as every other rule
# (:mod:`.completeness`), only with these numbers.
CLIMAT_RULE = CompletenessRule(max_missing=10, max_consecutive_missing=4, totals_require_complete=False)

# The archive elements the CLIMAT quantities are computed from (TDEW: the vapour pressure).
CLIMAT_ELEMENTS = ("PRES", "MSLP", "TMEAN", "TMAX", "TMIN", "TDEW", "PRCP", "SUN", "SNWD")
CLIMAT_THRESHOLDS = tuple(Threshold(element, comparison, value) for _, element, comparison, value in SECTION3_COUNTS)
_PRECIPITATION_DAYS = Threshold("PRCP", ">=", 1.0).name

# Section 2: the normals of the monthly statistics section 1 reports, by the one normals
# computation (normals_from_monthly).
_NORMAL_STATISTICS = (
    NormalStatistic(Element.PRES, "mean", "mean", "avg"),
    NormalStatistic(Element.MSLP, "mean", "mean", "avg"),
    NormalStatistic(Element.TMEAN, "mean", "mean", "avg"),
    NormalStatistic(Element.TMEAN, "std", "std", "avg"),
    NormalStatistic(Element.TMAX, "mean", "mean", "avg"),
    NormalStatistic(Element.TMIN, "mean", "mean", "avg"),
    NormalStatistic(Element.TDEW, "vapour_pressure", "vapour_pressure", "avg"),
    NormalStatistic(Element.PRCP, "total", "total", "sum"),
    NormalStatistic(Element.PRCP, _PRECIPITATION_DAYS, _PRECIPITATION_DAYS, "sum"),
    NormalStatistic(Element.SUN, "total", "total", "sum"),
)


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
    month.  ``qc``: the QC policy and, per element, the suspect values the month used and the
    values it excluded.
    """

    wigos_id: str
    year: int
    month: int
    monthly: ClimatMonthly | None
    normals: ClimatNormals | None
    reason: str | None = None
    qc: Mapping[str, Any] = field(default_factory=dict)


def station_selection(
    connection: duckdb.DuckDBPyConnection,
    wigos_id: str,
    period: Period,
    elements: Sequence[str],
    qc: QcPolicy,
    timezones: Mapping[str, str] | None,
) -> Selection:
    """The products' selection of one station (a message is about one): an unknown station is
    an :class:`~opencdms_kernel.errors.UnknownReferenceError` naming ``wigos_id``."""
    split_wigos_id(wigos_id)
    try:
        return select(connection, period, elements, [wigos_id], qc, timezones)
    except ProductReferenceError as exc:
        if exc.parameter != "stations":
            raise
        raise ProductReferenceError("wigos_id", wigos_id, f"station {wigos_id!r} has no observations in the archive") from None


def climat_from_archive(
    connection: duckdb.DuckDBPyConnection,
    wigos_id: str,
    year: int,
    month: int,
    *,
    normals_period: tuple[int, int] | None = (1991, 2020),
    rule: CompletenessRule = CLIMAT_RULE,
    normals_rule: NormalsRule = NormalsRule(),
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
    sub_daily_rule: CompletenessRule = SUB_DAILY_RULE,
) -> ClimatData:
    """Monthly values and normals of one station and month, from the products layer.

    ``connection`` has the ``observations`` view of :func:`opencdms_kernel.archive.connect_archive`.
    Elements: PRES (station pressure), MSLP, TMEAN (daily mean temperature), TMAX, TMIN,
    TDEW (vapour pressure from the dew point), PRCP, SUN, SNWD (section 3).  The month's
    statistics are those of :func:`~opencdms_kernel.products.summaries.monthly_table` under
    ``rule`` (station-local days of ``timezones``, QC policy ``qc``, days made from sub-daily
    values under ``sub_daily_rule``); the normals are
    :func:`~opencdms_kernel.products.normals.normals_from_monthly` of the same statistics over
    ``normals_period`` under ``normals_rule``.  Rd (precipitation quintile) and the sunshine
    percentage need those normals.  ``normals_period=None`` leaves Section 2 out.
    """
    year, month = check_year_month(year, month)
    station_index(wigos_id)
    rule = check_rule(rule)
    normals_rule = check_normals_rule(normals_rule)
    if normals_period is not None:
        first, last = normals_period
        ClimatNormals(first_year=first, last_year=last)  # checks the period, naming the bad year
        if last - first + 1 > MAX_MASK_BITS:
            raise ProductParameterError("normals_period", f"{first}-{last} is longer than {MAX_MASK_BITS} years")
        span = Period(min(first, year), max(last, year))
    else:
        span = Period(year, year)
    selection = station_selection(connection, wigos_id, span, CLIMAT_ELEMENTS, qc, timezones)
    monthly = monthly_table(connection, selection, rule, CLIMAT_THRESHOLDS, every_month=False, detail=True,
                            sub_daily_rule=sub_daily_rule)
    of_month = monthly.filter(pc.equal(monthly["month"], month))
    target = {row["element"]: row for row in of_month.filter(pc.equal(of_month["year"], year)).to_pylist()}
    summary = {
        "policy": qc.as_dict(),
        "suspect_values_used": {element: row["suspect_values"] for element, row in sorted(target.items())},
        "values_excluded": {element: row["excluded_values"] for element, row in sorted(target.items())},
    }
    if not any(row["value_days"] for row in target.values()):
        return ClimatData(
            wigos_id, year, month, None, None,
            reason=f"no daily values for station {wigos_id} in {year:04d}-{month:02d}", qc=summary,
        )
    normals = quintile = sunshine_percent = None
    if normals_period is not None:
        first, last = normals_period
        years = pc.and_(pc.greater_equal(of_month["year"], first), pc.less_equal(of_month["year"], last))
        reference = of_month.filter(years)
        table = normals_from_monthly(connection, reference, Period(first, last), normals_rule, _NORMAL_STATISTICS)
        normals = _climat_normals(table, first, last)
        precipitation = target.get("PRCP", {}).get("total")
        totals = [row["total"] for row in reference.filter(pc.equal(reference["element"], "PRCP")).to_pylist()
                  if row["total"] is not None]
        if precipitation is not None and normals.precipitation is not None and totals:
            quintile = precipitation_quintile(precipitation, totals)
        sunshine = target.get("SUN", {}).get("total")
        if sunshine is not None and normals.sunshine:
            sunshine_percent = min(100.0 * sunshine / normals.sunshine, 999.0)
        if not normals.has_values():
            normals = None
    values = _climat_monthly(wigos_id, year, month, target, quintile, sunshine_percent)
    return ClimatData(wigos_id, year, month, values, normals, qc=summary)


def _climat_monthly(
    wigos_id: str, year: int, month: int, target: Mapping[str, Mapping[str, Any]],
    quintile: int | None, sunshine_percent: float | None,
) -> ClimatMonthly:
    """Section 1, 3 and 4 values of the month from its monthly statistics (one row per element)."""
    days = calendar.monthrange(year, month)[1]

    def stat(element: str, column: str) -> Any:
        return target.get(element, {}).get(column)

    def missing(element: str) -> int:
        row = target.get(element)
        return days if row is None else row["missing_days"]

    def extreme(element: str, kind: str) -> ClimatExtreme | None:
        row = target.get(element)
        if row is None or row[kind] is None:
            return None
        first, last = row[f"{kind}_first_date"], row[f"{kind}_date"]
        return ClimatExtreme(row[kind], first.day, several_days=first != last)

    station, sea_level = stat("PRES", "mean"), stat("MSLP", "mean")
    counts = {name: stat(threshold.element.value, threshold.name)
              for (name, *_), threshold in zip(SECTION3_COUNTS, CLIMAT_THRESHOLDS)}
    return ClimatMonthly(
        wigos_id=wigos_id, year=year, month=month,
        station_pressure=station,
        sea_level_pressure=sea_level,
        mean_temperature=stat("TMEAN", "mean"),
        temperature_std=stat("TMEAN", "std"),
        mean_max_temperature=stat("TMAX", "mean"),
        mean_min_temperature=stat("TMIN", "mean"),
        vapour_pressure=stat("TDEW", "vapour_pressure"),
        precipitation=stat("PRCP", "total"),
        precipitation_quintile=quintile,
        precipitation_days=stat("PRCP", _PRECIPITATION_DAYS),
        sunshine=stat("SUN", "total"),
        sunshine_percent_of_normal=sunshine_percent,
        # mPmP counts the pressure reported: station pressure, else sea-level pressure.
        missing_days_pressure=missing("PRES") if station is not None or sea_level is None else missing("MSLP"),
        missing_days_temperature=missing("TMEAN"),
        missing_days_max_temperature=missing("TMAX"),
        missing_days_min_temperature=missing("TMIN"),
        missing_days_vapour_pressure=missing("TDEW"),
        missing_days_precipitation=missing("PRCP"),
        missing_days_sunshine=missing("SUN"),
        **counts,
        **{name: extreme(element, kind) for name, element, kind in SECTION4_EXTREMES},
    )


def _climat_normals(table: pa.Table, first: int, last: int) -> ClimatNormals:
    """Section 2 from the normals of the month (one row per element and statistic)."""
    years = last - first + 1
    rows = {(row["element"], row["statistic"]): row for row in table.to_pylist() if row["month"] is not None}

    def value(element: str, statistic: str) -> float | None:
        return rows.get((element, statistic), {}).get("value")

    def missing(element: str, statistic: str) -> int:
        row = rows.get((element, statistic))
        return years if row is None else row["missing_years"]

    def mask(element: str) -> int:
        row = rows.get((element, "mean"))
        return 0 if row is None else int(row["year_mask"] or 0)

    station, sea_level = value("PRES", "mean"), value("MSLP", "mean")
    days = value("PRCP", _PRECIPITATION_DAYS)
    # yTxyTx: one count for the extremes; a year lacking either monthly mean counts as missing.
    both = mask("TMAX") & mask("TMIN")
    return ClimatNormals(
        first_year=first, last_year=last,
        station_pressure=station, sea_level_pressure=sea_level,
        mean_temperature=value("TMEAN", "mean"), temperature_std=value("TMEAN", "std"),
        mean_max_temperature=value("TMAX", "mean"), mean_min_temperature=value("TMIN", "mean"),
        vapour_pressure=value("TDEW", "vapour_pressure"),
        precipitation=value("PRCP", "total"),
        precipitation_days=None if days is None else _rounded(days, 0),
        sunshine=value("SUN", "total"),
        missing_years_pressure=missing("PRES", "mean") if station is not None or sea_level is None else missing("MSLP", "mean"),
        missing_years_temperature=missing("TMEAN", "mean"),
        missing_years_extreme_temperatures=years - bin(both).count("1"),
        missing_years_vapour_pressure=missing("TDEW", "vapour_pressure"),
        missing_years_precipitation=missing("PRCP", "total"),
        missing_years_sunshine=missing("SUN", "total"),
        missing_years_max_temperature=missing("TMAX", "mean"),
        missing_years_min_temperature=missing("TMIN", "mean"),
    )


# --------------------------------------------------------------------------- product


@dataclass(frozen=True)
class ClimatProduct:
    """A CLIMAT report written to the bucket, or why none was (``key`` and ``text`` None).

    ``metadata_key``: the JSON beside the report (rules, QC policy and counts, version);
    ``version`` and ``replaced``: which version this is and the earlier one it replaced.
    """

    wigos_id: str
    year: int
    month: int
    key: str | None
    text: str | None
    data: ClimatData
    metadata_key: str | None = None
    version: int | None = None
    replaced: Replaced | None = None

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
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
) -> ClimatProduct:
    """Build the CLIMAT report of one station and month from the archive and write it, with
    its metadata JSON beside it (``<YYYY-MM>.json``); an earlier report of the month is kept
    as a version (:func:`~opencdms_kernel.products.store.write_versioned`).

    A month without any daily value writes nothing and returns an empty product whose
    ``reason`` says so; an unknown station or a bad year/month raises an error naming it.
    """
    data = climat_from_archive(
        connection, wigos_id, year, month, normals_period=normals_period, rule=rule, normals_rule=normals_rule,
        qc=qc, timezones=timezones,
    )
    if data.monthly is None:
        return ClimatProduct(wigos_id, year, month, None, None, data)
    text = format_climat(data.monthly, data.normals)
    key = climat_key(wigos_id, year, month)
    metadata = {
        "kind": "climat", "wigos_id": wigos_id, "year": year, "month": month,
        "rules": {"monthly": rule.as_dict(), "normals": normals_rule.as_dict()},
        "normals_period": None if normals_period is None else list(normals_period),
        "timezone": (timezones or {}).get(wigos_id, "UTC"),
        "qc": dict(data.qc),
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metadata_key = key.removesuffix(".txt") + ".json"
    written = write_versioned(bucket, {
        key: (text + "\n").encode("ascii"),
        metadata_key: (json.dumps(metadata, indent=2) + "\n").encode("utf-8"),
    })
    return ClimatProduct(wigos_id, year, month, key, text, data, metadata_key, written.version, written.replaced)
