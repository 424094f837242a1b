"""Values shared by the climate products: rules, elements, thresholds, QC policy, results.

Everything here is a frozen dataclass or an enum, validated when built, so a product function
can trust its arguments and a bad one fails early with a message that names the parameter.
The domain's words come from :mod:`opencdms_kernel.vocabulary` (re-exported here where product
code has always found them): :class:`Period`, the elements of ``db/elements.csv`` and what
their cell methods say, :class:`QcStatus`; the parameter error is the kernel's
(:class:`~opencdms_kernel.errors.ParameterError`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa

from opencdms_kernel.errors import ParameterError, UnknownReferenceError
from opencdms_kernel.vocabulary import Period as Period
from opencdms_kernel.vocabulary import QcStatus, elements

# --------------------------------------------------------------------------- errors

# The kernel's one parameter error, under the name product code and its callers have used: a
# bad product parameter and a bad month or period (from the vocabulary) are the same error.
ProductParameterError = ParameterError


class ProductReferenceError(UnknownReferenceError):
    """A product names a station or element that does not exist (``parameter``, ``value``)."""

    def __init__(self, parameter: str, value: str, reason: str) -> None:
        self.parameter = parameter
        self.value = value
        super().__init__(f"parameter '{parameter}': {reason}")


# --------------------------------------------------------------------------- published figures


def figure(value: float | Decimal, decimals: int) -> Decimal:
    """A number as every product publishes it: ``decimals`` places, half away from zero.

    On the decimal value (``repr`` of the float: 27.85 stays 27.85, not 27.8499…), after
    absorbing the binary error of computed values at 1e-9 (a mean of 835.5 / 30 is
    27.849999999999998 as a float, and is 27.85), so that CLIMAT, BUFR, DAYCLI and the reports
    round the same value to the same last digit (WMO practice rounds half away from zero).
    """
    exact = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    settled = exact.quantize(Decimal("1e-9"), ROUND_HALF_EVEN) if exact.is_finite() and exact.as_tuple().exponent < -9 else exact
    rounded = settled.quantize(Decimal(1).scaleb(-decimals), ROUND_HALF_UP)
    return rounded.copy_abs() if rounded.is_zero() else rounded  # -0.04 is 0.0, not -0.0


# --------------------------------------------------------------------------- kinds and elements


class ProductKind(StrEnum):
    """The products this package computes; the value is the folder under ``products/``."""

    DAILY = "daily"
    MONTHLY = "monthly"
    NORMALS = "normals"
    INDICES = "indices"


class Statistic(StrEnum):
    """How the days of a month are summarised for an element: a mean or a total."""

    MEAN = "mean"
    TOTAL = "total"


# The element codes of the vocabulary (``db/elements.csv``), as an enum whose members are the
# codes (``Element.TMAX == "TMAX"``): built from the CSV, so a row added there is an element of
# every product; what an element is (units, cell method, range) is the vocabulary's Element.
Element = StrEnum("Element", [(code, code) for code in elements()], module=__name__)  # type: ignore[misc]
Element.__doc__ = "The element codes of the datastore's catalogue (``db/elements.csv``)."


def _elements_whose(method: str) -> frozenset[Element]:
    return frozenset(Element(code) for code, element in elements().items() if element.time_method == method)


# Elements whose days add up (cell method "time: sum"); every other summarised element is
# averaged.  An angle (wind direction, units "degree") has no meaningful arithmetic mean (the
# mean of 350° and 10° is not 180°), so it has no summary here.
TOTAL_ELEMENTS = _elements_whose("sum")
UNSUMMARISED_ELEMENTS = frozenset(Element(code) for code, element in elements().items() if element.is_angle)


# The element's cell method says which summary of its sub-daily values is its daily value: the
# highest of hourly maxima, the lowest of minima, the sum of amounts; the mean of everything
# else (means and point values).
MAXIMUM_ELEMENTS = _elements_whose("maximum")
MINIMUM_ELEMENTS = _elements_whose("minimum")


def statistic_of(element: str) -> Statistic:
    """The monthly statistic of ``element`` (a validated code)."""
    return Statistic.TOTAL if element in TOTAL_ELEMENTS else Statistic.MEAN


def daily_column_of(element: str) -> str:
    """The column of a daily summary (``mean``, ``maximum``, ``minimum``, ``total``) that is
    ``element``'s daily value when the day is made from sub-daily values."""
    if element in TOTAL_ELEMENTS:
        return "total"
    if element in MAXIMUM_ELEMENTS:
        return "maximum"
    if element in MINIMUM_ELEMENTS:
        return "minimum"
    return "mean"


