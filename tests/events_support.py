"""Helpers of the event service tests (tests/test_events_*.py): real brokers, the real API, workers.

- Mosquitto on 127.0.0.1:1883 (the machine's), or one of our own (``MosquittoProcess``: its own
  port, persistence and queue limits, stopped with SIGTERM or kill -9 and started again);
- the embedded broker (amqtt) in a thread;
- ``opencdms api serve`` as a process (api_support.start_api; its configuration has the
  ``ingest-ledger`` collection the sweep reads);
- ``opencdms worker`` and ``opencdms events serve`` as processes.

Every test uses a topic root and client ids of its own, so parallel runs do not collide.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import nbformat
import pytest
import sqlalchemy as sa

import api_support
from api_support import RunningApi, free_port, stop_api
from conftest import IN_CI, PostgresServer, service_missing
from opencdms_kernel.bucket import Bucket, open_bucket
from opencdms_kernel.settings import Settings

TESTS = Path(__file__).resolve().parent
MOSQUITTO_HOST, MOSQUITTO_PORT = "127.0.0.1", 1883
# Settings of every service under test: fast retries and polling (the defaults are for people).
FAST = {"events_retry_backoff": 0.2, "events_retry_backoff_max": 2.0, "events_job_poll_interval": 0.3,
        "events_sweep_interval": 0, "events_status_port": 0}
# The service under test must never reach the datastore: it gets a URL nobody answers on.
NO_DATABASE = "postgresql+psycopg://nobody@127.0.0.1:9/no_database_for_the_event_service"


# --------------------------------------------------------------------------- brokers


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def require_mosquitto() -> str:
    """The machine's Mosquitto URL; skip (fail under CI=true) when it does not answer."""
    if not port_open(MOSQUITTO_HOST, MOSQUITTO_PORT):
        service_missing(f"no MQTT broker (Mosquitto) on {MOSQUITTO_HOST}:{MOSQUITTO_PORT}")
    return f"mqtt://{MOSQUITTO_HOST}:{MOSQUITTO_PORT}"


class MosquittoProcess:
    """A Mosquitto of our own on a free 127.0.0.1 port, with persistence, restartable on that port."""

    def __init__(self, folder: Path, *, max_queued: int = 100_000, autosave_seconds: int = 1) -> None:
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(executable).exists():
            service_missing("mosquitto is not installed (apt-get install mosquitto)")
        self.executable = executable
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nautosave_interval {autosave_seconds}\n"
            f"max_queued_messages {max_queued}\nmax_inflight_messages 20\nlog_dest file {folder}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> "MosquittoProcess":
        self.process = subprocess.Popen([self.executable, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open("127.0.0.1", self.port):
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'mosquitto.log').read_text()[-2000:]}")
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen in time")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=15)
        self.process = None


