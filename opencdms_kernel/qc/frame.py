"""The values a QC run checks: read from the Parquet archive into sorted numpy columns.

A *series* is one station, element, duration, level and source; the frame holds every series'
values in time order, one series after the other (elements in the request's order), so that
"the previous value of the series" is the previous row.  The checks work on these columns with
whole-array operations (numpy) and DuckDB queries; nothing loops over rows in Python.

Why not SQL window functions: over 10 million rows, DuckDB's ``lag() OVER (PARTITION BY …
ORDER BY …)`` re-sorts everything (2.4 s on two cores here) and run lengths need a second
window (12 s).  The archive's files are already sorted by station and time within each
element and UTC year, and DuckDB returns them in file order, so a *stable* sort on the series
key alone puts every series in time order — a radix sort when the key fits in 16 bits
(0.04 s per 3 million values).  Consecutive-value checks are then shifts.  If the times turn
out not to be in order (a hand-made archive), a full sort is done instead.

The calendar month of a value is the UTC month of the middle of its period (``time +
duration / 2``): for daily values starting at local midnight east or west of Greenwich that is
the local date's month, as threshold tables expect.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import Callable, Iterator

import duckdb
import numpy as np
import sqlalchemy as sa

from opencdms_kernel.archive import archive_files, connect_archive, read_manifest
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
# One element row type for QC and ingest (id, code, valid range), re-exported here.
from opencdms_kernel.vocabulary import ElementInfo as ElementInfo
from opencdms_kernel.vocabulary import FinalFlag

US_PER_SECOND = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SMALL_KEYS = 1 << 16  # keys below this sort with numpy's radix sort


@dataclass(frozen=True)
class StationInfo:
    """A station as QC needs it."""

    id: int
    wigos_id: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class FrameRequest:
    """What to read: elements (in frame order), stations (None: all), time window with margin,
    and which of it is in the run's scope (the rest is context for the checks)."""

    elements: tuple[ElementInfo, ...]
    scope_element_ids: frozenset[int]
    read_station_ids: frozenset[int] | None
    scope_station_ids: frozenset[int] | None
    start: datetime | None
    end: datetime | None
    margin_seconds: int
    without_rejected: bool = False  # leave out values a person rejected (thresholds from history)