def check_elements(elements: Iterable[str] | str, parameter: str = "elements") -> tuple[Element, ...]:
    """Known, summarisable element codes, in the order given, without repeats."""
    if isinstance(elements, str):
        elements = (elements,)
    checked: list[Element] = []
    for code in elements:
        if not isinstance(code, str):
            raise ProductParameterError(parameter, f"an element code must be text, not {code!r}")
        try:
            element = Element(code.strip().upper())
        except ValueError:
            known = ", ".join(e.value for e in Element)
            raise ProductReferenceError(parameter, code, f"unknown element '{code}' (known: {known})") from None
        if element in UNSUMMARISED_ELEMENTS:
            raise ProductParameterError(parameter, f"element '{code}' is an angle and cannot be averaged")
        if element not in checked:
            checked.append(element)
    if not checked:
        raise ProductParameterError(parameter, "no element given")
    return tuple(checked)


# --------------------------------------------------------------------------- period and rules


def _whole_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


STANDARD_NORMAL_PERIOD = Period(1991, 2020)


def check_period(period: object, parameter: str = "period") -> Period:
    """``period`` if it is a :class:`Period`, text such as ``"1991-2020"`` parsed as one
    (:meth:`Period.parse`), else an error naming ``parameter``."""
    if isinstance(period, Period):
        return period
    if isinstance(period, str):
        return Period.parse(period, parameter)
    raise ProductParameterError(parameter, f"expected a Period(start_year, end_year) or text like 1991-2020, not {period!r}")


@dataclass(frozen=True)
class CompletenessRule:
    """When a month's (or day's) values are complete enough to summarise.

    A mean (and the extremes) needs no more than ``max_missing`` missing values in total and no
    more than ``max_consecutive_missing`` in a row; with ``totals_require_complete`` a total
    (and a count of days) needs every value, as a missing day of rain is not a dry day.
    Default: the WMO-No. 1203 "3/5 rule" for monthly values from daily ones.
    """

    max_missing: int = 5
    max_consecutive_missing: int = 3
    totals_require_complete: bool = True

    def __post_init__(self) -> None:
        for name in ("max_missing", "max_consecutive_missing"):
            value = getattr(self, name)
            if not _whole_number(value) or value < 0:
                raise ProductParameterError(f"rule.{name}", f"must be a whole number >= 0, not {value!r}")
        if not isinstance(self.totals_require_complete, bool):
            raise ProductParameterError("rule.totals_require_complete", "must be true or false")

    def allows(self, present: Sequence[bool]) -> bool:
        """True when the presence flags (one per expected value, in order) meet the rule.

        A convenience for one period; the products judge many at once with
        :func:`opencdms_kernel.products.completeness.judge`, which this calls.
        """
        from opencdms_kernel.products.completeness import judge_presence  # noqa: PLC0415 - a cycle otherwise

        return judge_presence(self, present)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The WMO-No. 1203 rule for monthly values from daily values.
WMO_MONTHLY_RULE = CompletenessRule()
# Days from hourly (or finer) values: a project choice, not a WMO rule (none is set for this):
# a quarter of the slots may be missing (6 of 24 hours), no more than 3 in a row; a total
# needs every slot.
SUB_DAILY_RULE = CompletenessRule(max_missing=6, max_consecutive_missing=3, totals_require_complete=True)


