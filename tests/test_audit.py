"""An audit nobody can rewrite, on both PostgreSQL setups (migration 0003, db/roles.py).

The history is append-only, ``TRUNCATE observation`` is refused, an update that changes
nothing leaves no trace, each element's physical range holds for every writer, the history
names the database role beside the application user, and the installation's roles (owner,
app, read-only) can do what they should and nothing more.  Every test's database is a copy of
a migrated template (``CREATE DATABASE … TEMPLATE``), so the role tests also show that a copy
keeps working with the template's roles and grants.
"""

from __future__ import annotations

import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from opencdms_kernel.db import migrate, roles
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.roles import RoleKind
from opencdms_kernel.settings import Settings

INSUFFICIENT_PRIVILEGE = "42501"


@dataclass(frozen=True)
class Ids:
    station: int
    source: int
    tmin: int
    tmax: int


@pytest.fixture
def ids(datastore: Datastore) -> Ids:
    """One station and source, and two stored observations: TMIN 12.5 and TMAX 25.0."""
    with datastore.engine.begin() as connection:
        station = connection.execute(sa.text(
            "INSERT INTO station (wigos_id, name, latitude, longitude) "
            "VALUES ('0-20000-0-60001', 'Alpha', -1, 36) RETURNING id")).scalar_one()
        source = connection.execute(sa.text(
            "INSERT INTO source (name) VALUES ('audit-test') RETURNING id")).scalar_one()
        elements = dict(connection.execute(sa.text(
            "SELECT code, id FROM element WHERE code IN ('TMIN', 'TMAX')")).all())
        connection.execute(sa.text(
            "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, value, changed_by) "
            "VALUES (:station, :tmin, '2020-01-01T00:00Z', :source, 12.5, 'clerk'), "
            "       (:station, :tmax, '2020-01-01T00:00Z', :source, 25.0, 'clerk')"),
            {"station": station, "source": source, "tmin": elements["TMIN"], "tmax": elements["TMAX"]})
    return Ids(station=station, source=source, tmin=elements["TMIN"], tmax=elements["TMAX"])


def rows(engine: Engine, query: str, **params: object) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(query), params)]


def observations(engine: Engine) -> list[tuple]:
    return rows(engine, "SELECT element_id, phenomenon_time, value, version, changed_at, changed_by "
                        "FROM observation ORDER BY element_id, phenomenon_time")


def history(engine: Engine) -> list[tuple]:
    return rows(engine, "SELECT * FROM observation_history ORDER BY id")


def write(engine: Engine, *statements: str, user: str | None = None, **params: object) -> None:
    with engine.begin() as connection:
        if user is not None:
            connection.execute(sa.text("SELECT set_config('opencdms.user', :user, true)"), {"user": user})
        for statement in statements:
            connection.execute(sa.text(statement), params)


def superseded_once(engine: Engine) -> None:
    """One audited update, so that the history has an entry to protect."""
    write(engine, "UPDATE observation SET value = value + 1 WHERE value = 12.5")


# --------------------------------------------------------------------------- history


@pytest.mark.parametrize("statement", [
    "UPDATE observation_history SET value = 0",
    "UPDATE observation_history SET superseded_by = 'nobody' WHERE false",
    "DELETE FROM observation_history",
    "TRUNCATE observation_history",
])
def test_the_history_refuses_update_delete_and_truncate_even_from_a_superuser(
    datastore: Datastore, ids: Ids, statement: str
) -> None:
    superseded_once(datastore.engine)
    before = history(datastore.engine)
    assert len(before) == 1
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        write(datastore.engine, statement)
    assert history(datastore.engine) == before


def test_truncate_of_observation_is_refused(datastore: Datastore, ids: Ids) -> None:
    superseded_once(datastore.engine)
    stored, audited = observations(datastore.engine), history(datastore.engine)
    for statement in ("TRUNCATE observation", "TRUNCATE observation, observation_history CASCADE"):
        with pytest.raises(sa.exc.IntegrityError, match="TRUNCATE on observation.* is refused"):
            write(datastore.engine, statement)
    assert observations(datastore.engine) == stored and len(stored) == 2
    assert history(datastore.engine) == audited


