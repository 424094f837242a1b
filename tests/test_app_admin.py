"""The administration app in a real browser (Debian's chromium through Playwright), served
standalone by ``panel serve`` on the embedded PostgreSQL: an invalid WIGOS id refused with its
reason beside the field, a valid station added and then in the explorer's station list, routes.yml
refused with the route and field named, a role changed through a real hub, and the refusal page
for a non-administrator.  Every request of every page stays on 127.0.0.1.  Screenshots:
var/test-artifacts/ (or $OPENCDMS_TEST_ARTIFACTS)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from api_support import seed_network
from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.hub_users import MANAGE_SCOPES
from opencdms_kernel.settings import Settings
from opencdms_kernel.stations import get_station
from opencdms_kernel.vocabulary import HubRole
from support.apps import RunningApp, record_requests, serve_panel
from support.browser import Shots
from support.hub import RunningTestHub, started_hub

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

SHIPPED_ROUTES = Path(__file__).resolve().parents[1] / "services" / "events" / "routes.yml"
NEW_STATION = "0-454-2-AWSNKHOTA"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    folder = outside_pytest_tmp("opencdms-test-app-admin-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(embedded_server: PostgresServer, home: Path) -> Iterator[Settings]:
    """A migrated database of its own on the embedded server, with the demo stations; the
    administrator ada; a copy of the shipped routes.yml as the configured routes file."""
    name = embedded_server.new_database()
    routes = home / "routes.yml"
    shutil.copyfile(SHIPPED_ROUTES, routes)
    built = Settings(home=home, database_url=embedded_server.url_of(name), bucket_url=f"file://{home / 'bucket'}",
                     user="ada", hub_role="admin", events_routes_file=routes)
    with Datastore.open(built) as datastore:
        seed_network(datastore)
    yield built
    embedded_server.drop(name)


@dataclass
class Servers:
    """The module's servers: a hub, the app for the administrator ada, the app for the clerk carla."""

    hub: RunningTestHub
    admin_app: RunningApp
    clerk_app: RunningApp


