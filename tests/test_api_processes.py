"""Notebooks as OGC API processes, and everything else that needs a hub identity: a real
JupyterHub (tests/support/hub.py, the project's jupyterhub_config.py), a real API process
registered with it as the service ``api``, and a real ``opencdms worker`` process.

The API records jobs; only the worker runs notebooks.  OWSLib's Processes client where it has a
method (list, describe, execute); plain HTTP for job status, results, files and dismissal
(OWSLib 0.36 has no method for them).  Tokens are real hub tokens of users in the hub's roles:
a scientist may execute and follow jobs, a clerk may not, an administrator may also change
stations (Features Part 4).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from api_support import RunningApi, free_port, seed_network, start_api, stop_api
from conftest import PostgresServer, service_missing
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FIXTURES = Path(__file__).parent / "notebooks_fixtures"
SYNC_TIMEOUT = 8.0
PREFIX = "/services/api"
CLOSED = "monthly-summaries"  # a collection only holders of custom:opencdms:read may read


@dataclass
class SecuredApi:
    """The API as a hub service, and tokens of users in the hub's roles."""

    api: RunningApi
    hub: object  # support.hub.TestHub
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def settings(self) -> Settings:
        return self.api.settings

    def client(self, who: str | None = "scientist", **kwargs: object) -> httpx.Client:
        """An HTTP client of the API with ``who``'s token (None: anonymous)."""
        headers = {"Authorization": f"token {self.tokens[who]}"} if who else {}
        return httpx.Client(base_url=self.api.url, timeout=60, headers=headers, **kwargs)  # type: ignore[arg-type]

    def headers(self, who: str) -> dict[str, str]:
        return {"Authorization": f"token {self.tokens[who]}"}


def _hub_available() -> None:
    from opencdms_kernel.hub import proxy_command

    if not Path(proxy_command()[0]).exists():
        service_missing("configurable-http-proxy is not installed (make install)")


