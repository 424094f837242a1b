"""The vocabulary's month, period, QC status and elements: one definition each, used everywhere.

Months and periods are checked exhaustively where the domain is small (every four-digit year,
every two-digit month) and on a generated corpus of near-miss texts, against a reference
reading written here independently of the parser.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel, ValidationError

from opencdms_kernel import vocabulary
from opencdms_kernel.errors import OpenCDMSError, ParameterError
from opencdms_kernel.vocabulary import (
    MAX_YEAR,
    MIN_YEAR,
    MONTH_PATTERN,
    PERIOD_PATTERN,
    ElementInfo,
    FinalFlag,
    Month,
    Period,
    QcStatus,
    check_year,
    elements,
)

MIGRATIONS = Path(vocabulary.__file__).parent / "db" / "migrations" / "versions"


def refused(parameter: str, call) -> ParameterError:  # type: ignore[no-untyped-def]
    """The ParameterError ``call`` raises; it names ``parameter`` in its message too."""
    with pytest.raises(ParameterError) as caught:
        call()
    assert caught.value.parameter == parameter
    assert f"'{parameter}'" in str(caught.value)
    return caught.value


# --------------------------------------------------------------------------- months


@pytest.mark.parametrize(
    "text",
    ["2020-13", "2020-00", "0000-01", "99999-01", "2020-1", "2020/01", "2020-001", "202001", "2020-01-01",
     "20-01", "", "   ", "2020 -01", "2020- 01", "1599-12", "2201-01", "２０２０-01", "2020-0１", "-2020-01",
     "2020-01\x00", "2020–01"],
)
def test_a_month_that_is_not_one_is_refused_naming_the_parameter(text: str) -> None:
    error = refused("report_month", lambda: Month.parse(text, "report_month"))
    assert isinstance(error, OpenCDMSError) and isinstance(error, ValueError)
    assert error.http_status == 400 and error.exit_code == 2


def test_a_month_is_read_with_blanks_around_it_and_written_canonically() -> None:
    assert Month.parse(" 2020-01 ") == Month(2020, 1)
    assert Month.parse("\t1991-12\n") == Month(1991, 12)
    assert str(Month.parse(" 2020-07 ")) == "2020-07"


def test_a_one_digit_month_says_how_to_write_it() -> None:
    assert "two digits" in str(refused("month", lambda: Month.parse("2020-1")))


@pytest.mark.parametrize("value", [None, 202001, 2020.01, b"2020-01", ["2020-01"]])
def test_a_month_that_is_not_text_is_refused(value: object) -> None:
    refused("month", lambda: Month.parse(value))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("year", "month", "parameter"),
    [(2020, 13, "month.month"), (2020, 0, "month.month"), (0, 1, "month.year"), (99999, 1, "month.year"),
     (True, 1, "month.year"), (2020, True, "month.month"), (2020.0, 1, "month.year"), ("2020", 1, "month.year"),
     (MIN_YEAR - 1, 1, "month.year"), (MAX_YEAR + 1, 1, "month.year")],
)
def test_a_month_built_from_code_checks_its_parts(year: object, month: object, parameter: str) -> None:
    refused(parameter, lambda: Month(year, month))  # type: ignore[arg-type]


def test_every_month_of_the_year_range_round_trips_with_its_days() -> None:
    for year in range(MIN_YEAR, MAX_YEAR + 1):
        for number in range(1, 13):
            month = Month(year, number)
            assert Month.parse(str(month)) == month
            days = calendar.monthrange(year, number)[1]
            assert (month.first_day, month.last_day, month.days) == (date(year, number, 1), date(year, number, days), days)


def test_every_four_digit_year_and_two_digit_month_the_pattern_and_the_parser_agree() -> None:
    """The JSON schema's pattern (published to API clients and notebook forms) accepts
    exactly the canonical texts the parser accepts."""
    pattern = re.compile(MONTH_PATTERN)
    for year in range(10000):
        for number in range(100):
            text = f"{year:04d}-{number:02d}"
            expected = MIN_YEAR <= year <= MAX_YEAR and 1 <= number <= 12
            assert bool(pattern.fullmatch(text)) == expected, text
            if year % 97 == 0 or MIN_YEAR - 2 <= year <= MIN_YEAR + 1 or MAX_YEAR - 1 <= year <= MAX_YEAR + 2:
                try:
                    Month.parse(text)
                except ParameterError:
                    assert not expected, text
                else:
                    assert expected, text


def _reference_month(text: str) -> tuple[int, int] | None:
    """An independent reading of a month: blanks around, four ASCII digits, '-', two digits."""
    core = text.strip()
    if len(core) != 7 or core[4] != "-" or not all(c in "0123456789" for c in core[:4] + core[5:]):
        return None
    year, number = int(core[:4]), int(core[5:])
    return (year, number) if MIN_YEAR <= year <= MAX_YEAR and 1 <= number <= 12 else None


def _near_misses(rng: np.random.Generator, alphabet: str, count: int, max_length: int) -> list[str]:
    letters = np.array(list(alphabet))
    return ["".join(rng.choice(letters, int(rng.integers(0, max_length + 1)))) for _ in range(count)]


def test_a_month_is_read_as_an_independent_reading_reads_it() -> None:
    rng = np.random.default_rng(20240301)
    texts = _near_misses(rng, "0123456789-/ ", 20000, 10)
    # Mutations of valid months: the likeliest mistakes.
    for year, number in zip(rng.integers(1500, 2300, 5000), rng.integers(0, 14, 5000)):
        good = f"{year:04d}-{number:02d}"
        at = int(rng.integers(0, len(good)))
        texts += [good, good[:at] + good[at + 1:], good[:at] + " " + good[at:], good.replace("-", "/"), f" {good}\t"]
    for text in texts:
        expected = _reference_month(text)
        try:
            month = Month.parse(text)
        except ParameterError as exc:
            assert expected is None, text
            assert exc.parameter == "month"
        else:
            assert (month.year, month.month) == expected, text
            assert str(month) == text.strip()


def test_a_month_is_frozen_hashable_and_ordered() -> None:
    month = Month(2020, 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        month.year = 2021  # type: ignore[misc]
    assert {month, Month.parse("2020-07")} == {month}
    assert sorted([Month(2021, 1), Month(2020, 12), Month(2020, 2)]) == [Month(2020, 2), Month(2020, 12), Month(2021, 1)]


# --------------------------------------------------------------------------- periods


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1991-2020", Period(1991, 2020)), ("2020", Period(2020, 2020)), (" 1991 - 2020 ", Period(1991, 2020)),
     ("1991/2020", Period(1991, 2020)), ("1991–2020", Period(1991, 2020)), ("2020-2020", Period(2020, 2020)),
     (f"{MIN_YEAR}-{MAX_YEAR}", Period(MIN_YEAR, MAX_YEAR))],
)
def test_a_period_is_read(text: str, expected: Period) -> None:
    assert Period.parse(text) == expected
    assert Period.parse(str(expected)) == expected


@pytest.mark.parametrize(
    "text",
    ["2020-1991", "1991-20", "91-2020", "1991-2020-2030", "0000", "99999", "1991--2020", "1991 2020",
     "1991-", "-2020", "", "x", "1599-1600", "2200-2201", "1991..2020", "１９９１-2020", "2020-01"],
)
def test_a_period_that_is_not_one_is_refused_naming_the_parameter(text: str) -> None:
    refused("normals_period", lambda: Period.parse(text, "normals_period"))


def test_a_reversed_period_says_so() -> None:
    assert "after end year" in str(refused("period", lambda: Period.parse("2020-1991")))
    assert "after end year" in str(refused("period", lambda: Period(2020, 1991)))


def test_a_period_built_from_code_checks_its_years() -> None:
    refused("period.start_year", lambda: Period(1500, 2000))
    refused("period.end_year", lambda: Period(2000, 3000))
    refused("period.start_year", lambda: Period(True, 2000))  # type: ignore[arg-type]
    refused("period.end_year", lambda: Period(2000, 2000.0))  # type: ignore[arg-type]


def test_a_period_knows_its_days_and_years() -> None:
    period = Period.parse("1991-2020")
    assert (period.first_day, period.last_day, period.years, str(period)) == (
        date(1991, 1, 1), date(2020, 12, 31), 30, "1991-2020")
    assert Period(2020, 2020).years == 1


def test_every_four_digit_pair_the_period_pattern_and_the_parser_agree_but_for_order() -> None:
    pattern = re.compile(PERIOD_PATTERN)
    for year in range(0, 10000, 7):
        single = f"{year:04d}"
        inside = MIN_YEAR <= year <= MAX_YEAR
        assert bool(pattern.fullmatch(single)) == inside
        for other in (MIN_YEAR - 1, MIN_YEAR, 2020, MAX_YEAR, MAX_YEAR + 1):
            text = f"{year:04d}-{other:04d}"
            both = inside and MIN_YEAR <= other <= MAX_YEAR
            assert bool(pattern.fullmatch(text)) == both, text
            try:
                Period.parse(text)
            except ParameterError:
                assert not both or year > other, text
            else:
                assert both and year <= other, text


def test_a_year_outside_the_range_is_refused() -> None:
    assert check_year(MIN_YEAR) == MIN_YEAR and check_year(MAX_YEAR) == MAX_YEAR
    refused("first_year", lambda: check_year(MIN_YEAR - 1, "first_year"))


# --------------------------------------------------------------------------- in pydantic models


class Request(BaseModel):
    month: Month
    normals: Period | None = None


def test_month_and_period_are_pydantic_fields_read_and_written_as_text() -> None:
    request = Request(month="2020-07", normals="1991-2020")  # type: ignore[arg-type]
    assert (request.month, request.normals) == (Month(2020, 7), Period(1991, 2020))
    assert json.loads(request.model_dump_json()) == {"month": "2020-07", "normals": "1991-2020"}
    assert Request.model_validate_json(request.model_dump_json()) == request
    assert Request(month=Month(2020, 7)).month == Month(2020, 7)
    assert Request.model_validate({"month": " 2020-07 "}).month == Month(2020, 7)


def test_a_bad_month_in_a_model_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        Request(month="2020-13")  # type: ignore[arg-type]
    assert "parameter 'month'" in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        Request(month="2020-07", normals="2020-1991")  # type: ignore[arg-type]
    assert "parameter 'normals'" in str(caught.value)
    with pytest.raises(ValidationError):
        Request(month=202007)  # type: ignore[arg-type]


def test_the_json_schema_publishes_the_canonical_patterns() -> None:
    properties = Request.model_json_schema()["properties"]
    assert properties["month"]["pattern"] == MONTH_PATTERN and properties["month"]["type"] == "string"
    assert {"type": "string", "pattern": PERIOD_PATTERN, "examples": ["1991-2020"]} in properties["normals"]["anyOf"]


# --------------------------------------------------------------------------- one of each, everywhere


def test_the_kernel_speaks_one_month_one_period_and_one_parameter_error() -> None:
    from opencdms_kernel import cli
    from opencdms_kernel.products import Period as ProductPeriod
    from opencdms_kernel.products import ProductParameterError
    from opencdms_kernel.products.climat import check_year_month

    assert ProductPeriod is Period and ProductParameterError is ParameterError
    assert cli._year_month(" 2020-07 ") == (2020, 7)
    for text in ("2020-7", "2020-13", "0000-01", "2020/07"):
        refused("month", lambda text=text: cli._year_month(text))
    assert check_year_month(2024, 3) == (2024, 3)
    refused("year", lambda: check_year_month(99999, 3))
    refused("month", lambda: check_year_month(2024, 13))


def test_one_qc_status_and_final_flag_for_every_layer() -> None:
    from opencdms_kernel import archive, qc
    from opencdms_kernel.products.model import QC_STATUSES, QcPolicy

    assert qc.QcStatus is QcStatus and qc.FinalFlag is FinalFlag
    # The archive's wire codes are the enum's order.
    assert archive.QC_STATUSES == QC_STATUSES == tuple(s.value for s in QcStatus)
    initial = (MIGRATIONS / "0001_initial.py").read_text()
    allowed = re.search(r"qc_status IN \(([^)]*)\)", initial).group(1)  # type: ignore[union-attr]
    assert [v.strip(" '") for v in allowed.split(",")] == [s.value for s in QcStatus]
    derived = (MIGRATIONS / "0002_quality_control.py").read_text()
    final_flag_of = derived[derived.index("qc_final_flag_of"):]
    assert all(f"'{flag.value}'" in final_flag_of for flag in FinalFlag)
    assert qc.Severity.FAILED.status is QcStatus.FAILED and qc.Severity.SUSPECT.status is QcStatus.SUSPECT
    policy = QcPolicy(("passed", "none"))
    assert policy.counted == (QcStatus.NONE, QcStatus.PASSED) and policy.excluded == (QcStatus.SUSPECT, QcStatus.FAILED)
    assert json.dumps(policy.as_dict()) == '{"counted": ["none", "passed"], "excluded": ["suspect", "failed"]}'


def test_the_qc_condition_writes_statuses_as_sql_literals() -> None:
    from opencdms_kernel.products.model import DEFAULT_QC_POLICY
    from opencdms_kernel.products.sql import qc_condition

    assert qc_condition(DEFAULT_QC_POLICY.counted) == (
        "(o.qc_status IN ('none', 'passed', 'suspect') OR o.qc_status IS NULL)")
    assert qc_condition(["failed"], "qc_status") == "qc_status IN ('failed')"
    refused("qc", lambda: qc_condition(["rejected"]))


def test_products_take_their_elements_and_what_they_are_from_the_csv() -> None:
    from opencdms_kernel.products.model import (
        MAXIMUM_ELEMENTS, MINIMUM_ELEMENTS, TOTAL_ELEMENTS, UNSUMMARISED_ELEMENTS, Element, Statistic,
        daily_column_of, statistic_of,
    )

    assert [e.value for e in Element] == list(elements())
    # The sets the products used to spell out by hand.
    assert TOTAL_ELEMENTS == {"PRCP", "SUN", "EVAP"} and UNSUMMARISED_ELEMENTS == {"WDIR"}
    assert MAXIMUM_ELEMENTS == {"TMAX", "WGUST"} and MINIMUM_ELEMENTS == {"TMIN"}
    for code, element in elements().items():
        assert (statistic_of(code) is Statistic.TOTAL) == (element.cell_method == "time: sum")
        assert daily_column_of(code) == {"time: sum": "total", "time: maximum": "maximum",
                                         "time: minimum": "minimum"}.get(element.cell_method, "mean")


def test_a_row_added_to_the_element_csv_is_all_a_product_needs() -> None:
    """In a fresh interpreter whose vocabulary has one more element (as if db/elements.csv had
    one more row), the products know it and what its cell method makes of it."""
    script = """
