"""Daily summaries from sub-daily values and monthly summaries from daily values.

Both are computed set-based in DuckDB over the ``observations`` view of the Parquet archive
(:func:`opencdms_kernel.archive.connect_archive`, or any connection with such a view).

Counting rules (see :mod:`.days` for the day, :mod:`.completeness` for the rules):

- a value counts when it is not NULL/NaN and the :class:`QcPolicy` counts its QC status
  (default: everything not rejected, suspect values included); a day (or, for daily
  summaries, a slot such as an hour) is *missing* when it has no such value;
- a day without a reported daily value is made from the station's sub-daily values when they
  meet the sub-daily rule (:mod:`.days`), so stations that report only hourly values get
  monthly values too;
- a mean, and the highest and lowest values, are given when no more than ``max_missing`` days
  are missing and no more than ``max_consecutive_missing`` in a row;
- a total, and a count of days over a threshold, only from complete months (or days), unless
  ``totals_require_complete`` is false, in which case the mean's rule applies;
- every month says how many suspect values it used (``suspect_values``) and how many values
  the QC policy excluded (``excluded_values``); the product's metadata sums them.

Why monthly summaries are fast (the benchmark's question):

1. DuckDB reads the daily values once and groups them by station and month (one statement
   per element), keeping besides the sums a 31-bit mask of the days present and, for the
   extremes' dates, a key that also holds the day.  No window function, no per-day join.
   The values the QC policy excludes are rare and counted by a second statement whose filter
   is pushed into the Parquet scan.
2. The ~1 M months are laid out as a grid, one row per month of every station-element, by
   position (numpy/Arrow: ``take`` of the aggregate rows into their cells), so months without
   any value are the empty cells — no join, no sort — and the gaps of missing days, and the
   rule, come from the masks with a few whole-array bit operations (:mod:`.completeness`).
3. DuckDB derives the statistics in one projection over the grid.

Duplicate days are detected in step 1 (more rows than days in a mask) and only those months
are recomputed from one value per day (:func:`~.days.chosen_reported_sql`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.products.completeness import gaps_from_masks, judge
from opencdms_kernel.products.days import (
    DAILY_SCHEMA,
    IN_PERIOD,
    chosen_reported_sql,
    daily_table,
    derived_days,
)
from opencdms_kernel.products.model import (
    DEFAULT_QC_POLICY,
    DEFAULT_THRESHOLDS,
    SUB_DAILY_RULE,
    TOTAL_ELEMENTS,
    WMO_MONTHLY_RULE,
    CompletenessRule,
    Element,
    Period,
    Product,
    ProductKind,
    ProductParameterError,
    QcPolicy,
    Threshold,
    check_period,
)
from opencdms_kernel.products.sql import (
    LOCAL_DAY,
    Selection,
    arrow,
    local_bounds_us,
    registered,
    rows_sql,
    select,
    zones_table,
)

DEFAULT_MONTHLY_ELEMENTS: tuple[str, ...] = ("TMAX", "TMIN", "TMEAN", "PRCP")
DEFAULT_DAILY_ELEMENTS: tuple[str, ...] = ("TMEAN", "PRCP", "RH", "WSPD", "PRES")
MONTH_BITS = 31


def check_rule(rule: CompletenessRule, parameter: str = "rule") -> CompletenessRule:
    """``rule`` if it is a :class:`CompletenessRule`, else an error naming the parameter."""
    if not isinstance(rule, CompletenessRule):
        raise ProductParameterError(parameter, f"expected a CompletenessRule, not {rule!r}")
    return rule


def _check_thresholds(thresholds: Sequence[Threshold], selection: Selection) -> tuple[Threshold, ...]:
    """The thresholds of the selected elements (others are dropped), without repeats."""
    checked: list[Threshold] = []
    names: set[str] = set()
    for threshold in thresholds:
        if not isinstance(threshold, Threshold):
            raise ProductParameterError("thresholds", f"expected a Threshold, not {threshold!r}")
        if threshold.element in selection.elements and threshold.name not in names:
            checked.append(threshold)
            names.add(threshold.name)
    return tuple(checked)


def _elements_sql(elements: Sequence[Element] | frozenset[Element]) -> str:
    """An SQL list of element codes; the codes are members of the Element enum, not input."""
    return "(" + ", ".join(f"'{Element(e).value}'" for e in sorted(elements)) + ")" if elements else "(NULL)"


def qc_summary(table: pa.Table, selection: Selection, unit: str) -> dict[str, object]:
    """The ``qc`` block of a product's metadata: the policy, and the suspect values used and
    the values excluded, in total and per ``unit`` (the columns of the table)."""
    def total(column: str) -> int:
        return int(pc.sum(table[column]).as_py() or 0) if table.num_rows else 0

    return {
        "policy": selection.qc.as_dict(),
        "suspect_values_used": total("suspect_values"),
        "values_excluded": total("excluded_values"),
        "per": unit,
        "columns": {"suspect_values": "suspect values used", "excluded_values": "values excluded by the policy"},
    }


def qc_note(summary: Mapping[str, object]) -> str:
    return f"{summary['suspect_values_used']} suspect values used, {summary['values_excluded']} values excluded by QC"


# --------------------------------------------------------------------------- monthly


def monthly_summaries(
    connection: duckdb.DuckDBPyConnection,
    period: Period | str,
    *,
    elements: Sequence[str] | str = DEFAULT_MONTHLY_ELEMENTS,
    stations: Sequence[str] | str | None = None,
    rule: CompletenessRule = WMO_MONTHLY_RULE,
    qc: QcPolicy = DEFAULT_QC_POLICY,
    thresholds: Sequence[Threshold] = DEFAULT_THRESHOLDS,
    timezones: Mapping[str, str] | None = None,
    sub_daily_rule: CompletenessRule = SUB_DAILY_RULE,
    detail: bool = False,
) -> Product:
    """Monthly summaries of daily values, one row per station, element and month of ``period``.

    Columns: ``wigos_id, element, year, month, days_in_month, value_days, missing_days,
    longest_gap`` (most consecutive missing days), ``meets_rule``, ``complete``, ``mean``
    (elements averaged: temperatures …), ``total`` (elements summed: PRCP, SUN, EVAP),
    ``highest, highest_date, lowest, lowest_date`` (most recent date on ties), one count of
    days per threshold of a selected element (``days_TMAX_ge_25`` …), ``derived_days`` (days
    made from sub-daily values), ``suspect_values`` and ``excluded_values``.  With
    ``detail``, also ``std`` (sample standard deviation of the daily values),
    ``vapour_pressure`` (TDEW: mean of the days' vapour pressures), ``highest_first_date``
    and ``lowest_first_date`` (earliest date on ties).  Statistics a month does not qualify
    for under ``rule`` are NULL.  Every month of the period is listed for each station and
    element with data (or each one asked for); a period without any value gives an empty
    product whose note says so.

    ``stations``: WIGOS ids (None: every station in the archive); ``timezones``: IANA zone per
    WIGOS id for the station-local day (default UTC); ``qc``: which values count;
    ``sub_daily_rule``: when a day made from sub-daily values has a value.
    """
    period = check_period(period)
    selection = select(connection, period, elements, stations, qc, timezones)
    rule = check_rule(rule)
    sub_daily_rule = check_rule(sub_daily_rule, "sub_daily_rule")
    chosen = _check_thresholds(thresholds, selection)
    table = monthly_table(connection, selection, rule, chosen, detail=detail, sub_daily_rule=sub_daily_rule)
    parameters = selection.parameters() | {"thresholds": [t.name for t in chosen]}
    summary = qc_summary(table, selection, "station-element-month")
    if table.num_rows == 0:
        note = f"no data for {selection.describe()}"
    else:
        qualified = pc.sum(table["meets_rule"]).as_py() or 0
        stations_seen = len(pc.unique(table["wigos_id"]))
        derived = pc.sum(table["derived_days"]).as_py() or 0
        note = (
            f"{table.num_rows} station-element-months ({stations_seen} stations) in {period.label}; "
            f"{qualified} meet the rule (<= {rule.max_missing} missing days, <= {rule.max_consecutive_missing} in a row); "
            f"{qc_note(summary)}" + (f"; {derived} days made from sub-daily values" if derived else "")
        )
    return Product(
        kind=ProductKind.MONTHLY,
        table=table,
        period=period,
        parameters=parameters,
        rules={"monthly": rule.as_dict(), "sub_daily": sub_daily_rule.as_dict()},
        note=note,
        description="Monthly summaries from daily values (WMO-No. 1203 completeness rules)",
        qc=summary,
    )


def monthly_table(
    connection: duckdb.DuckDBPyConnection,
    selection: Selection,
    rule: CompletenessRule,
    thresholds: Sequence[Threshold],
    *,
    every_month: bool = True,
    detail: bool = False,
    sub_daily_rule: CompletenessRule = SUB_DAILY_RULE,
) -> pa.Table:
    """The monthly summary table of :func:`monthly_summaries` for a checked selection.

    Three steps: the per-month aggregates (DuckDB, over the archive, with the days made from
    sub-daily values); the months laid out with their gaps and the rule (numpy) — with
    ``every_month``, as the grid of every month of every station-element in order, else only
    the months with a value or an excluded one, in the same order (enough for the normals,
    where a month without values counts for nothing); then the statistics (DuckDB, one
    projection, which keeps the grid's order).
    """
    derived = derived_days(connection, selection, sub_daily_rule)
    with registered(connection, zones_table(selection)) as zones, \
            registered(connection, _derived_months(derived, selection.period)) as derived_name:
        months = pa.concat_tables([
            _element_month_aggregates(connection, replace(selection, elements=(element,)), zones, derived_name,
                                      thresholds, detail)
            for element in selection.elements
        ])
        counts = _excluded_months(connection, selection, zones, derived_name)
    if months.num_rows == 0 and counts.num_rows == 0:
        return _empty_monthly(thresholds, detail)
    laid_out = _month_grid(months, counts, selection, len(thresholds), detail, rule, every_month)
    with registered(connection, laid_out) as name:
        sql, params = _monthly_statistics_sql(name, thresholds, detail)
        table = arrow(connection, sql, params)
    # Projections keep the order of their input unless the connection was told not to
    # (preserve_insertion_order = false); then put the rows back by their grid position.
    positions = table["cell"].to_numpy()
    if len(positions) > 1 and not (np.diff(positions) > 0).all():
        table = table.take(pa.array(np.argsort(positions, kind="stable")))
    return table.drop_columns(["cell"])


def _days_in_months(period: Period) -> np.ndarray:
    """Days of each month of the period, indexed by month index (months since January of the first year)."""
    starts = np.arange(f"{period.start_year}-01", f"{period.end_year + 1}-02", dtype="datetime64[M]")
    return np.diff(starts.astype("datetime64[D]")).astype(np.int64)


def _first_days(period: Period) -> np.ndarray:
    """The first day of each month of the period, indexed by month index."""
    return np.arange(f"{period.start_year}-01", f"{period.end_year + 1}-01", dtype="datetime64[M]").astype("datetime64[D]")


def _aggregate_columns(threshold_count: int, detail: bool) -> list[str]:
    columns = ["day_mask", "value_sum", "highest_key", "lowest_key", "suspect_values"]
    columns += [f"threshold_{i}" for i in range(threshold_count)]
    if detail:
        columns += ["value_std", "vapour_sum", "highest_first_key", "lowest_first_key"]
    return columns


def _month_grid(
    months: pa.Table,
    counts: pa.Table,
    selection: Selection,
    threshold_count: int,
    detail: bool,
    rule: CompletenessRule,
    every_month: bool,
) -> pa.Table:
    """The months of every station-element pair, in order, with their aggregates, gaps and rule.

    The pairs are those with data (or every station and element asked for), sorted; a
    month's row is at ``cell`` = pair number x months + month index, so each aggregate row is
    taken into its place and months without any value are simply the cells left empty — no
    join, no sort.  The excluded and derived days' counts are added into their cells the same
    way.  Without ``every_month`` only the cells with something in them are kept.
    """
    period = selection.period
    per_pair = period.years * 12
    # Pairs are numbered in (station, element) order from integer codes, not from strings.
    elements = sorted(e.value for e in selection.elements)
    if selection.stations is None:
        stations = pc.unique(pa.chunked_array(months["wigos_id"].chunks + counts["wigos_id"].chunks, pa.string())).sort()
    else:
        stations = pa.array(sorted(selection.stations), pa.string())
    n_pairs = len(stations) * len(elements)

    def cells_of(table: pa.Table) -> np.ndarray:
        element_code = pc.index_in(table["element"], value_set=pa.array(elements)).to_numpy(zero_copy_only=False)
        station_code = pc.index_in(table["wigos_id"], value_set=stations).to_numpy(zero_copy_only=False)
        pair = station_code.astype(np.int64) * len(elements) + element_code
        return pair * per_pair + table["month_index"].to_numpy()

    month_cells, count_cells = cells_of(months), cells_of(counts)
    if selection.stations is None:
        # Only the pairs with data, numbered densely in order: codes are small integers, so
        # counting them is linear (np.unique sorts ~1 M codes: 0.1 s of the benchmark).
        present = np.zeros(n_pairs, dtype=bool)
        present[month_cells // per_pair] = True
        present[count_cells // per_pair] = True
        used = np.flatnonzero(present)
        renumber = np.cumsum(present) - 1
        month_cells = renumber[month_cells // per_pair] * per_pair + month_cells % per_pair
        count_cells = renumber[count_cells // per_pair] * per_pair + count_cells % per_pair
    else:
        used = np.arange(n_pairs)
    size = len(used) * per_pair
    # Which aggregate row fills each cell (NULL: none); one take() moves every column.
    source = np.full(size, -1, dtype=np.int64)
    source[month_cells] = np.arange(len(month_cells))
    data = months.select(_aggregate_columns(threshold_count, detail)).take(pa.array(source, mask=source < 0))
    excluded = np.zeros(size, dtype=np.int64)
    derived = np.zeros(size, dtype=np.int64)
    if counts.num_rows:
        np.add.at(excluded, count_cells, counts["excluded_values"].to_numpy())
        np.add.at(derived, count_cells, counts["derived_days"].to_numpy())

    days = np.tile(_days_in_months(period), len(used))
    gaps = gaps_from_masks(data["day_mask"].fill_null(0).to_numpy().astype(np.uint64), days)
    verdict = judge(rule, gaps)
    month_index = np.arange(size) % per_pair
    columns: dict[str, pa.Array] = {
        "cell": pa.array(np.arange(size, dtype=np.int64)),
        "wigos_id": pa.DictionaryArray.from_arrays(pa.array(np.repeat((used // len(elements)).astype(np.int32), per_pair)), stations),
        "element": pa.DictionaryArray.from_arrays(pa.array(np.repeat((used % len(elements)).astype(np.int32), per_pair)),
                                                  pa.array(elements, pa.string())),
        "year": pa.array((period.start_year + month_index // 12).astype(np.int32)),
        "month": pa.array((month_index % 12 + 1).astype(np.int32)),
        "first_day": pa.array(np.tile(_first_days(period), len(used))),
        "days_in_month": pa.array(days.astype(np.int32)),
        "value_days": pa.array((gaps.expected - gaps.missing).astype(np.int32)),
        "missing_days": pa.array(gaps.missing.astype(np.int32)),
        "longest_gap": pa.array(gaps.longest.astype(np.int32)),
        "meets_rule": pa.array(verdict.meets_rule),
        "complete": pa.array(verdict.complete),
        "totals_ok": pa.array(verdict.totals_ok),
        "excluded_values": pa.array(excluded.astype(np.int32)),
        "derived_days": pa.array(derived.astype(np.int32)),
    }
    for name in data.column_names[1:]:
        columns[name] = data[name]
    grid = pa.table(columns)
    if not every_month:
        grid = grid.filter(pa.array((source >= 0) | (excluded > 0)))
    return grid


# The extremes are found with one max() (min()) of a key holding the value to 1e-9 and, in its
# low 5 bits, the day of the month: the highest value and, among equal values, the most recent
# day (as climatological tables report it), without a slow arg_max over a (value, day) pair
# and without a separate max(value).  The value is read back from the key: exact for any
# value with up to nine decimals (stored values have one or two).  A value that does not fit
# (beyond 2.8e8; no element's valid range comes near) gets no key rather than an overflow.
# The first dates (CLIMAT's day of first occurrence) swap the day for 31 - day.
_RANK = "TRY_CAST(value * 1e9 AS BIGINT) * 32"
_KEY_VALUE = "CAST({key} >> 5 AS DOUBLE) / 1e9"

# Vapour pressure (hPa) at the dew point: the Magnus formula of the WMO Guide to Instruments
# and Methods of Observation (WMO-No. 8, Annex 4.B), e_w(t) = 6.112 exp(17.62 t / (243.12 + t)).
VAPOUR_PRESSURE_SQL = "6.112 * exp(17.62 * value / (243.12 + value))"


def _aggregates_sql(thresholds: Sequence[Threshold], element: Element, detail: bool) -> tuple[str, list[object]]:
    """Per-month aggregate select items over the rows of one element (month_index, dom, value,
    suspect).

    Every threshold gets a column ``threshold_<i>`` (so all elements' tables have one schema);
    only the element's own thresholds are counted, the others are NULL.
    """
    items = [
        "count(*) AS value_rows",
        # Bit d-1 set: day d has a value.  BIGINT, though 31 bits suffice, for the shifts later.
        "bit_or(CAST(1 AS BIGINT) << CAST(dom - 1 AS BIGINT)) AS day_mask",
        "sum(value) AS value_sum",
        f"max({_RANK} + dom) AS highest_key",
        f"min({_RANK} + (31 - dom)) AS lowest_key",
        "CAST(sum(suspect) AS INTEGER) AS suspect_values",
    ]
    params: list[object] = []
    for index, threshold in enumerate(thresholds):
        if threshold.element is element:
            # The operator is a member of the Comparison enum; the value is bound.
            items.append(f"CAST(sum(CAST(value {threshold.comparison.value} ? AS INTEGER)) AS BIGINT) AS threshold_{index}")
            params.append(threshold.value)
        else:
            items.append(f"CAST(NULL AS BIGINT) AS threshold_{index}")
    if detail:
        items += [
            "stddev_samp(value) AS value_std",
            f"sum({VAPOUR_PRESSURE_SQL}) AS vapour_sum" if element is Element.TDEW else "CAST(NULL AS DOUBLE) AS vapour_sum",
            f"max({_RANK} + (31 - dom)) AS highest_first_key",
            f"min({_RANK} + dom) AS lowest_first_key",
        ]
    return ",\n               ".join(items), params


def _month_keys_sql(source: str) -> str:
    """``source`` (rows with ``day``) with the month index and day of month of each day.

    ``month_index`` counts months from January of the first year (0, 1, …): one small
    integer key instead of a year and a month makes the grouping and joins cheaper.
    """
    return f"""SELECT *, CAST((year(day) - ?) * 12 + month(day) - 1 AS INTEGER) AS month_index,
                      CAST(day(day) AS INTEGER) AS dom
               FROM ({source}) AS keyed"""


def _derived_months(derived: pa.Table, period: Period) -> pa.Table | None:
    """The derived days with a month index and day of month (None when there are none)."""
    if derived.num_rows == 0:
        return None
    days = derived["day"].to_numpy(zero_copy_only=False).astype("datetime64[D]")
    months = days.astype("datetime64[M]").astype(np.int64) - (period.start_year - 1970) * 12
    doms = (days - days.astype("datetime64[M]").astype("datetime64[D]")).astype(np.int64) + 1
    return derived.select(["wigos_id", "element", "value", "suspect_values", "excluded_values"]).append_column(
        "month_index", pa.array(months.astype(np.int32))).append_column("dom", pa.array(doms.astype(np.int32)))


def _element_days_sql(selection: Selection, zones: str | None, derived: str | None) -> tuple[str, list[object]]:
    """The counted daily values of one element (reported, and derived from sub-daily values)
    with ``month_index``, ``dom`` and ``suspect`` (suspect values in the day's value)."""
    inner, params = rows_sql(
        selection, zones, daily=True, columns=f"wigos_id, value, suspect, {LOCAL_DAY} AS day", where=IN_PERIOD,
    )
    sql = _month_keys_sql(inner)
    params = [selection.period.start_year] + params + list(local_bounds_us(selection.period))
    if derived is not None:
        sql = f"""SELECT wigos_id, value, suspect, month_index, dom FROM ({sql}) AS reported
                  UNION ALL
                  SELECT wigos_id, value, suspect_values AS suspect, month_index, dom FROM {derived}
                  WHERE element = ? AND value IS NOT NULL"""
        params.append(selection.elements[0].value)
    return sql, params


def _element_month_aggregates(
    connection: duckdb.DuckDBPyConnection,
    selection: Selection,
    zones: str | None,
    derived: str | None,
    thresholds: Sequence[Threshold],
    detail: bool,
) -> pa.Table:
    """One row per station and month of one element with counted values: counts, sums, day mask.

    One statement per element: each reads its own partitions and groups them into a hash
    table a third the size, and counts only its own thresholds (measured ~15 % faster than one
    statement for three elements).
    """
    element = selection.elements[0]
    aggregates, aggregate_params = _aggregates_sql(thresholds, element, detail)
    days, days_params = _element_days_sql(selection, zones, derived)
    # One element per statement, so the element is a constant, not a grouping key.
    sql = f"""
        SELECT wigos_id, CAST(? AS VARCHAR) AS element, month_index,
               {aggregates}
        FROM ({days}) AS d
        GROUP BY wigos_id, month_index
    """
    months = arrow(connection, sql, [element.value] + aggregate_params + days_params)
    if months.num_rows == 0:
        return months
    # More rows than days present: some day has several counted values; recompute those
    # months from one value per day.  Rare, so the common case pays for one comparison.
    duplicated = pc.greater(pc.cast(months["value_rows"], pa.int64()), _bit_count(months["day_mask"]))
    if not pc.any(duplicated).as_py():
        return months
    keys = months.filter(duplicated).select(["wigos_id", "month_index"])
    chosen, chosen_params = chosen_reported_sql(selection, zones)
    keyed = _month_keys_sql(f"SELECT wigos_id, value, suspect_values AS suspect, day FROM ({chosen}) AS c WHERE counted")
    with registered(connection, keys) as keys_name:
        fixed = arrow(
            connection,
            f"""
            SELECT wigos_id, CAST(? AS VARCHAR) AS element, month_index,
                   {aggregates}
            FROM (SELECT v.* FROM ({keyed}) AS v
                  SEMI JOIN {keys_name} AS k ON k.wigos_id = v.wigos_id AND k.month_index = v.month_index
                  {"" if derived is None else f'''UNION ALL
                  SELECT wigos_id, value, suspect_values AS suspect, NULL AS day, month_index, dom FROM {derived} AS dv
                  SEMI JOIN {keys_name} AS k ON k.wigos_id = dv.wigos_id AND k.month_index = dv.month_index
                  WHERE dv.element = ? AND dv.value IS NOT NULL'''}) AS d
            GROUP BY wigos_id, month_index
            """,
            [element.value] + aggregate_params + [selection.period.start_year] + chosen_params
            + ([element.value] if derived is not None else []),
        )
    return pa.concat_tables([months.filter(pc.invert(duplicated)), fixed.cast(months.schema)])


def _excluded_months(
    connection: duckdb.DuckDBPyConnection, selection: Selection, zones: str | None, derived: str | None
) -> pa.Table:
    """Per station, element and month: the reported daily values the QC policy excluded, the
    sub-daily ones excluded from derived days, and the number of derived days.

    The excluded statuses are written as literals (:func:`~.sql.qc_condition`) so that DuckDB
    pushes the condition into the Parquet scan: excluded values are rare, and the statement
    costs little more than reading the status column.
    """
    columns = pa.schema([("wigos_id", pa.string()), ("element", pa.string()), ("month_index", pa.int32()),
                         ("excluded_values", pa.int64()), ("derived_days", pa.int64())])
    parts = []
    if selection.qc.excluded:
        inner, params = rows_sql(
            selection, zones, daily=True, qc_values="excluded",
            columns=f"wigos_id, element, {LOCAL_DAY} AS day", where=IN_PERIOD,
        )
        sql = f"""
            SELECT wigos_id, element, month_index, count(*) AS excluded_values, CAST(0 AS BIGINT) AS derived_days
            FROM ({_month_keys_sql(inner)}) AS x
            GROUP BY wigos_id, element, month_index
        """
        parts.append(arrow(connection, sql, [selection.period.start_year] + params + list(local_bounds_us(selection.period))))
    if derived is not None:
        parts.append(arrow(connection, f"""
            SELECT wigos_id, element, month_index, sum(excluded_values) AS excluded_values,
                   count(value) AS derived_days
            FROM {derived} GROUP BY wigos_id, element, month_index
        """, []))
    parts = [part.cast(columns) for part in parts if part.num_rows]
    return pa.concat_tables(parts) if parts else columns.empty_table()


def _bit_count(masks: pa.ChunkedArray) -> pa.Array:
    """Number of set bits of each 64-bit mask (days present)."""
    values = masks.to_numpy(zero_copy_only=False).astype(np.uint64)
    return pa.array(np.bitwise_count(values).astype(np.int64))


def _monthly_statistics_sql(months: str, thresholds: Sequence[Threshold], detail: bool) -> tuple[str, list[object]]:
    """Each month's statistics, where the rule (decided in :func:`_month_grid`) allows them:
    one projection over the laid-out months."""
    threshold_columns = "".join(
        f",\n               CASE WHEN totals_ok AND element = ? THEN CAST(threshold_{i} AS INTEGER) END AS {t.name}"
        for i, t in enumerate(thresholds)
    )
    detail_columns = ""
    if detail:
        detail_columns = f""",
               CASE WHEN meets_rule AND element NOT IN {_elements_sql(TOTAL_ELEMENTS)} THEN value_std END AS std,
               CASE WHEN meets_rule THEN vapour_sum / value_days END AS vapour_pressure,
               CASE WHEN meets_rule THEN first_day + CAST(30 - (highest_first_key & 31) AS INTEGER) END AS highest_first_date,
               CASE WHEN meets_rule THEN first_day + CAST((lowest_first_key & 31) - 1 AS INTEGER) END AS lowest_first_date"""
    sql = f"""
        SELECT cell, CAST(wigos_id AS VARCHAR) AS wigos_id, CAST(element AS VARCHAR) AS element, year, month,
               days_in_month, value_days, missing_days, longest_gap, meets_rule, complete,
               CASE WHEN meets_rule AND element NOT IN {_elements_sql(TOTAL_ELEMENTS)} THEN value_sum / value_days END AS mean,
               CASE WHEN totals_ok AND element IN {_elements_sql(TOTAL_ELEMENTS)} THEN value_sum END AS total,
               CASE WHEN meets_rule THEN {_KEY_VALUE.format(key="highest_key")} END AS highest,
               CASE WHEN meets_rule THEN first_day + CAST((highest_key & 31) - 1 AS INTEGER) END AS highest_date,
               CASE WHEN meets_rule THEN {_KEY_VALUE.format(key="lowest_key")} END AS lowest,
               CASE WHEN meets_rule THEN first_day + CAST(30 - (lowest_key & 31) AS INTEGER) END AS lowest_date{threshold_columns}{detail_columns},
               derived_days, CAST(coalesce(suspect_values, 0) AS INTEGER) AS suspect_values, excluded_values
        FROM {months}
    """
    return sql, [threshold.element.value for threshold in thresholds]


def _empty_monthly(thresholds: Sequence[Threshold], detail: bool) -> pa.Table:
    fields = [
        ("wigos_id", pa.string()), ("element", pa.string()), ("year", pa.int32()), ("month", pa.int32()),
        ("days_in_month", pa.int32()), ("value_days", pa.int32()), ("missing_days", pa.int32()),
        ("longest_gap", pa.int32()), ("meets_rule", pa.bool_()), ("complete", pa.bool_()),
        ("mean", pa.float64()), ("total", pa.float64()), ("highest", pa.float64()),
        ("highest_date", pa.date32()), ("lowest", pa.float64()), ("lowest_date", pa.date32()),
    ] + [(t.name, pa.int32()) for t in thresholds]
    if detail:
        fields += [("std", pa.float64()), ("vapour_pressure", pa.float64()),
                   ("highest_first_date", pa.date32()), ("lowest_first_date", pa.date32())]
    fields += [("derived_days", pa.int32()), ("suspect_values", pa.int32()), ("excluded_values", pa.int32())]
    return pa.schema(fields).empty_table()


# --------------------------------------------------------------------------- daily


def daily_summaries(
    connection: duckdb.DuckDBPyConnection,
    period: Period | str,
    *,
    elements: Sequence[str] | str = DEFAULT_DAILY_ELEMENTS,
    stations: Sequence[str] | str | None = None,
    rule: CompletenessRule = SUB_DAILY_RULE,
    qc: QcPolicy = DEFAULT_QC_POLICY,
    timezones: Mapping[str, str] | None = None,
) -> Product:
    """Daily summaries of sub-daily values (e.g. hourly AWS data) per station-local day.

    One row per station, element, input resolution (``duration_seconds``) and local day with
    at least one value.  Columns: ``wigos_id, element, day, duration_seconds,
    expected_values`` (86400 / duration), ``value_count, missing_values, longest_gap`` (most
    consecutive missing slots), ``meets_rule, complete, mean, minimum, maximum`` (given when the
    day meets ``rule``; ``mean`` not for summed elements), ``total`` (summed elements: PRCP,
    SUN, EVAP; complete days only unless the rule says otherwise), ``suspect_values`` (suspect
    values used) and ``excluded_values`` (values the QC policy excluded).

    A value's slot is where the middle of its period falls in the local day, so a value
    labelled at the start of its hour (00:00-01:00 → slot 0) belongs to the day it was
    measured in.  Days changed by daylight saving keep 86400 / duration slots.  These are the
    days the monthly products use for a station without a daily value of the day.
    """
    period = check_period(period)
    selection = select(connection, period, elements, stations, qc, timezones)
    rule = check_rule(rule)
    table = daily_table(connection, selection, rule)
    summary = qc_summary(table, selection, "station-element-day")
    if table.num_rows == 0:
        note = f"no sub-daily data for {selection.describe()}"
    else:
        qualified = pc.sum(table["meets_rule"]).as_py() or 0
        note = (
            f"{table.num_rows} station-element-days in {period.label}; {qualified} meet the rule "
            f"(<= {rule.max_missing} missing values, <= {rule.max_consecutive_missing} in a row, "
            f"counted in values of the input resolution); {qc_note(summary)}"
        )
    return Product(
        kind=ProductKind.DAILY,
        table=table,
        period=period,
        parameters=selection.parameters(),
        rules={"daily": rule.as_dict()},
        note=note,
        description="Daily summaries from sub-daily values per station-local day",
        qc=summary,
    )


__all__ = ["DAILY_SCHEMA", "daily_summaries", "monthly_summaries", "monthly_table"]
