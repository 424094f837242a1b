"""CLIMAT (FM 71) reports: text written by hand from the code form, and values from an archive.

The expected reports below are written group by group from FM 71-XII (WMO-No. 306, Vol. I.1),
not produced by the code under test.  One of them is a real CLIMAT report as circulated on
the GTS (Byrd AWS, July 2023, published by the AMRDC), which fixes the layout of the groups.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from pathlib import Path

import eccodes
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencdms_kernel.archive import ARCHIVE_PREFIX, PARQUET_SCHEMA, connect_archive
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.errors import UnknownReferenceError
from opencdms_kernel.products.climat import (
    CLIMAT_RULE,
    ClimatExtreme,
    ClimatMonthly,
    ClimatNormals,
    NormalsRule,
    ProductParameterError,
    climat_from_archive,
    format_climat,
    precipitation_quintile,
    produce_climat,
    station_index,
)
from opencdms_kernel.products.climat_bufr import ClimatStation, produce_climat_bufr
from opencdms_kernel.settings import Settings

NAIROBI = "0-20000-0-63740"


# --------------------------------------------------------------------------- hand-checked reports


def test_known_month_with_normals_matches_the_hand_written_report() -> None:
    monthly = ClimatMonthly(
        wigos_id=NAIROBI, year=2024, month=3,
        station_pressure=838.4, sea_level_pressure=1012.6,
        mean_temperature=21.37, temperature_std=1.26,
        mean_max_temperature=27.85, mean_min_temperature=15.04,
        vapour_pressure=17.3,
        precipitation=112.6, precipitation_quintile=4, precipitation_days=9,
        sunshine=214.5, sunshine_percent_of_normal=92,
        missing_days_pressure=0, missing_days_temperature=1,
        missing_days_max_temperature=0, missing_days_min_temperature=2,
        missing_days_vapour_pressure=1, missing_days_precipitation=0, missing_days_sunshine=3,
    )
    normals = ClimatNormals(
        first_year=1991, last_year=2020,
        station_pressure=838.9, sea_level_pressure=1013.0,
        mean_temperature=21.0, temperature_std=1.5,
        mean_max_temperature=27.3, mean_min_temperature=14.8,
        vapour_pressure=16.9, precipitation=94.0, precipitation_days=10, sunshine=233.0,
        missing_years_pressure=2, missing_years_temperature=0, missing_years_extreme_temperatures=1,
        missing_years_vapour_pressure=3, missing_years_precipitation=0, missing_years_sunshine=5,
    )
    expected = "\n".join([
        # Section 0: CLIMAT MMJJJ IIiii -- month 03, last three figures of 2024, the WMO index
        # (local part of the WIGOS id).
        "CLIMAT 03024 63740",
        # Section 1 (111), one group per element, each led by its indicator figure:
        #   18384     1PoPoPoPo  station pressure 838.4 hPa in tenths, thousands figure dropped
        #   20126     2PPPP      sea-level pressure 1012.6 hPa -> 10126 -> 0126
        #   30214013  3sTTTststst  s=0 (positive), 21.37 -> 21.4 -> 214; st 1.26 -> 1.3 -> 013
        #   402790150 4sTxTxTxsTnTnTn  27.85 -> 27.9 (half up) -> 0279; 15.04 -> 15.0 -> 0150
        #   5173      5eee       vapour pressure 17.3 hPa in tenths
        #   60113409  6R1R1R1R1Rdnrnr  112.6 mm -> 113 -> 0113; quintile 4; 9 days >= 1 mm
        #   7215092   7S1S1S1pspsps  214.5 h -> 215 (half up); 92 % of normal -> 092
        #   8000102   8mPmPmTmTmTxmTn  pressure 00, temperature 01, Tx 0, Tn 2 days missing
        #   9010003   9mememRmRmSmS    vapour pressure 01, precipitation 00, sunshine 03
        # The section is longer than a 69-character GTS line, so group 9 goes on the next line.
        "111 18384 20126 30214013 402790150 5173 60113409 7215092 8000102",
        "9010003",
        # Section 2 (222), the normals:
        #   09120     0YbYbYcYc  period 1991-2020, last two figures of each year
        #   18389 20130          838.9 and 1013.0 hPa
        #   30210015  21.0 degC, st 1.5
        #   402730148 27.3 and 14.8 degC
        #   5169      16.9 hPa
        #   6009410   6R1R1R1R1nrnr (no quintile in section 2): 94 mm, 10 days
        #   7233      7S1S1S1 (no percentage in section 2): 233 h
        #   8020001   8yPyPyTyTyTxyTx  years missing: pressure 02, temperature 00, extremes 01
        #   9030005   9yeyeyRyRySyS    vapour pressure 03, precipitation 00, sunshine 05
        # and "=" ends the report.
        "222 09120 18389 20130 30210015 402730148 5169 6009410 7233 8020001",
        "9030005=",
    ])
    assert format_climat(monthly, normals) == expected


def test_missing_groups_are_left_out_like_a_real_report() -> None:
    # Byrd AWS (89324), July 2023, as sent on the GTS (AMRDC CLIMAT files):
    #   CLIMAT 07023 89324
    #   111 18023 31296108 412411361 8000000 9313131
    # An automatic station without sea-level pressure, vapour pressure, precipitation or
    # sunshine: groups 2, 5, 6 and 7 are absent, and group 9 says all 31 days are missing.
    monthly = ClimatMonthly(
        wigos_id="0-20000-0-89324", year=2023, month=7,
        station_pressure=802.3,                      # 18023
        mean_temperature=-29.6, temperature_std=10.8,  # 3 1 296 108: s=1 for negative
        mean_max_temperature=-24.1, mean_min_temperature=-36.1,  # 4 1241 1361
        missing_days_pressure=0, missing_days_temperature=0,
        missing_days_max_temperature=0, missing_days_min_temperature=0,  # 8 00 00 0 0
        missing_days_vapour_pressure=31, missing_days_precipitation=31,
        missing_days_sunshine=31,                    # 9 31 31 31
    )
    assert format_climat(monthly) == "CLIMAT 07023 89324\n111 18023 31296108 412411361 8000000 9313131="


def test_partly_missing_groups_get_solidi_and_the_sign_follows_rounding() -> None:
    monthly = ClimatMonthly(
        wigos_id=NAIROBI, year=2025, month=1,
        sea_level_pressure=998.75,          # 2PPPP: 998.75 -> 998.8 -> 9988
        mean_temperature=-0.04,             # rounds to 0.0: sign 0, so 30000 not 31000 ...
        mean_max_temperature=None, mean_min_temperature=-0.06,  # Tx missing: ////; -0.1 -> 1001
        precipitation=0.4, precipitation_days=0,  # 0.4 mm -> 0000; quintile unknown -> /
        sunshine=101.0,                     # sunshine without its percentage -> ///
        missing_days_pressure=3,            # only some counts known: the rest are solidi
        missing_days_precipitation=0,
    )
    expected = "\n".join([
        "CLIMAT 01025 63740",
        # 20988 | 30000/// (no standard deviation) | 4////1001 | 60000/00 | 7101/// |
        # 803//// (mT, mTx, mTn unknown) | 9//00// (me, mS unknown)
        "111 29988 30000/// 4////1001 60000/00 7101/// 803//// 9//00//=",
    ])
    assert format_climat(monthly) == expected


def test_sections_3_and_4_match_the_hand_written_report() -> None:
    monthly = ClimatMonthly(
        wigos_id=NAIROBI, year=2024, month=1,
        mean_max_temperature=-2.35, mean_min_temperature=-11.0,
        # Section 3: Tx >= 25/30/35/40 none; Tn < 0 on 31 days, Tx < 0 on 19; rain >= 1 on 4,
        # >= 5 on 2, >= 10 unknown (left as solidi), the rest unknown; snow on every day, > 10 cm
        # on 12, > 50 cm on none.
        days_max_ge_25=0, days_max_ge_30=0, days_max_ge_35=0, days_max_ge_40=0,
        days_min_below_0=31, days_max_below_0=19,
        days_precipitation_ge_1=4, days_precipitation_ge_5=2,
        days_snow_above_0=31, days_snow_above_1=31, days_snow_above_10=12, days_snow_above_50=0,
        # Section 4: the highest daily mean -0.04 on the 3rd (rounds to 0.0: sign 0); the lowest
        # -18.25 first on the 17th and again later (17 + 50 = 67); the highest Tx 4.1 on the 2nd;
        # the lowest Tn -24.6 on the 18th; the highest daily rain 7.35 mm on the 9th (74 tenths).
        highest_daily_mean_temperature=ClimatExtreme(-0.04, 3),
        lowest_daily_mean_temperature=ClimatExtreme(-18.25, 17, several_days=True),
        highest_temperature=ClimatExtreme(4.1, 2),
        lowest_temperature=ClimatExtreme(-24.6, 18),
        highest_daily_precipitation=ClimatExtreme(7.35, 9),
    )
    expected = "\n".join([
        "CLIMAT 01024 63740",
        "111 410241110",  # Tx -2.35 -> -2.4 (half away from zero): 1024; Tn -11.0: 1110
        # 0T25T25T30T30 | 1T35T35T40T40 | 2Tn0Tn0Tx0Tx0 | 3R01R01R05R05 | 4R10..R50: unknown, left out
        # | 5R100..R150: unknown, left out | 6s00s00s01s01 | 7s10s10s50s50
        "333 00000 10000 23119 30402 63131 71200",
        # 0sTxdTxdTxdyxyx | 1sTndTndTndynyn (+50: more than one day) | 2sTax..yax | 3sTan..yan | 4RxRxRxRxyryr
        "444 0000003 1118367 2004102 3124618 4007409=",
    ])
    assert format_climat(monthly) == expected


def test_a_month_without_data_is_a_nil_report() -> None:
    assert format_climat(ClimatMonthly(wigos_id=NAIROBI, year=2024, month=11)) == "CLIMAT 11024 63740 NIL="
    # Counts of missing days alone carry no data either.
    only_counts = ClimatMonthly(wigos_id=NAIROBI, year=2024, month=2, missing_days_precipitation=29)
    assert format_climat(only_counts) == "CLIMAT 02024 63740 NIL="


def test_more_than_nine_missing_days_of_tx_are_sent_as_nine() -> None:
    monthly = ClimatMonthly(
        wigos_id=NAIROBI, year=2024, month=5, mean_max_temperature=25.0,
        missing_days_pressure=0, missing_days_temperature=0,
        missing_days_max_temperature=10, missing_days_min_temperature=3,
    )
    assert format_climat(monthly) == "CLIMAT 05024 63740\n111 40250//// 8000093="


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"month": 13}, "month"),
        ({"month": 0}, "month"),
        ({"year": 99999}, "year"),
        ({"wigos_id": "0-404-0-NBO001"}, "wigos_id"),  # no 5-digit WMO index
        ({"wigos_id": "63740"}, "wigos_id"),
        ({"mean_temperature": 123.4}, "mean_temperature"),
        ({"sea_level_pressure": 1100.0}, "sea_level_pressure"),
        ({"precipitation_quintile": 7}, "precipitation_quintile"),
        ({"missing_days_precipitation": 31, "month": 2}, "missing_days_precipitation"),
        ({"days_max_ge_25": 30, "month": 2}, "days_max_ge_25"),
        ({"highest_temperature": ClimatExtreme(30.0, 31), "month": 4}, "highest_temperature"),
        ({"highest_daily_precipitation": ClimatExtreme(1000.0, 1)}, "highest_daily_precipitation"),
    ],
)
def test_bad_values_name_the_parameter(kwargs: dict, parameter: str) -> None:
    arguments = {"wigos_id": NAIROBI, "year": 2024, "month": 3} | kwargs
    with pytest.raises(ProductParameterError) as caught:
        ClimatMonthly(**arguments)
    assert caught.value.parameter == parameter
    assert f"'{parameter}'" in str(caught.value)


def test_station_index_comes_from_the_wigos_local_part() -> None:
    assert station_index("0-20000-0-63740") == "63740"
    assert station_index("0-20000-0-01001") == "01001"


# --------------------------------------------------------------------------- rules


def test_completeness_rule_allows_ten_missing_days_and_four_in_a_row() -> None:
    rule = CLIMAT_RULE
    present = [True] * 31
    ten_scattered = [d % 3 != 0 for d in range(31)]  # days 0, 3, ... 30: 11 missing
    assert ten_scattered.count(False) == 11
    assert not rule.allows(ten_scattered)
    ten_scattered[0] = True
    assert rule.allows(ten_scattered)  # 10 missing, never two in a row
    four_in_a_row = present.copy()
    four_in_a_row[5:9] = [False] * 4
    assert rule.allows(four_in_a_row)
    five_in_a_row = present.copy()
    five_in_a_row[5:10] = [False] * 5
    assert not rule.allows(five_in_a_row)


def test_normals_rule_needs_eighty_percent_and_no_four_missing_years_in_a_row() -> None:
    rule = NormalsRule()
    assert rule.allows([True] * 24 + [False] * 6) is False  # 6 missing in a row
    assert rule.allows([True, False] * 3 + [True] * 24) is True  # 27 of 30, gaps of one
    assert rule.allows([False] * 7 + [True] * 23) is False  # 23 < 24


def test_precipitation_quintile() -> None:
    reference = [10.0 * k for k in range(1, 11)]  # 10 .. 100 mm; limits 25, 45, 65, 85
    assert precipitation_quintile(5.0, reference) == 0  # below every reference value
    assert precipitation_quintile(10.0, reference) == 1
    assert precipitation_quintile(44.55, reference) == 2
    assert precipitation_quintile(45.0, reference) == 2  # on a limit: the lower quintile
    assert precipitation_quintile(86.0, reference) == 5
    assert precipitation_quintile(100.5, reference) == 6  # above every reference value


# --------------------------------------------------------------------------- from the archive


def _t(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def write_archive(root: Path, rows: list[dict]) -> None:
    """Write rows in the archive's hive layout (element=<code>/year=<y>/part-0.parquet)."""
    by_partition: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        by_partition.setdefault((row["element"], row["phenomenon_time"].year), []).append(row)
    for (element, year), part in by_partition.items():
        folder = root / ARCHIVE_PREFIX / f"element={element}" / f"year={year}"
        folder.mkdir(parents=True, exist_ok=True)
        columns = {
            "wigos_id": [r["wigos_id"] for r in part],
            "station_id": [1] * len(part),
            "phenomenon_time": [r["phenomenon_time"] for r in part],
            "duration_seconds": [r.get("duration_seconds", 86400) for r in part],
            "level": [0.0] * len(part),
            "source_id": [r.get("source_id", 1) for r in part],
            "value": [r["value"] for r in part],
            "qc_status": [r.get("qc_status", "passed") for r in part],
            "final_flag": [None] * len(part),
            "version": [1] * len(part),
            "changed_at": [datetime(2025, 1, 1, tzinfo=timezone.utc)] * len(part),
        }
        pq.write_table(pa.table(columns, schema=PARQUET_SCHEMA), folder / "part-0.parquet")


