"""The day every product is made of: one value per station, element and station-local day.

A day's value is, in this order:

1. the station's own daily value (``duration_seconds = 86400``) of that local day, chosen
   among several by :data:`~opencdms_kernel.products.sql.PREFERENCE` (a value the QC policy
   counts, then the latest change, the lowest source, the lowest level);
2. for a day without any reported daily value, the daily summary of its sub-daily values
   (hourly, ten-minute …) made by :func:`daily_table` under the sub-daily rule — the
   element's own daily statistic (:func:`~opencdms_kernel.products.model.daily_column_of`:
   the highest of TMAX, the lowest of TMIN, the sum of PRCP, else the mean).  Such a day is
   ``derived``; with several resolutions the one with a value and the fewest missing slots
   counts.

A day whose values the QC policy all excludes has no value (it is missing) but is listed with
``excluded_values``.  Monthly summaries, normals, indices, CLIMAT, DAYCLI and the reports all
take their days from here (the monthly summaries aggregate the same rows without listing the
days first, see :mod:`.summaries`).
"""

from __future__ import annotations

from dataclasses import replace

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.products.completeness import gaps_from_positions, judge
from opencdms_kernel.products.model import (
    SUB_DAILY_RULE,
    TOTAL_ELEMENTS,
    CompletenessRule,
    daily_column_of,
)
from opencdms_kernel.products.sql import (
    LOCAL_DAY,
    PREFERENCE,
    Selection,
    arrow,
    local_bounds_us,
    registered,
    rows_sql,
    zones_table,
)
from opencdms_kernel.vocabulary import QcStatus

DAILY_SCHEMA = pa.schema(
    [
        ("wigos_id", pa.string()), ("element", pa.string()), ("day", pa.date32()),
        ("duration_seconds", pa.int32()), ("expected_values", pa.int32()), ("value_count", pa.int32()),
        ("missing_values", pa.int32()), ("longest_gap", pa.int32()), ("meets_rule", pa.bool_()),
        ("complete", pa.bool_()), ("mean", pa.float64()), ("minimum", pa.float64()), ("maximum", pa.float64()),
        ("total", pa.float64()), ("suspect_values", pa.int32()), ("excluded_values", pa.int32()),
    ]
)

STATION_DAYS_SCHEMA = pa.schema(
    [
        ("wigos_id", pa.string()), ("element", pa.string()), ("day", pa.date32()), ("value", pa.float64()),
        ("excluded_value", pa.float64()), ("counted", pa.bool_()), ("derived", pa.bool_()), ("qc_status", pa.string()), ("final_flag", pa.string()),
        ("period_start", pa.timestamp("us", tz="UTC")), ("duration_seconds", pa.int32()),
        ("suspect_values", pa.int32()), ("excluded_values", pa.int32()),
    ]
)


# Keeps rows whose local day is in the period; bound to local_bounds_us(period).
IN_PERIOD = "local_mid_us >= ? AND local_mid_us < ?"


def reported_rows_sql(selection: Selection, zones: str | None, *, counted_only: bool, columns: str) -> tuple[str, list[object]]:
    """The selection's reported daily values whose local day is in the period, with ``day``.

    ``columns`` may use the columns of :func:`~opencdms_kernel.products.sql.rows_sql` and ``day``.
    """
    inner, params = rows_sql(
        selection, zones, daily=True, qc_values="counted" if counted_only else "all",
        columns=f"*, {LOCAL_DAY} AS day", where=IN_PERIOD,
    )
    return f"SELECT {columns} FROM ({inner}) AS reported", params + list(local_bounds_us(selection.period))


def chosen_reported_sql(selection: Selection, zones: str | None) -> tuple[str, list[object]]:
    """One row per station, element and local day with any reported daily value: the value the
    preference rule chooses among those the QC policy counts (NULL when it counts none), its
    status and flag (of the excluded value when none counts), and the day's counts."""
    sql, params = reported_rows_sql(selection, zones, counted_only=False, columns="*")
    return f"""
        SELECT wigos_id, element, day,
               first(value ORDER BY {PREFERENCE}) FILTER (WHERE counted) AS value,
               first(value ORDER BY {PREFERENCE}) FILTER (WHERE NOT counted) AS excluded_value,
               bool_or(counted) AS counted,
               false AS derived,
               CAST(first(qc_status ORDER BY {PREFERENCE}) AS VARCHAR) AS qc_status,
               CAST(first(final_flag ORDER BY {PREFERENCE}) AS VARCHAR) AS final_flag,
               first(phenomenon_time ORDER BY {PREFERENCE}) AS period_start,
               CAST(86400 AS INTEGER) AS duration_seconds,
               CAST(coalesce(first(suspect ORDER BY {PREFERENCE}) FILTER (WHERE counted), 0) AS INTEGER) AS suspect_values,
               CAST(count(*) FILTER (WHERE NOT counted) AS INTEGER) AS excluded_values
        FROM ({sql}) AS r
        GROUP BY wigos_id, element, day
    """, params


