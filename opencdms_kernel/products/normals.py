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
years is a few bit operations per normal (:func:`~.completeness.gaps_from_masks`, the rule in
:func:`~.completeness.judge_years`).

This is the one normals computation: :func:`normals_from_monthly` is what
:func:`climate_normals` runs, and what CLIMAT's section 2 runs on its own monthly statistics.
Each normal also says how many suspect values its months used and how many values the QC
policy excluded (``suspect_values``, ``excluded_values``: sums over the years).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Mapping, Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

import numpy as np

from opencdms_kernel.products.completeness import gaps_from_masks, judge_years
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    DEFAULT_THRESHOLDS,
    STANDARD_NORMAL_PERIOD,
    WMO_MONTHLY_RULE,
    CompletenessRule,
    Element,
    NormalsRule,
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    QcPolicy,
    Statistic,
    Threshold,
    check_elements,
    check_period,
    statistic_of,
)
from opencdms_kernel.products.sql import arrow, registered, select
from opencdms_kernel.products.summaries import check_rule, monthly_table, qc_note, qc_summary

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
class NormalStatistic:
    """One normal statistic: its name, the monthly column it is made of, how the year's is made.

    The monthly column is averaged over the years (``mean``, ``total``, ``std``, counts of days
    …) or its extreme taken (``highest``, ``lowest``); ``annual`` says how the 12 monthly
    normals make the annual one: avg | sum | max | min.  ``column`` must be a column of the
    monthly table, a plain name (it is written into the statement).
    """

    element: Element
    name: str
    column: str
    annual: str

    def __post_init__(self) -> None:
        if self.annual not in ("avg", "sum", "max", "min"):
            raise ProductParameterError("statistics", f"annual must be avg, sum, max or min, not {self.annual!r}")
        if not self.column.isidentifier():
            raise ProductParameterError("statistics", f"{self.column!r} is not a column name")


def _statistics(spec: NormalsSpec) -> list[NormalStatistic]:
    found = [NormalStatistic(e, "mean", "mean", "avg") for e in spec.means]
    found += [NormalStatistic(e, "total", "total", "sum") for e in spec.totals]
    found += [
        NormalStatistic(x.element, x.kind.value, x.kind.value, "max" if x.kind is ExtremeKind.HIGHEST else "min")
        for x in spec.extremes
    ]
    found += [NormalStatistic(t.element, t.name, t.name, "sum") for t in spec.thresholds]
    return list({(s.element, s.name): s for s in found}.values())


def climate_normals(
    connection: duckdb.DuckDBPyConnection,
    period: Period | str = STANDARD_NORMAL_PERIOD,
    *,
    stations: Sequence[str] | str | None = None,
    elements: Sequence[str] | str | None = None,
    spec: NormalsSpec = NormalsSpec(),
    monthly_rule: CompletenessRule = WMO_MONTHLY_RULE,
    normals_rule: NormalsRule = NormalsRule(),
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
) -> Product:
    """Climatological standard normals over a 30-year ``period`` (default 1991-2020).

    One row per station, element, statistic (``mean``, ``total``, ``highest``, ``lowest``,
    ``days_TMAX_ge_25`` …) and month (1-12, NULL for the annual value), with ``value``,
    ``extreme_date`` (extremes), ``years`` (years with a monthly value), ``missing_years``,
    ``longest_gap_years``, ``meets_rule``, ``suspect_values`` and ``excluded_values`` (over the
    years' months); ``value`` is NULL where the rule of years is not met.  ``elements`` restricts ``spec`` to some of its elements.  The other parameters are
    those of :func:`~opencdms_kernel.products.summaries.monthly_summaries`.
    """
    period = check_period(period)
    if period.years != NORMAL_YEARS:
        raise ProductParameterError(
            "period", f"a climatological standard normal covers {NORMAL_YEARS} years; {period.label} covers {period.years}"
        )
    if not isinstance(spec, NormalsSpec):
        raise ProductParameterError("spec", f"expected a NormalsSpec, not {spec!r}")
    normals_rule = check_normals_rule(normals_rule)
    monthly_rule = check_rule(monthly_rule, "monthly_rule")
    if elements is not None:
        wanted = check_elements(elements)
        for element in wanted:
            if element not in spec.elements:
                raise ProductParameterError("elements", f"{element.value} has no statistic in the normals spec")
        spec = spec.restricted(wanted)
    if not spec.elements:
        raise ProductParameterError("spec", "the normals spec names no statistic")
    selection = select(connection, period, spec.elements, stations, qc, timezones)

    monthly = monthly_table(connection, selection, monthly_rule, spec.thresholds, every_month=False)
    table = normals_from_monthly(connection, monthly, period, normals_rule, _statistics(spec)).drop_columns(["year_mask"])
    parameters = selection.parameters() | {"spec": spec.as_dict()}
    # The values of a month count once, not once per statistic: the sums come from the months.
    summary = qc_summary(monthly, selection, "station-element-month of the period (normals: sums over its years)")
    if table.num_rows == 0:
        note = f"no data for {selection.describe()}"
    else:
        given = pc.sum(table["meets_rule"]).as_py() or 0
        note = (
            f"{table.num_rows} normals ({len(pc.unique(table['wigos_id']))} stations) for {period.label}; "
            f"{given} meet the rule (>= {normals_rule.min_years(period.years)} of {period.years} years, "
            f"<= {normals_rule.max_consecutive_missing} consecutive missing); {qc_note(summary)}"
        )
    return Product(
        kind=ProductKind.NORMALS,
        table=table,
        period=period,
        parameters=parameters,
        rules={"monthly": monthly_rule.as_dict(), "normals": normals_rule.as_dict()},
        note=note,
        description="Climatological standard normals (WMO-No. 1203)",
        qc=summary,
    )


