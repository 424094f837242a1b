"""Validation of parsed rows, set-based in DuckDB: every row is accepted or refused with a reason.

Nothing is stored that the file did not say.  A row is refused, with the first reason that
applies, for:

- an unknown station or an unknown element;
- a time that is not one: not ISO 8601 (``YYYY-MM-DD``, optionally ``Thh:mm[:ss]`` and ``Z`` or
  ``±hh:mm``) or not in the mapping's format; DuckDB's special words (``epoch``, ``infinity``);
  a UTC offset beyond ±14:00; fractional seconds (the key is whole seconds); hour 24 (which
  would silently become the next day); a time before the station opened or after it closed
  (the station's local dates); a time more than a day in the future;
- a value that is not a plain decimal number (optionally signed, optional exponent: no
  ``nan``, ``inf``, ``1_0``, ``0x10``, ``1,5``), that is too large for a double, or that is not
  zero but too small to be anything but zero;
- a value outside the element's physical range (after unit conversion);
- a second row for the same observation among the rows given: identical ones (value and flag)
  are duplicates of the first, which is kept; differing ones conflict, and all are refused.

An empty value is accepted as a missing observation (NULL).  In the wide layout one line holds
several observations, so every reason there starts with the element's code.  Rows are
validated per call (a chunk of a file): repeats across calls are the loader's business.
"""

from __future__ import annotations

import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import duckdb
import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from opencdms_kernel.db.schema import element, station
from opencdms_kernel.errors import MappingError
from opencdms_kernel.ingest.mapping import Layout, Mapping
from opencdms_kernel.ingest.units import conversion
from opencdms_kernel.vocabulary import ElementInfo

REJECT_SCHEMA = pa.schema(
    [("line", pa.int64()), ("column", pa.string()), ("value", pa.string()), ("reason", pa.string())]
)

# How far ahead of now an observation may be dated (loggers' clocks and zones differ a little).
FUTURE_TOLERANCE = timedelta(days=1)
# The largest UTC offset in use anywhere (Line Islands, +14:00), in minutes.
MAX_OFFSET_MINUTES = 14 * 60

# ISO 8601 as the default mapping reads it, anchored by regexp_full_match: a date, optionally a
# time of hour 00-23 with whole seconds (a zero fraction is exact, so allowed), optionally Z or
# an offset up to ±14:00.  Anything else is refused before DuckDB's far more lenient cast sees
# it (that cast reads 'epoch', 'infinity', '24:00', '+25:00', zone names and rounds fractions).
ISO_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.0+)?)?"
    r"(?:Z|[+-](?:0[0-9]|1[0-3])(?::?[0-5][0-9])?|[+-]14(?::?00)?)?)?"
)
ISO_FORMAT_NAME = "ISO 8601 (YYYY-MM-DD, optionally Thh:mm[:ss] and Z or ±hh:mm)"
# The offset of an ISO time (sign, hours, minutes), to name one that is out of range.
ISO_OFFSET = r"[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?([+-])([0-9]{2}):?([0-9]{2})?$"
# The offset read by a strptime format's %z, which DuckDB accepts up to ±99:59: the last sign
# and digits of the text (an offset followed by more digits is not checked).
FORMAT_OFFSET = r"([+-])([0-9]{2}):?([0-9]{2})?[^0-9]*$"
NO_OFFSET = r"($^)($^)($^)"  # a format without %z: no offset to check
# Diagnoses of a time that could not be read, to say why rather than only that.
HOUR_24 = r"[T ]24:00(?::00(?:\.0+)?)?(?:$|\s*[Z+-])"
# Where a mapping reads hour 24 as the end of the day, 24:00 becomes 23:59 and a minute is added
# (exact across a DST change, and the text keeps the shape its format expects).
HOUR_24_CLOCK = r"([T ])24:00"
FRACTION = r":[0-5][0-9][.,][0-9]*[1-9]"
# A plain decimal number, as regexp_full_match reads it.
PLAIN_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
# A number whose digits before any exponent are not all zero.
NON_ZERO_MANTISSA = r"^[^eE]*[1-9]"


