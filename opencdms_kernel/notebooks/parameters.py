"""Typed notebook parameters: how a notebook declares them, their JSON Schema, and validation.

How a notebook declares its parameters
--------------------------------------
The cell tagged ``parameters`` holds one assignment per line, each with a type annotation and
a ``#`` comment that describes it.  The annotations are plain names (papermill's parser reads
letters, digits, ``_``, ``[``, ``]`` and ``,`` only: write ``Optional[int]``, not ``int | None``),
so the kinds below must be imported in a cell *before* the parameters cell::

    from opencdms_kernel.notebooks import BucketKey, ElementCode, WigosId, YearMonth

    # --- the cell tagged "parameters" ---
    object_key: BucketKey = "incoming/daily.csv"  # CSV file to ingest [prefixes: incoming/]
    station: WigosId = "0-20000-0-60001"          # WIGOS station id
    elements: list[ElementCode] = ["TMAX", "TMIN"]  # elements to check
    month: YearMonth = "2020-07"                   # month of the report
    year: int = 2020                               # year
    threshold: float = 2.5                         # threshold in kelvin
    overwrite: bool = False                        # replace an existing product
    title: str = "Monthly report"                  # free text
    code: str = "ABC"                              # station code [pattern: ^[A-Z]{3,5}$]
    label: str = "July"                            # a short label [max_length: 40]
    stations: list[str] = []                       # station names
    end_month: Optional[YearMonth] = None          # last month; None: same as month

Kinds (annotation -> JSON Schema -> accepted values):

- ``int`` -> integer; ``float`` -> number (finite); ``bool`` -> boolean.
- ``str`` -> string (``maxLength``, and ``pattern`` when declared): at most 1,000 characters
  unless the comment ends with ``[max_length: N]``; when it ends with ``[pattern: REGEX]`` the
  whole value must match REGEX (``re.fullmatch``; the schema shows it as ``^(?:REGEX)$``; write
  it in the syntax Python and JavaScript share, with its brackets paired and without ``=``,
  which makes papermill skip the line).  Control characters are refused, except tab and
  newline (free text may have several lines); a Windows line end (CR LF) becomes a newline,
  a lone CR is refused, and so is text that is not valid Unicode (a lone surrogate).
- ``BucketKey`` -> string: a key inside the file bucket, relative to its root, '/'-separated;
  never absolute, never a URL, no ``.`` or ``..`` segment, no empty segment, no backslash or
  control character, never a folder (a key ending with ``/``).  Allowed prefixes are declared
  at the end of the comment as ``[prefixes: incoming/ uploads/]`` (space or comma separated; a
  prefix ends with ``/``).  Without the tag any key inside the bucket is accepted.
- ``WigosId`` -> string like ``0-20000-0-60001`` (the pattern the ``station`` table checks).
- ``ElementCode`` -> string like ``TMAX``: an element of the vocabulary (``db/elements.csv``);
  blanks around are dropped and lower case is upper-cased.
- ``YearMonth`` -> string ``YYYY-MM`` (read by ``vocabulary.Month``).
- ``Period`` -> string ``YYYY-YYYY`` (or one year ``YYYY``; read by ``vocabulary.Period``, passed on
  as ``YYYY-YYYY``).
- ``list[K]`` for any kind K above (``list`` alone is ``list[str]``) -> array of K.
- ``Optional[K]``, or a default of ``None``, also accepts ``null``.
- No annotation: the kind is inferred from the default (``3`` -> int, ``"x"`` -> str, …; a
  default that is not a literal accepts any JSON scalar or list of scalars).

Each kind is one pydantic ``Annotated`` type (``Integer``, ``Number``, ``Boolean``, ``text_type()``,
``bucket_key_type()``, ``StationId``, ``Element``, ``MonthText``, ``PeriodText``, ``JsonValue``):
a parameter's JSON Schema and its validation both come from it (``TypeAdapter``), and a refusal
is reworded to name the notebook and the parameter.

Tags are ``[name: value]`` at the end of the comment (``prefixes``, ``max_length``, ``pattern``;
each at most once, on a parameter of the kind it belongs to); an unknown ``[name: …]`` there
is an error, so that a misspelt tag is not silently part of the description.  The description
is the comment without its tags.  Every default must itself be valid, or the notebook is not
registered.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, replace
from enum import Enum
from functools import cached_property
from typing import Annotated, Any, Callable, Mapping, NewType, Optional

from pydantic import AfterValidator, AllowInfNan, BeforeValidator, Field, PlainValidator, Strict, TypeAdapter
from pydantic import ValidationError, WithJsonSchema

from opencdms_kernel.bucket import bucket_key_problem
from opencdms_kernel.errors import ParameterError
from opencdms_kernel.notebooks.errors import NotebookDefinitionError, NotebookParameterError
from opencdms_kernel.vocabulary import MONTH_PATTERN, PERIOD_PATTERN, Month, Period as PeriodValue, wigos_id_problem
from opencdms_kernel.vocabulary import ElementCode as VocabularyElementCode
from opencdms_kernel.vocabulary import WigosId as VocabularyWigosId

BucketKey = NewType("BucketKey", str)
"""A key in the file bucket (annotation for a notebook parameter)."""
WigosId = NewType("WigosId", str)
"""A WIGOS station identifier (annotation for a notebook parameter)."""
ElementCode = NewType("ElementCode", str)
"""An element code such as TMAX (annotation for a notebook parameter)."""
YearMonth = NewType("YearMonth", str)
"""A month as YYYY-MM (annotation for a notebook parameter)."""
Period = NewType("Period", str)
"""Whole years as YYYY-YYYY (annotation for a notebook parameter; the value is text, which
``opencdms_kernel.vocabulary.Period.parse`` reads)."""


class Kind(str, Enum):
    """What a parameter holds; the value is the annotation a notebook writes."""

    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STR = "str"
    BUCKET_KEY = "BucketKey"
    WIGOS_ID = "WigosId"
    ELEMENT_CODE = "ElementCode"
    YEAR_MONTH = "YearMonth"
    PERIOD = "Period"
    ANY = "any"


ELEMENT_CODE_PATTERN = r"^[A-Z][A-Z0-9_]{0,31}$"
DEFAULT_MAX_LENGTH = 1000
"""Characters a ``str`` parameter may hold unless its comment says ``[max_length: N]``."""

# A tag opens with "[name:" at the start of the comment or after a space; its value runs to
# the "]" before the next tag (or the end), so a pattern may hold brackets of its own.
_TAG_OPENER = re.compile(r"(?:^|(?<=\s))\[(?P<name>[A-Za-z_]+):")
_TAG_NAMES = {"prefixes": "prefixes", "prefix": "prefixes", "max_length": "max_length", "pattern": "pattern"}
# Refused in text: C0 controls but tab and newline, DEL, C1 controls (terminal escapes, NUL,
# which PostgreSQL cannot store), and lone surrogates (not encodable, so no notebook could be
# saved with one).
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


# --------------------------------------------------------------------------- the kinds as pydantic types
#
# Each kind is one Annotated type: pydantic validates a value with it and writes its JSON
# Schema from it.  Strict(): a request's JSON is not coerced ("3" is not an integer); the
# few conversions a kind makes are its own validators.  A validator's ValueError becomes the
# reason a request is refused (see ParameterSpec.validate).


def _whole_number(value: Any) -> Any:
    """3.0 is the integer 3 (JSON does not tell them apart); 3.5 stays a float, and is refused."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _plain_text(value: str) -> str:
    """Text a notebook and the database can hold: a Windows line end becomes a newline;
    control characters (but tab and newline) and lone surrogates are refused."""
    value = value.replace("\r\n", "\n")
    if surrogate := _SURROGATE.search(value):
        raise ValueError(f"is not valid Unicode (a lone surrogate {surrogate.group()!r} at position {surrogate.start()})")
    if control := _TEXT_CONTROL.search(value):
        raise ValueError(
            f"contains a control character {control.group()!r} at position {control.start()} "
            "(of those only tab and newline are allowed)"
        )
    return value


