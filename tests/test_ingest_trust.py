"""Ingest a hostile tester cannot break: decisions survive, interrupted loads are recognisable,
every file gets an outcome, loads can be forced and reverted, chunks behave as one file.

Each test checks what the database and the bucket hold, not only the message.  Datastore tests
run on the embedded and the external PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import NotFoundError
from opencdms_kernel.ingest import (
    IngestRequest,
    IngestStatus,
    RevertError,
    ingest,
    ingest_many,
    load_mapping,
    revert_load,
)
from opencdms_kernel.ingest import reader as reader_module
from opencdms_kernel.ingest.pipeline import LOAD_LOCK
from opencdms_kernel.qc import Decision, ObservationKey, decide, source_changes
from opencdms_kernel.stations import import_stations

STATIONS = """wigos_id,name,latitude,longitude,elevation,timezone
0-20000-0-60001,Alpha,-1.0,36.0,1600,Africa/Nairobi
0-20000-0-60002,Bravo,0.5,37.5,2400,Africa/Nairobi
"""

DAYS = """station,element,time,value
0-20000-0-60001,TMAX,2020-01-01,25.1
0-20000-0-60001,TMAX,2020-01-02,26.3
0-20000-0-60001,TMAX,2020-01-03,27.0
"""


@pytest.fixture
def stations(datastore: Datastore, tmp_path: Path) -> None:
    path = tmp_path / "stations.csv"
    path.write_text(STATIONS)
    import_stations(datastore, path)


def load(datastore: Datastore, bucket: Bucket, text: str | bytes, name: str = "obs.csv", **options: object):
    data = text.encode() if isinstance(text, str) else text
    return ingest(IngestRequest.from_bytes(f"incoming/{name}", data), datastore, bucket, "clerk", **options)


def scalar(datastore: Datastore, sql: str, **params: object) -> object:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text(sql), params).scalar_one()


def rows(datastore: Datastore, sql: str, **params: object) -> list[sa.Row]:
    with datastore.engine.connect() as connection:
        return connection.execute(sa.text(sql), params).all()


def tmax(datastore: Datastore, day: str) -> sa.Row:
    return rows(datastore, """
        SELECT o.value, o.final_flag, o.qc_status, o.version, o.result_quality -> 'manual' AS manual
        FROM observation o JOIN element e ON e.id = o.element_id
        WHERE e.code = 'TMAX' AND o.phenomenon_time = CAST(:t AS timestamptz)""", t=f"{day}T00:00Z")[0]


def key(day: str) -> ObservationKey:
    return ObservationKey(station="0-20000-0-60001", element="TMAX",
                          phenomenon_time=datetime.fromisoformat(day).replace(tzinfo=timezone.utc),
                          duration_seconds=86400)


# ------------------------------------------------------------------ decisions survive ingest


@pytest.mark.usefixtures("stations")
@pytest.mark.parametrize("decision,value", [("correct", 25.0), ("accept", None), ("reject", None)])
def test_a_decision_stays_in_force_when_the_file_comes_again_changed(
    datastore: Datastore, bucket: Bucket, decision: str, value: float | None
) -> None:
    assert load(datastore, bucket, DAYS).status is IngestStatus.LOADED
    decided = decide(datastore, key("2020-01-02"), decision, "checked against the paper form", "reviewer",
                     corrected_value=value)
    after_decision = tmax(datastore, "2020-01-02")
    # Another line of the file changes (today that re-ingest puts the file's old value back).
    changed_elsewhere = DAYS.replace("2020-01-03,27.0", "2020-01-03,27.5")
    result = load(datastore, bucket, changed_elsewhere)
    assert result.status is IngestStatus.LOADED and result.updated == 1
    row = tmax(datastore, "2020-01-02")
    assert (row.value, row.final_flag, row.version) == (after_decision.value, decided.final_flag.value,
                                                         after_decision.version)
    assert "source_changed" not in row.manual
    assert source_changes(datastore) == []

    # Now the source itself delivers another value for the decided observation.
    result = load(datastore, bucket, changed_elsewhere.replace("2020-01-02,26.3", "2020-01-02,26.9"))
    assert result.status is IngestStatus.LOADED and result.updated == 1
    row = tmax(datastore, "2020-01-02")
    assert row.value == after_decision.value and row.final_flag == decided.final_flag.value
    assert row.manual["source_changed"]["value"] == 26.9
    assert row.manual["source_changed"]["ingest_id"] == result.ledger_id
    [change] = source_changes(datastore)
    assert (change.decision.value, change.value, change.source_value, change.new_source_value) == (
        decision, after_decision.value, 26.3, 26.9)
    # The audit keeps both: the version before (no marker) and the row with the new source value.
    history = rows(datastore, """
        SELECT h.value, h.result_quality -> 'manual' ? 'source_changed' AS marked, h.ingest_id
        FROM observation_history h JOIN element e ON e.id = h.element_id
        WHERE e.code = 'TMAX' AND h.phenomenon_time = '2020-01-02T00:00Z' ORDER BY h.id""")
    assert history[-1].value == after_decision.value and not history[-1].marked

    # Delivering the same new value again changes nothing; QC never touches the decision.
    again = load(datastore, bucket, changed_elsewhere.replace("2020-01-02,26.3", "2020-01-02,26.9"), force=True)
    assert (again.updated, again.unchanged) == (0, 3)
    # A new decision is made on the new source value and settles the review item.
    settled = decide(datastore, key("2020-01-02"), "accept", "new value confirmed by the observer", "reviewer")
    assert settled.value == 26.9
    row = tmax(datastore, "2020-01-02")
    assert row.value == 26.9 and "source_changed" not in row.manual and row.manual["source_value"] == 26.9
    assert source_changes(datastore) == []


@pytest.mark.usefixtures("stations")
def test_the_source_going_back_to_the_decided_value_clears_the_review_item(
    datastore: Datastore, bucket: Bucket
) -> None:
    load(datastore, bucket, DAYS)
    decide(datastore, key("2020-01-01"), "correct", "transposed digits", "reviewer", corrected_value=21.5)
    load(datastore, bucket, DAYS.replace("2020-01-01,25.1", "2020-01-01,25.9"))
    assert len(source_changes(datastore)) == 1
    load(datastore, bucket, DAYS)
    assert source_changes(datastore) == []
    assert tmax(datastore, "2020-01-01").value == 21.5


# ------------------------------------------------------------------ controls: force, mapping, revert


@pytest.mark.usefixtures("stations")
def test_force_loads_again_and_another_mapping_is_another_load(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    first = load(datastore, bucket, DAYS)
    assert load(datastore, bucket, DAYS).status is IngestStatus.SKIPPED
    forced = load(datastore, bucket, DAYS, force=True)
    assert forced.status is IngestStatus.LOADED and (forced.inserted, forced.unchanged) == (0, 3)
    mapping_file = tmp_path / "other-source.yaml"
    mapping_file.write_text("source: another-network\n")
    mapped = ingest(IngestRequest.from_bytes("incoming/obs.csv", DAYS.encode(), load_mapping(mapping_file)),
                    datastore, bucket, "clerk")
    assert mapped.status is IngestStatus.LOADED and mapped.inserted == 3
    assert scalar(datastore, "SELECT count(*) FROM observation") == 6
    statuses = [r.status for r in rows(datastore, "SELECT status FROM ingest_ledger ORDER BY id")]
    assert statuses == ["loaded", "skipped", "loaded", "loaded"]
    assert first.ledger_id is not None


@pytest.mark.usefixtures("stations")
def test_revert_puts_back_what_a_load_changed_and_is_audited(datastore: Datastore, bucket: Bucket) -> None:
    load(datastore, bucket, DAYS)
    second = DAYS.replace("2020-01-02,26.3", "2020-01-02,30.0") + "0-20000-0-60001,TMAX,2020-01-04,28.0\n"
    changed = load(datastore, bucket, second)
    assert (changed.inserted, changed.updated) == (1, 1)
    result = revert_load(datastore, changed.ledger_id, "supervisor")
    assert (result.restored, result.deleted) == (1, 1)
    assert tmax(datastore, "2020-01-02").value == 26.3
    assert scalar(datastore, "SELECT status FROM observation WHERE phenomenon_time = '2020-01-04T00:00Z'") == "deleted"
    assert scalar(datastore, "SELECT status FROM ingest_ledger WHERE id = :i", i=changed.ledger_id) == "reverted"
    reasons = {r.reason for r in rows(datastore, "SELECT reason FROM observation_history")}
    assert f"revert of ingest {changed.ledger_id} (incoming/obs.csv)" in reasons
    assert scalar(datastore, "SELECT count(*) FROM observation WHERE status = 'latest'") == 3
    # Reverted: the same file may be loaded again, and a second revert is refused.
    again = load(datastore, bucket, second)
    assert again.status is IngestStatus.LOADED and again.updated == 2
    with pytest.raises(RevertError, match="its status is reverted"):
        revert_load(datastore, changed.ledger_id, "supervisor")


@pytest.mark.usefixtures("stations")
def test_revert_is_refused_when_a_later_change_touched_the_same_rows(datastore: Datastore, bucket: Bucket) -> None:
    loaded = load(datastore, bucket, DAYS)
    decide(datastore, key("2020-01-02"), "reject", "sensor in the sun", "reviewer")
    before = rows(datastore, "SELECT value, status, version FROM observation ORDER BY phenomenon_time")
    with pytest.raises(RevertError, match=r"1 of the values it loaded were changed afterwards \(e\.g\. 0-20000-0-60001 TMAX"):
        revert_load(datastore, loaded.ledger_id, "supervisor")
    assert rows(datastore, "SELECT value, status, version FROM observation ORDER BY phenomenon_time") == before
    assert scalar(datastore, "SELECT status FROM ingest_ledger WHERE id = :i", i=loaded.ledger_id) == "loaded"
    with pytest.raises(NotFoundError, match="there is no ingest 999999 in the ledger"):
        revert_load(datastore, 999_999, "supervisor")


# ------------------------------------------------------------------ every file gets an outcome


@pytest.mark.usefixtures("stations")
def test_bad_headers_and_bytes_fail_their_file_only_with_the_line(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    files = {
        "repeated.csv": b"station,element,time,value,value\n0-20000-0-60001,TMAX,2020-01-01,1,2\n",
        "nul.csv": DAYS.encode() + b"0-20000-0-60001,TMAX,2020-01-05,2\x000\n",
        "utf16.csv": DAYS.encode("utf-16"),
        "huge.csv": DAYS.encode() + b"0-20000-0-60001,TMAX,2020-01-06," + b"9" * (20 << 20) + b"\n",
        "good.csv": DAYS.encode(),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    results = {Path(r.object_key).name: r for r in ingest_many(
        [(name, lambda name=name: IngestRequest.from_path(tmp_path / name)) for name in files],
        datastore, bucket, "clerk")}
    assert "column(s) 'value' more than once" in results["repeated.csv"].error
    assert "line 5: not a text file: it contains binary data (a NUL byte)" in results["nul.csv"].error
    assert "UTF-16" in results["utf16.csv"].error and "encoding: utf-16" in results["utf16.csv"].error
    assert "line 5 is longer than" in results["huge.csv"].error
    assert [r.status for r in results.values()] == [IngestStatus.FAILED] * 4 + [IngestStatus.LOADED]
    assert scalar(datastore, "SELECT count(*) FROM observation") == 3
    failed = rows(datastore, "SELECT status, error FROM ingest_ledger WHERE status = 'failed'")
    assert len(failed) == 4 and all(row.error for row in failed)


@pytest.mark.usefixtures("stations")
def test_utf16_declared_in_the_mapping_loads(datastore: Datastore, bucket: Bucket, tmp_path: Path) -> None:
    mapping_file = tmp_path / "utf16.yaml"
    mapping_file.write_text("encoding: utf-16\n")
    result = ingest(IngestRequest.from_bytes("incoming/u.csv", DAYS.encode("utf-16"), load_mapping(mapping_file)),
                    datastore, bucket, "clerk")
    assert result.status is IngestStatus.LOADED and result.inserted == 3


@pytest.mark.usefixtures("stations")
def test_unknown_columns_are_named_in_a_warning_or_refused(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    text = "station,element,time,value,flags\n0-20000-0-60001,TMAX,2020-01-01,25.1,E\n"
    result = load(datastore, bucket, text)
    assert result.status is IngestStatus.LOADED
    assert result.warnings and "'flags'" in result.warnings[0]
    stored = scalar(datastore, "SELECT warnings FROM ingest_ledger WHERE id = :i", i=result.ledger_id)
    assert "'flags'" in stored[0]
    mapping_file = tmp_path / "strict.yaml"
    mapping_file.write_text("unmapped_columns: refuse\n")
    refused = ingest(IngestRequest.from_bytes("incoming/strict.csv", text.encode(), load_mapping(mapping_file)),
                     datastore, bucket, "clerk")
    assert refused.status is IngestStatus.FAILED and "'flags'" in refused.error


# ------------------------------------------------------------------ chunks behave as one file


@pytest.mark.usefixtures("stations")
def test_a_file_read_in_many_chunks_keeps_lines_and_refuses_repeats_across_chunks(
    datastore: Datastore, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", 1)  # every batch of the parser is a chunk
    monkeypatch.setattr(reader_module, "BLOCK_BYTES", 64)  # and every block holds about two lines
    lines = ["station,element,time,value"]
    for day in range(1, 21):
        lines.append(f"0-20000-0-60001,TMAX,2020-01-{day:02d},{20 + day / 10:.1f}")
    lines.append("0-20000-0-60001,TMAX,2020-01-03,20.3")  # line 22: same as line 4
    lines.append("0-20000-0-60001,TMAX,2020-01-05,29.9")  # line 23: conflicts with line 6
    lines.append("0-20000-0-60001,TMAX,2020-01-07,hot")  # line 24: not a number
    result = load(datastore, bucket, "\n".join(lines) + "\n")
    assert result.status is IngestStatus.LOADED
    report = bucket.fs.cat_file(bucket.path(result.reject_report)).decode()
    assert (result.rows_read, result.inserted, result.rejected) == (23, 19, 4), report
    assert '"incoming/obs.csv",22,"value","20.3","duplicate of line 4"' in report
    assert '"incoming/obs.csv",6,"value","20.5","conflicts with line 23 (value 29.9)"' in report
    assert '"incoming/obs.csv",23,"value","29.9","conflicts with line 6 (value 20.5)"' in report
    assert '"incoming/obs.csv",24,"value","hot","not a number"' in report
    assert scalar(datastore, "SELECT count(*) FROM observation WHERE phenomenon_time = '2020-01-05T00:00Z'") == 0


@pytest.mark.usefixtures("stations")
def test_a_key_refused_as_a_conflict_in_one_chunk_is_refused_in_every_later_chunk(
    datastore: Datastore, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader_module, "CHUNK_ROWS", 4)
    monkeypatch.setattr(reader_module, "BLOCK_BYTES", 64)
    lines = ["station,element,time,value",
             "0-20000-0-60001,TMAX,2020-01-01,20.1",  # line 2
             "0-20000-0-60001,TMAX,2020-01-01,25.0"]  # line 3: conflicts with line 2, same chunk
    lines += [f"0-20000-0-60001,TMAX,2020-01-{day:02d},{20 + day / 10:.1f}" for day in range(2, 21)]
    lines.append("0-20000-0-60001,TMAX,2020-01-01,20.1")  # line 23, a later chunk: the same key again
    result = load(datastore, bucket, "\n".join(lines) + "\n")
    report = bucket.fs.cat_file(bucket.path(result.reject_report)).decode()
    assert (result.inserted, result.rejected) == (19, 3), report
    assert '"incoming/obs.csv",23,"value","20.1","conflicts with line 3 (value 25)"' in report
    assert scalar(datastore, "SELECT count(*) FROM observation WHERE phenomenon_time = '2020-01-01T00:00Z'") == 0


@pytest.mark.usefixtures("stations")
def test_reject_report_keys_are_unique_even_when_ledger_ids_repeat(datastore: Datastore, bucket: Bucket) -> None:
    bad = DAYS + "0-20000-0-60001,TMAX,2020-01-09,hot\n"
    first = load(datastore, bucket, bad)
    # A restore can set the ledger's sequence back; a new load must not overwrite the old report.
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM ingest_ledger"))
        connection.execute(sa.text("SELECT setval(pg_get_serial_sequence('ingest_ledger', 'id'), 1, false)"))
    second = load(datastore, bucket, bad.replace("hot", "warm"), name="other.csv")
    assert second.ledger_id == first.ledger_id
    assert first.reject_report != second.reject_report
    assert "hot" in bucket.fs.cat_file(bucket.path(first.reject_report)).decode()


# ------------------------------------------------------------------ killed, interrupted, lost


LOADER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from opencdms_kernel.bucket import open_bucket
    from opencdms_kernel.db.engine import Datastore
    from opencdms_kernel.ingest import IngestRequest, ingest
    from opencdms_kernel.settings import Settings
    settings = Settings(database_url=sys.argv[1], bucket_url=sys.argv[2], home=sys.argv[3])
    with Datastore.open(settings) as datastore:
        result = ingest(IngestRequest.from_path(Path(sys.argv[4])), datastore, open_bucket(settings), "loader")
        print(result.status.value, result.inserted, result.error)
""")


