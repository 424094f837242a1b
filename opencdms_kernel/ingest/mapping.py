"""Mapping files: how the columns of a CSV file become observations.

A mapping is a small YAML file::

    layout: wide                 # wide: one column per element; long: station,element,time,value[,flag]
    source: demo-aws             # the data source recorded with each observation
    encoding: utf-8
    delimiter: ","               # one character: ";" or "\t" (tab) too, or "whitespace": runs of
                                 # spaces and tabs, as in column-aligned text files
    decimal: "."                 # or "," (decimal comma: 12,5)
    header_line: 1               # the line holding the column names; lines before it are skipped
    time: {column: datetime, format: "%Y-%m-%d %H:%M", timezone: Africa/Nairobi}
                                 # or {columns: [DATE, TIME], format: "%Y%m%d %H:%M"}: joined by a space
                                 # hour_24: end_of_day reads 24:00 as the end of that day (default: refuse)
    duration: PT1H               # ISO 8601 period the values cover (P1D for daily values)
    level: 0                     # height/depth of the sensor in metres
    station: {column: station}   # or {fixed: "0-20000-0-60001"} or {filename_pattern: "(?P<station>…)"}
                                 # or {header_line: 1, header_field: 0}: a field of a line before the header
                                 # (add prefix: "0-840-0-" where the file gives only the local id)
    unmapped_columns: refuse     # ignore | refuse columns the mapping does not name
    missing_values: ["-9999", M] # codes meaning "missing" in every value column ("" always is)
    trace_values: [T]            # codes meaning "trace": stored as 0 with the flag "trace"
    columns:                     # wide layout: file column -> element (and the units it is in)
      air_temp: {element: TMEAN, units: degC, flag_column: air_temp_flag, missing_values: ["999.9"],
                 source_column: air_temp_source}   # flag and source are kept with each value
    units: {PRCP: in}            # long layout: the units of an element, where not the element's own

A long file may add the columns ``flag`` and ``source``.  Files in the long layout need no mapping: :data:`DEFAULT_LONG_MAPPING` applies.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from opencdms_kernel.errors import MappingError
from opencdms_kernel.vocabulary import IsoDuration

LONG_COLUMNS = ("station", "element", "time", "value")
LONG_OPTIONAL_COLUMNS = ("flag", "source")  # a value's flag, and where it came from
WHITESPACE = "whitespace"  # the delimiter value for column-aligned files


class Layout(str, Enum):
    """Shape of a CSV file."""

    LONG = "long"
    WIDE = "wide"


class Unmapped(str, Enum):
    """What to do with columns a mapping does not name."""

    IGNORE = "ignore"
    REFUSE = "refuse"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TimeSpec(_Frozen):
    """Where the time is and how to read it: one column, or several joined by a space."""

    column: str = "time"
    columns: tuple[str, ...] = Field(
        default=(), description="several columns (e.g. date and time of day), joined by a space in this order"
    )
    format: str | None = Field(
        default=None, description="strptime format; empty: ISO 8601 (with optional offset)"
    )
    timezone: str = Field(default="UTC", description="IANA zone of times without an offset")
    hour_24: Literal["refuse", "end_of_day"] = Field(
        default="refuse", description="24:00 refused, or read as the end of that day (00:00 of the next)"
    )

    @model_validator(mode="after")
    def _columns_need_a_format(self) -> "TimeSpec":
        if self.columns and len(self.columns) < 2:
            raise ValueError("columns: give two or more columns (one column: use 'column')")
        if self.columns and not self.format:
            raise ValueError("a time from several columns needs a format for the joined text, e.g. '%Y-%m-%d %H:%M'")
        return self

    @property
    def source_columns(self) -> tuple[str, ...]:
        """The file's columns the time is read from."""
        return self.columns or (self.column,)

    @property
    def label(self) -> str:
        """How messages name the time's column(s)."""
        return "+".join(self.source_columns)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r}") from exc
        return value


class StationSpec(_Frozen):
    """Where the station's WIGOS identifier comes from: a column, a fixed value, the file name, or
    a field of a line before the header (a station metadata line)."""

    column: str | None = None
    fixed: str | None = None
    filename_pattern: str | None = None
    header_line: int | None = Field(default=None, ge=1, description="a line before the header")
    header_field: int = Field(default=0, ge=0, description="field of that line (0: the first)")
    prefix: str = Field(default="", description="put before the id found, e.g. 0-840-0- for a local id")

    @model_validator(mode="after")
    def _exactly_one(self) -> "StationSpec":
        given = [name for name in ("column", "fixed", "filename_pattern", "header_line")
                 if getattr(self, name) is not None]
        if self.prefix and self.fixed is not None:
            raise ValueError("prefix is for a station found in the file; write a fixed station whole")
        if len(given) != 1:
            raise ValueError("give exactly one of column, fixed, filename_pattern, header_line")
        if self.filename_pattern is not None:
            try:
                pattern = re.compile(self.filename_pattern)
            except re.error as exc:
                raise ValueError(f"filename_pattern is not a regular expression: {exc}") from exc
            if "station" not in pattern.groupindex:
                raise ValueError("filename_pattern needs a named group (?P<station>…)")
        return self

    def station_from_filename(self, file_name: str) -> str | None:
        """The station named by ``file_name`` under ``filename_pattern``, or None if no match."""
        assert self.filename_pattern is not None
        match = re.search(self.filename_pattern, file_name)
        return match.group("station") if match else None


