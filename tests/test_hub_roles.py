"""Hub roles reach the data: each hub user logs in as their own role, in their hub role's group,
and the database itself refuses what that role may not do (migration 0007, db/roles.py)."""

from __future__ import annotations

from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.pool import NullPool

from opencdms_kernel.db import roles
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.roles import HubRole

INSUFFICIENT_PRIVILEGE = "42501"


@pytest.fixture
def observation(datastore: Datastore) -> dict[str, int]:
    """One station, one source, one stored TMAX value (25.0)."""
    with datastore.engine.begin() as connection:
        station = connection.execute(sa.text(
            "INSERT INTO station (wigos_id, name, latitude, longitude) "
            "VALUES ('0-20000-0-60011', 'Hub', -1, 36) RETURNING id")).scalar_one()
        source = connection.execute(sa.text("INSERT INTO source (name) VALUES ('hub-test') RETURNING id")).scalar_one()
        element = connection.execute(sa.text("SELECT id FROM element WHERE code = 'TMAX'")).scalar_one()
        connection.execute(sa.text(
            "INSERT INTO observation (station_id, element_id, phenomenon_time, source_id, value, changed_by) "
            "VALUES (:station, :element, '2020-01-01T00:00Z', :source, 25.0, 'loader')"),
            {"station": station, "element": element, "source": source})
    return {"station": station, "source": source, "element": element}


@pytest.fixture
def engines() -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.dispose()


def connect(url: URL, engines: list[Engine]) -> Engine:
    engine = sa.create_engine(url, poolclass=NullPool)
    engines.append(engine)
    return engine


def outcome(engine: Engine, statement: str) -> str:
    """'ok', or the SQLSTATE of the refusal."""
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(statement))
    except sa.exc.DBAPIError as error:
        return error.orig.sqlstate  # type: ignore[union-attr]
    return "ok"


UPDATE_VALUE = "UPDATE observation SET value = 26.0"
UPDATE_FLAG = "UPDATE observation SET qc_status = 'suspect'"
READ_OBSERVATIONS = "SELECT count(*) FROM observation"
READ_STATIONS = "SELECT count(*) FROM station"
RENAME_STATION = "UPDATE station SET name = 'renamed'"
DELETE_OBSERVATION = "DELETE FROM observation"
MAKE_TABLE = "CREATE TABLE mine (x int)"
SUBMIT_JOB = "INSERT INTO job (process, parameters, status, requested_by, trigger) VALUES ('x', '{}', 'accepted', 'x', 'x')"


@pytest.mark.postgres
def test_each_hub_role_can_do_only_what_it_needs(
    datastore: Datastore, observation: dict[str, int], engines: list[Engine]
) -> None:
    expected = {
        # clerk: keyings and reading reference data; not even reading the observations.
        HubRole.CLERK: {READ_STATIONS: "ok", READ_OBSERVATIONS: INSUFFICIENT_PRIVILEGE,
                        UPDATE_VALUE: INSUFFICIENT_PRIVILEGE, UPDATE_FLAG: INSUFFICIENT_PRIVILEGE,
                        RENAME_STATION: INSUFFICIENT_PRIVILEGE, SUBMIT_JOB: INSUFFICIENT_PRIVILEGE},
        # scientist: reads everything, writes only through processes (the API's workers).
        HubRole.SCIENTIST: {READ_STATIONS: "ok", READ_OBSERVATIONS: "ok", UPDATE_VALUE: INSUFFICIENT_PRIVILEGE,
                            UPDATE_FLAG: INSUFFICIENT_PRIVILEGE, RENAME_STATION: INSUFFICIENT_PRIVILEGE,
                            SUBMIT_JOB: INSUFFICIENT_PRIVILEGE},
        # qc-reviewer: decisions on values and flags, nothing on stations or elements.
        HubRole.QC_REVIEWER: {READ_OBSERVATIONS: "ok", UPDATE_FLAG: "ok", UPDATE_VALUE: "ok",
                              RENAME_STATION: INSUFFICIENT_PRIVILEGE, SUBMIT_JOB: INSUFFICIENT_PRIVILEGE},
        # admin: the application's privileges (no delete, no DDL).
        HubRole.ADMIN: {READ_OBSERVATIONS: "ok", UPDATE_VALUE: "ok", RENAME_STATION: "ok"},
    }
    for role, cases in expected.items():
        engine = connect(roles.ensure_hub_user(datastore, f"user-{role.value}", role), engines)
        for statement, wanted in cases.items():
            assert outcome(engine, statement) == wanted, (role, statement)
        # Nobody deletes or changes the schema, whatever their hub role.
        assert outcome(engine, DELETE_OBSERVATION) == INSUFFICIENT_PRIVILEGE, role
        assert outcome(engine, MAKE_TABLE) == INSUFFICIENT_PRIVILEGE, role


