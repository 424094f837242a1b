"""The event service's only door to the data: the OGC API (processes, jobs, the ingest ledger).

Every run is ``POST /processes/{id}/execution`` with ``Prefer: respond-async`` and an
``Idempotency-Key``; the API records one job per key and answers it again for a repeated key.
Failures are sorted for the service's loop: the API away, a 5xx, 401/403 (a token to fix) or
429 are :class:`~services.events.errors.ApiUnavailableError` (retry, do not acknowledge); any
other refusal is a :class:`~services.events.errors.RequestRefusedError` (a dead letter).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable

import httpx

from opencdms_kernel.settings import Settings
from services.events.errors import ApiUnavailableError, IdempotencyConflictError, RequestRefusedError

log = logging.getLogger(__name__)

LEDGER_COLLECTION = "ingest-ledger"
LEDGER_BATCH = 40  # keys per ledger request (the CQL filter travels in the URL)
FINISHED = frozenset({"successful", "failed", "dismissed"})


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


def api_url(settings: Settings) -> str:
    """The API's base URL: ``events_api_url``, else the API's own (``api_*`` settings)."""
    if settings.events_api_url:
        return settings.events_api_url.rstrip("/")
    from services.api.config import base_url

    return base_url(settings)


class ApiClient:
    """A small, thread-safe client of the API (one connection pool)."""

    def __init__(self, base: str, token: str | None = None, *, timeout: float = 30.0) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"token {token}"
        self.base = base.rstrip("/")
        self._http = httpx.Client(base_url=self.base, headers=headers, timeout=timeout,
                                  limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))

    @classmethod
    def from_settings(cls, settings: Settings, token: str | None = None) -> "ApiClient":
        """The client of the configured API with the service's token."""
        secret = token or (settings.events_api_token.get_secret_value() if settings.events_api_token else None)
        return cls(api_url(settings), secret)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    # ----------------------------------------------------------------- requests

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiUnavailableError(f"the API at {self.base} did not answer ({type(exc).__name__}: {exc})") from exc
        status = response.status_code
        if status >= 500 or status in (401, 403, 408, 429):
            raise ApiUnavailableError(f"the API answered {status} to {method} {path}: {_description(response)}")
        return response

    def execute(self, process: str, inputs: dict[str, Any], idempotency_key: str) -> AcceptedJob:
        """Ask for one asynchronous run; the job the API recorded (or already had under the key)."""
        response = self._request(
            "POST", f"/processes/{process}/execution", json={"inputs": inputs},
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

    def jobs(self, limit: int = 500) -> list[dict[str, Any]]:
        """The latest jobs, newest first (``/jobs``)."""
        response = self._request("GET", "/jobs", params={"f": "json", "limit": limit})
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


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ApiUnavailableError(f"the API answered {response.status_code} with a body that is not JSON") from exc


def _description(response: httpx.Response) -> str:
    """The OGC exception's description (or the start of the body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict) and body.get("description"):
        return str(body["description"])[:500]
    return str(body)[:300]
