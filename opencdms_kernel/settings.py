"""One typed settings object for every part of OpenCDMS.

Built at start-up (``Settings()`` or :func:`load_settings`), never at import: a module that needs
a setting receives the object as an argument.  Every field reads an ``OPENCDMS_`` environment
variable (e.g. ``OPENCDMS_DATABASE_URL``) and has a default that serves the embedded mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

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
            environment[f"{self.model_config['env_prefix']}{name.upper()}"] = str(value)
        return environment


def shipped_folder(name: str) -> Path:
    """A folder that ships with the code (``notebooks``, ``catalog``): in the source tree the package
    runs from, else where ``pip install .`` put it (``<prefix>/share/opencdms/<name>``, the prefix
    being the one the package is installed under, or this interpreter's)."""
    in_tree = PROJECT_FOLDER / name
    if in_tree.is_dir():
        return in_tree
    package = Path(__file__).resolve().parent  # <prefix>/lib/pythonX.Y/site-packages/opencdms_kernel
    for prefix in (package.parents[3], Path(sys.prefix)):
        installed = prefix / "share" / "opencdms" / name
        if installed.is_dir():
            return installed
    return in_tree


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings from the environment, with explicit overrides."""
    return Settings(**overrides)  # type: ignore[arg-type]