@dataclass(frozen=True)
class NormalsRule:
    """When enough years are present for a normal (WMO-No. 1203: 80 %, at most 3 in a row missing)."""

    min_fraction: float = 0.8
    max_consecutive_missing: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.min_fraction, bool) or not isinstance(self.min_fraction, (int, float)) or not 0 < self.min_fraction <= 1:
            raise ProductParameterError("normals_rule.min_fraction", f"must be in (0, 1], not {self.min_fraction!r}")
        if not _whole_number(self.max_consecutive_missing) or self.max_consecutive_missing < 0:
            raise ProductParameterError(
                "normals_rule.max_consecutive_missing", f"must be a whole number >= 0, not {self.max_consecutive_missing!r}"
            )

    def min_years(self, years: int) -> int:
        """Years needed out of ``years`` (80 % of 30 is 24); rounding up, as "at least" says."""
        return math.ceil(self.min_fraction * years - 1e-9)

    def allows(self, present: Sequence[bool]) -> bool:
        """True when the years' presence flags (one per year of the period) meet the rule."""
        from opencdms_kernel.products.completeness import judge_years_presence  # noqa: PLC0415 - a cycle otherwise

        return judge_years_presence(self, present)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Comparison(StrEnum):
    """A comparison of a day's value with a threshold (the value is the SQL operator)."""

    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"

    @property
    def word(self) -> str:
        return {">=": "ge", ">": "gt", "<=": "le", "<": "lt"}[self.value]


@dataclass(frozen=True)
class Threshold:
    """Days of ``element`` whose value compares with ``value`` (e.g. TMAX >= 25 °C)."""

    element: str
    comparison: Comparison
    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "element", check_elements(self.element, "thresholds")[0])
        object.__setattr__(self, "comparison", Comparison(self.comparison))
        if isinstance(self.value, bool) or not isinstance(self.value, (int, float)) or not math.isfinite(self.value):
            raise ProductParameterError("thresholds", f"threshold value must be a finite number, not {self.value!r}")
        object.__setattr__(self, "value", float(self.value))

    @property
    def name(self) -> str:
        """Column / statistic name, e.g. ``days_TMAX_ge_25``."""
        number = f"{self.value:g}".replace("-", "m").replace(".", "p")
        return f"days_{self.element.value}_{self.comparison.word}_{number}"

    def describe(self) -> str:
        return f"days with {self.element.value} {self.comparison.value} {self.value:g}"


DEFAULT_THRESHOLDS: tuple[Threshold, ...] = (
    Threshold("TMAX", Comparison.GE, 25.0),
    Threshold("TMAX", Comparison.GE, 30.0),
    Threshold("PRCP", Comparison.GE, 1.0),
    Threshold("PRCP", Comparison.GE, 10.0),
)


# --------------------------------------------------------------------------- stations and QC

# The values of ``qc_status``, in the archive's order.
QC_STATUSES: tuple[str, ...] = tuple(s.value for s in QcStatus)


@dataclass(frozen=True)
class Station:
    """A station as the products see it: its WIGOS id and the IANA time zone of its day."""

    wigos_id: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        if not isinstance(self.wigos_id, str) or not self.wigos_id.strip():
            raise ProductParameterError("stations", f"a station must be a WIGOS id, not {self.wigos_id!r}")
        object.__setattr__(self, "timezone", check_timezone(self.timezone, self.wigos_id))


def check_timezone(zone: str, wigos_id: str) -> str:
    """The zone's canonical spelling; an unknown zone fails naming the station."""
    if not isinstance(zone, str) or not zone:
        raise ProductParameterError("timezones", f"station '{wigos_id}': time zone must be an IANA name like Africa/Nairobi")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ProductParameterError("timezones", f"station '{wigos_id}': unknown time zone '{zone}'") from None
    return zone


