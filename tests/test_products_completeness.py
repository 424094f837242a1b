"""Every path that applies a completeness rule gives the same answer on the same random gaps.

The rule paths left after unifying them (:mod:`opencdms_kernel.products.completeness`):

- bit masks (months of days, normals' years) and sorted positions (sub-daily slots), then
  ``judge`` / ``judge_years``;
- ``CompletenessRule.allows`` / ``NormalsRule.allows`` (one period at a time);
- xclim's own missing-value check (``MissingWMO`` / ``MissingAny``), as the indices use it;
- the products end to end: monthly summaries (DuckDB over the archive), CLIMAT's months,
  daily summaries of hourly and ten-minute values, normals from monthly values, ETCCDI indices.

Each is compared with the rule written out in the plainest way, on random gaps from a seeded
numpy generator (hypothesis is not installed): scattered days, runs at the start, middle and
end, empty and complete periods, over several rules.
"""

from __future__ import annotations

import calendar
import math
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from opencdms_kernel.archive import connect_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.products import CompletenessRule, Element, NormalsRule, Period, daily_summaries, monthly_summaries
from opencdms_kernel.products.climat import climat_from_archive
from opencdms_kernel.products.completeness import (
    gaps_from_masks,
    gaps_from_positions,
    gaps_from_presence,
    judge,
    judge_years,
)
from opencdms_kernel.products.indices import Frequency, climate_indices, period_validity
from opencdms_kernel.products.normals import NormalStatistic, normals_from_monthly
from opencdms_kernel.demo.synthetic_archive import observation_table, write_archive

SEED = 20260501
STATIONS = [f"0-20000-0-{61000 + i}" for i in range(16)]
YEARS = (2019, 2020)
RULES = (
    CompletenessRule(),                       # WMO 3/5: the monthly products' default
    CompletenessRule(10, 4, False),           # CLIMAT's
    CompletenessRule(6, 3, True),             # the sub-daily default
    CompletenessRule(0, 0, True),             # nothing may be missing
    CompletenessRule(2, 1, False),
    CompletenessRule(12, 6, True),
)


# --------------------------------------------------------------------------- the rule, written out


def plain(rule: CompletenessRule, present: list[bool]) -> tuple[int, int, bool, bool, bool]:
    """missing, longest run missing, meets the rule, complete, a total may be given."""
    missing = present.count(False)
    longest = run = 0
    for flag in present:
        run = 0 if flag else run + 1
        longest = max(longest, run)
    meets = missing <= rule.max_missing and longest <= rule.max_consecutive_missing
    complete = missing == 0
    return missing, longest, meets, complete, complete if rule.totals_require_complete else meets


def plain_years(rule: NormalsRule, present: list[bool]) -> bool:
    needed = math.ceil(rule.min_fraction * len(present) - 1e-9)  # "at least 80 %": 24 of 30
    longest = run = 0
    for flag in present:
        run = 0 if flag else run + 1
        longest = max(longest, run)
    return sum(present) >= needed and longest <= rule.max_consecutive_missing


def random_presence(rng: np.random.Generator, width: int) -> np.ndarray:
    """Gaps as they come: none, scattered, runs (at the start, the end, anywhere), everything."""
    kind = rng.choice(["complete", "scattered", "runs", "edge", "empty", "mixed"], p=[0.15, 0.3, 0.25, 0.1, 0.05, 0.15])
    present = np.ones(width, dtype=bool)
    if kind == "empty":
        present[:] = False
    if kind in ("scattered", "mixed"):
        present &= rng.random(width) >= rng.choice([0.05, 0.15, 0.3, 0.6])
    if kind in ("runs", "mixed"):
        for _ in range(rng.integers(1, 3)):
            length, start = int(rng.integers(1, 9)), int(rng.integers(0, width))
            present[start:start + length] = False
    if kind == "edge":
        length = int(rng.integers(1, 8))
        if rng.random() < 0.5:
            present[:length] = False
        else:
            present[width - length:] = False
    return present


# --------------------------------------------------------------------------- the in-memory paths


def test_masks_positions_allows_and_the_plain_rule_agree() -> None:
    rng = np.random.default_rng(SEED)
    cases = [random_presence(rng, int(rng.integers(1, 64))) for _ in range(3000)]
    for rule in RULES:
        for present in cases:
            width = len(present)
            expected = plain(rule, present.tolist())
            mask = sum(1 << int(i) for i in np.flatnonzero(present))
            for gaps in (gaps_from_masks(np.array([mask], dtype=np.uint64), width), gaps_from_presence(present[None, :])):
                verdict = judge(rule, gaps)
                got = (int(gaps.missing[0]), int(gaps.longest[0]), bool(verdict.meets_rule[0]),
                       bool(verdict.complete[0]), bool(verdict.totals_ok[0]))
                assert got == expected, (rule, present.astype(int).tolist(), got, expected)
            assert rule.allows(present.tolist()) == expected[2]


