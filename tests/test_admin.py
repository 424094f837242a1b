"""The administration's kernel: stations, QC rules as versions, elements, routes.yml, and people's
roles through a real JupyterHub — each function with its refusals (not an administrator, a bad
field named, a stale file, a hub token without the scopes)."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path
from typing import Iterator

import pytest

from conftest import outside_pytest_tmp
from opencdms_kernel.admin.access import AdminOnlyError, Administrator, administrator, require_admin
from opencdms_kernel.admin.elements import list_elements
from opencdms_kernel.admin.files import ConfigFileChangedError, read_config_text, save_config_text
from opencdms_kernel.admin.rules import relation_from_form, save_relation, save_threshold, threshold_from_form
from opencdms_kernel.admin.stations import (
    add_station,
    close_station,
    edit_station,
    export_station_file,
    import_station_file,
    list_stations,
    station_changes,
)
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.errors import ConflictError, IngestFileError, NotFoundError, ParameterError
from opencdms_kernel.hub_users import (
    MANAGE_SCOPES,
    HubApiError,
    HubPermissionError,
    HubUserNotFoundError,
    HubUsers,
    hub_role_of,
)
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import current_relations, current_thresholds, relation_versions, threshold_versions
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import StationExistsError, get_station
from opencdms_kernel.vocabulary import HubRole

ADA = Administrator("ada")
ALPHA = {"wigos_id": "0-20000-0-60001", "name": "Alpha", "latitude": "-1.5", "longitude": "36.25",
         "elevation": "1650", "timezone": "Africa/Nairobi"}


class NotAnAdministrator:
    """What a caller might pass instead of an Administrator: a name and nothing else."""

    user = "mallory"


# --------------------------------------------------------------------------- who may


def test_only_the_admin_role_makes_an_administrator(tmp_path: Path) -> None:
    for role in (HubRole.CLERK, HubRole.SCIENTIST, HubRole.QC_REVIEWER, None):
        with pytest.raises(AdminOnlyError) as refused:
            Administrator("carla", role)
        assert refused.value.http_status == 403
        assert f"role: {role.value if role else 'none'}" in str(refused.value)
    assert administrator(Settings(home=tmp_path, user="ada", hub_role="admin")) == ADA
    with pytest.raises(AdminOnlyError, match="carla is not an administrator"):
        administrator(Settings(home=tmp_path, user="carla", hub_role="clerk"))
    with pytest.raises(AdminOnlyError):
        require_admin(NotAnAdministrator())


@pytest.mark.postgres
def test_writers_refuse_anyone_but_an_administrator(datastore: Datastore, tmp_path: Path) -> None:
    someone = NotAnAdministrator()
    rules = (current_thresholds(datastore), current_relations(datastore))  # the migrations' network rules
    with pytest.raises(AdminOnlyError):
        add_station(datastore, someone, ALPHA)  # type: ignore[arg-type]
    with pytest.raises(AdminOnlyError):
        import_station_file(datastore, someone, "s.csv", b"wigos_id,name,latitude,longitude\n")  # type: ignore[arg-type]
    with pytest.raises(AdminOnlyError):
        save_threshold(datastore, someone, {"test": "range", "element": "TMAX", "high": "50"}, "x")  # type: ignore[arg-type]
    with pytest.raises(AdminOnlyError):
        save_relation(datastore, someone, {"left": "TMIN", "operator": "<=", "right": "TMAX"}, "x")  # type: ignore[arg-type]
    target = tmp_path / "routes.yml"
    target.write_text("routes: []\n")
    with pytest.raises(AdminOnlyError):
        save_config_text(someone, target, "schedules: []\n", lambda text: None, expected_digest=None)  # type: ignore[arg-type]
    assert list_stations(datastore) == []
    assert (current_thresholds(datastore), current_relations(datastore)) == rules
    assert target.read_text() == "routes: []\n"


# --------------------------------------------------------------------------- stations


@pytest.mark.postgres
def test_a_station_with_a_bad_wigos_id_is_refused_with_the_rule_it_breaks(datastore: Datastore) -> None:
    cases = {
        "60001": "is not a WIGOS identifier (series-issuer-issue number-local id",
        "0-70000-0-60001": "the issuer and the issue number go from 0 to 65534",
        "15-20000-0-60001": "the identifier series 15 is beyond 14",
        "": "a station needs its WIGOS identifier",
    }
    for wigos_id, reason in cases.items():
        with pytest.raises(ParameterError) as refused:
            add_station(datastore, ADA, {**ALPHA, "wigos_id": wigos_id})
        assert refused.value.parameter == "wigos_id" and reason in refused.value.reason
    with pytest.raises(ParameterError) as refused:
        add_station(datastore, ADA, {**ALPHA, "latitude": "95"})
    assert refused.value.parameter == "latitude"
    with pytest.raises(ParameterError) as refused:
        add_station(datastore, ADA, {**ALPHA, "timezone": "Africa/Nairobbi"})
    assert refused.value.parameter == "timezone" and "not an IANA time zone" in refused.value.reason
    with pytest.raises(ParameterError) as refused:
        add_station(datastore, ADA, {**ALPHA, "height": "3"})
    assert refused.value.parameter == "height"
    assert list_stations(datastore) == []

    added = add_station(datastore, ADA, {**ALPHA, "territory": "", "opened": "1990-01-01"})
    assert (added.wigos_id, added.elevation, added.territory, added.opened) == (
        "0-20000-0-60001", 1650.0, None, date(1990, 1, 1))
    assert [row.station for row in list_stations(datastore)] == [added]
    with pytest.raises(StationExistsError) as taken:
        add_station(datastore, ADA, ALPHA)
    assert taken.value.http_status == 409


@pytest.mark.postgres
def test_edits_and_closing_are_audited_under_the_administrators_name(datastore: Datastore) -> None:
    add_station(datastore, ADA, ALPHA)
    edited = edit_station(datastore, ADA, ALPHA["wigos_id"], {**ALPHA, "name": "Alpha Met", "elevation": ""},
                          reason="renamed after the 2024 survey")
    assert (edited.name, edited.elevation) == ("Alpha Met", None)
    with pytest.raises(ParameterError, match="cannot be changed"):
        edit_station(datastore, ADA, ALPHA["wigos_id"], {"wigos_id": "0-20000-0-60002"})
    with pytest.raises(ParameterError) as refused:
        edit_station(datastore, ADA, ALPHA["wigos_id"], {"closed": "1980-01-01", "opened": "1990-01-01"})
    assert "before opened" in str(refused.value)
    with pytest.raises(NotFoundError):
        edit_station(datastore, ADA, "0-20000-0-99999", {"name": "nobody"})
    with pytest.raises(ParameterError) as refused:
        close_station(datastore, ADA, ALPHA["wigos_id"], "31/12/2024")
    assert refused.value.parameter == "closed"

    closed = close_station(datastore, ADA, ALPHA["wigos_id"], "2024-12-31", reason="station moved")
    assert (closed.status, closed.closed) == ("closed", date(2024, 12, 31))
    assert get_station(datastore, ALPHA["wigos_id"]).status == "closed"
    changes = station_changes(datastore, ALPHA["wigos_id"])
    assert [(c.superseded_by, c.reason, c.before["name"], c.before["status"]) for c in changes] == [
        ("ada", "station moved", "Alpha Met", "operational"),
        ("ada", "renamed after the 2024 survey", "Alpha", "operational"),
    ]


@pytest.mark.postgres
def test_station_files_round_trip_and_bad_files_change_nothing(datastore: Datastore) -> None:
    add_station(datastore, ADA, ALPHA)
    name, data = export_station_file(datastore)
    assert name == "stations.csv" and data.decode().splitlines()[1].startswith("0-20000-0-60001,Alpha,")
    changed = data.decode().replace(",Alpha,", ",Alpha Two,") + "0-20000-0-60002,Bravo,0.5,37.0,,,,UTC,,,\n"
    assert import_station_file(datastore, ADA, "upload.csv", changed.encode(), reason="yearly list") == 2
    assert [row.station.name for row in list_stations(datastore)] == ["Alpha Two", "Bravo"]
    assert [(c.superseded_by, c.reason) for c in station_changes(datastore, ALPHA["wigos_id"])] == [
        ("ada", "yearly list")]
    wis2box_name, wis2box = export_station_file(datastore, "wis2box")
    assert wis2box_name == "station_list.csv" and wis2box.startswith(b"station_name,wigos_station_identifier")
    with pytest.raises(ParameterError) as refused:
        export_station_file(datastore, "xlsx")
    assert refused.value.parameter == "layout"

    with pytest.raises(IngestFileError, match="upload.csv: not UTF-8"):
        import_station_file(datastore, ADA, "upload.csv", "wigos_id,name\n0-1-1-Zürich".encode("latin-1"))
    bad = changed.replace("Bravo,0.5", "Bravo,95")
    with pytest.raises(IngestFileError, match="upload.csv, line 3: column 'latitude'"):
        import_station_file(datastore, ADA, "upload.csv", bad.encode())
    assert [row.station.latitude for row in list_stations(datastore)] == [-1.5, 0.5]


@pytest.mark.postgres
def test_elements_are_listed_from_the_datastore(datastore: Datastore) -> None:
    rows = {row.code: row for row in list_elements(datastore)}
    assert {"TMAX", "TMIN", "PRCP"} <= set(rows)
    assert (rows["TMAX"].units, rows["TMAX"].cell_method) == ("degC", "time: maximum")
    assert rows["TMAX"].valid_min < rows["TMAX"].valid_max


# --------------------------------------------------------------------------- QC rules


@pytest.mark.postgres
def test_a_threshold_change_is_a_new_version_and_the_old_one_stays(datastore: Datastore) -> None:
    add_station(datastore, ADA, ALPHA)
    form = {"test": "range", "element": "TMAX", "station": ALPHA["wigos_id"], "month": "1",
            "duration_seconds": "P1D", "severity": "failed", "low": "5", "high": "40"}
    first = save_threshold(datastore, ADA, form, "first survey")
    assert (first.added, first.version, first.rule["duration_seconds"]) == (True, 1, 86400)
    second = save_threshold(datastore, ADA, {**form, "high": "42.5"}, "hotter summers")
    same = save_threshold(datastore, ADA, {**form, "high": "42.5"}, "again")
    assert (second.added, second.version, same.added, same.version) == (True, 2, False, 2)
    withdrawn = save_threshold(datastore, ADA, {**form, "active": False}, "sensor replaced")
    assert (withdrawn.version, withdrawn.rule["active"]) == (3, False)
    history = threshold_versions(datastore, QcTest.RANGE, "TMAX", ALPHA["wigos_id"], 1, 86400)
    assert [(row["version"], row["active"], row["high"], row["created_by"], row["reason"]) for row in history] == [
        (3, False, 40.0, "ada", "sensor replaced"), (2, True, 42.5, "ada", "hotter summers"),
        (1, True, 40.0, "ada", "first survey")]
    assert all(row["created_at"] is not None for row in history)
    # Withdrawn: nothing of that scope in force (the migrations' network rules are).
    assert [row for row in current_thresholds(datastore) if row["station"] is not None] == []


@pytest.mark.postgres
def test_a_bad_threshold_is_refused_naming_the_field(datastore: Datastore) -> None:
    before = current_thresholds(datastore)
    base = {"test": "range", "element": "TMAX", "low": "5", "high": "40"}
    cases = [
        ({**base, "high": "forty"}, "high", "is not a number"),
        ({**base, "low": "50"}, "low", "is above high"),
        ({**base, "test": "consistency"}, "test", "is not one of range, step"),
        ({**base, "month": "13"}, "month", "not a month number"),
        ({**base, "duration_seconds": "P1M"}, "duration_seconds", "ISO 8601 duration"),
        ({**base, "station": "60001"}, "station", "not a WIGOS identifier"),
        ({**base, "station": "0-20000-0-60009"}, "station", "unknown station"),
        ({**base, "element": "TMAXX"}, "element", "unknown element"),
        ({**base, "max_run": "3"}, "max_run", "is not a parameter of the range test"),
        ({"test": "step", "element": "TMAX"}, "max_change", "is required for the step test"),
        ({"test": "persistence", "element": "TMAX", "max_run": "2.5"}, "max_run", "is not a whole number"),
        ({**base, "severity": "fatal"}, "severity", "is not one of suspect, failed"),
        ({**base, "colour": "red"}, "colour", "not a field of this rule"),
    ]
    for form, field, reason in cases:
        with pytest.raises(ParameterError) as refused:
            save_threshold(datastore, ADA, form, "a reason")
        assert (refused.value.parameter, reason in refused.value.reason) == (field, True), refused.value
    with pytest.raises(ParameterError) as refused:
        save_threshold(datastore, ADA, base, "  ")
    assert refused.value.parameter == "reason"
    assert threshold_from_form({**base, "max_gap_seconds": ""}).max_gap_seconds is None
    assert current_thresholds(datastore) == before


@pytest.mark.postgres
def test_relations_are_versioned_and_refusals_name_the_field(datastore: Datastore) -> None:
    # The network default TMIN <= TMAX (migration 0002, version 1) as the form shows it: unchanged.
    form = {"left": "TMIN", "operator": "<=", "right": "TMAX", "tolerance": "0", "severity": "failed"}
    unchanged = save_relation(datastore, ADA, form, "looked at it")
    assert (unchanged.added, unchanged.version) == (False, 1)
    changed = save_relation(datastore, ADA, {**form, "tolerance": "0.5"}, "rounding of the 1960s registers")
    assert (changed.added, changed.version, changed.rule["tolerance"], changed.rule["created_by"]) == (
        True, 2, 0.5, "ada")
    history = relation_versions(datastore, "TMIN", "<=", "TMAX")
    assert [(row["version"], row["tolerance"], row["reason"]) for row in history] == [
        (2, 0.5, "rounding of the 1960s registers"), (1, 0.0, None)]
    [in_force] = [row for row in current_relations(datastore) if (row["left"], row["right"]) == ("TMIN", "TMAX")]
    assert (in_force["operator"], in_force["tolerance"], in_force["version"]) == ("<=", 0.5, 2)
    assert relation_from_form({"left": "PRCP", "operator": ">=", "right_value": "0"}).right_value == 0.0
    for bad, field in (({**form, "operator": "=<"}, "operator"), ({**form, "right_value": "3"}, "right"),
                       ({**form, "right": "TMIN"}, "right"), ({**form, "tolerance": "-1"}, "tolerance"),
                       ({**form, "left": "TMINN"}, "left"), ({**form, "left": ""}, "left")):
        with pytest.raises(ParameterError) as refused:
            save_relation(datastore, ADA, bad, "a reason")
        assert refused.value.parameter == field, refused.value


# --------------------------------------------------------------------------- routes.yml


def test_routes_are_saved_only_when_valid_whole_and_not_stale(tmp_path: Path) -> None:
    from services.events.errors import RoutesError
    from services.events.routes import parse_routes

    shipped = Path(__file__).resolve().parents[1] / "services" / "events" / "routes.yml"
    target = tmp_path / "routes.yml"
    shutil.copyfile(shipped, target)
    opened = read_config_text(target)
    broken = opened.text.replace("process: ingest_file", "process: ingest file", 1)
    with pytest.raises(RoutesError) as refused:
        save_config_text(ADA, target, broken, parse_routes, expected_digest=opened.digest)
    assert (refused.value.where, refused.value.field) == ("route 'aws-hourly'", "process")
    assert "routes.yml: route 'aws-hourly': field 'process'" in str(refused.value)
    assert target.read_text() == opened.text  # nothing written

    edited = opened.text.replace('cron: "0 6 * * *"', 'cron: "30 5 * * *"')
    saved = save_config_text(ADA, target, edited, parse_routes, expected_digest=opened.digest)
    assert target.read_text() == edited and saved.digest == read_config_text(target).digest
    assert parse_routes(target.read_text()).schedule("daily-qc").cron == "30 5 * * *"
    assert [path.name for path in tmp_path.iterdir()] == ["routes.yml"]  # no temporary file left

    with pytest.raises(ConfigFileChangedError) as stale:  # opened before the save above
        save_config_text(ADA, target, opened.text, parse_routes, expected_digest=opened.digest)
    assert stale.value.http_status == 409 and target.read_text() == edited


# --------------------------------------------------------------------------- people and roles (a real hub)


def _server_token(hub: object, name: str) -> str:
    """The JUPYTERHUB_API_TOKEN the hub gave ``name``'s server (read from the server's process)."""
    from opencdms_kernel.hub import processes_of_run

    for pid in processes_of_run(hub.server.run_id):  # type: ignore[attr-defined]
        try:
            environ = dict(entry.split("=", 1) for entry in Path(f"/proc/{pid}/environ").read_text().split("\0")
                           if "=" in entry)
        except OSError:
            continue
        if environ.get("JUPYTERHUB_USER") == name and "JUPYTERHUB_API_TOKEN" in environ:
            return environ["JUPYTERHUB_API_TOKEN"]
    raise AssertionError(f"no server process of {name} found")


@pytest.fixture(scope="module")
def hub_with_servers() -> Iterator[tuple[object, str, str]]:
    """One hub (no database, no services) with an administrator's server running: its own token,
    as the admin app gets it; and a clerk's token with every scope a clerk holds."""
    from support.hub import started_hub

    home = outside_pytest_tmp("opencdms-test-admin-hub-")
    try:
        with started_hub(home) as hub:
            hub.create_user("boss", "admin")
            clerk = hub.create_user("carla", "clerk")
            hub.create_user("sam", "scientist")
            hub.wait_for_server("boss")
            yield hub, _server_token(hub, "boss"), clerk.token
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_an_administrators_server_token_lists_people_and_changes_roles(hub_with_servers: tuple[object, str, str]) -> None:
    hub, boss_token, _ = hub_with_servers
    boss = Administrator("boss")
    status, tokens = hub.api("GET", "/users/boss/tokens")  # type: ignore[attr-defined]
    [server_token] = [token for token in tokens["api_tokens"] if token["note"].startswith("Server at")]  # type: ignore[index]
    assert set(MANAGE_SCOPES) <= set(server_token["scopes"])  # Spawner.server_token_scopes, for an admin
    with HubUsers(hub.hub_api_url, boss_token) as users:  # type: ignore[attr-defined]
        listed = {user.name: user for user in users.list_users()}
        assert {name: user.role for name, user in listed.items() if name != "admin"} == {
            "boss": HubRole.ADMIN, "carla": HubRole.CLERK, "sam": HubRole.SCIENTIST}
        assert listed["admin"].admin and listed["admin"].role is HubRole.ADMIN
        assert listed["boss"].server_running and not listed["sam"].server_running

        promoted = users.set_role(boss, "sam", "qc-reviewer")
        assert (promoted.role, promoted.groups) == (HubRole.QC_REVIEWER, ("qc-reviewer",))
        status, model = hub.api("GET", "/users/sam")  # type: ignore[attr-defined]
        assert status == 200 and model["groups"] == ["qc-reviewer"]  # type: ignore[index]
        assert users.set_role(boss, "sam", None).role is None
        assert users.set_role(boss, "sam", HubRole.SCIENTIST).groups == ("scientist",)

        with pytest.raises(ConflictError, match="cannot change their own role"):
            users.set_role(boss, "boss", "clerk")
        with pytest.raises(ConflictError, match="hub administrator"):
            users.set_role(boss, "admin", "clerk")
        with pytest.raises(HubUserNotFoundError):
            users.set_role(boss, "nobody", "clerk")
        with pytest.raises(ValueError):
            users.set_role(boss, "sam", "superuser")
        with pytest.raises(AdminOnlyError):
            users.set_role(NotAnAdministrator(), "sam", "clerk")  # type: ignore[arg-type]
        assert users.get_user("sam").role is HubRole.SCIENTIST