def daily(element: str, day: date, value: float | None, **extra: object) -> dict:
    return {"wigos_id": NAIROBI, "element": element, "phenomenon_time": _t(day), "value": value, **extra}


def march_2024_rows() -> list[dict]:
    rows = []
    for d in range(1, 32):
        day = date(2024, 3, d)
        rows.append(daily("PRES", day, 838.44))
        rows.append(daily("TDEW", day, 10.0))
        if d not in (1, 31):
            rows.append(daily("TMEAN", day, 20.0 + (d - 16) * 0.1))
        if d == 20:
            rows.append(daily("TMAX", day, 45.0, qc_status="failed"))  # counts as missing
        else:
            rows.append(daily("TMAX", day, 30.1 if d == 10 else 27.0))
        if d not in (5, 6, 7, 8, 9):
            rows.append(daily("TMIN", day, 15.0))
        rows.append(daily("PRCP", day, {3: 12.4, 4: 0.9, 15: 1.0, 28: 30.25}.get(d, 0.0)))
    # A second source for day 1 pressure: the lowest source id (1) wins.
    rows.append(daily("PRES", date(2024, 3, 1), 900.0, source_id=2))
    # An hourly value and a value of another station must not be taken.
    rows.append(daily("PRES", date(2024, 3, 2), 700.0, duration_seconds=3600))
    rows.append({**daily("PRES", date(2024, 3, 3), 700.0), "wigos_id": "0-20000-0-63741"})
    return rows


