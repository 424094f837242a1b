"""The demo in an installation: what `opencdms up` loads into an empty datastore, and the
notebook pipeline it then runs.

:func:`load_demo` writes the demo dataset (:mod:`.dataset`) under ``<var_dir>/demo``, imports
its stations, writes the gridded analysis to the bucket and ingests the daily files (and the
hourly AWS files, unless they are left to the pipeline).  :func:`demo_pipeline` delivers the
hourly files to ``incoming/aws/`` as a station would, and lists the notebook runs that ingest
them, run QC, refresh the archive and write a monthly report; the caller runs them through the
notebook registry as recorded jobs — or, with the event service running, leaves the delivered
files to it (:func:`delivered_outcomes` follows them) and runs only :func:`demo_processing`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import ingest_ledger
from opencdms_kernel.demo.dataset import DemoDataset, generate_demo_data, read_demo_dataset
from opencdms_kernel.demo.gridded import write_gridded_analysis
from opencdms_kernel.demo.network import DemoSpec
from opencdms_kernel.ingest import IngestRequest, IngestResult, ingest_many, load_mapping
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import import_stations

DEMO_INCOMING = "incoming/aws/"  # where the pipeline delivers the hourly AWS files


def demo_folder(settings: Settings) -> Path:
    """Where this installation writes the demo dataset: ``<var_dir>/demo``."""
    return settings.var_dir / "demo"


def demo_requests(dataset: DemoDataset) -> list[tuple[str, Callable[[], IngestRequest]]]:
    """Ingest requests for every file of the demo dataset, daily files first."""
    aws_mapping = load_mapping(dataset.aws_mapping)
    requests: list[tuple[str, Callable[[], IngestRequest]]] = [
        (str(path), lambda path=path: IngestRequest.from_path(path)) for path in dataset.daily_files
    ]
    requests += [
        (str(path), lambda path=path: IngestRequest.from_path(path, aws_mapping))
        for path in dataset.aws_files
    ]
    return requests


def load_demo(
    settings: Settings,
    datastore: Datastore,
    bucket: Bucket,
    spec: DemoSpec = DemoSpec(),
    on_generated: Callable[[DemoDataset], None] | None = None,
    on_file: Callable[[IngestResult], None] | None = None,
    *,
    include_aws: bool = True,
) -> list[IngestResult]:
    """Generate the demo dataset under :func:`demo_folder`, ingest it and write the gridded analysis.

    ``include_aws=False`` leaves the hourly AWS files out: `opencdms up` delivers them to
    ``incoming/`` and ingests them through the notebook pipeline instead.
    """
    dataset = generate_demo_data(demo_folder(settings), spec)
    if on_generated is not None:
        on_generated(dataset)
    import_stations(datastore, dataset.stations_csv)
    write_gridded_analysis(bucket, spec, years=min(2, spec.years))
    requests = demo_requests(dataset if include_aws else replace(dataset, aws_files=()))
    return ingest_many(requests, datastore, bucket, settings.user, progress=on_file)


def loaded_demo(settings: Settings) -> tuple[DemoDataset, DemoSpec] | None:
    """The demo dataset this installation generated under :func:`demo_folder`, and its spec, if any."""
    return read_demo_dataset(demo_folder(settings))


def deliver_aws_files(bucket: Bucket, dataset: DemoDataset) -> tuple[list[str], str]:
    """Put the demo's hourly AWS files and their mapping under ``incoming/aws/``, as a station would.

    Returns the object keys of the files and of the mapping.
    """
    mapping_key = DEMO_INCOMING + dataset.aws_mapping.name
    bucket.write_bytes(mapping_key, dataset.aws_mapping.read_bytes())
    keys = []
    for path in dataset.aws_files:
        key = DEMO_INCOMING + path.name
        bucket.write_bytes(key, path.read_bytes())
        keys.append(key)
    return keys, mapping_key


def demo_pipeline(dataset: DemoDataset, bucket: Bucket, spec: DemoSpec) -> list[tuple[str, dict[str, object]]]:
    """The demo's notebook runs, in order: ingest each arrived file, QC, archive, monthly report.

    QC covers the last year of the demo period; the report is of its last month, for the whole
    network.
    """
    keys, mapping_key = deliver_aws_files(bucket, dataset)
    runs: list[tuple[str, dict[str, object]]] = [
        ("ingest_file", {"object_key": key, "mapping_key": mapping_key}) for key in keys
    ]
    return runs + demo_processing(spec)


def demo_processing(spec: DemoSpec) -> list[tuple[str, dict[str, object]]]:
    """The runs once the data is in: QC of the last year, the archive refreshed, the network's
    report of the last month."""
    last_year = spec.start_year + spec.years - 1
    return [("qc_run", {"start": f"{last_year}-01-01", "end": f"{last_year}-12-31"}),
            ("archive_refresh", {}), ("monthly_report", {"month": f"{last_year}-12"})]


def delivered_outcomes(datastore: Datastore, keys: list[str]) -> dict[str, str | None]:
    """The latest ingest ledger status of each delivered object (None: not ingested yet) — how
    `opencdms up` follows the event service ingesting the files it delivered."""
    with datastore.engine.connect() as connection:
        rows = connection.execute(
            sa.select(ingest_ledger.c.object_key, ingest_ledger.c.status)
            .where(ingest_ledger.c.object_key.in_(keys))
            .order_by(ingest_ledger.c.object_key, ingest_ledger.c.id.desc())
            .distinct(ingest_ledger.c.object_key)
        ).all()
    found = {row.object_key: row.status for row in rows}
    return {key: found.get(key) for key in keys}
