"""Data entry: paper forms keyed by clerks, checked as typed, keyed twice where the form says so.

- :mod:`.form`: forms described in YAML (elements, units, decimals, layout, checks, codes); two
  ship in ``keying/forms/`` (``daily_climate``, ``hourly_synoptic``).
- :mod:`.checks`: the checks as a value is typed (type, codes, physical range, the station's
  monthly thresholds, relations such as TMIN <= TMAX), pure functions over a sheet's rules.
- :mod:`.store`: sheets and their keyings held apart, version checks, blind second keying,
  differences, a supervisor's resolutions, the commit as observations (``keying_commit``).

The data-entry app (``apps/data_entry.ipynb``) lays out widgets and calls these; see
docs/data-entry.md.
"""

from opencdms_kernel.keying.checks import (
    CellKey,
    CellKind,
    CellValue,
    CheckedCell,
    Finding,
    Severity,
    SheetRules,
    check_cell,
    check_sheet,
    display_text,
    load_sheet_rules,
    read_cell,
)
from opencdms_kernel.keying.form import (
    CheckName,
    Clock,
    Codes,
    Form,
    FormElement,
    FormError,
    Layout,
    SheetPeriod,
    UnknownFormError,
    load_form,
    shipped_form,
    shipped_forms,
)
from opencdms_kernel.keying.store import (
    SUPERVISOR_ROLES,
    AuditEvent,
    CellInput,
    Difference,
    KeyedCell,
    KeyingAccessError,
    KeyingCheckError,
    KeyingConflictError,
    ResolveResult,
    SaveResult,
    SheetNotReadyError,
    SheetStatus,
    SheetView,
    StoredValue,
    UnknownStationError,
    commit_sheet,
    list_differences,
    open_sheet,
    read_keying,
    resolve_difference,
    save_keying,
    sheet_audit,
    station_choices,
)

__all__ = [
    "AuditEvent", "CellInput", "CellKey", "CellKind", "CellValue", "CheckName", "CheckedCell", "Clock", "Codes",
    "Difference", "Finding", "Form", "FormElement", "FormError", "KeyedCell", "KeyingAccessError",
    "KeyingCheckError", "KeyingConflictError", "Layout", "ResolveResult", "SUPERVISOR_ROLES", "SaveResult",
    "Severity", "SheetNotReadyError", "SheetPeriod", "SheetRules", "SheetStatus", "SheetView", "StoredValue",
    "UnknownFormError", "UnknownStationError", "check_cell", "check_sheet", "commit_sheet", "display_text",
    "list_differences", "load_form", "load_sheet_rules", "open_sheet", "read_cell", "read_keying",
    "resolve_difference", "save_keying", "shipped_form", "shipped_forms", "sheet_audit", "station_choices",
]