@dataclass(frozen=True, eq=False)
class Frame:
    """Sorted columns of the values to check (rows) and of their series.

    Rows of series ``s`` are ``bounds[s]:bounds[s + 1]``, in time order; series are grouped
    by element (``series_element``, an index into ``elements``).  ``time`` is in microseconds
    since 1970 (UTC); ``month`` 0..11; ``cell`` = series * 12 + month indexes the per-series,
    per-month rule tables.  ``candidate``: the archive shows the value flagged or decided by a
    person, so its entries must be compared even if nothing is found now.
    """

    elements: tuple[ElementInfo, ...]
    series_element: np.ndarray  # int16, index into elements
    series_station: np.ndarray  # int32
    series_duration: np.ndarray  # int32
    series_level: np.ndarray  # float32
    series_source: np.ndarray  # int16
    bounds: np.ndarray  # int64, series count + 1
    time: np.ndarray  # int64
    value: np.ndarray  # float64
    version: np.ndarray  # int32
    candidate: np.ndarray  # bool
    in_scope: np.ndarray  # bool
    month: np.ndarray  # int8
    cell: np.ndarray  # int32
    _links: dict = field(default_factory=dict, repr=False)

    @property
    def rows(self) -> int:
        return int(self.value.size)

    @property
    def series_count(self) -> int:
        return int(self.series_element.size)

    def series_of(self, rows: np.ndarray) -> np.ndarray:
        """The series of some rows (for the few flagged ones; a binary search each)."""
        return (np.searchsorted(self.bounds, rows, side="right") - 1).astype(np.int64)

    def element_rows(self, element: int) -> slice:
        """The rows of one element (they are contiguous)."""
        series = np.flatnonzero(self.series_element == element)
        if not series.size:
            return slice(0, 0)
        return slice(int(self.bounds[series[0]]), int(self.bounds[series[-1] + 1]))

    def row_series(self) -> np.ndarray:
        """Series of every row."""
        return np.repeat(np.arange(self.series_count, dtype=np.int32), np.diff(self.bounds))

    @cached_property
    def partner_ids(self) -> np.ndarray:
        """Per series: one id shared by the series of all elements with the same station,
        duration, level and source (a station's elements observed together)."""
        if not self.series_count:
            return np.empty(0, np.int64)
        keys = np.rec.fromarrays(
            [self.series_station, self.series_duration, self.series_level, self.series_source],
            names="station,duration,level,source",
        )
        return np.unique(keys, return_inverse=True)[1].astype(np.int64).ravel()

    @cached_property
    def scope_counts(self) -> np.ndarray:
        """Rows in scope per cell (so that a test counts the values it applies to cheaply)."""
        cells = self.series_count * 12
        if self.in_scope.all():
            return np.bincount(self.cell, minlength=cells)
        return np.bincount(self.cell[self.in_scope], minlength=cells)

    def tested(self, has_rule_per_cell: np.ndarray) -> int:
        """Rows in scope whose cell has a rule."""
        return int(self.scope_counts[has_rule_per_cell].sum())

    @cached_property
    def continues_series(self) -> np.ndarray:
        """``continues[i]``: row i belongs to the same series as row i - 1."""
        continues = np.ones(self.rows, dtype=bool)
        continues[self.bounds[:-1][self.bounds[:-1] < self.rows]] = False
        return continues

    @cached_property
    def time_step(self) -> np.ndarray:
        """``time[i] - time[i - 1]`` (0 for the first row)."""
        step = np.zeros(self.rows, dtype=np.int64)
        np.subtract(self.time[1:], self.time[:-1], out=step[1:])
        return step

    def consecutive(self, max_gap_us_per_cell: np.ndarray) -> np.ndarray:
        """``linked[i]``: row i directly follows row i - 1 of its series, at most the gap of
        its cell later.  Cached by gap table (step and persistence usually share one)."""
        key = max_gap_us_per_cell.tobytes()
        if key not in self._links:
            self._links.clear()
            self._links[key] = self.continues_series & self.compare(self.time_step, np.less_equal, max_gap_us_per_cell)
        return self._links[key]

    def compare(self, values: np.ndarray, operator: np.ufunc, per_cell: np.ndarray) -> np.ndarray:
        """``operator(values[i], per_cell[cell[i]])`` for every row (NaN limits compare False).

        Limits are usually the same for all of an element's cells (network rules): those
        elements are compared with one number, without gathering a limit per row."""
        result = np.empty(self.rows, dtype=bool)
        per_series = per_cell.reshape(-1, 12)
        for element in range(len(self.elements)):  # a few elements, each vectorised
            rows = self.element_rows(element)
            if rows.stop == rows.start:
                continue
            limits = per_series[self.series_element == element]
            first = limits.flat[0]
            uniform = np.isnan(limits).all() if np.isnan(first) else bool((limits == first).all())
            with np.errstate(invalid="ignore"):
                if uniform:
                    operator(values[rows], first, out=result[rows])
                else:
                    operator(values[rows], per_cell[self.cell[rows]], out=result[rows])
        return result


def epoch_us(moment: datetime) -> int:
    """Microseconds since 1970 of an aware datetime."""
    return (moment - _EPOCH) // timedelta(microseconds=1)


@contextmanager
def reading_archive(
    datastore: Datastore, bucket: Bucket
) -> Iterator[tuple[duckdb.DuckDBPyConnection, Callable[[str], list[str]]]]:
    """The archive open for reading (DuckDB, UTC), and a function giving an element's Parquet
    files in the generation read, while the archive exporters' advisory lock is held, so that
    no export replaces partition files under the reader (exports wait; reads take seconds)."""
    with datastore.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text("SELECT pg_advisory_lock(hashtext('opencdms.archive'))"))
        try:
            manifest = read_manifest(bucket)
            archive = connect_archive(bucket, manifest)
            try:
                archive.execute("SET TimeZone = 'UTC'")
                yield archive, lambda code: archive_files(bucket, manifest, code)
            finally:
                archive.close()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtext('opencdms.archive'))"))


# --------------------------------------------------------------------------- reading

