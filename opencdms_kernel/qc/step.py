"""Step check: the largest allowed change between consecutive values of a series.

Rules (``qc_threshold`` test ``step``) are per element and duration, or per station and
calendar month where derived from the station's own record (:mod:`.thresholds`: a change
that is ordinary weather at a mid-latitude airport is a gross error on the equator):
``max_change``, and ``max_gap_seconds`` (values further apart are not consecutive).  A value that jumps away by
more than the limit and comes back by more than the limit is a ``spike`` (only that value is
flagged, not its neighbours); a jump that does not come back flags the value after it
(``step``), unless the jump is the way back from a spike — or from a block: a step that
returns to about the level before an opposite step at most :data:`MAX_BLOCK_VALUES` values
earlier (a month keyed in Fahrenheit, a sensor off its calibration for a while) ends the
block, and the value it lands on is the first good one again.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opencdms_kernel.qc.flags import Findings
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import Resolved
from opencdms_kernel.qc.series import max_gap_us

# The longest block (values) a step and the step back may enclose: a month of daily values.
MAX_BLOCK_VALUES = 31


def check_step(frame: Frame, resolved: Resolved) -> Findings:
    """Spikes and steps larger than the rule's ``max_change``."""
    if not resolved.any:
        return Findings.empty(QcTest.STEP)
    limit_per_cell = resolved.params["max_change"]  # NaN: no rule
    tested = frame.tested(~np.isnan(limit_per_cell))
    linked = frame.consecutive(max_gap_us(frame, resolved))
    size = np.zeros(frame.rows)  # size of the change into each value (only read where linked)
    np.subtract(frame.value[1:], frame.value[:-1], out=size[1:])
    np.abs(size, out=size)
    jumps = np.flatnonzero(linked & frame.compare(size, np.greater, limit_per_cell))  # few
    change = frame.value[jumps] - frame.value[jumps - 1]  # a jump always has a previous value
    # A spike: a jump into a value and a jump out of it, in opposite directions.
    pair = (jumps[1:] == jumps[:-1] + 1) & (change[1:] * change[:-1] < 0)
    spikes = jumps[:-1][pair]
    steps = np.setdiff1d(jumps, np.concatenate([spikes, spikes + 1]))
    steps = steps[~_returns(frame, steps, limit_per_cell)]
    rows = np.union1d(spikes, steps).astype(np.int64)
    rows = rows[frame.in_scope[rows]]
    if not rows.size:
        return Findings.empty(QcTest.STEP, tested=tested)
    return Findings.of_thresholds(
        QcTest.STEP, rows, frame, resolved,
        flag=pa.array(np.where(np.isin(rows, spikes), "spike", "step")),
        details={"change": pa.array(frame.value[rows] - frame.value[rows - 1]),
                 "limit": pa.array(limit_per_cell[frame.cell[rows]])},
        tested=tested,
    )


def _returns(frame: Frame, steps: np.ndarray, limit_per_cell: np.ndarray) -> np.ndarray:
    """Which ``steps`` (rows, ascending) go back to about the level before the step just
    before them: in the same series, at most :data:`MAX_BLOCK_VALUES` values later, the
    other way, the two changes adding up to no more than the limit."""
    back = np.zeros(steps.size, bool)
    if steps.size < 2:
        return back
    change = frame.value[steps] - frame.value[steps - 1]
    earlier, later = steps[:-1], steps[1:]
    with np.errstate(invalid="ignore"):
        back[1:] = ((frame.series_of(earlier) == frame.series_of(later))
                    & (later - earlier <= MAX_BLOCK_VALUES)
                    & (change[:-1] * change[1:] < 0)
                    & (np.abs(change[:-1] + change[1:]) <= limit_per_cell[frame.cell[later]]))
    return back
