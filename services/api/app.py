"""The ASGI application: pygeoapi's Starlette app behind a thin layer of ours.

pygeoapi's Starlette module configures itself from ``PYGEOAPI_CONFIG`` / ``PYGEOAPI_OPENAPI`` when
it is imported, so :func:`create_app` generates the configuration (only rewriting it when it
changed), makes sure the OpenAPI document exists for its digest, sets the two variables, and
only then imports it.  Our layer, in front of it:

- refuses a body larger than ``api_max_body_bytes`` (413, OGC exception body) before anything reads it;
- checks the query parameters every collection shares (``datetime``, ``limit``, ``offset``,
  ``bbox``) strictly, so garbage is a 400 naming the parameter and never reaches a date parser
  that could overflow;
- answers anything unexpected with an OGC exception body (500, logged with its traceback) and
  the kernel's errors with their own status and code (:mod:`services.api.errors`);
- serves local copies of the scripts and styles pygeoapi's HTML pages would load from CDNs
  (``/vendor/…``, npm packages installed by the Makefile) and rewrites those pages' CDN URLs to
  them, so the pages work offline;
- CORS only for the configured origins and only for reading (never ``*``, never writes);
- checks who is asking (:mod:`services.api.auth`: JupyterHub tokens and its OAuth cookie) before
  anything else: 401 without an identity, 403 without the scope, a browser sent to the hub's
  login; the caller reaches the plugins through :mod:`services.api.context`.

The EDR query routes of our collections and the execution route are answered through
pygeoapi's own API functions, wrapped so our plugins can read the request
(:mod:`services.api.context`).
"""

from __future__ import annotations

import logging
import math
import os
import re
from typing import Any
from urllib.parse import parse_qsl

from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings
from services.api import config as api_config
from services.api.auth import CALLER_KEY, ApiAuth, AuthenticationRequired
from services.api.context import ANONYMOUS, Caller
from services.api.errors import ApiParameterError, BodyTooLargeError, exception_body
from services.api.providers.common import parse_datetime

log = logging.getLogger(__name__)

# pygeoapi's templates load these from CDNs; each maps to a file of an npm package under vendor/.
CDN_PREFIXES: tuple[tuple[str, str], ...] = (
    ("https://unpkg.com/leaflet@1.3.1/dist/", "leaflet/dist/"),
    ("https://cdnjs.cloudflare.com/ajax/libs/leaflet/1.3.1/", "leaflet/dist/"),
    ("https://unpkg.com/leaflet.markercluster/dist/", "leaflet.markercluster/dist/"),
    ("https://unpkg.com/leaflet-coverage@0.7/", "leaflet-coverage/"),
    ("https://unpkg.com/covutils@0.6/", "covutils/"),
    ("https://unpkg.com/covjson-reader@0.16/", "covjson-reader/"),
    ("https://cdn.jsdelivr.net/npm/d3@5.16.0/", "d3/"),
    ("https://cdn.jsdelivr.net/npm/c3@0.7.20/", "c3/"),
    ("https://unpkg.com/swagger-ui-dist/", "swagger-ui-dist/"),
    ("https://unpkg.com/leaflet-draw@1.0.4/", "leaflet-draw/"),
    ("https://unpkg.com/bootstrap@5.1.3/", "bootstrap/"),
)
# Any other script or style from a CDN (pages of features we do not serve: vector tiles, maps,
# AsyncAPI, ReDoc, IE shims) points at a local path that does not exist, never at the network.
_OTHER_CDN = re.compile(r"https://(?:unpkg\.com|cdn\.jsdelivr\.net|cdnjs\.cloudflare\.com)/[^\"'\s)]*")
# A 1×1 light grey PNG: the base map offline.
BLANK_TILE = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415408d763"
    "f8fbf7ef3f0005fc02fe1a5f1f2e0000000049454e44ae426082"
)
_SHARED_NUMBERS = ("limit", "offset")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def rewrite_cdn_urls(html: str, vendor_url: str) -> str:
    """``html`` with every CDN script and style URL pointing at ``vendor_url`` instead."""
    for cdn, local in CDN_PREFIXES:
        html = html.replace(cdn, f"{vendor_url}/{local}")
    return _OTHER_CDN.sub(f"{vendor_url}/_not-available-offline", html)


