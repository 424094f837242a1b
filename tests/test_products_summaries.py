"""Monthly and daily summaries (opencdms_kernel.products.summaries) against plain pandas.

Small archives are written straight to Parquet in tmp_path (the archive's hive layout), so most
tests need no PostgreSQL.  The reference computations below are deliberately written out day
by day; they share no code with the products.
"""

from __future__ import annotations

import calendar
import operator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pytest

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import (
    CompletenessRule,
    Period,
    ProductParameterError,
    ProductReferenceError,
    QcPolicy,
    Threshold,
    daily_summaries,
    monthly_summaries,
)
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive

S1, S2, S3 = "0-20000-0-60001", "0-20000-0-60002", "0-20000-0-60003"
NAIROBI = "Africa/Nairobi"
TOTALS = {"PRCP"}
THRESHOLDS = (Threshold("TMAX", ">=", 25.0), Threshold("PRCP", ">=", 1.0))
OPERATORS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
COUNTED = ("none", "passed", "suspect")  # the default policy: every value not rejected
OLD = datetime(2025, 1, 1, tzinfo=timezone.utc)
NEW = datetime(2025, 6, 1, tzinfo=timezone.utc)


class Rows:
    """Observations for a test archive, plus the local day each one is meant for."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def daily(self, station: str, element: str, day: date, value: float | None, *, qc: str = "passed",
              source: int = 1, changed: datetime = OLD, local_midnight_offset_hours: int = 0) -> None:
        """A daily value labelled 00:00 UTC, or at local midnight ``offset`` hours east of UTC."""
        start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc) - timedelta(hours=local_midnight_offset_hours)
        self.rows.append(dict(wigos_id=station, element=element, phenomenon_time=start, duration_seconds=86400,
                              value=value, qc_status=qc, source_id=source, changed_at=changed, day=day))

    def hourly(self, station: str, element: str, utc_start: datetime, value: float | None, qc: str = "passed") -> None:
        self.rows.append(dict(wigos_id=station, element=element, phenomenon_time=utc_start, duration_seconds=3600,
                              value=value, qc_status=qc, source_id=1, changed_at=OLD, day=None))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def write(self, folder: Path):
        frame = self.frame()
        columns = {name: frame[name].tolist() for name in
                   ("wigos_id", "element", "phenomenon_time", "duration_seconds", "value", "qc_status", "source_id", "changed_at")}
        write_archive(folder, observation_table(columns))
        bucket = Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file")
        return connect_archive(bucket)


def days_of(year: int, month: int) -> list[date]:
    return [date(year, month, d) for d in range(1, calendar.monthrange(year, month)[1] + 1)]


# --------------------------------------------------------------------------- reference (plain)


def longest_run(flags: list[bool]) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def reference_monthly(frame: pd.DataFrame, period: Period, rule: CompletenessRule, usable_qc=COUNTED,
                      thresholds=THRESHOLDS) -> pd.DataFrame:
    """Monthly summaries the long way: for each station, element and month, walk its days."""
    daily = frame[frame["duration_seconds"] == 86400]
    excluded = daily[daily["value"].notna() & ~daily["qc_status"].isin(usable_qc)]
    usable = daily[daily["value"].notna() & daily["qc_status"].isin(usable_qc)]
    # One value per day: the most recently changed (then lowest source).
    usable = usable.sort_values(["changed_at", "source_id"], ascending=[False, True])
    usable = usable.drop_duplicates(["wigos_id", "element", "day"], keep="first")
    records = []
    for (station, element), group in usable.groupby(["wigos_id", "element"]):
        by_day = dict(zip(group["day"], group["value"]))
        status = dict(zip(group["day"], group["qc_status"]))
        rejected = excluded[(excluded.wigos_id == station) & (excluded.element == element)]
        for year in range(period.start_year, period.end_year + 1):
            for month in range(1, 13):
                days = days_of(year, month)
                present = [d for d in days if d in by_day]
                values = [by_day[d] for d in present]
                missing = len(days) - len(present)
                gap = longest_run([d not in by_day for d in days])
                meets = missing <= rule.max_missing and gap <= rule.max_consecutive_missing
                complete = missing == 0
                totals_ok = complete if rule.totals_require_complete else meets
                record = dict(wigos_id=station, element=element, year=year, month=month, days_in_month=len(days),
                              value_days=len(present), missing_days=missing, longest_gap=gap,
                              meets_rule=meets, complete=complete,
                              mean=np.mean(values) if meets and element not in TOTALS else None,
                              total=float(np.sum(values)) if totals_ok and element in TOTALS else None,
                              derived_days=0,
                              suspect_values=sum(1 for d in present if status[d] == "suspect"),
                              excluded_values=sum(1 for d in rejected["day"] if (d.year, d.month) == (year, month)))
                if meets:
                    top = max(values)
                    bottom = min(values)
                    record["highest"] = top
                    record["highest_date"] = max(d for d in present if by_day[d] == top)
                    record["lowest"] = bottom
                    record["lowest_date"] = max(d for d in present if by_day[d] == bottom)
                else:
                    record.update(highest=None, highest_date=None, lowest=None, lowest_date=None)
                for threshold in thresholds:
                    compare = OPERATORS[threshold.comparison.value]
                    count = sum(1 for v in values if compare(v, threshold.value))
                    record[threshold.name] = count if totals_ok and element == threshold.element else None
                records.append(record)
    return pd.DataFrame(records)


def assert_frames_equal(actual: pd.DataFrame, expected: pd.DataFrame, keys: list[str]) -> None:
    assert len(actual) == len(expected), (len(actual), len(expected))
    actual = actual.sort_values(keys).reset_index(drop=True)
    expected = expected.sort_values(keys).reset_index(drop=True)[list(actual.columns)]
    for column in actual.columns:
        left, right = actual[column].tolist(), expected[column].tolist()
        for i, (a, b) in enumerate(zip(left, right)):
            a = None if a is None or (isinstance(a, float) and np.isnan(a)) or a is pd.NaT else a
            b = None if b is None or (isinstance(b, float) and np.isnan(b)) or b is pd.NaT else b
            if isinstance(a, float) or isinstance(b, float):
                assert a is not None and b is not None and a == pytest.approx(b, abs=1e-9), (column, actual.loc[i, keys].tolist(), a, b)
            else:
                assert a == b, (column, actual.loc[i, keys].tolist(), a, b)


# --------------------------------------------------------------------------- the edges


def edge_archive() -> Rows:
    """S1 TMAX/PRCP in 2019-2020 with one completeness case per month; S2 complete with ties."""
    rng = np.random.default_rng(7)
    rows = Rows()
    gaps = {  # month of 2019 -> days without a value (S1)
        1: {3, 7, 11, 15, 19},            # 5 missing, scattered: meets the rule
        2: {3, 7, 11, 15, 19, 23},        # 6 missing: fails
        3: {10, 11, 12},                  # 3 consecutive: meets
        4: {10, 11, 12, 13},              # 4 consecutive: fails
        5: {1, 2, 3},                     # 3 consecutive at the start: meets
        6: {27, 28, 29, 30},              # 4 consecutive at the end: fails
        9: {2, 4, 20, 21, 22},            # 5 missing, 3 in a row: meets
        10: set(range(1, 32)),            # no value at all
        12: {31},                         # one missing: mean yes, total no
    }
    for element in ("TMAX", "PRCP"):
        for year in (2019, 2020):
            for month in range(1, 13):
                missing = gaps.get(month, set()) if year == 2019 else set()
                for day in days_of(year, month):
                    if day.day in missing:
                        continue
                    value = round(float(rng.normal(27, 3)), 1) if element == "TMAX" else round(float(rng.gamma(0.6, 6)), 1)
                    qc = "passed"
                    if year == 2019 and month == 7:
                        # July: 2 NULL values, 2 suspect, 2 failed: 6 missing by default, 4 with suspect counted.
                        if day.day in (5, 6):
                            value = None
                        qc = {9: "suspect", 20: "suspect", 12: "failed", 25: "failed", 1: "none"}.get(day.day, "passed")
                    rows.daily(S1, element, day, value, qc=qc)
                    if year == 2019 and month == 11 and day.day in (4, 5, 6):
                        # November: a second source changed later wins those days.
                        rows.daily(S1, element, day, value + 50, source=2, changed=NEW)
    for day in days_of(2019, 1) + days_of(2019, 2):
        # S2: the same highest and lowest value twice a month: the most recent date is reported.
        value = 30.0 if day.day in (3, 17) else (10.0 if day.day in (2, 9) else 20.0 + day.day / 100)
        rows.daily(S2, "TMAX", day, value)
    return rows


@pytest.fixture
def edges(tmp_path: Path):
    rows = edge_archive()
    return rows, rows.write(tmp_path / "bucket")


def test_monthly_summaries_equal_the_plain_computation(edges) -> None:
    rows, connection = edges
    period = Period(2019, 2020)
    product = monthly_summaries(connection, period, elements=["TMAX", "PRCP"], thresholds=THRESHOLDS)
    expected = reference_monthly(rows.frame(), period, CompletenessRule())
    actual = product.table.to_pandas()
    assert_frames_equal(actual, expected, ["wigos_id", "element", "year", "month"])
    # Every month of the period for each station-element with data: S1 x 2 elements, S2 x TMAX,
    # in order of station, element, year and month.
    assert product.rows == 3 * 24
    keys = ["wigos_id", "element", "year", "month"]
    assert actual[keys].values.tolist() == actual[keys].sort_values(keys).values.tolist()
    assert "meet the rule (<= 5 missing days, <= 3 in a row)" in product.note


def s1_tmax_2019(product) -> pd.DataFrame:
    frame = product.table.to_pandas()
    return frame[(frame.wigos_id == S1) & (frame.element == "TMAX") & (frame.year == 2019)].set_index("month")


def test_the_3_5_rule_at_its_edges(edges) -> None:
    _, connection = edges
    months = s1_tmax_2019(monthly_summaries(connection, Period(2019, 2019), stations=[S1]))
    assert months.loc[1, ["missing_days", "meets_rule"]].tolist() == [5, True]      # 5 missing
    assert months.loc[2, ["missing_days", "meets_rule"]].tolist() == [6, False]     # 6 missing
    assert months.loc[3, ["longest_gap", "meets_rule"]].tolist() == [3, True]       # 3 in a row
    assert months.loc[4, ["longest_gap", "meets_rule"]].tolist() == [4, False]      # 4 in a row
    assert months.loc[5, ["longest_gap", "meets_rule"]].tolist() == [3, True]       # at the start
    assert months.loc[6, ["longest_gap", "meets_rule"]].tolist() == [4, False]      # at the end
    assert months.loc[9, ["missing_days", "longest_gap", "meets_rule"]].tolist() == [5, 3, True]
    assert months.loc[10, ["value_days", "missing_days", "longest_gap"]].tolist() == [0, 31, 31]
    assert pd.isna(months.loc[2, "mean"]) and pd.notna(months.loc[1, "mean"])
    assert pd.isna(months.loc[4, "highest"]) and pd.notna(months.loc[3, "highest"])


def test_totals_only_from_complete_months_unless_told(edges) -> None:
    _, connection = edges
    strict = monthly_summaries(connection, Period(2019, 2019), stations=[S1], elements="PRCP").table.to_pandas().set_index("month")
    assert pd.isna(strict.loc[12, "total"]) and strict.loc[12, "meets_rule"]   # one day missing
    assert pd.isna(strict.loc[12, "days_PRCP_ge_1"])
    assert pd.notna(strict.loc[8, "total"])                                    # complete
    assert strict["mean"].isna().all()                                         # PRCP is summed
    lenient = monthly_summaries(connection, Period(2019, 2019), stations=[S1], elements="PRCP",
                                rule=CompletenessRule(totals_require_complete=False)).table.to_pandas().set_index("month")
    assert pd.notna(lenient.loc[12, "total"]) and pd.isna(lenient.loc[2, "total"])
    rows = edge_archive().frame()
    december = rows[(rows.wigos_id == S1) & (rows.element == "PRCP") & (rows.day >= date(2019, 12, 1)) & (rows.day <= date(2019, 12, 31))]
    assert lenient.loc[12, "total"] == pytest.approx(december.value.sum())


def test_suspect_values_count_until_rejected_and_every_month_says_what_it_used(edges) -> None:
    """July 2019 at S1: 2 NULL values, 2 suspect, 2 failed.  By default the suspect values
    count (nobody rejected them) and only the failed ones are left out, and the month says so;
    the old behaviour (suspect as missing) is a policy one can still ask for."""
    rows, connection = edges
    product = monthly_summaries(connection, Period(2019, 2019), stations=[S1], elements="TMAX")
    july = s1_tmax_2019(product).loc[7]
    assert (july.missing_days, july.meets_rule, july.suspect_values, july.excluded_values) == (4, True, 2, 2)
    expected = reference_monthly(rows.frame(), Period(2019, 2019), CompletenessRule())
    row = expected[(expected.wigos_id == S1) & (expected.element == "TMAX") & (expected.month == 7)].iloc[0]
    assert july["mean"] == pytest.approx(row["mean"])
    # The metadata sums them and names the policy; no other month of S1 TMAX has any.
    assert product.qc["suspect_values_used"] == 2 and product.qc["values_excluded"] == 2
    assert product.qc["policy"] == {"counted": ["none", "passed", "suspect"], "excluded": ["failed"]}
    assert "2 suspect values used, 2 values excluded by QC" in product.note
    assert product.metadata()["qc"]["per"] == "station-element-month"

    strict = monthly_summaries(connection, Period(2019, 2019), stations=[S1], elements="TMAX",
                               qc=QcPolicy(("none", "passed")))
    july = s1_tmax_2019(strict).loc[7]
    assert (july.missing_days, july.meets_rule, july.suspect_values, july.excluded_values) == (6, False, 0, 4)
    assert strict.qc["values_excluded"] == 4 and strict.parameters["qc"]["excluded"] == ["suspect", "failed"]


def test_a_day_counts_once_with_its_latest_value(edges) -> None:
    rows, connection = edges
    november = s1_tmax_2019(monthly_summaries(connection, Period(2019, 2019), stations=[S1], elements="TMAX")).loc[11]
    assert november.value_days == 30 and november.complete
    frame = rows.frame()
    kept = frame[(frame.wigos_id == S1) & (frame.element == "TMAX") & frame.day.between(date(2019, 11, 1), date(2019, 11, 30))]
    kept = kept.sort_values("changed_at").drop_duplicates("day", keep="last")
    assert november["mean"] == pytest.approx(kept.value.mean())
    assert november.highest == pytest.approx(kept.value.max())


def test_ties_report_the_most_recent_date(edges) -> None:
    _, connection = edges
    january = monthly_summaries(connection, Period(2019, 2019), stations=[S2], elements="TMAX").table.to_pandas().iloc[0]
    assert (january.highest, january.highest_date) == (30.0, date(2019, 1, 17))
    assert (january.lowest, january.lowest_date) == (10.0, date(2019, 1, 9))


def test_extremes_keep_values_with_many_decimals_and_below_zero(tmp_path: Path) -> None:
    """Values converted from other units (°F) have many decimals; extremes are given to 1e-9."""
    rows = Rows()
    values = [(f - 32) * 5 / 9 for f in (-40.3, -40.1, 70.7, 70.9, 33.1)]
    for day, value in zip(days_of(2019, 1), values * 7):
        rows.daily(S1, "TMAX", day, value)
    connection = rows.write(tmp_path / "bucket")
    january = monthly_summaries(connection, Period(2019, 2019), elements="TMAX").table.to_pandas().iloc[0]
    month_values = (values * 7)[:31]
    assert january.highest == pytest.approx(max(month_values), abs=1e-9)
    assert january.lowest == pytest.approx(min(month_values), abs=1e-9)
    assert january.highest_date == date(2019, 1, 29) and january.lowest_date == date(2019, 1, 31)


def test_daily_values_labelled_at_local_midnight_fall_on_their_day(tmp_path: Path) -> None:
    """A value for 1 January stored at 21:00 UTC on 31 December (UTC+3) counts in January."""
    rows = Rows()
    for day in days_of(2019, 1) + days_of(2019, 2):
        rows.daily(S3, "TMAX", day, 20.0 + day.day / 10, local_midnight_offset_hours=3)
    connection = rows.write(tmp_path / "bucket")
    frame = monthly_summaries(connection, Period(2019, 2019), elements="TMAX",
                              timezones={S3: NAIROBI}).table.to_pandas().set_index("month")
    assert frame.loc[1, ["value_days", "complete"]].tolist() == [31, True]
    assert frame.loc[2, ["value_days", "complete"]].tolist() == [28, True]
    assert frame.loc[1, "lowest_date"] == date(2019, 1, 1)
    assert frame.loc[1, "mean"] == pytest.approx(np.mean([20.0 + d / 10 for d in range(1, 32)]))
    # The day of a daily value is where the middle of its 24 hours falls, so the station's
    # zone is not even needed for values labelled at local midnight...
    same = monthly_summaries(connection, Period(2019, 2019), elements="TMAX").table.to_pandas().set_index("month")
    assert same.loc[1, "value_days"] == 31 and same.loc[1, "lowest_date"] == date(2019, 1, 1)


def test_daily_values_labelled_00_utc_west_of_utc_fall_on_their_day(tmp_path: Path) -> None:
    """...and a value labelled 00:00 UTC at a UTC-5 station is still its own day, not the one before."""
    rows = Rows()
    for day in days_of(2019, 1):
        rows.daily(S3, "TMAX", day, 20.0 + day.day / 10)
    connection = rows.write(tmp_path / "bucket")
    january = monthly_summaries(connection, Period(2019, 2019), elements="TMAX",
                                timezones={S3: "America/Lima"}).table.to_pandas().set_index("month").loc[1]
    assert (january.value_days, january.lowest_date, january.highest_date) == (31, date(2019, 1, 1), date(2019, 1, 31))


def test_randomised_network_equals_the_plain_computation(tmp_path: Path) -> None:
    """Random gaps, QC flags, NULLs and duplicates over 3 stations, 2 elements, 3 years."""
    rng = np.random.default_rng(11)
    rows = Rows()
    for station in (S1, S2, S3):
        for element in ("TMAX", "PRCP"):
            day = date(2018, 1, 1)
            while day <= date(2020, 12, 31):
                if rng.random() > 0.05 + (0.25 if day.month == 3 and station == S2 else 0):
                    value = round(float(rng.normal(26, 4)), 1) if element == "TMAX" else round(float(rng.gamma(0.5, 5)), 1)
                    value = None if rng.random() < 0.01 else value
                    qc = rng.choice(["passed", "none", "suspect", "failed"], p=[0.9, 0.06, 0.02, 0.02])
                    rows.daily(station, element, day, value, qc=str(qc))
                    if rng.random() < 0.01:
                        rows.daily(station, element, day, round(float(rng.normal(26, 4)), 1), source=3, changed=NEW)
                day += timedelta(days=1)
    connection = rows.write(tmp_path / "bucket")
    period = Period(2018, 2020)
    for rule in (CompletenessRule(), CompletenessRule(2, 1, False)):
        product = monthly_summaries(connection, period, elements=("TMAX", "PRCP"), rule=rule, thresholds=THRESHOLDS)
        expected = reference_monthly(rows.frame(), period, rule)
        assert_frames_equal(product.table.to_pandas(), expected, ["wigos_id", "element", "year", "month"])


# --------------------------------------------------------------------------- daily from hourly


def reference_daily(frame: pd.DataFrame, zone: str, rule: CompletenessRule) -> pd.DataFrame:
    """Daily summaries of hourly values the long way: local hour slots per local day."""
    hourly = frame[frame["duration_seconds"] == 3600].copy()
    hourly = hourly[hourly["value"].notna() & hourly["qc_status"].isin(COUNTED)]
    local = pd.to_datetime(hourly["phenomenon_time"], utc=True).dt.tz_convert(zone)
    hourly["local_day"] = local.dt.date
    hourly["hour"] = local.dt.hour
    records = []
    for (station, element, day), group in hourly.groupby(["wigos_id", "element", "local_day"]):
        hours = set(group["hour"])
        values = group["value"].tolist()
        missing = 24 - len(hours)
        gap = longest_run([h not in hours for h in range(24)])
        meets = missing <= rule.max_missing and gap <= rule.max_consecutive_missing
        complete = missing == 0
        records.append(dict(
            wigos_id=station, element=element, day=day, duration_seconds=3600, expected_values=24,
            value_count=len(hours), missing_values=missing, longest_gap=gap, meets_rule=meets, complete=complete,
            mean=np.mean(values) if meets and element not in TOTALS else None,
            minimum=min(values) if meets else None, maximum=max(values) if meets else None,
            total=float(np.sum(values)) if element in TOTALS and (complete if rule.totals_require_complete else meets) else None,
            suspect_values=int((group["qc_status"] == "suspect").sum()), excluded_values=0,
        ))
    return pd.DataFrame(records)


def hourly_archive(tmp_path: Path) -> Rows:
    """Hourly TMEAN and PRCP of a Nairobi (UTC+3) station over 6 local days, with gaps."""
    rng = np.random.default_rng(5)
    rows = Rows()
    local_gaps = {  # local day of March 2020 -> local hours without a value
        2: {1, 5, 9, 13, 17, 21},      # 6 missing: meets (SUB_DAILY_RULE)
        3: {1, 5, 9, 13, 17, 20, 22},  # 7 missing: fails
        4: {10, 11, 12},               # 3 in a row: meets
        5: {10, 11, 12, 13},           # 4 in a row: fails
        6: {0},                        # one missing: no total
    }
    for local_day in range(1, 8):
        for hour in range(24):
            if hour in local_gaps.get(local_day, set()):
                continue
            utc = datetime(2020, 3, local_day, hour, tzinfo=timezone.utc) - timedelta(hours=3)
            rows.hourly(S3, "TMEAN", utc, round(float(18 + 6 * np.sin(hour / 24 * 2 * np.pi) + rng.normal()), 1))
            rows.hourly(S3, "PRCP", utc, round(float(rng.gamma(0.3, 1.0)), 1))
    return rows


def test_daily_summaries_of_hourly_values_per_local_day(tmp_path: Path) -> None:
    rows = hourly_archive(tmp_path)
    connection = rows.write(tmp_path / "bucket")
    product = daily_summaries(connection, Period(2020, 2020), elements=("TMEAN", "PRCP"), timezones={S3: NAIROBI})
    actual = product.table.to_pandas()
    expected = reference_daily(rows.frame(), NAIROBI, product_rule := CompletenessRule(6, 3, True))
    assert_frames_equal(actual, expected, ["wigos_id", "element", "day"])
    days = actual[actual.element == "TMEAN"].set_index("day")
    assert days.loc[date(2020, 3, 1), ["value_count", "complete"]].tolist() == [24, True]
    assert days.loc[date(2020, 3, 2), "meets_rule"] and not days.loc[date(2020, 3, 3), "meets_rule"]
    assert days.loc[date(2020, 3, 4), "meets_rule"] and not days.loc[date(2020, 3, 5), "meets_rule"]
    rain = actual[actual.element == "PRCP"].set_index("day")
    assert pd.isna(rain.loc[date(2020, 3, 6), "total"]) and pd.notna(rain.loc[date(2020, 3, 7), "total"])
    assert product_rule.max_missing == 6


def test_daily_summaries_in_utc_shift_the_days(tmp_path: Path) -> None:
    """Without the station's zone the hours fall on UTC days: 21:00-24:00 local is the next day."""
    rows = hourly_archive(tmp_path)
    connection = rows.write(tmp_path / "bucket")
    product = daily_summaries(connection, Period(2020, 2020), elements="TMEAN")
    expected = reference_daily(rows.frame(), "UTC", CompletenessRule(6, 3, True))
    expected = expected[expected.element == "TMEAN"]
    assert_frames_equal(product.table.to_pandas(), expected, ["wigos_id", "element", "day"])
    assert date(2020, 2, 29) in set(product.table.to_pandas().day)  # 1 March 00:00 local is 29 Feb 21:00 UTC


