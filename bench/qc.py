"""QC benchmark: 10 million observations, range + step + persistence + consistency, flags
written back to PostgreSQL, against a plain pandas groupby implementation of the same checks
on the same data, measured in the same run.

Data: the demo network (daily TMAX, TMIN, PRCP with its injected errors) sized to --rows,
ingested through the normal pipeline, exported to the Parquet archive, vacuumed (as
autovacuum would be after the load), with station/month range, step and persistence
thresholds derived from it (as an operator would; the network defaults where none is).

Measured (medians of --repeat runs):
- opencdms run_qc, first run: archive refresh (nothing to export), read, the four checks,
  staging and the sparse write-back (only flagged rows are written, through the audit
  triggers), the qc_run record.  Before each repeat the previous run's flags are removed and
  the archive re-exported (not timed), so each repeat is a first run.
- opencdms run_qc again with nothing changed (the flagged rows are compared, none written).
- baseline: pandas reads the same archive and computes the same flags with groupby/shift/
  merge: station/month limits where derived, else the network's; spikes, steps and the step
  back from a block; runs of equal values judged per run, and for the runs longer than their
  limit the series' resolution, the station's other elements during the run and the series'
  own run-length tail (qc/persistence.py).  It writes nothing back, so the comparison favours
  the baseline.  (The variance floor, min_spread, is in no rule here and not in the baseline.)

Usage: python bench/qc.py [--rows 10000000] [--repeat 3]
Runs on the embedded PostgreSQL unless OPENCDMS_DATABASE_URL names a server.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, Measurement, postgres_admin_url, report, scratch_datastore, timed  # noqa: E402
from ingest import make_input  # noqa: E402

from opencdms_kernel.archive import ARCHIVE_PREFIX, archive_files, export_archive, read_manifest  # noqa: E402
from opencdms_kernel.bucket import Bucket, open_bucket  # noqa: E402
from opencdms_kernel.db.engine import Datastore  # noqa: E402
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest  # noqa: E402
from opencdms_kernel.qc import QcRunResult, QcTest, derive_and_store_thresholds, run_qc  # noqa: E402
from opencdms_kernel.stations import import_stations  # noqa: E402

TESTS = (QcTest.RANGE, QcTest.STEP, QcTest.PERSISTENCE, QcTest.CONSISTENCY)

_RESET_SQL = """
UPDATE observation
SET result_quality = result_quality - CAST(:tests AS text[]), qc_status = 'none', final_flag = NULL
WHERE qc_status <> 'none'
"""


def vacuum(datastore: Datastore) -> None:
    """VACUUM ANALYZE observation, as autovacuum does after a bulk load.  Without it the BRIN
    index on changed_at is not summarised yet, and the archive export's "what changed" scan
    (run at the start of every QC run) reads the whole table: 0.6-1.6 s at 10 M rows here."""
    with datastore.engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        connection.execute(sa.text("VACUUM ANALYZE observation"))


def reset_flags(datastore: Datastore, bucket: Bucket) -> None:
    """Remove the previous run's flags and refresh the archive (not timed)."""
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'bench', true)"))
        connection.execute(sa.text(_RESET_SQL), {"tests": [t.value for t in QcTest]})
    vacuum(datastore)
    export_archive(datastore, bucket)


# --------------------------------------------------------------------------- pandas baseline


def load_rules(datastore: Datastore) -> dict[str, pd.DataFrame]:
    """The rules in force, as the baseline's lookup tables."""
    with datastore.engine.connect() as connection:
        current = """
            SELECT t.*, e.code AS element FROM (
                SELECT DISTINCT ON (test, element_id, station_id, month, duration_seconds) q.*
                FROM qc_threshold AS q
                ORDER BY test, element_id, station_id, month, duration_seconds, version DESC) AS t
            JOIN element AS e ON e.id = t.element_id WHERE t.active"""
        thresholds = pd.read_sql(sa.text(current), connection)
        elements = pd.read_sql(sa.text("SELECT code AS element, valid_min, valid_max FROM element"), connection)
        relations = pd.read_sql(sa.text("""
            SELECT l.code AS left_element, r.operator, rr.code AS right_element, r.right_value, r.tolerance
            FROM qc_relation AS r JOIN element AS l ON l.id = r.left_element_id
            LEFT JOIN element AS rr ON rr.id = r.right_element_id WHERE r.active"""), connection)
    return {"thresholds": thresholds, "elements": elements, "relations": relations}


