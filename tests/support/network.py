"""A seeded network for the explorer's and the QC review's tests (kernel and browser).

The network (tests/api_support.py ``seed_network``): station A with 30 years (1991-2020) of
daily TMAX and TMIN, B and C with 2020 only, FAR without values.  :func:`build_network` adds a
gap (A's TMAX of March 2020 missing), three wrong values at A (a spike the range test fails, a
doubtful one it finds suspect, a day whose TMIN is above its TMAX, which the consistency test
fails at both elements), runs those tests and exports the archive.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from intake.readers.entry import Catalog

from api_support import STATION_A, seed_network
from conftest import PostgresServer, service_missing
from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.catalog import close_catalog, open_catalog
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.qc import ObservationKey, QcTest, Severity, Threshold, add_thresholds, run_qc
from opencdms_kernel.settings import Settings

QC_USER = "qc-runner"
SPIKE_DAY = datetime(2020, 1, 10, tzinfo=timezone.utc)  # TMAX 45.0 at A: fails January's range rule
DOUBT_DAY = datetime(2020, 2, 20, tzinfo=timezone.utc)  # TMAX 38.5 at A: suspect under February's
SWAP_DAY = datetime(2020, 2, 10, tzinfo=timezone.utc)  # TMIN 37.0 at A, above its TMAX: both fail
SPIKE, DOUBT, SWAPPED_TMIN = 45.0, 38.5, 37.0
GAP_MONTH = (2020, 3)  # A's TMAX missing for the whole month


@dataclass
class Network:
    settings: Settings
    datastore: Datastore
    bucket: Bucket
    catalog: Catalog


def key(day: datetime, element: str = "TMAX", station: str = STATION_A) -> ObservationKey:
    return ObservationKey(station=station, element=element, phenomenon_time=day, duration_seconds=86400)


def build_network(settings: Settings) -> Network:
    """The seeded network with a gap, a failed and a suspect value, range-checked and archived."""
    datastore = Datastore.open(settings)
    bucket = open_bucket(settings)
    seed_network(datastore)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'test-setup', true)"))
        station = connection.execute(sa.text("SELECT id FROM station WHERE wigos_id = :w"),
                                     {"w": STATION_A}).scalar_one()
        element = dict(connection.execute(sa.text("SELECT code, id FROM element")).all())
        ids = {"station": station, "element": element["TMAX"]}
        # seed_network marks two days' status by hand (no test entries): QC will judge them itself.
        connection.execute(sa.text("UPDATE observation SET qc_status = 'none' WHERE qc_status <> 'none'"))
        for day, code, value in ((SPIKE_DAY, "TMAX", SPIKE), (DOUBT_DAY, "TMAX", DOUBT),
                                 (SWAP_DAY, "TMIN", SWAPPED_TMIN)):
            connection.execute(sa.text(
                "UPDATE observation SET value = :v WHERE station_id = :station AND element_id = :element "
                "AND phenomenon_time = :t"), {"station": station, "element": element[code], "v": value, "t": day})
        connection.execute(sa.text(
            "UPDATE observation SET value = NULL WHERE station_id = :station AND element_id = :element "
            "AND phenomenon_time >= :a AND phenomenon_time < :b"),
            ids | {"a": datetime(*GAP_MONTH, 1, tzinfo=timezone.utc), "b": datetime(2020, 4, 1, tzinfo=timezone.utc)})
    add_thresholds(datastore, [
        Threshold(QcTest.RANGE, "TMAX", station=STATION_A, month=1, low=10.0, high=42.0, severity=Severity.FAILED),
        Threshold(QcTest.RANGE, "TMAX", station=STATION_A, month=2, low=10.0, high=38.0),
    ], user=QC_USER, reason="test rules for station A in January and February")
    run_qc(datastore, bucket, user=QC_USER, stations=[STATION_A], elements=["TMAX", "TMIN"],
           tests=["range", "consistency"], start=date(2020, 1, 1), end=date(2020, 2, 29))
    export_archive(datastore, bucket)
    return Network(settings, datastore, bucket, open_catalog(settings))


@contextmanager
def network_on(request: pytest.FixtureRequest, setup: str, home: Path) -> Iterator[Network]:
    """The network in a new database of ``setup``'s server ("embedded" or "external"), its
    catalog closed and its database dropped afterwards."""
    server: PostgresServer | None = request.getfixturevalue(f"{setup}_server")
    if server is None:
        service_missing("no external PostgreSQL for the network's tests")
    name = server.new_database()
    settings = Settings(home=home, database_url=server.url_of(name), bucket_url=f"file://{home / 'bucket'}")
    built = build_network(settings)
    try:
        yield built
    finally:
        close_catalog(built.catalog)
        built.datastore.close()
        server.drop(name)
        shutil.rmtree(home, ignore_errors=True)
