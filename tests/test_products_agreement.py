"""One station-month, every product: the monthly summary, CLIMAT (text and BUFR), DAYCLI and the
monthly report say the same thing to the last digit.

The month is made to catch each way they used to differ: a station east of UTC whose daily
values are labelled at local midnight (a UTC day would move every value to the day before), a
suspect value (counted until rejected: the monthly product used to drop it, CLIMAT to keep it),
a failed one, a day delivered twice by two sources, two days that only hourly values cover, and
a mean maximum temperature that lies exactly halfway between two tenths (27.85 as a decimal,
27.849999… as the float a mean of doubles gives), where any two roundings would part.  The
messages are decoded with ecCodes, not read back from our own code.
"""

from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta, timezone
from decimal import ROUND_DOWN, Decimal
from pathlib import Path

import eccodes
import fsspec
import numpy as np
import pytest

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import Period, monthly_summaries, station_days
from opencdms_kernel.products.climat import produce_climat
from opencdms_kernel.products.climat_bufr import ClimatStation, produce_climat_bufr
from opencdms_kernel.products.daycli import DaycliStation, produce_daycli
from opencdms_kernel.products.model import figure
from opencdms_kernel.products.sql import select
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive
from opencdms_kernel.reports import Report, daily_table, daily_values, month_overview

NAIROBI = "0-20000-0-63740"
ZONE = "Africa/Nairobi"  # UTC+3
TIMEZONES = {NAIROBI: ZONE}
YEAR, MONTH = 2024, 3
DAYS = calendar.monthrange(YEAR, MONTH)[1]
OLD = datetime(2025, 1, 1, tzinfo=timezone.utc)
NEW = datetime(2025, 6, 1, tzinfo=timezone.utc)
HOURLY_DAYS = (20, 21)  # TMAX and PRCP come only as hourly values on these days


def local_midnight(day: int) -> datetime:
    return datetime(YEAR, MONTH, day, tzinfo=timezone.utc) - timedelta(hours=3)


class Month:
    """The rows of the archive, and what each day's value should be."""

    def __init__(self) -> None:
        rng = np.random.default_rng(2002)  # a month whose mean of doubles falls just below the halfway value
        self.columns: dict[str, list] = {k: [] for k in ("wigos_id", "element", "phenomenon_time", "duration_seconds",
                                                          "value", "qc_status", "source_id", "changed_at")}
        self.expected: dict[str, dict[int, float]] = {"TMAX": {}, "TMIN": {}, "TMEAN": {}, "PRCP": {}}
        tmax = {d: round(float(rng.normal(27.5, 1.5)), 1) for d in range(1, DAYS + 1)}
        # Day 1 is nudged so that the 30 counted values sum to 30 k + 1.5 (tenths: 15 mod 30),
        # i.e. the mean ends in 5 in the hundredths: exactly halfway between two tenths.
        counted = [d for d in tmax if d != 9]
        tenths = round(sum(tmax[d] for d in counted) * 10)
        tmax[1] = round(tmax[1] + ((15 - tenths) % 30) / 10, 1)
        for day in range(1, DAYS + 1):
            if day in HOURLY_DAYS:
                hours = [round(tmax[day] - abs(float(rng.normal(3, 2))), 1) for _ in range(24)]
                hours[int(rng.integers(0, 24))] = tmax[day]  # the day's maximum is one of its hours
                rain = [round(float(rng.gamma(0.3, 0.5)), 1) for _ in range(24)]
                for hour in range(24):
                    start = local_midnight(day) + timedelta(hours=hour)
                    self.add("TMAX", start, hours[hour], duration=3600)
                    self.add("PRCP", start, rain[hour], duration=3600)
                self.expected["TMAX"][day] = tmax[day]
                self.expected["PRCP"][day] = float(Decimal(sum(Decimal(str(r)) for r in rain)))
            elif day == 9:
                self.add("TMAX", local_midnight(day), 45.0, qc="failed")  # excluded: the day is missing
            elif day == 12:
                self.add("TMAX", local_midnight(day), tmax[day] - 5.0, source=1, changed=OLD)
                self.add("TMAX", local_midnight(day), tmax[day], source=2, changed=NEW)  # the latest change counts
                self.expected["TMAX"][day] = tmax[day]
            else:
                self.add("TMAX", local_midnight(day), tmax[day], qc="suspect" if day == 5 else "passed")
                self.expected["TMAX"][day] = tmax[day]
            if day not in HOURLY_DAYS:
                rain = round(float(rng.gamma(0.5, 6.0)), 1) if rng.random() < 0.4 else 0.0
                self.add("PRCP", local_midnight(day), rain, qc="suspect" if day == 7 else "passed")
                self.expected["PRCP"][day] = rain
            tmin = round(float(rng.normal(14.0, 1.0)), 1)
            self.add("TMIN", local_midnight(day), tmin, qc="none" if day == 14 else "passed")
            self.expected["TMIN"][day] = tmin
            tmean = round((tmax[day] + tmin) / 2, 1)
            self.add("TMEAN", local_midnight(day), tmean)
            self.expected["TMEAN"][day] = tmean

    def add(self, element: str, start: datetime, value: float, *, duration: int = 86400, qc: str = "passed",
            source: int = 1, changed: datetime = OLD) -> None:
        for key, item in (("wigos_id", NAIROBI), ("element", element), ("phenomenon_time", start),
                          ("duration_seconds", duration), ("value", value), ("qc_status", qc), ("source_id", source),
                          ("changed_at", changed)):
            self.columns[key].append(item)