import dataclasses
from opencdms_kernel import vocabulary
known = vocabulary.elements()
hail = dataclasses.replace(known["PRCP"], code="HAIL", name="Hail amount")
gust = dataclasses.replace(known["WGUST"], code="GUST3", name="3-second gust")
vocabulary.elements = lambda: known | {"HAIL": hail, "GUST3": gust}
from opencdms_kernel.products.model import Element, TOTAL_ELEMENTS, Statistic, check_elements, daily_column_of, statistic_of
assert Element.HAIL == "HAIL" and Element.HAIL in TOTAL_ELEMENTS
assert check_elements(["hail", "GUST3"]) == (Element.HAIL, Element.GUST3)
assert statistic_of("HAIL") is Statistic.TOTAL and daily_column_of("GUST3") == "maximum"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_qc_and_ingest_share_one_element_row() -> None:
    from opencdms_kernel.ingest import validate
    from opencdms_kernel.qc import frame

    assert frame.ElementInfo is validate.ElementInfo is ElementInfo
    row = ElementInfo(1, "TMAX", -90.0, 60.0)
    assert row.units is None and ElementInfo(1, "TMAX", -90.0, 60.0, units="degC").units == "degC"


def test_element_facts_come_from_the_cell_method_and_units() -> None:
    known = elements()
    assert known["PRCP"].time_method == "sum" and known["PRCP"].is_total
    assert known["TMAX"].time_method == "maximum" and not known["TMAX"].is_total
    assert known["PRES"].time_method == "point"
    assert [code for code, e in known.items() if e.is_angle] == ["WDIR"]
