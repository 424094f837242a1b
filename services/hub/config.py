"""The JupyterHub configuration of an OpenCDMS installation, built from :class:`Settings`.

``jupyterhub_config.py`` (repository root) builds ``Settings()`` and calls :func:`configure`.
Everything the hub needs is here, so a site changes settings (``OPENCDMS_HUB_*``) or adds its
own file (``OPENCDMS_HUB_EXTRA_CONFIG``, loaded after this), never this module:

- **who logs in** (``hub_authenticator``): NativeAuthenticator (sign-up, admin approval,
  password strength, lockout) by default; GenericOAuthenticator (OIDC) or LDAPAuthenticator in
  production (their endpoints in the site's extra file; docs/hub.md);
- **roles** (hub RBAC): four groups ``admin``, ``scientist``, ``qc-reviewer``, ``clerk``, each
  given a role with its scopes (:data:`ROLE_SCOPES`, the API's custom scopes
  :data:`CUSTOM_SCOPES`); administrators put users in groups on the hub's admin page;
- **servers** (``hub_spawner``): SimpleLocalProcessSpawner (one OS user, a home folder each) by
  default; LocalProcessSpawner or KubeSpawner; JupyterLab with the ``opencdms`` kernel, the
  project's notebooks, catalog and apps; a clerk's server opens the data-entry app;
- **database logins per user**: before a server starts, the user gets their own PostgreSQL login
  in the group role of their hub role (``db.roles.ensure_hub_user``), with a new password handed
  to the server through its environment only;
- **services**: the API (``/services/api/``), the event service (``/services/events/``), the
  worker pool and the idle culler, started, restarted and stopped by the hub, each with its own
  token and scopes; SIGINT is reset to the default in each (a hub started from a
  non-interactive shell passes it on ignored);
- **restarts**: the proxy and the users' servers outlive a hub restart (``cleanup_servers`` and
  ``cleanup_proxy`` are off; ``opencdms up`` stops them itself, opencdms_kernel/hub.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any

import apps
from opencdms_kernel.hub import (
    CONTROL_SERVICE,
    CONTROL_TOKEN_VARIABLE,
    HUB_RUN_VARIABLE,
    hub_folder,
    proxy_command,
    proxy_pid_file,
    proxy_token_file,
)
# The role rules (groups, precedence, a user's role) are the kernel's, shared with the admin app.
from opencdms_kernel.hub_users import MANAGE_SCOPES, ROLE_PRECEDENCE, group_name, hub_role_of  # noqa: F401
from opencdms_kernel.settings import Settings, shipped_folder
from opencdms_kernel.vocabulary import HubRole

log = logging.getLogger("opencdms.hub")

APPS_JUPYTER = Path(apps.__file__).resolve().parent / "jupyter"

# The API's scopes (JupyterHub custom scopes: granted through roles, carried by tokens, checked
# by the API service with jupyterhub.services.auth).
CUSTOM_SCOPES: dict[str, dict[str, str]] = {
    "custom:opencdms:read": {"description": "Read the collections that are not open to everyone."},
    "custom:opencdms:execute": {"description": "Run processes (notebooks) through the API."},
    "custom:opencdms:jobs": {"description": "List, follow and dismiss jobs through the API."},
    "custom:opencdms:qc-decide": {"description": "Decide on QC flags (accept, reject, correct)."},
    "custom:opencdms:keying": {"description": "Key paper records in the data-entry app."},
    "custom:opencdms:transactions": {"description": "Create, replace, update and close stations."},
}
API_ACCESS = "access:services!service=api"
EVENTS_ACCESS = "access:services!service=events"

# Hub role -> the scopes its group's members hold (on top of JupyterHub's default user role).
ROLE_SCOPES: dict[HubRole, list[str]] = {
    HubRole.ADMIN: [API_ACCESS, EVENTS_ACCESS, *CUSTOM_SCOPES],
    HubRole.SCIENTIST: [API_ACCESS, EVENTS_ACCESS, "custom:opencdms:read", "custom:opencdms:execute",
                        "custom:opencdms:jobs"],
    HubRole.QC_REVIEWER: [API_ACCESS, "custom:opencdms:read", "custom:opencdms:execute",
                          "custom:opencdms:jobs", "custom:opencdms:qc-decide"],
    HubRole.CLERK: [API_ACCESS, "custom:opencdms:read", "custom:opencdms:keying"],
}
# Lockout: this many failed logins in a row block the name for SECONDS_LOCKED.
FAILED_LOGINS_ALLOWED = 3
SECONDS_LOCKED = 600
MINIMUM_PASSWORD_LENGTH = 12


def role_name(role: HubRole) -> str:
    """The JupyterHub role given to that group."""
    return f"opencdms-{role.value}"


def _bin(name: str) -> str:
    """A program of this environment (the venv's bin/), found without relying on PATH."""
    return str(Path(sys.executable).parent / name)


def _statsd_shim() -> None:
    """NativeAuthenticator 1.3's LoginHandler times logins with ``self.statsd``, which
    JupyterHub 6 no longer has (a 500 at every login): give it a timer that does nothing."""
    from nativeauthenticator.handlers import LoginHandler

    class _Timer:
        def start(self) -> "_Timer":
            return self

        def stop(self, send: bool = True) -> None:
            return None

    class _NoStatsd:
        def timer(self, *args: object, **kwargs: object) -> _Timer:
            return _Timer()

        def incr(self, *args: object, **kwargs: object) -> None:
            return None

        def timing(self, *args: object, **kwargs: object) -> None:
            return None

        def gauge(self, *args: object, **kwargs: object) -> None:
            return None

    if not hasattr(LoginHandler, "statsd"):
        LoginHandler.statsd = _NoStatsd()  # type: ignore[attr-defined]


def _secret_file(path: Path, nbytes: int = 32) -> str:
    """A random token kept in ``path`` (0600, folder 0700), made the first time: the proxy's
    token must survive a hub restart for the new hub to take over the running proxy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        token = secrets.token_hex(nbytes)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as out:
            out.write(token)
        return token


def _service_environment(settings: Settings, *, database_url: str | None) -> dict[str, str]:
    """A service's environment: the installation's settings (``OPENCDMS_*``), the run marker,
    SIGINT handled by default; the database URL only for services that hold one."""
    environment = settings.as_environment()
    environment.pop("OPENCDMS_DATABASE_URL", None)
    if database_url:
        environment["OPENCDMS_DATABASE_URL"] = database_url
    if os.environ.get(HUB_RUN_VARIABLE):
        environment[HUB_RUN_VARIABLE] = os.environ[HUB_RUN_VARIABLE]
    return environment


def _sigint_default(command: list[str]) -> list[str]:
    """``command`` run with SIGINT back to its default: JupyterHub stops services with SIGINT
    first, and a hub started from a non-interactive shell hands it on ignored (30 s stops)."""
    return [sys.executable, "-c",
            "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
            "os.execv(sys.argv[1], sys.argv[1:])", *command]


def _services_database_url(settings: Settings) -> str | None:
    """The application role's URL for the API and the workers (least privilege), or None
    without a database (a test hub)."""
    if settings.database_url is None:
        return None
    from opencdms_kernel.db.engine import Datastore
    from opencdms_kernel.db.roles import role_url

    with Datastore.open(settings) as datastore:
        return role_url(datastore, "app").render_as_string(hide_password=False)


def services(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The hub-managed services of ``settings.hub_services`` and the roles that give them scopes."""
    wanted = set(settings.hub_services)
    found: list[dict[str, Any]] = []
    roles: list[dict[str, Any]] = []
    app_url = _services_database_url(settings) if wanted & {"api", "worker"} else None
    if "api" in wanted:
        found.append({
            "name": "api",
            "display": True,
            "info": {"description": "OGC API: stations, observations, products, processes"},
            "url": f"http://127.0.0.1:{settings.api_port}",
            "command": _sigint_default([_bin("opencdms"), "api", "serve", "--host", "127.0.0.1",
                                        "--port", str(settings.api_port), "--prefix", "/services/api"]),
            "environment": _service_environment(settings, database_url=app_url),
            "oauth_no_confirm": True,
            # The tokens the API gets through OAuth carry the user's OpenCDMS scopes.
            "oauth_client_allowed_scopes": list(CUSTOM_SCOPES),
        })
    if "events" in wanted:
        # A service that fails at the hub's start stops the hub: the event service is started
        # only once its command is installed (pip install -e . registers the entry point).
        if "events" not in _installed_commands():
            log.warning("`opencdms events` is not installed: the event service is left out")
        else:
            if settings.broker_url is None:
                # The embedded default: the broker is a service too (restarted if it dies; the
                # event service reconnects, and its sweep finds what arrived meanwhile).
                found.append({
                    "name": "broker",
                    "command": _sigint_default([_bin("opencdms"), "events", "broker"]),
                    "environment": _service_environment(settings, database_url=None),
                })
            token = secrets.token_hex(32)
            found.append({
                "name": "events",
                "display": True,
                "url": f"http://127.0.0.1:{settings.events_status_port}",
                "api_token": token,
                "command": _sigint_default([_bin("opencdms"), "events", "serve"]),
                # "interaction with the data occurs via the API": no database credentials.
                "environment": _service_environment(settings, database_url=None) | {
                    "OPENCDMS_EVENTS_STATUS_PREFIX": "/services/events",
                    # The API's own address, not the proxy's: the proxy has no route to the API
                    # until the hub has started every service (it answers 404 until then).
                    "OPENCDMS_EVENTS_API_URL": f"http://127.0.0.1:{settings.api_port}/services/api",
                    "OPENCDMS_EVENTS_API_TOKEN": token,
                },
                "oauth_no_confirm": True,
            })
            roles.append({"name": "opencdms-events-service", "services": ["events"],
                          "scopes": [API_ACCESS, "custom:opencdms:execute", "custom:opencdms:jobs"]})
    if "worker" in wanted:
        found.append({
            "name": "worker",
            "command": _sigint_default([_bin("opencdms"), "worker"]),
            "environment": _service_environment(settings, database_url=app_url),
        })
    if "idle-culler" in wanted:
        seconds = int(settings.hub_idle_timeout.total_seconds())
        found.append({
            "name": "idle-culler",
            "command": _sigint_default([sys.executable, "-m", "jupyterhub_idle_culler", f"--timeout={seconds}",
                                        f"--cull-every={max(60, seconds // 10)}"]),
            "environment": _service_environment(settings, database_url=None),
        })
        roles.append({"name": "opencdms-idle-culler", "services": ["idle-culler"],
                      "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"]})
    return found, roles


