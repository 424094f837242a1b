"""Paper forms described in YAML: which elements, in which units and decimals, laid out how.

A form is one file, ``<name>.yml`` (the shipped ones are in ``keying/forms/``)::

    title: Daily climate record
    layout: days_of_month        # rows: the days of a month (period 2020-07); or hours_of_day
    clock: station               # the rows are the station's local days (or UTC)
    duration: P1D                # what one value covers (ISO 8601)
    double_keying: true          # a second clerk keys the sheet blind before values are stored
    checks: [range, thresholds, relations]
    codes: {missing: [M], trace: [T], accumulated: [A]}
    elements:
      - {code: TMAX, label: Max, decimals: 1}
      - {code: PRCP, label: Rain, units: mm, decimals: 1, trace: true, accumulated: true}

The model is strict (unknown fields refused) and every error names the file and the field
(:class:`FormError`).  A *sheet* is one form for one station and one period; its rows and the
time of each row come from :meth:`Form.period`.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opencdms_kernel.errors import NotFoundError, OpenCDMSError, ParameterError
from opencdms_kernel.vocabulary import ElementCode, IsoDuration, Month, elements

FORM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_CODE = re.compile(r"^[A-Za-z]{1,3}$")


class FormError(OpenCDMSError):
    """A form file is invalid; names the file and the field."""

    def __init__(self, form_file: str, field: str, reason: str) -> None:
        self.form_file = form_file
        self.field = field
        self.reason = reason
        super().__init__(f"{form_file}: field '{field}': {reason}")


class UnknownFormError(NotFoundError):
    """No form of that name ships with the system."""


class Layout(StrEnum):
    """What the rows of a sheet are."""

    DAYS_OF_MONTH = "days_of_month"  # the days of one month (period "2020-07")
    HOURS_OF_DAY = "hours_of_day"  # the hours of one day (period "2020-07-15")


class Clock(StrEnum):
    """Whose days and hours the rows are."""

    STATION = "station"  # the station's local days/hours (its IANA time zone)
    UTC = "UTC"  # UTC days/hours (synoptic observations)


class CheckName(StrEnum):
    """The checks a form applies as values are typed (the type check always applies)."""

    RANGE = "range"  # the element's physical range: a value outside cannot be stored (error)
    THRESHOLDS = "thresholds"  # the station's monthly range threshold, station -> network (warning)
    RELATIONS = "relations"  # the QC relations between the row's elements, e.g. TMIN <= TMAX (warning)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)


class Codes(_Frozen):
    """The letters a clerk types instead of a number (case does not matter)."""

    missing: tuple[str, ...] = Field(default=("M",), description="not observed, or unreadable on the form")
    trace: tuple[str, ...] = Field(default=("T",), description="a trace: stored as 0 with the flag trace")
    accumulated: tuple[str, ...] = Field(
        default=("A",), description="no reading this day: the amount is in the next value (accumulated)")

    @field_validator("missing", "trace", "accumulated")
    @classmethod
    def _letters(cls, codes: tuple[str, ...]) -> tuple[str, ...]:
        if not codes:
            raise ValueError("give at least one code")
        for code in codes:
            if not _CODE.fullmatch(code):
                raise ValueError(f"{code!r}: a code is 1 to 3 letters (numbers are values)")
        return tuple(code.upper() for code in codes)

    @model_validator(mode="after")
    def _distinct(self) -> "Codes":
        seen: dict[str, str] = {}
        for kind in ("missing", "trace", "accumulated"):
            for code in getattr(self, kind):
                if code in seen:
                    raise ValueError(f"code {code!r} means both {seen[code]} and {kind}")
                seen[code] = kind
        return self


class FormElement(_Frozen):
    """One column of the form."""

    code: ElementCode
    label: str | None = Field(default=None, max_length=24, description="the column's heading (default: the code)")
    units: str | None = Field(default=None, description="units the form is written in (default: the element's)")
    decimals: int = Field(default=1, ge=0, le=4, description="decimals the form is written with")
    trace: bool = Field(default=False, description="the trace code is allowed")
    accumulated: bool = Field(default=False, description="the accumulated code is allowed")

    @model_validator(mode="after")
    def _convertible_units(self) -> "FormElement":
        if self.units is not None:
            from opencdms_kernel.keying.checks import conversion  # ingest's units (pint), loaded when needed

            try:
                conversion(self.units, elements()[self.code].units)
            except ValueError as exc:
                raise ValueError(f"units {self.units!r} of {self.code}: {exc}") from None
        return self

    @property
    def heading(self) -> str:
        return self.label or self.code

    @property
    def display_units(self) -> str:
        return self.units or elements()[self.code].units


class Form(_Frozen):
    """A paper form: its layout, elements, checks and codes (see the module docstring)."""

    name: str = Field(pattern=FORM_NAME.pattern, description="the file name without .yml")
    title: str = Field(min_length=1, max_length=120)
    description: str = ""
    layout: Layout
    hours: tuple[int, ...] | None = Field(default=None, description="hours_of_day: the hours on the form (0-23)")
    clock: Clock = Clock.STATION
    duration: IsoDuration
    level: float = 0.0
    double_keying: bool = True
    checks: tuple[CheckName, ...] = tuple(CheckName)
    codes: Codes = Codes()
    elements: tuple[FormElement, ...] = Field(min_length=1, max_length=24)

    @field_validator("elements")
    @classmethod
    def _distinct_elements(cls, value: tuple[FormElement, ...]) -> tuple[FormElement, ...]:
        codes = [element.code for element in value]
        repeated = sorted({code for code in codes if codes.count(code) > 1})
        if repeated:
            raise ValueError(f"element {repeated[0]} is on the form twice")
        return value

    @field_validator("hours")
    @classmethod
    def _hours(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if not value or any(not 0 <= hour <= 23 for hour in value) or list(value) != sorted(set(value)):
            raise ValueError("hours are distinct whole hours 0-23 in increasing order")
        return value

    @model_validator(mode="after")
    def _layout_fields(self) -> "Form":
        if self.layout is Layout.DAYS_OF_MONTH and self.hours is not None:
            raise ValueError("hours are for the hours_of_day layout")
        return self

    def element(self, code: str) -> FormElement:
        """The form's column of element ``code``."""
        for element in self.elements:
            if element.code == code:
                return element
        raise ParameterError("element", f"{code!r} is not on form {self.name}")

    @property
    def codes_of(self) -> tuple[str, ...]:
        """The element codes, in the form's column order."""
        return tuple(element.code for element in self.elements)

    @property
    def period_example(self) -> str:
        return "2020-07" if self.layout is Layout.DAYS_OF_MONTH else "2020-07-15"

    def period(self, text: str) -> "SheetPeriod":
        """The period a sheet of this form covers: a month (``2020-07``) or a day (``2020-07-15``);
        :class:`ParameterError` naming ``period`` otherwise."""
        if self.layout is Layout.DAYS_OF_MONTH:
            month = Month.parse(text, "period")
            return SheetPeriod(label=month.label, start=datetime(month.year, month.month, 1),
                               rows=tuple(range(1, month.days + 1)), step=timedelta(days=1), origin=1,
                               month=month, layout=self.layout)
        cleaned = text.strip() if isinstance(text, str) else text
        try:
            day = date.fromisoformat(cleaned) if isinstance(cleaned, str) and len(cleaned) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise ParameterError("period", f"{text!r} is not a day like 2020-07-15")
        month = Month(day.year, day.month)  # checks the year's bounds
        return SheetPeriod(label=day.isoformat(), start=datetime(day.year, day.month, day.day),
                           rows=self.hours or tuple(range(24)), step=timedelta(hours=1), origin=0,
                           month=month, layout=self.layout)


