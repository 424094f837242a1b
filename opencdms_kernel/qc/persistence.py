"""Persistence check: the same value, or hardly any variation, for too long.

Rules (``qc_threshold`` test ``persistence``) per element and duration: more than ``max_run``
equal consecutive values are flagged ``constant`` (the whole run: which of its values is
genuine cannot be told).  Runs of ``exclude_value`` are normal and never flagged (0 mm of rain,
calm wind, saturated air).  With ``min_spread``, any ``max_run + 1`` consecutive values whose
range (max - min) is below it are flagged ``low_spread`` too (the variance floor of a
stuck-but-noisy sensor).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from opencdms_kernel.qc.flags import Findings
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import Resolved
from opencdms_kernel.qc.series import equal_to_previous, expand, max_gap_us, runs


def check_persistence(frame: Frame, resolved: Resolved) -> Findings:
    """Runs longer than ``max_run`` (and, where set, windows with a range under ``min_spread``)."""
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
    rows, run = expand(first - 1, last)  # each run starts one row before its first repeat
    length = (last - first + 2)[run]
    with np.errstate(invalid="ignore"):
        constant = length > max_run[frame.cell[rows]]
    rows, run, length = rows[constant], run[constant], length[constant]
    since = frame.time[first[run] - 1]
    spread_rows = (_low_spread(frame, resolved, linked) if np.isfinite(resolved.params["min_spread"]).any()
                   else np.empty(0, np.int64))
    spread_rows = np.setdiff1d(spread_rows, rows)
    if spread_rows.size:
        window = (max_run[frame.cell[spread_rows]] + 1).astype(np.int64)
        order = np.argsort(np.concatenate([rows, spread_rows]), kind="stable")
        is_constant = np.r_[np.ones(rows.size, bool), np.zeros(spread_rows.size, bool)][order]
        length = np.concatenate([length, window])[order]
        since = np.concatenate([since, frame.time[spread_rows]])[order]
        rows = np.concatenate([rows, spread_rows])[order]
    else:
        is_constant = np.ones(rows.size, bool)
    keep = frame.in_scope[rows]
    rows, is_constant, length, since = rows[keep], is_constant[keep], length[keep], since[keep]
    if not rows.size:
        return Findings.empty(QcTest.PERSISTENCE, tested=tested)
    return Findings.of_thresholds(
        QcTest.PERSISTENCE, rows, frame, resolved,
        flag=pa.array(np.where(is_constant, "constant", "low_spread")),
        details={
            "length": pa.array(length.astype(np.int64)),
            "since": pa.array(since, pa.timestamp("us", tz="UTC")),
        },
        tested=tested,
    )


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
