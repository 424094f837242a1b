"""Backup and restore (pg_dump/pg_restore from the embedded server's wheel) on both servers: the
round trip, the archive after a restore, and no password on the tools' command lines."""

from __future__ import annotations

import hashlib
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.archive import export_archive
from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.backup import backup, connection_of, restore
from opencdms_kernel.db.engine import Datastore, DatastoreError
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.stations import import_stations
from support.rows import archive_rows, database_rows


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


# --------------------------------------------------------------------------- the archive after a restore

def checksum(rows: Counter) -> str:
    """One digest of a multiset of rows (the same rows give the same digest, whatever their order)."""
    digest = hashlib.sha256()
    for row in sorted(repr(row) for row in rows.elements()):
        digest.update(row.encode())
    return digest.hexdigest()


def daily_file(path: Path, rows: list[tuple[str, str, str, float | str]]) -> Path:
    path.write_text("station,element,time,value\n" + "".join(f"{s},{e},{t},{v}\n" for s, e, t, v in rows))
    return path


def test_archive_after_a_restore_matches_the_restored_database(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    """backup -> changes -> archive -> restore -> archive (the normal, incremental command):
    the archive holds what the restored database holds, row for row."""
    (tmp_path / "stations.csv").write_text(
        "wigos_id,name,latitude,longitude\n0-20000-0-60001,Alpha,-1,36\n0-20000-0-60002,Beta,-2,37\n"
    )
    import_stations(datastore, tmp_path / "stations.csv")
    days = [f"2020-01-{day:02d}" for day in range(1, 11)] + ["2021-03-01", "2021-03-02"]
    first = [(station, element, day, 20.5 + index)
             for station in ("0-20000-0-60001", "0-20000-0-60002") for element in ("TMAX", "TMIN")
             for index, day in enumerate(days)]
    assert ingest(IngestRequest.from_path(daily_file(tmp_path / "first.csv", first)), datastore, bucket, "clerk").inserted == len(first)
    assert export_archive(datastore, bucket).full
    dump = backup(datastore, tmp_path / "backups" / "cdms.dump")
    restored = database_rows(datastore)

    # After the backup: changed values and a new element from a file, rows marked deleted (the
    # application's delete), a plain SQL update; then the archive exported as usual.
    later = [("0-20000-0-60001", "TMAX", day, 30.0) for day in days[:5]] + \
            [("0-20000-0-60002", "PRCP", day, 1.5) for day in days]
    assert ingest(IngestRequest.from_path(daily_file(tmp_path / "later.csv", later)), datastore, bucket, "clerk").status is IngestStatus.LOADED
    with datastore.engine.begin() as connection:
        connection.execute(sa.text(
            "UPDATE observation SET status = 'deleted' WHERE station_id = "
            "(SELECT id FROM station WHERE wigos_id = '0-20000-0-60002') AND element_id = (SELECT id FROM element WHERE code = 'TMIN')"
        ))
        connection.execute(sa.text("UPDATE observation SET value = value + 5, qc_status = 'suspect' "
                                   "WHERE phenomenon_time >= timestamptz '2021-01-01 00:00+00'"))
    assert not export_archive(datastore, bucket).full
    assert checksum(archive_rows(bucket)) == checksum(database_rows(datastore)) != checksum(restored)

    restore(datastore, dump)
    assert database_rows(datastore) == restored
    export_archive(datastore, bucket)  # `opencdms archive`: no --full
    assert checksum(archive_rows(bucket)) == checksum(database_rows(datastore))
    assert archive_rows(bucket) == restored


# --------------------------------------------------------------------------- passwords


def test_the_password_is_never_on_the_tools_command_line(
    datastore: Datastore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dump and pg_restore get the URL without the password, and the password in a 0600
    password file named by PGPASSFILE; both still reach the database."""
    password = "s3cret:pass\\word"
    url = datastore.url.set(password=password)
    started: list[tuple[list[str], dict[str, str], str | None, int | None]] = []
    run = subprocess.run

    def watched_run(command: list[str], **options: object) -> subprocess.CompletedProcess:
        """The real subprocess.run, after noting the command, its environment and the
        password file named there (read now: it is gone once the tool has finished)."""
        environment = dict(options.get("env") or {})  # type: ignore[call-overload]
        passfile = Path(environment["PGPASSFILE"]) if "PGPASSFILE" in environment else None
        started.append((
            command, environment,
            None if passfile is None else passfile.read_text(),
            None if passfile is None else passfile.stat().st_mode & 0o777,
        ))
        return run(command, **options)  # type: ignore[call-overload]

    monkeypatch.setattr(subprocess, "run", watched_run)
    with_password = Datastore(engine=datastore.engine, url=url)
    dump = backup(with_password, tmp_path / "with-password.dump")
    restore(with_password, dump)
    assert [Path(command[0]).name for command, _, _, _ in started] == ["pg_dump", "pg_restore"]
    for command, environment, content, mode in started:
        assert not any("s3cret" in argument for argument in command), command
        assert "PGPASSWORD" not in environment
        assert content == "*:*:*:*:s3cret\\:pass\\\\word\n"
        assert mode == 0o600
        assert not Path(environment["PGPASSFILE"]).exists()  # removed once the tool has finished
    assert connection_of(url).password == password
    assert "s3cret" not in connection_of(url).uri


def test_the_restore_command_leaves_the_archive_equal_to_the_database(tmp_path: Path, database_url: str) -> None:
    """`opencdms restore` rebuilds the archive itself: right after it, DuckDB equals PostgreSQL."""
    import os
    import subprocess
    import sys

    from opencdms_kernel.bucket import open_bucket
    from opencdms_kernel.settings import Settings

    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    env.update(OPENCDMS_HOME=str(tmp_path), OPENCDMS_DATABASE_URL=database_url)

    def opencdms(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "opencdms_kernel.cli", *args], env=env, check=True,
                       capture_output=True, text=True, timeout=300)

    (tmp_path / "stations.csv").write_text("wigos_id,name,latitude,longitude\n0-20000-0-60001,Alpha,-1,36\n")
    opencdms("stations", "import", str(tmp_path / "stations.csv"))
    days = [f"2020-01-{day:02d}" for day in range(1, 11)]
    opencdms("ingest", str(daily_file(tmp_path / "a.csv", [("0-20000-0-60001", "TMAX", d, 20.0) for d in days])))
    opencdms("archive")
    opencdms("backup", str(tmp_path / "cdms.dump"))
    opencdms("ingest", str(daily_file(tmp_path / "b.csv", [("0-20000-0-60001", "TMAX", d, 25.0) for d in days]
                                      + [("0-20000-0-60001", "TMIN", d, 5.0) for d in days])))
    opencdms("archive")
    opencdms("restore", str(tmp_path / "cdms.dump"))
    settings = Settings(home=tmp_path, database_url=database_url)
    with Datastore.open(settings) as datastore:
        expected = database_rows(datastore)
    assert len(expected) == 10
    assert checksum(archive_rows(open_bucket(settings))) == checksum(expected)