def mqtt_client(url: str, client_id: str | None = None, *, persistent: bool = False) -> Any:
    """A connected paho client (loop running); QoS 1 publishes are kept and re-sent across reconnects."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    host, port = url.removeprefix("mqtt://").split(":")
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:10]}",
                         protocol=mqtt.MQTTv311, clean_session=not persistent)
    client.username_pw_set("opencdms-tests")  # the embedded broker refuses anonymous clients
    client.reconnect_delay_set(1, 2)
    client.max_inflight_messages_set(50)
    client.connect(host, int(port))
    client.loop_start()
    return client


class Collector:
    """Every message under a topic filter, as (topic, payload) pairs."""

    def __init__(self, url: str, topic_filter: str) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self.client = mqtt_client(url)
        self.client.on_message = lambda client, userdata, message: self._add(message)
        self.client.on_subscribe = lambda *args: self._ready.set()
        self.client.subscribe(topic_filter, qos=1)
        assert self._ready.wait(10), "subscription not acknowledged"

    def _add(self, message: Any) -> None:
        with self._lock:
            self.messages.append((message.topic, bytes(message.payload)))

    def json(self, suffix: str = "") -> list[tuple[str, dict[str, Any]]]:
        with self._lock:
            found = [(topic, json.loads(payload)) for topic, payload in self.messages if topic.endswith(suffix)
                     or (suffix.endswith("/") and suffix in topic)]
        return found

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_all(url: str, topic: str, payloads: list[bytes], client: Any = None) -> None:
    """Publish each payload with QoS 1 and wait until the broker has them."""
    own = client is None
    client = client or mqtt_client(url)
    try:
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        if own:
            client.disconnect()
            client.loop_stop()


# --------------------------------------------------------------------------- notebooks


def notebook(title: str, parameters: str, body: str) -> nbformat.NotebookNode:
    """A process notebook: a heading, a cell tagged ``parameters``, a body."""
    book = nbformat.v4.new_notebook()
    book.metadata = {"kernelspec": {"display_name": "OpenCDMS (Python 3)", "language": "python", "name": "opencdms"},
                     "language_info": {"name": "python"}}
    book.cells = [
        nbformat.v4.new_markdown_cell(f"# {title}\n\n{title}, for the event service tests."),
        nbformat.v4.new_code_cell("from typing import Optional\nfrom opencdms_kernel.notebooks import BucketKey, YearMonth"),
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(body),
    ]
    return book


TOUCH = notebook(
    "Touch", 'object_key: BucketKey = "incoming/x.csv"  # the object [prefixes: incoming/]\n'
             'note: str = ""  # free text', "print(object_key, note)")
REPORT = notebook(
    "Report",
    'month: YearMonth = "2020-01"  # the month\nlabel: str = "report"  # a label',
    "from opencdms_kernel.bucket import open_bucket\nfrom opencdms_kernel.notebooks import record_output\n"
    "from opencdms_kernel.settings import Settings\n"
    "key = f'reports/test/{label}-{month}.html'\n"
    "open_bucket(Settings()).write_bytes(key, f'<h1>{label} {month}</h1>'.encode())\n"
    "record_output('report', key, media_type='text/html', title='The report')")


def write_notebooks(folder: Path, books: dict[str, nbformat.NotebookNode]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, book in books.items():
        nbformat.write(book, folder / f"{name}.ipynb")
    return folder


# --------------------------------------------------------------------------- API, worker, service


def child_environment(settings: Settings, extra: dict[str, str] | None = None) -> dict[str, str]:
    # Only what the test gives: no settings and no hub connection inherited from the caller.
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("OPENCDMS_", "JUPYTERHUB_"))}
    environment.update(settings.as_environment())
    environment["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent), environment.get("PYTHONPATH", "")])
    environment.update(extra or {})
    return environment


def start_api(settings: Settings, log: Path, timeout: float = 120.0, port: int | None = None,
              prefix: str = "", extra_env: dict[str, str] | None = None) -> RunningApi:
    """The API (its configuration has the ingest-ledger collection) on ``port`` (default: a
    free one), once it answers."""
    return api_support.start_api(settings, log, prefix=prefix, extra_env=extra_env, timeout=timeout, port=port)


def start_process(arguments: list[str], settings: Settings, log: Path,
                  extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``opencdms <arguments>`` as a process of its own group."""
    handle = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "opencdms_kernel.cli", *arguments], stdout=handle,
                            stderr=subprocess.STDOUT, env=child_environment(settings, extra), cwd=settings.home,
                            start_new_session=True)


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started by :func:`start_process` (its whole group)."""
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


API_PREFIX = "/services/api"
# What the event service's hub role grants it (services/hub/config.py, role opencdms-events-service).
SERVICE_SCOPES = ["access:services!service=api", "custom:opencdms:execute", "custom:opencdms:jobs"]


@dataclass
class Stack:
    """A database, a bucket, JupyterHub, the API over them as the hub's service ``api``, the event
    service's hub token and (optionally) a worker."""

    home: Path
    settings: Settings
    api: RunningApi
    server: PostgresServer
    database: str
    token: str
    hub_environment: dict[str, str]
    hub_context: Any
    worker: subprocess.Popen[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bucket(self) -> Bucket:
        return open_bucket(self.settings)

    def service_settings(self, broker_url: str, root: str, **overrides: Any) -> Settings:
        """Settings of an event service over this stack (no database URL it could use)."""
        values = {**self.settings.model_dump(), **FAST, "database_url": NO_DATABASE, "broker_url": broker_url,
                  "events_topic_root": root, "events_api_url": self.api.url, "events_api_token": self.token,
                  "events_client_id": f"{root}-svc", "events_share_group": root, **overrides}
        return Settings(**values)

    def start_worker(self) -> None:
        self.worker = start_process(["worker", "--concurrency", "2"], self.settings, self.home / "worker.log")

    def jobs(self, where: str = "TRUE", **parameters: Any) -> list[dict[str, Any]]:
        """Rows of the job table (the test reads the database; the service never does)."""
        engine = sa.create_engine(self.settings.database_url)  # type: ignore[arg-type]
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.text(f"SELECT * FROM job WHERE {where} ORDER BY created_at"),
                                          parameters).mappings().all()
        finally:
            engine.dispose()
        return [dict(row) for row in rows]

    def start_api(self, log: Path, port: int | None = None) -> RunningApi:
        """Another API process over this stack (the same hub identity)."""
        return start_api(self.settings, log, port=port, prefix=API_PREFIX, extra_env=self.hub_environment)

    def close(self) -> None:
        try:
            if self.worker is not None:
                stop_process(self.worker)
            stop_api(self.api.process)
        finally:
            self.hub_context.__exit__(None, None, None)
            self.server.drop(self.database)


