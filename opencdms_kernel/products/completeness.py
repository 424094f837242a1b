"""The completeness rules, applied in one place for every product.

A period (a month of days, a day of hourly slots, a normal's 30 years) has a number of
expected values; each is present or missing.  Two numbers describe its gaps — how many are
missing and the longest run of missing ones — and a rule decides from them:

- :func:`gaps_from_masks`: the gaps of periods whose presence is a bit mask (bit i set: value i
  is there), for periods of up to 63 values: the days of a month, the years of a normal, the
  hours of a day.  Whole-array bit steps, milliseconds for a million months.
- :func:`gaps_from_positions`: the gaps of periods given as the sorted positions present
  (any length: ten-minute slots of a day are 144), for sub-daily values.
- :func:`judge`: :class:`~opencdms_kernel.products.model.CompletenessRule` on those numbers
  (meets the rule, complete, may give a total); :func:`judge_years` does the same for a
  :class:`~opencdms_kernel.products.model.NormalsRule`.  These are the only places where a
  rule's numbers are compared.
- :func:`xclim_missing`: the same rule as xclim's own missing-value check
  (:class:`xclim.core.missing.MissingWMO`, or :class:`~xclim.core.missing.MissingAny` where a
  month must be complete), for the indices, which xclim computes from daily arrays.

Every path is run on the same random gaps by ``tests/test_products_completeness.py`` and must
give the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from opencdms_kernel.products.model import CompletenessRule, NormalsRule, ProductParameterError

if TYPE_CHECKING:
    from xclim.core.missing import MissingBase

MAX_MASK_BITS = 63  # a period of more values is given as positions, not as a mask


@dataclass(frozen=True, eq=False)
class Gaps:
    """Per period: values expected, values missing and the longest run of missing ones."""

    expected: np.ndarray
    missing: np.ndarray
    longest: np.ndarray


@dataclass(frozen=True, eq=False)
class Verdict:
    """Per period: the rule is met (means, extremes), no value is missing, a total may be given."""

    meets_rule: np.ndarray
    complete: np.ndarray
    totals_ok: np.ndarray


def gaps_from_masks(masks: np.ndarray, widths: np.ndarray | int) -> Gaps:
    """The gaps of periods whose present values are the set bits of ``masks``.

    ``widths``: the values each period expects (at most 63), one per mask or one for all.
    Full and empty periods are answered directly; for the others, whole-array steps of
    ``z &= z >> 1`` on the missing bits: a run of k bits leaves a bit after k - 1 steps, so
    the number of steps with any bit left is the longest run.
    """
    masks = np.asarray(masks).astype(np.uint64)
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), masks.shape)
    if widths.size and int(widths.max()) > MAX_MASK_BITS:
        raise ValueError(f"a bit mask holds at most {MAX_MASK_BITS} values, not {int(widths.max())}")
    full = (np.uint64(1) << widths.astype(np.uint64)) - np.uint64(1)
    missing_bits = ~masks & full
    missing = np.bitwise_count(missing_bits).astype(np.int64)
    longest = np.where(missing_bits == full, widths, 0).astype(np.int64)
    partial = np.flatnonzero((missing_bits != 0) & (missing_bits != full))
    runs = missing_bits[partial]
    steps = np.zeros(len(partial), dtype=np.int64)
    while len(runs) and runs.any():
        steps += runs != 0
        runs &= runs >> np.uint64(1)
    longest[partial] = steps
    return Gaps(np.array(widths, dtype=np.int64), missing, longest)


def gaps_from_positions(offsets: np.ndarray, positions: np.ndarray, widths: np.ndarray | int) -> Gaps:
    """The gaps of periods given as the sorted, distinct positions present in each.

    ``positions[offsets[i]:offsets[i + 1]]`` are period i's present positions (0 … width - 1),
    as an Arrow list array's offsets and values hold them.  A run is the distance between two
    positions present, or from the period's start to its first one, or from its last one to
    its end.
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    positions = np.asarray(positions, dtype=np.int64)
    periods = len(offsets) - 1
    widths = np.broadcast_to(np.asarray(widths, dtype=np.int64), (periods,)).copy()
    counts = np.diff(offsets)
    missing = widths - counts
    longest = widths.copy()  # a period without any value: all of it
    has = np.flatnonzero(counts > 0)
    if has.size:
        period_of = np.repeat(np.arange(periods), counts)
        before = np.empty_like(positions)
        before[1:] = positions[:-1]
        first = offsets[:-1][has]
        before[first] = -1  # the period's start, one before position 0
        gap_before = positions - before - 1
        inner = np.zeros(periods, dtype=np.int64)
        np.maximum.at(inner, period_of, gap_before)
        last = positions[offsets[1:][has] - 1]
        trailing = widths[has] - 1 - last
        longest[has] = np.maximum(inner[has], trailing)
    return Gaps(widths, missing, longest)


