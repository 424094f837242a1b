"""`opencdms product …` as a person runs it: daily summaries of hourly values, monthly values of
a station that reports only hourly values, and a product run again (a new version, said so).

Runs the command in a subprocess against each PostgreSQL setup (conftest.py), on a datastore
filled through the real ingest and archive export.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.ingest.mapping import Mapping, TimeSpec
from opencdms_kernel.products import list_products, read_product
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

ALPHA = "0-20000-0-60001"
HOURLY = Mapping(time=TimeSpec(format="%Y-%m-%d %H:%M", timezone="Africa/Nairobi"), duration="PT1H", source="test-aws")


def opencdms(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    environment.update({"OPENCDMS_HOME": str(settings.home), "OPENCDMS_DATABASE_URL": str(settings.database_url),
                        "OPENCDMS_BUCKET_URL": str(settings.bucket_url), "COLUMNS": "200"})
    return subprocess.run([sys.executable, "-m", "opencdms_kernel.cli", *args], capture_output=True, text=True,
                          env=environment, timeout=300, check=False)


@pytest.fixture
def hourly_station(settings: Settings, datastore: Datastore, bucket: Bucket, tmp_path: Path) -> list[float]:
    """February 2020 of hourly TMEAN at a Nairobi station (local times), no daily value at all;
    returns the local days' means."""
    stations = tmp_path / "stations.csv"
    stations.write_text(f"wigos_id,name,latitude,longitude,elevation,timezone\n{ALPHA},Alpha,-1.0,36.0,1600,Africa/Nairobi\n")
    import_stations(datastore, stations)
    rng = np.random.default_rng(7)
    lines, means = ["station,element,time,value"], []
    for day in range(29):
        values = [round(float(rng.normal(20, 3)), 1) for _ in range(24)]
        means.append(float(np.mean(values)))
        for hour, value in enumerate(values):
            lines.append(f"{ALPHA},TMEAN,{datetime(2020, 2, 1) + timedelta(days=day, hours=hour):%Y-%m-%d %H:%M},{value}")
    path = tmp_path / "hourly.csv"
    path.write_text("\n".join(lines) + "\n")
    result = ingest(IngestRequest.from_path(path, HOURLY), datastore, bucket, "products-cli-test")
    assert result.status is IngestStatus.LOADED and result.rejected == 0, result.error
    export_archive(datastore, bucket)
    return means


def test_product_daily_summarises_hourly_values_per_local_day(settings: Settings, bucket: Bucket, hourly_station) -> None:
    made = opencdms(settings, "product", "daily", "2020", "--station", ALPHA, "--element", "TMEAN")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "rows written to" in made.stdout and "version 1" in made.stdout
    (key,) = list_products(bucket, "daily")
    table, metadata = read_product(bucket, key)
    days = table.to_pandas()
    assert len(days) == 29 and days["meets_rule"].all() and days["complete"].all()
    assert days["mean"].tolist() == pytest.approx(hourly_station)  # local days: the file's own days
    assert metadata["qc"]["policy"]["excluded"] == ["failed"] and metadata["qc"]["values_excluded"] == 0


def test_exclude_suspect_leaves_suspect_and_failed_values_out(settings: Settings, bucket: Bucket, hourly_station) -> None:
    made = opencdms(settings, "product", "daily", "2020", "--station", ALPHA, "--element", "TMEAN", "--exclude-suspect")
    assert made.returncode == 0, made.stdout + made.stderr
    (key,) = list_products(bucket, "daily")
    _, metadata = read_product(bucket, key)
    assert metadata["qc"]["policy"] == {"counted": ["none", "passed"], "excluded": ["suspect", "failed"]}


def test_monthly_values_of_an_hourly_station_and_a_second_run(settings: Settings, bucket: Bucket, hourly_station) -> None:
    made = opencdms(settings, "product", "monthly", "2020", "--station", ALPHA, "--element", "TMEAN")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "empty product" not in made.stdout and "29 days made from sub-daily values" in made.stdout
    (key,) = list_products(bucket, "monthly")
    table, _ = read_product(bucket, key)
    february = table.to_pandas().set_index("month").loc[2]
    assert (february.value_days, february.derived_days, february.meets_rule) == (29, 29, True)
    assert february["mean"] == pytest.approx(np.mean(hourly_station))

    again = opencdms(settings, "product", "monthly", "2020", "--station", ALPHA, "--element", "TMEAN")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "version 2" in again.stdout and "replaced version 1" in again.stdout
    assert list_products(bucket, "monthly") == [key]
