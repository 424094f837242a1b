"""Helpers shared by the checks on consecutive values of a series (step, persistence) and by
the thresholds derived from a station's own history (:mod:`.thresholds`)."""

from __future__ import annotations

import numpy as np

from opencdms_kernel.qc.frame import US_PER_SECOND, Frame
from opencdms_kernel.qc.rules import Resolved

# Largest gap between "consecutive" point values (duration 0) when a rule names none.
POINT_VALUE_GAP_SECONDS = 3600
# Changes are compared after rounding to this many decimals: ingest stores converted values
# rounded to 6 decimals, so a whole-°F step is 0.555556 give or take 1e-6.
_CHANGE_DECIMALS = 5
# The resolution is the smallest change at least this share of the changes reach (below).
RESOLUTION_QUANTILE = 0.01
# Fewer changes than this say nothing about a series' resolution.
MIN_CHANGES_FOR_RESOLUTION = 20
# Probabilities of the two quantiles a tail limit is extrapolated from, and how far.
TAIL_QUANTILES = (0.90, 0.99)


def gap_us(frame: Frame, gap_seconds_per_cell: np.ndarray) -> np.ndarray:
    """Per cell: how far apart two values may be and still count as consecutive — the given
    seconds where set (not NaN), else the series' duration, else one hour for point values."""
    duration = np.repeat(frame.series_duration.astype(np.float64), 12)
    default = np.where(duration > 0, duration, POINT_VALUE_GAP_SECONDS)
    return (np.where(np.isnan(gap_seconds_per_cell), default, gap_seconds_per_cell) * US_PER_SECOND).astype(np.int64)


def max_gap_us(frame: Frame, resolved: Resolved) -> np.ndarray:
    """Per cell: the rule's ``max_gap_seconds``, else the series' duration, else one hour for
    point values (see :func:`gap_us`)."""
    return gap_us(frame, resolved.params["max_gap_seconds"])


def equal_to_previous(frame: Frame, linked: np.ndarray) -> np.ndarray:
    """Rows i whose value equals that of row i - 1, which they follow (``linked``)."""
    return np.flatnonzero(_continues_equal(frame, linked))