# --------------------------------------------------------------------------- no-op updates


def test_an_update_that_changes_nothing_leaves_no_history_and_no_new_version(
    datastore: Datastore, ids: Ids
) -> None:
    before = observations(datastore.engine)
    write(datastore.engine, "UPDATE observation SET value = value, comment = comment", user="someone-else")
    # The same through MERGE, the bulk load's statement, without its "only changed rows" guard.
    write(datastore.engine, """
        MERGE INTO observation AS o
        USING (SELECT station_id, element_id, phenomenon_time, value FROM observation) AS s
        ON o.station_id = s.station_id AND o.element_id = s.element_id
           AND o.phenomenon_time = s.phenomenon_time
        WHEN MATCHED THEN UPDATE SET value = s.value""", user="someone-else")
    assert observations(datastore.engine) == before  # version 1, changed_at/by untouched
    assert history(datastore.engine) == []

    write(datastore.engine, "UPDATE observation SET value = value + 0.5 WHERE element_id = :tmin",
          user="someone-else", tmin=ids.tmin)
    changed = {row[0]: row for row in observations(datastore.engine)}
    assert changed[ids.tmin][2:4] == (13.0, 2) and changed[ids.tmin][5] == "someone-else"
    assert changed[ids.tmax] == next(row for row in before if row[0] == ids.tmax)
    assert rows(datastore.engine, "SELECT element_id, value, version FROM observation_history") == [
        (ids.tmin, 12.5, 1)]


# --------------------------------------------------------------------------- physical ranges


def insert(value: str, ids: Ids, element: int | None = None, day: str = "2020-01-02") -> str:
    return (
        "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, value, changed_by) "
        f"VALUES ({ids.station}, {element or ids.tmin}, '{day}T00:00Z', {ids.source}, {value}, 'sql')"
    )


@pytest.mark.parametrize("value", ["120.8", "-90.5", "'NaN'", "'Infinity'"])
def test_a_value_outside_the_physical_range_cannot_be_inserted(
    datastore: Datastore, ids: Ids, value: str
) -> None:
    before = observations(datastore.engine)
    shown = value.strip("'")
    with pytest.raises(sa.exc.IntegrityError, match=rf"TMIN value {shown} .*range of element TMIN: \[-90, 60\] degC"):
        write(datastore.engine, insert(value, ids))
    assert observations(datastore.engine) == before


def test_one_bad_value_refuses_the_whole_statement_and_the_limits_themselves_are_allowed(
    datastore: Datastore, ids: Ids
) -> None:
    before = observations(datastore.engine)
    bulk = (
        "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, value, changed_by) "
        "SELECT :station, :tmax, timestamptz '2021-01-01' + i * interval '1 day', :source, "
        "       CASE WHEN i = 500 THEN 60.01 ELSE 20 END, 'sql' FROM generate_series(0, 999) AS i"
    )
    with pytest.raises(sa.exc.IntegrityError, match=r"TMAX value 60\.01 \(station id \d+, 2022-05-1[56]"):
        write(datastore.engine, bulk, station=ids.station, tmax=ids.tmax, source=ids.source)
    assert observations(datastore.engine) == before

    write(datastore.engine, insert("60", ids, ids.tmax, "2020-02-01"), insert("-90", ids, ids.tmin, "2020-02-01"),
          insert("NULL", ids, ids.tmin, "2020-02-02"))
    assert len(observations(datastore.engine)) == len(before) + 3


def test_a_value_cannot_be_updated_out_of_range(datastore: Datastore, ids: Ids) -> None:
    before, audited = observations(datastore.engine), history(datastore.engine)
    with pytest.raises(sa.exc.IntegrityError, match=r"TMIN value 120\.8 .*\[-90, 60\] degC"):
        write(datastore.engine, "UPDATE observation SET value = 120.8 WHERE element_id = :tmin", tmin=ids.tmin)
    assert observations(datastore.engine) == before
    assert history(datastore.engine) == audited