class ColumnSpec(_Frozen):
    """One column of a wide file: the element it holds, its units, flags and codes."""

    element: str
    units: str | None = None
    flag_column: str | None = Field(default=None, description="the column holding this value's flag")
    source_column: str | None = Field(
        default=None, description="the column naming where this value came from (kept with it, as is)")
    missing_values: tuple[str, ...] = Field(default=(), description="codes for missing, besides the mapping's")
    trace_values: tuple[str, ...] = Field(default=(), description="codes for trace, besides the mapping's")


class Mapping(_Frozen):
    """How one kind of CSV file becomes observations (see the module docstring)."""

    layout: Layout = Layout.LONG
    source: str = Field(default="csv-ingest", min_length=1)
    encoding: str = "utf-8"
    delimiter: str = Field(default=",", description='one character, or "whitespace" (runs of spaces/tabs)')
    decimal: str = Field(default=".", pattern=r"^[.,]$", description="decimal mark of the values")
    header_line: int = Field(default=1, ge=1, description="the line holding the column names")
    missing_values: tuple[str, ...] = Field(default=(), description='codes for "missing" in every value column')
    trace_values: tuple[str, ...] = Field(default=(), description='codes for "trace" (stored as 0, flag "trace")')
    time: TimeSpec = TimeSpec()
    duration: IsoDuration = Field(default=timedelta(days=1), description="ISO 8601 period, e.g. P1D, PT1H, PT10M")
    level: float = 0.0
    station: StationSpec = StationSpec(column="station")
    unmapped_columns: Unmapped = Unmapped.IGNORE
    columns: dict[str, ColumnSpec] = Field(default_factory=dict)
    units: dict[str, str] = Field(default_factory=dict)
    name: str = Field(default="(default long layout)", exclude=True)

    @field_validator("delimiter")
    @classmethod
    def _one_character_or_whitespace(cls, value: str) -> str:
        if value != WHITESPACE and len(value) != 1:
            raise ValueError(f'one character (",", ";", "\\t" ...) or "{WHITESPACE}", not {value!r}')
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        import codecs

        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _layout_fields(self) -> "Mapping":
        if self.layout is Layout.WIDE and not self.columns:
            raise ValueError("a wide layout needs 'columns' (file column -> element)")
        if self.layout is Layout.LONG and self.columns:
            raise ValueError("'columns' is for the wide layout; use 'units' in the long layout")
        if self.whitespace_delimited and not _ascii_compatible(self.encoding):
            raise ValueError(f"delimiter: {WHITESPACE} needs an ASCII-compatible encoding, not {self.encoding}")
        if self.decimal == self.delimiter:
            raise ValueError("the decimal mark and the delimiter must differ (decimal comma: use delimiter ';')")
        line = self.station.header_line
        if line is not None and line >= self.header_line:
            raise ValueError(f"station.header_line {line} must be a line before the header (line {self.header_line})")
        return self

    @property
    def whitespace_delimited(self) -> bool:
        """Fields are separated by runs of spaces and tabs (leading and trailing ones ignored)."""
        return self.delimiter == WHITESPACE

    @property
    def parser_delimiter(self) -> str:
        """The one character the CSV parser splits on (whitespace runs are read as one tab)."""
        return "\t" if self.whitespace_delimited else self.delimiter

    @property
    def duration_seconds(self) -> int:
        """The mapping's duration in seconds."""
        return int(self.duration.total_seconds())

    def required_columns(self) -> tuple[str, ...]:
        """Columns a file must have under this mapping."""
        station = (self.station.column,) if self.station.column else ()
        if self.layout is Layout.LONG:
            return (*station, "element", *self.time.source_columns, "value")
        companions = tuple(
            name for spec in self.columns.values() for name in (spec.flag_column, spec.source_column) if name)
        return (*station, *self.time.source_columns, *companions)

    def known_columns(self) -> frozenset[str]:
        """Columns this mapping names (the rest are ignored or refused)."""
        extra = set(LONG_OPTIONAL_COLUMNS) if self.layout is Layout.LONG else set(self.columns)
        return frozenset(self.required_columns()) | extra


def _ascii_compatible(encoding: str) -> bool:
    """Whether spaces, tabs and line breaks are the same single bytes as in ASCII (a byte-order
    mark in front, as utf-8-sig writes, does not matter)."""
    return "x \t\n".encode(encoding).endswith(b"x \t\n")


DEFAULT_LONG_MAPPING = Mapping()


def load_mapping(path: Path) -> Mapping:
    """Read and validate a mapping file; errors name the file and the field at fault."""
    name = str(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise MappingError(name, "-", f"cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise MappingError(name, "-", f"not valid YAML: {exc}") from exc
    if not isinstance(document, dict):
        raise MappingError(name, "-", "expected a mapping of fields (key: value) at the top")
    try:
        return Mapping(**document, name=name)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "-"
        raise MappingError(name, field, first["msg"]) from exc