def normals_rows() -> list[dict]:
    """March of 2014-2023: a precipitation total of 10, 20, ... 100 mm; TMEAN 19.0 but not 2016."""
    rows = []
    for i, year in enumerate(range(2014, 2024)):
        for d in range(1, 32):
            day = date(year, 3, d)
            rows.append(daily("PRCP", day, 10.0 * (i + 1) if d == 10 else 0.0))
            if year != 2016:
                rows.append(daily("TMEAN", day, 19.0))
    return rows


@pytest.fixture
def bucket(tmp_path: Path) -> Bucket:
    return open_bucket(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))


@pytest.fixture
def archive(bucket: Bucket):
    write_archive(Path(bucket.root), march_2024_rows() + normals_rows())
    connection = connect_archive(bucket)
    yield connection
    connection.close()


def test_monthly_values_from_the_archive(archive) -> None:
    data = climat_from_archive(archive, NAIROBI, 2024, 3, normals_period=(2014, 2023))
    m = data.monthly
    assert m is not None
    assert m.station_pressure == pytest.approx(838.44)        # source 2 and the hourly value ignored
    assert m.sea_level_pressure is None                        # no MSLP at all
    assert m.mean_temperature == pytest.approx(20.0)           # symmetric around day 16
    # Sample standard deviation of 20.0 + 0.1 k, k = -14..14: sqrt(0.01 * 2030 / 28) = 0.8515
    assert m.temperature_std == pytest.approx(0.851469, abs=1e-6)
    assert m.mean_max_temperature == pytest.approx((27.0 * 29 + 30.1) / 30)  # day 20 failed QC
    assert m.mean_min_temperature is None                      # 5 days in a row missing
    # 6.112 exp(17.62 * 10 / 253.12) = 12.2603 hPa
    assert m.vapour_pressure == pytest.approx(12.2603, abs=1e-4)
    assert m.precipitation == pytest.approx(44.55)
    assert m.precipitation_days == 3                           # 12.4, 1.0, 30.25 (not 0.9)
    assert m.precipitation_quintile == 2                       # limits 25 < 44.55 <= 45
    assert m.sunshine is None and m.sunshine_percent_of_normal is None
    assert (m.missing_days_pressure, m.missing_days_temperature) == (0, 2)
    assert (m.missing_days_max_temperature, m.missing_days_min_temperature) == (1, 5)
    assert (m.missing_days_vapour_pressure, m.missing_days_precipitation, m.missing_days_sunshine) == (0, 0, 31)

    n = data.normals
    assert n is not None and (n.first_year, n.last_year) == (2014, 2023)
    assert n.precipitation == pytest.approx(55.0) and n.precipitation_days == 1
    assert n.mean_temperature == pytest.approx(19.0) and n.temperature_std == pytest.approx(0.0)
    assert n.missing_years_temperature == 1                    # 2016; 9 of 10 years suffice
    assert n.station_pressure is None and n.missing_years_pressure == 10
    assert n.missing_years_extreme_temperatures == 10
    assert (n.missing_years_vapour_pressure, n.missing_years_precipitation, n.missing_years_sunshine) == (10, 0, 10)


