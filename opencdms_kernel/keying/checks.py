"""Checks of values as a clerk types them: pure functions over one sheet's rules.

What a cell may hold: a number (a decimal comma is read as a point), a code (missing, trace,
accumulated: :class:`~opencdms_kernel.keying.form.Codes`), or nothing (not keyed).  A typed
value is checked against

- the element's **physical range** (``element.valid_min/valid_max``, as the datastore holds it):
  outside, it cannot be stored (the observation trigger refuses it), so it is an **error**;
- the station's **monthly range threshold** from the QC tables, resolved station -> network ->
  global by QC's own :func:`opencdms_kernel.qc.rules.resolve` (:func:`load_sheet_rules`): outside,
  a **warning**;
- the **relations** between the row's elements (``qc_relation``, e.g. TMIN <= TMAX, judged by
  QC's :func:`opencdms_kernel.qc.consistency.broken`): a broken one warns on both cells.

A warning may be overridden with a reason (kept with the value); an error must be corrected.
The rules are read once per sheet (:func:`load_sheet_rules`); :func:`check_sheet` then needs no
database, so an app calls it on every change of a cell.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import sqlalchemy as sa

from opencdms_kernel.errors import ParameterError
from opencdms_kernel.keying.form import CheckName, Codes, Form, FormElement, SheetPeriod
from opencdms_kernel.vocabulary import ElementInfo, elements

if TYPE_CHECKING:
    from opencdms_kernel.ingest.units import LinearConversion

# QC and ingest are imported when first used, not with this module: importing any of their
# modules loads the whole package (DuckDB, pyarrow, pandas), seconds that the data-entry page
# would otherwise spend before it first shows.

CellKey = tuple[int, str]  # (row, element code)

# A number as people write it on a form: sign, digits, one decimal point or comma.
_NUMBER = re.compile(r"^([+-]?)(\d*)(?:[.,](\d*))?$")


@lru_cache(maxsize=256)
def conversion(from_units: str, to_units: str) -> "LinearConversion":
    """Ingest's unit conversion (pint), one per pair of units."""
    from opencdms_kernel.ingest.units import conversion as convert

    return convert(from_units, to_units)


def cell_key_text(key: CellKey) -> str:
    """``(3, "TMAX")`` as stored: ``"3|TMAX"``."""
    return f"{key[0]}|{key[1]}"


def parse_cell_key(text: str) -> CellKey:
    """``"3|TMAX"`` -> ``(3, "TMAX")``."""
    row, _, code = text.partition("|")
    return int(row), code


class Severity(StrEnum):
    """An error must be corrected; a warning may be kept with a reason."""

    WARNING = "warning"
    ERROR = "error"


class CellKind(StrEnum):
    """What a keyed cell says."""

    VALUE = "value"
    MISSING = "missing"  # stored as a missing value (NULL)
    TRACE = "trace"  # stored as 0 with the flag trace (as ingest stores a trace code)
    ACCUMULATED = "accumulated"  # no reading: the amount is in the next value (stored NULL, flag accumulated)


@dataclass(frozen=True)
class Finding:
    """One check's complaint about one cell."""

    check: str  # type, code, range, threshold, relation
    severity: Severity
    message: str


@dataclass(frozen=True)
class CellValue:
    """A cell read: what two keyings are compared by (``canonical``: the number in the form's
    units and decimals, or the code) and what is stored (``value`` in the element's units)."""

    kind: CellKind
    canonical: str
    value: float | None
    display: float | None = None  # the number as typed, in the form's units

    @property
    def flag(self) -> str | None:
        """The flag stored with the value (``ingest`` entry of result_quality), if any."""
        return self.kind.value if self.kind in (CellKind.TRACE, CellKind.ACCUMULATED) else None


@dataclass(frozen=True)
class CheckedCell:
    """A typed cell with what the checks found; ``days``: for a value read after accumulated
    days, how many days it covers."""

    key: CellKey
    text: str
    value: CellValue | None
    findings: tuple[Finding, ...] = ()
    days: int | None = None

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.ERROR)

    @property
    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.WARNING)


@dataclass(frozen=True)
class ElementLimits:
    """One element's limits on one sheet, in the element's units."""

    code: str
    units: str
    valid_min: float | None
    valid_max: float | None
    low: float | None = None  # the range threshold in force for the sheet's station and month
    high: float | None = None
    level: str | None = None  # station, network or global
    rule: str | None = None  # qc_threshold:<id> v<version>