# --------------------------------------------------------------------------- days from sub-daily values


def daily_table(connection: duckdb.DuckDBPyConnection, selection: Selection, rule: CompletenessRule) -> pa.Table:
    """Daily summaries of the selection's sub-daily values, one row per station, element,
    resolution (``duration_seconds``) and local day with any value (see :data:`DAILY_SCHEMA`).

    A value's slot is where the middle of its period falls in the local day (a value labelled
    at the start of its hour, 00:00-01:00, is slot 0); a day expects 86400 / duration slots
    (days changed by daylight saving too).  Several values of a slot: the preference rule.
    ``rule`` decides on the gaps of the slots (:func:`~opencdms_kernel.products.completeness.judge`).
    """
    with registered(connection, zones_table(selection)) as zones:
        inner, params = rows_sql(
            selection, zones, daily=False, qc_values="all",
            columns=f"*, {LOCAL_DAY} AS day", where=IN_PERIOD,
        )
        sql = f"""
            WITH slots AS (
                SELECT wigos_id, element, duration_seconds, day,
                       CAST((local_mid_us - epoch_us(CAST(day AS TIMESTAMP)))
                            // (CAST(duration_seconds AS BIGINT) * 1000000) AS INTEGER) AS slot,
                       first(value ORDER BY {PREFERENCE}) FILTER (WHERE counted) AS value,
                       first(suspect ORDER BY {PREFERENCE}) FILTER (WHERE counted) AS suspect,
                       count(*) FILTER (WHERE NOT counted) AS excluded
                FROM ({inner}) AS v
                GROUP BY wigos_id, element, duration_seconds, day, slot
            )
            SELECT wigos_id, element, day, CAST(duration_seconds AS INTEGER) AS duration_seconds,
                   CAST(86400 // duration_seconds AS INTEGER) AS expected_values,
                   list(slot ORDER BY slot) FILTER (WHERE value IS NOT NULL) AS slots,
                   avg(value) AS value_mean, min(value) AS value_min, max(value) AS value_max,
                   sum(value) AS value_sum,
                   CAST(coalesce(sum(suspect), 0) AS INTEGER) AS suspect_values,
                   CAST(sum(excluded) AS INTEGER) AS excluded_values
            FROM slots
            GROUP BY wigos_id, element, duration_seconds, day
            ORDER BY wigos_id, element, duration_seconds, day
        """
        days = arrow(connection, sql, params + list(local_bounds_us(selection.period)))
    if days.num_rows == 0:
        return DAILY_SCHEMA.empty_table()
    slots = days["slots"].combine_chunks()
    counts = pc.list_value_length(slots).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    positions = pc.list_flatten(slots).to_numpy(zero_copy_only=False)
    gaps = gaps_from_positions(np.concatenate([[0], np.cumsum(counts)]), positions, days["expected_values"].to_numpy())
    verdict = judge(rule, gaps)
    summed = pc.is_in(days["element"], value_set=pa.array(sorted(e.value for e in TOTAL_ELEMENTS))).to_numpy(zero_copy_only=False)
    meets = verdict.meets_rule

    def where(condition: np.ndarray, column: str) -> pa.Array:
        values = days[column].combine_chunks()
        return pc.if_else(pa.array(condition), values, pa.nulls(len(values), values.type))

    return pa.table(
        {
            "wigos_id": days["wigos_id"], "element": days["element"], "day": days["day"],
            "duration_seconds": days["duration_seconds"], "expected_values": days["expected_values"],
            "value_count": pa.array(counts.astype(np.int32)),
            "missing_values": pa.array(gaps.missing.astype(np.int32)),
            "longest_gap": pa.array(gaps.longest.astype(np.int32)),
            "meets_rule": pa.array(meets), "complete": pa.array(verdict.complete),
            "mean": where(meets & ~summed, "value_mean"),
            "minimum": where(meets, "value_min"),
            "maximum": where(meets, "value_max"),
            "total": where(verdict.totals_ok & summed, "value_sum"),
            "suspect_values": days["suspect_values"], "excluded_values": days["excluded_values"],
        },
        schema=DAILY_SCHEMA,
    )


