"""One typed settings object for every part of OpenCDMS.

Built at start-up (``Settings()`` or :func:`load_settings`), never at import: a module that needs
a setting receives the object as an argument.  Every field reads an ``OPENCDMS_`` environment
variable (e.g. ``OPENCDMS_DATABASE_URL``) and has a default that serves the embedded mode.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opencdms_kernel.vocabulary import HubRole

# The source tree this package runs from (an editable install, as `make install` makes): the
# home of the notebooks and of the catalog that ship with the code.
PROJECT_FOLDER = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Validated configuration of one OpenCDMS installation."""

    model_config = SettingsConfigDict(env_prefix="OPENCDMS_", env_file=None, extra="forbid")

    home: Path = Field(
        default_factory=Path.cwd,
        description="Project folder; relative paths below are taken from here.",
    )
    notebook_dir: Path | None = Field(
        default=None,
        description="Folder of the notebooks run as processes. Empty: the project's notebooks/.",
    )
    var_dir: Path = Field(
        default=Path("var"),
        description="Working folder of the embedded mode (database, bucket, logs).",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the PostgreSQL server, e.g. postgresql+psycopg://user@host/db. "
            "Empty: a private PostgreSQL is started under var/pgdata."
        ),
    )
    database_role_prefix: str | None = Field(
        default=None,
        description=(
            "Prefix of this installation's database roles (<prefix>_owner, _app, _readonly), "
            "used when they are first created. Empty: opencdms_<database name>."
        ),
        pattern=r"^[a-z][a-z0-9_]{0,53}$",
    )
    bucket_url: str = Field(
        default="file://var/bucket",
        description="fsspec URL of the file bucket: file://<folder> or s3://<bucket>[/prefix].",
    )
    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint (MinIO, Ceph…).")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str | None = None
    broker_url: str | None = Field(
        default=None,
        description="MQTT broker, e.g. mqtt://127.0.0.1:1883. Empty: an embedded broker.",
    )
    centre_id: str = Field(
        default="xx-opencdms-demo",
        description="WIS2 centre identifier of this installation.",
        pattern=r"^[a-z0-9][a-z0-9-]*$",
    )
    user: str = Field(
        default="opencdms",
        description="Identity recorded in the audit trail for changes made by this process.",
        min_length=1,
    )
    # Job workers (`opencdms worker`, notebooks/worker.py). Durations: ISO 8601 (PT5S) or seconds.
    worker_concurrency: int = Field(
        default=2, ge=1, le=64, description="Notebooks one worker process runs at once.",
    )
    worker_kernels_ahead: int | None = Field(
        default=None, ge=0, le=64,
        description="Kernels a worker keeps started ahead of its jobs (each about 220 MB of memory). "
                    "Empty: one per job it runs at once; 0: every job starts its own kernel.",
    )
    job_heartbeat_interval: timedelta = Field(
        default=timedelta(seconds=5), gt=timedelta(0),
        description="How often a worker renews the heartbeat of the jobs it runs (and looks for stale ones).",
    )
    job_stale_timeout: timedelta = Field(
        default=timedelta(seconds=60), gt=timedelta(0),
        description="A running job whose heartbeat is older than this lost its worker: it is retried or failed.",
    )
    job_max_attempts: int = Field(
        default=3, ge=1, le=100, description="Runs a job gets when its worker dies, before it is failed.",
    )
    job_retry_backoff: timedelta = Field(
        default=timedelta(seconds=10), ge=timedelta(0),
        description="Wait before a job whose worker died runs again; doubled for each attempt used.",
    )
    # OGC API service (services/api): `opencdms api serve`.
    api_host: str = Field(default="127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(default=5000, ge=1, le=65535, description="Port the API listens on.")
    api_prefix: str = Field(
        default="",
        description="URL path prefix of the API, e.g. /services/api behind JupyterHub; empty: none.",
        pattern=r"^(/[A-Za-z0-9._~-]+)*$",
    )
    api_public_url: str | None = Field(
        default=None,
        description="Base URL clients see (a proxy in front). Empty: http://<api_host>:<api_port><api_prefix>.",
        pattern=r"^https?://[^\s?#]+[^/\s?#]$",
    )
    api_sync_timeout: float = Field(
        default=30.0, ge=0, le=3600,
        description="Seconds a synchronous execution waits for its job before answering as an asynchronous one.",
    )
    api_max_body_bytes: int = Field(
        default=1_000_000, ge=1_000, description="Largest request body the API reads; larger ones are refused (413)."
    )
    api_cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to read the API from a browser (CORS, GET only); empty: CORS off.",
    )
    # API access (services/api/auth.py). The hub connection itself comes from the variables
    # JupyterHub gives its services (JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL…): without them
    # the API serves its open reads only.
    api_closed_collections: list[str] = Field(
        default_factory=list,
        description="Collections only callers with the hub scope custom:opencdms:read may read (JSON list); "
        "the others are open to everyone.",
    )
    api_hub_service: str = Field(
        default="api", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="The API's service name in JupyterHub (its OAuth client service-<name>; tokens need "
        "access:services!service=<name>).",
    )
    api_auth_cache_seconds: int = Field(
        default=60, ge=0, le=3600,
        description="How long the hub's answer about a token is kept (a revoked token works this much longer).",
    )

    # JupyterHub (jupyterhub_config.py builds its configuration from these; `opencdms up` starts it).
    hub_ip: str = Field(default="127.0.0.1", description="Address the hub's proxy listens on (people's URL).")
    hub_port: int = Field(default=8000, ge=1, le=65535, description="Port of the hub's public proxy.")
    hub_api_port: int = Field(default=8081, ge=1, le=65535, description="Port of the hub's own API (127.0.0.1).")
    hub_proxy_api_port: int = Field(
        default=8001, ge=1, le=65535, description="Port of the proxy's REST API (127.0.0.1)."
    )
    hub_authenticator: Literal["native", "oauth", "ldap"] = Field(
        default="native",
        description="native: sign-up, admin approval, passwords in the hub; oauth: an OIDC provider; "
        "ldap: a directory (both configured in hub_extra_config, see docs/hub.md).",
    )
    hub_spawner: Literal["simple", "local", "kube"] = Field(
        default="simple",
        description="simple: every user's server as this OS user (embedded default); local: one OS user "
        "each; kube: a pod each (KubeSpawner).",
    )
    hub_admin_user: str = Field(
        default="admin", pattern=r"^[a-z][a-z0-9_.-]{0,63}$",
        description="The first administrator, created by `opencdms up` with a generated password.",
    )
    hub_idle_timeout: timedelta = Field(
        default=timedelta(hours=1), ge=timedelta(minutes=1),
        description="Idle user servers and kernels are stopped after this long (jupyterhub-idle-culler).",
    )
    hub_services: list[Literal["api", "events", "worker", "idle-culler"]] = Field(
        default_factory=lambda: ["api", "events", "worker", "idle-culler"],
        description="Services the hub starts and restarts (JSON list: api, events, worker, idle-culler; "
        "events brings the embedded MQTT broker along when broker_url is empty).",
    )
    hub_clerk_url: str = Field(
        default="/opencdms-entry/", pattern=r"^/[A-Za-z0-9._~/-]*$",
        description="Where a clerk's server opens (the data-entry app behind the server's proxy: apps/proxy.py), "
        "relative to the server.",
    )
    hub_role: HubRole | None = Field(
        default=None, description="The user's workbench role (the hub sets it in each user's server).",
    )
    apps_map_tile_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$",
        description="Map tiles under the explorer's station map, e.g. https://tiles.example/{Z}/{X}/{Y}.png. "
        "Empty: no tiles (stations on longitude/latitude axes; nothing is fetched from elsewhere).",
    )
    hub_extra_config: Path | None = Field(
        default=None,
        description="A site's JupyterHub config file loaded after ours (OIDC or LDAP details, spawner options).",
    )

    # Broker credentials (any client of the broker: the event service, publishers).
    broker_username: str | None = Field(
        default=None, description="MQTT user name. Empty: the event service's client id (the embedded broker "
        "refuses anonymous clients, whose offline messages it would not keep).",
    )
    broker_password: SecretStr | None = Field(default=None, description="MQTT password.")
    # Event service (services/events): `opencdms events serve`.
    events_routes_file: Path | None = Field(
        default=None, description="routes.yml of the event service. Empty: services/events/routes.yml.",
    )
    events_api_url: str | None = Field(
        default=None, pattern=r"^https?://[^\s?#]+[^/\s?#]$",
        description="The API the event service asks to run processes. Empty: the API's own URL (api_* settings).",
    )
    events_api_token: SecretStr | None = Field(
        default=None, description="Token the event service sends to the API (Authorization: token …).",
    )
    events_client_id: str = Field(
        default="opencdms-events", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT client id of the event service (fixed: its persistent session keeps messages "
        "published while it is down); each replica needs its own.",
    )
    events_topic_root: str = Field(
        default="opencdms", pattern=r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$",
        description="First levels of every topic the event service reads or writes (routes' topics are below it).",
    )
    events_share_group: str | None = Field(
        default="opencdms", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="MQTT v5 shared-subscription group of the replicas ($share/<group>/…). Empty: no sharing.",
    )
    events_mqtt_protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto",
        description="MQTT version of the event service: auto (v5, else 3.1.1; the embedded broker: 3.1.1), 5 or 3.1.1.",
    )
    events_concurrency: int = Field(default=4, ge=1, le=64, description="Messages the event service routes at once.")
    events_sweep_interval: timedelta = Field(
        default=timedelta(minutes=5), ge=timedelta(0),
        description="How often incoming/ is compared with the ingest ledger (also at start); 0: only at start.",
    )
    events_retry_backoff: timedelta = Field(
        default=timedelta(seconds=1), gt=timedelta(0),
        description="First wait before a transient failure (API, bucket, broker) is retried; doubled each time.",
    )
    events_retry_backoff_max: timedelta = Field(
        default=timedelta(seconds=60), gt=timedelta(0), description="Longest wait between retries.",
    )
    events_job_poll_interval: timedelta = Field(
        default=timedelta(seconds=2), gt=timedelta(0),
        description="How often the event service asks the API about the jobs it follows (chains, status messages).",
    )
    events_session_expiry: timedelta = Field(
        default=timedelta(days=7), gt=timedelta(0),
        description="How long the broker keeps the event service's session (and its messages) while it is down.",
    )
    events_status_host: str = Field(default="127.0.0.1", description="Address of the event service's status page.")
    events_status_port: int = Field(
        default=5010, ge=0, le=65535, description="Port of the status page; 0: any free port.",
    )
    events_status_prefix: str = Field(
        default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="URL prefix of the status page, e.g. /services/events under JupyterHub.",
    )
    events_embedded_broker_port: int = Field(
        default=1884, ge=1, le=65535,
        description="Port (127.0.0.1) of the embedded broker `opencdms up` starts when broker_url is empty.",
    )

    @field_validator("bucket_url")
    @classmethod
    def _known_bucket_protocol(cls, value: str) -> str:
        if not value.startswith(("file://", "s3://", "memory://")):
            raise ValueError(f"bucket_url must start with file://, s3:// or memory://, not {value!r}")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
            raise ValueError("database_url must be a PostgreSQL URL (postgresql+psycopg://…)")
        # SQLAlchemy would pick psycopg2 for a bare postgresql:// URL; we ship psycopg 3.
        return value.replace("postgres://", "postgresql://", 1).replace(
            "postgresql://", "postgresql+psycopg://", 1
        )

    @model_validator(mode="after")
    def _heartbeat_within_stale_timeout(self) -> "Settings":
        # A worker that beats less often than this would see its own live jobs taken over.
        if self.job_stale_timeout < 2 * self.job_heartbeat_interval:
            raise ValueError(
                f"job_stale_timeout ({self.job_stale_timeout.total_seconds():g} s) must be at least twice "
                f"job_heartbeat_interval ({self.job_heartbeat_interval.total_seconds():g} s)"
            )
        return self

    @field_validator("broker_url")
    @classmethod
    def _mqtt_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("mqtt://", "mqtts://")):
            raise ValueError(f"broker_url must start with mqtt:// or mqtts://, not {value[:40]!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _events_backoff_order(self) -> "Settings":
        if self.events_retry_backoff_max < self.events_retry_backoff:
            raise ValueError("events_retry_backoff_max must not be shorter than events_retry_backoff")
        return self

    @model_validator(mode="after")
    def _absolute_paths(self) -> "Settings":
        self.home = self.home.resolve()
        if not self.var_dir.is_absolute():
            self.var_dir = self.home / self.var_dir
        return self

    @property
    def notebook_folder(self) -> Path:
        """The notebooks that are processes: ``notebook_dir`` or the project's ``notebooks/``."""
        if self.notebook_dir is None:
            return shipped_folder("notebooks")
        return self.notebook_dir if self.notebook_dir.is_absolute() else self.home / self.notebook_dir

    @property
    def embedded_database(self) -> bool:
        """True when no server is configured and a private PostgreSQL is used."""
        return self.database_url is None

    @property
    def pgdata_dir(self) -> Path:
        """Data folder of the embedded PostgreSQL."""
        return self.var_dir / "pgdata"

    @property
    def bucket_root(self) -> str:
        """The bucket as a path for its fsspec filesystem (absolute for a local folder)."""
        protocol, _, path = self.bucket_url.partition("://")
        if protocol == "file":
            local = Path(path)
            return str(local if local.is_absolute() else self.home / local)
        return path

    @property
    def bucket_protocol(self) -> str:
        """fsspec protocol of the bucket (file, s3 or memory)."""
        return self.bucket_url.partition("://")[0]

    def as_environment(self) -> dict[str, str]:
        """The ``OPENCDMS_*`` variables that rebuild these settings in a child process.

        For kernels and servers started on this installation's behalf; secrets are included,
        so pass the result as a process environment, never into a saved file or a notebook.
        """
        environment: dict[str, str] = {}
        for name, value in self.model_dump(exclude_none=True).items():
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            # pydantic-settings reads a list from its variable as JSON.
            text = json.dumps(value) if isinstance(value, list) else str(value)
            environment[f"{self.model_config['env_prefix']}{name.upper()}"] = text
        return environment


def shipped_folder(name: str) -> Path:
    """A folder that ships with the code (``notebooks``, ``catalog``): in the source tree the package
    runs from, else where ``pip install .`` put it (``<prefix>/share/opencdms/<name>``, the prefix
    being the one the package is installed under, or this interpreter's)."""
    in_tree = PROJECT_FOLDER / name
    if in_tree.is_dir():
        return in_tree
    package = Path(__file__).resolve().parent  # <prefix>/lib/pythonX.Y/site-packages/opencdms_kernel
    # parents[3] exists only for an installed package (an editable one may sit near /).
    prefixes = [package.parents[3]] if len(package.parents) > 3 else []
    for prefix in (*prefixes, Path(sys.prefix)):
        installed = prefix / "share" / "opencdms" / name
        if installed.is_dir():
            return installed
    return in_tree


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings from the environment, with explicit overrides."""
    return Settings(**overrides)  # type: ignore[arg-type]