def _installed_commands() -> set[str]:
    """The ``opencdms`` commands contributed through entry points (api, events …)."""
    from importlib.metadata import entry_points

    return {entry.name for entry in entry_points(group="opencdms.commands")}


def _user_home(settings: Settings) -> Path:
    return hub_folder(settings) / "users"


def _prepare_home(home: Path) -> None:
    """A user's folder with the project's notebooks, catalog and apps in it (links, read where
    they are: a recorded run always uses the project's copy)."""
    home.mkdir(parents=True, exist_ok=True)
    for name in ("notebooks", "catalog", "apps"):
        source = shipped_folder(name)
        link = home / name
        if source.is_dir() and not link.exists() and not link.is_symlink():
            link.symlink_to(source, target_is_directory=True)


def make_pre_spawn_hook(settings: Settings):  # type: ignore[no-untyped-def]
    """The hook run before each server starts: role, landing page, database login, home folder."""
    hub_environment = settings.as_environment()
    hub_environment.pop("OPENCDMS_DATABASE_URL", None)
    datastore_holder: dict[str, Any] = {}

    def database_url_for(user: str, role: HubRole) -> str:
        from opencdms_kernel.db.engine import Datastore
        from opencdms_kernel.db.roles import ensure_hub_user

        if "datastore" not in datastore_holder:
            datastore_holder["datastore"] = Datastore.open(settings)
        return ensure_hub_user(datastore_holder["datastore"], user, role).render_as_string(hide_password=False)

    async def pre_spawn_hook(spawner: Any) -> None:
        user = spawner.user
        role = hub_role_of({group.name for group in user.groups}, bool(user.admin))
        if role is None:
            from tornado import web

            refusal = web.HTTPError(403, f"{user.name} has no OpenCDMS role")
            # JupyterHub shows this attribute to the person, on its error page.
            refusal.jupyterhub_message = (  # type: ignore[attr-defined]
                f"{user.name} has no role yet: an administrator puts you in one of the groups "
                f"{', '.join(group_name(r) for r in ROLE_PRECEDENCE)} on the hub's admin page.")
            raise refusal
        spawner.default_url = settings.hub_clerk_url if role is HubRole.CLERK else "/lab"
        environment = dict(hub_environment)
        environment["OPENCDMS_USER"] = user.name
        environment["OPENCDMS_HUB_ROLE"] = role.value
        # The apps' Jupyter files: Voilà's page template (no CDN, the data-entry grid's keys) and
        # its settings (a preheated kernel), found before the environment's own.
        environment["JUPYTER_PATH"] = environment["JUPYTER_CONFIG_PATH"] = str(APPS_JUPYTER)
        if os.environ.get(HUB_RUN_VARIABLE):
            environment[HUB_RUN_VARIABLE] = os.environ[HUB_RUN_VARIABLE]
        if settings.database_url is not None:
            # The password exists only in this dict and the server's environment: JupyterHub keeps
            # a local server's pid as its state, not its environment, and logs no environment.
            environment["OPENCDMS_DATABASE_URL"] = await asyncio.to_thread(database_url_for, user.name, role)
        spawner.environment = environment
        home = getattr(spawner, "home_dir", None)
        if home:
            await asyncio.to_thread(_prepare_home, Path(home))

    return pre_spawn_hook