# --------------------------------------------------------------------------- empty and bad input


def test_a_period_without_data_gives_an_empty_product_that_says_so(edges) -> None:
    _, connection = edges
    product = monthly_summaries(connection, Period(1991, 1992), stations=[S1])
    assert product.empty and product.rows == 0
    assert product.note.startswith("no data for") and "1991-1992" in product.note
    assert "mean" in product.table.schema.names
    daily = daily_summaries(connection, Period(2019, 2019))
    assert daily.empty and daily.note.startswith("no sub-daily data for")


@pytest.mark.parametrize(
    ("call", "parameter", "fragment"),
    [
        (lambda c: monthly_summaries(c, Period(2019, 2019), stations=["0-20000-0-99999"]), "stations", "0-20000-0-99999"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), elements=["TMAXX"]), "elements", "TMAXX"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), elements=["WDIR"]), "elements", "angle"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), qc=QcPolicy(("great",))), "qc", "great"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), qc=("passed",)), "qc", "QcPolicy"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), timezones={S1: "Mars/Olympus"}), "timezones", "Mars/Olympus"),
        (lambda c: monthly_summaries(c, Period(2019, 2019), rule=5), "rule", "CompletenessRule"),
        (lambda c: monthly_summaries(c, (2019, 2020)), "period", "Period"),
        (lambda c: monthly_summaries(c, "2019-2018"), "period", "after end year"),
        (lambda c: daily_summaries(c, "19"), "period", "not a year or a range"),
    ],
)
def test_bad_parameters_are_named(edges, call, parameter, fragment) -> None:
    _, connection = edges
    with pytest.raises((ProductParameterError, ProductReferenceError)) as raised:
        call(connection)
    assert raised.value.parameter == parameter
    assert f"'{parameter}'" in str(raised.value) and fragment in str(raised.value)