def is_utc(zone: str) -> bool:
    return zone.upper() in ("UTC", "ETC/UTC", "GMT", "ETC/GMT", "Z", "UCT", "ETC/UCT", "ZULU", "ETC/ZULU", "UNIVERSAL")


@dataclass(frozen=True)
class QcPolicy:
    """Which values every product counts, by their QC status (``qc_status`` of the archive).

    ``counted`` lists the statuses whose values count; the others are *excluded* (treated as
    missing).  The default, :data:`DEFAULT_QC_POLICY`, counts every value nobody has rejected:
    not yet checked (``none``), ``passed`` and ``suspect`` — a suspect value counts until a
    reviewer decides on it — and excludes ``failed``, which is what a reviewer's reject (and a
    check that found the value impossible) makes of a value.  Nothing is left out silently:
    every product says, per station-month (per day, year or normal where that is its unit),
    how many suspect values it used and how many values it excluded.
    """

    counted: tuple[QcStatus, ...] = (QcStatus.NONE, QcStatus.PASSED, QcStatus.SUSPECT)

    def __post_init__(self) -> None:
        counted = (self.counted,) if isinstance(self.counted, str) else tuple(self.counted)
        statuses = tuple(dict.fromkeys(counted))
        for status in statuses:
            if status not in QC_STATUSES:
                raise ProductParameterError("qc", f"unknown QC status {status!r} (known: {', '.join(QC_STATUSES)})")
        if not statuses:
            raise ProductParameterError("qc", "at least one QC status must count, or every value is missing")
        # In the archive's order, so equal policies compare (and hash into product names) equal.
        object.__setattr__(self, "counted", tuple(s for s in QcStatus if s in statuses))

    @property
    def excluded(self) -> tuple[QcStatus, ...]:
        """The statuses whose values do not count."""
        return tuple(s for s in QcStatus if s not in self.counted)

    def counts(self, status: str | None) -> bool:
        """Whether a value of this QC status counts (a missing status is 'none')."""
        return (status or QcStatus.NONE) in self.counted

    def as_dict(self) -> dict[str, Any]:
        return {"counted": [s.value for s in self.counted], "excluded": [s.value for s in self.excluded]}

    def describe(self) -> str:
        excluded = ", ".join(self.excluded) or "nothing"
        return f"values {', '.join(self.counted)} count; {excluded} excluded"


DEFAULT_QC_POLICY = QcPolicy()
# Every value received, whatever its status: for data availability, not for climate values.
EVERY_VALUE = QcPolicy(QC_STATUSES)


def check_qc_policy(qc: object) -> QcPolicy:
    """``qc`` if it is a :class:`QcPolicy`, else an error naming the parameter."""
    if not isinstance(qc, QcPolicy):
        raise ProductParameterError("qc", f"expected a QcPolicy, not {qc!r}")
    return qc


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, eq=False)
class Product:
    """A computed product: its table plus what is needed to describe it in its metadata."""

    kind: ProductKind
    table: pa.Table
    period: Period
    parameters: Mapping[str, Any]
    rules: Mapping[str, Any]
    note: str
    description: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    qc: Mapping[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return self.table.num_rows

    @property
    def empty(self) -> bool:
        return self.table.num_rows == 0

    def metadata(self) -> dict[str, Any]:
        """The JSON-ready description written beside the Parquet file."""
        return {
            "kind": self.kind.value,
            "description": self.description,
            "period": {"start_year": self.period.start_year, "end_year": self.period.end_year},
            "parameters": dict(self.parameters),
            "rules": dict(self.rules),
            "rows": self.rows,
            "empty": self.empty,
            "note": self.note,
            "qc": dict(self.qc),
            "columns": [{"name": f.name, "type": str(f.type)} for f in self.table.schema],
            **dict(self.extra),
        }