def _big_file(path: Path, days: int) -> int:
    """Two stations × four elements × ``days`` days from 1900: enough rows that each stage lasts a while."""
    from datetime import date, timedelta

    start = date(1900, 1, 1)
    with path.open("w") as out:
        out.write("station,element,time,value\n")
        for station in ("0-20000-0-60001", "0-20000-0-60002"):
            for element in ("TMAX", "TMIN", "TMEAN", "PRCP"):
                out.writelines(f"{station},{element},{start + timedelta(days=d)},{d % 30}.5\n" for d in range(days))
    return 8 * days


def _wait_for(datastore: Datastore, condition: str, deadline: float = 60.0) -> None:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        if scalar(datastore, f"SELECT EXISTS ({condition})"):  # condition: constant SQL of this file
            return
        time.sleep(0.02)
    raise AssertionError(f"never saw: {condition}")


NO_LOAD_RUNNING = ("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' "
                   f"AND classid = {LOAD_LOCK} AND database = (SELECT oid FROM pg_database "
                   "WHERE datname = current_database()))")
def _wait_for_recovery(datastore: Datastore, deadline: float = 120.0) -> None:
    """Until the server, restarted by its postmaster after a crash, takes connections again."""
    stop = time.monotonic() + deadline
    while True:
        try:
            scalar(datastore, "SELECT 1")
            return
        except sa.exc.OperationalError:
            assert time.monotonic() < stop, "the server did not come back after the crash"
            time.sleep(0.2)