def test_unknown_station_is_an_unknown_reference(edges) -> None:
    from opencdms_kernel.errors import UnknownReferenceError

    _, connection = edges
    with pytest.raises(UnknownReferenceError, match="station '0-20000-0-99999' is not in the archive"):
        monthly_summaries(connection, Period(2019, 2019), stations="0-20000-0-99999")


@pytest.mark.parametrize(
    ("build", "parameter"),
    [
        (lambda: Period(2021, 2020), "period"),
        (lambda: Period(0, 2020), "period.start_year"),
        (lambda: Period(2020, 9999), "period.end_year"),
        (lambda: Period(2020.5, 2021), "period.start_year"),
        (lambda: Period.parse("2020-19"), "period"),
        (lambda: CompletenessRule(max_missing=-1), "rule.max_missing"),
        (lambda: Threshold("TMAX", ">=", float("nan")), "thresholds"),
    ],
)
def test_invalid_values_fail_when_built(build, parameter) -> None:
    with pytest.raises(ProductParameterError) as raised:
        build()
    assert raised.value.parameter == parameter


def test_period_parse() -> None:
    assert Period.parse("1991-2020") == Period(1991, 2020)
    assert Period.parse("2020") == Period(2020, 2020)
    assert str(Period(1961, 1990)) == "1961-1990"


