"""Persistence check: the same value, or hardly any variation, for too long.

Rules (``qc_threshold`` test ``persistence``) per element and duration, or per station and
calendar month where derived from the station's own record (:mod:`.thresholds`): a run of
more than ``max_run`` equal consecutive values is flagged ``constant`` (the whole run: which
of its values is genuine cannot be told).  Runs of ``exclude_value`` are normal and never
flagged (0 mm of rain, calm wind, saturated air).  With ``min_spread``, any ``max_run + 1``
consecutive values whose range (max - min) is below it are flagged ``low_spread`` too (the
variance floor of a stuck-but-noisy sensor).

How long a run of equal values may be depends on how finely the values are recorded: in
whole hPa, twelve equal hourly pressures make a quiet morning; in tenths they make a stuck
sensor.  And a sensor is stuck alone: while the station's other elements keep changing, the
logger is alive, and a run is far less likely a fault than when they stand still too.  So a
run longer than its rule allows is judged once more:

* its series' *resolution* is measured around it (the smallest common step of its values
  within :data:`NEIGHBOURHOOD` values either side of the series' long runs, see
  :func:`.series.resolutions`: 1.0 for whole hPa, 0.5556 for whole °F in °C) — around it,
  because a station recorded in whole hPa for years and in tenths since is judged by what
  it was then;
* the station's *other elements* during the run (same station, duration, level and source)
  are ``changing`` (one of them changed at half its steps or more), ``unchanged``, or there
  are ``none`` with values then;
* where there are no others and the series is recorded more coarsely than its rule's
  ``resolution`` says, the run may be as long as runs of equal values are in this series
  itself, at its resolution: as long as its own runs (in the same neighbourhood) reach with a
  probability of 1 in 100 000 (:func:`.series.run_length_limits`, as a derived threshold;
  with fewer than 100 runs to go by, the rule's limit scaled by how much coarser the series
  is);
* where the others were changing, a stuck sensor is taken as a hundred times less likely,
  so the run may be as long as the series' own runs reach with a probability of 1 in
  10 million (k = 5 instead of 3), whatever its resolution;
* where the others stood still, the rule's limit holds: a station whose every element
  repeats is the classic frozen logger.

The entry names the limit applied, the resolution measured and what the other elements did.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from opencdms_kernel.qc.flags import Findings
from opencdms_kernel.qc.frame import US_PER_SECOND, Frame
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import Resolved
from opencdms_kernel.qc.series import (
    equal_to_previous,
    expand,
    max_gap_us,
    resolutions,
    run_length_limits,
    runs,
)

# What the station's other elements did during a run.
OTHERS = ("none", "unchanged", "changing")
NONE, UNCHANGED, CHANGING = range(3)
# The others "changed" when one of them changed at this share of the run's steps or more.
CHANGING_SHARE = 0.5
# A series recorded more than this many times as coarsely as its rule says is "coarser".
COARSER = 1.5
# How rare (10**-(2 + k) per run) a run of a series' own must be to stand out: as a derived
# threshold, and a hundred times rarer while the station's other elements change.
ALLOWANCE_K = 3.0
CHANGING_K = 5.0
MIN_RUNS_FOR_ALLOWANCE = 100
# Values either side of a series' long runs that say what its resolution and its runs are.
NEIGHBOURHOOD = 2000


def check_persistence(frame: Frame, resolved: Resolved) -> Findings:
    """Runs longer than their limit (see the module docstring), and, where set, windows with a
    range under ``min_spread``."""
    if not resolved.any:
        return Findings.empty(QcTest.PERSISTENCE)
    max_run = resolved.params["max_run"]  # per cell, NaN: no rule
    exclude = resolved.params["exclude_value"]
    tested = frame.tested(~np.isnan(max_run))
    linked = frame.consecutive(max_gap_us(frame, resolved))
    repeats = equal_to_previous(frame, linked)  # rows equal to the one before (a few percent)
    # A run of equal values is excluded as a whole when its value is the excluded one.
    repeats = repeats[frame.value[repeats] != exclude[frame.cell[repeats]]]  # NaN: never equal
    first, last = runs(repeats)
    start = first - 1  # each run starts one row before its first repeat
    length = last - start + 1
    with np.errstate(invalid="ignore"):
        longer = length > max_run[frame.cell[start]]  # the rule of the run's first value
    start, last, length = start[longer], last[longer], length[longer]
    limit, resolution, others = judge_runs(frame, resolved, linked, start, last, length)
    flagged = length > limit
    start, last, length = start[flagged], last[flagged], length[flagged]
    limit, resolution, others = limit[flagged], resolution[flagged], others[flagged]
    rows, run = expand(start, last)
    length, since, limit, resolution, others = (
        length[run], frame.time[start][run], limit[run], resolution[run], others[run])
    spread_rows = (_low_spread(frame, resolved, linked) if np.isfinite(resolved.params["min_spread"]).any()
                   else np.empty(0, np.int64))
    spread_rows = np.setdiff1d(spread_rows, rows)
    is_constant = np.ones(rows.size, bool)
    if spread_rows.size:
        window = (max_run[frame.cell[spread_rows]] + 1).astype(np.int64)
        order = np.argsort(np.concatenate([rows, spread_rows]), kind="stable")
        is_constant = np.r_[is_constant, np.zeros(spread_rows.size, bool)][order]
        length = np.concatenate([length, window])[order]
        since = np.concatenate([since, frame.time[spread_rows]])[order]
        limit = np.concatenate([limit, max_run[frame.cell[spread_rows]]])[order]
        resolution = np.concatenate([resolution, np.full(spread_rows.size, np.nan)])[order]
        others = np.concatenate([others, np.full(spread_rows.size, -1)])[order]
        rows = np.concatenate([rows, spread_rows])[order]
    keep = frame.in_scope[rows]
    rows, is_constant, length, since = rows[keep], is_constant[keep], length[keep], since[keep]
    limit, resolution, others = limit[keep], resolution[keep], others[keep]
    if not rows.size:
        return Findings.empty(QcTest.PERSISTENCE, tested=tested)
    return Findings.of_thresholds(
        QcTest.PERSISTENCE, rows, frame, resolved,
        flag=pa.array(np.where(is_constant, "constant", "low_spread")),
        details={
            "length": pa.array(length.astype(np.int64)),
            "since": pa.array(since, pa.timestamp("us", tz="UTC")),
            "limit": pa.array(limit.astype(np.int64)),
            "resolution": pa.array(np.round(resolution, 4), pa.float64(), from_pandas=True),
            "others": pa.array([OTHERS[o] if o >= 0 else None for o in others.tolist()], pa.string()),
        },
        tested=tested,
    )


def judge_runs(
    frame: Frame, resolved: Resolved, linked: np.ndarray, start: np.ndarray, last: np.ndarray, length: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For runs longer than their rule allows (first and last row): the limit that applies,
    their series' resolution and what the station's other elements did (an index into
    :data:`OTHERS`).  Only these few runs and their series are looked at."""
    cell = frame.cell[start]
    base = resolved.params["max_run"][cell]
    if not start.size:
        return base, np.empty(0), np.empty(0, np.int64)
    series = frame.series_of(start)
    candidates, which = np.unique(series, return_inverse=True)
    # Each candidate series' neighbourhood: from before its first long run to after its last.
    low = np.full(candidates.size, frame.rows, np.int64)
    np.minimum.at(low, which, start)
    high = np.zeros(candidates.size, np.int64)
    np.maximum.at(high, which, last)
    low = np.maximum(frame.bounds[candidates], low - NEIGHBOURHOOD)
    high = np.minimum(frame.bounds[candidates + 1] - 1, high + NEIGHBOURHOOD)
    rows, owner = expand(low, high)
    resolution = resolutions(frame.value[rows], owner, candidates.size)[which]
    with np.errstate(invalid="ignore"):
        ratio = resolution / resolved.params["resolution"][cell]
        coarser = ratio > COARSER  # NaN (unknown, or a rule without resolution): not coarser
    others = _others(frame, series, start, last, length)
    changing = others == CHANGING
    allowed = changing | ((others == NONE) & coarser)
    limit = base.copy()
    if allowed.any():
        lengths, of_series = _own_runs(frame, resolved, linked, rows, owner)
        usual, counted = run_length_limits(lengths, of_series, candidates.size, ALLOWANCE_K)
        rarer, _ = run_length_limits(lengths, of_series, candidates.size, CHANGING_K)
        own = np.where(changing, rarer[which], usual[which])
        scaled = np.ceil(base * np.where(coarser, ratio, 1.0))
        allowance = np.where(counted[which] >= MIN_RUNS_FOR_ALLOWANCE, own, scaled)
        limit = np.where(allowed, np.fmax(base, allowance), base)
    return limit, resolution, others