LOADING = "SELECT 1 FROM ingest_ledger WHERE status = 'loading'"
# Another session's statement in this test's database (this session's own query text would
# match the pattern too, and other tests run their loads on the same server at the same time).
COPYING = ("SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
           "AND state = 'active' AND query LIKE 'COPY observation%'")
STAGING = ("SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
           "AND state = 'active' AND query LIKE 'COPY ingest_staging%'")
MERGING = ("SELECT 1 FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND datname = current_database() "
           "AND state = 'active' AND (query LIKE '%INSERT INTO observation%' OR query LIKE '%MERGE INTO observation%')")


@pytest.mark.slow
@pytest.mark.usefixtures("stations")
@pytest.mark.parametrize("stage", ["parsing", "copy", "staging", "merge"])
def test_kill_9_at_each_stage_leaves_an_interrupted_entry_and_a_rerun_loads_once(
    datastore: Datastore, bucket: Bucket, settings, tmp_path: Path, stage: str
) -> None:
    """New data goes straight into the table (copy); data that meets stored rows is staged, then
    merged (one stored row of the file's first day makes the load take that path)."""
    big = tmp_path / "big.csv"
    total = _big_file(big, 45_000)
    stored = 0
    if stage in ("staging", "merge"):
        load(datastore, bucket, "station,element,time,value\n0-20000-0-60001,TMAX,1900-01-01,0.5\n", name="first.csv")
        stored = 1
    url = datastore.url.render_as_string(hide_password=False)
    process = subprocess.Popen([sys.executable, "-c", LOADER, url, settings.bucket_url, str(tmp_path), str(big)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(datastore, {"parsing": LOADING, "copy": COPYING, "staging": STAGING, "merge": MERGING}[stage])
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    # The server notices the dead client (at once, or when the statement it runs ends); the
    # load's locks go with its session.
    _wait_for(datastore, NO_LOAD_RUNNING)
    assert scalar(datastore, "SELECT count(*) FROM observation") == stored
    result = ingest(IngestRequest.from_path(big), datastore, bucket, "clerk")
    assert result.status is IngestStatus.LOADED and result.inserted == total - stored
    ledger = [tuple(r) for r in rows(datastore, "SELECT status, rows_inserted FROM ingest_ledger ORDER BY id")]
    assert ledger[-2:] == [("interrupted", None), ("loaded", total - stored)]
    assert scalar(datastore, "SELECT count(*) FROM observation") == total
    again = ingest(IngestRequest.from_path(big), datastore, bucket, "clerk")
    assert again.status is IngestStatus.SKIPPED


@pytest.mark.slow
@pytest.mark.usefixtures("stations")
def test_losing_the_database_connection_mid_copy_fails_the_file_and_records_it(
    datastore: Datastore, bucket: Bucket, tmp_path: Path
) -> None:
    import threading

    big = tmp_path / "big.csv"
    total = _big_file(big, 45_000)

    def terminate_the_loader() -> None:
        _wait_for(datastore, COPYING)
        with datastore.engine.connect() as connection:
            connection.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'COPY observation%' "
                "AND pid <> pg_backend_pid() AND datname = current_database()"))
            connection.commit()

    killer = threading.Thread(target=terminate_the_loader)
    killer.start()
    result = ingest(IngestRequest.from_path(big), datastore, bucket, "clerk")
    killer.join()
    assert result.status is IngestStatus.FAILED and "database" in result.error
    assert scalar(datastore, "SELECT status FROM ingest_ledger WHERE id = :i", i=result.ledger_id) == "failed"
    assert scalar(datastore, "SELECT count(*) FROM observation") == 0
    assert ingest(IngestRequest.from_path(big), datastore, bucket, "clerk").inserted == total


