"""The event service's only door to the data: the OGC API (processes, jobs, the ingest ledger).

Every run is ``POST /processes/{id}/execution`` with ``Prefer: respond-async`` and an
``Idempotency-Key``; the API records one job per key and answers it again for a repeated key.
Failures are sorted for the service's loop: the API away, a 5xx, 401/403 (a token to fix) or
429 are :class:`~services.events.errors.ApiUnavailableError` (retry, do not acknowledge); any
other refusal is a :class:`~services.events.errors.RequestRefusedError` (a dead letter).

The client speaks HTTP/1.1 through the standard library's ``http.client`` over keep-alive
connections it keeps for the next request: every routed message is one request, and httpx cost
the service four times the processor time per request (0.4 ms against 0.1 ms on this project's
2-core test machine), more than routing the message itself.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Any, Iterable, Mapping
from urllib.parse import quote, urlencode, urlsplit

from opencdms_kernel.settings import Settings
from services.events.errors import ApiUnavailableError, IdempotencyConflictError, RequestRefusedError

log = logging.getLogger(__name__)

LEDGER_COLLECTION = "ingest-ledger"
LEDGER_BATCH = 40  # keys per ledger request (the CQL filter travels in the URL)
FINISHED = frozenset({"successful", "failed", "dismissed"})
MAX_IDLE_CONNECTIONS = 16
# A kept connection unused this long is closed rather than reused: uvicorn closes idle
# keep-alive connections after 5 s, and a request on one it closed fails (then is sent again).
IDLE_SECONDS = 4.0
# What a request on a kept connection the server has closed meanwhile fails with.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, ConnectionAbortedError, BrokenPipeError)


@dataclass(frozen=True)
class AcceptedJob:
    """A job the API accepted (or already had under the idempotency key)."""

    id: str
    status: str
    url: str


@dataclass(frozen=True)
class LedgerEntry:
    """One ingest ledger entry as the API serves it."""

    id: int
    object_key: str
    size_bytes: int
    status: str
    started_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class ApiResponse:
    """One answer of the API: status, headers (case-insensitive ``get``) and body."""

    status_code: int
    reason_phrase: str
    headers: Message
    content: bytes

    @property
    def text(self) -> str:
        """The body as text (UTF-8; what cannot be decoded is replaced)."""
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.content)


def api_url(settings: Settings) -> str:
    """The API's base URL: ``events_api_url``, else the API's own (``api_*`` settings)."""
    if settings.events_api_url:
        return settings.events_api_url.rstrip("/")
    from services.api.config import base_url

    return base_url(settings)


class ApiClient:
    """A small, thread-safe client of the API: each request takes a kept connection (or opens
    one), and gives it back for the next request when the answer leaves it open."""

    def __init__(self, base: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        self.base = base.rstrip("/")
        parts = urlsplit(self.base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"the API URL must be http:// or https://, not {base[:80]!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path
        self._timeout = timeout
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"token {token}"
        self._ssl = ssl.create_default_context() if self._https else None
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []  # (given back at, connection)
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, token: str | None = None) -> "ApiClient":
        """The client of the configured API with the service's token."""
        secret = token or (settings.events_api_token.get_secret_value() if settings.events_api_token else None)
        return cls(api_url(settings), secret)

    def close(self) -> None:
        """Close the kept connections (a request after this opens a new one and does not keep it)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for _, connection in idle:
            connection.close()

    # ----------------------------------------------------------------- connections

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """A kept connection (True) or a new one (False)."""
        now = time.monotonic()
        stale: list[http.client.HTTPConnection] = []
        found = None
        with self._lock:
            while self._idle:
                since, connection = self._idle.pop()
                if now - since < IDLE_SECONDS:
                    found = connection
                    break
                stale.append(connection)
        for connection in stale:
            connection.close()
        if found is not None:
            return found, True
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout, context=self._ssl), False
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout), False

    def _give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append((time.monotonic(), connection))
                return
        connection.close()

    # ----------------------------------------------------------------- requests

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json_body: Any = None, headers: Mapping[str, str] | None = None) -> ApiResponse:
        target = self._prefix + path + (f"?{urlencode(params, quote_via=quote)}" if params else "")
        body = json.dumps(json_body).encode("utf-8") if json_body is not None else None
        sent = {**self._headers, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        while True:
            connection, kept = self._connection()
            try:
                connection.request(method, target, body=body, headers=sent)
                answer = connection.getresponse()
                content = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if kept and isinstance(exc, _STALE):
                    # The server closed a kept connection meanwhile: send again on a new one
                    # (safe: reads, and runs with an idempotency key).
                    continue
                raise ApiUnavailableError(
                    f"the API at {self.base} did not answer ({type(exc).__name__}: {exc})") from exc
            break
        if answer.will_close:
            connection.close()
        else:
            self._give_back(connection)
        response = ApiResponse(answer.status, answer.reason, answer.headers, content)
        status = response.status_code
        if status >= 500 or status in (401, 403, 408, 429):
            raise ApiUnavailableError(f"the API answered {status} to {method} {path}: {_description(response)}")
        return response

    def execute(self, process: str, inputs: dict[str, Any], idempotency_key: str) -> AcceptedJob:
        """Ask for one asynchronous run; the job the API recorded (or already had under the key)."""
        response = self._request(
            "POST", f"/processes/{process}/execution", json_body={"inputs": inputs},
            headers={"Prefer": "respond-async", "Idempotency-Key": idempotency_key},
        )
        if response.status_code == 409:
            raise IdempotencyConflictError(409, _description(response))
        if response.status_code not in (200, 201):
            raise RequestRefusedError(response.status_code, _description(response))
        location = response.headers.get("location", "")
        job_id = location.rstrip("/").rsplit("/", 1)[-1]
        body = _json(response)
        status = str(body.get("status", "accepted")) if isinstance(body, dict) else "accepted"
        if not job_id:
            raise ApiUnavailableError(f"the API accepted a run of {process} but sent no Location header")
        return AcceptedJob(id=job_id, status=status, url=location)

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's status document (``/jobs/{id}``)."""
        response = self._request("GET", f"/jobs/{job_id}", params={"f": "json"})
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return _json(response)

    def job_results(self, job_id: str) -> dict[str, Any]:
        """A successful job's results (the run record: links to the notebook and each output)."""
        response = self._request("GET", f"/jobs/{job_id}/results", params={"f": "json"})
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return _json(response)

    def jobs(self, limit: int = 500, offset: int = 0) -> list[dict[str, Any]]:
        """The latest jobs, newest first (``/jobs``), from the ``offset``-th on."""
        params: dict[str, Any] = {"f": "json", "limit": limit}
        if offset:
            params["offset"] = offset
        response = self._request("GET", "/jobs", params=params)
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return list(_json(response).get("jobs", []))

    def process_inputs(self, process: str) -> set[str]:
        """The input (parameter) names of one process."""
        response = self._request("GET", f"/processes/{process}", params={"f": "json"})
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return set((_json(response).get("inputs") or {}).keys())

    def processes(self) -> set[str]:
        """The ids of the processes the API offers."""
        response = self._request("GET", "/processes", params={"f": "json", "limit": 1000})
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return {entry["id"] for entry in _json(response).get("processes", []) if "id" in entry}

    # ----------------------------------------------------------------- ingest ledger

    def ledger_entries(self, keys: Iterable[str]) -> list[LedgerEntry] | None:
        """The ledger entries of these object keys; None when the API has no ledger collection."""
        wanted = sorted(set(keys))
        entries: list[LedgerEntry] = []
        plain = [key for key in wanted if "'" not in key]
        quoted = [key for key in wanted if "'" in key]  # CQL2 text (pygeofilter) cannot escape a quote
        for start in range(0, len(plain), LEDGER_BATCH):
            batch = plain[start:start + LEDGER_BATCH]
            found = self._ledger_query({"filter": "object_key IN (" + ",".join(f"'{key}'" for key in batch) + ")",
                                        "filter-lang": "cql2-text"})
            if found is None:
                return None
            entries += found
        for key in quoted:
            found = self._ledger_query({"object_key": key})
            if found is None:
                return None
            entries += found
        return entries

    def _ledger_query(self, params: dict[str, str]) -> list[LedgerEntry] | None:
        entries: list[LedgerEntry] = []
        offset = 0
        while True:
            response = self._request("GET", f"/collections/{LEDGER_COLLECTION}/items",
                                     params={**params, "f": "json", "limit": 1000, "offset": offset})
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise RequestRefusedError(response.status_code, _description(response))
            page = _json(response)
            features = page.get("features", [])
            for feature in features:
                properties = feature.get("properties", {})
                entries.append(LedgerEntry(
                    id=int(feature["id"]), object_key=properties["object_key"],
                    size_bytes=int(properties["size_bytes"]), status=properties["status"],
                    started_at=properties.get("started_at"), finished_at=properties.get("finished_at")))
            offset += len(features)
            if not features or offset >= int(page.get("numberMatched", offset)):
                return entries

    def ledger_entry(self, ledger_id: int) -> dict[str, Any] | None:
        """One ledger entry with what its load delivered (``loaded``); None when there is no such entry."""
        response = self._request("GET", f"/collections/{LEDGER_COLLECTION}/items/{ledger_id}", params={"f": "json"})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise RequestRefusedError(response.status_code, _description(response))
        return _json(response).get("properties", {})


def _json(response: ApiResponse) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ApiUnavailableError(f"the API answered {response.status_code} with a body that is not JSON") from exc


def _description(response: ApiResponse) -> str:
    """The OGC exception's description (or the start of the body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and body.get("description"):
        return str(body["description"])[:500]
    return str(body)[:300]