@dataclass(frozen=True)
class StationInfo:
    """What validation needs to know of a station: its id and when it observed (local dates)."""

    id: int
    opened: date | None = None
    closed: date | None = None  # the last day it observed
    timezone: str = "UTC"


@dataclass(frozen=True)
class ReferenceData:
    """The stations (WIGOS id -> info) and elements (code -> info) that rows may name."""

    stations: dict[str, StationInfo]
    elements: dict[str, ElementInfo]


def load_reference_data(connection: sa.Connection) -> ReferenceData:
    """Read the stations and elements that validation checks rows against."""
    stations = {
        row.wigos_id: StationInfo(row.id, row.opened, row.closed, row.timezone)
        for row in connection.execute(
            sa.select(
                station.c.wigos_id, station.c.id, station.c.opened, station.c.closed, station.c.timezone
            )
        )
    }
    elements = {
        row.code: ElementInfo(row.id, row.code, row.valid_min, row.valid_max, units=row.units)
        for row in connection.execute(
            sa.select(element.c.id, element.c.code, element.c.units, element.c.valid_min, element.c.valid_max)
        )
    }
    return ReferenceData(stations, elements)


@dataclass(frozen=True)
class Validated:
    """Accepted rows (station_id, element_id, epoch_seconds, value, flag, source, line), sorted by key,
    and refused rows (line, column, value, reason), sorted by line.  ``conflicts``: the rows
    refused because their key was given with different values (station_id, element_id,
    epoch_seconds, line, value, flag): a later chunk of the file that gives the key again is
    refused too."""

    accepted: pa.Table
    rejects: pa.Table
    conflicts: pa.Table


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