def configure(c: Any, settings: Settings) -> None:
    """Fill JupyterHub's config object ``c`` for the installation ``settings`` describes."""
    folder = hub_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)

    # ---- addresses, state files, restarts
    c.JupyterHub.ip = settings.hub_ip
    c.JupyterHub.port = settings.hub_port
    c.JupyterHub.hub_ip = "127.0.0.1"
    c.JupyterHub.hub_port = settings.hub_api_port
    c.JupyterHub.db_url = f"sqlite:///{folder / 'jupyterhub.sqlite'}"
    c.JupyterHub.cookie_secret_file = str(folder / "jupyterhub_cookie_secret")
    c.JupyterHub.pid_file = str(folder / "jupyterhub.pid")
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = False
    c.ConfigurableHTTPProxy.command = proxy_command()
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{settings.hub_proxy_api_port}"
    c.ConfigurableHTTPProxy.auth_token = _secret_file(proxy_token_file(settings))
    c.ConfigurableHTTPProxy.pid_file = str(proxy_pid_file(settings))
    c.JupyterHub.log_level = "INFO"
    c.JupyterHub.template_vars = {"announcement_login": "OpenCDMS Workbench"}

    # ---- who logs in
    c.Authenticator.admin_users = {settings.hub_admin_user}
    if settings.hub_authenticator == "native":
        _statsd_shim()
        import nativeauthenticator

        c.JupyterHub.authenticator_class = "native"
        c.JupyterHub.template_paths = [str(Path(nativeauthenticator.__file__).parent / "templates")]
        # JupyterHub >= 5 lets nobody in without an allow setting; NativeAuthenticator does its
        # own approval (an administrator authorises each sign-up).
        c.Authenticator.allow_all = True
        c.NativeAuthenticator.enable_signup = True
        c.NativeAuthenticator.open_signup = False
        c.NativeAuthenticator.minimum_password_length = MINIMUM_PASSWORD_LENGTH
        c.NativeAuthenticator.check_common_password = True
        c.NativeAuthenticator.allowed_failed_logins = FAILED_LOGINS_ALLOWED
        c.NativeAuthenticator.seconds_before_next_try = SECONDS_LOCKED
    elif settings.hub_authenticator == "oauth":
        # OIDC: endpoints, client id and secret in the site's extra config (docs/hub.md); the
        # provider's groups claim becomes the hub groups, so the roles follow the directory.
        c.JupyterHub.authenticator_class = "generic-oauth"
        c.GenericOAuthenticator.scope = ["openid", "profile", "email", "groups"]
        c.GenericOAuthenticator.username_claim = "preferred_username"
        c.GenericOAuthenticator.manage_groups = True
        c.GenericOAuthenticator.auth_state_groups_key = "oauth_user.groups"
        c.GenericOAuthenticator.allowed_groups = {group_name(role) for role in HubRole}
        c.GenericOAuthenticator.admin_groups = {group_name(HubRole.ADMIN)}
    else:
        # LDAP: server and bind template in the site's extra config; roles assigned in the hub.
        c.JupyterHub.authenticator_class = "ldapauthenticator.LDAPAuthenticator"
        c.LDAPAuthenticator.use_ssl = True
        c.LDAPAuthenticator.allow_all = False

    # ---- roles (RBAC): one group per hub role
    c.JupyterHub.custom_scopes = CUSTOM_SCOPES
    c.JupyterHub.load_groups = {
        group_name(role): {"users": [settings.hub_admin_user] if role is HubRole.ADMIN else []}
        for role in HubRole
    }
    managed, service_roles = services(settings)
    control_token = os.environ.get(CONTROL_TOKEN_VARIABLE)
    if control_token:
        # The starter's own door (opencdms up, the test hub): stop servers at shutdown, manage
        # users, groups and tokens.  Its token lives in the starter's memory and this process.
        managed.append({"name": CONTROL_SERVICE, "api_token": control_token})
        service_roles.append({"name": "opencdms-control", "services": [CONTROL_SERVICE], "scopes": [
            "admin:users", "admin:servers", "admin:groups", "tokens", "list:users", "read:users",
            "read:roles", "list:services", "read:services", *CUSTOM_SCOPES, API_ACCESS]})
    c.JupyterHub.services = managed
    c.JupyterHub.load_roles = [
        {"name": "admin", "groups": [group_name(HubRole.ADMIN)]},
        *({"name": role_name(role), "description": f"OpenCDMS {role.value}",
           "scopes": ROLE_SCOPES[role], "groups": [group_name(role)]} for role in HubRole),
        *service_roles,
    ]

    # ---- single-user servers
    spawner = {"simple": "jupyterhub.spawner.SimpleLocalProcessSpawner",
               "local": "jupyterhub.spawner.LocalProcessSpawner",
               "kube": "kubespawner.KubeSpawner"}[settings.hub_spawner]
    c.JupyterHub.spawner_class = spawner
    c.SimpleLocalProcessSpawner.home_dir_template = str(_user_home(settings) / "{username}")
    c.Spawner.cmd = [_bin("jupyterhub-singleuser")] if settings.hub_spawner != "kube" else ["jupyterhub-singleuser"]
    c.Spawner.default_url = "/lab"
    # Only these of the hub's variables reach a server; never the hub's own database URL.
    c.Spawner.env_keep = ["PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "XDG_RUNTIME_DIR"]
    idle = int(settings.hub_idle_timeout.total_seconds())
    c.Spawner.args = [
        # Offline: no update checks, no news feed (it would fetch from jupyter.org).
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.news_url=None",
        "--LabApp.extension_manager=readonly",
        # Idle kernels are culled by the server; idle servers by the hub's idle-culler service.
        f"--MappingKernelManager.cull_idle_timeout={idle}",
        f"--MappingKernelManager.cull_interval={max(60, idle // 10)}",
        "--MappingKernelManager.default_kernel_name=opencdms",
    ]
    if settings.hub_spawner != "kube" and hasattr(os, "geteuid") and os.geteuid() == 0:
        c.Spawner.args.append("--allow-root")
    c.Spawner.start_timeout = 60
    c.Spawner.http_timeout = 60
    c.Spawner.pre_spawn_hook = make_pre_spawn_hook(settings)
    # A server's own token (JUPYTERHUB_API_TOKEN): JupyterHub's default (activity, access to the
    # server) plus managing users and role groups, which JupyterHub grants only to those who hold
    # these scopes — administrators — so the admin app in an administrator's server can change roles.
    c.Spawner.server_token_scopes = ["users:activity!user", "access:servers!server", *MANAGE_SCOPES]

    # ---- the site's own additions (OIDC/LDAP details, spawner options), last
    if settings.hub_extra_config is not None:
        extra = settings.hub_extra_config
        extra = extra if extra.is_absolute() else settings.home / extra
        if not extra.is_file():
            from opencdms_kernel.errors import ParameterError

            raise ParameterError("hub_extra_config", f"{extra} is not a file")
        _load_extra(c, extra)


def _load_extra(c: Any, path: Path) -> None:
    """Run a site's config file against ``c`` (the way JupyterHub runs its own: ``c`` in scope)."""
    namespace = {"c": c, "get_config": lambda: c, "__file__": str(path)}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102 - the site's own config


def proxy_available() -> bool:
    """Whether configurable-http-proxy is installed (``make install``)."""
    command = proxy_command()
    return Path(command[0]).exists() or shutil.which(command[0]) is not None
