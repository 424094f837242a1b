"""Settings: typed, validated at construction, from OPENCDMS_* variables, never at import."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from opencdms_kernel.settings import Settings


def test_defaults_serve_the_embedded_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DATABASE_URL", "BUCKET_URL", "BROKER_URL"):
        monkeypatch.delenv(f"OPENCDMS_{name}", raising=False)
    settings = Settings(home=tmp_path)
    assert settings.embedded_database
    assert settings.pgdata_dir == tmp_path / "var" / "pgdata"
    assert settings.bucket_protocol == "file"
    assert settings.bucket_root == str(tmp_path / "var" / "bucket")
    assert settings.s3_secret_access_key is None


def test_environment_variables_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENCDMS_DATABASE_URL", "postgresql://alice@db.example:5432/cdms")
    monkeypatch.setenv("OPENCDMS_BUCKET_URL", "s3://climate/data/")
    monkeypatch.setenv("OPENCDMS_S3_SECRET_ACCESS_KEY", "s3cr3t")
    settings = Settings(home=tmp_path)
    assert settings.database_url == "postgresql+psycopg://alice@db.example:5432/cdms"
    assert settings.bucket_url == "s3://climate/data"
    assert settings.bucket_root == "climate/data"
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database_url", "mysql://root@localhost/cdms", "PostgreSQL URL"),
        ("bucket_url", "ftp://server/folder", "file://, s3:// or memory://"),
        ("centre_id", "Not A Centre!", "pattern"),
    ],
)
def test_bad_values_are_refused_with_the_field_named(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(**{field: value})
    assert error.value.errors()[0]["loc"] == (field,)
    assert message in str(error.value)


def test_importing_the_kernel_reads_no_settings() -> None:
    """In a fresh interpreter (reloading modules here would leave two copies of their classes
    in this test process): an invalid setting must not stop the imports."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OPENCDMS_BUCKET_URL": "ftp://invalid"}
    imports = "import opencdms_kernel.ingest.pipeline, opencdms_kernel.cli, opencdms_kernel.catalog"
    result = subprocess.run([sys.executable, "-c", imports], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_settings_rebuild_from_their_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Settings(
        home=tmp_path,
        database_url="postgresql+psycopg://someone@127.0.0.1:5432/cdms",
        bucket_url="s3://climate/data",
        s3_endpoint_url="http://127.0.0.1:9000",
        s3_access_key_id="key",
        s3_secret_access_key="secret",
        user="clerk",
    )
    environment = original.as_environment()
    assert environment["OPENCDMS_S3_SECRET_ACCESS_KEY"] == "secret"  # the value, not '**********'
    assert "OPENCDMS_BROKER_URL" not in environment  # unset stays unset
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path.parent)
    assert Settings() == original