def test_a_period_given_as_text_is_read_as_the_period(edges) -> None:
    _, connection = edges
    as_text = monthly_summaries(connection, " 2019 ", stations=[S1])
    assert as_text.period == Period(2019, 2019)
    as_period = monthly_summaries(connection, Period(2019, 2019), stations=[S1])
    # The same rows; their order is DuckDB's (parallel), not part of the answer.
    assert_frames_equal(as_text.table.to_pandas(), as_period.table.to_pandas(), ["wigos_id", "element", "year", "month"])


# --------------------------------------------------------------------------- months from hourly values


def test_a_station_that_reports_only_hourly_values_gets_monthly_values(tmp_path: Path) -> None:
    """Hourly TMAX and PRCP at a UTC+3 station, no daily value at all: the days are made from
    the hours (the highest hour, the sum of the hours) under the sub-daily rule, then the month."""
    rng = np.random.default_rng(3)
    rows = Rows()
    maxima, totals = {}, {}
    for day in days_of(2020, 4):
        missing = {2, 3, 4, 5} if day.day == 10 else set()  # 4 hours in a row: day 10 fails the rule
        if day.day == 11:
            missing = {7}  # one hour missing: a maximum, but no total
        hours = [round(float(rng.normal(24, 3)), 1) for _ in range(24)]
        rain = [round(float(rng.gamma(0.2, 1.0)), 1) for _ in range(24)]
        for hour in range(24):
            if hour in missing:
                continue
            utc = datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc) - timedelta(hours=3)
            rows.hourly(S3, "TMAX", utc, hours[hour])
            rows.hourly(S3, "PRCP", utc, rain[hour])
        if day.day != 10:
            maxima[day] = max(h for i, h in enumerate(hours) if i not in missing)
        if not missing:
            totals[day] = sum(rain)
    connection = rows.write(tmp_path / "bucket")
    product = monthly_summaries(connection, Period(2020, 2020), elements=["TMAX", "PRCP"], timezones={S3: NAIROBI})
    assert not product.empty and "days made from sub-daily values" in product.note
    april = product.table.to_pandas().set_index(["element", "month"])
    tmax, prcp = april.loc[("TMAX", 4)], april.loc[("PRCP", 4)]
    assert (tmax.value_days, tmax.missing_days, tmax.derived_days, tmax.meets_rule) == (29, 1, 29, True)
    assert tmax["mean"] == pytest.approx(np.mean(list(maxima.values())))
    assert tmax.highest == pytest.approx(max(maxima.values()))
    assert (prcp.value_days, prcp.complete) == (28, False) and pd.isna(prcp.total)  # days 10, 11 incomplete
    assert april.loc[("TMAX", 3), "value_days"] == 0  # 1 April 00:00 local is 31 March 21:00 UTC: not March