@pytest.mark.slow
def test_a_private_server_killed_mid_load_leaves_an_interrupted_entry(tmp_path: Path) -> None:
    """kill -9 of the loading backend of a private PostgreSQL: the server restarts all sessions."""
    from conftest import outside_pytest_tmp

    from opencdms_kernel.bucket import open_bucket
    from opencdms_kernel.db import migrate
    from opencdms_kernel.db.engine import start_embedded_postgres
    from opencdms_kernel.settings import Settings

    folder = outside_pytest_tmp("opencdms-test-crash-")
    url, handle = start_embedded_postgres(folder / "pgdata")
    try:
        settings = Settings(home=tmp_path, database_url=url, bucket_url=f"file://{tmp_path / 'bucket'}")
        with Datastore.open(settings) as datastore:
            migrate.upgrade(datastore)
            (tmp_path / "stations.csv").write_text(STATIONS)
            import_stations(datastore, tmp_path / "stations.csv")
            big = tmp_path / "big.csv"
            total = _big_file(big, 45_000)
            process = subprocess.Popen([sys.executable, "-c", LOADER, url, settings.bucket_url, str(tmp_path),
                                        str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            _wait_for(datastore, COPYING)
            backend = scalar(datastore, "SELECT pid FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                                        "AND query LIKE 'COPY observation%'")
            os.kill(int(backend), signal.SIGKILL)
            out, err = process.communicate(timeout=120)
            assert out.startswith("failed") and "Traceback" not in err
            datastore.engine.dispose()
            _wait_for_recovery(datastore)
            # The loader could not record its outcome on a server in recovery, or it could: either
            # way no entry claims 'loading' without a living load once the next ingest looks.
            result = ingest(IngestRequest.from_path(big), datastore, open_bucket(settings), "clerk")
            assert result.status is IngestStatus.LOADED and result.inserted == total
            statuses = [r[0] for r in rows(datastore, "SELECT status FROM ingest_ledger ORDER BY id")]
            assert statuses[0] in ("failed", "interrupted") and statuses[1:] == ["loaded"]
    finally:
        handle.cleanup()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_ctrl_c_stops_the_ingest_command_without_a_traceback(tmp_path: Path, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    env.update(OPENCDMS_HOME=str(tmp_path), OPENCDMS_DATABASE_URL=database_url, COLUMNS="80")
    command = [sys.executable, "-m", "opencdms_kernel.cli"]
    (tmp_path / "stations.csv").write_text(STATIONS)
    subprocess.run([*command, "stations", "import", str(tmp_path / "stations.csv")], env=env, check=True,
                   capture_output=True)
    big = tmp_path / "big.csv"
    _big_file(big, 45_000)
    # As from a terminal: a handled signal is reset to its default in the child, an ignored one
    # stays ignored (and is, when the tests run as a background job of a non-interactive shell).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        process = subprocess.Popen([*command, "ingest", str(big)], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    engine = sa.create_engine(database_url)
    try:
        stop = time.monotonic() + 60
        with engine.connect() as connection:
            while not connection.execute(sa.text(f"SELECT EXISTS ({LOADING})")).scalar_one():
                assert time.monotonic() < stop
                time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
        assert process.returncode == 130, (out, err)
        assert "Traceback" not in out + err and "Query interrupted" not in out + err
        assert "stopped (Ctrl-C)" in out
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT status FROM ingest_ledger")).scalar_one() == "interrupted"
            assert connection.execute(sa.text("SELECT count(*) FROM observation")).scalar_one() == 0
    finally:
        process.kill()
        engine.dispose()


# ------------------------------------------------------------------ the command: exit codes, whole messages


def test_exit_codes_and_messages_are_whole_in_an_80_column_pipe(tmp_path: Path, database_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    env.update(OPENCDMS_HOME=str(tmp_path), OPENCDMS_DATABASE_URL=database_url, COLUMNS="80")

    def opencdms(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "opencdms_kernel.cli", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    (tmp_path / "stations.csv").write_text(STATIONS)
    assert opencdms("stations", "import", str(tmp_path / "stations.csv")).returncode == 0
    long_name = tmp_path / ("station-0-20000-0-60001-daily-record-1991-2020-" + "x" * 40 + ".csv")
    long_name.write_text(DAYS)
    clean = opencdms("ingest", str(long_name))
    assert clean.returncode == 0, clean.stdout
    rejects = tmp_path / "rejects.csv"
    rejects.write_text(DAYS.replace("2020-01-01", "2021-01-01").replace("27.0", "warm"))
    partly = opencdms("ingest", str(rejects))
    assert partly.returncode == 3 and "1 rejected rows (33.3% of its observations)" in partly.stdout
    assert "line 4, column 'value': not a number ('warm')" in partly.stdout
    missing = tmp_path / ("missing-columns-in-a-file-with-a-long-name-" + "y" * 40 + ".csv")
    missing.write_text("station,time,value\n0-20000-0-60001,2020-01-01,1\n")
    failed = opencdms("ingest", str(missing), str(long_name))
    assert failed.returncode == 1
    # The reason is one whole line, whatever the terminal's width.
    assert f"{missing.resolve().as_uri()}, line 1: missing required column(s) 'element'" in failed.stdout
    assert "Traceback" not in failed.stdout + failed.stderr
    ledger = opencdms("ingest", "ledger")
    assert ledger.returncode == 0 and "skipped" in ledger.stdout and "failed" in ledger.stdout
    reverted = opencdms("ingest", "revert", "1")
    assert reverted.returncode == 0 and "3 values it added marked deleted" in reverted.stdout
