"""QC benchmark: 10 million observations, range + step + persistence + consistency, flags
written back to PostgreSQL, against a plain pandas groupby implementation of the same checks
on the same data, measured in the same run.

Data: the demo network (daily TMAX, TMIN, PRCP with its injected errors) sized to --rows,
ingested through the normal pipeline, exported to the Parquet archive, vacuumed (as
autovacuum would be after the load), with station/month range thresholds derived from it (as
an operator would) and the network defaults of migration 0002 for step and persistence.

Measured (medians of --repeat runs):
- opencdms run_qc, first run: archive refresh (nothing to export), read, the four checks,
  staging and the sparse write-back (only flagged rows are written, through the audit
  triggers), the qc_run record.  Before each repeat the previous run's flags are removed and
  the archive re-exported (not timed), so each repeat is a first run.
- opencdms run_qc again with nothing changed (the flagged rows are compared, none written).
- baseline: pandas reads the same archive and computes the same flags with groupby/shift/
  merge.  It writes nothing back, so the comparison favours the baseline.

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
from opencdms_kernel.qc import QcRunResult, QcTest, derive_and_store_range_thresholds, run_qc  # noqa: E402
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

    # Step and persistence: network rules per element and duration.
    network = thresholds[thresholds.station_id.isna() & thresholds.month.isna()]
    step = network[network.test == "step"][["element", "duration_seconds", "max_change"]]
    persistence = network[network.test == "persistence"][["element", "duration_seconds", "max_run", "exclude_value"]]
    df = df.merge(step.astype({"duration_seconds": "int32"}), on=["element", "duration_seconds"], how="left")
    df = df.merge(persistence.astype({"duration_seconds": "int32"}), on=["element", "duration_seconds"], how="left")
    grouped = df.groupby(series, sort=False)
    gap = pd.to_timedelta(df["duration_seconds"], unit="s")
    linked = (df["phenomenon_time"] - grouped["phenomenon_time"].shift(1)) <= gap
    before = (df["value"] - grouped["value"].shift(1)).where(linked)
    after = before.groupby([df[c] for c in series], sort=False).shift(-1)
    jump_in = before.abs() > df["max_change"]
    jump_out = after.abs() > df["max_change"]
    spike = jump_in & jump_out & (np.sign(before) != np.sign(after))
    spike_before = spike.groupby([df[c] for c in series], sort=False).shift(1, fill_value=False)
    step_flag = spike | (jump_in & ~spike & ~spike_before)

    same = linked & (df["value"] == grouped["value"].shift(1))
    run = (~same).cumsum()
    length = df.groupby(run)["value"].transform("size")
    persistence_flag = (length > df["max_run"]) & (df["value"] != df["exclude_value"])

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
        derived = derive_and_store_range_thresholds(datastore, bucket, user="bench")
        print(f"setup: {loaded.inserted:,} observations ingested, {exported.rows:,} archived, "
              f"{derived.stored:,} station/month thresholds, in {time.perf_counter() - started:.1f} s", flush=True)
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