def _own_runs(
    frame: Frame, resolved: Resolved, linked: np.ndarray, rows: np.ndarray, owner: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The lengths of all runs of equal values in the ``rows`` of the candidate series (their
    excluded value's runs left out), and the candidate (``owner``) of each."""
    value = frame.value[rows]
    continues = np.zeros(rows.size, bool)
    continues[1:] = linked[rows[1:]] & (value[1:] == value[:-1]) & (owner[1:] == owner[:-1])
    starts = np.flatnonzero(~continues)
    lengths = np.diff(np.append(starts, rows.size))
    kept = value[starts] != resolved.params["exclude_value"][frame.cell[rows[starts]]]  # NaN: never equal
    return lengths[kept], owner[starts][kept]


def _others(frame: Frame, series: np.ndarray, start: np.ndarray, last: np.ndarray, length: np.ndarray) -> np.ndarray:
    """What the station's other elements did during each run: for every other series with
    the run's partner id, its values after the run's first time up to its last (two binary
    searches), and how many of them differ from the value before."""
    partner = frame.partner_ids
    order = np.argsort(partner, kind="stable")
    bounds = np.searchsorted(partner[order], partner[series], side="left"), \
        np.searchsorted(partner[order], partner[series], side="right")
    pair_positions, run_of_pair = expand(bounds[0], bounds[1] - 1)
    others = order[pair_positions]
    mine = others != series[run_of_pair]
    others, run_of_pair = others[mine], run_of_pair[mine]
    result = np.full(start.size, NONE, np.int64)
    most = np.zeros(start.size, np.int64)
    present = np.zeros(start.size, bool)
    begin, end = frame.time[start], frame.time[last]
    for run, other in zip(run_of_pair.tolist(), others.tolist()):  # per long run and other element
        first, stop = int(frame.bounds[other]), int(frame.bounds[other + 1])
        times = frame.time[first:stop]
        low = first + int(np.searchsorted(times, begin[run], side="right"))
        high = first + int(np.searchsorted(times, end[run], side="right"))
        if high <= low:
            continue
        present[run] = True
        since = max(low, first + 1)  # a series' first value changes from nothing
        changes = int(np.count_nonzero(frame.value[since:high] != frame.value[since - 1:high - 1]))
        most[run] = max(most[run], changes)
    steps = np.maximum(length - 1, 1)
    result[present] = np.where(most[present] >= CHANGING_SHARE * steps[present], CHANGING, UNCHANGED)
    return result


def _low_spread(frame: Frame, resolved: Resolved, linked: np.ndarray) -> np.ndarray:
    """Rows inside a window of ``max_run + 1`` consecutive values spanning less than
    ``min_spread`` (only where a rule sets ``min_spread``)."""
    min_spread = resolved.params["min_spread"][frame.cell]
    window = resolved.params["max_run"][frame.cell] + 1
    exclude = resolved.params["exclude_value"][frame.cell]
    flagged = np.zeros(frame.rows, bool)
    links = np.cumsum(linked)
    for size in np.unique(window[np.isfinite(min_spread)]).astype(int):  # a few distinct sizes
        if size > frame.rows:
            continue
        ends = np.arange(size - 1, frame.rows)
        starts = ends - size + 1
        whole = links[ends] - links[starts] == size - 1  # every value linked to the previous
        windows = sliding_window_view(frame.value, size)
        high, low = windows.max(axis=1), windows.min(axis=1)
        with np.errstate(invalid="ignore"):
            narrow = (whole & (window[ends] == size) & (high - low < min_spread[ends])
                      & ~((high == low) & (low == exclude[ends])))
        cover = np.zeros(frame.rows + 1, np.int64)
        np.add.at(cover, starts[narrow], 1)
        np.add.at(cover, ends[narrow] + 1, -1)
        flagged |= np.cumsum(cover[:-1]) > 0
    return np.flatnonzero(flagged)