@pytest.fixture(scope="module", params=["embedded", "external"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredApi]:
    """A hub, the API as its service over a fresh database (the test notebooks as processes, a
    small network of stations) and one worker."""
    from support.hub import started_hub

    _hub_available()
    server: PostgresServer | None = request.getfixturevalue(f"{request.param}_server")
    if server is None:
        service_missing("no external PostgreSQL")
    assert server is not None
    name = server.new_database()
    home = tmp_path_factory.mktemp(f"processes-{request.param}")
    notebooks = home / "notebooks"
    notebooks.mkdir()
    for fixture in ("hello", "sleeps", "fails"):
        (notebooks / f"{fixture}.ipynb").write_bytes((FIXTURES / f"{fixture}.ipynb").read_bytes())
    settings = Settings(home=home, database_url=server.url_of(name), bucket_url=f"file://{home / 'bucket'}",
                        notebook_dir=notebooks, api_sync_timeout=SYNC_TIMEOUT, api_closed_collections=[CLOSED])
    with Datastore.open(settings) as datastore:
        seed_network(datastore)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OPENCDMS_")}
    environment.update(settings.as_environment())
    log = (home / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "opencdms_kernel.cli", "worker"], env=environment,
                              cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    running = None
    port = free_port()
    hub_home = home / "hub"
    hub_home.mkdir()
    try:
        with started_hub(hub_home, external_services={"api": f"http://127.0.0.1:{port}"}) as hub:
            running = start_api(settings, home / "api.log", prefix=PREFIX, port=port, extra_env={
                "JUPYTERHUB_API_URL": hub.hub_api_url, "JUPYTERHUB_API_TOKEN": hub.service_tokens["api"],
                "JUPYTERHUB_SERVICE_PREFIX": f"{PREFIX}/"})
            tokens = {role: hub.create_user(f"{role.replace('-', '')}{request.param[:3]}", role).token
                      for role in ("admin", "scientist", "qc-reviewer", "clerk")}
            tokens["noaccess"] = hub.token_for(f"scientist{request.param[:3]}",
                                               scopes=["custom:opencdms:execute", "custom:opencdms:jobs"])
            yield SecuredApi(running, hub, tokens)
    finally:
        if running is not None:
            stop_api(running.process)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(timeout=15)
        server.drop(name)


def _jobs(api: SecuredApi) -> int:
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        return connection.execute(sa.text("SELECT count(*) FROM job")).scalar_one()


def _follow(client: httpx.Client, job_url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(job_url, params={"f": "json"}).json()
        if status["status"] in ("successful", "failed", "dismissed"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_url} did not finish: {status}")


def test_every_notebook_is_a_described_process(api: SecuredApi) -> None:
    from owslib.ogcapi.processes import Processes

    client = Processes(api.url)
    listed = {process["id"] for process in client.processes()}
    assert listed == {"hello", "sleeps", "fails"}
    hello = client.process("hello")
    assert hello["title"] == "Hello station"
    assert hello["inputs"]["station"]["schema"]["x-opencdms-kind"] == "WigosId"
    assert hello["inputs"]["count"]["schema"]["type"] == "integer"
    assert {"sync-execute", "async-execute"} <= set(hello["jobControlOptions"])


def test_execute_synchronously_and_asynchronously(api: SecuredApi) -> None:
    from owslib.ogcapi.processes import Processes

    inputs = {"station": "0-20000-0-60002", "count": 1, "note": "sync"}
    result = Processes(api.url, timeout=120, headers=api.headers("scientist")).execute("hello", inputs=inputs)
    assert result["status"] == "successful", result
    links = {link["rel"]: link for link in result["links"]}
    assert {"notebook", "html"} <= set(links)
    with api.client() as client:
        page = client.get(links["html"]["href"].replace(api.url, ""))
        assert page.status_code == 200 and "Hello station" in page.text

        asynchronous = Processes(api.url, timeout=60, headers=api.headers("scientist"))
        answer = asynchronous.execute("hello", inputs={**inputs, "note": "async"}, async_=True)
        location = asynchronous.response_headers["location"]
        assert answer["status"] == "accepted" and location.endswith(f"/jobs/{answer['jobID']}")
        status = _follow(client, location.replace(api.url, ""))
        assert status["status"] == "successful", status
        results = client.get(f"/jobs/{answer['jobID']}/results", params={"f": "json"}).json()
        assert results["status"] == "successful" and results["parameters"]["note"] == "async"
        assert any(job["jobID"] == answer["jobID"] for job in client.get("/jobs", params={"f": "json"}).json()["jobs"])
        # Only the job's own files are served.
        other = client.get(f"/jobs/{answer['jobID']}/files/runs/{uuid.uuid4()}/hello.html")
        assert other.status_code == 404 and other.json()["code"] == "NotFound"


def test_idempotency_key_gives_one_job(api: SecuredApi) -> None:
    key = f"test-{uuid.uuid4()}"
    body = {"inputs": {"note": "once"}}
    headers = {"Prefer": "respond-async", "Idempotency-Key": key}
    with api.client() as client:
        first = client.post("/processes/hello/execution", json=body, headers=headers)
        second = client.post("/processes/hello/execution", json=body, headers=headers)
        assert first.status_code == second.status_code == 201
        assert first.json()["jobID"] == second.json()["jobID"]
        other = client.post("/processes/hello/execution", json={"inputs": {"note": "other"}}, headers=headers)
        assert other.status_code == 409 and other.json()["code"] == "NoApplicableCode"
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        count = connection.execute(sa.text("SELECT count(*) FROM job WHERE idempotency_key = :key"), {"key": key})
        assert count.scalar_one() == 1


def test_sync_waits_then_answers_as_async_and_dismiss_stops(api: SecuredApi) -> None:
    with api.client() as client:
        started = time.monotonic()
        answer = client.post("/processes/sleeps/execution", json={"inputs": {"seconds": 120}})
        waited = time.monotonic() - started
        assert answer.status_code == 201 and "location" in answer.headers, answer.text
        assert SYNC_TIMEOUT - 0.5 <= waited < SYNC_TIMEOUT + 20
        job_url = answer.headers["location"].replace(api.url, "")
        dismissed = client.delete(job_url)
        assert dismissed.status_code == 200 and dismissed.json()["status"] == "dismissed"
        assert client.get(job_url, params={"f": "json"}).json()["status"] == "dismissed"
        again = client.delete(job_url)  # dismissing twice changes nothing
        assert again.status_code == 200


def test_failing_notebook_is_reported(api: SecuredApi) -> None:
    with api.client() as client:
        answer = client.post("/processes/fails/execution", json={"inputs": {"label": "x"}})
    assert answer.status_code == 400 and "failed" in answer.json()["description"]


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/processes/nope/execution", {"inputs": {}}, 404, "NoSuchProcess"),
    ("/processes/'; DROP TABLE job;--/execution", {"inputs": {}}, 404, "NoSuchProcess"),
    ("/processes/hello/execution", {"inputs": {"count": "many"}}, 400, "InvalidParameterValue"),
    ("/processes/hello/execution", {"inputs": {"object_key": "../etc/passwd"}}, 400, "InvalidParameterValue"),
    ("/processes/hello/execution", {"inputs": {"unknown": 1}}, 400, "InvalidParameterValue"),
    ("/processes/hello/execution", {"inputs": ["not", "an", "object"]}, 400, "InvalidParameterValue"),
    ("/processes/hello/execution", "{not json", 400, "InvalidParameterValue"),
])
def test_bad_execution_requests_change_nothing(api: SecuredApi, path: str, body: object, status: int, code: str) -> None:
    before = _jobs(api)
    with api.client() as client:
        content = body if isinstance(body, str) else None
        answer = client.post(path, json=None if content else body, content=content,
                             headers={"Prefer": "respond-async", "Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert _jobs(api) == before


# A fixed unknown UUID: every xdist worker must collect the same test ids.
@pytest.mark.parametrize("identifier", ["'; DROP TABLE job;--", "0-20000-0-6000%27", "x" * 5000, "%00",
                                        "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"])
def test_unknown_or_hostile_job_ids_are_not_found(api: SecuredApi, identifier: str) -> None:
    before = _jobs(api)
    with api.client("scientist") as client:
        for method, path in (("GET", f"/jobs/{identifier}"), ("GET", f"/jobs/{identifier}/results"),
                             ("DELETE", f"/jobs/{identifier}")):
            answer = client.request(method, path, params={"f": "json"})
            assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:300])
            assert answer.json()["description"]
    assert _jobs(api) == before