def open_stack(request: pytest.FixtureRequest, home: Path, notebooks: dict[str, nbformat.NotebookNode] | None,
               *, worker: bool = False, bucket_settings: dict[str, Any] | None = None) -> Stack:
    """A fresh database on the external PostgreSQL (the embedded one without it), the API, a worker."""
    server: PostgresServer | None = request.getfixturevalue("external_server")
    if server is None:
        if IN_CI:
            pytest.fail("service missing in CI: external PostgreSQL")
        server = request.getfixturevalue("embedded_server")
    assert server is not None
    name = server.new_database()
    values: dict[str, Any] = {"home": home, "database_url": server.url_of(name),
                              "bucket_url": f"file://{home / 'bucket'}", "job_heartbeat_interval": 1,
                              "job_stale_timeout": 30}
    if notebooks is not None:
        values["notebook_dir"] = write_notebooks(home / "notebooks", notebooks)
    values.update(bucket_settings or {})
    settings = Settings(**values)
    hub, context, hub_environment, port = hub_for_api(home)
    try:
        api = start_api(settings, home / "api.log", port=port, prefix=API_PREFIX, extra_env=hub_environment)
        hub.create_user("eventservice", "scientist")
        token = hub.token_for("eventservice", scopes=SERVICE_SCOPES)
    except BaseException:
        context.__exit__(None, None, None)
        server.drop(name)
        raise
    stack = Stack(home, settings, api, server, name, token, hub_environment, context, extra={"hub": hub})
    if worker:
        stack.start_worker()
    return stack


def hub_for_api(home: Path) -> tuple[Any, Any, dict[str, str], int]:
    """A real JupyterHub (tests/support/hub.py) with the API registered as its service ``api``."""
    from opencdms_kernel.hub import proxy_command
    from support.hub import started_hub

    if not Path(proxy_command()[0]).exists():
        service_missing("configurable-http-proxy is not installed (make install): the API needs a hub to run processes")
    port = free_port()
    folder = home / "hub"
    folder.mkdir(exist_ok=True)
    context = started_hub(folder, external_services={"api": f"http://127.0.0.1:{port}"})
    hub = context.__enter__()
    environment = {"JUPYTERHUB_API_URL": hub.hub_api_url, "JUPYTERHUB_API_TOKEN": hub.service_tokens["api"],
                   "JUPYTERHUB_SERVICE_PREFIX": f"{API_PREFIX}/"}
    return hub, context, environment, port


def write_routes(folder: Path, text: str) -> Path:
    path = folder / f"routes-{uuid.uuid4().hex[:8]}.yml"
    path.write_text(text)
    return path


def unique_root() -> str:
    """A topic root (and share group) of one test."""
    return f"t{uuid.uuid4().hex[:10]}"


def put_objects(bucket: Bucket, keys: list[str], content: Callable[[str], bytes] | None = None) -> list[bytes]:
    """Write objects and return their MinIO-format notifications (the test plays MinIO)."""
    from services.events.messages import bucket_notification

    payloads = []
    for key in keys:
        data = content(key) if content else f"station,element,time,value\n# {key}\n".encode()
        bucket.write_bytes(key, data)
        payloads.append(bucket_notification("bucket", key, hashlib.md5(data).hexdigest(), len(data)))
    return payloads


def wait_until(predicate: Callable[[], Any], timeout: float = 60, every: float = 0.2,
               message: str | Callable[[], str] = "") -> Any:
    """Poll ``predicate`` until it is truthy; AssertionError after ``timeout`` seconds (``message``
    may be a function, called then, to say what the state was)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            said = message() if callable(message) else message
            raise AssertionError(f"not within {timeout} s: {said or predicate}")
        time.sleep(every)


def events_service(settings: Settings, routes_path: Path, **kwargs: Any) -> Any:
    """An EventService in this process over ``settings`` (tests stop it)."""
    from services.events.api_client import ApiClient
    from services.events.routes import load_routes
    from services.events.service import EventService

    return EventService(settings, load_routes(routes_path), ApiClient.from_settings(settings),
                        open_bucket(settings), **kwargs)


@pytest.fixture
def service_factory() -> Iterator[Callable[..., Any]]:
    """Start in-process services; every one started is stopped at the end of the test."""
    started: list[Any] = []

    def start(settings: Settings, routes_path: Path, **kwargs: Any) -> Any:
        start_kwargs = {name: kwargs.pop(name) for name in ("sweep_at_start", "check") if name in kwargs}
        service = events_service(settings, routes_path, **kwargs)
        started.append(service)
        service.start(**start_kwargs)
        assert service.connection is not None
        assert service.connection.subscribed.wait(30), service.connection.last_error
        return service

    yield start
    for service in started:
        service.stop()
        service.api.close()


def service_status(settings: Settings) -> dict[str, Any] | None:
    """The status document of a service process (None while it does not answer)."""
    try:
        return httpx.get(f"http://127.0.0.1:{settings.events_status_port}/status.json", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return None


def wait_subscribed(settings: Settings, process: subprocess.Popen[bytes], timeout: float = 60) -> dict[str, Any]:
    """Wait until a service process's subscriptions are acknowledged by the broker."""
    def ready() -> dict[str, Any] | None:
        assert process.poll() is None, f"the service exited with {process.returncode}"
        status = service_status(settings)
        return status if status and status["broker"]["subscribed"] else None

    return wait_until(ready, timeout, message="the event service subscribed")