def test_a_reported_daily_value_wins_over_the_hours_of_its_day(tmp_path: Path) -> None:
    rows = Rows()
    for hour in range(24):
        utc = datetime(2020, 4, 1, hour, tzinfo=timezone.utc)
        rows.hourly(S1, "TMAX", utc, 20.0 + hour / 10)  # the hours say 22.3
        rows.hourly(S1, "TMAX", utc + timedelta(days=1), 21.0)
    rows.daily(S1, "TMAX", date(2020, 4, 1), 25.0)  # the station's own daily value for the 1st
    connection = rows.write(tmp_path / "bucket")
    anything = CompletenessRule(30, 30, False)  # two days of April are enough here
    april = monthly_summaries(connection, Period(2020, 2020), elements="TMAX", rule=anything).table.to_pandas()
    april = april.set_index("month").loc[4]
    assert (april.value_days, april.derived_days) == (2, 1)
    assert (april.highest, april.highest_date) == (25.0, date(2020, 4, 1))
    assert (april.lowest, april.lowest_date) == (21.0, date(2020, 4, 2))


def test_daily_summaries_count_suspect_and_excluded_values(tmp_path: Path) -> None:
    rows = Rows()
    for hour in range(24):
        status = {3: "suspect", 4: "suspect", 9: "failed"}.get(hour, "passed")
        rows.hourly(S1, "TMEAN", datetime(2020, 5, 1, hour, tzinfo=timezone.utc), 15.0 + hour / 10, qc=status)
    connection = rows.write(tmp_path / "bucket")
    product = daily_summaries(connection, Period(2020, 2020), elements="TMEAN")
    day = product.table.to_pandas().iloc[0]
    assert (day.value_count, day.missing_values, day.suspect_values, day.excluded_values) == (23, 1, 2, 1)
    assert product.qc["suspect_values_used"] == 2 and product.qc["values_excluded"] == 1
    assert product.qc["per"] == "station-element-day"