def test_ten_megabyte_body_is_refused(api: SecuredApi) -> None:
    before = _jobs(api)
    with api.client() as client:
        answer = client.post("/processes/hello/execution", content=b"{" + b" " * 10_000_000 + b"}",
                             headers={"Content-Type": "application/json"})
        chunked = client.post("/processes/hello/execution", content=iter([b" " * 1_000_000] * 10),
                              headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "InvalidParameterValue"
    assert chunked.status_code == 413
    assert _jobs(api) == before


def test_jobs_record_who_asked(api: SecuredApi) -> None:
    with api.client("scientist") as client:
        answer = client.post("/processes/hello/execution", json={"inputs": {"note": "who"}},
                             headers={"Prefer": "respond-async"})
    assert answer.status_code == 201, answer.text
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        who = connection.execute(sa.text("SELECT requested_by FROM job WHERE id = :id"),
                                 {"id": answer.json()["jobID"]}).scalar_one()
    assert who.startswith("scientist")


# --------------------------------------------------------------------------- who may do what


@pytest.mark.parametrize(("method", "path", "body", "allowed", "denied"), [
    ("POST", "/processes/hello/execution", {"inputs": {"note": "auth"}}, "scientist", "clerk"),
    ("GET", "/jobs", None, "qc-reviewer", "clerk"),
    ("GET", f"/collections/{CLOSED}/items", None, "clerk", "noaccess"),
    ("PATCH", "/collections/stations/items/0-20000-0-60099", {"type": "Feature", "properties": {"territory": "X"}},
     "admin", "scientist"),
])
def test_anonymous_401_without_scope_403_with_scope_ok(api: SecuredApi, method: str, path: str, body: object,
                                                       allowed: str, denied: str) -> None:
    before = _jobs(api)
    headers = {"Prefer": "respond-async"}
    if method == "PATCH":
        headers["Content-Type"] = "application/geo+json"
    request = {"params": {"f": "json"}, "headers": headers, "json": body}
    with api.client(None) as client:
        anonymous = client.request(method, path, **request)
        bogus = client.request(method, path, **{**request, "headers": {**headers, "Authorization": "token not-a-token"}})
    with api.client(denied) as client:
        forbidden = client.request(method, path, **request)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "NotAuthorized", anonymous.text
    assert "www-authenticate" in anonymous.headers
    assert bogus.status_code == 401, bogus.text
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "Forbidden", forbidden.text
    assert _jobs(api) == before  # refused requests record nothing
    with api.client(allowed) as client:
        ok = client.request(method, path, **request)
    assert ok.status_code in (200, 201, 204), ok.text


def test_open_reads_need_no_token(api: SecuredApi) -> None:
    with api.client(None) as client:
        for path in ("/", "/conformance", "/collections", "/collections/stations/items", "/processes",
                     "/processes/hello", "/openapi"):
            assert client.get(path, params={"f": "json"}).status_code == 200, path


def test_hub_login_cookie_authenticates_a_browser(api: SecuredApi) -> None:
    """A browser without a token is sent to the hub's login; after it, the OAuth cookie of the
    service identifies it, but a write from another origin with only the cookie is refused."""
    from opencdms_kernel.hub import HubSession

    hub = api.hub
    public = f"{hub.url}services/api"  # type: ignore[attr-defined]
    with httpx.Client(timeout=30) as plain:
        first = plain.get(f"{public}/jobs", params={"f": "html"}, headers={"Accept": "text/html"})
    assert first.status_code == 302 and "/hub/api/oauth2/authorize" in first.headers["location"]
    browser = HubSession(hub.url)  # type: ignore[attr-defined]
    browser.login(hub.server.admin_user, hub.admin_password)  # type: ignore[attr-defined]
    page = browser.get("services/api/jobs?f=html")  # login, the hub's authorize, our callback, the page
    assert "jobs" in page.lower() and "<html" in page.lower()
    cookie = {c.name: c.value for c in browser.jar if c.path.startswith("/services/api")}
    assert "service-api" in cookie
    with httpx.Client(timeout=30, cookies=cookie) as client:
        listed = client.get(f"{public}/jobs", params={"f": "json"})
        assert listed.status_code == 200, listed.text
        job = client.post(f"{public}/processes/hello/execution", json={"inputs": {}},
                          headers={"Prefer": "respond-async"})
        assert job.status_code == 401  # a cookie alone: no Origin, so possibly another site's form
        same_site = client.post(f"{public}/processes/hello/execution", json={"inputs": {"note": "cookie"}},
                                headers={"Prefer": "respond-async", "Origin": hub.url.rstrip("/")})  # type: ignore[attr-defined]
        assert same_site.status_code == 201, same_site.text
        forged = {"service-api": cookie["service-api"][:-4] + "0000"}
        assert httpx.get(f"{public}/jobs", params={"f": "json"}, cookies=forged).status_code == 401


# --------------------------------------------------------------------------- Features Part 4


def _station(wigos_id: str, name: str = "New station", **properties: object) -> dict:
    return {"type": "Feature", "id": wigos_id, "geometry": {"type": "Point", "coordinates": [12.5, 7.25, 310.0]},
            "properties": {"name": name, "timezone": "Africa/Lagos", "opened": "2001-02-03", **properties}}


GEOJSON = {"Content-Type": "application/geo+json"}


def _station_row(api: SecuredApi, wigos_id: str) -> dict | None:
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        row = connection.execute(sa.text("SELECT * FROM station WHERE wigos_id = :w"), {"w": wigos_id}).mappings().first()
    return dict(row) if row else None


def test_stations_created_replaced_updated_closed(api: SecuredApi) -> None:
    wigos = f"0-20000-0-7{uuid.uuid4().int % 10**4:04d}"
    with api.client("admin") as client:
        created = client.post("/collections/stations/items", json=_station(wigos), headers=GEOJSON)
        assert created.status_code == 201, created.text
        assert created.headers["location"].endswith(f"/collections/stations/items/{wigos}")
        again = client.post("/collections/stations/items", json=_station(wigos), headers=GEOJSON)
        assert again.status_code == 409, again.text
        shown = client.get(f"/collections/stations/items/{wigos}", params={"f": "json"}).json()
        assert shown["geometry"]["coordinates"] == [12.5, 7.25] and shown["properties"]["elevation"] == 310.0
        first_change = _station_row(api, wigos)["changed_at"]  # type: ignore[index]

        replaced = client.put(f"/collections/stations/items/{wigos}", json=_station(wigos, "Replaced", territory="T"),
                              headers=GEOJSON)
        assert replaced.status_code == 204, replaced.text
        updated = client.patch(f"/collections/stations/items/{wigos}",
                               json={"type": "Feature", "properties": {"wmo_region": "I"}}, headers=GEOJSON)
        assert updated.status_code == 204, updated.text
        row = _station_row(api, wigos)
        assert row and (row["name"], row["territory"], row["wmo_region"]) == ("Replaced", "T", "I")
        assert row["changed_at"] > first_change

        closed = client.delete(f"/collections/stations/items/{wigos}")
        assert closed.status_code == 200, closed.text
        row = _station_row(api, wigos)
        assert row and row["status"] == "closed" and row["closed"] is not None  # closed, never deleted
        closed_on = row["closed"]
        assert client.delete(f"/collections/stations/items/{wigos}").status_code == 200  # again: unchanged
        assert _station_row(api, wigos)["closed"] == closed_on  # type: ignore[index]
        missing = client.put("/collections/stations/items/0-20000-0-99999", json=_station("0-20000-0-99999"),
                             headers=GEOJSON)
        assert missing.status_code == 404, missing.text


INJECTION = "'; DROP TABLE station;--"


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/collections/stations/items", {"type": "Feature", "properties": {"name": "no id"},
                                             "geometry": {"type": "Point", "coordinates": [1, 2]}}),
    ("POST", "/collections/stations/items", _station("not-a-wigos-id")),
    ("POST", "/collections/stations/items", _station(INJECTION)),
    ("POST", "/collections/stations/items", {**_station("0-20000-0-71111"), "geometry": {"type": "Point", "coordinates": [500, 2]}}),
    ("POST", "/collections/stations/items", {**_station("0-20000-0-71111"), "geometry": {"type": "LineString", "coordinates": [[1, 2], [3, 4]]}}),
    ("POST", "/collections/stations/items", _station("0-20000-0-71111", timezone="Mars/Olympus")),
    ("POST", "/collections/stations/items", _station("0-20000-0-71111", closed="1999-01-01")),
    ("POST", "/collections/stations/items", _station("0-20000-0-71111", **{INJECTION: 1})),
    ("POST", "/collections/stations/items", "{not json"),
    ("POST", "/collections/stations/items", "[" * 100_000),
    ("POST", "/collections/stations/items", ["not", "a", "feature"]),
    ("PUT", "/collections/stations/items/0-20000-0-60001", _station("0-20000-0-60002")),
    ("PATCH", "/collections/stations/items/0-20000-0-60001", {"type": "Feature", "properties": {"wigos_id": "0-20000-0-60002"}}),
    ("PATCH", "/collections/stations/items/0-20000-0-60001", {"type": "Feature", "properties": {"elevation": "high"}}),
    ("PATCH", "/collections/stations/items/0-20000-0-60001", {"type": "Feature", "properties": {"opened": "2030-01-01", "closed": "2020-01-01"}}),
    ("PATCH", "/collections/stations/items/0-20000-0-60001", {"type": "Feature", "properties": {"latitude": 95}}),
])
def test_bad_station_writes_are_400_and_change_nothing(api: SecuredApi, method: str, path: str, body: object) -> None:
    before = _stations_snapshot(api)
    content = body if isinstance(body, str) else None
    with api.client("admin") as client:
        answer = client.request(method, path, json=None if content else body, content=content, headers=GEOJSON)
    assert answer.status_code == 400, (answer.status_code, answer.text[:300])
    assert answer.json()["description"]
    assert _stations_snapshot(api) == before