def _local_midnight(day: date, zone: str, latest: bool) -> int:
    """Epoch seconds at which ``day`` begins in ``zone``.

    The station table's zone is free text; one this machine does not know must not refuse good
    rows, so then the earliest (``latest=False``) or the latest instant at which ``day`` begins
    anywhere (UTC+14 … UTC-12) stands in for it.
    """
    try:
        tz = zoneinfo.ZoneInfo(zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        shift = timedelta(hours=12) if latest else -timedelta(hours=14)
        return int((datetime.combine(day, time(), UTC) + shift).timestamp())
    return int(datetime.combine(day, time(), tz).timestamp())


def _lookup_tables(reference: ReferenceData) -> tuple[pa.Table, pa.Table]:
    stations = list(reference.stations.items())
    elements = list(reference.elements.values())
    station_table = pa.table(
        {
            "wigos_id": [wigos_id for wigos_id, _ in stations],
            "id": pa.array([info.id for _, info in stations], pa.int32()),
            "opened": pa.array([info.opened for _, info in stations], pa.date32()),
            "closed": pa.array([info.closed for _, info in stations], pa.date32()),
            # The station's observing life in epoch seconds: from its opening day's first second
            # to (excluding) the first second after its closing day, in its own time zone.
            "observes_from": pa.array(
                [None if info.opened is None else _local_midnight(info.opened, info.timezone, latest=False)
                 for _, info in stations],
                pa.int64(),
            ),
            "observes_until": pa.array(
                [None if info.closed is None
                 else _local_midnight(info.closed + timedelta(days=1), info.timezone, latest=True)
                 for _, info in stations],
                pa.int64(),
            ),
        }
    )
    element_table = pa.table(
        {
            "code": [e.code for e in elements],
            "id": pa.array([e.id for e in elements], pa.int16()),
            "units": [e.units for e in elements],
            "valid_min": pa.array([e.valid_min for e in elements], pa.float64()),
            "valid_max": pa.array([e.valid_max for e in elements], pa.float64()),
        }
    )
    return station_table, element_table


# The rows of {source} with the epoch seconds of their time, or why the text is no time we store
# (time_text_problem).  {source} is the rows, or their distinct times when these repeat enough.
TIMED_SQL = """
SELECT * EXCLUDE (time_text, end_of_day, t, us),
       CASE WHEN time_text_problem IS NULL THEN us // 1000000 END AS epoch_seconds
FROM (
    SELECT *, CASE
        WHEN {offset_beyond}
            THEN 'the UTC offset ' || regexp_extract(time_text, $offset_pattern, 1)
                 || regexp_extract(time_text, $offset_pattern, 2) || ':'
                 || coalesce(nullif(regexp_extract(time_text, $offset_pattern, 3), ''), '00')
                 || ' is beyond ±14:00'
        WHEN us IS NULL AND regexp_matches(time_text, $hour_24)
            THEN 'hour 24 is not read as the end of the day: write 00:00 of the next day'
        WHEN us IS NULL AND regexp_matches(time_text, $fraction)
            THEN 'fractional seconds: times are stored to the whole second'
        WHEN us IS NULL THEN 'cannot read the time as ' || $time_format
        WHEN us % 1000000 <> 0 THEN 'fractional seconds: times are stored to the whole second'
        WHEN us > $latest_us THEN 'more than a day in the future (now: ' || $now || ')'
    END AS time_text_problem
    FROM (SELECT *, CASE WHEN isfinite(t) THEN epoch_us(t) + CASE WHEN end_of_day THEN 60000000 ELSE 0 END END AS us
          FROM (SELECT *, CASE WHEN {gate} THEN {parse} END AS t
                FROM (SELECT *, {time_text} AS time_text, {end_of_day} AS end_of_day FROM {source})))
)
"""
# Minutes of the UTC offset found by $offset_pattern beyond the largest in use (NULL: no offset).
OFFSET_BEYOND = """(CAST(nullif(regexp_extract(time_text, $offset_pattern, 2), '') AS INTEGER) * 60
                    + coalesce(CAST(nullif(regexp_extract(time_text, $offset_pattern, 3), '') AS INTEGER), 0)
                    > $max_offset_minutes)"""
# Parsing each distinct time once pays (a DISTINCT and a join) when times repeat this much.
ROWS_PER_DISTINCT_TIME = 4

CHECK_SQL = """
CREATE TEMP TABLE checked AS
WITH joined AS (
    SELECT r.rid, r.line, r.station, r.element, r.time, r.value AS written, r.flag, r.source, r.station_column,
           r.value_column, s.id AS station_id, s.opened, s.closed, s.observes_from, s.observes_until,
           e.id AS element_id, e.units AS element_units, e.valid_min, e.valid_max, c.scale, c."offset",
           r.epoch_seconds, r.time_text_problem,
           trim(r.value) AS value_text
    FROM {timed_rows} AS r
    LEFT JOIN stations AS s ON s.wigos_id = trim(r.station)
    LEFT JOIN elements AS e ON e.code = trim(r.element)
    LEFT JOIN conversions AS c
           ON c.element = e.code AND c.units IS NOT DISTINCT FROM r.units
), numbers AS (
    -- Only a plain decimal reaches the cast: DuckDB's own reads '1_0' as 10, and 'nan'.
    SELECT *, CASE WHEN regexp_full_match(value_text, $plain_number)
                   THEN TRY_CAST(value_text AS DOUBLE) END AS raw_value
    FROM joined
), converted AS (
    SELECT *,
           CASE WHEN scale IS NULL THEN raw_value
                ELSE round(raw_value * scale + "offset", 6) END AS v
    FROM numbers
), judged AS (
    SELECT *,
           CASE WHEN station_id IS NULL THEN 'unknown station' END AS station_problem,
           CASE WHEN element_id IS NULL THEN 'unknown element' END AS element_problem,
           CASE WHEN epoch_seconds IS NULL
                    THEN coalesce(time_text_problem, 'cannot read the time as ' || $time_format)
                WHEN epoch_seconds < observes_from
                    THEN 'before the station opened on ' || CAST(opened AS VARCHAR)
                WHEN epoch_seconds >= observes_until
                    THEN 'after the station closed on ' || CAST(closed AS VARCHAR)
           END AS time_problem,
           CASE WHEN value_text = '' THEN NULL
                WHEN raw_value IS NULL THEN 'not a number'
                WHEN NOT isfinite(v) THEN 'too large a number'
                -- '1e-400' reads as 0: a value nobody sent.
                WHEN raw_value = 0 AND regexp_matches(value_text, $non_zero_mantissa)
                    THEN 'not zero, yet too small a number to be stored (it would become 0)'
                WHEN v < valid_min OR v > valid_max
                    THEN printf('outside the physical range %g to %g %s of %s',
                                valid_min, valid_max, element_units, trim(element))
           END AS value_problem
    FROM converted
)
SELECT rid, line, station_id, element_id, epoch_seconds, v AS value, nullif(trim(flag), '') AS flag,
       nullif(trim(source), '') AS source,
       -- The report's columns for refused rows only: accepted rows carry no text.
       CASE WHEN station_problem IS NOT NULL THEN station_column
            WHEN element_problem IS NOT NULL THEN 'element'
            WHEN time_problem IS NOT NULL THEN $time_column
            WHEN value_problem IS NOT NULL THEN value_column END AS reject_column,
       CASE WHEN station_problem IS NOT NULL THEN trim(station)
            WHEN element_problem IS NOT NULL THEN trim(element)
            WHEN time_problem IS NOT NULL THEN time
            WHEN value_problem IS NOT NULL THEN written END AS reject_value,
       CASE WHEN $name_element THEN trim(element) || ': ' ELSE '' END
       || coalesce(station_problem, element_problem, time_problem, value_problem) AS reason
FROM judged
"""

# The accepted rows that share a key with another.  A row's place in the file is its line, then
# its rid (which follows the mapping's column order within a line), as one number: pos.  A key
# whose rows all have one (value, flag) holds duplicates: the first is kept, the others refused.
# A key with several has a conflict: every row is refused, naming the first row whose (value,
# flag) differs from its own.  Aggregates and joins only: linear, however many share a key.
POS_SCALE = 1 << 32  # above any rid
REPEATED_SQL = """
CREATE TEMP TABLE repeated AS
WITH shared AS (
    SELECT c.rid, c.line, c.station_id, c.element_id, c.epoch_seconds, c.value, c.flag,
           c.line * $pos_scale + c.rid AS pos
    FROM checked AS c
    SEMI JOIN (SELECT station_id, element_id, epoch_seconds FROM checked WHERE reason IS NULL
               GROUP BY ALL HAVING count(*) > 1) AS k
           USING (station_id, element_id, epoch_seconds)
    WHERE c.reason IS NULL
), variants AS (
    -- A (value, flag) variant of a key, known by the place of its first row.
    SELECT station_id, element_id, epoch_seconds, value, flag, min(pos) AS variant
    FROM shared GROUP BY ALL
), keys AS (
    SELECT station_id, element_id, epoch_seconds, min(variant, 2) AS firsts
    FROM variants GROUP BY ALL
), refused AS (
    SELECT s.rid, s.line, k.firsts[2] IS NOT NULL AS conflict,
           CASE WHEN k.firsts[2] IS NULL THEN k.firsts[1]        -- a duplicate: the kept row
                WHEN v.variant = k.firsts[1] THEN k.firsts[2]    -- a conflict: the first row
                ELSE k.firsts[1] END AS other                    --   that differs
    FROM shared AS s
    JOIN variants AS v
      ON v.station_id = s.station_id AND v.element_id = s.element_id
     AND v.epoch_seconds = s.epoch_seconds
     AND v.value IS NOT DISTINCT FROM s.value AND v.flag IS NOT DISTINCT FROM s.flag
    JOIN keys AS k
      ON k.station_id = s.station_id AND k.element_id = s.element_id AND k.epoch_seconds = s.epoch_seconds
    WHERE k.firsts[2] IS NOT NULL OR s.pos <> k.firsts[1]
)
SELECT f.rid, f.line, f.conflict, r.value_column AS "column", r.value,
       CASE WHEN $name_element THEN trim(r.element) || ': ' ELSE '' END
       || CASE WHEN NOT f.conflict THEN 'duplicate of line ' || (f.other // $pos_scale)
               ELSE 'conflicts with line ' || o.line || ' ('
                    || CASE WHEN trim(o.value) = '' THEN 'empty value' ELSE 'value ' || trim(o.value) END
                    || CASE WHEN nullif(trim(r.flag), '') IS NOT DISTINCT FROM nullif(trim(o.flag), '') THEN ''
                            WHEN nullif(trim(o.flag), '') IS NULL THEN ', no flag'
                            ELSE ', flag ' || trim(o.flag) END
                    || ')' END AS reason
FROM refused AS f
JOIN rows AS r ON r.rid = f.rid
LEFT JOIN rows AS o ON f.conflict AND o.rid = f.other % $pos_scale
"""


def _named(sql: str, parameters: dict[str, object]) -> dict[str, object]:
    """The ``parameters`` that ``sql`` names ($name): DuckDB refuses any other."""
    return {name: value for name, value in parameters.items() if re.search(rf"\${name}\b", sql)}


def _time_sql(mapping: Mapping, now: datetime) -> tuple[str, dict[str, object]]:
    """How times are read under ``mapping``: the SELECT that times a {source} of rows (see
    TIMED_SQL), and its parameters."""
    parameters: dict[str, object] = {
        "max_offset_minutes": MAX_OFFSET_MINUTES,
        "hour_24": HOUR_24,
        "fraction": FRACTION,
        "latest_us": int((now + FUTURE_TOLERANCE).timestamp()) * 1_000_000,
        "now": now.strftime("%Y-%m-%d %H:%M UTC"),
    }
    if mapping.time.format:
        # strptime, too, reads 'epoch' and 'infinity' whatever the format; a time has digits.
        gate = "regexp_matches(time_text, '[0-9]')"
        parse = "CAST(try_strptime(time_text, $time_format) AS TIMESTAMPTZ)"
        with_offset = "%z" in mapping.time.format
        parameters |= {
            "time_format": mapping.time.format,
            "offset_pattern": FORMAT_OFFSET if with_offset else NO_OFFSET,
        }
        # strptime reads any offset up to ±99:59, so every time read with one is checked.
        offset_beyond = OFFSET_BEYOND if with_offset else "false"
    else:
        gate = "regexp_full_match(time_text, $iso_time)"
        parse = "TRY_CAST(time_text AS TIMESTAMPTZ)"
        parameters |= {"time_format": ISO_FORMAT_NAME, "offset_pattern": ISO_OFFSET, "iso_time": ISO_TIME}
        # ISO_TIME admits no offset beyond ±14:00: only a time it refused can have one.
        offset_beyond = f"(us IS NULL AND {OFFSET_BEYOND})"
    if mapping.time.hour_24 == "end_of_day":
        time_text = "regexp_replace(trim(time), $hour_24_clock, '\\123:59')"
        end_of_day = "regexp_matches(trim(time), $hour_24)"
        parameters["hour_24_clock"] = HOUR_24_CLOCK
    else:
        time_text, end_of_day = "trim(time)", "false"
    timed = TIMED_SQL.replace("{offset_beyond}", offset_beyond).replace("{gate}", gate)
    timed = timed.replace("{time_text}", time_text).replace("{end_of_day}", end_of_day)
    return timed.replace("{parse}", parse), parameters


def _timed_rows(
    con: duckdb.DuckDBPyConnection, row_count: int, timed_sql: str, parameters: dict[str, object]
) -> tuple[str, dict[str, object]]:
    """The registered rows with their times read (a relation for CHECK_SQL), and its parameters.

    When times repeat (a long file's stations and elements share them, a wide file's columns
    do), each distinct text is read once into the ``times`` table and joined back; otherwise
    each row's text is read where it stands, which is cheaper than a DISTINCT and a join.
    """
    (distinct_times,) = con.execute("SELECT approx_count_distinct(time) FROM rows").fetchone()
    if distinct_times * ROWS_PER_DISTINCT_TIME > row_count:
        return "(" + timed_sql.replace("{source}", "rows") + ")", parameters
    distinct = timed_sql.replace("{source}", "(SELECT DISTINCT time FROM rows)")
    times_sql = f"CREATE TEMP TABLE times AS {distinct}"
    con.execute(times_sql, _named(times_sql, parameters))
    joined = "SELECT rows.*, t.epoch_seconds, t.time_text_problem FROM rows LEFT JOIN times AS t USING (time)"
    return f"({joined})", {}


def validate_rows(
    rows: pa.Table, mapping: Mapping, reference: ReferenceData, *, now: datetime | None = None
) -> Validated:
    """Check every parsed row (see the module docstring) in a few set-based DuckDB statements.

    ``now`` (default: the current time) is what "in the future" is measured from.
    """
    station_table, element_table = _lookup_tables(reference)
    conversions = _conversions(mapping, reference.elements)
    name_element = mapping.layout is Layout.WIDE
    timed_sql, time_parameters = _time_sql(mapping, (now or datetime.now(UTC)).astimezone(UTC))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = ?", [mapping.time.timezone])
        numbered = rows.append_column("rid", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
        for name, table in (
            ("rows", numbered), ("stations", station_table), ("elements", element_table),
            ("conversions", conversions),
        ):
            con.register(name, table)
        timed_rows, check_parameters = _timed_rows(con, rows.num_rows, timed_sql, time_parameters)
        check_sql = CHECK_SQL.replace("{timed_rows}", timed_rows)
        con.execute(
            check_sql,
            _named(check_sql, check_parameters | {
                "time_column": mapping.time.label,
                "time_format": time_parameters["time_format"],
                "plain_number": PLAIN_NUMBER,
                "non_zero_mantissa": NON_ZERO_MANTISSA,
                "name_element": name_element,
            }),
        )
        accepted_count, distinct_keys = con.execute(
            "SELECT count(*), count(DISTINCT (station_id, element_id, epoch_seconds)) "
            "FROM checked WHERE reason IS NULL"
        ).fetchall()[0]
        repeated = accepted_count != distinct_keys
        if repeated:
            con.execute(REPEATED_SQL, {"pos_scale": POS_SCALE, "name_element": name_element})
        accepted = con.sql(
            "SELECT station_id, element_id, epoch_seconds, value, flag, source, line FROM checked AS c "
            + ("ANTI JOIN repeated USING (rid) " if repeated else "")
            + "WHERE c.reason IS NULL ORDER BY station_id, element_id, epoch_seconds"
        ).to_arrow_table()
        conflicts = con.sql(
            "SELECT c.station_id, c.element_id, c.epoch_seconds, c.line, c.value, c.flag "
            "FROM checked AS c SEMI JOIN (SELECT rid FROM repeated WHERE conflict) USING (rid)"
            if repeated else
            "SELECT station_id, element_id, epoch_seconds, line, value, flag FROM checked LIMIT 0"
        ).to_arrow_table()
        rejects = con.sql(
            "SELECT line, reject_column AS \"column\", reject_value AS value, reason "
            "FROM checked WHERE reason IS NOT NULL "
            + ("UNION ALL SELECT line, \"column\", value, reason FROM repeated " if repeated else "")
            + "ORDER BY line, \"column\", reason"
        ).to_arrow_table()
    finally:
        con.close()
    return Validated(accepted=accepted, rejects=rejects.cast(REJECT_SCHEMA), conflicts=conflicts)
