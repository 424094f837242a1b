"""QC thresholds and relations as an administrator edits them: one form, one new rule version.

Rules are versioned by :mod:`opencdms_kernel.qc.rules` (migration 0002): a change is an
INSERT of the scope's next version — the old one stays, with who wrote it (``created_by``, the
audit's writer), when (``created_at``) and why (``reason``); a trigger refuses UPDATE and
DELETE; a rule identical to the one in force adds nothing; ``active = false`` withdraws a rule.
This module reads a form's text into a :class:`~opencdms_kernel.qc.rules.Threshold` or
:class:`~opencdms_kernel.qc.rules.Relation`, stores it with QC's own writer (its checks, in
one place), and names the form's field in every refusal (QC's ``thresholds[0].low`` becomes
``low``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, get_args, get_type_hints

from pydantic import TypeAdapter, ValidationError

from opencdms_kernel.admin.access import Administrator, require_admin
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import ParameterError
from opencdms_kernel.qc.model import THRESHOLD_TESTS, QcParameterError, QcTest, Severity, UnknownQcReferenceError
from opencdms_kernel.qc.rules import (
    OPERATORS,
    PARAMETER_COLUMNS,
    PARAMETERS,
    Relation,
    Threshold,
    add_relations,
    add_thresholds,
    relation_versions,
    threshold_versions,
)
from opencdms_kernel.vocabulary import IsoDuration, wigos_id_problem

THRESHOLD_FIELDS = ("test", "element", "station", "month", "duration_seconds", "severity", "active",
                    *PARAMETER_COLUMNS)
RELATION_FIELDS = ("left", "operator", "right", "right_value", "tolerance", "severity", "active")
# Threshold parameters held as whole numbers (the rest are real numbers).
_WHOLE = {name for name, hint in get_type_hints(Threshold).items() if int in get_args(hint)} & set(PARAMETER_COLUMNS)
_DURATION = TypeAdapter(IsoDuration)


@dataclass(frozen=True)
class SavedRule:
    """What saving a rule did: ``added`` False when it equals the version in force (nothing
    written); ``version`` the scope's newest version after the save (0: none yet); ``rule`` that
    version's row (values, active, created_by, created_at, reason), None when there is none."""

    added: bool
    version: int
    rule: Mapping[str, object] | None


def threshold_parameters(test: QcTest | str) -> tuple[str, ...]:
    """The parameters a threshold of ``test`` has (the form shows these), required ones first."""
    entries = PARAMETERS[QcTest(test)]
    return tuple(name for name, required in entries if required) + tuple(name for name, required in entries
                                                                          if not required)


def threshold_from_form(form: Mapping[str, object]) -> Threshold:
    """The threshold a form describes (text fields; empty means "not given"); ParameterError
    naming the field at fault.  The rule's own checks (required parameters, low <= high…) are
    QC's, made when it is saved."""
    _known(form, THRESHOLD_FIELDS)
    text = _texts(form)
    test_text = text.get("test") or ""
    try:
        test = QcTest(test_text)
    except ValueError:
        test = None
    if test not in THRESHOLD_TESTS:
        raise ParameterError("test", f"{test_text[:40]!r} is not one of "
                             + ", ".join(item.value for item in THRESHOLD_TESTS))
    element = text.get("element")
    if not element:
        raise ParameterError("element", "choose the element the rule is for")
    station = text.get("station") or None
    if station is not None and (problem := wigos_id_problem(station)) is not None:
        raise ParameterError("station", problem)
    values: dict[str, object] = {}
    for name in PARAMETER_COLUMNS:
        values[name] = _number(text.get(name), name, whole=name in _WHOLE)
    return Threshold(
        test=test, element=element, station=station, month=_month(text.get("month")),
        duration_seconds=_duration(text.get("duration_seconds")), severity=_severity(text.get("severity")),
        active=_active(form.get("active", True)), **values,  # type: ignore[arg-type]
    )