@pytest.fixture(scope="module")
def month(tmp_path_factory: pytest.TempPathFactory):
    data = Month()
    folder = tmp_path_factory.mktemp("agreement") / "bucket"
    write_archive(folder, observation_table(data.columns))
    bucket = Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file")
    return data, connect_archive(bucket), bucket


def decode(data: bytes, tmp_path: Path, keys: dict[str, str]) -> list[dict]:
    path = tmp_path / "decode.bufr"
    path.write_bytes(data)
    messages = []
    with path.open("rb") as handle:
        while (message := eccodes.codes_bufr_new_from_file(handle)) is not None:
            try:
                eccodes.codes_set(message, "unpack", 1)
                messages.append({name: None if eccodes.codes_is_missing(message, key) else eccodes.codes_get(message, key)
                                 for name, key in keys.items()})
            finally:
                eccodes.codes_release(message)
    return messages


def celsius(kelvin: float) -> Decimal:
    """A decoded BUFR temperature back in degC, at the 0.01 K the messages carry."""
    return (Decimal(repr(kelvin)) - Decimal("273.15")).quantize(Decimal("0.01"))


def test_the_month_is_the_one_designed(month) -> None:
    data, connection, _ = month
    counted = [data.expected["TMAX"][d] for d in sorted(data.expected["TMAX"])]
    assert len(counted) == 30
    exact = sum(Decimal(str(v)) for v in counted) / 30
    assert exact.as_tuple().digits[-1] == 5 and len(str(exact).split(".")[1]) == 2  # e.g. 27.85
    # Half away from zero on the decimal value, whatever float the mean of doubles is.
    assert figure(exact, 1) == (exact + Decimal("0.05")).quantize(Decimal("0.1"), rounding=ROUND_DOWN)
    assert figure(sum(counted) / 30, 1) == figure(exact, 1)


