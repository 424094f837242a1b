"""Ingest benchmark: 5 million long-form observations into PostgreSQL, against same-run baselines.

Baselines, all on the same server and (except where sampled) the same file:
- bare COPY into an unlogged, unindexed table with typed columns: the physical limit;
- pandas.DataFrame.to_sql (default method) on a sample of the file (it is too slow for all of it);
- a naive INSERT … ON CONFLICT DO UPDATE from a staging table with text keys, on a sample.
Also: re-ingest of the unchanged file, a full archive export of what was loaded, and the peak
memory (RSS) of a process that ingests the file and a file ``--memory-factor`` times larger:
ingest streams the file in chunks, so the peak must not grow with the file.

Usage: python bench/ingest.py [--rows 5000000] [--repeat 3]
Runs on the embedded PostgreSQL unless OPENCDMS_DATABASE_URL names a server.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WORK, Measurement, postgres_admin_url, report, scratch_datastore, timed  # noqa: E402

from opencdms_kernel.archive import export_archive  # noqa: E402
from opencdms_kernel.bucket import open_bucket  # noqa: E402
from opencdms_kernel.demo import DemoSpec, generate_demo_data  # noqa: E402
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest  # noqa: E402
from opencdms_kernel.stations import import_stations  # noqa: E402

DAILY_VALUES_PER_STATION_YEAR = 3 * 365.25
SAMPLE_ROWS = 200_000


def make_input(rows: int) -> tuple[Path, Path, int]:
    """One long-form CSV of about ``rows`` observations from the demo generator, and its stations."""
    years = 30
    stations = max(1, round(rows / (years * DAILY_VALUES_PER_STATION_YEAR)))
    folder = WORK / f"input-{stations}x{years}"
    big = folder / "observations.csv"
    if not big.exists():
        dataset = generate_demo_data(folder / "demo", DemoSpec(stations=stations, years=years, aws_stations=0))
        with big.open("wb") as out:
            out.write(dataset.daily_files[0].read_bytes().split(b"\n", 1)[0] + b"\n")
            for path in dataset.daily_files:
                out.write(path.read_bytes().split(b"\n", 1)[1])
    lines = sum(1 for _ in big.open("rb")) - 1
    return big, folder / "demo" / "stations.csv", lines


def make_larger_input(path: Path, stations_csv: Path, factor: int) -> tuple[Path, Path, int]:
    """``factor`` copies of the file, each with its stations under another WIGOS issuer."""
    big = path.with_name(f"observations-x{factor}.csv")
    stations = path.with_name(f"stations-x{factor}.csv")
    header, body = stations_csv.read_bytes().split(b"\n", 1)
    stations.write_bytes(header + b"\n" + b"".join(_reissued(body, k) for k in range(factor)))
    if not big.exists():
        with path.open("rb") as source, big.open("wb") as out:
            out.write(source.readline())
            for k in range(factor):
                source.seek(0)
                source.readline()
                while block := source.read(1 << 24):
                    block += source.readline()
                    out.write(_reissued(block, k))
    return big, stations, sum(1 for _ in big.open("rb")) - 1


def _reissued(lines: bytes, copy: int) -> bytes:
    """``lines`` whose WIGOS ids (issuer 20000, first field) are moved to issuer 20000 + ``copy``."""
    return (b"\n" + lines).replace(b"\n0-20000-", b"\n0-%d-" % (20000 + copy))[1:]


# VmHWM, not ru_maxrss: a forked child's ru_maxrss starts at its parent's size and survives exec.
PEAK_RSS = """
import re, sys
from pathlib import Path
from opencdms_kernel.bucket import open_bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest import IngestRequest, ingest
from opencdms_kernel.settings import Settings
settings = Settings(database_url=sys.argv[1], bucket_url=sys.argv[2])
with Datastore.open(settings) as datastore:
    result = ingest(IngestRequest.from_path(Path(sys.argv[3])), datastore, open_bucket(settings), "bench")
    assert result.status.value == "loaded", result.error
    peak_kb = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
    print(peak_kb * 1024, result.inserted, result.seconds)