@pytest.mark.postgres
def test_the_history_names_the_hub_user_and_their_own_login(
    datastore: Datastore, observation: dict[str, int], engines: list[Engine]
) -> None:
    url = roles.ensure_hub_user(datastore, "quinn@example.org", HubRole.QC_REVIEWER)
    reviewer = connect(url, engines)
    assert outcome(reviewer, UPDATE_FLAG) == "ok"
    # A session may claim another name for opencdms.user, but not another login role.
    with reviewer.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'someone-else', true)"))
        connection.execute(sa.text("UPDATE observation SET qc_status = 'failed'"))
    with datastore.engine.connect() as connection:
        entries = connection.execute(sa.text(
            "SELECT superseded_by, superseded_by_role FROM observation_history ORDER BY id")).all()
        recorded = connection.execute(sa.text(
            "SELECT hub_user, hub_role FROM hub_database_user WHERE role_name = :name"),
            {"name": url.username}).one()
    assert entries == [("quinn@example.org", url.username), ("someone-else", url.username)]
    assert tuple(recorded) == ("quinn@example.org", "qc-reviewer")


@pytest.mark.postgres
def test_a_changed_hub_role_changes_the_database_role_and_the_password(
    datastore: Datastore, observation: dict[str, int], engines: list[Engine], request: pytest.FixtureRequest
) -> None:
    first = roles.ensure_hub_user(datastore, "carla", HubRole.CLERK)
    assert outcome(connect(first, engines), READ_OBSERVATIONS) == INSUFFICIENT_PRIVILEGE
    second = roles.ensure_hub_user(datastore, "carla", "scientist")
    assert second.username == first.username and second.password != first.password
    assert outcome(connect(second, engines), READ_OBSERVATIONS) == "ok"
    groups = roles.hub_group_roles(roles.installation_roles(datastore))
    with datastore.engine.connect() as connection:
        member_of = set(connection.execute(sa.text(
            "SELECT g.rolname FROM pg_auth_members AS m JOIN pg_roles AS g ON g.oid = m.roleid "
            "WHERE m.member = to_regrole(:name)"), {"name": first.username}).scalars())
    assert member_of == {groups[HubRole.SCIENTIST]}
    if request.node.callspec.params["postgres_server"] == "embedded":  # the external one trusts 127.0.0.1
        with pytest.raises(sa.exc.OperationalError, match="password authentication failed"):
            connect(first, engines).connect().close()
    assert roles.drop_hub_user(datastore, "carla") is True
    assert roles.drop_hub_user(datastore, "carla") is False


@pytest.mark.postgres
def test_bad_hub_user_names_and_roles_are_refused(datastore: Datastore) -> None:
    with pytest.raises(roles.DatabaseRoleError, match="1 to 255"):
        roles.ensure_hub_user(datastore, "", HubRole.CLERK)
    with pytest.raises(ValueError):
        roles.ensure_hub_user(datastore, "x", "superuser")
    # Quotes and SQL in a name are data, never SQL.
    url = roles.ensure_hub_user(datastore, "o'brien\"; DROP TABLE observation; --", HubRole.SCIENTIST)
    with datastore.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT to_regclass('observation') IS NOT NULL")).scalar_one()
        assert connection.execute(sa.text("SELECT hub_user FROM hub_database_user WHERE role_name = :n"),
                                  {"n": url.username}).scalar_one().startswith("o'brien")