def _matching(pattern: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not re.fullmatch(pattern, value):
            raise ValueError(f"{_shortened(value)} does not match the pattern {pattern}")
        return value

    return check


def _in_bucket(prefixes: tuple[str, ...]) -> Callable[[str], str]:
    def check(value: str) -> str:
        if problem := bucket_key_problem(value, prefixes):
            raise ValueError(problem)
        return value

    return check


def _month_text(value: str) -> str:
    return Month.parse(value, "month").label


def _period_text(value: str) -> str:
    return PeriodValue.parse(value, "period").label


def _json_scalar(value: Any) -> Any:
    """An item of an untyped list: a JSON scalar; text as free text."""
    if isinstance(value, str):
        return _free_text(DEFAULT_MAX_LENGTH)(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    raise ValueError(f"must be a text, number or boolean, not {_describe(value)}")


def _json_value(value: Any) -> Any:
    """A parameter without a type: a JSON scalar, or a list of scalars; text as free text."""
    if isinstance(value, (list, tuple)) and all(item is None or isinstance(item, (str, int, float, bool)) for item in value):
        return [_json_scalar(item) for item in value]
    try:
        return _json_scalar(value)
    except ValueError:
        raise ValueError(f"must be a text, number, boolean or list of those, not {_describe(value)}") from None


def _free_text(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"{len(value):,} characters long, more than the {limit:,} allowed")
        return _plain_text(value)

    return check


Integer = Annotated[int, BeforeValidator(_whole_number), Strict()]
Number = Annotated[float, Strict(), AllowInfNan(False)]
Boolean = Annotated[bool, Strict()]
StationId = Annotated[VocabularyWigosId, Strict()]
# Blanks around and lower case are forgiven; then the element vocabulary decides.
Element = Annotated[str, Strict(), AfterValidator(lambda value: value.strip().upper()),
                    *VocabularyElementCode.__metadata__, Field(json_schema_extra={"pattern": ELEMENT_CODE_PATTERN})]
MonthText = Annotated[str, Strict(), AfterValidator(_month_text), Field(json_schema_extra={"pattern": MONTH_PATTERN})]
PeriodText = Annotated[str, Strict(), AfterValidator(_period_text), Field(json_schema_extra={"pattern": PERIOD_PATTERN})]
JsonValue = Annotated[Any, PlainValidator(_json_value), WithJsonSchema({})]
JsonScalar = Annotated[Any, PlainValidator(_json_scalar), WithJsonSchema({})]

_FIXED_TYPES: dict[Kind, Any] = {
    Kind.INT: Integer, Kind.FLOAT: Number, Kind.BOOL: Boolean, Kind.WIGOS_ID: StationId,
    Kind.ELEMENT_CODE: Element, Kind.YEAR_MONTH: MonthText, Kind.PERIOD: PeriodText, Kind.ANY: JsonValue,
}
_NOUNS = {Kind.INT: "an integer", Kind.FLOAT: "a finite number", Kind.BOOL: "true or false",
          Kind.ANY: "a text, number, boolean or list of those"}
# Why a value does not match a kind's pattern, in the vocabulary's words.
_PATTERN_PROBLEMS: dict[Kind, Callable[[str], str | None]] = {Kind.WIGOS_ID: wigos_id_problem}


def text_type(limit: int, pattern: str | None = None) -> Any:
    """The ``str`` kind with its length limit and, if declared, the pattern it must match.

    The length is checked first (the useful message for a huge value, and cheap), on the text
    as given; then the characters; then the pattern, with ``re.fullmatch``.  The schema shows
    the pattern anchored (``^(?:…)$``), since a JSON Schema pattern matches anywhere.
    """
    parts: list[Any] = [Strict(), Field(max_length=limit), AfterValidator(_plain_text)]
    if pattern is not None:
        parts += [AfterValidator(_matching(pattern)), Field(json_schema_extra={"pattern": f"^(?:{pattern})$"})]
    return Annotated[str, *parts]


def bucket_key_type(prefixes: tuple[str, ...]) -> Any:
    """The ``BucketKey`` kind: a key inside the bucket, under one of ``prefixes`` if any."""
    parts: list[Any] = [Strict(), AfterValidator(_in_bucket(prefixes))]
    if prefixes:
        parts.append(Field(json_schema_extra={"pattern": "^(?:" + "|".join(re.escape(p) for p in prefixes) + ")"}))
    return Annotated[str, *parts]


@dataclass(frozen=True)
class ParameterSpec:
    """One declared parameter of a notebook."""

    name: str
    kind: Kind
    is_list: bool = False
    nullable: bool = False
    default: Any = None
    has_default: bool = False  # False when the default is an expression, not a literal
    description: str = ""
    prefixes: tuple[str, ...] = ()
    annotation: str | None = None
    max_length: int | None = None  # for str: None is DEFAULT_MAX_LENGTH
    pattern: str | None = None  # for str: the whole value must match

    @property
    def length_limit(self) -> int | None:
        """How many characters a text value may have (``None``: the kind's pattern decides)."""
        if self.kind in (Kind.STR, Kind.ANY):
            return self.max_length if self.max_length is not None else DEFAULT_MAX_LENGTH
        return None

    @property
    def item_type(self) -> Any:
        """The pydantic type of one value of this parameter (an item, for a list)."""
        if self.kind is Kind.STR:
            return text_type(self.length_limit or DEFAULT_MAX_LENGTH, self.pattern)
        if self.kind is Kind.BUCKET_KEY:
            return bucket_key_type(self.prefixes)
        if self.kind is Kind.ANY and self.is_list:
            return JsonScalar
        return _FIXED_TYPES[self.kind]

    @cached_property
    def _adapter(self) -> TypeAdapter[Any]:
        item = self.item_type
        whole = list[item] if self.is_list else item  # type: ignore[valid-type]
        return TypeAdapter(Optional[whole] if self.nullable else whole)  # noqa: UP007

    def json_schema(self) -> dict[str, Any]:
        """This parameter as a JSON Schema (with ``x-opencdms-kind`` and, for keys, prefixes)."""
        schema = self._adapter.json_schema()
        if self.nullable:
            # pydantic writes anyOf [T, null]; the one-type form reads better and means the same.
            options = schema.pop("anyOf")
            schema.update(next(option for option in options if option != {"type": "null"}))
            if "type" in schema:
                schema["type"] = [schema["type"], "null"]
        schema["x-opencdms-kind"] = self.kind.value
        if self.prefixes:
            schema["x-opencdms-prefixes"] = list(self.prefixes)
        if self.description:
            schema["description"] = self.description
        if self.has_default:
            schema["default"] = self.default
        return schema

    @property
    def type_label(self) -> str:
        """The kind as a person reads it, e.g. ``list[WigosId]`` or ``Optional[int]``."""
        label = f"list[{self.kind.value}]" if self.is_list else self.kind.value
        return f"Optional[{label}]" if self.nullable else label

    def validate(self, value: Any, notebook: str) -> Any:
        """The value checked against this parameter (normalised), or NotebookParameterError."""
        try:
            return self._adapter.validate_python(value)
        except ValidationError as exc:
            raise NotebookParameterError(notebook, self.name, self._reason(exc.errors()[0], value)) from None

    def _reason(self, error: Mapping[str, Any], value: Any) -> str:
        """A pydantic error in the words of this parameter's kind."""
        location = [part for part in error["loc"] if isinstance(part, int)]
        where = f" (item {location[0]})" if self.is_list and location else ""
        given = error.get("input")
        kind = error["type"]
        if kind in ("value_error", "assertion_error"):
            cause = error["ctx"]["error"]
            return (cause.reason if isinstance(cause, ParameterError) else str(cause)) + where
        if kind == "string_unicode" and isinstance(given, str) and (surrogate := _SURROGATE.search(given)):
            return f"is not valid Unicode (a lone surrogate {surrogate.group()!r} at position {surrogate.start()}){where}"
        if kind == "string_too_long":
            return f"{len(given):,} characters long, more than the {error['ctx']['max_length']:,} allowed{where}"
        if kind == "string_pattern_mismatch" and self.kind in _PATTERN_PROBLEMS:
            return (_PATTERN_PROBLEMS[self.kind](given) or f"{given!r} does not match {error['ctx']['pattern']}") + where
        if value is None:
            return f"must be a {self.type_label}, not null"
        if self.is_list and not where:
            return f"must be a list of {self.kind.value}, not {_describe(value)}"
        noun = _NOUNS.get(self.kind, f"a text ({self.kind.value})")
        return f"must be {noun}, not {_describe(given)}{where}"

    def parse_text(self, text: str, notebook: str) -> Any:
        """A value typed as text (command line) converted to this parameter's kind and checked."""
        if self.nullable and self.kind is not Kind.STR and text.strip() in ("null", "None"):
            return None
        if self.is_list:
            if text.strip().startswith("["):
                try:
                    items = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise NotebookParameterError(notebook, self.name, f"{text!r} is not a JSON list: {exc.msg}") from exc
                return self.validate(items, notebook)
            parts = [part.strip() for part in text.split(",") if part.strip()]
            return self.validate([self._from_text(part, notebook) for part in parts], notebook)
        return self.validate(self._from_text(text, notebook), notebook)

    def _from_text(self, text: str, notebook: str) -> Any:
        if self.kind is Kind.INT:
            try:
                return int(text)
            except ValueError:
                raise NotebookParameterError(notebook, self.name, f"{text!r} is not an integer") from None
        if self.kind is Kind.FLOAT:
            try:
                return float(text)
            except ValueError:
                raise NotebookParameterError(notebook, self.name, f"{text!r} is not a number") from None
        if self.kind is Kind.BOOL:
            lowered = text.strip().lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise NotebookParameterError(notebook, self.name, f"{text!r} is not true or false")
        if self.kind is Kind.ANY:
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return text
        return text


def _shortened(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {_shortened(value)}"


def parse_parameters(file: str, inspected: Mapping[str, Mapping[str, Any]]) -> tuple[ParameterSpec, ...]:
    """Parameter specs from ``papermill.inspect_notebook`` output; NotebookDefinitionError if wrong."""
    return tuple(_parse_one(file, item) for item in inspected.values())


def _parse_one(file: str, item: Mapping[str, Any]) -> ParameterSpec:
    name = str(item["name"])
    annotation = item.get("inferred_type_name")
    annotation = None if annotation in (None, "None", "") else str(annotation)
    help_text, tags = _split_tags(file, name, str(item.get("help") or "").strip())
    default_source = str(item.get("default") or "")
    try:
        default = ast.literal_eval(default_source)
        has_default = True
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        default, has_default = None, False  # an expression: evaluated in the kernel
    if isinstance(default, tuple):
        default = list(default)
    if annotation is None:
        kind, is_list, nullable = _infer_kind(default, has_default)
    else:
        kind, is_list, nullable = _parse_annotation(file, name, annotation)
    if has_default and default is None:
        nullable = True
    for tag, owner in (("prefixes", Kind.BUCKET_KEY), ("max_length", Kind.STR), ("pattern", Kind.STR)):
        if tag in tags and kind is not owner:
            raise NotebookDefinitionError(file, f"[{tag}: …] belongs to a {owner.value} parameter, not {kind.value}", name)
    prefixes = tuple(p for p in re.split(r"[\s,]+", tags.get("prefixes", "")) if p)
    for prefix in prefixes:
        if problem := bucket_key_problem(prefix, folder=True):
            raise NotebookDefinitionError(file, f"a prefix must be a bucket folder: {problem}", name)
    spec = ParameterSpec(
        name=name, kind=kind, is_list=is_list, nullable=nullable, default=default, has_default=has_default,
        description=help_text, prefixes=prefixes, annotation=annotation,
        max_length=_max_length(file, name, tags["max_length"]) if "max_length" in tags else None,
        pattern=_pattern(file, name, tags["pattern"]) if "pattern" in tags else None,
    )
    if has_default:
        try:
            spec = replace(spec, default=spec.validate(default, file))
        except NotebookParameterError as exc:
            raise NotebookDefinitionError(file, f"the default is invalid: {exc.reason}", name) from exc
    return spec


def _split_tags(file: str, name: str, help_text: str) -> tuple[str, dict[str, str]]:
    """The description and the ``[name: value]`` tags that end a parameter's comment.

    The tags start at the first "[name:" from which, to the end, every tag closes with "]"; so
    "see [the manual]" or "[a: b] and more" before them stay in the description.
    """
    openers = list(_TAG_OPENER.finditer(help_text))
    for first in range(len(openers)):
        starts = [opener.start() for opener in openers[first:]] + [len(help_text)]
        segments = [help_text[start:end].strip() for start, end in zip(starts, starts[1:])]
        if not all(segment.endswith("]") for segment in segments):
            continue
        tags: dict[str, str] = {}
        for opener, segment in zip(openers[first:], segments):
            written = opener.group("name")
            tag = _TAG_NAMES.get(written)
            if tag is None:
                known = ", ".join(sorted(set(_TAG_NAMES.values())))
                raise NotebookDefinitionError(file, f"unknown tag [{written}: …] (known: {known})", name)
            if tag in tags:
                raise NotebookDefinitionError(file, f"[{tag}: …] is given twice", name)
            tags[tag] = segment[len(opener.group(0)) : -1].strip()
        return help_text[: openers[first].start()].strip(), tags
    return help_text, {}


def _max_length(file: str, name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise NotebookDefinitionError(file, f"max_length must be a whole number from 1 up, not {text!r}", name)
    return int(text)


def _pattern(file: str, name: str, text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise NotebookDefinitionError(file, f"the pattern is not a regular expression: {text!r}: {exc}", name) from exc
    return text


def _parse_annotation(file: str, name: str, annotation: str) -> tuple[Kind, bool, bool]:
    text = annotation.replace(" ", "")
    nullable = False
    optional = re.fullmatch(r"Optional\[(.+)\]", text)
    if optional:
        nullable, text = True, optional.group(1)
    is_list = False
    listed = re.fullmatch(r"(?:list|List)\[(.+)\]", text)
    if listed:
        is_list, text = True, listed.group(1)
    elif text in ("list", "List"):
        is_list, text = True, "str"
    try:
        kind = Kind(text)
    except ValueError:
        known = ", ".join(k.value for k in Kind if k is not Kind.ANY)
        raise NotebookDefinitionError(file, f"unsupported type {annotation!r} (use {known}, list[…], Optional[…])", name) from None
    if kind is Kind.ANY:
        raise NotebookDefinitionError(file, f"unsupported type {annotation!r}", name)
    return kind, is_list, nullable


def _infer_kind(default: Any, has_default: bool) -> tuple[Kind, bool, bool]:
    if not has_default or default is None:
        return Kind.ANY, False, True
    for python_type, kind in ((bool, Kind.BOOL), (int, Kind.INT), (float, Kind.FLOAT), (str, Kind.STR)):
        if isinstance(default, python_type):
            return kind, False, False
    if isinstance(default, list):
        if all(isinstance(item, str) for item in default):
            return Kind.STR, True, False
        return Kind.ANY, True, False
    return Kind.ANY, False, False


def validate_request(
    notebook: str, specs: tuple[ParameterSpec, ...], parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """Check a request's parameters against the declared ones; returns the normalised values.

    Names are checked first: papermill writes parameter names into code unescaped, so a name
    must be an identifier declared by the notebook.
    """
    by_name = {spec.name: spec for spec in specs}
    return {name: _declared(notebook, by_name, name).validate(value, notebook) for name, value in parameters.items()}


def _declared(notebook: str, by_name: Mapping[str, ParameterSpec], name: Any) -> ParameterSpec:
    """The declared parameter ``name``; a name that is not an identifier is refused first."""
    if not isinstance(name, str) or not name.isidentifier():
        raise NotebookParameterError(notebook, str(name), "a parameter name must be a Python identifier")
    spec = by_name.get(name)
    if spec is None:
        raise NotebookParameterError(notebook, name, f"unknown parameter (declared: {', '.join(by_name) or 'none'})")
    return spec


def parse_text_request(
    notebook: str, specs: tuple[ParameterSpec, ...], pairs: list[tuple[str, str]]
) -> dict[str, Any]:
    """Parameters typed as ``(name, text)`` pairs (command line) converted and checked.

    A list parameter named more than once collects the values in order.
    """
    by_name = {spec.name: spec for spec in specs}
    values: dict[str, Any] = {}
    for name, text in pairs:
        spec = _declared(notebook, by_name, name)
        value = spec.parse_text(text, notebook)
        if spec.is_list and isinstance(values.get(name), list) and isinstance(value, list):
            values[name] = values[name] + value
        else:
            values[name] = value
    return values
