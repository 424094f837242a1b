"""ETCCDI indices through xclim (opencdms_kernel.products.indices) against plain pandas.

Three stations over 1991-1993, written to Parquet in tmp_path, with months that just meet or
just miss the 3/5 rule, a single missing rain day (counts and totals need complete months),
values exactly on the thresholds, and a station with TMAX only.
"""

from __future__ import annotations

from datetime import datetime, timezone

import fsspec
import numpy as np
import pandas as pd
import pytest

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import INDICES, CompletenessRule, Period, ProductParameterError, climate_indices
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive

P1, P2, P3 = "0-20000-0-62001", "0-20000-0-62002", "0-20000-0-62003"
PERIOD = Period(1991, 1993)
DAYS = pd.date_range("1991-01-01", "1993-12-31", freq="D")
STRICT = {"FD", "ID", "SU", "TR", "R10mm", "R20mm", "CDD", "CWD", "PRCPTOT"}


def series() -> dict[tuple[str, str], pd.Series]:
    rng = np.random.default_rng(3)
    season = np.cos(2 * np.pi * (DAYS.day_of_year - 15) / 365.25)
    data = {}
    for station, base in ((P1, 24.0), (P2, 2.0), (P3, 27.0)):
        tx = pd.Series(np.round(base + 4 * season + rng.normal(0, 3, DAYS.size), 1), index=DAYS)
        tn = pd.Series(np.round(tx - 9 - rng.gamma(2, 1.5, DAYS.size), 1), index=DAYS)
        pr = pd.Series(np.where(rng.random(DAYS.size) < 0.35, np.round(rng.gamma(0.7, 9, DAYS.size), 1), 0.0), index=DAYS)
        # Values exactly on the thresholds (>, >=, <) of the definitions.
        tx.iloc[[40, 200, 500]] = [25.0, 0.0, 25.0]
        tn.iloc[[41, 201, 501]] = [20.0, 0.0, 20.0]
        pr.iloc[[42, 202, 502, 503]] = [1.0, 10.0, 20.0, 0.9]
        data[(station, "TMAX")] = tx
        if station != P3:
            data[(station, "TMIN")] = tn
            data[(station, "PRCP")] = pr
    # P1's gaps: TMAX Jan 1991 5 scattered (meets), Feb 1991 6 (fails); TMIN Mar 1992 3 in a row
    # (meets), Apr 1992 4 in a row (fails); one PRCP day of June 1993.
    drop = {
        (P1, "TMAX"): [f"1991-01-{d:02d}" for d in (2, 9, 16, 23, 30)] + [f"1991-02-{d:02d}" for d in (2, 6, 10, 14, 18, 22)],
        (P1, "TMIN"): ["1992-03-10", "1992-03-11", "1992-03-12", "1992-04-10", "1992-04-11", "1992-04-12", "1992-04-13"],
        (P1, "PRCP"): ["1993-06-15"],
    }
    for key, dates in drop.items():
        data[key] = data[key].drop(pd.to_datetime(dates))
    return data


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    data = series()
    wigos, elements, times, values = [], [], [], []
    for (station, element), values_of in data.items():
        wigos += [station] * len(values_of)
        elements += [element] * len(values_of)
        times += [datetime(t.year, t.month, t.day, tzinfo=timezone.utc) for t in values_of.index]
        values += values_of.tolist()
    folder = tmp_path_factory.mktemp("indices") / "bucket"
    write_archive(folder, observation_table({"wigos_id": wigos, "element": elements, "phenomenon_time": times, "value": values}))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file"))
    return data, connection


# --------------------------------------------------------------------------- reference (plain)


def longest(flags: pd.Series) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def month_ok(missing: pd.Series, rule: CompletenessRule, strict: bool) -> pd.Series:
    """Per month start: does the month meet the rule (or, strict, miss nothing)?"""
    result = {}
    for start, flags in missing.groupby(missing.index.to_period("M")):
        if strict:
            result[start.to_timestamp()] = not flags.any()
        else:
            result[start.to_timestamp()] = flags.sum() <= rule.max_missing and longest(flags) <= rule.max_consecutive_missing
    return pd.Series(result)


