"""Climatological standard normals (WMO-No. 1203) from the monthly summaries.

A normal is computed per station, element, statistic and calendar month over a 30-year period
(1991-2020 by default) from the monthly values that met their own completeness rule (the 3/5
rule for means and extremes, complete months for totals and counts):

- it is given when at least 80 % of the years have a monthly value (24 of 30) and no more than
  3 consecutive years lack one (both configurable: :class:`NormalsRule`);
- means (TMAX, TMIN, TMEAN): the mean of the monthly means; totals (PRCP): the mean of the
  monthly totals; counts of days over a threshold: the mean of the monthly counts;
- extremes: the highest (or lowest) monthly extreme of the period and its date (most recent
  on ties), given under the same rule of years;
- the annual value (``month`` NULL) needs all 12 monthly normals: the mean of the monthly means,
  the sum of the monthly totals and counts, the extreme of the monthly extremes.

Why it is cheap on top of the monthly summaries: the 30-year aggregation works on ~1 M monthly
rows (not 33 M days), and the years present are kept as a bit mask so the longest run of missing
years is a few bit operations per normal.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.products.model import (
    DEFAULT_THRESHOLDS,
    DEFAULT_USABLE_QC,
    STANDARD_NORMAL_PERIOD,
    WMO_MONTHLY_RULE,
    CompletenessRule,
    Element,
    NormalsRule,
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    Statistic,
    Threshold,
    check_elements,
    statistic_of,
)
from opencdms_kernel.products.sql import arrow, missing_bits_sql, registered, select, with_longest_run
from opencdms_kernel.products.summaries import _check_rule, monthly_table

NORMAL_YEARS = 30


class ExtremeKind(StrEnum):
    HIGHEST = "highest"
    LOWEST = "lowest"


@dataclass(frozen=True)
class Extreme:
    """An extreme normal: the highest or lowest daily value of an element, with its date."""

    element: str
    kind: ExtremeKind

    def __post_init__(self) -> None:
        object.__setattr__(self, "element", check_elements(self.element, "spec.extremes")[0])
        try:
            object.__setattr__(self, "kind", ExtremeKind(self.kind))
        except ValueError:
            raise ProductParameterError("spec.extremes", f"extreme must be 'highest' or 'lowest', not {self.kind!r}") from None


@dataclass(frozen=True)
class NormalsSpec:
    """Which normals to compute (defaults: WMO-No. 1203's principal climatological elements)."""

    means: tuple[str, ...] = ("TMAX", "TMIN", "TMEAN")
    totals: tuple[str, ...] = ("PRCP",)
    extremes: tuple[Extreme, ...] = (
        Extreme("TMAX", ExtremeKind.HIGHEST),
        Extreme("TMIN", ExtremeKind.LOWEST),
        Extreme("PRCP", ExtremeKind.HIGHEST),
    )
    thresholds: tuple[Threshold, ...] = DEFAULT_THRESHOLDS

    def __post_init__(self) -> None:
        means = check_elements(self.means, "spec.means") if self.means else ()
        totals = check_elements(self.totals, "spec.totals") if self.totals else ()
        for element in means:
            if statistic_of(element) is not Statistic.MEAN:
                raise ProductParameterError("spec.means", f"{element.value} is summed, not averaged: list it under totals")
        for element in totals:
            if statistic_of(element) is not Statistic.TOTAL:
                raise ProductParameterError("spec.totals", f"{element.value} is averaged, not summed: list it under means")
        for item in self.extremes:
            if not isinstance(item, Extreme):
                raise ProductParameterError("spec.extremes", f"expected an Extreme, not {item!r}")
        for item in self.thresholds:
            if not isinstance(item, Threshold):
                raise ProductParameterError("spec.thresholds", f"expected a Threshold, not {item!r}")
        object.__setattr__(self, "means", means)
        object.__setattr__(self, "totals", totals)
        object.__setattr__(self, "extremes", tuple(self.extremes))
        object.__setattr__(self, "thresholds", tuple(self.thresholds))

    @property
    def elements(self) -> tuple[Element, ...]:
        """Every element the spec needs, in a stable order."""
        found = list(self.means) + list(self.totals) + [e.element for e in self.extremes] + [t.element for t in self.thresholds]
        return tuple(dict.fromkeys(found))

    def restricted(self, elements: Sequence[Element]) -> "NormalsSpec":
        """The part of the spec about ``elements``."""
        keep = set(elements)
        return NormalsSpec(
            means=tuple(e for e in self.means if e in keep),
            totals=tuple(e for e in self.totals if e in keep),
            extremes=tuple(x for x in self.extremes if x.element in keep),
            thresholds=tuple(t for t in self.thresholds if t.element in keep),
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "means": [e.value for e in self.means],
            "totals": [e.value for e in self.totals],
            "extremes": [f"{x.kind.value} {x.element.value}" for x in self.extremes],
            "thresholds": [t.name for t in self.thresholds],
        }


@dataclass(frozen=True)
class _Statistic:
    """One normal statistic: its name, the monthly column it is made of, how the year's is made.

    The monthly column is averaged over the years (``mean``, ``total``, counts of days) or its
    extreme taken (``highest``, ``lowest``); ``annual`` says how the 12 monthly normals make
    the annual one: avg | sum | max | min.
    """

    element: Element
    name: str
    column: str
    annual: str


def _statistics(spec: NormalsSpec) -> list[_Statistic]:
    found = [_Statistic(e, "mean", "mean", "avg") for e in spec.means]
    found += [_Statistic(e, "total", "total", "sum") for e in spec.totals]
    found += [
        _Statistic(x.element, x.kind.value, x.kind.value, "max" if x.kind is ExtremeKind.HIGHEST else "min")
        for x in spec.extremes
    ]
    found += [_Statistic(t.element, t.name, t.name, "sum") for t in spec.thresholds]
    return list({(s.element, s.name): s for s in found}.values())


def climate_normals(
    connection: duckdb.DuckDBPyConnection,
    period: Period = STANDARD_NORMAL_PERIOD,
    *,
    stations: Sequence[str] | str | None = None,
    elements: Sequence[str] | str | None = None,
    spec: NormalsSpec = NormalsSpec(),
    monthly_rule: CompletenessRule = WMO_MONTHLY_RULE,
    normals_rule: NormalsRule = NormalsRule(),
    usable_qc: Sequence[str] | str = DEFAULT_USABLE_QC,
    timezones: Mapping[str, str] | None = None,
) -> Product:
    """Climatological standard normals over a 30-year ``period`` (default 1991-2020).

    One row per station, element, statistic (``mean``, ``total``, ``highest``, ``lowest``,
    ``days_TMAX_ge_25`` …) and month (1-12, NULL for the annual value), with ``value``,
    ``extreme_date`` (extremes), ``years`` (years with a monthly value), ``missing_years``,
    ``longest_gap_years`` and ``meets_rule``; ``value`` is NULL where the rule of years is not
    met.  ``elements`` restricts ``spec`` to some of its elements.  The other parameters are
    those of :func:`~opencdms_kernel.products.summaries.monthly_summaries`.
    """
    if not isinstance(period, Period):
        raise ProductParameterError("period", f"expected a Period(start_year, end_year), not {period!r}")
    if period.years != NORMAL_YEARS:
        raise ProductParameterError(
            "period", f"a climatological standard normal covers {NORMAL_YEARS} years; {period.label} covers {period.years}"
        )
    if not isinstance(spec, NormalsSpec):
        raise ProductParameterError("spec", f"expected a NormalsSpec, not {spec!r}")
    if not isinstance(normals_rule, NormalsRule):
        raise ProductParameterError("normals_rule", f"expected a NormalsRule, not {normals_rule!r}")
    monthly_rule = _check_rule(monthly_rule, "monthly_rule")
    if elements is not None:
        wanted = check_elements(elements)
        for element in wanted:
            if element not in spec.elements:
                raise ProductParameterError("elements", f"{element.value} has no statistic in the normals spec")
        spec = spec.restricted(wanted)
    if not spec.elements:
        raise ProductParameterError("spec", "the normals spec names no statistic")
    selection = select(connection, period, spec.elements, stations, usable_qc, timezones)

    monthly = monthly_table(connection, selection, monthly_rule, spec.thresholds, every_month=False)
    statistics = _statistics(spec)
    if monthly.num_rows == 0:
        table = _empty_normals()
    else:
        with registered(connection, monthly) as months:
            sql, params = _normals_sql(months, period, normals_rule, statistics)
            table = arrow(connection, sql, params)
    parameters = selection.parameters() | {"spec": spec.as_dict()}
    if table.num_rows == 0:
        note = f"no data for {selection.describe()}"
    else:
        given = pc.sum(table["meets_rule"]).as_py() or 0
        note = (
            f"{table.num_rows} normals ({len(pc.unique(table['wigos_id']))} stations) for {period.label}; "
            f"{given} meet the rule (>= {normals_rule.min_years(period.years)} of {period.years} years, "
            f"<= {normals_rule.max_consecutive_missing} consecutive missing)"
        )
    return Product(
        kind=ProductKind.NORMALS,
        table=table,
        period=period,
        parameters=parameters,
        rules={"monthly": monthly_rule.as_dict(), "normals": normals_rule.as_dict()},
        note=note,
        description="Climatological standard normals (WMO-No. 1203)",
    )


def _normals_sql(
    months: str, period: Period, rule: NormalsRule, statistics: Sequence[_Statistic]
) -> tuple[str, list[object]]:
    """Normals per month from the monthly table ``months``, then the annual values.

    One pass groups the monthly rows by station, element and calendar month and aggregates
    every monthly column a statistic needs (its mean or extreme, the years with a value and a
    bit mask of them); the statistics are then picked out of that small table (~36 k rows).
    """
    columns = sorted({stat.column for stat in statistics})
    aggregates = []
    for column in columns:
        # Column names come from the spec (enum values and checked threshold names).
        if column == "highest":
            aggregates += ["max(highest) AS highest_value", "arg_max(highest_date, (highest, highest_date)) AS highest_when"]
        elif column == "lowest":
            aggregates += ["min(lowest) AS lowest_value",
                           "arg_min(lowest_date, (lowest, DATE '1970-01-01' - lowest_date)) AS lowest_when"]
        else:
            aggregates += [f"avg({column}) AS {column}_value", f"CAST(NULL AS DATE) AS {column}_when"]
        aggregates += [
            f"CAST(count({column}) AS INTEGER) AS {column}_years",
            f"bit_or(CAST(1 AS BIGINT) << CAST(year - ? AS BIGINT)) FILTER (WHERE {column} IS NOT NULL) AS {column}_mask",
        ]
    params: list[object] = [period.start_year] * len(columns)
    picks = []
    for stat in statistics:
        picks.append(
            f"""SELECT wigos_id, element, CAST(? AS VARCHAR) AS statistic, CAST(? AS VARCHAR) AS annual, month,
                       {stat.column}_value AS value, {stat.column}_when AS extreme_date,
                       {stat.column}_years AS years, {stat.column}_mask AS year_mask
                FROM aggregated WHERE element = ?"""
        )
        params += [stat.name, stat.annual, stat.element.value]
    blocks = [f"""aggregated AS (
            SELECT wigos_id, element, month, {", ".join(aggregates)}
            FROM {months} GROUP BY wigos_id, element, month
        )"""]
    years = period.years
    sql = f"""
        WITH {blocks[0]},
        per_month AS ({" UNION ALL ".join(picks)}),
        gaps AS ({with_longest_run(
            f"SELECT *, {missing_bits_sql('year_mask', str(years))} AS missing_years_mask FROM per_month",
            "missing_years_mask", years, "longest_gap_years")}),
        monthly AS (
            SELECT wigos_id, element, statistic, annual, month, value, extreme_date, years,
                   {years} - years AS missing_years, longest_gap_years
            FROM gaps
        ),
        ruled AS (
            SELECT *, (years >= ? AND longest_gap_years <= ?) AS meets_rule FROM monthly
        ),
        normal AS (
            SELECT wigos_id, element, statistic, annual, month,
                   CASE WHEN meets_rule THEN value END AS value,
                   CASE WHEN meets_rule THEN extreme_date END AS extreme_date,
                   years, missing_years, longest_gap_years, meets_rule
            FROM ruled
        ),
        annual AS (
            SELECT wigos_id, element, statistic, annual, CAST(NULL AS INTEGER) AS month,
                   CASE WHEN count(value) = 12 THEN
                       CASE annual WHEN 'avg' THEN avg(value) WHEN 'sum' THEN sum(value)
                                   WHEN 'max' THEN max(value) ELSE min(value) END
                   END AS value,
                   CASE WHEN count(value) = 12 THEN
                       CASE annual WHEN 'max' THEN arg_max(extreme_date, (value, extreme_date))
                                   WHEN 'min' THEN arg_min(extreme_date, (value, DATE '1970-01-01' - extreme_date)) END
                   END AS extreme_date,
                   CAST(min(years) AS INTEGER) AS years, CAST(max(missing_years) AS INTEGER) AS missing_years,
                   CAST(max(longest_gap_years) AS INTEGER) AS longest_gap_years,
                   count(value) = 12 AS meets_rule
            FROM normal
            GROUP BY wigos_id, element, statistic, annual
        )
        SELECT wigos_id, element, statistic, CAST(month AS INTEGER) AS month, value, extreme_date,
               years, missing_years, longest_gap_years, meets_rule
        FROM (SELECT * FROM normal UNION ALL SELECT * FROM annual)
        ORDER BY wigos_id, element, statistic, month NULLS LAST
    """
    params += [rule.min_years(years), rule.max_consecutive_missing]
    return sql, params


def _empty_normals() -> pa.Table:
    return pa.schema(
        [
            ("wigos_id", pa.string()), ("element", pa.string()), ("statistic", pa.string()),
            ("month", pa.int32()), ("value", pa.float64()), ("extreme_date", pa.date32()),
            ("years", pa.int32()), ("missing_years", pa.int32()), ("longest_gap_years", pa.int32()),
            ("meets_rule", pa.bool_()),
        ]
    ).empty_table()
