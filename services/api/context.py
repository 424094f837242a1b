"""The request a plugin is answering, for the few things pygeoapi does not hand to plugins.

pygeoapi calls a provider's ``query`` and the manager's ``execute_process`` with parsed
arguments only; the EDR ``qc-status`` filter, the ``Idempotency-Key`` header and the caller's
identity are not among them (and a provider cannot hand over an answer it has serialised
already: :func:`offer_body`).  pygeoapi runs each API call in one worker thread, so the routes of
:mod:`services.api.app` that need them wrap the API function with :func:`with_request`, which
keeps pygeoapi's ``APIRequest`` in a thread-local for exactly the length of that call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import wraps
from typing import Any, Callable

_local = threading.local()


@dataclass(frozen=True)
class Caller:
    """Who is asking: a hub user or service name (``anonymous`` without one), the scopes the
    token holds (:mod:`services.api.auth`), and whether the hub says it is an administrator."""

    name: str
    scopes: frozenset[str] = frozenset()
    admin: bool = False
    kind: str = "user"  # or "service" (e.g. the event service's own token)


ANONYMOUS = Caller("anonymous", kind="anonymous")


def with_request(api_function: Callable[..., Any], caller: Caller = ANONYMOUS,
                 method: str | None = None) -> Callable[..., Any]:
    """``api_function`` (pygeoapi's ``(api, request, *args)``) with its request visible to
    plugins, the caller the auth layer identified, and the HTTP method (pygeoapi's update
    action serves both PUT and PATCH)."""

    @wraps(api_function)
    def call(api: Any, request: Any, *args: Any) -> Any:
        _local.request = request
        _local.caller = caller
        _local.method = method
        _local.body = None
        try:
            answer = api_function(api, request, *args)
            body = _local.body
            if body is None:
                return answer
            headers, status, _ = answer
            # Only the answer pygeoapi serialised itself may be replaced: a 200 in the content
            # type the body was made for (a formatter or an HTML page never gets here).
            if status != 200 or headers.get("Content-Type") != body.content_type:
                raise RuntimeError(f"a prepared {body.content_type} body, but pygeoapi answered "
                                   f"{status} {headers.get('Content-Type')}")
            return headers, status, body.content
        finally:
            _local.request = None
            _local.caller = None
            _local.method = None
            _local.body = None

    return call


@dataclass(frozen=True)
class PreparedBody:
    """An answer a plugin serialised itself, sent instead of pygeoapi's serialisation of it."""

    content: bytes
    content_type: str


def offer_body(content: bytes, content_type: str = "application/vnd.cov+json") -> bool:
    """Offer ``content`` as the answer of the current call.

    pygeoapi serialises what a provider returns with ``json.dumps``; for a large coverage that
    costs more than reading it.  A provider that has the JSON already offers it here and returns
    a small stand-in; the route (:func:`with_request`) sends the offered bytes.  False when no
    route of ours is answering (pygeoapi called the provider elsewhere): then return the document.
    """
    if current_request() is None:
        return False
    _local.body = PreparedBody(content, content_type)
    return True


def current_request() -> Any | None:
    """pygeoapi's ``APIRequest`` of the call this thread is answering, or None."""
    return getattr(_local, "request", None)


def current_method() -> str | None:
    """The HTTP method of the request this thread is answering (None outside our routes)."""
    return getattr(_local, "method", None)


def current_caller() -> Caller:
    """Who made the request this thread is answering."""
    return getattr(_local, "caller", None) or ANONYMOUS


def request_header(name: str) -> str | None:
    """A header of the current request (case-insensitive), or None."""
    request = current_request()
    if request is None:
        return None
    headers = request.headers
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    return value


def request_parameter(name: str) -> str | None:
    """A query parameter of the current request, or None."""
    request = current_request()
    if request is None:
        return None
    return request.params.get(name)