def _stations_snapshot(api: SecuredApi) -> list[tuple]:
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text("SELECT * FROM station ORDER BY id"))]


def test_concurrent_station_writes(api: SecuredApi) -> None:
    """Two administrators at once: one create wins, the other is a 409; updates of different
    attributes at the same time all land (the row is locked, not overwritten from a stale read)."""
    from concurrent.futures import ThreadPoolExecutor

    wigos = f"0-20000-0-8{uuid.uuid4().int % 10**4:04d}"

    def create(_: int) -> int:
        with api.client("admin") as client:
            return client.post("/collections/stations/items", json=_station(wigos), headers=GEOJSON).status_code

    with ThreadPoolExecutor(4) as pool:
        statuses = sorted(pool.map(create, range(4)))
    assert statuses == [201, 409, 409, 409], statuses
    changes = {"name": "Concurrent", "territory": "Somewhere", "wmo_region": "II", "status": "testing",
               "elevation": 42.0}

    def update(item: tuple[str, object]) -> int:
        with api.client("admin") as client:
            return client.patch(f"/collections/stations/items/{wigos}",
                                json={"type": "Feature", "properties": dict([item])}, headers=GEOJSON).status_code

    with ThreadPoolExecutor(len(changes)) as pool:
        assert set(pool.map(update, changes.items())) == {204}
    row = _station_row(api, wigos)
    assert row and {key: row[key] for key in changes} == changes