def test_a_range_cannot_shrink_past_stored_values(datastore: Datastore, ids: Ids) -> None:
    with pytest.raises(sa.exc.IntegrityError, match=r"element TMAX: 1 stored value\(s\) lie outside .*\[-90, 20\]"):
        write(datastore.engine, "UPDATE element SET valid_max = 20 WHERE code = 'TMAX'")
    assert rows(datastore.engine, "SELECT valid_min, valid_max FROM element WHERE code = 'TMAX'") == [(-90, 60)]
    write(datastore.engine, "UPDATE element SET valid_max = 30 WHERE code = 'TMAX'")
    with pytest.raises(sa.exc.IntegrityError, match=r"TMAX value 31"):
        write(datastore.engine, insert("31", ids, ids.tmax))


# --------------------------------------------------------------------------- the roles


@pytest.fixture
def role_engines(datastore: Datastore) -> Iterator[dict[RoleKind, Engine]]:
    """An engine per role of the installation, logging in with this installation's passwords.

    The roles are the template's (this database is a copy); this test's var folder does not
    hold their passwords, so they get new ones first.
    """
    roles.reset_passwords(datastore)
    engines = {kind: sa.create_engine(roles.role_url(datastore, kind), poolclass=NullPool) for kind in RoleKind}
    yield engines
    for engine in engines.values():
        engine.dispose()


def sqlstate(statements: str | tuple[str, ...], engine: Engine) -> str:
    """The SQLSTATE that ``statements`` (one transaction) fail with."""
    with pytest.raises(sa.exc.DBAPIError) as error:
        write(engine, *((statements,) if isinstance(statements, str) else statements))
    return error.value.orig.sqlstate  # type: ignore[union-attr]