def test_monthly_climat_daycli_and_report_agree_to_the_last_digit(month, tmp_path: Path) -> None:
    data, connection, bucket = month
    # The monthly summary.
    product = monthly_summaries(connection, Period(YEAR, YEAR), stations=[NAIROBI], timezones=TIMEZONES)
    table = product.table.to_pandas()
    march = table[table.month == MONTH].set_index("element")
    tmax = march.loc["TMAX"]
    assert (tmax.value_days, tmax.missing_days, tmax.derived_days) == (30, 1, 2)
    assert (tmax.suspect_values, tmax.excluded_values) == (1, 1)
    expected_tx = figure(sum(Decimal(str(v)) for v in data.expected["TMAX"].values()) / 30, 1)
    assert figure(tmax["mean"], 1) == expected_tx
    expected_rain = figure(sum(Decimal(str(v)) for v in data.expected["PRCP"].values()), 0)
    assert march.loc["PRCP", "complete"] and figure(march.loc["PRCP", "total"], 0) == expected_rain
    tn = figure(march.loc["TMIN", "mean"], 1)
    t = figure(march.loc["TMEAN", "mean"], 1)

    # CLIMAT text: group 3 (T), 4 (Tx, Tn) and 6 (R1) of section 1, group 2 of section 4.
    climat = produce_climat(connection, bucket, NAIROBI, YEAR, MONTH, normals_period=None, timezones=TIMEZONES)
    words = climat.text.replace("=", "").split()

    def tenths(text: str) -> Decimal:
        return (-1 if text[0] == "1" else 1) * Decimal(int(text[1:])) / 10

    group3 = next(w for w in words[words.index("111"):] if w.startswith("3") and len(w) == 8)
    group4 = next(w for w in words[words.index("111"):] if w.startswith("4") and len(w) == 9)
    group6 = next(w for w in words[words.index("111"):] if w.startswith("6") and len(w) == 8)
    assert tenths(group3[1:5]) == t
    assert (tenths(group4[1:5]), tenths(group4[5:9])) == (expected_tx, tn)
    assert Decimal(int(group6[1:5])) == expected_rain
    highest_day = max(data.expected["TMAX"], key=lambda d: (data.expected["TMAX"][d], -d))
    section4 = words[words.index("444") + 1:]
    highest = next(w for w in section4 if w.startswith("2"))
    assert tenths(highest[1:5]) == figure(data.expected["TMAX"][highest_day], 1) and int(highest[5:7]) % 50 == highest_day

    # CLIMAT BUFR: the same figures.
    encoded = produce_climat_bufr(connection, bucket, NAIROBI, YEAR, MONTH, normals_period=None, timezones=TIMEZONES,
                                  station=ClimatStation(NAIROBI, timezone=ZONE))
    (message,) = decode(bucket.read_bytes(encoded.key), tmp_path, {
        "t": "#1#airTemperature", "tx": "#1#maximumTemperatureAtHeightSpecifiedPast24Hours",
        "tn": "#1#minimumTemperatureAtHeightSpecifiedPast24Hours", "r": "#1#totalAccumulatedPrecipitation",
        "highest": "#2#airTemperature", "highest_day": "#4#day", "utc_minus_lt": "#1#timePeriod",
    })
    assert figure(celsius(message["tx"]), 1) == expected_tx and figure(celsius(message["tn"]), 1) == tn
    assert figure(celsius(message["t"]), 1) == t
    assert figure(Decimal(repr(message["r"])), 0) == expected_rain
    assert message["highest_day"] == highest_day and message["utc_minus_lt"] == -3

    # DAYCLI: every day of the month, the days' own values; their mean and sum are the month's.
    daycli = produce_daycli(connection, bucket, NAIROBI, YEAR, MONTH, station=DaycliStation(NAIROBI),
                            timezones=TIMEZONES)
    decoded = decode(bucket.read_bytes(daycli.key), tmp_path, {
        "day": "#1#day", "tmax": "#1#airTemperature", "tmax_flag": "#1#airTemperature->associatedField",
        "rain": "#1#totalAccumulatedPrecipitation", "tmax_offset": "#4#timePeriod", "tmax_hour": "#4#hour",
    })
    assert [m["day"] for m in decoded] == list(range(1, DAYS + 1))
    daily_tx = {m["day"]: celsius(m["tmax"]) for m in decoded if m["tmax"] is not None}
    assert daily_tx == {d: Decimal(str(v)).quantize(Decimal("0.01")) for d, v in data.expected["TMAX"].items()}
    assert figure(sum(daily_tx.values()) / len(daily_tx), 1) == expected_tx
    rain = [Decimal(repr(m["rain"])).quantize(Decimal("0.1")) for m in decoded]
    assert figure(sum(rain), 0) == expected_rain
    # Local days: every period (reported at local midnight, or made from hours) begins at
    # 21:00 UTC the day before.
    assert {(m["tmax_offset"], m["tmax_hour"]) for m in decoded if m["tmax"] is not None} == {(-1, 21)}
    flags = {m["day"]: m["tmax_flag"] for m in decoded if m["tmax"] is not None}
    assert flags[5] == 1 and flags[12] == 0  # suspect, good
    assert 9 not in daily_tx  # failed: excluded, as in the month

    # The monthly report: the network table (the notebook's month_overview, rendered with its
    # report) and the day-by-day table of the station.
    overview = month_overview(table[table.month == MONTH], {NAIROBI: "Nairobi"})
    report = Report(title="test")
    report.table(overview, "Monthly values")
    html = report.to_html()
    assert f"<td>{expected_tx}</td>" in html and f"<td>{tn}</td>" in html
    exact_rain = sum(Decimal(str(v)) for v in data.expected["PRCP"].values())
    assert f"<td>{figure(exact_rain, 1)}</td>" in html  # the report gives totals to 0.1 mm, CLIMAT to 1 mm
    days = daily_values(connection, NAIROBI, date(YEAR, MONTH, 1), date(YEAR, MONTH, DAYS), ("TMAX",), ZONE)
    shown = daily_table(days).set_index("day")["TMAX"]
    for day, value in daily_tx.items():
        assert shown.loc[date(YEAR, MONTH, day)].split(" ")[0] == str(figure(value, 1))
    assert shown.loc[date(YEAR, MONTH, 9)] == "45.0 (failed, excluded)"
    assert shown.loc[date(YEAR, MONTH, 5)] == f"{figure(data.expected['TMAX'][5], 1)} (suspect)"


def test_every_product_uses_the_same_days(month) -> None:
    """The days DAYCLI and the reports list are the days the monthly figures are made of."""
    data, connection, _ = month
    selection = select(connection, Period(YEAR, YEAR), ["TMAX", "PRCP"], [NAIROBI], timezones=TIMEZONES)
    days = station_days(connection, selection).to_pandas()
    tmax = days[(days.element == "TMAX") & days.counted]
    assert {d.day: v for d, v in zip(tmax.day, tmax.value)} == data.expected["TMAX"]
    assert set(tmax[tmax.derived].day.map(lambda d: d.day)) == set(HOURLY_DAYS)
    failed = days[(days.element == "TMAX") & ~days.counted]
    assert failed.day.tolist() == [date(YEAR, MONTH, 9)] and failed.excluded_values.tolist() == [1]