_SUMMARY_SQL = """
SELECT element, duration_seconds, level, source_id, count(*) AS n,
       min(station_id) AS min_station, max(station_id) AS max_station
FROM observations
WHERE value IS NOT NULL AND list_contains($elements, element){filters}
GROUP BY ALL
ORDER BY element, duration_seconds, level, source_id
"""

# {key} is the series key: station_id * combinations + combination, where a combination is
# one (duration, level, source) of the element.  The month is that of the period's middle.
_READ_SQL = """
SELECT CAST({key} AS {key_type}) AS key,
       epoch_us(phenomenon_time) AS time,
       CAST(month(make_timestamp(epoch_us(phenomenon_time)
                                 + CAST(duration_seconds AS BIGINT) * 500000)) - 1 AS TINYINT) AS month,
       value, version,
       coalesce(final_flag <> '{good}', false) AS candidate
FROM observations
WHERE element = $element AND value IS NOT NULL{filters}
"""


def _filters(request: FrameRequest) -> tuple[str, dict[str, object]]:
    """SQL conditions (and their parameters) for the time window and the stations read."""
    sql = ""
    params: dict[str, object] = {}
    margin = timedelta(seconds=request.margin_seconds)
    low = request.start - margin if request.start is not None else None
    high = request.end + margin if request.end is not None else None
    if low is not None:
        # The year condition prunes partitions (folders); the time condition rows.
        sql += " AND year >= $first_year AND phenomenon_time >= $from_time"
        params.update(first_year=low.year, from_time=low)
    if high is not None:
        sql += " AND year <= $last_year AND phenomenon_time <= $to_time"
        params.update(last_year=high.year, to_time=high)
    if request.read_station_ids is not None:
        sql += " AND list_contains($stations, station_id)"
        params["stations"] = sorted(request.read_station_ids)
    if request.without_rejected:
        sql += f" AND final_flag IS DISTINCT FROM '{FinalFlag.REJECTED.value}'"
    return sql, params


@dataclass
class _Columns:
    """Preallocated row columns, filled element by element."""

    time: np.ndarray
    value: np.ndarray
    version: np.ndarray
    candidate: np.ndarray
    month: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """What is known of one element before reading it: an upper bound of its rows, its largest
    station id, and its (duration, level, source) combinations."""

    rows: int
    max_station: int
    combos: tuple[tuple[int, float, int], ...]


_METADATA_SQL = """
SELECT path_in_schema AS column_name, min(CAST(stats_min_value AS DOUBLE)) AS low,
       max(CAST(stats_max_value AS DOUBLE)) AS high, count(stats_min_value) AS known, count(*) AS groups,
       sum(row_group_num_rows) AS rows
FROM parquet_metadata($files)
WHERE path_in_schema IN ('station_id', 'duration_seconds', 'level', 'source_id')
GROUP BY path_in_schema
"""


def _layouts_from_metadata(
    archive: duckdb.DuckDBPyConnection, request: FrameRequest, files: Callable[[str], list[str]]
) -> dict[str, _Layout | None]:
    """Per element, from the Parquet statistics alone (no data read): None where they do not
    settle it (several combinations, or no statistics), and the element is then summarised
    by a query."""
    layouts: dict[str, _Layout | None] = {}
    first = (request.start - timedelta(seconds=request.margin_seconds)).year if request.start else None
    last = (request.end + timedelta(seconds=request.margin_seconds)).year if request.end else None
    for element in request.elements:
        paths = [path for path in files(element.code) if _year_in(path, first, last)]
        if not paths:
            continue
        stats = {row[0]: row[1:] for row in archive.sql(_METADATA_SQL, params={"files": paths}).fetchall()}
        if len(stats) < 4 or any(known < groups for _, _, known, groups, _ in stats.values()):
            layouts[element.code] = None
            continue
        if any(stats[name][0] != stats[name][1] for name in ("duration_seconds", "level", "source_id")):
            layouts[element.code] = None
            continue
        layouts[element.code] = _Layout(
            rows=int(stats["station_id"][4]),
            max_station=int(stats["station_id"][1]),
            combos=((int(stats["duration_seconds"][0]), float(stats["level"][0]) + 0.0, int(stats["source_id"][0])),),
        )
    return layouts


