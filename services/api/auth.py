"""Who may do what through the API: JupyterHub is the identity provider.

The API runs as a JupyterHub service.  A request carries a hub token (``Authorization: token …``
or ``Bearer …``) or, from a browser, the cookie this service sets after the hub's OAuth login;
either is checked with ``jupyterhub.services.auth.HubOAuth`` (the hub says whose token it is and
which scopes it holds; answers are cached for ``api_auth_cache_seconds``).

What needs a scope (the hub's custom scopes, granted to its roles by ``services/hub/config.py``):

=====================================================  =============================
executing a process (``POST /processes/{id}/execution``)  ``custom:opencdms:execute``
listing, following, reading and dismissing jobs (``/jobs…``)  ``custom:opencdms:jobs``
creating, replacing, updating, closing items (Features Part 4)  ``custom:opencdms:transactions``
reading a collection named in ``api_closed_collections``  ``custom:opencdms:read``
=====================================================  =============================

Everything else (landing page, conformance, OpenAPI, collection metadata, process
descriptions, open collections) is open.  No token or cookie: 401; a valid one without the
scope (or without access to this service): 403; a browser asking for an HTML page is sent to
the hub's login instead of a 401.  Without a hub (``JUPYTERHUB_API_TOKEN`` unset: the API is not
running as a hub service) every request that needs a scope is refused with a 401 saying so,
and the open reads are served.

A cookie authenticates a write, an execution or a dismissal only when the request comes from
this service's own origin (``Origin``/``Referer``), so another site cannot make a logged-in
browser act (CSRF); tokens in a header need no such check.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from dataclasses import dataclass
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from typing import Any, Mapping
from urllib.parse import urlencode, urlsplit

from opencdms_kernel.errors import NO_APPLICABLE_CODE, OpenCDMSError, ServiceError
from opencdms_kernel.settings import Settings
from services.api.context import ANONYMOUS, Caller

log = logging.getLogger(__name__)

SCOPE_READ = "custom:opencdms:read"
SCOPE_EXECUTE = "custom:opencdms:execute"
SCOPE_JOBS = "custom:opencdms:jobs"
SCOPE_TRANSACTIONS = "custom:opencdms:transactions"
# The scopes this API checks (JupyterHub's c.JupyterHub.custom_scopes must define them).
API_SCOPES: dict[str, str] = {
    SCOPE_READ: "Read the collections that are not open to everyone.",
    SCOPE_EXECUTE: "Run processes (notebooks) through the API.",
    SCOPE_JOBS: "List, follow and dismiss jobs through the API.",
    SCOPE_TRANSACTIONS: "Create, replace, update and close stations.",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CALLER_KEY = "opencdms.caller"  # where the layer leaves the caller in the ASGI scope's state
_TOKEN_HEADER = ("token ", "bearer ")
_WRITE_BODY_TYPES = ("application/geo+json", "application/json", "application/merge-patch+json")


class AuthenticationRequired(OpenCDMSError):
    """No (valid) identity, or none can be checked (401)."""

    http_status = 401
    ogc_code = "NotAuthorized"


class PermissionDenied(OpenCDMSError):
    """An identity without the scope the request needs (403)."""

    http_status = 403
    ogc_code = "Forbidden"


class IdentityProviderUnavailable(ServiceError):
    """The hub did not answer while checking a token (503)."""

    ogc_code = NO_APPLICABLE_CODE


@dataclass(frozen=True)
class Need:
    """What a request needs: a scope, and the words that say what for."""

    scope: str
    action: str


def need_of(method: str, path: str, content_type: str, closed: frozenset[str]) -> Need | None:
    """The scope a request needs (None: open to everyone); ``path`` is below the API's prefix."""
    method = method.upper()
    if method == "OPTIONS":
        return None
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["jobs"]:
        return Need(SCOPE_JOBS, "listing, following or dismissing jobs")
    if len(parts) >= 3 and parts[0] == "processes" and parts[-1] == "execution" and method == "POST":
        return Need(SCOPE_EXECUTE, "running a process")
    if parts[:1] == ["collections"] and len(parts) >= 3 and parts[2] == "items":
        if len(parts) >= 4 and method in UNSAFE_METHODS:
            return Need(SCOPE_TRANSACTIONS, "changing items of a collection")
        if len(parts) == 3 and method in ("PUT", "PATCH", "DELETE"):
            return Need(SCOPE_TRANSACTIONS, "changing items of a collection")
        if len(parts) == 3 and method == "POST" and content_type.split(";")[0].strip().lower() == "application/geo+json":
            return Need(SCOPE_TRANSACTIONS, "adding items to a collection")
    if parts[:1] == ["collections"] and len(parts) >= 2 and parts[1] in closed:
        return Need(SCOPE_READ, f"reading the collection {parts[1]}")
    return None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: token …`` or ``Bearer …`` header, if any."""
    value = headers.get("authorization", "").strip()
    lowered = value.lower()
    for prefix in _TOKEN_HEADER:
        if lowered.startswith(prefix) and value[len(prefix):].strip():
            return value[len(prefix):].strip()
    return None


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a browser's request comes from the page's own origin (Origin, else Referer)."""
    host = headers.get("host", "")
    forwarded = headers.get("x-forwarded-host", "")
    origin = headers.get("origin") or headers.get("referer")
    if not origin or origin == "null":
        return False
    netloc = urlsplit(origin).netloc
    return bool(netloc) and netloc in {host, forwarded} - {""}


