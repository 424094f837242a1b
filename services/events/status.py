"""The event service's status page: recent events, jobs, dead letters, schedules and next fire times.

Served by the service itself (standard library HTTP server, a thread) on
``events_status_host:events_status_port`` under ``events_status_prefix`` — ``/services/events``
when JupyterHub runs it as a service (the hub's proxy routes there; the hub sets
``JUPYTERHUB_SERVICE_URL``).  ``<prefix>/`` is the HTML page, ``<prefix>/status.json`` the same as
JSON (what ``opencdms events status`` reads).  Read-only; it shows no secrets and no payloads
beyond the dead letters' reasons.

Under JupyterHub (``JUPYTERHUB_API_TOKEN`` set) the page answers only a hub token with access to
this service (``access:services!service=events``, which the hub's roles grant), sent as
``Authorization: token …`` or ``?token=…``; anything else gets a 401 or 403.  (A browser's hub
login through OAuth is not implemented here: a person opens the page with ``?token=``.)  Run
outside a hub, the page is for this machine: it listens on 127.0.0.1 by default.
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs

from opencdms_kernel.errors import ServiceError

log = logging.getLogger(__name__)


def render_page(status: dict[str, Any]) -> str:
    """The status as one self-contained HTML page (no outside assets)."""
    def cell(value: Any) -> str:
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
        return html.escape("" if value is None else str(value))

    def table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> str:
        head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
        body = "".join("<tr>" + "".join(f"<td>{cell(row.get(column))}</td>" for column in columns) + "</tr>"
                       for row in rows) or f"<tr><td colspan='{len(columns)}'>none</td></tr>"
        return f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>"

    broker = status.get("broker", {})
    counters = status.get("counters", {})
    summary = [
        {"what": "client id", "value": status.get("client_id")},
        {"what": "broker", "value": f"{broker.get('url')} (MQTT {broker.get('protocol')}, "
                                     f"{'connected' if broker.get('connected') else 'NOT connected'}"
                                     f"{', shared subscriptions' if broker.get('shared_subscriptions') else ''})"},
        {"what": "last broker error", "value": broker.get("last_error")},
        {"what": "API", "value": status.get("api")},
        {"what": "started", "value": status.get("started")},
        {"what": "jobs followed", "value": status.get("following")},
        *({"what": name.replace("_", " "), "value": value} for name, value in counters.items()),
    ]
    sweep = status.get("last_sweep")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>OpenCDMS event service</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:90%;text-align:left;vertical-align:top}</style>",
        "</head><body><h1>OpenCDMS event service</h1>",
        table("Service", summary, ["what", "value"]),
        table("Schedules", status.get("schedules", []), ["name", "process", "cron", "timezone", "next", "last_fired"]),
        table("Last sweep", [sweep] if sweep else [], ["started", "listed", "routed", "done_in_ledger", "submitted",
                                                       "ledger_available", "seconds"]),
        table("Recent jobs", status.get("recent_jobs", []), ["updated", "id", "process", "status", "origin", "message"]),
        table("Dead letters", status.get("dead_letters", []), ["time", "reason", "topic", "record"]),
        table("Recent events", status.get("recent_events", []), ["time", "type", "process", "job", "key", "reason"]),
        "</body></html>",
    ]
    return "".join(parts)



class StatusPageError(ServiceError):
    """The status page could not start (its port taken)."""

class HubAccess:
    """Who may read the page under JupyterHub: a hub token holding access to this service."""

    def __init__(self) -> None:
        from jupyterhub.services.auth import HubAuth

        # HubAuth reads JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL and JUPYTERHUB_SERVICE_NAME.
        self.auth = HubAuth(cache_max_age=60)

    @classmethod
    def from_environment(cls) -> "HubAccess | None":
        """The check when the hub runs this service, else None (no hub: no check)."""
        return cls() if os.environ.get("JUPYTERHUB_API_TOKEN") else None

    def verdict(self, authorization: str | None, query: str) -> int:
        """200 when the request may read the page, else 401 (no valid token) or 403 (no access)."""
        token = None
        if authorization and authorization.lower().startswith(("token ", "bearer ")):
            token = authorization.split(None, 1)[1].strip()
        if not token:
            token = (parse_qs(query).get("token") or [None])[0]
        if not token:
            return 401
        model = self.auth.user_for_token(token, sync=True)
        if not model:
            return 401
        return 200 if self.auth.check_scopes(self.auth.access_scopes, model) else 403


class StatusServer:
    """The status page in a thread; ``status()`` gives the document to show."""

    def __init__(self, status: Callable[[], dict[str, Any]], host: str, port: int, prefix: str = "",
                 access: HubAccess | None = None) -> None:
        self.prefix = prefix.rstrip("/")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the standard library's name
                path, _, query = self.path.partition("?")
                if access is not None:
                    verdict = access.verdict(self.headers.get("Authorization"), query)
                    if verdict != 200:
                        reason = (b"a JupyterHub token is needed (Authorization: token ..., or ?token=...)"
                                  if verdict == 401 else b"this token has no access to the event service")
                        self._answer(verdict, "text/plain; charset=utf-8", reason)
                        return
                if path in (f"{owner.prefix}/status.json", f"{owner.prefix}/api/status"):
                    self._answer(200, "application/json", json.dumps(status(), default=str).encode())
                elif path in (f"{owner.prefix}/", owner.prefix or "/"):
                    self._answer(200, "text/html; charset=utf-8", render_page(status()).encode())
                else:
                    self._answer(404, "text/plain; charset=utf-8", b"not found")

            def _answer(self, code: int, media_type: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the standard library's name
                log.debug("status page: " + format, *args)

        try:
            self.server = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise StatusPageError(
                f"the event service's status page cannot listen on {host}:{port} ({exc.strerror}); "
                "set OPENCDMS_EVENTS_STATUS_PORT (0: any free port)"
            ) from exc
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="events-status", daemon=True)

    @property
    def url(self) -> str:
        """Where the page answers."""
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{self.prefix}/"

    def start(self) -> "StatusServer":
        """Serve in the background."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()