def runs(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maximal runs of consecutive integers in sorted ``positions``: (first, last) of each."""
    if not positions.size:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    breaks = np.flatnonzero(np.diff(positions) != 1)
    first = positions[np.r_[0, breaks + 1]]
    last = positions[np.r_[breaks, positions.size - 1]]
    return first.astype(np.int64), last.astype(np.int64)


def expand(first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All rows from ``first`` to ``last`` (inclusive) of each range, and the range of each row."""
    lengths = last - first + 1
    which = np.repeat(np.arange(first.size), lengths)
    rows = np.arange(int(lengths.sum()), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths) + first[which]
    return rows, which


def value_runs(frame: Frame, linked: np.ndarray, exclude_per_cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every maximal run of equal consecutive values (single values included): the row it
    starts at and its length.  Runs of their cell's excluded value (dry days, calm) are left
    out; a NaN exclusion excludes nothing."""
    starts = np.flatnonzero(~_continues_equal(frame, linked))
    lengths = np.diff(np.append(starts, frame.rows))
    keep = frame.value[starts] != exclude_per_cell[frame.cell[starts]]  # NaN: never equal
    return starts[keep].astype(np.int64), lengths[keep].astype(np.int64)


def _continues_equal(frame: Frame, linked: np.ndarray) -> np.ndarray:
    same = np.zeros(frame.rows, dtype=bool)
    np.equal(frame.value[1:], frame.value[:-1], out=same[1:])
    return same & linked


def grouped_quantiles(values: np.ndarray, groups: np.ndarray, count: int,
                      probabilities: tuple[float, ...], interpolate: bool = True) -> np.ndarray:
    """Quantiles of ``values`` within each group ``0..count - 1`` (linear interpolation, as
    numpy's default, or the value at or below the position: numpy's "lower"), shape
    (count, probabilities); NaN for an empty group."""
    result = np.full((count, len(probabilities)), np.nan)
    if not values.size:
        return result
    order = np.lexsort((values, groups))
    ordered = values[order]
    sizes = np.bincount(groups, minlength=count)
    starts = np.cumsum(sizes) - sizes
    present = sizes > 0
    for column, probability in enumerate(probabilities):  # two or three probabilities
        position = starts[present] + probability * (sizes[present] - 1)
        low = np.floor(position).astype(np.int64)
        high = np.minimum(low + 1, starts[present] + sizes[present] - 1)
        fraction = position - low if interpolate else 0.0
        result[present, column] = ordered[low] + fraction * (ordered[high] - ordered[low])
    return result


def month_window(groups: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value counted in its cell's month and in the months before and after it
    (cyclically): cells are ``key * 12 + month``, so three months pool what one holds little
    of, while the threshold still follows the seasons."""
    month = groups % 12
    base = groups - month
    pooled = np.concatenate([groups, base + (month + 1) % 12, base + (month + 11) % 12])
    return pooled, np.tile(values, 3)


def pool_months(counts: np.ndarray) -> np.ndarray:
    """Per-cell counts summed over each month and the months either side (see :func:`month_window`)."""
    by_month = counts.reshape(-1, 12)
    return (by_month + np.roll(by_month, 1, axis=1) + np.roll(by_month, -1, axis=1)).ravel()


def run_length_limits(lengths: np.ndarray, groups: np.ndarray, count: int, k: float,
                      window: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The longest run of equal values that is still ordinary in each group: a longer one has,
    by the group's own runs, a probability below ``10**-(2 + k)`` per run (1 in 100 000 for
    k = 3).  Returns the limits (NaN for a group without runs) and the runs per group.

    The tail is extrapolated geometrically, as runs of a stationary sequence fall off: from
    the shares of runs longer than the 90th and the 99th percentile length the ratio per
    value is taken, and carried on from the 99th.  Unlike a difference of percentiles, this
    works where the percentiles are one value apart — in finely recorded values, where
    nearly every run is a single value, 3.5 % are pairs and 0.1 % triples, the limit is 4,
    not 5.  A share of zero counts as half a run (the tail is not known to stop there).
    ``window``: groups are cells, pooled as :func:`month_window` does.  Single values (most
    runs, at a fine resolution) are counted, not sorted.
    """
    single = lengths == 1
    singles = np.bincount(groups[single], minlength=count)
    long_groups, long_lengths = groups[~single], lengths[~single]
    if window:
        singles = pool_months(singles)
        long_groups, long_lengths = month_window(long_groups, long_lengths)
    longs = np.bincount(long_groups, minlength=count)
    totals = singles + longs
    order = np.lexsort((long_lengths, long_groups))
    width = int(long_lengths.max(initial=1)) + 2
    key = long_groups[order].astype(np.int64) * width + long_lengths[order]  # sorted
    ends = np.cumsum(longs)
    everyone = np.arange(count, dtype=np.int64)

    def longer_than(length: np.ndarray) -> np.ndarray:
        """Runs per group longer than ``length`` (>= 1: single values never are)."""
        return ends - np.searchsorted(key, everyone * width + np.minimum(length, width - 1), side="right")

    def percentile(share: float) -> np.ndarray:
        """The smallest length that at least ``share`` of the group's runs do not exceed."""
        rank = np.ceil(share * totals - 1e-9).astype(np.int64)  # 1-based, among all runs
        beyond = np.maximum(rank, 1) - singles  # among the long runs
        if not key.size:
            return np.ones(count, np.int64)
        at = np.clip(ends - longs + beyond - 1, 0, key.size - 1)
        return np.where(beyond <= 0, 1, key[at] - everyone * width)

    first = percentile(TAIL_QUANTILES[0]) + 1  # the shortest length fewer than 10 % reach
    second = np.maximum(percentile(TAIL_QUANTILES[1]) + 1, first + 1)  # ... fewer than 1 %
    at_first = longer_than(first - 1).astype(np.float64)
    at_second = np.maximum(longer_than(second - 1), 0.5)
    # No run reaches the first length: carry the tail on from the single values instead.
    none = at_first == 0
    first = np.where(none, 1, first)
    at_first = np.where(none, totals, at_first)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.clip((at_second / at_first) ** (1.0 / (second - first)), 1e-9, 0.999)
        share = at_second / totals
        target = 10.0 ** -(2.0 + k)
        more = np.where(share > target, np.ceil(np.log(target / share) / np.log(ratio) - 1e-9), 0)
        limits = np.where(totals > 0, second + more - 1, np.nan)
    return limits, totals


def tail_limit(low: np.ndarray, high: np.ndarray, k: float, step: np.ndarray | float = 0.0) -> np.ndarray:
    """``high + k * max(high - low, step)`` of two upper quantiles (the 90th and 99th
    percentiles): where a tail that falls off exponentially reaches 10**-(2 + k) — 1 in
    100 000 for k = 3.  A Gaussian tail falls off faster, so there the limit is looser than
    that; a heavier one (fronts in day-to-day temperature changes) is still covered.
    ``step``: the resolution, the least spread there can be between two quantiles of values
    recorded that coarsely (in whole hPa both are often 1)."""
    return high + k * np.fmax(high - low, step)


def resolutions(values: np.ndarray, groups: np.ndarray, count: int) -> np.ndarray:
    """The recording resolution of each group of consecutive ``values`` (one series each, in
    time order): the smallest change between consecutive values that at least 1 % of the
    non-zero changes reach — 1.0 for whole hPa, 0.5556 for whole °F in °C, 0.1 for tenths.
    Not the greatest common divisor of the changes: whole °F converted to tenths of °C
    changes by 0.5 or 0.6, whose common divisor 0.1 is not how finely the values were
    recorded.  NaN where there are fewer than 20 non-zero changes."""
    same_group = groups[1:] == groups[:-1]
    change = np.round(np.abs(values[1:] - values[:-1]), _CHANGE_DECIMALS)
    moved = same_group & (change > 0)
    # Not interpolated: between two steps, an interpolation would invent a finer one.
    result = grouped_quantiles(change[moved], groups[1:][moved], count, (RESOLUTION_QUANTILE,),
                               interpolate=False)[:, 0]
    enough = np.bincount(groups[1:][moved], minlength=count) >= MIN_CHANGES_FOR_RESOLUTION
    return np.where(enough, result, np.nan)
