"""Report pieces the notebooks share: the availability classes of a month, the QC statuses a
report marks (the vocabulary's), counting flagged values in the archive, and the parameters
the vocabulary has no word for."""

from __future__ import annotations

from datetime import date

import duckdb
import pandas as pd
import pytest

from opencdms_kernel.errors import ParameterError
from opencdms_kernel.reports import (
    AVAILABILITY_CLASSES,
    FLAG_COLOURS,
    FLAGGED_STATUSES,
    availability_class,
    availability_heatmap,
    daily_figure,
    daily_table,
    flag_counts,
    optional_list,
    parse_day,
)
from opencdms_kernel.vocabulary import Period, QcStatus

S1 = "0-20000-0-60001"


def test_each_month_gets_the_class_of_its_completeness() -> None:
    frame = pd.DataFrame(
        {
            "wigos_id": [S1] * 4,
            "element": ["PRCP"] * 4,
            "year": [2020] * 4,
            "month": [1, 2, 3, 4],
            "days_in_month": [31, 29, 31, 30],
            "value_days": [31, 25, 20, 0],
            "meets_rule": [True, True, False, None],
            "complete": [True, False, False, False],
        }
    )
    classes = [AVAILABILITY_CLASSES[i][0] for i in availability_class(frame)]
    assert classes == ["complete", "meets the 3/5 rule", "fails the 3/5 rule", "no value"]
    figure = availability_heatmap(frame, rows="element", title="one station")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert legend == ["no value (1)", "fails the 3/5 rule (1)", "meets the 3/5 rule (1)", "complete (1)"]
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["2020"]  # a January: its year


def test_a_month_axis_that_starts_mid_year_is_labelled_with_the_month() -> None:
    frame = pd.DataFrame({"element": "TMAX", "year": 2019, "month": [7, 8, 9], "value_days": 31,
                          "meets_rule": True, "complete": True})
    figure = availability_heatmap(frame, rows="element")
    assert [tick.get_text() for tick in figure.axes[0].get_xticklabels()] == ["2019-07"]


def test_the_flagged_statuses_are_the_vocabularys() -> None:
    assert FLAGGED_STATUSES == (QcStatus.SUSPECT, QcStatus.FAILED)
    assert all(isinstance(status, QcStatus) for status in (*FLAGGED_STATUSES, *FLAG_COLOURS))
    assert set(FLAG_COLOURS) == set(FLAGGED_STATUSES)  # every flagged status has its colour in plots


def test_a_days_table_and_figure_mark_the_flagged_values() -> None:
    # qc_status as the archive gives it: plain text, compared with the enum's values.
    daily = pd.DataFrame({
        "day": [date(2020, 7, 1), date(2020, 7, 2), date(2020, 7, 3), date(2020, 7, 4)],
        "element": "TMAX", "value": [20.0, 21.0, 35.0, 22.0],
        "qc_status": ["passed", "suspect", "failed", "none"], "final_flag": None,
        "counted": [True, True, False, True],
    })
    assert daily_table(daily)["TMAX"].tolist() == ["20.0", "21.0 (suspect)", "35.0 (failed, excluded)", "22.0"]
    figure = daily_figure(daily, "one station")
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert "QC suspect" in labels and "QC failed" in labels


@pytest.fixture
def archive() -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with a small ``observations`` view laid out as the archive's."""
    connection = duckdb.connect()
    rows = pd.DataFrame({
        "wigos_id": [S1] * 6 + ["0-20000-0-60002"] * 2,
        "element": ["TMAX", "TMAX", "TMAX", "TMAX", "PRCP", "PRCP", "TMAX", "TMAX"],
        "year": [2020, 2020, 2020, 2021, 2020, 2020, 2020, 2020],
        "qc_status": ["suspect", "failed", "passed", "failed", "none", "suspect", "failed", "failed"],
    })
    connection.register("observation_rows", rows)
    connection.execute("CREATE VIEW observations AS SELECT * FROM observation_rows")
    yield connection
    connection.close()


def test_flag_counts_counts_each_flagged_status(archive: duckdb.DuckDBPyConnection) -> None:
    counts = flag_counts(archive, Period(2020, 2020), S1)
    assert counts.to_dict("records") == [
        {"element": "PRCP", "values": 2, "suspect": 1, "failed": 0},
        {"element": "TMAX", "values": 3, "suspect": 1, "failed": 1},
    ]
    network = flag_counts(archive, Period(2020, 2021)).set_index("element")
    assert (network.loc["TMAX", "values"], network.loc["TMAX", "failed"]) == (6, 4)


def test_a_day_parameter_is_a_date_or_no_limit() -> None:
    assert parse_day(" 2020-01-31 ", "start") == date(2020, 1, 31)
    assert parse_day(None, "start") is None and parse_day("  ", "end") is None
    with pytest.raises(ParameterError) as raised:
        parse_day("31/01/2020", "end")
    assert str(raised.value) == "parameter 'end': '31/01/2020' is not a day like 2020-01-31"
    assert (raised.value.http_status, raised.value.exit_code) == (400, 2)


def test_a_list_parameter_left_empty_means_all() -> None:
    assert optional_list([]) is None and optional_list("") is None and optional_list(None) is None
    assert optional_list(f"{S1}, 0-20000-0-60002") == [S1, "0-20000-0-60002"]
    assert optional_list([" TMAX ", "", "PRCP"]) == ["TMAX", "PRCP"]