def reference(data, station: str, name: str, frequency: str, rule: CompletenessRule) -> pd.Series | None:
    full = {e: data[(station, e)].reindex(DAYS) for e in ("TMAX", "TMIN", "PRCP") if (station, e) in data}
    tx, tn, pr = full.get("TMAX"), full.get("TMIN"), full.get("PRCP")
    inputs = {"TXx": [tx], "TXn": [tx], "TNx": [tn], "TNn": [tn], "DTR": [tx, tn], "FD": [tn], "ID": [tx],
              "SU": [tx], "TR": [tn], "R10mm": [pr], "R20mm": [pr], "CDD": [pr], "CWD": [pr], "PRCPTOT": [pr],
              "SDII": [pr], "Rx1day": [pr], "Rx5day": [pr]}[name]
    if any(s is None for s in inputs):
        return None
    freq = "YS" if frequency == "annual" else "MS"
    spells = lambda s: s.groupby(s.index.year).apply(longest)  # noqa: E731 - annual only
    value = {
        "TXx": lambda: tx.resample(freq).max(), "TXn": lambda: tx.resample(freq).min(),
        "TNx": lambda: tn.resample(freq).max(), "TNn": lambda: tn.resample(freq).min(),
        "DTR": lambda: (tx - tn).resample(freq).mean(),
        "FD": lambda: (tn < 0).resample(freq).sum(), "ID": lambda: (tx < 0).resample(freq).sum(),
        "SU": lambda: (tx > 25).resample(freq).sum(), "TR": lambda: (tn > 20).resample(freq).sum(),
        "R10mm": lambda: (pr >= 10).resample(freq).sum(), "R20mm": lambda: (pr >= 20).resample(freq).sum(),
        "CDD": lambda: pd.Series(spells(pr < 1).values, index=pd.date_range("1991", periods=3, freq="YS")),
        "CWD": lambda: pd.Series(spells(pr >= 1).values, index=pd.date_range("1991", periods=3, freq="YS")),
        "PRCPTOT": lambda: pr.where(pr >= 1, 0).resample(freq).sum(),
        "SDII": lambda: pr.where(pr >= 1).resample(freq).mean(),
        "Rx1day": lambda: pr.resample(freq).max(),
        "Rx5day": lambda: pr.rolling(5).sum().resample(freq).max(),
    }[name]().astype(float)
    missing = np.logical_or.reduce([s.isna() for s in inputs])
    ok = month_ok(pd.Series(missing, index=DAYS), rule, name in STRICT and rule.totals_require_complete)
    if frequency == "annual":
        ok = ok.groupby(ok.index.year).all()
        ok.index = pd.date_range("1991", periods=3, freq="YS")
    return value.where(ok)


def check(product, data, rule: CompletenessRule, names, frequencies) -> int:
    table = product.table.to_pandas()
    compared = 0
    for station in (P1, P2, P3):
        for name in names:
            for frequency in frequencies:
                if frequency == "monthly" and "monthly" not in [f.value for f in INDICES[name].frequencies]:
                    continue
                expected = reference(data, station, name, frequency, rule)
                rows = table[(table.wigos_id == station) & (table["index"] == name) & (table.frequency == frequency)]
                if expected is None:
                    assert rows.empty, (station, name)
                    continue
                assert len(rows) == len(expected), (station, name, frequency)
                for (_, row), (when, value) in zip(rows.iterrows(), expected.items()):
                    assert row.year == when.year and (frequency == "annual" or row.month == when.month)
                    if pd.isna(value):
                        assert pd.isna(row.value), (station, name, when, row.value)
                    else:
                        assert row.value == pytest.approx(value, abs=1e-6), (station, name, when)
                    compared += 1
    return compared


# --------------------------------------------------------------------------- tests


def test_indices_equal_the_plain_computation(archive) -> None:
    data, connection = archive
    product = climate_indices(connection, PERIOD)
    compared = check(product, data, CompletenessRule(), list(INDICES), ("annual", "monthly"))
    assert compared > 500
    assert product.extra["xclim_version"].startswith("0.")
    assert set(product.table.column("units").to_pylist()) >= {"degC", "days", "mm"}


def test_indices_follow_the_rule_at_its_edges(archive) -> None:
    _, connection = archive
    table = climate_indices(connection, PERIOD, indices=["TXx", "TNn", "PRCPTOT", "Rx1day"], stations=[P1]).table.to_pandas()

    def value(index, frequency, year, month=None):
        rows = table[(table["index"] == index) & (table.frequency == frequency) & (table.year == year)]
        rows = rows[rows.month.isna()] if month is None else rows[rows.month == month]
        return rows.iloc[0].value

    assert pd.notna(value("TXx", "monthly", 1991, 1))      # 5 missing days
    assert pd.isna(value("TXx", "monthly", 1991, 2))       # 6 missing days
    assert pd.isna(value("TXx", "annual", 1991))           # a failing month fails the year
    assert pd.notna(value("TXx", "annual", 1992))
    assert pd.notna(value("TNn", "monthly", 1992, 3))      # 3 in a row
    assert pd.isna(value("TNn", "monthly", 1992, 4))       # 4 in a row
    assert pd.isna(value("PRCPTOT", "annual", 1993))       # one rain day missing: no total
    assert pd.notna(value("Rx1day", "annual", 1993))       # but the highest day is given
    assert pd.notna(value("PRCPTOT", "annual", 1992))


