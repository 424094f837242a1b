"""The domain's words, defined once: a WIGOS identifier, an element, a station, a value's QC
status and final flag, a month, a period.

Every door into the system (CLI, notebooks, API, events, apps) reads them from here, so that a
station identifier accepted by one is accepted by all.  This module imports no database or web
code: notebooks and kernels import it at start-up.
"""

from __future__ import annotations

import calendar
import csv
import re
import zoneinfo
from dataclasses import dataclass
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, GetCoreSchemaHandler
from pydantic import GetJsonSchemaHandler, PlainSerializer
from pydantic import field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from opencdms_kernel.errors import ParameterError

# WMO-No. 1160: identifier series - issuer of identifier - issue number - local identifier.
# The series is 4 bits in BUFR (0-14; 15 = missing); issuer and issue number are 16 bits
# (0-65534; 65535 = missing); the local identifier is up to 16 letters and digits.
WIGOS_ID_PATTERN = r"^[0-9]{1,2}-[0-9]{1,5}-[0-9]{1,5}-[0-9A-Za-z]{1,16}$"
_WIGOS_ID = re.compile(r"^([0-9]{1,2})-([0-9]{1,5})-([0-9]{1,5})-([0-9A-Za-z]{1,16})$")
MAX_SERIES = 14
MAX_ISSUER = 65534


@dataclass(frozen=True, order=True)
class WigosParts:
    """The four parts of a WIGOS identifier."""

    series: int
    issuer: int
    issue_number: int
    local_id: str


def wigos_id_problem(text: str) -> str | None:
    """Why ``text`` is not a WIGOS station identifier (``None`` when it is one)."""
    match = _WIGOS_ID.match(text)
    if match is None:
        return (f"{text!r} is not a WIGOS identifier (series-issuer-issue number-local id, "
                "e.g. 0-20000-0-63740)")
    series, issuer, number = (int(part) for part in match.groups()[:3])
    if series > MAX_SERIES:
        return f"{text!r}: the identifier series {series} is beyond {MAX_SERIES}"
    if issuer > MAX_ISSUER or number > MAX_ISSUER:
        return f"{text!r}: the issuer and the issue number go from 0 to {MAX_ISSUER}"
    return None


def parse_wigos_id(text: str) -> WigosParts:
    """The parts of a WIGOS identifier; ``ValueError`` naming the rule it breaks."""
    if (problem := wigos_id_problem(text)) is not None:
        raise ValueError(problem)
    series, issuer, number, local = _WIGOS_ID.match(text).groups()  # type: ignore[union-attr]
    return WigosParts(int(series), int(issuer), int(number), local)


def _wigos_id(text: str) -> str:
    parse_wigos_id(text)
    return text


WigosId = Annotated[str, Field(pattern=WIGOS_ID_PATTERN, description="WIGOS station identifier"),
                    AfterValidator(_wigos_id)]


def time_zone_problem(name: str) -> str | None:
    """Why ``name`` is not an IANA time zone this machine knows (``None`` when it is one)."""
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return f"{name!r} is not an IANA time zone (e.g. Africa/Nairobi, UTC)"
    return None


def _time_zone(name: str) -> str:
    if (problem := time_zone_problem(name)) is not None:
        raise ValueError(problem)
    return name


TimeZoneName = Annotated[str, AfterValidator(_time_zone)]

# An ISO 8601 duration of weeks, days, hours, minutes and seconds.  Years and months are
# refused: pydantic would read P1M as 30 days, which no calendar month is.
_FIXED_DURATION = re.compile(r"^P(?:\d+W)?(?:\d+D)?(?:T(?:\d+H)?(?:\d+M)?(?:\d+S)?)?$")


def _fixed_iso_duration(value: object) -> object:
    if isinstance(value, str) and (not _FIXED_DURATION.match(value) or value in ("P", "PT") or value.endswith("T")):
        raise ValueError(f"not an ISO 8601 duration of weeks, days, hours, minutes or seconds "
                         f"(P1D, PT1H, PT10M): {value!r}")
    return value