def relation_from_form(form: Mapping[str, object]) -> Relation:
    """The relation a form describes: ``left <operator> right`` (an element) or a constant
    ``right_value``, with a tolerance; ParameterError naming the field at fault."""
    _known(form, RELATION_FIELDS)
    text = _texts(form)
    left = text.get("left")
    if not left:
        raise ParameterError("left", "choose the element on the left of the relation")
    operator = text.get("operator") or ""
    if operator not in OPERATORS:
        raise ParameterError("operator", f"{operator[:10]!r} is not one of {', '.join(OPERATORS)}")
    tolerance = _number(text.get("tolerance"), "tolerance", whole=False)
    return Relation(left=left, operator=operator, right=text.get("right") or None,
                    right_value=_number(text.get("right_value"), "right_value", whole=False),
                    tolerance=0.0 if tolerance is None else float(tolerance), severity=_severity(text.get("severity")),
                    active=_active(form.get("active", True)))


def save_threshold(datastore: Datastore, admin: Administrator, form: Mapping[str, object], reason: str) -> SavedRule:
    """Store the form's threshold as the next version of its scope (the old versions stay)."""
    require_admin(admin)
    threshold = threshold_from_form(form)
    try:
        added = add_thresholds(datastore, [threshold], user=admin.user, reason=(reason or "").strip())
    except UnknownQcReferenceError as exc:
        field = "station" if threshold.station in exc.values else "element"
        raise ParameterError(field, f"unknown {field} {exc.values[0]!r}") from exc
    except QcParameterError as exc:
        raise ParameterError(_field(exc.parameter), exc.reason) from exc
    versions = threshold_versions(datastore, threshold.test, threshold.element, threshold.station,
                                  threshold.month, threshold.duration_seconds)
    return SavedRule(bool(added), int(versions[0]["version"]) if versions else 0, versions[0] if versions else None)


def save_relation(datastore: Datastore, admin: Administrator, form: Mapping[str, object], reason: str) -> SavedRule:
    """Store the form's relation as its next version (the old versions stay)."""
    require_admin(admin)
    relation = relation_from_form(form)
    try:
        added = add_relations(datastore, [relation], user=admin.user, reason=(reason or "").strip())
    except UnknownQcReferenceError as exc:
        field = "left" if relation.left in exc.values else "right"
        raise ParameterError(field, f"unknown element {exc.values[0]!r}") from exc
    except QcParameterError as exc:
        raise ParameterError(_field(exc.parameter), exc.reason) from exc
    versions = relation_versions(datastore, relation.left, relation.operator, relation.right, relation.right_value)
    return SavedRule(bool(added), int(versions[0]["version"]) if versions else 0, versions[0] if versions else None)


# --------------------------------------------------------------------------- reading the form


def _field(parameter: str) -> str:
    """QC's parameter name as the form's field: ``thresholds[0].low`` -> ``low``."""
    return parameter.rsplit(".", 1)[-1] if parameter.startswith(("thresholds[", "relations[")) else parameter


def _known(form: Mapping[str, object], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(form) - set(allowed))
    if unknown:
        raise ParameterError(unknown[0], f"not a field of this rule (fields: {', '.join(allowed)})")


def _texts(form: Mapping[str, object]) -> dict[str, str]:
    return {name: str(value).strip() for name, value in form.items() if value is not None and name != "active"}


def _number(text: str | None, field: str, *, whole: bool) -> float | int | None:
    if not text:
        return None
    try:
        value = float(text.replace(",", ".")) if not whole else int(text)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ParameterError(field, f"{text[:40]!r} is not {kind}") from None
    if not math.isfinite(value):
        raise ParameterError(field, f"{text[:40]!r} is not a finite number")
    return value


def _month(text: str | None) -> int | None:
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 12:
        raise ParameterError("month", f"{text[:20]!r} is not a month number 1-12 (empty: every month)")
    return int(text)


def _duration(text: str | None) -> int | None:
    """Seconds, or an ISO 8601 duration (PT1H, P1D): the duration of the values the rule is for."""
    if not text:
        return None
    if text.isdigit():
        return int(text)
    try:
        return int(_DURATION.validate_python(text.upper()).total_seconds())
    except ValidationError as exc:
        raise ParameterError("duration_seconds", f"{text[:40]!r}: seconds or an ISO 8601 duration like PT1H, P1D "
                             f"({exc.errors()[0]['msg']})") from None


def _severity(text: str | None) -> Severity:
    try:
        return Severity(text or Severity.SUSPECT.value)
    except ValueError:
        raise ParameterError("severity", f"{text[:20]!r} is not one of "
                             + ", ".join(item.value for item in Severity)) from None


def _active(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", ""):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ParameterError("active", f"{text[:20]!r} is not yes or no")