def test_many_periods_at_once_give_each_its_own_answer() -> None:
    """The vectorised paths on a batch of periods of different widths (the products' case)."""
    rng = np.random.default_rng(SEED + 1)
    cases = [random_presence(rng, int(rng.integers(28, 32))) for _ in range(2000)] + \
            [random_presence(rng, 144) for _ in range(300)]  # ten-minute slots: more than a mask holds
    widths = np.array([len(p) for p in cases])
    positions = np.concatenate([np.flatnonzero(p) for p in cases])
    offsets = np.concatenate([[0], np.cumsum([p.sum() for p in cases])])
    rule = CompletenessRule(5, 3, True)
    gaps = gaps_from_positions(offsets, positions, widths)
    short = widths <= 63
    masks = np.array([sum(1 << int(i) for i in np.flatnonzero(p)) for p, s in zip(cases, short) if s], dtype=np.uint64)
    from_masks = gaps_from_masks(masks, widths[short])
    for i, present in enumerate(cases):
        missing, longest, *_ = plain(rule, present.tolist())
        assert (gaps.missing[i], gaps.longest[i]) == (missing, longest), i
    assert (from_masks.missing == gaps.missing[short]).all() and (from_masks.longest == gaps.longest[short]).all()


def test_the_normals_rule_of_years_agrees() -> None:
    rng = np.random.default_rng(SEED + 2)
    rules = (NormalsRule(), NormalsRule(0.75, 4), NormalsRule(1.0, 0), NormalsRule(0.5, 10))
    for rule in rules:
        for _ in range(1500):
            present = random_presence(rng, 30)
            expected = plain_years(rule, present.tolist())
            mask = np.array([sum(1 << int(i) for i in np.flatnonzero(present))], dtype=np.uint64)
            assert bool(judge_years(rule, gaps_from_masks(mask, 30))[0]) == expected
            assert rule.allows(present.tolist()) == expected


def test_xclim_missing_check_agrees_with_the_rule() -> None:
    """The indices' path: xclim's MissingWMO / MissingAny on station x day arrays."""
    rng = np.random.default_rng(SEED + 3)
    days = pd.date_range("2019-01-01", "2020-12-31", freq="D")
    month_of = days.year * 12 + days.month
    starts = np.flatnonzero(days.is_month_start)
    present = np.concatenate(
        [np.concatenate([random_presence(rng, int(n)) for n in np.diff(np.append(starts, len(days)))])[None, :]
         for _ in range(40)]
    )
    for rule in RULES:
        for strict in (False, True):
            monthly = period_validity(~present, days, rule, strict, Frequency.MONTHLY)
            annual = period_validity(~present, days, rule, strict, Frequency.ANNUAL)
            for station in range(present.shape[0]):
                verdicts = []
                for m, (key, _) in enumerate(pd.Series(month_of).groupby(month_of)):
                    flags = present[station, month_of == key].tolist()
                    _, _, meets, complete, _ = plain(rule, flags)
                    expected = complete if strict else meets
                    verdicts.append(expected)
                    assert monthly[station, m] == expected, (rule, strict, station, m)
                assert annual[station].tolist() == [all(verdicts[:12]), all(verdicts[12:])]


# --------------------------------------------------------------------------- the products end to end


@pytest.fixture(scope="module")
def gappy_archive(tmp_path_factory: pytest.TempPathFactory):
    """Daily TMAX and PRCP of 16 stations over 2019-2020 with the same random gaps for both."""
    rng = np.random.default_rng(SEED + 4)
    presence: dict[tuple[str, int, int], list[bool]] = {}
    columns: dict[str, list] = {"wigos_id": [], "element": [], "phenomenon_time": [], "value": []}
    for station in STATIONS:
        for year in YEARS:
            for month in range(1, 13):
                present = random_presence(rng, calendar.monthrange(year, month)[1])
                presence[(station, year, month)] = present.tolist()
                for day in np.flatnonzero(present):
                    for element in ("TMAX", "PRCP"):
                        columns["wigos_id"].append(station)
                        columns["element"].append(element)
                        columns["phenomenon_time"].append(datetime(year, month, int(day) + 1, tzinfo=timezone.utc))
                        columns["value"].append(round(float(rng.normal(25, 3)), 1) if element == "TMAX"
                                                else round(float(rng.gamma(0.5, 4)), 1))
    folder = tmp_path_factory.mktemp("gaps") / "bucket"
    write_archive(folder, observation_table(columns))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(folder), protocol="file"))
    return presence, connection


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.max_missing}-{r.max_consecutive_missing}-{r.totals_require_complete}")
def test_monthly_summaries_and_climat_follow_the_rule(gappy_archive, rule: CompletenessRule) -> None:
    presence, connection = gappy_archive
    table = monthly_summaries(connection, Period(*YEARS), elements=["TMAX", "PRCP"], rule=rule).table.to_pandas()
    assert len(table) == len(STATIONS) * 2 * 24
    for row in table.itertuples():
        missing, longest, meets, complete, totals_ok = plain(rule, presence[(row.wigos_id, row.year, row.month)])
        assert (row.missing_days, row.longest_gap, row.meets_rule, row.complete) == (missing, longest, meets, complete)
        if row.element == "TMAX":
            assert pd.notna(row.mean) == meets
        else:
            assert pd.notna(row.total) == totals_ok
    # CLIMAT takes its months from the same path: a few station-months under the same rule.
    for station, year, month in list(presence)[::97]:
        data = climat_from_archive(connection, station, year, month, normals_period=None, rule=rule)
        missing, _, meets, _, totals_ok = plain(rule, presence[(station, year, month)])
        if data.monthly is None:
            assert missing == calendar.monthrange(year, month)[1]
            continue
        assert data.monthly.missing_days_max_temperature == missing
        assert (data.monthly.mean_max_temperature is not None) == meets
        assert (data.monthly.precipitation is not None) == totals_ok


