"""The notebooks in ``notebooks/`` as processes: run by the registry's runner, and by nbval.

Each notebook runs under papermill through :func:`opencdms_kernel.notebooks.run_notebook` — the
path the event service and the API take: parameters validated, a ``job`` row, the ``opencdms``
kernel given this test's settings as ``OPENCDMS_*`` variables — with small parameters against
a small demo network that was really ingested and exported to the archive.  Each test then
checks what the notebook should have left behind: rows, flags, products, messages, reports.

``test_notebooks_run_with_their_defaults_under_nbval`` runs every notebook as a person would
open it, with its defaults, in a subprocess (``pytest --nbval-lax``) against a prepared
installation holding the data those defaults refer to (2 stations × 1991-2020).

Which PostgreSQL: the ingest notebook writes observations, so it runs against both the embedded
and the external server, like the kernel's own datastore tests.  The other notebooks run against
the embedded one only: a notebook run costs a kernel start and some 3-5 s, the code they call
(QC, archive, products) is tested on both servers in its own tests, and what the notebooks add
— parameters, wiring, reports — does not depend on the server.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from opencdms_kernel.archive import connect_archive, export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.demo import DemoSpec
from opencdms_kernel.demo.aws import AWS_MAPPING_YAML
from opencdms_kernel.demo.load import load_demo
from opencdms_kernel.health import observation_count
from opencdms_kernel.ingest import IngestStatus
from opencdms_kernel.notebooks import NotebookRegistry, ensure_kernel_spec, run_notebook
from opencdms_kernel.notebooks.jobs import Job, JobStatus
from opencdms_kernel.products import read_product
from opencdms_kernel.reports import read_text
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
S1, S2, AWS = "0-20000-0-60001", "0-20000-0-60002", "0-20000-0-69001"
EMBEDDED_ONLY = pytest.mark.parametrize("postgres_server", ["embedded"], indirect=True)

pytestmark = pytest.mark.postgres


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def registry() -> NotebookRegistry:
    """The repository's notebooks; the ``opencdms`` kernel spec installed if this env lacks it."""
    ensure_kernel_spec(REPO)
    found = NotebookRegistry(NOTEBOOKS)
    assert not found.problems(), found.problems()
    return found


def run(name: str, registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket,
        **parameters: Any) -> Job:
    """Run a notebook as a recorded job; the test fails with the notebook's error if it fails."""
    job = run_notebook(name, parameters, settings=settings, datastore=datastore, bucket=bucket,
                       registry=registry, timeout=120)
    assert job.status is JobStatus.SUCCESSFUL, f"{name} {job.message}:\n{job.error}"
    return job


def load_network(settings: Settings, datastore: Datastore, bucket: Bucket, *, years: int = 2,
                 start_year: int = 2019) -> None:
    """Two demo stations (daily TMAX, TMIN, PRCP with injected errors), ingested and archived."""
    spec = DemoSpec(stations=2, years=years, start_year=start_year, aws_stations=0, aws_years=0)
    results = load_demo(settings, datastore, bucket, spec)
    assert all(result.status is IngestStatus.LOADED for result in results), results
    export_archive(datastore, bucket)


def report_html(bucket: Bucket, job: Job, images: int = 1) -> str:
    """The job's HTML report: present, with a table and inline images, nothing to fetch online."""
    output = job.outputs["report"]
    assert output.media_type == "text/html"
    html = read_text(bucket, output.key)
    assert html.startswith("<!DOCTYPE html>")
    assert "<table" in html
    assert html.count('<img src="data:image/png;base64,') >= images
    assert "http://" not in html and "https://" not in html  # opens offline: no CDN, no web font
    return html


def count(datastore: Datastore, sql: str, **params: Any) -> int:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text(sql), params).scalar_one()


# --------------------------------------------------------------------------- ingest


