"""A CSV dropped into incoming/ is ingested and quality-controlled, end to end: the event service
(``opencdms events serve``, holding no database credentials), Mosquitto, the real API and a real
worker running the shipped notebooks ``ingest_file`` then ``qc_run`` (the chain, scoped to what
the ingest loaded); a folder bucket and S3 (moto's server).  The same file uploaded twice: one
ingest."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import sqlalchemy as sa

from api_support import STATIONS, free_port
from events_support import (
    Collector,
    Stack,
    open_stack,
    publish_all,
    require_mosquitto,
    service_status,
    start_process,
    stop_process,
    unique_root,
    wait_subscribed,
    wait_until,
    write_routes,
)
from opencdms_kernel.db.schema import station
from services.events.messages import bucket_notification

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUTES = """
routes:
  - name: daily
    topic: bucket
    key: "incoming/daily/*.csv"
    process: ingest_file
    parameters: {object_key: "{object.key}"}
    ledger: true
    then:
      # A chain of two steps: what the ingest loaded is handed down to the second.
      - process: archive_refresh
        then:
          - process: qc_run
            parameters: {stations: "{loaded.stations}", start: "{loaded.start}", end: "{loaded.end}",
                         tests: [range, consistency]}
"""


def _csv(wigos: str, first_day: int, days: int) -> bytes:
    rows = [f"{wigos},TMAX,2024-03-{day:02d},{25 + day / 10:.1f}" for day in range(first_day, first_day + days)]
    rows += [f"{wigos},TMIN,2024-03-{day:02d},{15 + day / 10:.1f}" for day in range(first_day + 1, first_day + days)]
    rows.append(f"{wigos},TMIN,2024-03-{first_day:02d},31.0")  # above that day's TMAX: QC's consistency check flags it
    rows.append(f"{wigos},TMAX,2024-03-{first_day + days:02d},75.0")  # beyond TMAX's physical range: rejected
    return ("station,element,time,value\n" + "\n".join(rows) + "\n").encode()


def _seed_stations(stack: Stack) -> None:
    engine = sa.create_engine(stack.settings.database_url)  # type: ignore[arg-type]
    with engine.begin() as connection:
        connection.execute(sa.insert(station), [
            {"wigos_id": w, "name": n, "longitude": x, "latitude": y, "elevation": z, "timezone": tz,
             "opened": o, "closed": c} for w, n, x, y, z, tz, o, c in STATIONS])
    engine.dispose()


@pytest.fixture(scope="module", params=["folder", "s3"])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp(f"events-pipeline-{request.param}")
    bucket: dict[str, Any] = {}
    if request.param == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        name = f"opencdms-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=name)
        bucket = {"bucket_url": f"s3://{name}", "s3_endpoint_url": endpoint, "s3_access_key_id": "testing",
                  "s3_secret_access_key": "testing", "s3_region": "us-east-1"}
    opened = open_stack(request, home, None, worker=True, bucket_settings=bucket)
    opened.extra["kind"] = request.param
    _seed_stations(opened)
    try:
        yield opened
    finally:
        opened.close()


def _upload(stack: Stack, key: str, data: bytes) -> bytes:
    """Put the object as a client would, and return the notification MinIO would publish for it."""
    if stack.extra["kind"] == "s3":
        settings = stack.settings
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        name = settings.bucket_url.removeprefix("s3://")
        etag = client.put_object(Bucket=name, Key=key, Body=data)["ETag"]
        return bucket_notification(name, key, etag, len(data))
    stack.bucket.write_bytes(key, data)
    return bucket_notification("bucket", key, hashlib.md5(data).hexdigest(), len(data))


def _jobs(stack: Stack, process: str) -> list[dict[str, Any]]:
    return stack.jobs("process = :process AND idempotency_key LIKE 'events:%'", process=process)


def _ledger(stack: Stack, key: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(stack.settings.database_url)  # type: ignore[arg-type]
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sa.text(
                "SELECT * FROM ingest_ledger WHERE object_key = :key ORDER BY id"), {"key": key}).mappings()]
    finally:
        engine.dispose()


def _finished(stack: Stack, process: str, count: int) -> list[dict[str, Any]]:
    return wait_until(lambda: (rows := _jobs(stack, process)) and len(rows) >= count
                      and all(row["status"] in ("successful", "failed") for row in rows) and rows,
                      300, every=1, message=f"{count} {process} job(s) finished")


def test_a_csv_dropped_into_incoming_is_ingested_and_quality_controlled(stack: Stack, tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    settings = stack.service_settings(url, root, events_routes_file=write_routes(tmp_path, ROUTES),
                                      events_status_port=free_port())
    collector = Collector(url, f"{root}/#")
    service = start_process(["events", "serve", "--no-sweep"], settings, tmp_path / "events.log")
    try:
        wait_subscribed(settings, service)
        key = "incoming/daily/alpha-march.csv"
        data = _csv(STATIONS[0][0], 1, 5)
        notification = _upload(stack, key, data)
        publish_all(url, f"{root}/bucket", [notification])
        (ingest,) = _finished(stack, "ingest_file", 1)
        assert ingest["status"] == "successful", ingest["error"]
        assert ingest["parameters"]["object_key"] == key
        (loaded,) = _ledger(stack, key)
        assert loaded["status"] == "loaded" and (loaded["rows_inserted"], loaded["rows_rejected"]) == (10, 1)
        (archive,) = _finished(stack, "archive_refresh", 1)
        assert archive["status"] == "successful", archive["error"]
        assert archive["idempotency_key"] == f"events:chain:{ingest['id']}:0"
        (qc,) = _finished(stack, "qc_run", 1)
        assert qc["status"] == "successful", qc["error"]
        assert qc["idempotency_key"] == f"events:chain:{archive['id']}:0.0"
        assert qc["parameters"]["stations"] == [STATIONS[0][0]]
        assert (qc["parameters"]["start"], qc["parameters"]["end"]) == ("2024-03-01", "2024-03-05")
        engine = sa.create_engine(stack.settings.database_url)  # type: ignore[arg-type]
        with engine.connect() as connection:
            flagged = connection.execute(sa.text(
                "SELECT value FROM observation WHERE ingest_id = :id AND qc_status IN ('suspect', 'failed')"),
                {"id": loaded["id"]}).scalars().all()
        engine.dispose()
        # QC ran over what was loaded: the inconsistent pair is flagged (values are never changed).
        assert 31.0 in flagged, flagged
        # The status messages say so: each job's statuses, the ingest announced.
        for job in (ingest, archive, qc):
            seen = wait_until(lambda job=job: "successful" in [message["status"] for _, message in
                                                               collector.json(f"/jobs/{job['id']}")], 30)
            assert seen
        ingested = wait_until(lambda: collector.json("/events/ingested"), 30)
        assert ingested[0][1]["object_key"] == key and ingested[0][1]["job"] == str(ingest["id"])
        assert wait_until(lambda: collector.json("/events/product"), 30)  # the QC report

        # The same file uploaded again (and announced again): one ingest, no second QC.
        publish_all(url, f"{root}/bucket", [_upload(stack, key, data), notification])
        wait_until(lambda: (status := service_status(settings)) and status["counters"]["acknowledged"] == 3, 60)
        assert len(_jobs(stack, "ingest_file")) == 1 and len(_ledger(stack, key)) == 1
        assert len(_jobs(stack, "qc_run")) == 1 and len(_jobs(stack, "archive_refresh")) == 1
    finally:
        stop_process(service)
        collector.close()