def test_report_from_the_archive_is_written_to_the_bucket(archive, bucket: Bucket) -> None:
    product = produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=(2014, 2023))
    expected = "\n".join([
        "CLIMAT 03024 63740",
        # 838.4 hPa | 20.0 degC, st 0.9 | Tx 27.1, Tn missing | e 12.3 hPa |
        # 45 mm, quintile 2, 3 days | missing days: P 00, T 02, Tx 1, Tn 5 | e 00, R 00, S 31
        "111 18384 30200009 40271//// 5123 60045203 8000215 9000031",
        # 2014-2023 | 19.0 degC, st 0.0 | 55 mm, 1 day | missing years: P 10, T 01, extremes 10
        # | e 10, R 00, S 10
        "222 01423 30190000 6005501 8100110 9100010",
        # Section 3, days of the month (30 Tx values: day 20 failed QC; Tn fails the rule):
        #   03001  Tx >= 25: 30 days, >= 30: 1 (day 10, 30.1)   10000  >= 35: 0, >= 40: 0
        #   2//00  Tn < 0 unknown (5 days in a row missing), Tx < 0: 0
        #   30302  R >= 1: 3 (12.4, 1.0, 30.25), >= 5: 2       40200  >= 10: 2, >= 50: 0
        #   50000  >= 100, >= 150: 0                            (no snow depth: groups 6, 7 left out)
        "333 03001 10000 2//00 30302 40200 50000",
        # Section 4, extremes and their days:
        #   0021430  highest daily mean 21.4 degC on the 30th   1018602  lowest 18.6 on the 2nd
        #   2030110  highest Tx 30.1 on the 10th                (lowest Tn: the month fails the rule)
        #   4030328  highest daily precipitation 30.25 mm -> 302.5 tenths -> 303, on the 28th
        "444 0021430 1018602 2030110 4030328=",
    ])
    assert product.text == expected
    assert product.key == "products/climat/0-20000-0-63740/2024-03.txt"
    assert bucket.fs.cat_file(bucket.path(product.key)).decode("ascii") == expected + "\n"