class HubIdentity:
    """JupyterHub as identity provider: ``HubOAuth`` from the hub's variables, its token
    checks, and the OAuth login that leaves a signed cookie with the user's token."""

    def __init__(self, hub_auth: Any, cookie_secret: bytes, prefix: str, cache_seconds: float = 0) -> None:
        self.hub_auth = hub_auth
        self.cookie_secret = cookie_secret
        self.prefix = prefix
        # Read once: HubOAuth's settings are traitlets, slow to read on every request.
        self.access_scopes = frozenset(hub_auth.access_scopes)
        # The hub's answers, by token digest: (valid until, monotonic; the caller or None).
        # HubOAuth caches them too, but reaching its cache costs more than the rest of a run
        # request's check; 0 leaves caching to HubOAuth alone.
        self.cache_seconds = cache_seconds
        self._answers: dict[str, tuple[float, Caller | None]] = {}

    @classmethod
    def from_environment(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> "HubIdentity | None":
        """The hub the API is a service of, from the variables JupyterHub gives its services
        (``JUPYTERHUB_API_TOKEN``, ``JUPYTERHUB_API_URL``, ``JUPYTERHUB_CLIENT_ID``…); None when
        ``JUPYTERHUB_API_TOKEN`` is not set."""
        environ = os.environ if environ is None else environ
        token = environ.get("JUPYTERHUB_API_TOKEN", "")
        if not token:
            return None
        from jupyterhub.services.auth import HubOAuth

        name = environ.get("JUPYTERHUB_SERVICE_NAME") or settings.api_hub_service
        prefix = settings.api_prefix
        hub_auth = HubOAuth(
            api_token=token,
            api_url=environ.get("JUPYTERHUB_API_URL") or "http://127.0.0.1:8081/hub/api",
            oauth_client_id=environ.get("JUPYTERHUB_CLIENT_ID") or f"service-{name}",
            base_url=environ.get("JUPYTERHUB_SERVICE_PREFIX") or f"{prefix}/",
            access_scopes={f"access:services!service={name}"},
            cache_max_age=settings.api_auth_cache_seconds,
        )
        # The cookie is signed with a key only this service's processes know (from its hub
        # token: it changes when the token does, and every replica of the service agrees on it).
        secret = hmac.new(token.encode(), b"opencdms-api-cookie", hashlib.sha256).digest()
        return cls(hub_auth, secret, prefix, cache_seconds=settings.api_auth_cache_seconds)

    @property
    def cookie_name(self) -> str:
        return str(self.hub_auth.cookie_name)

    def cookie_token(self, headers: Mapping[str, str]) -> str | None:
        """The token in this service's login cookie (signature checked), if any."""
        value = _cookies(headers).get(self.cookie_name)
        if not value:
            return None
        return self._unsign(self.cookie_name, value)

    def _unsign(self, name: str, value: str) -> str | None:
        from tornado.web import decode_signed_value

        decoded = decode_signed_value(self.cookie_secret, name, value, max_age_days=31)
        return decoded.decode("ascii", "replace") if decoded else None

    def _sign(self, name: str, value: str) -> str:
        from tornado.web import create_signed_value

        return create_signed_value(self.cookie_secret, name, value).decode("ascii")

    async def caller(self, token: str) -> Caller | None:
        """Whose token this is and its scopes (None: the hub does not know it); the hub's answer
        is kept for ``cache_seconds`` (a revoked token works that much longer, as with HubOAuth)."""
        from tornado.web import HTTPError

        digest = hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()
        now = time.monotonic()
        known = self._answers.get(digest)
        if known is not None and known[0] > now:
            return known[1]
        try:
            model = await self.hub_auth.user_for_token(token, sync=False)
        except HTTPError as exc:
            log.error("checking a token with the hub failed: %s", exc)
            raise IdentityProviderUnavailable("the identity provider (JupyterHub) did not answer; "
                                              "try again later") from exc
        caller = None
        if model:
            scopes = frozenset(model.get("scopes") or ())
            kind = model.get("kind", "user")
            caller = Caller(name=str(model.get("name")), scopes=scopes, admin=bool(model.get("admin")), kind=kind)
        if self.cache_seconds > 0:
            if len(self._answers) >= _MAX_CACHED_TOKENS:
                self._answers = {key: entry for key, entry in self._answers.items() if entry[0] > now}
                if len(self._answers) >= _MAX_CACHED_TOKENS:
                    self._answers.clear()  # that many live tokens: start again rather than grow
            self._answers[digest] = (now + self.cache_seconds, caller)
        return caller

    def has_access(self, caller: Caller) -> bool:
        """Whether the caller's token may be used with this service at all (its access scope)."""
        return not self.access_scopes or _holds(self.access_scopes, caller.scopes)

    @staticmethod
    def has_scope(caller: Caller, scope: str) -> bool:
        """Whether the caller's token holds ``scope`` (or a scope that includes it)."""
        return _holds(frozenset({scope}), caller.scopes)

    # ---- the OAuth login of a browser

    def login_redirect(self, next_url: str) -> tuple[str, list[tuple[str, str]]]:
        """Where to send a browser to log in, and the cookie keeping the login's state."""
        verifier, challenge, method = self.hub_auth.generate_pkce_code_challenge()
        state = self.hub_auth.generate_state(next_url, code_verifier=verifier)
        location = f"{self.hub_auth.login_url}&{urlencode({'state': state, 'code_challenge': challenge, 'code_challenge_method': method})}"
        cookie = _set_cookie(self.hub_auth.state_cookie_name, self._sign(self.hub_auth.state_cookie_name, state),
                             path=self.hub_auth.cookie_path, max_age=600)
        return location, [("set-cookie", cookie)]

    async def finish_login(self, headers: Mapping[str, str], state: str, code: str) -> tuple[str, list[tuple[str, str]]]:
        """The OAuth callback: check the state, trade the code for a token, set the login cookie.
        Returns where to go next (a page of this service) and the cookies to set."""
        from tornado.web import HTTPError

        name = self.hub_auth.state_cookie_name
        stored = _cookies(headers).get(name)
        if not state or not code or not stored or not secrets.compare_digest(self._unsign(name, stored) or "", state):
            raise AuthenticationRequired("the login could not be completed (its state does not match); "
                                         "open the page again to log in")
        verifier = self.hub_auth.get_code_verifier(state)
        next_url = self.hub_auth.get_next_url(state)
        self.hub_auth.clear_oauth_state(state)
        try:
            token = await self.hub_auth.token_for_code(code, code_verifier=verifier, sync=False)
        except HTTPError as exc:
            log.warning("the hub refused an OAuth code: %s", exc)
            raise AuthenticationRequired("the hub refused the login; open the page again to log in") from exc
        if not next_url.startswith(f"{self.prefix}/") and next_url != self.prefix:
            next_url = f"{self.prefix}/"  # only pages of this service: no open redirect
        cookies = [
            ("set-cookie", _set_cookie(self.cookie_name, self._sign(self.cookie_name, token),
                                       path=self.hub_auth.cookie_path)),
            ("set-cookie", _set_cookie(name, "", path=self.hub_auth.cookie_path, max_age=0)),
        ]
        return next_url, cookies


_MAX_CACHED_TOKENS = 10_000


@lru_cache(maxsize=1024)
def _holds(wanted: frozenset[str], scopes: frozenset[str]) -> bool:
    """JupyterHub's scope check, remembered per (wanted, held) pair: a token's scopes do not
    change while its answer is cached, and the check parses every scope each time."""
    from jupyterhub.services.auth import check_scopes

    return bool(check_scopes(set(wanted), set(scopes)))


def _cookies(headers: Mapping[str, str]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get("cookie", ""))
    except CookieError:
        return {}  # a malformed Cookie header counts as no cookie
    return {name: morsel.value for name, morsel in jar.items()}


def _set_cookie(name: str, value: str, *, path: str, max_age: int | None = None) -> str:
    parts = [f"{name}={value}", f"Path={path}", "HttpOnly", "SameSite=Lax"]
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    if os.environ.get("JUPYTERHUB_PUBLIC_URL", "").startswith("https://"):
        parts.append("Secure")
    return "; ".join(parts)


@dataclass
class ApiAuth:
    """The API's access rules (settings) and its identity provider (None: no hub)."""

    prefix: str
    closed: frozenset[str]
    hub: HubIdentity | None

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> "ApiAuth":
        return cls(settings.api_prefix, frozenset(settings.api_closed_collections),
                   HubIdentity.from_environment(settings, environ))

    def relative(self, path: str) -> str:
        """``path`` below the API's prefix."""
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            return path[len(self.prefix):] or "/"
        return path

    async def authorize(self, method: str, path: str, headers: Mapping[str, str]) -> Caller:
        """The caller of a request, once it may do what it asks; AuthenticationRequired (401)
        or PermissionDenied (403) otherwise."""
        need = need_of(method, self.relative(path), headers.get("content-type", ""), self.closed)
        if self.hub is None:
            if need is None:
                return ANONYMOUS
            raise AuthenticationRequired(
                f"{need.action} needs a JupyterHub identity with the scope {need.scope}, and this API runs "
                "without a hub (JUPYTERHUB_API_TOKEN is not set): run it as a hub service")
        token = bearer_token(headers)
        if token is None:
            token = self.hub.cookie_token(headers)
            if token is not None and method.upper() in UNSAFE_METHODS and not same_origin(headers):
                token = None  # a cookie alone does not let another site act for a logged-in browser
        if token is None:
            if need is None:
                return ANONYMOUS
            raise AuthenticationRequired(f"{need.action} needs a JupyterHub token (Authorization: token …) "
                                         f"with the scope {need.scope}")
        caller = await self.hub.caller(token)
        if caller is None:
            if need is None:
                return ANONYMOUS
            raise AuthenticationRequired("the token is not valid (unknown or expired); ask the hub for a new one")
        if need is None:
            return caller
        if not self.hub.has_access(caller):
            raise PermissionDenied(f"{caller.name}'s token has no access to this service "
                                   f"({', '.join(sorted(self.hub.access_scopes))})")
        if not self.hub.has_scope(caller, need.scope):
            raise PermissionDenied(f"{need.action} needs the scope {need.scope}, which {caller.name} does not hold")
        return caller