def test_lenient_totals_and_a_tighter_rule(archive) -> None:
    data, connection = archive
    rule = CompletenessRule(max_missing=4, max_consecutive_missing=2, totals_require_complete=False)
    names = ["TXx", "TNn", "DTR", "SU", "PRCPTOT", "CDD", "Rx5day"]
    product = climate_indices(connection, PERIOD, indices=names, rule=rule)
    assert check(product, data, rule, names, ("annual", "monthly")) > 100


def test_station_without_an_input_gets_no_row_for_that_index(archive) -> None:
    _, connection = archive
    table = climate_indices(connection, PERIOD, indices=["TXx", "DTR"], frequencies="annual").table.to_pandas()
    assert set(table[table.wigos_id == P3]["index"]) == {"TXx"}
    assert set(table.frequency) == {"annual"} and table.month.isna().all()


def test_empty_period_and_bad_parameters(archive) -> None:
    _, connection = archive
    empty = climate_indices(connection, Period(2001, 2002), indices="TXx")
    assert empty.empty and empty.note.startswith("no data for TMAX")
    with pytest.raises(ProductParameterError) as raised:
        climate_indices(connection, PERIOD, indices=["TX90p"])
    assert raised.value.parameter == "indices"
    with pytest.raises(ProductParameterError) as raised:
        climate_indices(connection, PERIOD, frequencies=["weekly"])
    assert raised.value.parameter == "frequencies"
    with pytest.raises(Exception, match="parameter 'stations'"):
        climate_indices(connection, PERIOD, stations=["0-20000-0-00000"])


def test_a_day_with_two_values_counts_once_with_the_latest(tmp_path) -> None:
    days = pd.date_range("1991-01-01", "1991-12-31", freq="D")
    old, new = datetime(2025, 1, 1, tzinfo=timezone.utc), datetime(2025, 6, 1, tzinfo=timezone.utc)
    times = [datetime(t.year, t.month, t.day, tzinfo=timezone.utc) for t in days]
    extra = [times[9], times[9], times[40]]
    write_archive(tmp_path / "bucket", observation_table({
        "wigos_id": [P1] * (len(times) + 3), "element": ["TMAX"] * (len(times) + 3),
        "phenomenon_time": times + extra,
        "value": [20.0] * len(times) + [45.0, 50.0, 10.0],
        "source_id": [1] * len(times) + [2, 3, 2],
        "changed_at": [old] * len(times) + [new, old, new],
    }))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(tmp_path / "bucket"), protocol="file"))
    table = climate_indices(connection, Period(1991, 1991), indices=["TXx", "TXn"], frequencies="monthly").table.to_pandas()
    by = table.set_index(["index", "month"]).value
    assert by[("TXx", 1)] == 45.0     # the newer of the two other sources wins over the first
    assert by[("TXn", 2)] == 10.0     # a newer value replaces the older one on 10 February
    assert by[("TXx", 2)] == 20.0


def test_each_index_says_how_many_suspect_values_it_used_and_how_many_it_excluded(tmp_path) -> None:
    days = pd.date_range("1991-01-01", "1991-12-31", freq="D")
    times = [datetime(t.year, t.month, t.day, tzinfo=timezone.utc) for t in days]
    status = ["passed"] * len(days)
    status[4] = "suspect"     # 5 January: counts, and TXx of January says it used it
    status[40] = "failed"     # 10 February: left out, and said so
    write_archive(tmp_path / "bucket", observation_table({
        "wigos_id": [P1] * len(days), "element": ["TMAX"] * len(days), "phenomenon_time": times,
        "value": [20.0] * len(days), "qc_status": status,
    }))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(tmp_path / "bucket"), protocol="file"))
    product = climate_indices(connection, Period(1991, 1991), indices=["TXx"])
    table = product.table.to_pandas()
    monthly = table[table.frequency == "monthly"].set_index("month")
    assert (monthly.loc[1, "suspect_values"], monthly.loc[1, "excluded_values"]) == (1, 0)
    assert (monthly.loc[2, "suspect_values"], monthly.loc[2, "excluded_values"]) == (0, 1)
    assert monthly.loc[2, "meets_rule"]  # one day missing: still within the 3/5 rule
    annual = table[table.frequency == "annual"].iloc[0]
    assert (annual.suspect_values, annual.excluded_values) == (1, 1)
    assert product.qc["per"].startswith("station-index-period")