def derived_days(
    connection: duckdb.DuckDBPyConnection, selection: Selection, rule: CompletenessRule = SUB_DAILY_RULE
) -> pa.Table:
    """Daily values made from sub-daily ones, for days without any reported daily value.

    Columns of :data:`STATION_DAYS_SCHEMA`.  ``value`` is the element's daily statistic when
    the day meets ``rule`` (NULL otherwise: a missing day); ``qc_status`` is the worst status
    among the values used (suspect, else none when any was unchecked, else passed).  Cheap when
    there are no sub-daily values: their row groups are skipped by their statistics.
    """
    daily = daily_table(connection, selection, rule)
    if daily.num_rows == 0:
        return STATION_DAYS_SCHEMA.empty_table()
    column = pa.array([daily_column_of(e) for e in daily["element"].to_pylist()])
    stations = tuple(sorted(set(daily["wigos_id"].to_pylist())))
    narrowed = replace(selection, stations=stations)
    with registered(connection, daily.append_column("daily_column", column)) as days, \
            registered(connection, zones_table(narrowed)) as zones:
        reported, params = reported_rows_sql(narrowed, zones, counted_only=False, columns="DISTINCT wigos_id, element, day")
        sql = f"""
            SELECT wigos_id, element, day,
                   CASE daily_column WHEN 'total' THEN total WHEN 'maximum' THEN maximum
                                     WHEN 'minimum' THEN minimum ELSE mean END AS value,
                   CAST(NULL AS DOUBLE) AS excluded_value, value IS NOT NULL AS counted, true AS derived,
                   CASE WHEN suspect_values > 0 THEN '{QcStatus.SUSPECT.value}' END AS qc_status,
                   CAST(NULL AS VARCHAR) AS final_flag,
                   CAST(NULL AS TIMESTAMPTZ) AS period_start,
                   duration_seconds, suspect_values, excluded_values,
                   missing_values / expected_values AS missing_fraction
            FROM {days} AS d
            ANTI JOIN ({reported}) AS r USING (wigos_id, element, day)
            -- Several resolutions of one element and day: the one with a value, then the fewest
            -- missing slots, then the finest.
            QUALIFY row_number() OVER (PARTITION BY wigos_id, element, day
                                       ORDER BY value IS NULL, missing_fraction, duration_seconds) = 1
        """
        table = arrow(connection, sql, params)
    table = table.drop_columns(["missing_fraction"])
    return _with_derived_status_and_start(connection, narrowed, table).cast(STATION_DAYS_SCHEMA)


def _with_derived_status_and_start(
    connection: duckdb.DuckDBPyConnection, selection: Selection, table: pa.Table
) -> pa.Table:
    """Fill a derived day's QC status (worst of the values used) and its period's start (the
    local midnight it begins at, in UTC).  The status: the values used were read under the
    policy, so 'suspect' is known from the counts; the rest of the day's values are 'none'
    (unchecked) or 'passed', which one more grouped query tells apart."""
    if table.num_rows == 0:
        return table
    with registered(connection, table) as days, registered(connection, zones_table(selection)) as zones:
        inner, params = rows_sql(
            selection, zones, daily=False, qc_values="counted",
            columns=f"wigos_id, element, {LOCAL_DAY} AS day, qc_status", where=IN_PERIOD,
        )
        zone_of = "coalesce(z.timezone, 'UTC')" if zones else "'UTC'"
        NONE = QcStatus.NONE.value  # noqa: N806 - a constant of the statement
        sql = f"""
            WITH statuses AS (
                SELECT wigos_id, element, day, bool_or(coalesce(qc_status, '{NONE}') = '{NONE}') AS unchecked
                FROM ({inner}) AS v GROUP BY wigos_id, element, day
            )
            SELECT d.wigos_id, d.element, d.day, d.value, d.excluded_value, d.counted, d.derived,
                   CASE WHEN NOT d.counted THEN NULL
                        WHEN d.qc_status IS NOT NULL THEN d.qc_status
                        WHEN s.unchecked THEN '{NONE}' ELSE '{QcStatus.PASSED.value}' END AS qc_status,
                   d.final_flag,
                   timezone({zone_of}, CAST(d.day AS TIMESTAMP)) AS period_start,
                   d.duration_seconds, d.suspect_values, d.excluded_values
            FROM {days} AS d
            LEFT JOIN statuses AS s USING (wigos_id, element, day)
            {"" if zones is None else f"LEFT JOIN {zones} AS z ON z.wigos_id = d.wigos_id"}
        """
        return arrow(connection, sql, params + list(local_bounds_us(selection.period)))


# --------------------------------------------------------------------------- every day


def station_days(
    connection: duckdb.DuckDBPyConnection, selection: Selection, *, sub_daily_rule: CompletenessRule = SUB_DAILY_RULE
) -> pa.Table:
    """Every station-local day of the selection with any value, one row per station, element
    and day (:data:`STATION_DAYS_SCHEMA`), sorted: the value that counts (NULL when the QC
    policy counts none), whether it was derived from sub-daily values, its QC status and final
    flag, when its period starts (UTC), and the day's suspect values used and values excluded
    (``excluded_value``: the value the policy left out, for a report to show it).
    """
    with registered(connection, zones_table(selection)) as zones:
        sql, params = chosen_reported_sql(selection, zones)
        reported = arrow(connection, sql, params).cast(STATION_DAYS_SCHEMA)
    derived = derived_days(connection, selection, sub_daily_rule)
    days = pa.concat_tables([reported, derived]) if derived.num_rows else reported
    if days.num_rows == 0:
        return STATION_DAYS_SCHEMA.empty_table()
    return days.sort_by([("wigos_id", "ascending"), ("element", "ascending"), ("day", "ascending")])