def check_shared_parameters(query_string: bytes) -> None:
    """The parameters every collection shares, checked strictly (ApiParameterError)."""
    try:
        pairs = parse_qsl(query_string.decode("utf-8", errors="strict"), keep_blank_values=True)
    except UnicodeDecodeError as exc:
        raise ApiParameterError("query", "the query string is not UTF-8") from exc
    for name, value in pairs:
        if _CONTROL.search(name) or _CONTROL.search(value):
            raise ApiParameterError(name[:40] if not _CONTROL.search(name) else "query",
                                    "control characters are not allowed")
        if name == "datetime":
            parse_datetime(value)
        elif name in _SHARED_NUMBERS:
            if not re.fullmatch(r"-?\d{1,12}", value.strip()):
                raise ApiParameterError(name, f"{value[:20]!r} is not an integer")
            number = int(value)
            if name == "limit" and number < 1:
                raise ApiParameterError(name, "must be at least 1")
            if name == "offset" and not 0 <= number <= 10**9:
                raise ApiParameterError(name, "must be between 0 and 1000000000")
        elif name == "bbox":
            parts = value.split(",")
            try:
                numbers = [float(part) for part in parts]
            except ValueError as exc:
                raise ApiParameterError(name, "four (or six) comma-separated numbers") from exc
            if len(numbers) not in (4, 6) or not all(math.isfinite(n) for n in numbers):
                raise ApiParameterError(name, "four (or six) comma-separated finite numbers")


class OpenCDMSLayer:
    """ASGI middleware: body limit, who is asking, shared parameter checks, errors, offline
    pages, CORS."""

    def __init__(self, app: Any, settings: Settings, vendor_url: str, auth: ApiAuth) -> None:
        self.app = app
        self.max_body = settings.api_max_body_bytes
        self.cors_origins = frozenset(settings.api_cors_origins)
        self.vendor_url = vendor_url
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body):
                raise BodyTooLargeError(f"the request body is larger than {self.max_body} bytes")
            try:
                caller = await self.auth.authorize(scope["method"], scope.get("path", ""), headers)
            except AuthenticationRequired:
                if self.auth.hub is not None and wants_html(scope, headers):
                    await self._to_login(scope, send)
                    return
                raise
            scope.setdefault("state", {})[CALLER_KEY] = caller
            check_shared_parameters(scope.get("query_string", b""))
            if _CONTROL.search(scope.get("path", "")):
                raise ApiParameterError("path", "control characters are not allowed")
            origin = headers.get("origin")
            send_final = self._sender(send_tracked, scope, origin)
            await self.app(scope, self._limited(receive), send_final)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors become a 500 body (logged)
            if started:
                log.error("error after the response started", exc_info=exc)
                raise
            status, body = exception_body(exc)
            extra = [(b"www-authenticate", b'Bearer realm="opencdms-api"')] if status == 401 else []
            await _send_body(send, status, body, "application/json", extra)

    async def _to_login(self, scope: dict[str, Any], send: Any) -> None:
        """Send a browser to the hub's login, to come back to the page it asked for."""
        query = scope.get("query_string", b"").decode("latin-1")
        location, cookies = self.auth.hub.login_redirect(  # type: ignore[union-attr]
            scope.get("path", "") + (f"?{query}" if query else ""))
        headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"),
                   *((name.encode("latin-1"), value.encode("latin-1")) for name, value in cookies)]
        await send({"type": "http.response.start", "status": 302, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    def _limited(self, receive: Any) -> Any:
        """``receive`` that refuses a (chunked) body beyond the limit as it arrives."""
        seen = 0

        async def receive_limited() -> dict[str, Any]:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLargeError(f"the request body is larger than {self.max_body} bytes")
            return message

        return receive_limited

    def _sender(self, send: Any, scope: dict[str, Any], origin: str | None) -> Any:
        """``send`` that rewrites HTML pages' CDN URLs and adds CORS headers for allowed origins."""
        state: dict[str, Any] = {"html": False, "start": None, "chunks": []}
        allow_cors = origin is not None and origin in self.cors_origins and scope["method"] in ("GET", "HEAD")

        async def send_wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])]
                if allow_cors:
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))  # type: ignore[union-attr]
                    headers.append((b"vary", b"Origin"))
                content_type = dict((k.lower(), v) for k, v in headers).get(b"content-type", b"")
                if content_type.startswith(b"text/html"):
                    state["html"] = True
                    state["start"] = {**message, "headers": headers}
                    return
                await send({**message, "headers": headers})
                return
            if message["type"] == "http.response.body" and state["html"]:
                state["chunks"].append(message.get("body", b""))
                if message.get("more_body"):
                    return
                body = rewrite_cdn_urls(b"".join(state["chunks"]).decode("utf-8", errors="replace"),
                                        self.vendor_url).encode("utf-8")
                start = state["start"]
                headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        return send_wrapped