def test_a_month_without_data_gives_an_empty_product(archive, bucket: Bucket) -> None:
    product = produce_climat(archive, bucket, NAIROBI, 2024, 4, normals_period=(2014, 2023))
    assert product.empty and product.text is None
    assert "no daily values" in (product.reason or "") and "2024-04" in (product.reason or "")
    assert not bucket.fs.exists(bucket.path("products/climat/0-20000-0-63740/2024-04.txt"))


def test_unknown_station_and_bad_month_are_named(archive, bucket: Bucket) -> None:
    with pytest.raises(UnknownReferenceError, match="wigos_id"):
        produce_climat(archive, bucket, "0-20000-0-99999", 2024, 3)
    with pytest.raises(ProductParameterError) as caught:
        produce_climat(archive, bucket, NAIROBI, 2024, 13)
    assert caught.value.parameter == "month"
    with pytest.raises(ProductParameterError) as caught:
        produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=(2020, 1991))
    assert caught.value.parameter == "last_year"


def test_without_normals_the_report_has_no_section_2(archive) -> None:
    data = climat_from_archive(archive, NAIROBI, 2024, 3, normals_period=None)
    assert data.normals is None
    assert data.monthly is not None and data.monthly.precipitation_quintile is None
    assert "222" not in format_climat(data.monthly, data.normals)


