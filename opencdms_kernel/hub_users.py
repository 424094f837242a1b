"""People and their workbench roles, through JupyterHub's REST API.

A person's role is a hub group: ``admin``, ``scientist``, ``qc-reviewer`` or ``clerk``
(:func:`group_name`); someone in several groups has the first of :data:`ROLE_PRECEDENCE`, and a
hub administrator (the hub's own ``admin`` flag) is an ``admin`` whatever their groups
(:func:`hub_role_of`).  These rules are defined here once: the hub's configuration
(``services/hub/config.py``) decides each server's role and database login with them, and the
administration app shows and changes roles with them.

:class:`HubUsers` calls the hub's API with a token: inside a user's server the hub sets
``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN`` (:meth:`HubUsers.from_environment`).  An
administrator's server token holds the scopes to manage users and groups
(``Spawner.server_token_scopes`` in the hub's configuration gives them to the admin role only);
anyone else's is refused by the hub itself (:class:`HubPermissionError`, 403).

NativeAuthenticator's sign-up approval is not part of the hub's REST API (its pages accept only
the hub's login cookie): :func:`approval_page` is the hub page where an administrator approves
sign-ups, for the app to link to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterable, Mapping
from urllib.parse import quote

from opencdms_kernel.admin.access import Administrator, require_admin
from opencdms_kernel.errors import NO_APPLICABLE_CODE, ConflictError, NotFoundError, OpenCDMSError, ServiceError
from opencdms_kernel.vocabulary import HubRole

if TYPE_CHECKING:  # httpx is imported when a client is made: the kernel imports no HTTP stack at start-up
    import httpx

# When a user is in several groups, the first of these decides their database role and landing.
ROLE_PRECEDENCE: tuple[HubRole, ...] = (HubRole.ADMIN, HubRole.QC_REVIEWER, HubRole.SCIENTIST, HubRole.CLERK)
# The scopes an administrator's server token needs to list people and change their groups.
MANAGE_SCOPES: tuple[str, ...] = ("list:users", "read:users", "groups")
_PAGE = "application/jupyterhub-pagination+json"


def group_name(role: HubRole) -> str:
    """The hub group whose members have hub role ``role`` (the role's own name)."""
    return HubRole(role).value


def hub_role_of(group_names: Iterable[str], is_admin: bool) -> HubRole | None:
    """The hub role of a user in ``group_names`` (None: no role yet, no server)."""
    if is_admin:
        return HubRole.ADMIN
    names = set(group_names)
    for role in ROLE_PRECEDENCE:
        if group_name(role) in names:
            return role
    return None


class HubApiError(ServiceError):
    """The hub's API cannot be reached, or answered with an error it should not have."""


class HubPermissionError(OpenCDMSError):
    """The hub refused the request: the token lacks the scope (403)."""

    http_status = 403
    ogc_code = NO_APPLICABLE_CODE


class HubUserNotFoundError(NotFoundError):
    """The hub has no user of that name."""


@dataclass(frozen=True)
class HubUser:
    """A hub user as the administration shows them."""

    name: str
    role: HubRole | None  # hub_role_of(groups, admin)
    groups: tuple[str, ...]
    admin: bool  # the hub's own administrator flag (admin_users, the hub's admin page)
    server_running: bool
    last_activity: datetime | None
    created: datetime | None

    @classmethod
    def from_model(cls, model: Mapping[str, Any]) -> "HubUser":
        """From the hub's JSON user model."""
        groups = tuple(sorted(model.get("groups") or ()))
        admin = bool(model.get("admin"))
        return cls(name=str(model["name"]), role=hub_role_of(groups, admin), groups=groups, admin=admin,
                   server_running=bool(model.get("server")), last_activity=_time(model.get("last_activity")),
                   created=_time(model.get("created")))


def _time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def approval_page(base_url: str = "/") -> str:
    """The hub page where an administrator approves sign-ups (NativeAuthenticator), relative to
    the hub's public address (``JUPYTERHUB_BASE_URL``, "/" by default)."""
    return f"{base_url.rstrip('/')}/hub/authorize"


class HubUsers:
    """A client of the hub's REST API for users and role groups (httpx; one connection pool).

    ``api_url``: the hub's API (``…/hub/api``); ``token``: a hub token (an administrator's
    server token holds the scopes needed).  Use as a context manager or call :meth:`close`.
    """

    def __init__(self, api_url: str, token: str, *, timeout: float = 10.0,
                 transport: "httpx.BaseTransport | None" = None) -> None:
        import httpx

        if not api_url or not token:
            raise HubApiError("the hub's API address and a token are needed (JUPYTERHUB_API_URL, JUPYTERHUB_API_TOKEN)")
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.api_url, timeout=timeout, transport=transport,
                                    headers={"Authorization": f"token {token}"}, trust_env=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "HubUsers":
        """The client a user's server can make: the hub's address and token from the variables
        JupyterHub sets (``JUPYTERHUB_API_URL``, ``JUPYTERHUB_API_TOKEN``); HubApiError outside a hub."""
        environ = os.environ if environ is None else environ
        url, token = environ.get("JUPYTERHUB_API_URL"), environ.get("JUPYTERHUB_API_TOKEN")
        if not url or not token:
            raise HubApiError("not running under JupyterHub (JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN are not "
                              "set): users and roles are managed through the hub")
        return cls(url, token)

    def __enter__(self) -> "HubUsers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    # ------------------------------------------------------------------- reading

    def list_users(self) -> list[HubUser]:
        """Every hub user (all pages), by name."""
        found: list[HubUser] = []
        offset = 0
        while True:
            answer = self._call("GET", "/users", params={"offset": offset, "limit": 200}, headers={"Accept": _PAGE})
            items = answer.get("items", []) if isinstance(answer, dict) else answer
            found.extend(HubUser.from_model(item) for item in items)
            following = (answer.get("_pagination") or {}).get("next") if isinstance(answer, dict) else None
            if not following or not items:
                break
            offset = int(following["offset"])
        return sorted(found, key=lambda user: user.name)

    def get_user(self, name: str) -> HubUser:
        """The hub user ``name`` (HubUserNotFoundError when there is none)."""
        return HubUser.from_model(self._call("GET", f"/users/{_segment(name)}",
                                             missing=HubUserNotFoundError(f"the hub has no user {name[:60]!r} (or this token may not see them)")))

    # ------------------------------------------------------------------- changing

    def set_role(self, admin: Administrator, name: str, role: HubRole | str | None) -> HubUser:
        """Give user ``name`` exactly the role ``role`` (its group, and no other role group);
        None takes every role away (no server until they get one).  A changed role applies
        from the user's next server start (their database login is made then).

        Refused: changing one's own role (an administrator cannot lock themselves out; another
        administrator can), and taking the role of a hub administrator below admin (the hub's
        admin flag outranks groups: clear it on the hub's admin page first).
        """
        require_admin(admin)
        wanted = HubRole(role) if role is not None else None
        if name == admin.user:
            raise ConflictError(f"{name} cannot change their own role: another administrator can")
        user = self.get_user(name)
        if user.admin and wanted is not HubRole.ADMIN:
            raise ConflictError(f"{name} is a hub administrator (the hub's admin flag, which groups do not change): "
                                "clear the flag on the hub's admin page first")
        for member in ROLE_PRECEDENCE:
            group = group_name(member)
            if group in user.groups and member is not wanted:
                self._call("DELETE", f"/groups/{_segment(group)}/users", json={"users": [name]},
                           missing=_missing_group(group))
        if wanted is not None and group_name(wanted) not in user.groups:
            self._call("POST", f"/groups/{_segment(group_name(wanted))}/users", json={"users": [name]},
                       missing=_missing_group(group_name(wanted)))
        return self.get_user(name)

    # ------------------------------------------------------------------- HTTP

    def _call(self, method: str, path: str, *, missing: OpenCDMSError | None = None, **options: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **options)
        except httpx.HTTPError as exc:
            raise HubApiError(f"the hub's API at {self.api_url} cannot be reached: {exc}") from exc
        if response.status_code in (401, 403):
            raise HubPermissionError(f"the hub refused {method} {path} ({response.status_code}): this token may not "
                                     f"{'read' if method == 'GET' else 'change'} users and groups "
                                     "(administrators only)")
        if response.status_code == 404:
            raise missing or HubApiError(f"the hub answered {method} {path} with 404")
        if response.status_code >= 400:
            raise HubApiError(f"the hub answered {method} {path} with {response.status_code}: {_message(response)}")
        if not response.content:
            return None
        return response.json()


def _missing_group(group: str) -> NotFoundError:
    return NotFoundError(f"the hub has no group {group!r} (the hub's configuration makes the role groups at start)")


def _segment(name: str) -> str:
    """A user or group name as one path segment."""
    return quote(name, safe="")


def _message(response: "httpx.Response") -> str:
    try:
        return str(response.json().get("message", ""))[:200]
    except ValueError:
        return response.text[:200]