def test_ingest_file_loads_a_bucket_object_and_writes_its_reject_report(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    stations = settings.home / "stations.csv"
    stations.write_text(f"wigos_id,name,latitude,longitude\n{S1},Alpha,-1,36\n")
    import_stations(datastore, stations)
    key = "incoming/daily/alpha.csv"
    bucket.write_bytes(key, (
        "station,element,time,value\n"
        f"{S1},TMAX,2020-01-01,25.1\n"
        f"{S1},TMAX,2020-01-02,hot\n"
        f"{S1},TMIN,2020-01-01,12.5\n"
        "0-20000-0-99999,TMAX,2020-01-01,20.0\n"
    ).encode())

    job = run("ingest_file", registry, settings, datastore, bucket, object_key=key)

    assert observation_count(datastore) == 2
    rejects = job.outputs["rejects"]
    assert rejects.media_type == "text/csv" and rejects.key.startswith("rejects/")
    report = read_text(bucket, rejects.key)
    assert "not a number" in report and "hot" in report
    assert "0-20000-0-99999" in report
    # The same object again adds nothing: the ledger says skipped, no reject report this time.
    again = run("ingest_file", registry, settings, datastore, bucket, object_key=key)
    assert "rejects" not in again.outputs
    assert observation_count(datastore) == 2
    assert count(datastore, "SELECT count(*) FROM ingest_ledger WHERE object_key = :key AND status = 'skipped'",
                 key=key) == 1


@EMBEDDED_ONLY
def test_ingest_file_reads_a_wide_file_with_a_mapping_from_the_bucket_and_fails_on_a_bad_file(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    stations = settings.home / "stations.csv"
    stations.write_text(f"wigos_id,name,latitude,longitude,timezone\n{AWS},Kita AWS,3.6,36.7,Africa/Nairobi\n")
    import_stations(datastore, stations)
    bucket.write_bytes("mappings/aws.yaml", AWS_MAPPING_YAML.encode())
    bucket.write_bytes(f"incoming/aws/{AWS}_hourly.csv", (
        "datetime,air_temp,rel_hum,wind_speed_kt,wind_dir,pressure_kpa,rain\n"
        "2020-01-01 03:00,21.5,80,5.0,90,91.20,0.0\n"
        "2020-01-01 04:00,21.1,82,4.0,95,91.18,0.2\n"
    ).encode())

    run("ingest_file", registry, settings, datastore, bucket,
        object_key=f"incoming/aws/{AWS}_hourly.csv", mapping_key="mappings/aws.yaml")

    assert observation_count(datastore) == 12  # 2 hours x 6 elements
    # Knots became m/s on the way in, and the ledger names the mapping by its bucket key.
    assert count(datastore, "SELECT count(*) FROM observation o JOIN element e ON e.id = o.element_id "
                            "WHERE e.code = 'WSPD' AND abs(o.value - 5.0 * 1852 / 3600) < 0.01") == 1
    assert count(datastore, "SELECT count(*) FROM ingest_ledger WHERE mapping = 'mappings/aws.yaml'") == 1

    # A file that cannot be ingested at all fails the run, with the reason.
    bucket.write_bytes("incoming/empty.csv", b"")
    failed = run_notebook("ingest_file", {"object_key": "incoming/empty.csv"}, settings=settings,
                          datastore=datastore, bucket=bucket, registry=registry, timeout=120)
    assert failed.status is JobStatus.FAILED
    assert "the file is empty" in failed.error


# --------------------------------------------------------------------------- QC and archive


@EMBEDDED_ONLY
def test_qc_run_flags_values_refreshes_the_archive_and_saves_a_report(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket)

    job = run("qc_run", registry, settings, datastore, bucket,
              stations=[S1, S2], elements=["TMAX", "TMIN"], start="2019-01-01", end="2020-12-31")

    assert count(datastore, "SELECT count(*) FROM qc_run WHERE status = 'finished'") == 1
    flagged = count(datastore, "SELECT count(*) FROM observation WHERE qc_status IN ('suspect', 'failed')")
    assert flagged > 0  # the demo network's injected errors
    # The archive was refreshed: products already see the flags.
    archive = connect_archive(bucket)
    try:
        in_archive = archive.execute(
            "SELECT count(*) FROM observations WHERE qc_status IN ('suspect', 'failed')").fetchall()[0][0]
    finally:
        archive.close()
    assert in_archive == flagged
    html = report_html(bucket, job)
    assert "Quality control run" in html and "consistency" in html and S1 in html


@EMBEDDED_ONLY
def test_archive_refresh_exports_what_the_datastore_holds(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    results = load_demo(settings, datastore, bucket, DemoSpec(stations=2, years=1, start_year=2020,
                                                              aws_stations=0, aws_years=0))
    assert all(result.status is IngestStatus.LOADED for result in results)

    job = run("archive_refresh", registry, settings, datastore, bucket, full=True)

    archive = connect_archive(bucket)
    try:
        archived = archive.execute("SELECT count(*) FROM observations").fetchall()[0][0]
    finally:
        archive.close()
    assert archived == observation_count(datastore)
    assert job.outputs["archive"].key == "archive/observations"
    inventory = read_text(bucket, job.outputs["inventory"].key)
    assert inventory.splitlines()[0] == "element,year,observations,stations,flagged"
    assert len(inventory.splitlines()) == 1 + 3  # PRCP, TMAX, TMIN in 2020


# --------------------------------------------------------------------------- reports and products


@EMBEDDED_ONLY
def test_monthly_report_for_the_network_and_for_one_station(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket)

    network = run("monthly_report", registry, settings, datastore, bucket, month="2020-07")
    html = report_html(bucket, network, images=2)  # bars per station and the map
    assert network.outputs["report"].key == "reports/monthly/network/2020-07.html"
    assert S1 in html and S2 in html and "TMAX mean" in html and "PRCP total" in html

    one = run("monthly_report", registry, settings, datastore, bucket, month="2020-07", station=S2,
              elements=["TMAX", "PRCP"])
    html = report_html(bucket, one)
    assert one.outputs["report"].key == f"reports/monthly/{S2}/2020-07.html"
    assert "Day by day" in html and "2020-07-31" in html and S1 not in html and "TMIN" not in html


@EMBEDDED_ONLY
def test_monthly_report_fails_for_a_month_without_data(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket, years=1, start_year=2020)
    job = run_notebook("monthly_report", {"month": "2010-01"}, settings=settings, datastore=datastore,
                       bucket=bucket, registry=registry, timeout=120)
    assert job.status is JobStatus.FAILED
    assert "no daily values" in job.error and "2010-01" in job.error
    assert not job.outputs


@EMBEDDED_ONLY
def test_normals_writes_the_product_and_a_report(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket, years=30, start_year=1991)

    job = run("normals", registry, settings, datastore, bucket, period="1991-2020", elements=["TMAX", "PRCP"],
              max_plots=1)

    table, metadata = read_product(bucket, job.outputs["normals"].key)
    assert job.outputs["normals_metadata"].key == job.outputs["normals"].key.replace(".parquet", ".json")
    assert metadata["kind"] == "normals" and metadata["period"] == {"start_year": 1991, "end_year": 2020}
    rows = table.to_pandas()
    assert set(rows["wigos_id"]) == {S1, S2} and set(rows["element"]) == {"TMAX", "PRCP"}
    annual_rain = rows[(rows["element"] == "PRCP") & (rows["statistic"] == "total") & rows["month"].isna()]
    assert len(annual_rain) == 2 and annual_rain["meets_rule"].all() and (annual_rain["value"] > 0).all()
    html = report_html(bucket, job)
    assert "Climatological standard normals 1991-2020" in html and "Precipitation total" in html


@EMBEDDED_ONLY
def test_climat_daycli_writes_both_messages(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket)

    job = run("climat_daycli", registry, settings, datastore, bucket, station=S1, month="2020-07",
              normals_period=None)

    climat = job.outputs["climat"]
    assert climat.key == f"products/climat/{S1}/2020-07.txt" and climat.media_type == "text/plain"
    text = read_text(bucket, climat.key)
    assert text.startswith("CLIMAT 07020 60001") and " 111 " in text.replace("\n", " ")
    assert "222" not in text  # no normals asked for: section 2 left out
    daycli = job.outputs["daycli"]
    assert daycli.key == f"products/daycli/{S1}/2020-07.bufr"
    data = bucket.fs.cat_file(bucket.path(daycli.key))
    assert data.startswith(b"BUFR") and data.count(b"BUFR") == 31  # one message per day of July


@EMBEDDED_ONLY
def test_station_report(registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket) -> None:
    load_network(settings, datastore, bucket)

    job = run("station_report", registry, settings, datastore, bucket, station=S2, period="2019-2020")

    html = report_html(bucket, job, images=3)  # availability, monthly series, annual cycle
    assert job.outputs["report"].key == f"reports/stations/{S2}/2019-2020.html"
    for section in ("Station metadata", "Completeness of the record", "Annual values", "Average annual cycle",
                    "Values and flagged values"):
        assert section in html
    assert S2 in html and S1 not in html


@EMBEDDED_ONLY
def test_data_availability_heat_maps_and_inventory(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    load_network(settings, datastore, bucket)

    job = run("data_availability", registry, settings, datastore, bucket, period="2019-2020")

    report_html(bucket, job, images=3)  # one heat map per element
    inventory = read_text(bucket, job.outputs["inventory"].key).splitlines()
    assert inventory[0] == "wigos_id,element,year,month,days_in_month,value_days,meets_rule,complete,fraction"
    assert len(inventory) == 1 + 2 * 3 * 24  # stations x elements x months
    rows = [line.split(",") for line in inventory[1:]]
    days = sum(int(row[5]) for row in rows)
    assert days == observation_count(datastore) - count(datastore, "SELECT count(*) FROM observation WHERE value IS NULL")
    # The heat maps' classes: complete months are those with every day, and each meets the rule.
    for row in rows:
        assert (row[7] == "True") == (row[4] == row[5])
        assert row[7] != "True" or row[6] == "True"


# --------------------------------------------------------------------------- nbval: the defaults


@EMBEDDED_ONLY
def test_notebooks_run_with_their_defaults_under_nbval(
    registry: NotebookRegistry, settings: Settings, datastore: Datastore, bucket: Bucket
) -> None:
    """Every notebook as a person opens it: its defaults, against an installation that has them."""
    load_network(settings, datastore, bucket, years=30, start_year=1991)
    # The ingest notebook's default object: the first demo station's file, arrived under incoming/.
    demo_file = settings.var_dir / "demo" / "daily" / f"{S1}.csv"
    bucket.write_bytes(f"incoming/daily/{S1}.csv", demo_file.read_bytes())
    # This test's settings only, and no trace of the pytest (or xdist worker) running this test.
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OPENCDMS_", "PYTEST_"))}
    environment.update({
        "OPENCDMS_HOME": str(settings.home),
        "OPENCDMS_DATABASE_URL": settings.database_url or "",
        "OPENCDMS_BUCKET_URL": settings.bucket_url,
    })
    notebooks = sorted(str(path.relative_to(REPO)) for path in NOTEBOOKS.glob("*.ipynb"))
    assert len(notebooks) == 8

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", "-o", "addopts=",
         *notebooks],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )

    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
    # The defaults did their work on the installation.
    assert count(datastore, "SELECT count(*) FROM ingest_ledger WHERE object_key = :key AND status = 'loaded'",
                 key=f"incoming/daily/{S1}.csv") == 1
    for key in ("reports/monthly/network/2020-07.html", "reports/normals/1991-2020.html",
                f"reports/stations/{S1}/1991-2020.html", "reports/availability/1991-2020.html",
                f"products/climat/{S1}/2020-07.txt", f"products/daycli/{S1}/2020-07.bufr",
                "reports/archive/inventory.csv"):
        assert bucket.fs.exists(bucket.path(key)), key
    assert bucket.fs.glob(bucket.path("reports/qc/run-*.html"))