def _year_in(path: str, first: int | None, last: int | None) -> bool:
    """Whether a partition file (…/year=<y>/…) can hold values of the years wanted."""
    marker = path.rfind("year=")
    if marker < 0:
        return True
    digits = path[marker + 5:].split("/", 1)[0]
    try:
        year = int(digits)
    except ValueError:
        return True
    return (first is None or year >= first) and (last is None or year <= last)


def _layouts_from_query(
    archive: duckdb.DuckDBPyConnection, codes: list[str], filters: str, params: dict[str, object]
) -> dict[str, _Layout]:
    """Per element, by reading the few columns needed (exact)."""
    summary = archive.sql(_SUMMARY_SQL.format(filters=filters), params={**params, "elements": codes}).fetchall()
    combos: dict[str, list[tuple[int, float, int]]] = {}
    rows: dict[str, int] = {}
    max_station: dict[str, int] = {}
    for code, duration, level, source, n, _, high_station in summary:  # per combination
        combos.setdefault(code, []).append((int(duration), float(level), int(source)))
        rows[code] = rows.get(code, 0) + int(n)
        max_station[code] = max(max_station.get(code, 0), int(high_station))
    return {code: _Layout(rows[code], max_station[code], tuple(combos[code])) for code in combos}


def load_frame(
    archive: duckdb.DuckDBPyConnection, request: FrameRequest, files: Callable[[str], list[str]] | None = None
) -> Frame:
    """Read and sort the values of ``request`` from the archive's ``observations`` view.

    ``files(code)``: the Parquet files of an element, when known; their statistics then spare
    a pass over the data to find each element's series layout.
    """
    filters, params = _filters(request)
    layouts: dict[str, _Layout | None] = (
        _layouts_from_metadata(archive, request, files) if files is not None
        else {e.code: None for e in request.elements}
    )
    unknown = [code for code, layout in layouts.items() if layout is None]
    if unknown:
        layouts.update(_layouts_from_query(archive, unknown, filters, params))
        for code in unknown:
            if layouts.get(code) is None:
                layouts.pop(code, None)
    capacity = sum(layout.rows for layout in layouts.values() if layout is not None)
    columns = _Columns(
        time=np.empty(capacity, np.int64), value=np.empty(capacity, np.float64),
        version=np.empty(capacity, np.int32), candidate=np.empty(capacity, bool), month=np.empty(capacity, np.int8),
    )
    series_parts: list[tuple[np.ndarray, ...]] = []
    offset = 0
    wanted = [(index, element.code, layout) for index, element in enumerate(request.elements)
              if (layout := layouts.get(element.code)) is not None]
    # DuckDB reads the next element (in a thread, on its own cursor) while numpy sorts this one.
    reader = archive.cursor()
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = [pool.submit(_query, reader, code, layout, filters, params) for _, code, layout in wanted[:1]]
            for number, (index, code, layout) in enumerate(wanted):
                data = pending.pop().result()
                if number + 1 < len(wanted):
                    _, next_code, next_layout = wanted[number + 1]
                    pending.append(pool.submit(_query, reader, next_code, next_layout, filters, params))
                offset += _place(data, layout, columns, offset, index, series_parts)
    finally:
        reader.close()
    columns = _Columns(*(getattr(columns, name)[:offset] for name in ("time", "value", "version", "candidate", "month")))
    return _assemble(request, columns, series_parts, offset)


def _query(
    archive: duckdb.DuckDBPyConnection, code: str, layout: _Layout, filters: str, params: dict[str, object]
) -> dict[str, np.ndarray]:
    """One element's values in archive order (UTC year, then station and time), keyed by series."""
    element_combos = layout.combos
    if layout.max_station < 0:
        raise ValueError("negative station ids cannot be keyed")
    combo_params: dict[str, object] = {}
    if len(element_combos) == 1:
        combination = "0"
    else:
        branches = []
        for number, (duration, level, source) in enumerate(element_combos):
            combo_params.update({f"d{number}": duration, f"l{number}": level, f"s{number}": source})
            branches.append(f"WHEN duration_seconds = $d{number} AND level = $l{number} "
                            f"AND source_id = $s{number} THEN {number}")
        combination = f"CASE {' '.join(branches)} END"
    width = len(element_combos)
    small = (layout.max_station + 1) * width <= _SMALL_KEYS
    key = f"CAST(station_id AS BIGINT) * {width} + {combination}"
    sql = _READ_SQL.format(key=key, key_type="USMALLINT" if small else "BIGINT", filters=filters, good=FinalFlag.GOOD.value)
    return archive.sql(sql, params={**params, **combo_params, "element": code}).fetchnumpy()