# --------------------------------------------------------------------------- versions, QC, BUFR


def test_a_report_written_again_keeps_the_earlier_version(archive, bucket: Bucket) -> None:
    first = produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=None)
    assert first.version == 1 and first.replaced is None
    second = produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=(2014, 2023))
    assert second.key == first.key and second.version == 2
    assert second.replaced is not None and second.replaced.version == 1
    kept_text = "products/climat/0-20000-0-63740/_versions/2024-03/v1.txt"
    assert kept_text in second.replaced.kept
    assert bucket.fs.cat_file(bucket.path(kept_text)).decode("ascii") == first.text + "\n"
    assert bucket.fs.cat_file(bucket.path(second.key)).decode("ascii") == second.text + "\n"
    assert "replaced version 1" in second.replaced.describe()


def test_the_metadata_counts_the_suspect_values_used_and_the_values_excluded(archive, bucket: Bucket) -> None:
    product = produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=None)
    metadata = json.loads(bucket.fs.cat_file(bucket.path(product.metadata_key)))
    assert metadata["qc"]["policy"] == {"counted": ["none", "passed", "suspect"], "excluded": ["failed"]}
    assert metadata["qc"]["values_excluded"]["TMAX"] == 1  # day 20, failed QC
    assert sum(metadata["qc"]["suspect_values_used"].values()) == 0
    assert metadata["rules"]["monthly"] == {"max_missing": 10, "max_consecutive_missing": 4,
                                            "totals_require_complete": False}


