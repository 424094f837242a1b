"""Range check: each value against its station/network thresholds and its element's physical range.

Thresholds per station, element and calendar month fall back station -> network (see
:mod:`opencdms_kernel.qc.rules` for the order); a value outside its threshold gets the rule's
severity (usually suspect).  The global fallback, the element's physical range
(``element.valid_min/valid_max``), always applies: a value outside it has failed, and its
entry's ``threshold`` is ``global``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from opencdms_kernel.qc.flags import Findings, versions
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import GLOBAL, LEVELS, Resolved, rule_labels
from opencdms_kernel.qc.series import expand


def check_range(frame: Frame, resolved: Resolved) -> Findings:
    """Values outside their range threshold (suspect, or the rule's severity) or outside the
    element's physical range (failed)."""
    element = np.repeat(frame.series_element, 12)  # per cell
    physical_min = np.array([e.valid_min if e.valid_min is not None else np.nan for e in frame.elements])[element]
    physical_max = np.array([e.valid_max if e.valid_max is not None else np.nan for e in frame.elements])[element]
    low, high = resolved.params["low"], resolved.params["high"]
    # The tighter of both limits per cell (fmax/fmin skip NaN: a missing limit is no limit).
    lower, upper = np.fmax(low, physical_min), np.fmin(high, physical_max)
    rows = _outside(frame, lower, upper)
    rows = rows[frame.in_scope[rows]]
    tested = frame.tested(np.ones(frame.series_count * 12, bool))
    if not rows.size:
        return Findings.empty(QcTest.RANGE, tested=tested)
    cell = frame.cell[rows]
    value = frame.value[rows]
    below_physical = value < physical_min[cell]
    physical = below_physical | (value > physical_max[cell])
    codes = np.array([e.code for e in frame.elements], dtype=object)[element[cell]]
    with np.errstate(invalid="ignore"):
        flag = np.where(physical, np.where(below_physical, "below_physical_limit", "above_physical_limit"),
                        np.where(value < low[cell], "below_range", "above_range"))
    rule = pc.if_else(
        pa.array(physical),
        pc.binary_join_element_wise(pa.scalar("element:"), pa.array(codes.tolist(), pa.string()), ""),
        rule_labels("qc_threshold", resolved.rule_id[cell]),
    )
    return Findings(
        test=QcTest.RANGE,
        rows=rows.astype(np.int64),
        failed=physical | resolved.failed[cell],
        flag=pa.array(flag),
        rule=rule,
        version=versions(np.where(physical, 0, resolved.version[cell])),
        details={
            "low": pa.array(np.where(physical, physical_min[cell], low[cell]), pa.float64(), from_pandas=True),
            "high": pa.array(np.where(physical, physical_max[cell], high[cell]), pa.float64(), from_pandas=True),
            "threshold": pa.array(np.array(LEVELS, dtype=object)[np.where(physical, GLOBAL, resolved.level[cell])]
                                  .tolist(), pa.string()),
            "fallback": resolved.fallback_reasons(cell),
        },
        tested=tested,
    )


def _outside(frame: Frame, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Rows whose value is outside its cell's limits.

    A cell's rows come in runs (a series' values of one month), so the extremes of each run
    are compared first and only the few runs that cross a limit are looked at value by value.
    """
    if not frame.rows:
        return np.empty(0, np.int64)
    starts = np.flatnonzero(np.r_[True, frame.cell[1:] != frame.cell[:-1]])
    cells = frame.cell[starts]
    with np.errstate(invalid="ignore"):
        crossing = np.flatnonzero((np.maximum.reduceat(frame.value, starts) > upper[cells])
                                  | (np.minimum.reduceat(frame.value, starts) < lower[cells]))
    stops = np.append(starts[1:], frame.rows)
    rows, run = expand(starts[crossing], stops[crossing] - 1)
    value, cell = frame.value[rows], cells[crossing][run]
    with np.errstate(invalid="ignore"):
        return rows[(value > upper[cell]) | (value < lower[cell])]