def _positive_duration(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("a duration must be longer than zero")
    return value


IsoDuration = Annotated[
    timedelta, BeforeValidator(_fixed_iso_duration), AfterValidator(_positive_duration),
    PlainSerializer(lambda value: _iso_text(value), return_type=str, when_used="json"),
]
"""A positive duration written in ISO 8601 (``P1D``, ``PT1H``), read as a ``timedelta``."""


def _iso_text(value: timedelta) -> str:
    """``value`` as ISO 8601 text in days and seconds: ``P1D``, ``PT1H``, ``P1DT6H``."""
    days, seconds = value.days, value.seconds
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return f"P{f'{days}D' if days else ''}{'T' + time if time else ''}"


@dataclass(frozen=True)
class Element:
    """An observed property, as ``db/elements.csv`` (seeded into the ``element`` table) defines it."""

    code: str
    name: str
    standard_name: str
    cell_method: str
    units: str
    valid_min: float
    valid_max: float

    @property
    def time_method(self) -> str:
        """The method of its CF cell method over time: ``sum``, ``maximum``, ``minimum``,
        ``mean`` or ``point`` (``"time: maximum"`` -> ``maximum``)."""
        return self.cell_method.removeprefix("time:").strip()

    @property
    def is_total(self) -> bool:
        """Summed over time (precipitation, sunshine): its monthly figure is a total, not a mean."""
        return self.time_method == "sum"

    @property
    def is_angle(self) -> bool:
        """An angle (wind direction, units ``degree``): its arithmetic mean means nothing."""
        return self.units == "degree"


@dataclass(frozen=True)
class ElementInfo:
    """An element as one datastore keeps it: its row of the ``element`` table (seeded from
    ``db/elements.csv``; an administrator may have narrowed its valid range since), as QC and
    ingest validation read it."""

    id: int
    code: str
    valid_min: float | None
    valid_max: float | None
    units: str | None = None


@lru_cache(maxsize=1)
def elements() -> dict[str, Element]:
    """The element vocabulary, code -> element, from the CSV the schema seeds."""
    text = resources.files("opencdms_kernel.db").joinpath("elements.csv").read_text(encoding="utf-8")
    return {
        row["code"]: Element(row["code"], row["name"], row["standard_name"], row["cell_method"],
                             row["units"], float(row["valid_min"]), float(row["valid_max"]))
        for row in csv.DictReader(text.splitlines())
    }


def _element_code(code: str) -> str:
    if code not in elements():
        raise ValueError(f"{code!r} is not an element code (known: {', '.join(elements())})")
    return code


ElementCode = Annotated[str, AfterValidator(_element_code)]


class Station(BaseModel):
    """A WIGOS station as the system keeps it (one row of the ``station`` table)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    wigos_id: WigosId
    name: str = Field(min_length=1)
    latitude: float = Field(ge=-90, le=90)
    longitude: float = Field(ge=-180, le=180)
    elevation: float | None = Field(default=None, ge=-500, le=9000)
    territory: str | None = None
    wmo_region: str | None = None
    timezone: TimeZoneName = "UTC"
    status: str = "operational"
    opened: date | None = None
    closed: date | None = None

    @field_validator("territory", "wmo_region", "elevation", "opened", "closed", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("timezone", "status", mode="before")
    @classmethod
    def _empty_is_default(cls, value: object, info) -> object:  # type: ignore[no-untyped-def]
        if isinstance(value, str) and not value.strip():
            return cls.model_fields[info.field_name].default
        return value

    @model_validator(mode="after")
    def _closed_after_opened(self) -> "Station":
        if self.opened and self.closed and self.closed < self.opened:
            raise ValueError(f"closed {self.closed} is before opened {self.opened}")
        return self


# --------------------------------------------------------------------------- a value's quality


class QcStatus(StrEnum):
    """``observation.qc_status``, the quality of a value every layer speaks (products count
    values by it, the API and the apps show it); derived by the datastore from the value's
    ``result_quality`` entries (migration 0002, ``qc_status_of``).  The order is the archive's
    wire order (its codes 0-3), from unchecked to worst."""

    NONE = "none"  # not checked
    PASSED = "passed"  # checked, nothing raised (or a person accepted or corrected it)
    SUSPECT = "suspect"  # an automatic test found it doubtful
    FAILED = "failed"  # an automatic test found it wrong (or a person rejected it)


class FinalFlag(StrEnum):
    """``observation.final_flag``: the last word on a value, manual decisions first (migration
    0002, ``qc_final_flag_of``); NULL for a value nobody checked."""

    GOOD = "good"  # checked automatically, nothing raised
    SUSPECT = "suspect"  # an automatic test raised a doubt, nobody decided yet
    BAD = "bad"  # an automatic test found it wrong, nobody decided yet
    VERIFIED = "verified"  # a person accepted the value
    CORRECTED = "corrected"  # a person corrected the value
    REJECTED = "rejected"  # a person rejected the value


# --------------------------------------------------------------------------- months and periods

# The years a month or a period may name, everywhere (products, reports, notebooks, CLI, API).
# From 1600: after the Gregorian reform (1582), so the proleptic Gregorian calendar of Python,
# PostgreSQL and DuckDB is the calendar the dates were kept in (as rescued records are
# converted), and before the first instrumental records (the Medici network, 1654; Central
# England, 1659), so every real series fits, data rescue included.  To 2200: scenario normals
# (2071-2100) fit; a year beyond is a typing mistake (20200, 2902 for 2092), not a request.
MIN_YEAR = 1600
MAX_YEAR = 2200

# The canonical text forms (what str() writes and what a JSON schema publishes, years from
# MIN_YEAR to MAX_YEAR included, so that a client checking the schema and the parser agree;
# tests/test_vocabulary.py checks every four-digit year).  The parsers also accept blanks
# around the text, and a period "1991/2020" or "1991–2020" (ISO 8601 interval, typographic
# dash); nothing else: a one-digit month may be a truncated 10-12, so it is refused rather
# than guessed.  A reversed period matches the pattern; the parser refuses it.
YEAR_PATTERN = r"(?:1[6-9][0-9]{2}|2[01][0-9]{2}|2200)"
MONTH_PATTERN = rf"^{YEAR_PATTERN}-(?:0[1-9]|1[0-2])$"
PERIOD_PATTERN = rf"^{YEAR_PATTERN}(?:-{YEAR_PATTERN})?$"
_MONTH_TEXT = re.compile(r"([0-9]{4})-([0-9]{2})")
_PERIOD_TEXT = re.compile(r"([0-9]{4})(?:\s*[-/–]\s*([0-9]{4}))?")


def check_year(year: object, parameter: str = "year") -> int:
    """``year`` if it is a whole number from :data:`MIN_YEAR` to :data:`MAX_YEAR`, else
    :class:`ParameterError` naming ``parameter``."""
    if isinstance(year, bool) or not isinstance(year, int):
        raise ParameterError(parameter, f"a year must be a whole number, not {year!r}")
    if not MIN_YEAR <= year <= MAX_YEAR:
        raise ParameterError(parameter, f"year {year} is outside {MIN_YEAR}-{MAX_YEAR}")
    return year


def _text_of(text: object, parameter: str, example: str) -> str:
    if not isinstance(text, str):
        raise ParameterError(parameter, f"{text!r} is not text like {example}")
    return text.strip()


class _TextValue:
    """Pydantic support for a frozen value written as text: validated from an instance or from
    its text (``parse``, naming the field at fault), serialised and published as that text."""

    _PATTERN: str
    _EXAMPLE: str
    _PARAMETER: str

    @classmethod
    def parse(cls, text: str, parameter: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    @classmethod
    def _validate(cls, value: object, info: core_schema.ValidationInfo) -> Any:
        if isinstance(value, cls):
            return value
        return cls.parse(value, info.field_name or cls._PARAMETER)  # type: ignore[arg-type]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            cls._validate, serialization=core_schema.to_string_ser_schema(when_used="json-unless-none"),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "pattern": cls._PATTERN, "examples": [cls._EXAMPLE]}


@dataclass(frozen=True, order=True)
class Month(_TextValue):
    """A calendar month, ``Month(2020, 7)``; written ``2020-07``.

    Built from code, a bad year or month raises :class:`ParameterError` naming ``month.year``
    or ``month.month``; :meth:`parse` names the parameter it is given.  In a pydantic model it
    is validated from its text (or an instance) and serialised to JSON as its text.
    """

    year: int
    month: int

    _PATTERN = MONTH_PATTERN
    _EXAMPLE = "2020-07"
    _PARAMETER = "month"

    def __post_init__(self) -> None:
        check_year(self.year, "month.year")
        if isinstance(self.month, bool) or not isinstance(self.month, int) or not 1 <= self.month <= 12:
            raise ParameterError("month.month", f"month {self.month!r} is not a month number 1-12")

    @classmethod
    def parse(cls, text: str, parameter: str = "month") -> "Month":
        """``"2020-07"`` (blanks around it allowed) as ``Month(2020, 7)``; anything else raises
        :class:`ParameterError` naming ``parameter``."""
        cleaned = _text_of(text, parameter, "2020-07")
        match = _MONTH_TEXT.fullmatch(cleaned)
        if match is None:
            hint = " (write the month with two digits)" if re.fullmatch(r"[0-9]{4}-[0-9]", cleaned) else ""
            raise ParameterError(parameter, f"{text!r} is not a month like 2020-07{hint}")
        year, month = int(match.group(1)), int(match.group(2))
        if not 1 <= month <= 12:
            raise ParameterError(parameter, f"{text!r}: month {month:02d} is not 01-12")
        try:
            return cls(year, month)
        except ParameterError as exc:
            raise ParameterError(parameter, f"{text!r}: {exc.reason}") from None

    @property
    def first_day(self) -> date:
        return date(self.year, self.month, 1)

    @property
    def last_day(self) -> date:
        return date(self.year, self.month, self.days)

    @property
    def days(self) -> int:
        """Days in the month (29 in a leap February)."""
        return calendar.monthrange(self.year, self.month)[1]

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    def __str__(self) -> str:
        return self.label


@dataclass(frozen=True, order=True)
class Period(_TextValue):
    """Whole calendar years ``start_year`` to ``end_year``, both included; written ``1991-2020``.

    Built from code, a bad year raises :class:`ParameterError` naming ``period.start_year`` or
    ``period.end_year``, a reversed range names ``period``; :meth:`parse` names the parameter it
    is given.  In a pydantic model it is validated from its text (or an instance) and serialised
    to JSON as its text.
    """

    start_year: int
    end_year: int

    _PATTERN = PERIOD_PATTERN
    _EXAMPLE = "1991-2020"
    _PARAMETER = "period"

    def __post_init__(self) -> None:
        check_year(self.start_year, "period.start_year")
        check_year(self.end_year, "period.end_year")
        if self.start_year > self.end_year:
            raise ParameterError("period", f"start year {self.start_year} is after end year {self.end_year}")

    @classmethod
    def parse(cls, text: str, parameter: str = "period") -> "Period":
        """``"1991-2020"`` (also ``1991/2020``, ``1991–2020``, blanks around) or ``"2020"`` (one
        year); anything else raises :class:`ParameterError` naming ``parameter``."""
        cleaned = _text_of(text, parameter, "1991-2020")
        match = _PERIOD_TEXT.fullmatch(cleaned)
        if match is None:
            raise ParameterError(parameter, f"{text!r} is not a year or a range like 1991-2020")
        start = int(match.group(1))
        try:
            return cls(start, int(match.group(2) or start))
        except ParameterError as exc:
            raise ParameterError(parameter, f"{text!r}: {exc.reason}") from None

    @property
    def years(self) -> int:
        """How many years (30 for 1991-2020)."""
        return self.end_year - self.start_year + 1

    @property
    def first_day(self) -> date:
        return date(self.start_year, 1, 1)

    @property
    def last_day(self) -> date:
        return date(self.end_year, 12, 31)

    @property
    def label(self) -> str:
        return f"{self.start_year}-{self.end_year}"

    def __str__(self) -> str:
        return self.label


class HubRole(StrEnum):
    """The roles people have in the workbench (JupyterHub groups), each mapped to a database group
    role (``db.roles.HUB_GROUP_SUFFIX``): what a person may see and change, everywhere."""

    ADMIN = "admin"
    SCIENTIST = "scientist"
    QC_REVIEWER = "qc-reviewer"
    CLERK = "clerk"
