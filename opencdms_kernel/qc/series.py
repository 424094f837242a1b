"""Helpers shared by the checks on consecutive values of a series (step, persistence)."""

from __future__ import annotations

import numpy as np

from opencdms_kernel.qc.frame import US_PER_SECOND, Frame
from opencdms_kernel.qc.rules import Resolved

# Largest gap between "consecutive" point values (duration 0) when a rule names none.
POINT_VALUE_GAP_SECONDS = 3600


def max_gap_us(frame: Frame, resolved: Resolved) -> np.ndarray:
    """Per cell: how far apart two values may be and still count as consecutive — the rule's
    ``max_gap_seconds``, else the series' duration, else one hour for point values."""
    duration = np.repeat(frame.series_duration.astype(np.float64), 12)
    default = np.where(duration > 0, duration, POINT_VALUE_GAP_SECONDS)
    gap = resolved.params["max_gap_seconds"]
    return (np.where(np.isnan(gap), default, gap) * US_PER_SECOND).astype(np.int64)


def equal_to_previous(frame: Frame, linked: np.ndarray) -> np.ndarray:
    """Rows i whose value equals that of row i - 1, which they follow (``linked``)."""
    same = np.zeros(frame.rows, dtype=bool)
    np.equal(frame.value[1:], frame.value[:-1], out=same[1:])
    same &= linked
    return np.flatnonzero(same)


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
