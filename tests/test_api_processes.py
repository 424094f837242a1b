"""Notebooks as OGC API processes: a real API process and a real ``opencdms worker`` process.

The API records jobs; only the worker runs notebooks.  OWSLib's Processes client where it has a
method (list, describe, execute); plain HTTP for job status, results, files and dismissal
(OWSLib 0.36 has no method for them).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest
import sqlalchemy as sa

from api_support import RunningApi, start_api, stop_api
from conftest import PostgresServer, service_missing
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FIXTURES = Path(__file__).parent / "notebooks_fixtures"
SYNC_TIMEOUT = 8.0


@pytest.fixture(scope="module", params=["embedded", "external"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """The API and one worker over a fresh database, with the test notebooks as processes."""
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
                        notebook_dir=notebooks, api_sync_timeout=SYNC_TIMEOUT)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OPENCDMS_")}
    environment.update(settings.as_environment())
    log = (home / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "opencdms_kernel.cli", "worker"], env=environment,
                              cwd=home, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    running = None
    try:
        running = start_api(settings, home / "api.log")
        yield running
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


def _jobs(api: RunningApi) -> int:
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


def test_every_notebook_is_a_described_process(api: RunningApi) -> None:
    from owslib.ogcapi.processes import Processes

    client = Processes(api.url)
    listed = {process["id"] for process in client.processes()}
    assert listed == {"hello", "sleeps", "fails"}
    hello = client.process("hello")
    assert hello["title"] == "Hello station"
    assert hello["inputs"]["station"]["schema"]["x-opencdms-kind"] == "WigosId"
    assert hello["inputs"]["count"]["schema"]["type"] == "integer"
    assert {"sync-execute", "async-execute"} <= set(hello["jobControlOptions"])


def test_execute_synchronously_and_asynchronously(api: RunningApi) -> None:
    from owslib.ogcapi.processes import Processes

    inputs = {"station": "0-20000-0-60002", "count": 1, "note": "sync"}
    result = Processes(api.url, timeout=120).execute("hello", inputs=inputs)
    assert result["status"] == "successful", result
    links = {link["rel"]: link for link in result["links"]}
    assert {"notebook", "html"} <= set(links)
    with api.client() as client:
        page = client.get(links["html"]["href"].replace(api.url, ""))
        assert page.status_code == 200 and "Hello station" in page.text

        asynchronous = Processes(api.url, timeout=60)
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


def test_idempotency_key_gives_one_job(api: RunningApi) -> None:
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


def test_sync_waits_then_answers_as_async_and_dismiss_stops(api: RunningApi) -> None:
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


def test_failing_notebook_is_reported(api: RunningApi) -> None:
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
def test_bad_execution_requests_change_nothing(api: RunningApi, path: str, body: object, status: int, code: str) -> None:
    before = _jobs(api)
    with api.client() as client:
        content = body if isinstance(body, str) else None
        answer = client.post(path, json=None if content else body, content=content,
                             headers={"Prefer": "respond-async", "Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code
    assert _jobs(api) == before


def test_ten_megabyte_body_is_refused(api: RunningApi) -> None:
    before = _jobs(api)
    with api.client() as client:
        answer = client.post("/processes/hello/execution", content=b"{" + b" " * 10_000_000 + b"}",
                             headers={"Content-Type": "application/json"})
        chunked = client.post("/processes/hello/execution", content=iter([b" " * 1_000_000] * 10),
                              headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "InvalidParameterValue"
    assert chunked.status_code == 413
    assert _jobs(api) == before