def check_normals_rule(rule: object) -> NormalsRule:
    """``rule`` if it is a :class:`NormalsRule`, else an error naming the parameter."""
    if not isinstance(rule, NormalsRule):
        raise ProductParameterError("normals_rule", f"expected a NormalsRule, not {rule!r}")
    return rule


def normals_from_monthly(
    connection: duckdb.DuckDBPyConnection,
    monthly: pa.Table,
    period: Period,
    rule: NormalsRule,
    statistics: Sequence[NormalStatistic],
) -> pa.Table:
    """Normals per month, then the annual values, from a monthly table (one row per station,
    element, year and month with the statistics' columns, ``suspect_values`` and
    ``excluded_values``; months without a value may be absent).

    Three steps: one pass groups the monthly rows by station, element and calendar month and
    aggregates every monthly column a statistic needs (its mean or extreme, the years with a
    value and a bit mask of them); the gaps of years and the rule come from the masks
    (numpy, :mod:`.completeness`); then the values where the rule allows them and the annual
    values from the twelve months (DuckDB).  Columns: those of :func:`climate_normals` and
    ``year_mask`` (bit y set: year ``start_year + y`` has a monthly value).
    """
    if monthly.num_rows == 0:
        return _empty_normals()
    with registered(connection, monthly) as months:
        sql, params = _per_month_sql(months, period, statistics)
        per_month = arrow(connection, sql, params)
    gaps = gaps_from_masks(per_month["year_mask"].fill_null(0).to_numpy().astype(np.uint64), period.years)
    per_month = per_month.append_column("missing_years", pa.array(gaps.missing.astype(np.int32))) \
        .append_column("longest_gap_years", pa.array(gaps.longest.astype(np.int32))) \
        .append_column("meets_rule", pa.array(judge_years(rule, gaps)))
    with registered(connection, per_month) as name:
        return arrow(connection, _NORMALS_SQL.format(per_month=name), [])


def _per_month_sql(months: str, period: Period, statistics: Sequence[NormalStatistic]) -> tuple[str, list[object]]:
    """The per station, element, statistic and month aggregates over the years."""
    columns = sorted({stat.column for stat in statistics})
    aggregates = []
    for column in columns:
        # Column names come from the spec (enum values and checked names).
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
            f"""SELECT wigos_id, element, CAST(? AS VARCHAR) AS statistic, CAST(? AS VARCHAR) AS annual,
                       CAST(month AS INTEGER) AS month,
                       {stat.column}_value AS value, {stat.column}_when AS extreme_date,
                       {stat.column}_years AS years, coalesce({stat.column}_mask, CAST(0 AS BIGINT)) AS year_mask,
                       suspect_values, excluded_values
                FROM aggregated WHERE element = ?"""
        )
        params += [stat.name, stat.annual, stat.element.value]
    sql = f"""
        WITH aggregated AS (
            SELECT wigos_id, element, month, {", ".join(aggregates)},
                   CAST(sum(suspect_values) AS INTEGER) AS suspect_values,
                   CAST(sum(excluded_values) AS INTEGER) AS excluded_values
            FROM {months} GROUP BY wigos_id, element, month
        )
        {" UNION ALL ".join(picks)}
    """
    return sql, params


# The normals where the rule of years allows them, then the annual values: the twelve monthly
# normals make the year's (mean of means, sum of totals and counts, extreme of extremes).
_NORMALS_SQL = """
    WITH normal AS (
        SELECT wigos_id, element, statistic, annual, month,
               CASE WHEN meets_rule THEN value END AS value,
               CASE WHEN meets_rule THEN extreme_date END AS extreme_date,
               years, missing_years, longest_gap_years, meets_rule, year_mask, suspect_values, excluded_values
        FROM {per_month}
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
               count(value) = 12 AS meets_rule,
               bit_and(year_mask) AS year_mask,
               CAST(sum(suspect_values) AS INTEGER) AS suspect_values,
               CAST(sum(excluded_values) AS INTEGER) AS excluded_values
        FROM normal
        GROUP BY wigos_id, element, statistic, annual
    )
    SELECT wigos_id, element, statistic, CAST(month AS INTEGER) AS month, value, extreme_date,
           years, missing_years, longest_gap_years, meets_rule, suspect_values, excluded_values, year_mask
    FROM (SELECT * FROM normal UNION ALL SELECT * FROM annual)
    ORDER BY wigos_id, element, statistic, month NULLS LAST
"""


def _empty_normals() -> pa.Table:
    return pa.schema(
        [
            ("wigos_id", pa.string()), ("element", pa.string()), ("statistic", pa.string()),
            ("month", pa.int32()), ("value", pa.float64()), ("extreme_date", pa.date32()),
            ("years", pa.int32()), ("missing_years", pa.int32()), ("longest_gap_years", pa.int32()),
            ("meets_rule", pa.bool_()), ("suspect_values", pa.int32()), ("excluded_values", pa.int32()),
            ("year_mask", pa.int64()),
        ]
    ).empty_table()
