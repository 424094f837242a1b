"""Backup and restore round trip (pg_dump/pg_restore from the pgserver wheel) on both servers."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.backup import backup, restore
from opencdms_kernel.db.engine import Datastore, DatastoreError
from opencdms_kernel.ingest import IngestRequest, ingest
from opencdms_kernel.stations import import_stations


def snapshot(datastore: Datastore) -> dict[str, list[tuple]]:
    with datastore.engine.connect() as connection:
        return {
            table: [tuple(row) for row in connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY 1, 2"))]
            for table in ("station", "observation", "observation_history", "ingest_ledger")
        }


def test_backup_then_restore_gives_back_the_same_rows(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    (tmp_path / "stations.csv").write_text("wigos_id,name,latitude,longitude\n0-20000-0-60001,Alpha,-1,36\n")
    import_stations(datastore, tmp_path / "stations.csv")
    data = tmp_path / "obs.csv"
    data.write_text("station,element,time,value\n0-20000-0-60001,TMAX,2020-01-01,25.1\n")
    ingest(IngestRequest.from_path(data), datastore, bucket, "clerk")
    data.write_text("station,element,time,value\n0-20000-0-60001,TMAX,2020-01-01,25.7\n")
    ingest(IngestRequest.from_path(data), datastore, bucket, "clerk")
    before = snapshot(datastore)
    assert len(before["observation_history"]) == 1

    dump = backup(datastore, tmp_path / "backups" / "cdms.dump")
    assert dump.stat().st_size > 0 and not dump.with_name("cdms.dump.partial").exists()
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("UPDATE observation SET value = -1"))
        connection.execute(sa.text("INSERT INTO station (wigos_id, name, latitude, longitude) "
                                   "VALUES ('0-20000-0-69999', 'Later', 0, 0)"))
    assert snapshot(datastore) != before

    restore(datastore, dump)
    assert snapshot(datastore) == before
    # The audit triggers came back with the schema.
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("UPDATE observation SET value = 30"))
    assert len(snapshot(datastore)["observation_history"]) == 2


def test_restore_of_a_missing_or_broken_file_is_refused(datastore: Datastore, tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="no backup file"):
        restore(datastore, tmp_path / "nothing.dump")
    broken = tmp_path / "broken.dump"
    broken.write_bytes(b"not a dump")
    with pytest.raises(DatastoreError, match="restore from .*broken.dump failed"):
        restore(datastore, broken)