BUFR_KEYS = {
    "sequence": "unexpandedDescriptors", "category": "dataCategory", "subcategory": "internationalDataSubCategory",
    "local": "#1#wigosLocalIdentifierCharacter", "block": "#1#blockNumber", "number": "#1#stationNumber",
    "year": "#1#year", "month": "#1#month", "days": "#2#timePeriod",
    "station_pressure": "#1#nonCoordinatePressure", "sea_level_pressure": "#1#pressureReducedToMeanSeaLevel",
    "t": "#1#airTemperature", "std": "#1#dailyMeanTemperatureStandardDeviation",
    "tx": "#1#maximumTemperatureAtHeightSpecifiedPast24Hours", "tn": "#1#minimumTemperatureAtHeightSpecifiedPast24Hours",
    "e": "#1#vapourPressure",
    "q1": "#1#qualifierForNumberOfMissingValuesInCalculationOfStatistic",
    "m1": "#1#totalNumberOfMissingEntitiesWithRespectToAccumulationOrAverage",
    "q4": "#4#qualifierForNumberOfMissingValuesInCalculationOfStatistic",
    "m4": "#4#totalNumberOfMissingEntitiesWithRespectToAccumulationOrAverage",
    "c1": "#1#conditionForWhichNumberOfDaysOfOccurrenceFollows", "n1": "#1#totalNumberWithRespectToAccumulationOrAverage",
    "c2": "#2#conditionForWhichNumberOfDaysOfOccurrenceFollows", "n2": "#2#totalNumberWithRespectToAccumulationOrAverage",
    "c5": "#5#conditionForWhichNumberOfDaysOfOccurrenceFollows", "n5": "#5#totalNumberWithRespectToAccumulationOrAverage",
    "highest_mean": "#1#highestDailyMeanTemperature", "highest_mean_day": "#2#day",
    "highest_mean_qualifier": "#1#dayOfOccurrenceQualifier",
    "highest_tx": "#2#airTemperature", "highest_tx_day": "#4#day", "lowest_tn": "#3#airTemperature",
    "r": "#1#totalAccumulatedPrecipitation", "rd": "#1#frequencyGroupPrecipitation",
    "nr": "#1#numberOfDaysWithPrecipitationEqualToOrMoreThan1Mm",
    "r_missing": "#7#totalNumberOfMissingEntitiesWithRespectToAccumulationOrAverage",
    "c19": "#19#conditionForWhichNumberOfDaysOfOccurrenceFollows", "n19": "#19#totalNumberWithRespectToAccumulationOrAverage",
    "rx": "#1#highestDailyAmountOfPrecipitation", "rx_day": "#8#day",
    "first_year": "#2#year", "last_year": "#3#year", "normal_t": "#4#airTemperature",
    "normal_r": "#2#totalAccumulatedPrecipitation", "normal_nr": "#2#numberOfDaysWithPrecipitationEqualToOrMoreThan1Mm",
    "q9": "#9#qualifierForNumberOfMissingValuesInCalculationOfStatistic",
    "m9": "#9#totalNumberOfMissingEntitiesWithRespectToAccumulationOrAverage",
}


def decode_one(data: bytes, tmp_path: Path) -> dict:
    path = tmp_path / "climat.bufr"
    path.write_bytes(data)
    with path.open("rb") as handle:
        message = eccodes.codes_bufr_new_from_file(handle)
        assert eccodes.codes_bufr_new_from_file(handle) is None  # one message
    try:
        eccodes.codes_set(message, "unpack", 1)
        decoded = {}
        for name, key in BUFR_KEYS.items():
            if name == "sequence":
                decoded[name] = eccodes.codes_get_array(message, key).tolist()
            else:
                decoded[name] = None if eccodes.codes_is_missing(message, key) else eccodes.codes_get(message, key)
        return decoded
    finally:
        eccodes.codes_release(message)


