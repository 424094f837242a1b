"""Climatological standard normals (opencdms_kernel.products.normals) against plain pandas.

A 30-year archive of four stations is written to Parquet in tmp_path with chosen years
failing the monthly rule, so that the normals' rule of years (>= 80 % of years, <= 3
consecutive missing) is met or missed exactly at its edges.  The reference computes monthly
values, then normals, day by day and year by year, sharing no code with the product.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timezone

import fsspec
import numpy as np
import pandas as pd
import pytest

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import (
    CompletenessRule,
    NormalsRule,
    NormalsSpec,
    Period,
    ProductParameterError,
    Threshold,
    climate_normals,
)
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive

A, B, C, D = (f"0-20000-0-6100{i}" for i in range(1, 5))
PERIOD = Period(1991, 2020)
YEARS = list(range(1991, 2021))
THRESHOLDS = (Threshold("TMAX", ">=", 30.0), Threshold("PRCP", ">=", 10.0))
SPEC = NormalsSpec(thresholds=THRESHOLDS)

# (station, month) -> years in which that month fails the monthly rule for every element.
FAILING = {
    (A, 1): {1993, 1997, 2001, 2005, 2009, 2013},        # 24 of 30 present: a normal
    (B, 1): {1992, 1995, 1999, 2003, 2008, 2012, 2016},  # 23 of 30: none
    (C, 1): {2000, 2001, 2002},                          # 3 in a row missing: a normal
    (D, 1): {2000, 2001, 2002, 2003},                    # 4 in a row: none
    (A, 7): {1991, 1992, 1993},                          # 3 at the start: a normal
    (B, 7): {1991, 1992, 1993, 1994},                    # 4 at the start: none
    (C, 7): {2017, 2018, 2019, 2020},                    # 4 at the end: none
}
MISSING_YEAR = (D, 2010)  # no data at all


def build_daily() -> pd.DataFrame:
    """Daily TMAX, TMIN, PRCP; a failing month loses 6 days (odd years) or 4 in a row (even)."""
    rng = np.random.default_rng(1991)
    days = pd.date_range("1991-01-01", "2020-12-31", freq="D")
    frames = []
    for number, station in enumerate((A, B, C, D)):
        for element in ("TMAX", "TMIN", "PRCP"):
            if element == "PRCP":
                values = np.where(rng.random(days.size) < 0.3, np.round(rng.gamma(0.8, 9.0, days.size), 1), 0.0)
            else:
                base = 29.0 if element == "TMAX" else 16.0
                values = np.round(base + number + 3 * np.cos(2 * np.pi * days.day_of_year / 365.25) + rng.normal(0, 2, days.size), 1)
            keep = np.ones(days.size, dtype=bool)
            for (failing_station, month), years in FAILING.items():
                if failing_station != station:
                    continue
                for year in years:
                    lost = [3, 8, 13, 18, 23, 28] if year % 2 else [10, 11, 12, 13]
                    keep &= ~((days.year == year) & (days.month == month) & days.day.isin(lost))
            if station == MISSING_YEAR[0]:
                keep &= days.year != MISSING_YEAR[1]
            frames.append(pd.DataFrame({"wigos_id": station, "element": element, "day": days.date[keep], "value": values[keep]}))
    return pd.concat(frames, ignore_index=True)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    daily = build_daily()
    folder = tmp_path_factory.mktemp("normals") / "bucket"
    times = [datetime(d.year, d.month, d.day, tzinfo=timezone.utc) for d in daily["day"]]
    write_archive(folder, observation_table({
        "wigos_id": daily["wigos_id"].tolist(), "element": daily["element"].tolist(),
        "phenomenon_time": times, "value": daily["value"].to_numpy(),
    }))
    return daily, connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file"))


# --------------------------------------------------------------------------- reference (plain)


def longest_run(flags) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def reference_monthly(daily: pd.DataFrame, rule: CompletenessRule) -> pd.DataFrame:
    records = []
    for (station, element), group in daily.groupby(["wigos_id", "element"]):
        by_day = dict(zip(group["day"], group["value"]))
        for year in YEARS:
            for month in range(1, 13):
                days = [date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]
                present = [d for d in days if d in by_day]
                missing = len(days) - len(present)
                meets = missing <= rule.max_missing and longest_run(d not in by_day for d in days) <= rule.max_consecutive_missing
                complete = missing == 0
                values = [by_day[d] for d in present]
                record = {"wigos_id": station, "element": element, "year": year, "month": month,
                          "mean": np.mean(values) if meets else None,
                          "total": sum(values) if complete else None,
                          "highest": None, "highest_date": None, "lowest": None, "lowest_date": None}
                if meets:
                    record["highest"] = max(values)
                    record["highest_date"] = max(d for d in present if by_day[d] == record["highest"])
                    record["lowest"] = min(values)
                    record["lowest_date"] = max(d for d in present if by_day[d] == record["lowest"])
                for threshold in THRESHOLDS:
                    record[threshold.name] = (sum(v >= threshold.value for v in values)
                                              if complete and element == threshold.element else None)
                records.append(record)
    return pd.DataFrame(records)


def reference_normals(daily: pd.DataFrame, rule: NormalsRule = NormalsRule(), monthly_rule: CompletenessRule = CompletenessRule()) -> pd.DataFrame:
    monthly = reference_monthly(daily, monthly_rule)
    wanted = [("TMAX", "mean", "mean"), ("TMIN", "mean", "mean"), ("PRCP", "total", "total"),
              ("TMAX", "highest", "highest"), ("TMIN", "lowest", "lowest"), ("PRCP", "highest", "highest")]
    wanted += [(t.element.value, t.name, t.name) for t in THRESHOLDS]
    need = rule.min_years(30)
    records = []
    for station in sorted(monthly.wigos_id.unique()):
        for element, statistic, column in wanted:
            rows = monthly[(monthly.wigos_id == station) & (monthly.element == element)]
            if rows.empty:
                continue
            monthly_values = []
            for month in range(1, 13):
                by_year = {r.year: r for r in rows[rows.month == month].itertuples() if pd.notna(getattr(r, column))}
                years = len(by_year)
                gap = longest_run(y not in by_year for y in YEARS)
                meets = years >= need and gap <= rule.max_consecutive_missing
                values = [getattr(r, column) for r in by_year.values()]
                value = when = None
                if meets:
                    if statistic == "highest":
                        value = max(values)
                        when = max(r.highest_date for r in by_year.values() if r.highest == value)
                    elif statistic == "lowest":
                        value = min(values)
                        when = max(r.lowest_date for r in by_year.values() if r.lowest == value)
                    else:
                        value = float(np.mean(values))
                records.append(dict(wigos_id=station, element=element, statistic=statistic, month=month, value=value,
                                    extreme_date=when, years=years, missing_years=30 - years, longest_gap_years=gap,
                                    meets_rule=meets))
                monthly_values.append((value, when, years, gap))
            complete = all(v is not None for v, *_ in monthly_values)
            annual = when = None
            if complete:
                values = [v for v, *_ in monthly_values]
                if statistic == "highest":
                    annual = max(values)
                    when = max(w for v, w, *_ in monthly_values if v == annual)
                elif statistic == "lowest":
                    annual = min(values)
                    when = max(w for v, w, *_ in monthly_values if v == annual)
                elif statistic == "mean":
                    annual = float(np.mean(values))
                else:
                    annual = float(np.sum(values))
            records.append(dict(wigos_id=station, element=element, statistic=statistic, month=None, value=annual,
                                extreme_date=when, years=min(y for *_, y, _ in monthly_values),
                                missing_years=30 - min(y for *_, y, _ in monthly_values),
                                longest_gap_years=max(g for *_, g in monthly_values), meets_rule=complete))
    return pd.DataFrame(records)


def compare(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    keys = ["wigos_id", "element", "statistic", "month"]
    assert len(actual) == len(expected)
    actual = actual.assign(month=actual.month.astype("Int64")).sort_values(keys, na_position="last").reset_index(drop=True)
    expected = expected.assign(month=expected.month.astype("Int64")).sort_values(keys, na_position="last").reset_index(drop=True)
    for column in ("wigos_id", "element", "statistic", "month", "years", "missing_years", "longest_gap_years", "meets_rule"):
        assert actual[column].tolist() == expected[column].tolist(), column
    for i in range(len(actual)):
        a, b = actual.loc[i, "value"], expected.loc[i, "value"]
        where = actual.loc[i, keys].tolist()
        if b is None or pd.isna(b):
            assert pd.isna(a), where
        else:
            assert a == pytest.approx(b, abs=1e-9), where
        a, b = actual.loc[i, "extreme_date"], expected.loc[i, "extreme_date"]
        assert (pd.isna(a) and (b is None or pd.isna(b))) or a == b, where


# --------------------------------------------------------------------------- tests


def test_normals_equal_the_plain_computation(archive) -> None:
    daily, connection = archive
    product = climate_normals(connection, PERIOD, spec=SPEC)
    compare(product.table.to_pandas(), reference_normals(daily))
    assert product.parameters["spec"]["thresholds"] == ["days_TMAX_ge_30", "days_PRCP_ge_10"]
    assert product.rules["normals"] == {"min_fraction": 0.8, "max_consecutive_missing": 3}


def normal(table: pd.DataFrame, station: str, element: str, statistic: str, month: int | None):
    rows = table[(table.wigos_id == station) & (table.element == element) & (table.statistic == statistic)]
    return rows[rows.month.isna()].iloc[0] if month is None else rows[rows.month == month].iloc[0]


def test_the_rule_of_years_at_its_edges(archive) -> None:
    _, connection = archive
    table = climate_normals(connection, PERIOD, spec=SPEC).table.to_pandas()
    for element, statistic in (("TMAX", "mean"), ("PRCP", "total"), ("TMIN", "lowest"), ("TMAX", "days_TMAX_ge_30")):
        if statistic == "days_TMAX_ge_30" and element != "TMAX":
            continue
        a = normal(table, A, element, statistic, 1)
        assert (a.years, a.longest_gap_years, a.meets_rule) == (24, 1, True) and pd.notna(a.value)
        b = normal(table, B, element, statistic, 1)
        assert (b.years, b.meets_rule) == (23, False) and pd.isna(b.value)
        c = normal(table, C, element, statistic, 1)
        assert (c.years, c.longest_gap_years, c.meets_rule) == (27, 3, True) and pd.notna(c.value)
        d = normal(table, D, element, statistic, 1)  # 2000-2003 failing; 2010 missing as well
        assert (d.years, d.longest_gap_years, d.meets_rule) == (25, 4, False) and pd.isna(d.value)
        assert normal(table, A, element, statistic, 7).meets_rule          # 3 at the start
        assert not normal(table, B, element, statistic, 7).meets_rule      # 4 at the start
        assert not normal(table, C, element, statistic, 7).meets_rule      # 4 at the end
    # The annual value needs all twelve months.
    assert normal(table, A, "TMAX", "mean", None).meets_rule
    assert not normal(table, B, "TMAX", "mean", None).meets_rule
    assert pd.isna(normal(table, B, "TMAX", "mean", None).value)


def test_a_looser_rule_changes_the_edges(archive) -> None:
    daily, connection = archive
    rule = NormalsRule(min_fraction=0.75, max_consecutive_missing=4)
    product = climate_normals(connection, PERIOD, spec=SPEC, normals_rule=rule)
    compare(product.table.to_pandas(), reference_normals(daily, rule))
    table = product.table.to_pandas()
    assert normal(table, B, "TMAX", "mean", 1).meets_rule       # 23 >= 22.5
    assert normal(table, D, "TMAX", "mean", 1).meets_rule       # 4 in a row now allowed


def test_elements_restrict_the_spec(archive) -> None:
    _, connection = archive
    table = climate_normals(connection, PERIOD, elements="PRCP", stations=[A], spec=SPEC).table.to_pandas()
    assert set(table.element) == {"PRCP"}
    assert set(table.statistic) == {"total", "highest", "days_PRCP_ge_10"}
    assert len(table) == 3 * 13


def test_a_period_without_data_gives_an_empty_product(archive) -> None:
    _, connection = archive
    product = climate_normals(connection, Period(1961, 1990), spec=SPEC)
    assert product.empty
    assert product.note == "no data for TMAX, TMIN, TMEAN, PRCP at all stations in 1961-1990"


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"period": Period(1991, 2010)}, "period"),
        ({"elements": ["WSPD"]}, "elements"),
        ({"elements": ["NOPE"]}, "elements"),
        ({"stations": ["0-0-0-missing"]}, "stations"),
        ({"normals_rule": NormalsRule(min_fraction=0.8, max_consecutive_missing=3), "monthly_rule": "3/5"}, "monthly_rule"),
    ],
)
def test_bad_parameters_are_named(archive, kwargs, parameter) -> None:
    _, connection = archive
    with pytest.raises(Exception) as raised:
        climate_normals(connection, **kwargs)
    assert getattr(raised.value, "parameter", None) == parameter, str(raised.value)


def test_rule_values_are_checked() -> None:
    with pytest.raises(ProductParameterError, match="min_fraction"):
        NormalsRule(min_fraction=1.5)
    with pytest.raises(ProductParameterError, match="spec.totals"):
        NormalsSpec(totals=("TMAX",))
    assert NormalsRule().min_years(30) == 24


def test_normals_say_how_many_suspect_values_they_used_and_how_many_they_excluded(tmp_path) -> None:
    """Each normal sums its months' counts over the years; the annual normal over the months."""
    days = pd.date_range("1991-01-01", "2020-12-31", freq="D")
    status = np.full(days.size, "passed", dtype=object)
    january = (days.month == 1) & (days.day == 15)
    status[january & (days.year % 2 == 0)] = "suspect"   # suspect in even years: they count
    status[january & (days.year % 3 == 0)] = "failed"    # failed in years divisible by 3 (over suspect ones too)
    july = (days.month == 7) & (days.day == 4) & (days.year < 1996)
    status[july] = "failed"
    write_archive(tmp_path / "bucket", observation_table({
        "wigos_id": [A] * days.size, "element": ["TMAX"] * days.size,
        "phenomenon_time": [datetime(d.year, d.month, d.day, tzinfo=timezone.utc) for d in days],
        "value": np.round(25 + np.sin(np.arange(days.size)), 1), "qc_status": status,
    }))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(tmp_path / "bucket"), protocol="file"))
    product = climate_normals(connection, PERIOD, spec=NormalsSpec(means=("TMAX",), totals=(), extremes=(), thresholds=()))
    table = product.table.to_pandas()
    suspect = int((status[january] == "suspect").sum())
    failed_january = int((status[january] == "failed").sum())
    january_normal = normal(table, A, "TMAX", "mean", 1)
    assert (january_normal.suspect_values, january_normal.excluded_values) == (suspect, failed_january)
    assert normal(table, A, "TMAX", "mean", 7).excluded_values == 5
    annual = normal(table, A, "TMAX", "mean", None)
    assert (annual.suspect_values, annual.excluded_values) == (suspect, failed_january + 5)
    assert product.qc["suspect_values_used"] == suspect and product.qc["values_excluded"] == failed_january + 5
    assert f"{suspect} suspect values used, {failed_january + 5} values excluded by QC" in product.note