"""


def peak_rss(admin_url: str, bucket_dir: Path, stations_csv: Path, path: Path) -> tuple[int, int, float]:
    """Peak RSS (bytes) of a fresh process ingesting ``path``, rows inserted and seconds."""
    with scratch_datastore(admin_url, bucket_dir) as (datastore, settings):
        import_stations(datastore, stations_csv)
        url = datastore.url.render_as_string(hide_password=False)
        out = subprocess.run([sys.executable, "-c", PEAK_RSS, url, settings.bucket_url, str(path)],
                             capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()
    return int(out[0]), int(out[1]), float(out[2])


def bare_copy(engine: sa.Engine, path: Path) -> None:
    with engine.begin() as connection:
        connection.execute(sa.text(
            "CREATE UNLOGGED TABLE bare_copy (station text, element text, time date, value double precision)"))
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor, path.open("rb") as source:
            with cursor.copy("COPY bare_copy FROM STDIN (FORMAT csv, HEADER true)") as copy:
                while chunk := source.read(1 << 20):
                    copy.write(chunk)
        connection.execute(sa.text("DROP TABLE bare_copy"))


def pandas_to_sql(engine: sa.Engine, sample: pd.DataFrame) -> None:
    sample.to_sql("pandas_sample", engine, if_exists="replace", index=False)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP TABLE pandas_sample"))


def naive_upsert(engine: sa.Engine, sample_csv: bytes) -> None:
    """COPY into a text-keyed staging table, then INSERT … ON CONFLICT joining on text keys."""
    with engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'bench', true)"))
        connection.execute(sa.text(
            "CREATE TEMP TABLE naive_staging (station text, element text, time text, value text) ON COMMIT DROP"))
        raw = connection.connection.driver_connection
        with raw.cursor() as cursor:
            with cursor.copy("COPY naive_staging FROM STDIN (FORMAT csv, HEADER true)") as copy:
                copy.write(sample_csv)
        connection.execute(sa.text("INSERT INTO source (name) VALUES ('naive') ON CONFLICT DO NOTHING"))
        connection.execute(sa.text("""
            INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level,
                                     source_id, value, changed_by)
            SELECT s.id, e.id, n.time::timestamptz, 86400, 0,
                   (SELECT id FROM source WHERE name = 'naive'), nullif(n.value, '')::float8, 'bench'
            FROM naive_staging n JOIN station s ON s.wigos_id = n.station JOIN element e ON e.code = n.element
            ON CONFLICT (station_id, element_id, phenomenon_time, duration_seconds, level, source_id)
            DO UPDATE SET value = excluded.value WHERE observation.value IS DISTINCT FROM excluded.value
        """))
        connection.execute(sa.text("DELETE FROM observation WHERE source_id = (SELECT id FROM source WHERE name = 'naive')"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-factor", type=int, default=4, help="the larger file for the memory check")
    args = parser.parse_args()

    path, stations_csv, rows = make_input(args.rows)
    print(f"input: {path} ({rows:,} observations, {path.stat().st_size / 1e6:.0f} MB)")
    data = path.read_bytes()
    sample_text = b"".join(data.splitlines(keepends=True)[: SAMPLE_ROWS + 1])
    sample = pd.read_csv(path, nrows=SAMPLE_ROWS, dtype={"value": "float64"}, keep_default_na=False, na_values=[""])

    ours = Measurement("opencdms ingest (parse, validate, COPY, merge)", rows)
    again = Measurement("re-ingest of the unchanged file", rows)
    copy = Measurement("baseline: bare COPY, unlogged, unindexed", rows)
    pandas_m = Measurement(f"baseline: pandas to_sql ({SAMPLE_ROWS:,} sample)", SAMPLE_ROWS)
    naive = Measurement(f"baseline: naive INSERT..ON CONFLICT ({SAMPLE_ROWS:,})", SAMPLE_ROWS)
    export = Measurement("archive export (full)", rows)

    bucket_dir = WORK / "bucket"
    with postgres_admin_url() as admin_url:
        for run in range(args.repeat):
            shutil.rmtree(bucket_dir, ignore_errors=True)
            with scratch_datastore(admin_url, bucket_dir) as (datastore, settings):
                bucket = open_bucket(settings)
                import_stations(datastore, stations_csv)
                copy.seconds.append(timed(lambda: bare_copy(datastore.engine, path)))
                request = IngestRequest.from_path(path)
                result = ingest(request, datastore, bucket, "bench")
                if result.status is not IngestStatus.LOADED:
                    raise SystemExit(f"ingest failed: {result.error}")
                ours.seconds.append(result.seconds)
                print(f"run {run + 1}: {result.inserted:,} inserted, {result.rejected:,} rejected "
                      f"in {result.seconds:.2f} s", flush=True)
                repeat = ingest(request, datastore, bucket, "bench")
                assert repeat.status is IngestStatus.SKIPPED
                again.seconds.append(repeat.seconds)
                export.seconds.append(export_archive(datastore, bucket, full=True).seconds)
                naive.seconds.append(timed(lambda: naive_upsert(datastore.engine, sample_text)))
                pandas_m.seconds.append(timed(lambda: pandas_to_sql(datastore.engine, sample)))
        larger, larger_stations, larger_rows = make_larger_input(path, stations_csv, args.memory_factor)
        shutil.rmtree(bucket_dir, ignore_errors=True)
        rss, _, _ = peak_rss(admin_url, bucket_dir, stations_csv, path)
        shutil.rmtree(bucket_dir, ignore_errors=True)
        rss_larger, inserted, seconds = peak_rss(admin_url, bucket_dir, larger_stations, larger)
    print(f"peak RSS ingesting {path.name} ({path.stat().st_size / 1e6:,.0f} MB, {rows:,} rows): {rss / 1e6:,.0f} MB")
    print(f"peak RSS ingesting {larger.name} ({larger.stat().st_size / 1e6:,.0f} MB, {larger_rows:,} rows): "
          f"{rss_larger / 1e6:,.0f} MB ({inserted:,} inserted in {seconds:.1f} s)")

    report(
        "ingest",
        [ours, again, copy, pandas_m, naive, export],
        [
            ("ingest rate / bare COPY rate", ours.rate / copy.rate, ">=", 0.2),
            ("ingest rate / pandas to_sql rate", ours.rate / pandas_m.rate, ">=", 5.0),
            ("ingest rate / naive upsert rate", ours.rate / naive.rate, ">=", 1.0),
            ("ingest observations per second (millions)", ours.rate / 1e6, ">=", 0.45),
            ("re-ingest time / first ingest time", again.median / ours.median, "<=", 0.05),
            ("archive export observations per second (millions)", export.rate / 1e6, ">=", 1.0),
            (f"peak RSS of the {args.memory_factor}x file / peak RSS of the file", rss_larger / rss, "<=", 1.25),
            (f"peak RSS of the {args.memory_factor}x file (GB)", rss_larger / 1e9, "<=", 1.0),
        ],
    )


if __name__ == "__main__":
    main()