async def _send_body(send: Any, status: int, body: bytes, content_type: str,
                     extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def wants_html(scope: dict[str, Any], headers: dict[str, str]) -> bool:
    """Whether a request is a browser's asking for a page (``f=html``, or HTML accepted and no ``f``)."""
    if scope.get("method") not in ("GET", "HEAD"):
        return False
    pairs = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
    if "f" in pairs:
        return pairs["f"] == "html"
    return "text/html" in headers.get("accept", "")


def caller_of(request: Any) -> Caller:
    """The caller the layer identified for a Starlette request."""
    return request.scope.get("state", {}).get(CALLER_KEY, ANONYMOUS)


def prepare(settings: Settings) -> api_config.ApiFiles:
    """Generate the configuration (if changed) and the OpenAPI document (if its digest is new)."""
    from services.api.runtime import install_runtime

    current = install_runtime(settings)
    config_path, _ = api_config.write_config(settings, current.datastore)
    return api_config.ensure_openapi(config_path)


def create_app(settings: Settings | None = None) -> Any:
    """The API as an ASGI application (``uvicorn --factory services.api.app:create_app``)."""
    settings = settings if settings is not None else Settings()
    files = prepare(settings)
    os.environ["PYGEOAPI_CONFIG"] = str(files.config)
    os.environ["PYGEOAPI_OPENAPI"] = str(files.openapi)

    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    import pygeoapi.starlette_app as pygeoapi_app
    from pygeoapi.api import environmental_data_retrieval as edr_api
    from pygeoapi.api import itemtypes as itemtypes_api
    from pygeoapi.api import processes as processes_api
    from starlette.responses import RedirectResponse

    from services.api.context import with_request

    prefix = settings.api_prefix
    vendor_url = f"{api_config.base_url(settings)}/vendor"
    auth = ApiAuth.from_settings(settings)
    if auth.hub is None:
        log.warning("no JupyterHub configured (JUPYTERHUB_API_TOKEN unset): serving the open reads only; "
                    "executions, jobs and transactions are refused")

    async def edr_query(request: Any) -> Any:
        collection_id = request.path_params["collection_id"]
        location_id = request.path_params.get("location_id")
        query_type = "locations" if location_id is not None else request.url.path.rstrip("/").split("/")[-1]
        return await pygeoapi_app.execute_from_starlette(
            with_request(edr_api.get_collection_edr_query, caller_of(request)), request, collection_id, None,
            query_type, location_id, skip_valid_check=True,
        )

    async def execution(request: Any) -> Any:
        return await pygeoapi_app.execute_from_starlette(
            with_request(processes_api.execute_process, caller_of(request)), request,
            request.path_params["process_id"],
        )

    async def items_post(request: Any) -> Any:
        # pygeoapi: a GeoJSON body adds an item (Features Part 4), anything else is a search
        # (CQL2 JSON).  Its own route needs exactly application/geo+json; any parameters allowed here.
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/geo+json":
            return await pygeoapi_app.collection_items(request)
        return await pygeoapi_app.execute_from_starlette(
            with_request(itemtypes_api.manage_collection_item, caller_of(request), "POST"), request, "create",
            request.path_params["collection_id"], skip_valid_check=True)

    async def item_change(request: Any) -> Any:
        # PUT replaces, PATCH updates (pygeoapi has one 'update' action; the provider reads the
        # method), DELETE closes (what that means is the provider's: nothing is deleted).
        action = "delete" if request.method == "DELETE" else "update"
        return await pygeoapi_app.execute_from_starlette(
            with_request(itemtypes_api.manage_collection_item, caller_of(request), request.method), request, action,
            request.path_params["collection_id"], request.path_params["item_id"], skip_valid_check=True)

    async def oauth_callback(request: Any) -> Response:
        if auth.hub is None:
            raise AuthenticationRequired("this API runs without a hub: there is no login")
        next_url, cookies = await auth.hub.finish_login(
            {key.lower(): value for key, value in request.headers.items()},
            request.query_params.get("state", ""), request.query_params.get("code", ""))
        response = RedirectResponse(next_url, status_code=302)
        for _, value in cookies:
            response.headers.append("set-cookie", value)
        return response

    def delete_job(api: Any, api_request: Any, job_id: str) -> tuple[dict[str, str], int, Any]:
        # pygeoapi 0.24 answers a dismissal with no headers at all, which its own Starlette
        # adapter then fails on (KeyError 'Content-Type'): give it the JSON content type.
        headers, status, content = processes_api.delete_job(api, api_request, job_id)
        return {"Content-Type": "application/json", **(headers or {})}, status, content

    async def dismissal(request: Any) -> Any:
        return await pygeoapi_app.execute_from_starlette(
            with_request(delete_job, caller_of(request)), request, request.path_params["job_id"])

    async def job_file(request: Any) -> Response:
        from starlette.concurrency import run_in_threadpool

        from services.api.processes import read_job_file

        body, media_type = await run_in_threadpool(
            read_job_file, request.path_params["job_id"], request.path_params["key"])
        return Response(body, media_type=media_type)

    async def blank_tile(request: Any) -> Response:
        return Response(BLANK_TILE, media_type="image/png", headers={"cache-control": "max-age=86400"})

    routes: list[Any] = [Route(f"{prefix}/vendor/blank-tile.png", blank_tile),
                         Route(f"{prefix}/oauth_callback", oauth_callback)]
    static = api_config.static_folder()
    if static.is_dir():
        routes.append(Mount(f"{prefix}/vendor", StaticFiles(directory=static, follow_symlink=False)))
    else:
        log.warning("no local copies of the HTML pages' scripts at %s (run `make install`)", static)
    collection = "/collections/{collection_id:path}"
    for query in ("position", "radius", "area", "cube", "locations", "trajectory", "corridor"):
        routes.append(Route(f"{prefix}{collection}/{query}", edr_query))
    routes.append(Route(f"{prefix}{collection}/locations/{{location_id}}", edr_query))
    routes.append(Route(f"{prefix}{collection}/items", items_post, methods=["POST"]))
    routes.append(Route(f"{prefix}{collection}/items/{{item_id:path}}", item_change, methods=["PUT", "PATCH", "DELETE"]))
    routes.append(Route(f"{prefix}/processes/{{process_id}}/execution", execution, methods=["POST"]))
    routes.append(Route(f"{prefix}/jobs/{{job_id}}/files/{{key:path}}", job_file))
    routes.append(Route(f"{prefix}/jobs/{{job_id}}", dismissal, methods=["DELETE"]))
    # pygeoapi's own routes have no prefix (its url_prefix API rule is not used): mount them under ours.
    routes.append(Mount(prefix or "/", app=pygeoapi_app.APP))
    async def error_answer(request: Any, exc: Exception) -> Response:
        status, body = exception_body(exc)
        return Response(body, status_code=status, media_type="application/json")

    # Starlette answers an exception inside its routes itself, so the mapping is installed here
    # too (the same function as the outer layer's, for errors raised before routing).
    inner = Starlette(routes=routes, exception_handlers={OpenCDMSError: error_answer, Exception: error_answer})
    inner.router.redirect_slashes = False
    return OpenCDMSLayer(inner, settings, vendor_url, auth)


def static_files_present() -> bool:
    """Whether the local copies of the pages' scripts are installed."""
    return (api_config.static_folder() / "leaflet" / "dist" / "leaflet.js").is_file()