@pytest.mark.slow
def test_a_clerks_token_is_refused_by_the_hub_itself(hub_with_servers: tuple[object, str, str]) -> None:
    hub, _, carla_token = hub_with_servers
    with HubUsers(hub.hub_api_url, carla_token) as users:  # type: ignore[attr-defined]
        with pytest.raises(HubPermissionError) as refused:
            users.list_users()
        assert refused.value.http_status == 403
        # Past the app's own check (an Administrator made by hand), the hub hides other users.
        with pytest.raises(HubUserNotFoundError, match="or this token may not see them"):
            users.set_role(Administrator("carla"), "sam", "admin")
    assert hub.api("GET", "/users/sam")[1]["groups"] == ["scientist"]  # type: ignore[attr-defined, index]
    assert sorted(hub.api("GET", "/groups/admin")[1]["users"]) == ["admin", "boss"]  # type: ignore[attr-defined, index]


def test_the_hub_client_says_when_there_is_no_hub() -> None:
    with pytest.raises(HubApiError, match="not running under JupyterHub"):
        HubUsers.from_environment({})
    with HubUsers("http://127.0.0.1:9/hub/api", "token", timeout=2) as users:  # nothing listens on port 9
        with pytest.raises(HubApiError, match="cannot be reached"):
            users.list_users()


def test_the_role_rules_are_the_hubs_own() -> None:
    from services.hub import config

    assert config.hub_role_of is hub_role_of
    assert hub_role_of({"clerk", "qc-reviewer"}, False) is HubRole.QC_REVIEWER
    assert hub_role_of(set(), True) is HubRole.ADMIN and hub_role_of({"friends"}, False) is None