def test_climat_bufr_decodes_to_the_figures_of_the_text(archive, bucket: Bucket, tmp_path: Path) -> None:
    text = produce_climat(archive, bucket, NAIROBI, 2024, 3, normals_period=(2014, 2023)).text
    product = produce_climat_bufr(archive, bucket, NAIROBI, 2024, 3, normals_period=(2014, 2023),
                                  station=ClimatStation(NAIROBI, name="Nairobi JKIA", latitude=-1.31924,
                                                        longitude=36.92478, elevation=1624.0, timezone="Africa/Nairobi"))
    assert product.key == "products/climat/0-20000-0-63740/2024-03.bufr" and product.version == 1
    assert product.bufr.warnings == ()
    m = decode_one(bucket.fs.cat_file(bucket.path(product.key)), tmp_path)
    # 3 01 150 + 3 07 073, CLIMAT's data category (C-13: 0/20), the station and the month.
    assert m["sequence"] == [301150, 307073] and (m["category"], m["subcategory"]) == (0, 20)
    assert (m["local"], m["block"], m["number"], m["year"], m["month"], m["days"]) == ("63740", 63, 740, 2024, 3, 31)
    # Section 1, as the text says it (see test_report_from_the_archive_is_written_to_the_bucket):
    # 18384 -> 838.4 hPa; 30200009 -> 20.0 degC, st 0.9; 40271//// -> Tx 27.1, Tn missing;
    # 5123 -> e 12.3 hPa; 60045203 -> 45 mm, quintile 2, 3 days; 8000215 / 9000031.
    assert m["station_pressure"] == pytest.approx(83840.0) and m["sea_level_pressure"] is None
    assert m["t"] == pytest.approx(293.15) and m["std"] == pytest.approx(0.9)
    assert m["tx"] == pytest.approx(300.25) and m["tn"] is None
    assert m["e"] == pytest.approx(1230.0)
    assert (m["q1"], m["m1"], m["q4"], m["m4"]) == (1, 0, 8, 5)  # pressure 0 days missing, Tn 5
    assert (m["r"], m["rd"], m["nr"], m["r_missing"]) == (pytest.approx(45.0), 2, 3, 0)
    # Section 3: 333 03001 ... 30302: condition 4 (Tx >= 25 degC) on 30 days, 5 (>= 30) on 1;
    # Tn < 0 unknown; condition 10 (rain >= 1 mm) on 3 days.
    assert (m["c1"], m["n1"], m["c2"], m["n2"]) == (4, 30, 5, 1)
    assert (m["c5"], m["n5"]) == (8, None)
    assert (m["c19"], m["n19"]) == (10, 3)
    # Section 4: 0021430 (21.4 degC on the 30th, one day only), 2030110, 4030328.
    assert (m["highest_mean"], m["highest_mean_day"], m["highest_mean_qualifier"]) == (pytest.approx(294.55), 30, 0)
    assert (m["highest_tx"], m["highest_tx_day"]) == (pytest.approx(303.25), 10)
    assert m["lowest_tn"] is None
    assert (m["rx"], m["rx_day"]) == (pytest.approx(30.3), 28)
    # Section 2: 01423 30190000 6005501, years missing (qualifier 2: temperature) 01.
    assert (m["first_year"], m["last_year"]) == (2014, 2023)
    assert m["normal_t"] == pytest.approx(292.15) and m["normal_r"] == pytest.approx(55.0) and m["normal_nr"] == 1
    assert (m["q9"], m["m9"]) == (2, 1)
    assert "30200009" in text and "6005501" in text


def test_the_climat_template_travels_with_the_project_and_validates() -> None:
    from opencdms_kernel.products import bufr, climat_bufr

    assert bufr.template_file("climat-template").is_relative_to(Path(bufr.__file__).resolve().parent.parent)
    loaded = bufr.template("climat-template")  # checked against csv2bufr's own schema when loaded
    assert {"eccodes_key": "unexpandedDescriptors", "value": "array:301150,307073"} in loaded["header"]
    assert bufr.template_columns("climat-template") == set(climat_bufr.COLUMNS)
    assert climat_bufr.template_metadata()["label"] == "climat-template"
