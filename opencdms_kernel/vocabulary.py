"""The domain's words, defined once: a WIGOS identifier, an element, a station.

Every door into the system (CLI, notebooks, API, events, apps) reads them from here, so that a
station identifier accepted by one is accepted by all.  This module imports no database or web
code: notebooks and kernels import it at start-up.
"""

from __future__ import annotations

import csv
import re
import zoneinfo
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

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
    def is_total(self) -> bool:
        """Summed over time (precipitation, sunshine): its monthly figure is a total, not a mean."""
        return self.cell_method == "time: sum"


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