def test_upgrade_keeps_the_template_roles_in_a_copy_and_stores_private_passwords(
    datastore: Datastore, settings: Settings, postgres_server, role_engines: dict[RoleKind, Engine]
) -> None:
    assert migrate.upgrade(datastore) == migrate.head_revision()
    expected = roles.roles_for(roles.role_prefix(postgres_server.template))
    assert roles.installation_roles(datastore) == expected
    database = datastore.url.database
    assert rows(datastore.engine, "SELECT count(*) FROM pg_roles WHERE rolname LIKE :name",
                name=f"{roles.role_prefix(database)}%") == [(0,)]
    assert rows(datastore.engine, """
        SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls
        FROM pg_roles WHERE rolname IN (:owner, :app, :readonly) ORDER BY rolname""",
        owner=expected.owner, app=expected.app, readonly=expected.readonly) == sorted(
        (name, True, False, False, False, False) for _, name in expected.items())
    # Everything in the schema belongs to the owner (tables, views, sequences, functions).
    assert rows(datastore.engine, """
        SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace
           AND relkind IN ('r', 'v', 'S') AND relowner <> to_regrole(:owner)
        UNION ALL
        SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace
           AND proowner <> to_regrole(:owner)""", owner=expected.owner) == []

    path = roles.secrets_file(settings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    passwords = roles.stored_passwords(path)
    assert set(passwords) == {name for _, name in expected.items()}
    assert len(set(passwords.values())) == 3 and all(len(p) >= 40 for p in passwords.values())
    url = roles.role_url(datastore, "app")
    assert passwords[expected.app] not in str(url) and url.username == expected.app
    for kind, engine in role_engines.items():
        assert rows(engine, "SELECT current_user, session_user") == [(expected.name(kind),) * 2]


def test_passwords_never_leave_the_client(datastore: Datastore, settings: Settings) -> None:
    """Every byte sent to the server while passwords are set and used: only SCRAM verifiers."""
    trace_path = Path(settings.home) / "protocol.trace"
    datastore.engine.dispose()
    with open(trace_path, "w") as trace:
        def traced(dbapi_connection, record) -> None:  # noqa: ANN001 (SQLAlchemy event)
            dbapi_connection.pgconn.trace(trace.fileno())

        sa.event.listen(datastore.engine, "connect", traced)
        try:
            installation = roles.reset_passwords(datastore)
            app = sa.create_engine(roles.role_url(datastore, "app"), poolclass=NullPool)
            sa.event.listen(app, "connect", traced)
            assert rows(app, "SELECT current_user") == [(installation.app,)]
            app.dispose()
        finally:
            sa.event.remove(datastore.engine, "connect", traced)
            datastore.engine.dispose()
    sent = trace_path.read_text(errors="replace")
    assert sent.count("SCRAM-SHA-256$4096:") >= 3
    for password in roles.stored_passwords(roles.secrets_file(settings)).values():
        assert password not in sent


def test_role_passwords_are_checked_where_the_server_asks_for_them(
    datastore: Datastore, role_engines: dict[RoleKind, Engine], request: pytest.FixtureRequest
) -> None:
    wrong = sa.create_engine(roles.role_url(datastore, "app").set(password="not-the-password"), poolclass=NullPool)
    try:
        try:
            rows(wrong, "SELECT 1")
        except sa.exc.OperationalError as error:
            assert "password authentication failed" in str(error)
            return
    finally:
        wrong.dispose()
    if request.node.callspec.params["postgres_server"] == "embedded":
        pytest.fail("the embedded server let a role in with a wrong password")
    pytest.skip("this external server trusts its clients (pg_hba 'trust'): it checks no password")


def test_the_app_role_writes_data_through_the_rules(
    datastore: Datastore, ids: Ids, role_engines: dict[RoleKind, Engine]
) -> None:
    app = role_engines[RoleKind.APP]
    app_name = roles.installation_roles(datastore).app
    write(app,
          "INSERT INTO station (wigos_id, name, latitude, longitude) VALUES ('0-20000-0-60002', 'Bravo', 0, 37)",
          insert("3.5", ids, ids.tmin, "2020-03-01"),
          "UPDATE observation SET value = 13.5 WHERE element_id = :tmin AND value = 12.5",
          "INSERT INTO ingest_ledger (object_key, size_bytes, checksum, status, ingested_by) "
          "VALUES ('incoming/a.csv', 10, 'abc', 'loading', 'clerk')",
          "UPDATE ingest_ledger SET status = 'loaded' WHERE object_key = 'incoming/a.csv'",
          user="clerk", tmin=ids.tmin)
    assert rows(datastore.engine, "SELECT count(*) FROM station") == [(2,)]
    assert rows(datastore.engine, "SELECT status FROM ingest_ledger") == [("loaded",)]
    assert rows(datastore.engine, "SELECT value, version, changed_by FROM observation "
                                  "WHERE element_id = :tmin ORDER BY phenomenon_time", tmin=ids.tmin) == [
        (13.5, 2, "clerk"), (3.5, 1, "sql")]
    # Who asked (the application user) and which database role wrote.
    assert rows(datastore.engine, "SELECT value, superseded_by, superseded_by_role FROM observation_history") == [
        (12.5, "clerk", app_name)]

    stored, audited = observations(datastore.engine), history(datastore.engine)
    refused = [
        "UPDATE observation_history SET value = 0",
        "DELETE FROM observation_history",
        "TRUNCATE observation_history",
        "INSERT INTO observation_history (operation, station_id, element_id, phenomenon_time, "
        "  duration_seconds, level, source_id, result_quality, qc_status, version, status, changed_at, "
        "  changed_by, superseded_by, superseded_by_role) "
        "SELECT 'UPDATE', station_id, element_id, phenomenon_time, duration_seconds, level, source_id, "
        "  result_quality, qc_status, version, status, changed_at, changed_by, 'forged', 'forged' "
        "FROM observation",
        "DELETE FROM observation",
        "TRUNCATE observation",
        "UPDATE database_role SET role_name = 'someone'",
        "CREATE TABLE scratch (id integer)",
        "ALTER TABLE observation_history DISABLE TRIGGER observation_history_append_only",
        "ALTER TABLE observation DISABLE TRIGGER USER",
        "DROP TABLE observation_history",
        "SET session_replication_role = replica",
        # A table of its own with the owner's audit function would write history as the owner.
        ("CREATE TEMP TABLE fake (LIKE observation)",
         "CREATE TRIGGER fake_audit AFTER DELETE ON fake REFERENCING OLD TABLE AS old_rows "
         "FOR EACH STATEMENT EXECUTE FUNCTION observation_audit()"),
    ]
    for statement in refused:
        assert (statement, sqlstate(statement, app)) == (statement, INSUFFICIENT_PRIVILEGE)
    assert observations(datastore.engine) == stored
    assert history(datastore.engine) == audited


def test_the_readonly_role_reads_everything_and_writes_nothing(
    datastore: Datastore, ids: Ids, role_engines: dict[RoleKind, Engine]
) -> None:
    superseded_once(datastore.engine)
    readonly = role_engines[RoleKind.READONLY]
    for table in ("observation", "observation_history", "station", "element", "ingest_ledger",
                  "qc_threshold", "observation_quality", "job"):
        assert rows(readonly, f"SELECT count(*) FROM {table}") == rows(datastore.engine, f"SELECT count(*) FROM {table}")
    stored, audited = observations(datastore.engine), history(datastore.engine)
    refused = [
        insert("3.5", ids, ids.tmin, "2020-03-01"),
        "UPDATE observation SET value = 13.5",
        "DELETE FROM observation",
        "UPDATE observation_history SET value = 0",
        "UPDATE station SET name = 'renamed'",
        "INSERT INTO source (name) VALUES ('mine')",
        "INSERT INTO ingest_ledger (object_key, size_bytes, checksum, status, ingested_by) "
        "VALUES ('incoming/a.csv', 10, 'abc', 'loading', 'clerk')",
        "INSERT INTO qc_threshold (test, element_id, version, low, high, method) "
        "SELECT 'range', id, 9, 0, 1, 'mine' FROM element LIMIT 1",
        "UPDATE job SET status = 'dismissed'",
        "CREATE TABLE scratch (id integer)",
        "SELECT * FROM station FOR UPDATE",
    ]
    for statement in refused:
        assert (statement, sqlstate(statement, readonly)) == (statement, INSUFFICIENT_PRIVILEGE)
    assert observations(datastore.engine) == stored
    assert history(datastore.engine) == audited
    assert rows(datastore.engine, "SELECT name FROM station") == [("Alpha",)]


def test_the_owner_role_changes_the_schema_but_not_the_history(
    datastore: Datastore, ids: Ids, role_engines: dict[RoleKind, Engine]
) -> None:
    superseded_once(datastore.engine)
    owner = role_engines[RoleKind.OWNER]
    with owner.connect() as connection:
        with connection.begin() as transaction:
            connection.execute(sa.text("ALTER TABLE station ADD COLUMN note text"))
            connection.execute(sa.text("CREATE TABLE scratch (id integer)"))
            transaction.rollback()
    audited = history(datastore.engine)
    with pytest.raises(sa.exc.IntegrityError, match="append-only"):
        write(owner, "DELETE FROM observation_history")
    assert history(datastore.engine) == audited


def test_roles_are_created_once_when_two_upgrades_race(
    datastore: Datastore, settings: Settings
) -> None:
    """Two sessions set up the roles of a database that has none yet: one creates them, the
    other waits and finds them."""
    prefix = f"opencdms_race_{uuid.uuid4().hex[:8]}"
    ours = settings.model_copy(update={"database_role_prefix": prefix})
    write(datastore.engine, "DELETE FROM database_role")
    results: dict[str, roles.InstallationRoles | BaseException] = {}
    first_done, second_started = threading.Event(), threading.Event()

    def first() -> None:
        with datastore.engine.connect() as connection:
            with connection.begin():
                results["first"] = roles.ensure_roles(connection, ours)
                first_done.set()
                second_started.wait(10)
                # Commit only once the second session is running (and waiting for our lock).
                with datastore.engine.connect() as probe:
                    for _ in range(100):
                        waiting = probe.execute(sa.text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalar_one()
                        if waiting:
                            break
                        time.sleep(0.1)
                    results["waited"] = bool(waiting)

    def second() -> None:
        first_done.wait(10)
        second_started.set()
        try:
            with datastore.engine.begin() as connection:
                results["second"] = roles.ensure_roles(connection, ours)
        except BaseException as exc:  # reported by the assertion below
            results["second"] = exc

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert results["waited"] is True
        assert results["first"] == results["second"] == roles.roles_for(prefix)
        # The installation's three roles and the hub's four groups (migration 0007).
        made = [*(name for _, name in roles.roles_for(prefix).items()),
                *roles.hub_group_roles(roles.roles_for(prefix)).values()]
        assert rows(datastore.engine, "SELECT rolname FROM pg_roles WHERE rolname LIKE :p ORDER BY 1",
                    p=f"{prefix}%") == [(name,) for name in sorted(made)]
        assert roles.installation_roles(datastore) == roles.roles_for(prefix)
        assert set(roles.stored_passwords(roles.secrets_file(settings))) == {
            name for _, name in roles.roles_for(prefix).items()}
    finally:
        roles.drop_roles(datastore)
    assert rows(datastore.engine, "SELECT count(*) FROM pg_roles WHERE rolname LIKE :p", p=f"{prefix}%") == [(0,)]


def test_roles_of_dropped_databases_are_cleared_and_roles_in_use_kept(datastore: Datastore) -> None:
    gone = f"opencdms_gone_{uuid.uuid4().hex[:8]}"
    orphan, in_use = f"{gone}_app", f"{gone}_owner"
    write(datastore.engine,
          f'CREATE ROLE "{orphan}"', f"COMMENT ON ROLE \"{orphan}\" IS 'OpenCDMS app role of database {gone}'",
          f'CREATE ROLE "{in_use}"', f"COMMENT ON ROLE \"{in_use}\" IS 'OpenCDMS owner role of database {gone}'",
          f'GRANT SELECT ON station TO "{in_use}"')
    try:
        with datastore.engine.begin() as connection:
            dropped = roles.drop_orphaned_roles(connection)
        assert orphan in dropped and in_use not in dropped
        assert rows(datastore.engine, "SELECT rolname FROM pg_roles WHERE rolname LIKE :p", p=f"{gone}%") == [(in_use,)]
    finally:
        write(datastore.engine, f'DROP OWNED BY "{in_use}"', f'DROP ROLE IF EXISTS "{in_use}"',
              f'DROP ROLE IF EXISTS "{orphan}"')


def test_role_url_needs_this_installations_password(datastore: Datastore) -> None:
    with pytest.raises(roles.DatabaseRoleError, match="no password for role .*reset_passwords"):
        roles.role_url(datastore, "readonly")


# --------------------------------------------------------------------------- the migration


def test_migration_0003_goes_down_and_refuses_to_come_back_over_values_out_of_range(
    datastore: Datastore, ids: Ids
) -> None:
    assert migrate.downgrade(datastore, "0002") == "0002"
    columns = [name for (name,) in rows(datastore.engine, "SELECT column_name FROM information_schema.columns "
                                                          "WHERE table_name = 'observation_history'")]
    assert "superseded_by_role" not in columns
    assert rows(datastore.engine, "SELECT to_regclass('database_role')") == [(None,)]
    write(datastore.engine, "UPDATE observation SET value = value", insert("120.8", ids))  # 0002 allowed both
    assert len(history(datastore.engine)) == 2

    with pytest.raises(migrate.MigrationError, match=r"1 stored observation\(s\) .* TMIN = 120\.8 degC"):
        migrate.upgrade(datastore)
    assert migrate.current_revision(datastore) == "0002"

    write(datastore.engine, "UPDATE observation SET value = NULL WHERE value = 120.8")
    try:
        assert migrate.upgrade(datastore) == migrate.head_revision()
        # The record went with the downgrade, so this database now has roles of its own.
        assert roles.installation_roles(datastore) == roles.roles_for(roles.role_prefix(datastore.url.database))
        with pytest.raises(sa.exc.IntegrityError, match="append-only"):
            write(datastore.engine, "DELETE FROM observation_history")
        assert len(history(datastore.engine)) == 3
    finally:
        roles.drop_roles(datastore)