@dataclass(frozen=True)
class SheetPeriod:
    """The rows of one sheet: row ``r`` starts at ``start + (r - origin) * step`` on the sheet's clock."""

    label: str
    start: datetime  # naive: on the sheet's clock (station-local or UTC)
    rows: tuple[int, ...]
    step: timedelta
    origin: int
    month: Month  # the calendar month (whose thresholds apply)
    layout: Layout

    def row_label(self, row: int) -> str:
        """``"3"`` (day 3) or ``"06:00"``."""
        return str(row) if self.layout is Layout.DAYS_OF_MONTH else f"{row:02d}:00"

    def cell_label(self, row: int, code: str) -> str:
        """How people name a cell: ``2020-07-03 TMAX`` or ``2020-07-15 06:00 PRES``."""
        if self.layout is Layout.DAYS_OF_MONTH:
            return f"{self.label}-{row:02d} {code}"
        return f"{self.label} {row:02d}:00 {code}"

    @property
    def day_names(self) -> tuple[str, ...]:
        """Weekday initials of the rows of a month (the paper form shows them), else empty."""
        if self.layout is not Layout.DAYS_OF_MONTH:
            return ()
        return tuple(calendar.day_abbr[date(self.month.year, self.month.month, row).weekday()][:2]
                     for row in self.rows)


def load_form(path: Path) -> Form:
    """Read and validate one form file; errors name the file and the field at fault."""
    name = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FormError(name, "-", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise FormError(name, "-", f"not valid YAML: {exc}") from exc
    return form_from_document(document, path.stem, name)


def form_from_document(document: object, form_name: str, where: str) -> Form:
    """A form from its parsed YAML (``where`` names it in errors); its name is the file's stem."""
    if not isinstance(document, dict):
        raise FormError(where, "-", "expected a mapping of fields (key: value) at the top")
    if "name" in document and document["name"] != form_name:
        raise FormError(where, "name", f"the form's name is its file name ({form_name!r})")
    if not FORM_NAME.fullmatch(form_name):
        raise FormError(where, "name", f"{form_name!r}: a form's file name is lower-case letters, digits and _")
    try:
        return Form(**{**document, "name": form_name})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "-"
        message = first["msg"].removeprefix("Value error, ")
        raise FormError(where, field, message) from exc


@lru_cache(maxsize=1)
def shipped_forms() -> dict[str, Form]:
    """The forms that ship with the system (``keying/forms/*.yml``), by name."""
    folder = resources.files("opencdms_kernel.keying").joinpath("forms")
    forms = {}
    for entry in sorted(folder.iterdir(), key=lambda item: item.name):
        if entry.name.endswith(".yml"):
            stem = entry.name.removesuffix(".yml")
            document = _read_yaml(entry.read_text(encoding="utf-8"), f"keying/forms/{entry.name}")
            forms[stem] = form_from_document(document, stem, f"keying/forms/{entry.name}")
    return forms


def _read_yaml(text: str, where: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FormError(where, "-", f"not valid YAML: {exc}") from exc


def shipped_form(name: str) -> Form:
    """The shipped form ``name``; :class:`UnknownFormError` naming the forms there are."""
    forms = shipped_forms()
    if name not in forms:
        raise UnknownFormError(f"no form {name!r} (forms: {', '.join(forms)})")
    return forms[name]
