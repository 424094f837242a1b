"""Consistency check: relations between elements of the same station and time.

Rules are the rows of ``qc_relation`` (as Climsoft's inter-element table): left element,
operator, right element or constant, tolerance — e.g. TMIN <= TMAX, TMIN <= TMEAN <= TMAX,
PRCP >= 0.  Two values are related when they share station, time, duration, level and source.
A broken relation flags both values (which one is wrong cannot be told), with the relation
as the flag (``"flag": "TMIN<=TMAX"``) and the other value beside it.  Where several
relations break, the entry names the first (failed-severity relations first, then by id).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from opencdms_kernel.qc.flags import Findings, versions
from opencdms_kernel.qc.frame import Frame
from opencdms_kernel.qc.model import QcTest, Severity
from opencdms_kernel.qc.rules import RelationRule, rule_labels


def broken(operator: str, left: np.ndarray, right: np.ndarray | float, tolerance: float) -> np.ndarray:
    """Where ``left <operator> right`` does not hold, even with the tolerance."""
    with np.errstate(invalid="ignore"):
        if operator == "<=":
            return left > right + tolerance
        if operator == "<":
            return left >= right + tolerance
        if operator == ">=":
            return left < right - tolerance
        if operator == ">":
            return left <= right - tolerance
        if operator == "=":
            return np.abs(left - right) > tolerance
    raise ValueError(f"unknown operator {operator!r}")


def relation_label(relation: RelationRule, codes: dict[int, str]) -> str:
    right = codes[relation.right_element_id] if relation.right_element_id is not None else f"{relation.right_value:g}"
    return f"{codes[relation.left_element_id]}{relation.operator}{right}"


def check_consistency(frame: Frame, relations: tuple[RelationRule, ...]) -> Findings:
    """Values of broken relations (both sides of an element-element relation)."""
    position = {element.id: index for index, element in enumerate(frame.elements)}
    codes = {element.id: element.code for element in frame.elements}
    partner = frame.partner_ids
    compared = np.zeros(frame.rows, bool)
    found_rows: list[np.ndarray] = []
    found_relation: list[np.ndarray] = []
    found_other: list[np.ndarray] = []
    usable = [r for r in relations if r.left_element_id in position
              and (r.right_element_id is None or r.right_element_id in position)]
    for number, relation in enumerate(usable):  # a handful of relations, each vectorised
        left_series = np.flatnonzero(frame.series_element == position[relation.left_element_id])
        if relation.right_element_id is None:
            rows = frame.element_rows(position[relation.left_element_id])
            compared[rows] = True
            bad = np.flatnonzero(broken(relation.operator, frame.value[rows], relation.right_value,
                                        relation.tolerance)) + rows.start
            found_rows.append(bad)
            found_other.append(np.full(bad.size, np.nan))
            found_relation.append(np.full(bad.size, number))
            continue
        right_series = np.flatnonzero(frame.series_element == position[relation.right_element_id])
        left_match, right_match = _match(frame, partner, left_series, right_series)
        compared[left_match] = True
        compared[right_match] = True
        left_value, right_value = frame.value[left_match], frame.value[right_match]
        bad = broken(relation.operator, left_value, right_value, relation.tolerance)
        found_rows += [left_match[bad], right_match[bad]]
        found_other += [right_value[bad], left_value[bad]]
        found_relation += [np.full(int(bad.sum()), number)] * 2
    tested = int((compared & frame.in_scope).sum())
    if not found_rows:
        return Findings.empty(QcTest.CONSISTENCY, tested=tested)
    rows = np.concatenate(found_rows)
    relation_index = np.concatenate(found_relation).astype(np.int64)
    other = np.concatenate(found_other)
    keep = frame.in_scope[rows]
    rows, relation_index, other = rows[keep], relation_index[keep], other[keep]
    # First relation per row (relations come failed-first, then by id).
    order = np.lexsort((relation_index, rows))
    rows, relation_index, other = rows[order], relation_index[order], other[order]
    first = np.r_[True, rows[1:] != rows[:-1]] if rows.size else np.empty(0, bool)
    rows, relation_index, other = rows[first], relation_index[first], other[first]
    if not rows.size:
        return Findings.empty(QcTest.CONSISTENCY, tested=tested)
    labels = np.array([relation_label(r, codes) for r in usable], dtype=object)
    ids = np.array([r.id for r in usable], np.int64)
    version = np.array([r.version for r in usable], np.int32)
    failed = np.array([r.severity is Severity.FAILED for r in usable], bool)
    return Findings(
        test=QcTest.CONSISTENCY,
        rows=rows.astype(np.int64),
        failed=failed[relation_index],
        flag=pa.array(labels[relation_index].tolist(), pa.string()),
        rule=rule_labels("qc_relation", ids[relation_index]),
        version=versions(version[relation_index]),
        details={"other": pa.array(other, pa.float64(), from_pandas=True)},
        tested=tested,
    )


def _match(frame: Frame, partner: np.ndarray, left_series: np.ndarray, right_series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of left and right series with the same partner id and time, pairwise.

    Each side is one element, whose rows are contiguous and sorted by partner id (series
    are sorted by station, duration, level and source, and so are partner ids), then time.
    So (partner id, time) packed into one integer is sorted too, and one binary search of the
    left keys among the right keys matches them all; when the packing would overflow, the
    series are matched one pair at a time."""
    if not left_series.size or not right_series.size:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    left = slice(int(frame.bounds[left_series[0]]), int(frame.bounds[left_series[-1] + 1]))
    right = slice(int(frame.bounds[right_series[0]]), int(frame.bounds[right_series[-1] + 1]))
    left_time, right_time = frame.time[left], frame.time[right]  # views
    if not left_time.size or not right_time.size:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    start = min(int(left_time.min()), int(right_time.min()))
    span = max(int(left_time.max()), int(right_time.max())) - start + 1
    if (int(partner.max()) + 1) * span >= 1 << 62:
        return _match_by_series(frame, partner, left_series, right_series)
    lengths = np.diff(frame.bounds)
    left_key = np.repeat(partner[left_series] * span - start, lengths[left_series])
    left_key += left_time
    right_key = np.repeat(partner[right_series] * span - start, lengths[right_series])
    right_key += right_time
    position = np.searchsorted(right_key, left_key)
    np.minimum(position, right_key.size - 1, out=position)
    hit = np.flatnonzero(right_key[position] == left_key)
    return hit + left.start, position[hit] + right.start


def _match_by_series(
    frame: Frame, partner: np.ndarray, left_series: np.ndarray, right_series: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`_match`, one pair of series at a time (times too far apart to pack)."""
    right_by_partner = dict(zip(partner[right_series].tolist(), right_series.tolist()))
    lefts: list[np.ndarray] = []
    rights: list[np.ndarray] = []
    for series in left_series.tolist():  # one iteration per series (station), not per value
        other = right_by_partner.get(int(partner[series]))
        if other is None:
            continue
        left_start, left_stop = frame.bounds[series], frame.bounds[series + 1]
        right_start, right_stop = frame.bounds[other], frame.bounds[other + 1]
        left_time = frame.time[left_start:left_stop]
        right_time = frame.time[right_start:right_stop]
        if not right_time.size:
            continue
        position = np.minimum(np.searchsorted(right_time, left_time), right_time.size - 1)
        hit = right_time[position] == left_time
        lefts.append(left_start + np.flatnonzero(hit))
        rights.append(right_start + position[hit])
    if not lefts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(lefts).astype(np.int64), np.concatenate(rights).astype(np.int64)