@pytest.fixture(scope="module")
def servers(settings: Settings, home: Path) -> Iterator[Servers]:
    """Started side by side (each start is mostly Python imports): the clerk's app, and the hub
    followed by the administrator's app, which gets what the hub gives an administrator's
    server — its API's address and a token with the scopes of Spawner.server_token_scopes
    (test_admin.py checks that a spawned server's token has them)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        clerk_start = pool.submit(serve_panel, "admin", settings.model_copy(update={"hub_role": HubRole.CLERK}),
                                  "carla", home / "clerk-app.log")
        try:
            with started_hub(home / "hub") as hub:
                hub.create_user("ada", "admin")
                hub.create_user("sam", "scientist")
                token = hub.token_for("ada", list(MANAGE_SCOPES))
                admin_app = serve_panel("admin", settings, "ada", home / "admin-app.log", extra={
                    "JUPYTERHUB_API_URL": hub.hub_api_url, "JUPYTERHUB_API_TOKEN": token})
                try:
                    yield Servers(hub, admin_app, clerk_start.result())
                finally:
                    admin_app.stop()
        finally:
            if clerk_start.exception() is None:  # waits for the start to end either way
                clerk_start.result().stop()



def fill_station(page: object, **values: str) -> None:
    for name, value in values.items():
        page.fill(f".station-{name} input", value)  # type: ignore[attr-defined]


def test_an_administrator_adds_a_station_and_the_explorer_lists_it(
    servers: Servers, settings: Settings, page: object, shots: Shots
) -> None:
    recorded = record_requests(page)
    page.goto(servers.admin_app.url)
    page.wait_for_selector(".station-wigos_id input", timeout=60_000)
    page.wait_for_selector(".station-table :text('0-20000-0-60001')")
    shots(page, "stations")

    fill_station(page, wigos_id="0-70000-0-NKHOTA", name="Nkhotakota", latitude="-12.92", longitude="34.29",
                 elevation="500", timezone="Africa/Blantyre")
    page.click(".station-add button")
    error = page.wait_for_selector(".station-wigos_id-error :text('issuer and the issue number')")
    assert "'0-70000-0-NKHOTA': the issuer and the issue number go from 0 to 65534" in error.inner_text()
    page.wait_for_selector(".station-message :text('Not saved: WIGOS id')")
    shots(page, "invalid-wigos-id-refused")

    fill_station(page, wigos_id=NEW_STATION)
    page.fill(".station-reason input", "new AWS, commissioned 2024")
    page.click(".station-add button")
    page.wait_for_selector(f".station-message :text('Station {NEW_STATION} (Nkhotakota) added.')")
    page.wait_for_selector(f".station-table :text('{NEW_STATION}')")
    assert page.inner_text(".station-wigos_id-error") == ""
    shots(page, "valid-station-added")

    from opencdms_kernel import explore
    from opencdms_kernel.catalog import close_catalog, open_catalog

    catalog = open_catalog(settings)
    try:
        stations = explore.station_list(catalog).set_index("wigos_id")
    finally:
        close_catalog(catalog)
    assert stations.loc[NEW_STATION, "label"] == f"Nkhotakota ({NEW_STATION})"
    assert (stations.loc[NEW_STATION, "latitude"], stations.loc[NEW_STATION, "longitude"]) == (-12.92, 34.29)
    assert "0-70000-0-NKHOTA" not in stations.index
    with Datastore.open(settings) as datastore:
        assert get_station(datastore, NEW_STATION).timezone == "Africa/Blantyre"
    assert recorded.leaving() == []


def test_routes_are_refused_naming_the_route_and_field_and_saved_when_valid(
    servers: Servers, settings: Settings, page: object, shots: Shots
) -> None:
    recorded = record_requests(page)
    page.goto(servers.admin_app.url)
    page.wait_for_selector(".station-wigos_id input", timeout=60_000)
    page.click(".bk-tab:text-is('Routes and schedules')")
    editor = page.wait_for_selector(".routes-text textarea")
    routes_file = settings.events_routes_file
    assert routes_file is not None
    original = routes_file.read_text()
    assert editor.input_value() == original

    editor.fill(original.replace("process: ingest_file", "process: ingest file", 1))
    page.click(".routes-save button")
    refused = page.wait_for_selector(".routes-message :text('Not saved')")
    assert "routes.yml: route 'aws-hourly': field 'process'" in refused.inner_text()
    assert routes_file.read_text() == original
    shots(page, "routes-refused")

    editor.fill(original.replace('cron: "0 6 * * *"', 'cron: "30 5 * * *"'))
    page.click(".routes-save button")
    page.wait_for_selector(".routes-message :text('Saved routes.yml')")
    assert 'cron: "30 5 * * *"' in routes_file.read_text()
    shots(page, "routes-saved")
    assert recorded.leaving() == []


def test_an_administrator_changes_a_role_through_the_hub(servers: Servers, page: object, shots: Shots) -> None:
    hub = servers.hub
    recorded = record_requests(page)
    page.goto(servers.admin_app.url)
    page.wait_for_selector(".station-wigos_id input", timeout=60_000)
    page.click(".bk-tab:text-is('Users and roles')")
    page.wait_for_selector(".users-table :text('sam')")
    page.select_option(".users-person select", "sam")
    page.select_option(".users-role select", "clerk")
    page.click(".users-change button")
    page.wait_for_selector(".users-message :text('sam is now clerk.')")
    assert hub.api("GET", "/users/sam")[1]["groups"] == ["clerk"]  # type: ignore[index]
    shots(page, "role-changed")

    page.select_option(".users-person select", "ada")
    page.select_option(".users-role select", "scientist")
    page.click(".users-change button")
    page.wait_for_selector(".users-message :text('ada cannot change their own role')")
    assert hub.api("GET", "/users/ada")[1]["groups"] == ["admin"]  # type: ignore[index]
    shots(page, "own-role-refused")
    assert recorded.leaving() == []


def test_anyone_but_an_administrator_gets_the_refusal_page(servers: Servers, page: object, shots: Shots) -> None:
    recorded = record_requests(page)
    page.goto(servers.clerk_app.url)
    refusal = page.wait_for_selector(".admin-refused .app-message.error", timeout=60_000)
    assert "carla is not an administrator (role: clerk)" in refusal.inner_text()
    assert page.query_selector(".station-wigos_id input") is None
    assert page.query_selector(".admin-tabs") is None
    shots(page, "refused")
    assert recorded.leaving() == []