@dataclass(frozen=True)
class RelationCheck:
    """A relation in force between two of the form's elements, or one and a constant."""

    left: str
    operator: str
    right: str | None
    right_value: float | None
    tolerance: float
    label: str  # e.g. TMIN<=TMAX
    rule: str  # qc_relation:<id> v<version>


@dataclass(frozen=True)
class SheetRules:
    """Everything the checks need for one sheet (read by :func:`load_sheet_rules`)."""

    limits: Mapping[str, ElementLimits]
    relations: tuple[RelationCheck, ...] = ()
    checks: frozenset[CheckName] = field(default_factory=lambda: frozenset(CheckName))


# --------------------------------------------------------------------------- reading a cell


def _to_display(limit: float, column: FormElement) -> float:
    """A limit in the element's units, in the form's units (for messages)."""
    change = conversion(column.display_units, elements()[column.code].units)
    return (limit - change.offset) / change.scale


def _figure(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def read_cell(text: str, column: FormElement, codes: Codes) -> tuple[CellValue | None, Finding | None]:
    """What ``text`` says in ``column``: (value, None), (None, None) for an empty cell, or
    (None, finding) when it cannot be read."""
    cleaned = text.strip()
    if not cleaned:
        return None, None
    upper = cleaned.upper()
    if upper in codes.missing:
        return CellValue(CellKind.MISSING, codes.missing[0], None), None
    if upper in codes.trace:
        if not column.trace:
            return None, Finding("code", Severity.ERROR, f"{cleaned!r} (trace) is not used for {column.heading}")
        return CellValue(CellKind.TRACE, codes.trace[0], 0.0), None
    if upper in codes.accumulated:
        if not column.accumulated:
            return None, Finding("code", Severity.ERROR,
                                 f"{cleaned!r} (accumulated) is not used for {column.heading}")
        return CellValue(CellKind.ACCUMULATED, codes.accumulated[0], None), None
    match = _NUMBER.fullmatch(cleaned)
    if match is None or not (match.group(2) or match.group(3)):
        known = ", ".join((*codes.missing, *(codes.trace if column.trace else ()),
                           *(codes.accumulated if column.accumulated else ())))
        return None, Finding("type", Severity.ERROR, f"{cleaned!r} is not a number (or a code: {known})")
    sign, whole, fraction = match.group(1), match.group(2) or "0", match.group(3) or ""
    display = float(f"{sign}{whole}.{fraction or '0'}")
    decimals = max(column.decimals, len(fraction))
    change = conversion(column.display_units, elements()[column.code].units)
    stored = display if change.is_identity else round(display * change.scale + change.offset, 6)
    canonical = _figure(display, decimals)
    if canonical.startswith("-") and float(canonical) == 0:
        canonical = canonical[1:]  # -0.0 and 0.0 are one reading
    return CellValue(CellKind.VALUE, canonical, stored, display), None


# --------------------------------------------------------------------------- the checks


def _range_findings(value: CellValue, column: FormElement, limits: ElementLimits,
                    checks: frozenset[CheckName]) -> list[Finding]:
    if value.value is None or value.kind is not CellKind.VALUE:
        return []
    units = column.display_units
    found: list[Finding] = []
    typed = value.canonical
    if CheckName.RANGE in checks:
        if limits.valid_min is not None and value.value < limits.valid_min:
            return [Finding("range", Severity.ERROR,
                            f"{typed} {units} is below the physical limit of {column.code} "
                            f"({_to_display(limits.valid_min, column):g} {units}): it cannot be stored")]
        if limits.valid_max is not None and value.value > limits.valid_max:
            return [Finding("range", Severity.ERROR,
                            f"{typed} {units} is above the physical limit of {column.code} "
                            f"({_to_display(limits.valid_max, column):g} {units}): it cannot be stored")]
    if CheckName.THRESHOLDS in checks:
        where = f"the {limits.level} threshold for this month ({limits.rule})"
        if limits.low is not None and value.value < limits.low:
            found.append(Finding("threshold", Severity.WARNING,
                                 f"{typed} {units} is below {where}: {_to_display(limits.low, column):.{column.decimals}f}"))
        elif limits.high is not None and value.value > limits.high:
            found.append(Finding("threshold", Severity.WARNING,
                                 f"{typed} {units} is above {where}: {_to_display(limits.high, column):.{column.decimals}f}"))
    if value.display is not None and len(typed.partition(".")[2]) > column.decimals:
        found.append(Finding("type", Severity.WARNING,
                             f"{typed} has more decimals than the form ({column.decimals})"))
    return found


def check_cell(form: Form, rules: SheetRules, key: CellKey, text: str) -> CheckedCell:
    """One cell on its own: type, codes, physical range, the station's threshold."""
    column = form.element(key[1])
    value, problem = read_cell(text, column, form.codes)
    if problem is not None:
        return CheckedCell(key, text, None, (problem,))
    if value is None:
        return CheckedCell(key, text, None)
    limits = rules.limits.get(key[1])
    findings = _range_findings(value, column, limits, rules.checks) if limits is not None else []
    return CheckedCell(key, text, value, tuple(findings))


def _relation_findings(form: Form, rules: SheetRules, row: int,
                       values: Mapping[str, CellValue]) -> dict[str, list[Finding]]:
    """Broken relations among one row's values, on each cell concerned."""
    found: dict[str, list[Finding]] = {}
    if CheckName.RELATIONS not in rules.checks or not rules.relations:
        return found
    from opencdms_kernel.qc.consistency import broken  # QC's judgement of a relation
    numbers = {code: v.value for code, v in values.items()
               if v.value is not None and v.kind in (CellKind.VALUE, CellKind.TRACE)}
    for relation in rules.relations:
        if relation.left not in numbers or (relation.right is not None and relation.right not in numbers):
            continue
        right = numbers[relation.right] if relation.right is not None else relation.right_value
        left_value = np.array([numbers[relation.left]])
        if not broken(relation.operator, left_value, right, relation.tolerance)[0]:
            continue
        left_text = f"{relation.left} {values[relation.left].canonical}"
        right_text = (f"{relation.right} {values[relation.right].canonical}" if relation.right is not None
                      else f"{relation.right_value:g}")
        message = f"{left_text} and {right_text} break {relation.label} ({relation.rule})"
        for code in (relation.left, relation.right):
            if code is not None:
                found.setdefault(code, []).append(Finding("relation", Severity.WARNING, message))
    return found


def check_sheet(form: Form, rules: SheetRules, period: SheetPeriod,
                texts: Mapping[CellKey, str]) -> dict[CellKey, CheckedCell]:
    """Every non-empty cell of a sheet, checked on its own and with its row (relations) and
    column (accumulated days).  Cells outside the sheet raise :class:`ParameterError` naming them."""
    rows, codes = set(period.rows), set(form.codes_of)
    checked: dict[CellKey, CheckedCell] = {}
    for key, text in texts.items():
        if key[0] not in rows or key[1] not in codes:
            raise ParameterError("cells", f"row {key[0]}, element {key[1]} is not on a {form.name} sheet "
                                          f"for {period.label}")
        if text is not None and text.strip():
            checked[key] = check_cell(form, rules, key, text)
    by_row: dict[int, dict[str, CellValue]] = {}
    for (row, code), cell in checked.items():
        if cell.value is not None:
            by_row.setdefault(row, {})[code] = cell.value
    for row, values in by_row.items():
        for code, extra in _relation_findings(form, rules, row, values).items():
            cell = checked[(row, code)]
            checked[(row, code)] = CheckedCell(cell.key, cell.text, cell.value, cell.findings + tuple(extra), cell.days)
    for column in form.elements:
        if column.accumulated:
            _accumulated_days(column.code, period, checked)
    return dict(sorted(checked.items(), key=lambda item: (item[0][0], form.codes_of.index(item[0][1]))))


def _accumulated_days(code: str, period: SheetPeriod, checked: dict[CellKey, CheckedCell]) -> None:
    """The value read after a run of accumulated days covers them too: it gets ``days``."""
    run = 0
    for row in period.rows:
        cell = checked.get((row, code))
        kind = cell.value.kind if cell is not None and cell.value is not None else None
        if kind is CellKind.ACCUMULATED:
            run += 1
            continue
        if run and cell is not None and kind in (CellKind.VALUE, CellKind.TRACE):
            checked[(row, code)] = CheckedCell(cell.key, cell.text, cell.value, cell.findings, run + 1)
        elif run and cell is not None and kind is CellKind.MISSING:
            checked[(row, code)] = CheckedCell(cell.key, cell.text, cell.value, cell.findings + (Finding(
                "code", Severity.WARNING,
                f"the {run} accumulated day(s) before it end in a missing value: their amount is lost"),), None)
        elif run and cell is None:
            pass  # not keyed yet: the run continues to whatever is keyed next
        if cell is not None:
            run = 0


# --------------------------------------------------------------------------- the sheet's rules


def load_sheet_rules(connection: sa.Connection, form: Form, station_id: int, period: SheetPeriod) -> SheetRules:
    """The limits and relations in force for one sheet: each element's physical range as the
    datastore holds it, the range threshold QC would apply to this station, element, duration
    and month (QC's own resolution: station, then network, then global rules), and the relations
    between the form's elements.  Reads only reference tables (a clerk's role may)."""
    from opencdms_kernel.qc.consistency import relation_label
    from opencdms_kernel.qc.frame import Frame
    from opencdms_kernel.qc.model import QcTest
    from opencdms_kernel.qc.rules import LEVELS, load_rules, resolve

    codes = form.codes_of
    rows = connection.execute(sa.text(
        "SELECT id, code, units, valid_min, valid_max FROM element WHERE code = ANY (:codes)"),
        {"codes": list(codes)}).all()
    infos = {row.code: ElementInfo(row.id, row.code, row.valid_min, row.valid_max, units=row.units) for row in rows}
    ordered = tuple(infos[code] for code in codes if code in infos)
    rule_set = load_rules(connection)
    count = len(ordered)
    # A frame of series without values: one series per element of the sheet, so that QC's
    # resolution picks the threshold each would be judged by.
    frame = Frame(
        elements=ordered,
        series_element=np.arange(count, dtype=np.int16),
        series_station=np.full(count, station_id, np.int32),
        series_duration=np.full(count, int(form.duration.total_seconds()), np.int32),
        series_level=np.full(count, form.level, np.float32),
        series_source=np.zeros(count, np.int16),
        bounds=np.zeros(count + 1, np.int64),
        time=np.empty(0, np.int64), value=np.empty(0, np.float64), version=np.empty(0, np.int32),
        candidate=np.empty(0, bool), in_scope=np.empty(0, bool), month=np.empty(0, np.int8),
        cell=np.empty(0, np.int32),
    )
    resolved = resolve(rule_set, QcTest.RANGE, frame)
    limits: dict[str, ElementLimits] = {}
    for series, info in enumerate(ordered):
        cell = series * 12 + period.month.month - 1
        rule_id = int(resolved.rule_id[cell])
        low, high = (float(resolved.params[name][cell]) for name in ("low", "high"))
        limits[info.code] = ElementLimits(
            code=info.code, units=info.units or elements()[info.code].units,
            valid_min=info.valid_min, valid_max=info.valid_max,
            low=None if math.isnan(low) else low, high=None if math.isnan(high) else high,
            level=LEVELS[int(resolved.level[cell])] if rule_id else None,
            rule=f"qc_threshold:{rule_id} v{int(resolved.version[cell])}" if rule_id else None,
        )
    by_id = {info.id: info.code for info in ordered}
    relations = tuple(
        RelationCheck(left=by_id[r.left_element_id], operator=r.operator,
                      right=by_id.get(r.right_element_id) if r.right_element_id is not None else None,
                      right_value=r.right_value, tolerance=r.tolerance, label=relation_label(r, by_id),
                      rule=f"qc_relation:{r.id} v{r.version}")
        for r in rule_set.relations
        if r.left_element_id in by_id and (r.right_element_id is None or r.right_element_id in by_id)
    )
    return SheetRules(limits=limits, relations=relations, checks=frozenset(form.checks))


def display_text(column: FormElement, codes: Codes, value: float | None, flag: str | None) -> str:
    """A stored value as the form shows it: the number in the form's units and decimals, or the
    code (``T`` for a trace, ``A`` for an accumulated day, ``M`` for a missing value)."""
    if flag == CellKind.TRACE.value:
        return codes.trace[0]
    if value is None:
        return codes.accumulated[0] if flag == CellKind.ACCUMULATED.value else codes.missing[0]
    shown = value if column.display_units == elements()[column.code].units else _to_display(value, column)
    text = _figure(shown, column.decimals)
    return text[1:] if text.startswith("-") and float(text) == 0 else text