def pandas_qc(bucket: Bucket, rules: dict[str, pd.DataFrame]) -> int:
    """The same four checks with pandas; returns how many values it flags."""
    # The current generation's files only: superseded ones stay a while for their readers.
    files = archive_files(bucket, read_manifest(bucket))
    df = pads.dataset(files, format="parquet", partitioning="hive", partition_base_dir=bucket.path(ARCHIVE_PREFIX)).to_table(
        columns=["station_id", "phenomenon_time", "duration_seconds", "level", "source_id", "value", "element"],
    ).to_pandas()
    df["element"] = df["element"].astype(str)
    df = df[df["value"].notna()]
    middle = df["phenomenon_time"] + pd.to_timedelta(df["duration_seconds"] // 2, unit="s")
    df["month"] = middle.dt.month
    series = ["element", "station_id", "duration_seconds", "level", "source_id"]
    df = df.sort_values(series + ["phenomenon_time"], kind="stable").reset_index(drop=True)
    thresholds = rules["thresholds"]

    # Range: station/month thresholds (the ones derived here), then the physical limits.
    station_month = thresholds[(thresholds.test == "range") & thresholds.station_id.notna() & thresholds.month.notna()]
    df = df.merge(
        station_month[["element", "station_id", "month", "duration_seconds", "low", "high"]]
        .astype({"station_id": "int32", "month": "int32", "duration_seconds": "int32"}),
        on=["element", "station_id", "month", "duration_seconds"], how="left",
    )
    df = df.merge(rules["elements"], on="element", how="left")
    range_flag = (df.value < df.low) | (df.value > df.high) | (df.value < df.valid_min) | (df.value > df.valid_max)

    # Step and persistence: the station/month rule where derived, else the network's.
    df["pos"] = np.arange(len(df))
    df["series_id"] = df.groupby(series, sort=False).ngroup()
    df = _with_rule(df, thresholds, "step", ["max_change", "max_gap_seconds"])
    df = _with_rule(df, thresholds, "persistence", ["max_run", "exclude_value", "max_gap_seconds", "resolution"])
    grouped = df.groupby("series_id", sort=False)
    since = df["phenomenon_time"] - grouped["phenomenon_time"].shift(1)
    previous = grouped["value"].shift(1)

    gap = pd.to_timedelta(df["step_max_gap_seconds"].fillna(df["duration_seconds"]), unit="s")
    change = (df["value"] - previous).where(since <= gap)
    jump = change.abs() > df["step_max_change"]
    spike = jump & jump.shift(-1, fill_value=False) & (change * change.shift(-1) < 0)
    steps = jump & ~spike & ~spike.shift(1, fill_value=False)
    # A step back to the level before the step just before it (same series, within a block
    # of 31 values, the other way, the two adding up to no more than the limit) is not flagged.
    found = df.loc[steps, ["pos", "series_id", "step_max_change"]].assign(change=change[steps])
    back = ((found["series_id"] == found["series_id"].shift(1)) & (found["pos"] - found["pos"].shift(1) <= 31)
            & (found["change"] * found["change"].shift(1) < 0)
            & ((found["change"] + found["change"].shift(1)).abs() <= found["step_max_change"]))
    step_flag = spike.copy()
    step_flag[found.index[~back.to_numpy()]] = True

    gap = pd.to_timedelta(df["persistence_max_gap_seconds"].fillna(df["duration_seconds"]), unit="s")
    same = (since <= gap) & (df["value"] == previous)
    df["run"] = (~same).cumsum()
    runs = df.groupby("run", sort=False).agg(
        first=("pos", "first"), last=("pos", "last"), length=("value", "size"), value=("value", "first"),
        series_id=("series_id", "first"), limit=("persistence_max_run", "first"),
        exclude=("persistence_exclude_value", "first"), rule_resolution=("persistence_resolution", "first"),
        begin=("phenomenon_time", "first"), end=("phenomenon_time", "last"))
    runs = runs[runs["value"] != runs["exclude"]]  # NaN: nothing excluded
    longer = runs[runs["length"] > runs["limit"]]
    persistence_flag = pd.Series(False, index=df.index)
    if len(longer):
        limit = _run_limits(df, same, longer)
        flagged = longer[longer["length"] > limit]
        for first, last in zip(flagged["first"].tolist(), flagged["last"].tolist()):  # a few runs
            persistence_flag.iloc[first:last + 1] = True

    # Consistency: element pairs of the same station and time, and constants.
    consistency_flag = pd.Series(False, index=df.index)
    key = ["station_id", "phenomenon_time", "duration_seconds", "level", "source_id"]
    for relation in rules["relations"].itertuples():
        left = df[df.element == relation.left_element]
        if relation.right_element is None:
            right_value = relation.right_value
            broken = _broken(relation.operator, left["value"], right_value, relation.tolerance)
            consistency_flag[left.index[broken.to_numpy()]] = True
            continue
        right = df[df.element == relation.right_element]
        pairs = left[key + ["value"]].reset_index().merge(
            right[key + ["value"]].reset_index(), on=key, suffixes=("_left", "_right"))
        broken = _broken(relation.operator, pairs["value_left"], pairs["value_right"], relation.tolerance)
        consistency_flag[pairs.loc[broken, "index_left"]] = True
        consistency_flag[pairs.loc[broken, "index_right"]] = True
    return int((range_flag | step_flag | persistence_flag | consistency_flag).sum())


def _with_rule(df: pd.DataFrame, thresholds: pd.DataFrame, test: str, columns: list[str]) -> pd.DataFrame:
    """``<test>_<column>`` of the rule of each row: the station/month rule, else the network's."""
    rules = thresholds[thresholds.test == test]
    keys = {"station_id": "int32", "month": "int32", "duration_seconds": "int32"}
    station = rules[rules.station_id.notna() & rules.month.notna()][["element", *keys, *columns]].astype(keys)
    network = rules[rules.station_id.isna() & rules.month.isna()][["element", "duration_seconds", *columns]]
    station = station.assign(has_station=True).rename(columns={c: f"s_{c}" for c in columns})
    network = network.astype({"duration_seconds": "int32"}).rename(columns={c: f"n_{c}" for c in columns})
    df = df.merge(station, on=["element", *keys], how="left").merge(network, on=["element", "duration_seconds"], how="left")
    has_station = df.pop("has_station").fillna(False).astype(bool)
    for c in columns:
        df[f"{test}_{c}"] = df.pop(f"s_{c}").where(has_station, df[f"n_{c}"])
        df.pop(f"n_{c}")
    return df


def _run_limits(df: pd.DataFrame, same: pd.Series, longer: pd.DataFrame) -> pd.Series:
    """The limit each run longer than its rule's is held to (qc/persistence.py, judge_runs)."""
    candidates = longer["series_id"].unique()
    # Each candidate series' neighbourhood: 2000 values either side of its long runs.
    ends = df[df["series_id"].isin(candidates)].groupby("series_id")["pos"].agg(["min", "max"])
    window = longer.groupby("series_id").agg(low=("first", "min"), high=("last", "max"))
    window["low"] = np.maximum(window["low"] - 2000, ends["min"])
    window["high"] = np.minimum(window["high"] + 2000, ends["max"])
    rows = df.iloc[np.concatenate([np.arange(low, high + 1) for low, high in window.itertuples(index=False)])]
    # The resolution: the smallest change at least 1 % of the non-zero changes reach.
    moved = rows["value"].diff().abs().round(5)
    moved = moved[(rows["series_id"] == rows["series_id"].shift(1)) & (moved > 0)]
    by_series = moved.groupby(rows.loc[moved.index, "series_id"])
    resolution = by_series.quantile(0.01, interpolation="lower").where(by_series.size() >= 20)
    ratio = longer["series_id"].map(resolution) / longer["rule_resolution"]
    coarser = ratio > 1.5
    # What the station's other elements did during the run.
    station_of = df.groupby("series_id", sort=False)[["station_id", "duration_seconds", "level", "source_id"]].first()
    pairs = longer[["series_id", "begin", "end", "length"]].reset_index().merge(
        station_of.loc[candidates].reset_index(), on="series_id").merge(
        station_of.reset_index().rename(columns={"series_id": "other"}),
        on=["station_id", "duration_seconds", "level", "source_id"])
    pairs = pairs[pairs["other"] != pairs["series_id"]]
    others = df[df["series_id"].isin(pairs["other"].unique())]
    changed = (others["series_id"] == others["series_id"].shift(1)) & (others["value"] != others["value"].shift(1))
    during = pairs.merge(others[["series_id", "phenomenon_time"]].assign(changed=changed),
                         left_on="other", right_on="series_id", suffixes=("", "_other"))
    during = during[(during["phenomenon_time"] > during["begin"]) & (during["phenomenon_time"] <= during["end"])]
    most = during.groupby(["run", "other"])["changed"].sum().groupby("run").max().reindex(longer.index)
    present = most.notna()
    changing = present & (most.fillna(0) >= 0.5 * np.maximum(longer["length"] - 1, 1))
    allowed = changing | (~present & coarser)
    # The series' own runs there: how long they are ordinary at 1e-5 (1e-7 while the others change).
    continues = same.loc[rows.index] & (rows["pos"] == rows["pos"].shift(1) + 1)
    own_runs = rows.groupby((~continues).cumsum()).agg(
        series_id=("series_id", "first"), length=("value", "size"), value=("value", "first"),
        exclude=("persistence_exclude_value", "first"))
    own = own_runs[own_runs["value"] != own_runs["exclude"]].groupby("series_id")["length"]
    usual, rarer, counted = own.apply(_run_limit, k=3.0), own.apply(_run_limit, k=5.0), own.size()
    limit = longer["limit"]
    scaled = np.ceil(limit * ratio.where(coarser, 1.0))
    allowance = longer["series_id"].map(rarer).where(changing, longer["series_id"].map(usual))
    allowance = allowance.where(longer["series_id"].map(counted) >= 100, scaled)
    return limit.where(~allowed, np.fmax(limit, allowance))


def _run_limit(lengths: pd.Series, k: float) -> float:
    """The longest run still ordinary by a series' own runs (qc/series.py, run_length_limits)."""
    ordered = np.sort(lengths.to_numpy())
    n = ordered.size

    def percentile(share: float) -> int:
        return int(ordered[max(int(np.ceil(share * n - 1e-9)), 1) - 1])

    first = percentile(0.90) + 1
    second = max(percentile(0.99) + 1, first + 1)
    at_first, at_second = float((ordered > first - 1).sum()), max(float((ordered > second - 1).sum()), 0.5)
    if at_first == 0:
        first, at_first = 1, float(n)
    ratio = min(max((at_second / at_first) ** (1.0 / (second - first)), 1e-9), 0.999)
    share, target = at_second / n, 10.0 ** -(2.0 + k)
    more = np.ceil(np.log(target / share) / np.log(ratio) - 1e-9) if share > target else 0
    return second + more - 1


def _broken(operator: str, left: pd.Series, right: pd.Series | float, tolerance: float) -> pd.Series:
    return {
        "<=": lambda: left > right + tolerance, "<": lambda: left >= right + tolerance,
        ">=": lambda: left < right - tolerance, ">": lambda: left <= right - tolerance,
        "=": lambda: (left - right).abs() > tolerance,
    }[operator]()


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    path, stations_csv, rows = make_input(args.rows)
    print(f"input: {path} ({rows:,} observations)", flush=True)
    bucket_dir = WORK / "qc-bucket"
    shutil.rmtree(bucket_dir, ignore_errors=True)
    with postgres_admin_url() as admin_url, scratch_datastore(admin_url, bucket_dir) as (datastore, settings):
        bucket = open_bucket(settings)
        import_stations(datastore, stations_csv)
        started = time.perf_counter()
        loaded = ingest(IngestRequest.from_path(path),
                        datastore, bucket, "bench")
        if loaded.status is not IngestStatus.LOADED:
            raise SystemExit(f"ingest failed: {loaded.error}")
        exported = export_archive(datastore, bucket, full=True)
        vacuum(datastore)
        derived = derive_and_store_thresholds(datastore, bucket, user="bench")
        print(f"setup: {loaded.inserted:,} observations ingested, {exported.rows:,} archived, "
              f"{derived.stored:,} station/month thresholds (range, step, persistence), "
              f"in {time.perf_counter() - started:.1f} s", flush=True)
        checked = exported.rows

        ours = Measurement("opencdms run_qc (4 tests, flags written back)", checked)
        again = Measurement("opencdms run_qc again, nothing changed", checked)
        baseline = Measurement("baseline: pandas groupby, same checks, no write", checked)
        rules = load_rules(datastore)
        results: list[QcRunResult] = []
        flagged_by_pandas = 0
        for repeat in range(args.repeat):
            if repeat:
                reset_flags(datastore, bucket)
            result: list[QcRunResult] = []
            ours.seconds.append(timed(lambda: result.append(run_qc(datastore, bucket, tests=TESTS, user="bench"))))
            results.append(result[0])
            stages = ", ".join(f"{name} {seconds:.2f}" for name, seconds in result[0].stage_seconds.items())
            flagged = result[0].status_counts
            print(f"run {repeat + 1}: {ours.seconds[-1]:.2f} s ({stages}); checked {result[0].checked:,}, "
                  f"suspect {flagged['suspect']:,}, failed {flagged['failed']:,}, written {result[0].written:,}",
                  flush=True)
            export_archive(datastore, bucket)  # the write-back touched partitions: refresh, not timed
            second: list[QcRunResult] = []
            again.seconds.append(timed(lambda: second.append(run_qc(datastore, bucket, tests=TESTS, user="bench"))))
            assert second[0].written == 0, "a second run with nothing changed must write nothing"
            counts: list[int] = []
            baseline.seconds.append(timed(lambda: counts.append(pandas_qc(bucket, rules))))
            flagged_by_pandas = counts[0]
            print(f"  again {again.seconds[-1]:.2f} s; pandas {baseline.seconds[-1]:.2f} s, "
                  f"{flagged_by_pandas:,} values flagged", flush=True)
        ours_flagged = results[-1].status_counts["suspect"] + results[-1].status_counts["failed"]
        print(f"values flagged: opencdms {ours_flagged:,}, pandas {flagged_by_pandas:,}")
        assert ours_flagged == flagged_by_pandas, "the baseline must implement the same checks"
        stages = {name: statistics.median(r.stage_seconds[name] for r in results) for name in results[0].stage_seconds}
        print("run_qc stages, median seconds: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items()))

    shutil.rmtree(bucket_dir, ignore_errors=True)
    report(
        "quality control (range, step, persistence, consistency)",
        [ours, again, baseline],
        [
            ("run_qc seconds (10 M observations, flags written back)", ours.median, "<=", 5.0),
            ("run_qc speed / pandas groupby speed", baseline.median / ours.median, ">=", 5.0),
            ("run_qc again (nothing changed) seconds", again.median, "<=", 5.0),
        ],
    )


if __name__ == "__main__":
    main()