def gaps_from_presence(present: np.ndarray) -> Gaps:
    """The gaps of one period per row of a boolean array (True: present), any width."""
    present = np.atleast_2d(np.asarray(present, dtype=bool))
    rows, width = present.shape
    row, column = np.nonzero(present)  # row-major: sorted by row, then position
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=rows))])
    return gaps_from_positions(offsets, column, width)


def judge(rule: CompletenessRule, gaps: Gaps) -> Verdict:
    """The rule on every period: means and extremes need no more than ``max_missing`` missing
    values and no more than ``max_consecutive_missing`` in a row; a total (or a count of
    days) needs a complete period when ``totals_require_complete``, else the same as a mean."""
    meets = (gaps.missing <= rule.max_missing) & (gaps.longest <= rule.max_consecutive_missing)
    complete = gaps.missing <= 0
    totals_ok = complete if rule.totals_require_complete else meets
    return Verdict(meets, complete, totals_ok)


def judge_years(rule: NormalsRule, gaps: Gaps) -> np.ndarray:
    """A normal's rule on every period of years: at least ``min_fraction`` of the years have a
    value (rounded up: 24 of 30) and no more than ``max_consecutive_missing`` in a row lack one."""
    present = gaps.expected - gaps.missing
    required = np.ceil(rule.min_fraction * gaps.expected - 1e-9)  # NormalsRule.min_years, vectorised
    return (gaps.expected > 0) & (present >= required) & (gaps.longest <= rule.max_consecutive_missing)


def judge_presence(rule: CompletenessRule, present: Sequence[bool]) -> bool:
    """:func:`judge` on one period given as presence flags (``CompletenessRule.allows``)."""
    return bool(judge(rule, gaps_from_presence(np.array([list(present)], dtype=bool))).meets_rule[0])


def judge_years_presence(rule: NormalsRule, present: Sequence[bool]) -> bool:
    """:func:`judge_years` on one period of years given as presence flags (``NormalsRule.allows``)."""
    flags = list(present)
    if not flags:
        return False
    return bool(judge_years(rule, gaps_from_presence(np.array([flags], dtype=bool)))[0])


def xclim_missing(rule: CompletenessRule, *, strict: bool) -> "MissingBase":
    """The rule as xclim's missing-value check of monthly periods of daily values.

    xclim's :class:`~xclim.core.missing.MissingWMO` masks a month with ``nm`` or more missing
    days or a run of ``nc`` or more: ``nm = max_missing + 1``, ``nc = max_consecutive_missing
    + 1``.  ``strict`` (counts and totals when the rule wants complete months) is
    :class:`~xclim.core.missing.MissingAny`.  Longer periods (years) are masked when any
    month is, as the products' annual values are.
    """
    from xclim.core.missing import MissingAny, MissingWMO  # noqa: PLC0415 - importing xclim takes seconds

    if strict:
        return MissingAny()
    nm, nc = rule.max_missing + 1, rule.max_consecutive_missing + 1
    if nm > 30 or nc > 30:
        raise ProductParameterError(
            "rule", f"xclim's MissingWMO takes at most 29 missing days (in a row); {rule} allows more"
        )
    return MissingWMO(nm=nm, nc=nc)
