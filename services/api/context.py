"""The request a plugin is answering, for the few things pygeoapi does not hand to plugins.

pygeoapi calls a provider's ``query`` and the manager's ``execute_process`` with parsed
arguments only; the EDR ``qc-status`` filter, the ``Idempotency-Key`` header and the caller's
identity are not among them.  pygeoapi runs each API call in one worker thread, so the routes of
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
    """Who is asking: a user name (``anonymous`` without one) and the scopes they hold."""

    name: str
    scopes: frozenset[str] = frozenset()
    admin: bool = False


ANONYMOUS = Caller("anonymous")


def with_request(api_function: Callable[..., Any], caller: Caller = ANONYMOUS) -> Callable[..., Any]:
    """``api_function`` (pygeoapi's ``(api, request, *args)``) with its request visible to plugins."""

    @wraps(api_function)
    def call(api: Any, request: Any, *args: Any) -> Any:
        _local.request = request
        _local.caller = caller
        try:
            return api_function(api, request, *args)
        finally:
            _local.request = None
            _local.caller = None

    return call


def current_request() -> Any | None:
    """pygeoapi's ``APIRequest`` of the call this thread is answering, or None."""
    return getattr(_local, "request", None)


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