def _place(
    data: dict[str, np.ndarray], layout: _Layout, columns: _Columns, offset: int, index: int,
    series_parts: list[tuple[np.ndarray, ...]],
) -> int:
    """Sort one element's values by series and time into ``columns[offset:]``; returns rows."""
    element_combos = layout.combos
    width = len(element_combos)
    keys = np.asarray(data["key"])
    time = np.asarray(data["time"])
    n = keys.size
    if offset + n > columns.time.size:
        raise RuntimeError("the archive changed while QC was reading it; run QC again")
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    rows = slice(offset, offset + n)
    np.take(time, order, out=columns.time[rows], mode="clip")
    step_back = (sorted_keys[1:] == sorted_keys[:-1]) & (columns.time[rows][1:] <= columns.time[rows][:-1])
    if step_back.any():  # not in archive order: sort by time as well
        order = np.lexsort((time, keys))
        sorted_keys = keys[order]
        np.take(time, order, out=columns.time[rows], mode="clip")
    np.take(np.asarray(data["value"], dtype=np.float64), order, out=columns.value[rows], mode="clip")
    np.take(np.asarray(data["version"], dtype=np.int32), order, out=columns.version[rows], mode="clip")
    np.take(np.asarray(data["candidate"], dtype=bool), order, out=columns.candidate[rows], mode="clip")
    np.take(np.asarray(data["month"], dtype=np.int8), order, out=columns.month[rows], mode="clip")
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]) if n else np.empty(0, np.int64)
    first_keys = sorted_keys[starts].astype(np.int64)
    combo = first_keys % width
    series_parts.append((
        np.full(starts.size, index, np.int16),
        (first_keys // width).astype(np.int32),
        np.array([c[0] for c in element_combos], np.int32)[combo],
        np.array([c[1] for c in element_combos], np.float32)[combo],
        np.array([c[2] for c in element_combos], np.int16)[combo],
        starts.astype(np.int64) + offset,
    ))
    return n


def _assemble(request: FrameRequest, columns: _Columns, series_parts: list[tuple[np.ndarray, ...]], total: int) -> Frame:
    def joined(position: int, dtype: type) -> np.ndarray:
        return np.concatenate([part[position] for part in series_parts]) if series_parts else np.empty(0, dtype)

    series_element = joined(0, np.int16)
    starts = joined(5, np.int64)
    bounds = np.append(starts, total).astype(np.int64)
    lengths = np.diff(bounds)
    # cell = series * 12 + month, without a per-row series array.
    cell = np.repeat(np.arange(series_element.size, dtype=np.int32) * 12, lengths)
    cell += columns.month
    frame_elements = request.elements
    in_scope = _in_scope(request, series_element, joined(1, np.int32), lengths, columns.time)
    return Frame(
        elements=frame_elements,
        series_element=series_element,
        series_station=joined(1, np.int32),
        series_duration=joined(2, np.int32),
        series_level=joined(3, np.float32),
        series_source=joined(4, np.int16),
        bounds=bounds,
        time=columns.time,
        value=columns.value,
        version=columns.version,
        candidate=columns.candidate,
        in_scope=in_scope,
        month=columns.month,
        cell=cell,
    )


def _in_scope(
    request: FrameRequest, series_element: np.ndarray, series_station: np.ndarray, lengths: np.ndarray,
    time: np.ndarray,
) -> np.ndarray:
    """Rows the run checks (the others are context: margins, partner elements, neighbours)."""
    scoped_elements = np.array([e.id in request.scope_element_ids for e in request.elements], dtype=bool)
    series_ok = scoped_elements[series_element] if series_element.size else np.zeros(0, bool)
    if request.scope_station_ids is not None:
        series_ok &= np.isin(series_station, np.fromiter(request.scope_station_ids, np.int32))
    rows_ok = np.repeat(series_ok, lengths)
    if request.start is not None:
        rows_ok &= time >= epoch_us(request.start)
    if request.end is not None:
        rows_ok &= time <= epoch_us(request.end)
    return rows_ok
