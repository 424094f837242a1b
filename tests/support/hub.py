"""A real JupyterHub for tests: the project's ``jupyterhub_config.py`` on free 127.0.0.1 ports.

Use it from any test module::

    from support.hub import started_hub

    with started_hub(tmp_path) as hub:                       # no database, no services
        token = hub.create_user("carla", "clerk").token      # a user with a hub role, and an API token
        hub.api("GET", "/user", token=token)                 # -> (200, {... "scopes": [...]})

- ``services=("api", "worker")``: hub-managed services, as in `opencdms up`
  (``Settings.hub_services``); default none.
- ``external_services={"api": "http://127.0.0.1:PORT"}``: services the test runs itself (e.g.
  its own uvicorn): each is registered with a token of its own, ``hub.service_tokens[name]``,
  and reached through the proxy at ``/services/<name>/``.  Start the service with
  ``JUPYTERHUB_API_URL=hub.hub_api_url``, ``JUPYTERHUB_API_TOKEN=hub.service_tokens[name]`` and
  ``JUPYTERHUB_SERVICE_PREFIX=/services/<name>/``.
- ``database_url``: the datastore (superuser/CREATEROLE): users' servers get their own logins.

The hub's administrator is ``admin`` with ``hub.admin_password``.  Tokens come from the hub's
REST API (the control service's token): real tokens with the scopes of the user's role.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

from opencdms_kernel.vocabulary import HubRole
from opencdms_kernel.hub import HubServer, HubSession, page_text, running_hub
from opencdms_kernel.settings import Settings


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class HubUser:
    """A hub user made by a test: name, hub role, an API token (the role's scopes), password."""

    name: str
    role: HubRole | None
    token: str = field(repr=False)
    password: str | None = field(default=None, repr=False)


@dataclass
class RunningTestHub:
    """A running hub and the helpers tests need."""

    server: HubServer
    settings: Settings
    service_tokens: dict[str, str]

    @property
    def url(self) -> str:
        """The public URL (the proxy), ending in /."""
        return self.server.url

    @property
    def hub_api_url(self) -> str:
        """The hub's REST API as a service reaches it (JUPYTERHUB_API_URL)."""
        return f"http://127.0.0.1:{self.settings.hub_api_port}/hub/api"

    @property
    def admin_password(self) -> str:
        """The first administrator's generated password."""
        assert self.server.admin_password is not None
        return self.server.admin_password

    def api(self, method: str, path: str, body: object | None = None, *, token: str | None = None) -> tuple[int, object]:
        """Call the hub's REST API (default: as the control service, an administrator)."""
        return self.server.api(method, path, body, token=token)

    def _ok(self, method: str, path: str, body: object | None = None) -> object:
        status, answer = self.api(method, path, body)
        if status >= 300:
            raise AssertionError(f"{method} {path}: {status} {answer}")
        return answer

    def set_role(self, name: str, role: HubRole | str | None) -> None:
        """Put user ``name`` in exactly the group of ``role`` (None: no group)."""
        wanted = HubRole(role).value if role is not None else None
        for member in HubRole:
            status, group = self.api("GET", f"/groups/{member.value}")
            if status == 200 and name in group.get("users", []) and member.value != wanted:
                self._ok("DELETE", f"/groups/{member.value}/users", {"users": [name]})
        if wanted is not None:
            self._ok("POST", f"/groups/{wanted}/users", {"users": [name]})

    def token_for(self, name: str, scopes: list[str] | None = None) -> str:
        """A new API token of user ``name`` (default: every scope the user holds)."""
        body: dict[str, object] = {"note": "test", "expires_in": 3600}
        if scopes is not None:
            body["scopes"] = scopes
        answer = self._ok("POST", f"/users/{name}/tokens", body)
        return answer["token"]  # type: ignore[index]

    def create_user(self, name: str, role: HubRole | str | None, *, scopes: list[str] | None = None) -> HubUser:
        """A hub user in ``role``'s group with an API token (no password: API tests)."""
        status, answer = self.api("POST", f"/users/{name}")
        if status not in (201, 409):
            raise AssertionError(f"creating {name}: {status} {answer}")
        self.set_role(name, role)
        return HubUser(name, HubRole(role) if role is not None else None, self.token_for(name, scopes))

    def create_native_user(self, name: str, role: HubRole | str | None, password: str | None = None) -> HubUser:
        """A user who signs up through the hub's form and whom the administrator authorises,
        as a person would; then put in ``role``'s group, with an API token."""
        password = password or secrets.token_urlsafe(16)
        signup = HubSession(self.url)
        page = signup.post("hub/signup", {"username": name, "signup_password": password,
                                          "signup_password_confirmation": password})
        if "has been sent to the admin" not in page:
            raise AssertionError(f"sign-up of {name} refused: {page_text(page)[:300]}")
        admin = HubSession(self.url)
        admin.login(self.server.admin_user, self.admin_password)
        admin.get(f"hub/authorize/{urllib.parse.quote(name)}")
        status, _ = self.api("POST", f"/users/{name}")
        if status not in (201, 409):
            raise AssertionError(f"adding {name} to the hub: {status}")
        self.set_role(name, role)
        return HubUser(name, HubRole(role) if role is not None else None, self.token_for(name), password)

    def wait_for_server(self, name: str, timeout: float = 60.0) -> dict:
        """Start (if needed) and wait for user ``name``'s server; returns the user's model."""
        status, answer = self.api("POST", f"/users/{name}/server")
        if status not in (201, 202, 400):  # 400: already running
            raise AssertionError(f"starting {name}'s server: {status} {answer}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            _, model = self.api("GET", f"/users/{name}")
            server = model.get("servers", {}).get("", {})  # type: ignore[union-attr]
            if server.get("ready"):
                return model  # type: ignore[return-value]
            time.sleep(0.3)
        raise AssertionError(f"{name}'s server not ready after {timeout} s; hub log: {self.server.log}")


def hub_settings(home: Path, *, database_url: str | None = None, services: tuple[str, ...] = (),
                 **overrides: object) -> Settings:
    """Settings of a test hub under ``home`` on free ports."""
    return Settings(
        home=home, database_url=database_url, bucket_url=f"file://{home / 'bucket'}",
        hub_port=free_port(), hub_api_port=free_port(), hub_proxy_api_port=free_port(), api_port=free_port(),
        hub_services=list(services), **overrides,  # type: ignore[arg-type]
    )


@contextmanager
def started_hub(
    home: Path, *, database_url: str | None = None, services: tuple[str, ...] = (),
    external_services: Mapping[str, str] | None = None, settings: Settings | None = None,
    **overrides: object,
) -> Iterator[RunningTestHub]:
    """A real hub (proxy, configured services) under ``home``, stopped after the block.

    Raises AssertionError naming the log if it does not start.
    """
    settings = settings or hub_settings(home, database_url=database_url, services=services, **overrides)
    tokens = {name: secrets.token_hex(32) for name in external_services or {}}
    base = dict(os.environ)
    if tokens:
        extra = settings.home / "test_hub_services.py"
        lines = ["# services run by the test itself (tests/support/hub.py)"]
        for name, url in (external_services or {}).items():
            lines.append(f"c.JupyterHub.services.append({{'name': {name!r}, 'url': {url!r}, "
                         f"'api_token': {tokens[name]!r}, 'oauth_no_confirm': True, "
                         f"'oauth_client_allowed_scopes': [s for s in c.JupyterHub.custom_scopes]}})")
        extra.write_text("\n".join(lines) + "\n", encoding="utf-8")
        settings = settings.model_copy(update={"hub_extra_config": extra})
    with running_hub(settings, database_url=database_url, base_environment=base) as server:
        yield RunningTestHub(server=server, settings=settings, service_tokens=tokens)
