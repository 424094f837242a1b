"""Validation of parsed rows, set-based in DuckDB: every row is accepted or refused with a reason.

A row is refused, with the first reason that applies, for: an unknown station, an unknown
element, a time that cannot be read, a value that is not a number, a value outside the
element's physical range (after unit conversion), or a second row for the same observation in
the same file.  An empty value is accepted as a missing observation (NULL).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from opencdms_kernel.errors import MappingError
from opencdms_kernel.ingest.mapping import Layout, Mapping
from opencdms_kernel.ingest.units import conversion

REJECT_SCHEMA = pa.schema(
    [("line", pa.int64()), ("column", pa.string()), ("value", pa.string()), ("reason", pa.string())]
)


@dataclass(frozen=True)
class ElementInfo:
    """What validation needs to know of an element."""

    id: int
    code: str
    units: str
    valid_min: float | None
    valid_max: float | None


@dataclass(frozen=True)
class Validated:
    """Accepted rows (station_id, element_id, epoch seconds, value, flag), sorted by key, and
    refused rows (line, column, value, reason), sorted by line."""

    accepted: pa.Table
    rejects: pa.Table


def _conversions(mapping: Mapping, elements: dict[str, ElementInfo]) -> pa.Table:
    """One row per (element, declared units) with the linear conversion to the element's units."""
    if mapping.layout is Layout.WIDE:
        pairs = [(f"columns.{column}", spec.element, spec.units) for column, spec in mapping.columns.items()]
    else:
        pairs = [(f"units.{code}", code, units) for code, units in mapping.units.items()]
    rows: dict[str, list[object]] = {"element": [], "units": [], "scale": [], "offset": []}
    for field, code, units in pairs:
        element = elements.get(code)
        if element is None:
            known = ", ".join(sorted(elements))
            raise MappingError(mapping.name, field, f"unknown element {code!r} (known: {known})")
        if units is None:
            continue
        try:
            linear = conversion(units, element.units)
        except ValueError as exc:
            raise MappingError(mapping.name, field, str(exc)) from exc
        # Wide files carry the declared units on each row; long files carry none.
        rows["element"].append(code)
        rows["units"].append(units if mapping.layout is Layout.WIDE else None)
        rows["scale"].append(linear.scale)
        rows["offset"].append(linear.offset)
    return pa.table(
        rows,
        schema=pa.schema(
            [("element", pa.string()), ("units", pa.string()), ("scale", pa.float64()), ("offset", pa.float64())]
        ),
    )


def _lookup_tables(
    stations: dict[str, int], elements: dict[str, ElementInfo]
) -> tuple[pa.Table, pa.Table]:
    station_table = pa.table(
        {"wigos_id": list(stations), "id": pa.array(list(stations.values()), pa.int32())}
    )
    element_table = pa.table(
        {
            "code": [e.code for e in elements.values()],
            "id": pa.array([e.id for e in elements.values()], pa.int16()),
            "units": [e.units for e in elements.values()],
            "valid_min": pa.array([e.valid_min for e in elements.values()], pa.float64()),
            "valid_max": pa.array([e.valid_max for e in elements.values()], pa.float64()),
        }
    )
    return station_table, element_table


CHECK_SQL = """
CREATE TEMP TABLE checked AS
WITH joined AS (
    SELECT r.rid, r.line, r.station, r.element, r.time, r.value, r.flag, r.station_column,
           r.value_column, s.id AS station_id, e.id AS element_id, e.units AS element_units,
           e.valid_min, e.valid_max, c.scale, c."offset",
           {time_expression} AS t,
           trim(r.value) AS value_text,
           try_cast(trim(r.value) AS DOUBLE) AS raw_value
    FROM rows AS r
    LEFT JOIN stations AS s ON s.wigos_id = trim(r.station)
    LEFT JOIN elements AS e ON e.code = trim(r.element)
    LEFT JOIN conversions AS c
           ON c.element = e.code AND c.units IS NOT DISTINCT FROM r.units
), converted AS (
    SELECT *,
           CASE WHEN scale IS NULL THEN raw_value
                ELSE round(raw_value * scale + "offset", 6) END AS v
    FROM joined
)
SELECT rid, line, station_id, element_id, CAST(epoch(t) AS BIGINT) AS epoch_seconds, v AS value,
       nullif(trim(flag), '') AS flag,
       CASE WHEN station_id IS NULL THEN station_column
            WHEN element_id IS NULL THEN 'element'
            WHEN t IS NULL THEN $time_column
            ELSE value_column END AS reject_column,
       CASE WHEN station_id IS NULL THEN trim(station)
            WHEN element_id IS NULL THEN trim(element)
            WHEN t IS NULL THEN time
            ELSE value END AS reject_value,
       CASE WHEN station_id IS NULL THEN 'unknown station'
            WHEN element_id IS NULL THEN 'unknown element'
            WHEN t IS NULL THEN 'cannot read the time as ' || $time_format
            WHEN raw_value IS NULL AND value_text <> '' THEN 'not a number'
            WHEN v < valid_min OR v > valid_max
                THEN printf('outside the physical range %g to %g %s of %s',
                            valid_min, valid_max, element_units, trim(element))
       END AS reason
FROM converted
"""


def validate_rows(
    rows: pa.Table,
    mapping: Mapping,
    stations: dict[str, int],
    elements: dict[str, ElementInfo],
) -> Validated:
    """Check every parsed row (see the module docstring) in one DuckDB pass."""
    station_table, element_table = _lookup_tables(stations, elements)
    conversions = _conversions(mapping, elements)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = ?", [mapping.time.timezone])
        numbered = rows.append_column("rid", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        for name, table in (
            ("rows", numbered), ("stations", station_table), ("elements", element_table),
            ("conversions", conversions),
        ):
            con.register(name, table)
        if mapping.time.format:
            time_expression = "CAST(try_strptime(trim(r.time), $time_format) AS TIMESTAMPTZ)"
            time_format = mapping.time.format
        else:
            time_expression = "try_cast(trim(r.time) AS TIMESTAMPTZ)"
            time_format = "ISO 8601"
        con.execute(
            CHECK_SQL.format(time_expression=time_expression),
            {"time_column": mapping.time.column, "time_format": time_format},
        )
        accepted_count, distinct_keys = con.execute(
            "SELECT count(*), count(DISTINCT (station_id, element_id, epoch_seconds)) "
            "FROM checked WHERE reason IS NULL"
        ).fetchall()[0]
        if accepted_count != distinct_keys:
            # Two rows for one observation: keep the first, refuse the others by name.
            con.execute(
                """
                UPDATE checked SET reason = 'duplicate of line ' || d.first_line,
                                   reject_column = '(row)', reject_value = ''
                FROM (SELECT rid, line, min(line) OVER (PARTITION BY station_id, element_id, epoch_seconds)
                             AS first_line
                      FROM checked WHERE reason IS NULL) AS d
                WHERE checked.rid = d.rid AND d.line <> d.first_line
                """
            )
        accepted = con.sql(
            "SELECT station_id, element_id, epoch_seconds, value, flag FROM checked "
            "WHERE reason IS NULL ORDER BY station_id, element_id, epoch_seconds"
        ).to_arrow_table()
        rejects = con.sql(
            "SELECT line, reject_column AS \"column\", reject_value AS value, reason "
            "FROM checked WHERE reason IS NOT NULL ORDER BY line, \"column\""
        ).to_arrow_table()
    finally:
        con.close()
    return Validated(accepted=accepted, rejects=rejects.cast(REJECT_SCHEMA))