@pytest.mark.parametrize("rule", (RULES[0], RULES[4]), ids=("wmo", "lenient-totals"))
def test_indices_follow_the_rule(gappy_archive, rule: CompletenessRule) -> None:
    presence, connection = gappy_archive
    table = climate_indices(connection, Period(*YEARS), indices=["TXx", "PRCPTOT"], rule=rule).table.to_pandas()
    for row in table.itertuples():
        months = range(1, 13) if pd.isna(row.month) else (int(row.month),)
        verdicts = [plain(rule, presence[(row.wigos_id, row.year, m)]) for m in months]
        if row.index == "TXx":
            assert row.meets_rule == all(v[2] for v in verdicts), row
        else:  # PRCPTOT: a total, complete months unless the rule says otherwise
            assert row.meets_rule == all(v[4] for v in verdicts), row


def test_normals_from_monthly_follow_the_rule_of_years(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED + 5)
    period = Period(1991, 2020)
    rows, expected = [], {}
    for station in range(60):
        wigos_id = f"0-20000-0-{62000 + station}"
        for month in (1, 7):
            present = random_presence(rng, 30)
            expected[(wigos_id, month)] = present.tolist()
            for year in np.flatnonzero(present):
                rows.append({"wigos_id": wigos_id, "element": "TMAX", "year": 1991 + int(year), "month": month,
                             "mean": float(rng.normal(25, 1)), "suspect_values": 0, "excluded_values": 0})
    monthly = pa.Table.from_pylist(rows)
    import duckdb

    with duckdb.connect() as connection:
        for rule in (NormalsRule(), NormalsRule(0.75, 4)):
            table = normals_from_monthly(connection, monthly, period, rule,
                                         [NormalStatistic(Element.TMAX, "mean", "mean", "avg")]).to_pandas()
            for row in table[table.month.notna()].itertuples():
                assert row.meets_rule == plain_years(rule, expected[(row.wigos_id, int(row.month))]), row


@pytest.mark.parametrize("minutes", (60, 10), ids=("hourly", "ten-minute"))
def test_daily_summaries_of_sub_daily_slots_follow_the_rule(tmp_path: Path, minutes: int) -> None:
    rng = np.random.default_rng(SEED + minutes)
    slots = 24 * 60 // minutes
    presence: dict[tuple[str, date], list[bool]] = {}
    columns: dict[str, list] = {"wigos_id": [], "element": [], "phenomenon_time": [], "value": [], "duration_seconds": []}
    for station in STATIONS[:4]:
        for offset in range(30):
            day = date(2020, 3, 1) + timedelta(days=offset)
            present = random_presence(rng, slots)
            if not present.any():
                present[int(rng.integers(0, slots))] = True  # a day without any value is not listed
            presence[(station, day)] = present.tolist()
            for slot in np.flatnonzero(present):
                columns["wigos_id"].append(station)
                columns["element"].append("TMEAN")
                columns["phenomenon_time"].append(datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
                                                  + timedelta(minutes=int(slot) * minutes))
                columns["value"].append(round(float(rng.normal(18, 3)), 1))
                columns["duration_seconds"].append(minutes * 60)
    write_archive(tmp_path / "bucket", observation_table(columns))
    connection = connect_archive(Bucket(fs=fsspec.filesystem("file"), root=str(tmp_path / "bucket"), protocol="file"))
    for rule in (CompletenessRule(6, 3, True), CompletenessRule(30, 12, False), CompletenessRule(0, 0, True)):
        table = daily_summaries(connection, Period(2020, 2020), elements="TMEAN", rule=rule).table.to_pandas()
        assert len(table) == len(presence)
        for row in table.itertuples():
            missing, longest, meets, complete, _ = plain(rule, presence[(row.wigos_id, row.day)])
            assert (row.missing_values, row.longest_gap, row.meets_rule, row.complete) == (missing, longest, meets, complete)
