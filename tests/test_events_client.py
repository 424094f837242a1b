"""The event service's side of the API: its HTTP client (kept connections, a connection the API
closed meanwhile, the API away) and how it follows many jobs (pages of the job list, single
lookups in turn).  A small HTTP server or a stand-in API in this process; no broker."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from api_support import free_port
from opencdms_kernel.bucket import open_bucket
from opencdms_kernel.settings import Settings
from services.events.api_client import ApiClient
from services.events.errors import ApiUnavailableError, RequestRefusedError
from services.events.routes import parse_routes
from services.events.service import JOB_PAGE, JOB_PAGES, SINGLE_JOB_LOOKUPS, EventService, Follow, Run


class _Api(BaseHTTPRequestHandler):
    """Answers runs (201 and a Location) and job lists; closes, unannounced, the connections
    the test asks it to (as an API does with a keep-alive connection idle too long)."""

    protocol_version = "HTTP/1.1"
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, *_: Any) -> None:
        pass  # quiet

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
            if self.server.drop_after:
                self.server.drop_after -= 1
                self.close_connection = True  # without "Connection: close": the client cannot know

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self._answer(201, {"jobID": "j-1", "status": "accepted", "inputs": body["inputs"]},
                     {"Location": f"http://{self.headers['Host']}/api/jobs/j-1"})

    def do_GET(self) -> None:
        self._answer(200, {"jobs": [{"jobID": "j-1", "status": "running"}]})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0
    drop_after = 0

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Api)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []


@pytest.fixture
def api_server() -> Iterator[_Server]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_the_client_keeps_its_connection_and_sends_again_on_one_the_api_closed(api_server: _Server) -> None:
    client = ApiClient(f"http://127.0.0.1:{api_server.server_address[1]}/api", "secret")
    try:
        job = client.execute("ingest_file", {"object_key": "incoming/a.csv"}, "key-1")
        assert (job.id, job.status) == ("j-1", "accepted")
        for _ in range(20):
            assert client.jobs(10)[0]["status"] == "running"
        assert api_server.connections == 1  # one kept connection for all of them

        api_server.drop_after = 1  # the API closes the connection after its next answer
        client.jobs(10)
        again = client.execute("ingest_file", {"object_key": "incoming/a.csv"}, "key-1")
        assert again.id == "j-1" and api_server.connections == 2  # sent again on a new connection
    finally:
        client.close()
    method, path, headers = api_server.requests[0]
    assert (method, path) == ("POST", "/api/processes/ingest_file/execution")
    assert headers["Prefer"] == "respond-async" and headers["Idempotency-Key"] == "key-1"
    assert headers["Authorization"] == "token secret" and headers["Content-Type"] == "application/json"
    assert api_server.requests[1][1] == "/api/jobs?f=json&limit=10"


def test_the_api_away_is_a_transient_failure() -> None:
    client = ApiClient(f"http://127.0.0.1:{free_port()}/api")
    with pytest.raises(ApiUnavailableError, match="did not answer"):
        client.execute("ingest_file", {}, "key")
    client.close()


class _JobList:
    """A stand-in API with ``total`` jobs, newest first, all accepted; it counts what is asked."""

    base = "stand-in"

    def __init__(self, total: int) -> None:
        self.documents = [{"jobID": f"job-{number:05d}", "status": "accepted"} for number in range(total)]
        self.pages: list[int] = []
        self.lookups: list[str] = []

    def jobs(self, limit: int = 500, offset: int = 0) -> list[dict[str, Any]]:
        self.pages.append(offset)
        return self.documents[offset:offset + limit]

    def job(self, job_id: str) -> dict[str, Any]:
        self.lookups.append(job_id)
        found = [document for document in self.documents if document["jobID"] == job_id]
        if not found:
            raise RequestRefusedError(404, "no such job")
        return found[0]


def _service(tmp_path: Path, api: Any) -> EventService:
    settings = Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}")
    return EventService(settings, parse_routes("routes: []\n"), api, open_bucket(settings))


def _follows(ids: list[str]) -> list[Follow]:
    return [Follow(job_id, f"/jobs/{job_id}", Run("touch", {}, f"key-{job_id}", {"kind": "test"})) for job_id in ids]


def test_many_followed_jobs_are_read_from_pages_of_the_job_list_not_one_by_one(tmp_path: Path) -> None:
    api = _JobList(1200)
    service = _service(tmp_path, api)
    follows = _follows([document["jobID"] for document in api.documents])
    service.poll_jobs(follows)
    assert api.pages == [0, JOB_PAGE, 2 * JOB_PAGE] and api.lookups == []
    assert all(follow.last_status == "accepted" for follow in follows)  # each one's status seen


def test_followed_jobs_older_than_the_pages_are_looked_up_in_turn(tmp_path: Path) -> None:
    api = _JobList(JOB_PAGE * JOB_PAGES + 3 * SINGLE_JOB_LOOKUPS)
    service = _service(tmp_path, api)
    old = [document["jobID"] for document in api.documents[JOB_PAGE * JOB_PAGES:]]
    follows = _follows(old)
    for _ in range(3):
        service.poll_jobs(follows)
    # Each round asks for other ones: after three rounds every old job was seen once.
    assert sorted(api.lookups) == sorted(old)
    assert all(follow.last_status == "accepted" for follow in follows)
