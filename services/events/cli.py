"""``opencdms events``: serve the event service, show its status, run a schedule, notify an object.

Registered on the ``opencdms`` command by one ``add_typer`` line in ``opencdms_kernel/cli.py``;
the settings are the root command's (``ctx.obj.settings``).  Nothing here imports paho or amqtt
until a command runs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opencdms_kernel.settings import Settings

events_app = typer.Typer(help="The event service: MQTT-triggered and scheduled process runs.", no_args_is_help=True)
console = Console()
log = logging.getLogger("services.events")


def _settings(ctx: typer.Context, **overrides: Any) -> Settings:
    settings: Settings = ctx.obj.settings
    wanted = {name: value for name, value in overrides.items() if value is not None}
    if wanted:
        settings = Settings(**{**settings.model_dump(), **wanted})
    return settings


def _log_to_stderr() -> None:
    """The service's log on stderr (JupyterHub and process managers collect it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.setLevel(logging.INFO)
    log.propagate = False
    log.addHandler(handler)


def _status_place(settings: Settings) -> tuple[str, int, str]:
    """Where the status page listens: the hub's service URL and prefix when the hub runs the service."""
    service_url = os.environ.get("JUPYTERHUB_SERVICE_URL")
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", settings.events_status_prefix).rstrip("/")
    if service_url:
        parts = urlsplit(service_url)
        return parts.hostname or "127.0.0.1", parts.port or 80, prefix
    return settings.events_status_host, settings.events_status_port, settings.events_status_prefix


@events_app.command("serve")
def serve_command(
    ctx: typer.Context,
    client_id: Optional[str] = typer.Option(None, help="MQTT client id of this replica (OPENCDMS_EVENTS_CLIENT_ID)."),
    routes: Optional[Path] = typer.Option(None, help="routes.yml (OPENCDMS_EVENTS_ROUTES_FILE)."),
    status_port: Optional[int] = typer.Option(None, help="Port of the status page; 0: any (OPENCDMS_EVENTS_STATUS_PORT)."),
    sweep: bool = typer.Option(True, help="Sweep incoming/ at start (and every OPENCDMS_EVENTS_SWEEP_INTERVAL)."),
) -> None:
    """Run the event service until Ctrl-C or SIGTERM (unacknowledged messages stay with the broker)."""
    from opencdms_kernel.bucket import open_bucket
    from services.events.api_client import ApiClient
    from services.events.routes import load_routes, routes_file
    from services.events.service import EventService
    from services.events.status import HubAccess, StatusServer

    settings = _settings(ctx, events_client_id=client_id, events_routes_file=routes, events_status_port=status_port)
    _log_to_stderr()
    config = load_routes(routes_file(settings))
    # Under JupyterHub the service's own hub token is its identity towards the API.
    token = settings.events_api_token.get_secret_value() if settings.events_api_token else None
    api = ApiClient.from_settings(settings, token or os.environ.get("JUPYTERHUB_API_TOKEN"))
    service = EventService(settings, config, api, open_bucket(settings))
    stop = threading.Event()

    def on_signal(*_: object) -> None:
        stop.set()
        service.interrupt()  # also ends a start-up still waiting for the API

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    host, port, prefix = _status_place(settings)
    status_server = StatusServer(service.status, host, port, prefix, HubAccess.from_environment()).start()
    try:
        service.start(sweep_at_start=sweep)
        if not stop.is_set():
            console.print(f"event service {service.client_id}: broker {service.connection.address.url if service.connection else '?'}, "
                          f"API {api.base}, status {status_server.url}; Ctrl-C to stop", soft_wrap=True)
        while not stop.is_set() and not service.stopping:
            stop.wait(0.5)
    finally:
        service.stop()
        status_server.stop()
        api.close()
    if service.stopping and not stop.is_set():
        raise typer.Exit(1)
    console.print("event service stopped")


@events_app.command("broker")
def broker_command(ctx: typer.Context) -> None:
    """Run the embedded MQTT broker (amqtt on 127.0.0.1:OPENCDMS_EVENTS_EMBEDDED_BROKER_PORT) until
    Ctrl-C or SIGTERM: the broker of the embedded default, which the hub runs as a service when no
    OPENCDMS_BROKER_URL is set."""
    from services.events.broker import start_embedded_broker

    settings = _settings(ctx)
    _log_to_stderr()
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with start_embedded_broker(settings) as broker:
        console.print(f"embedded MQTT broker on {broker.url}; Ctrl-C to stop", soft_wrap=True)
        stop.wait()
    console.print("embedded MQTT broker stopped")


@events_app.command("status")
def status_command(
    ctx: typer.Context,
    url: Optional[str] = typer.Option(None, help="Status URL of a running service (default: from the settings)."),
    as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
) -> None:
    """Show a running service's status; without one, the schedules and the latest dead letters."""
    import httpx

    from services.events.routes import load_routes, routes_file
    from services.events.service import schedule_overview

    settings = _settings(ctx)
    host, port, prefix = _status_place(settings)
    target = (url or f"http://{host}:{port}{prefix}").rstrip("/") + "/status.json"
    # Under a hub the page wants a hub token with access to the event service (a person's own).
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    headers = {"Authorization": f"token {token}"} if token else {}
    try:
        answer = httpx.get(target, timeout=5, headers=headers)
        status = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        status = None
    if status is None:
        config = load_routes(routes_file(settings))
        offline = {"running": False, "status_url": target,
                   "schedules": schedule_overview(config, datetime.now(timezone.utc)),
                   "dead_letters": _latest_dead_letters(settings)}
        if as_json:
            console.print_json(json.dumps(offline, default=str))
        else:
            console.print(f"[yellow]no event service answers at {escape(target)}[/yellow]", soft_wrap=True)
            _print_schedules(offline["schedules"])
            _print_dead_letters(offline["dead_letters"])
        raise typer.Exit(1)
    if as_json:
        console.print_json(json.dumps(status, default=str))
        return
    broker = status["broker"]
    console.print(f"event service {escape(status['client_id'])}: broker {escape(str(broker['url']))} "
                  f"(MQTT {broker['protocol']}, {'connected' if broker['connected'] else '[red]not connected[/red]'}"
                  f"{', shared' if broker['shared_subscriptions'] else ''}); API {escape(status['api'])}", soft_wrap=True)
    counters = status["counters"]
    console.print(", ".join(f"{name.replace('_', ' ')} {value}" for name, value in counters.items()))
    _print_schedules(status["schedules"])
    table = Table(title="Recent jobs")
    for column in ("updated", "process", "status", "origin", "job"):
        table.add_column(column)
    for job in status["recent_jobs"][:20]:
        origin = job.get("origin") or {}
        table.add_row(job["updated"][:19], job["process"], job["status"],
                      escape(str(origin.get("object") or origin.get("schedule") or origin.get("kind"))), job["id"])
    console.print(table)
    _print_dead_letters(status["dead_letters"])


def _latest_dead_letters(settings: Settings, count: int = 10) -> list[dict[str, Any]]:
    from opencdms_kernel.bucket import open_bucket
    from services.events.service import DEAD_LETTER_PREFIX

    bucket = open_bucket(settings)
    try:
        paths = sorted(bucket.fs.find(f"{bucket.root}/{DEAD_LETTER_PREFIX.rstrip('/')}"))[-count:]
    except FileNotFoundError:
        return []
    letters = []
    for path in reversed(paths):
        key = path[len(bucket.root.rstrip("/")) + 1:]
        try:
            record = json.loads(bucket.read_bytes(key))
        except (OSError, ValueError):
            continue
        letters.append({"time": record.get("time"), "reason": record.get("reason"), "topic": record.get("topic"),
                        "record": key})
    return letters


def _print_schedules(schedules: list[dict[str, Any]]) -> None:
    table = Table(title="Schedules")
    for column in ("name", "process", "cron", "time zone", "next"):
        table.add_column(column)
    for entry in schedules:
        table.add_row(entry["name"], entry["process"], entry.get("cron") or "on demand", entry["timezone"],
                      entry.get("next") or "")
    console.print(table)


def _print_dead_letters(letters: list[dict[str, Any]]) -> None:
    table = Table(title="Dead letters")
    for column in ("time", "reason", "record"):
        table.add_column(column)
    for entry in letters[:20]:
        table.add_row(str(entry.get("time", ""))[:19], escape(str(entry.get("reason"))), escape(str(entry.get("record"))))
    console.print(table)


@events_app.command("run")
def run_command(
    ctx: typer.Context,
    schedule: str = typer.Argument(..., help="Name of a schedule of routes.yml (e.g. normals)."),
    request: Optional[str] = typer.Option(None, "--id", help="Request id (the same id never runs twice)."),
) -> None:
    """Run a schedule now, through the API (no broker needed)."""
    from services.events.api_client import ApiClient
    from services.events.messages import demand_run_key
    from services.events.routes import fire_values, load_routes, render, routes_file
    from services.events.service import request_id

    settings = _settings(ctx)
    config = load_routes(routes_file(settings))
    try:
        entry = config.schedule(schedule)
    except KeyError:
        known = ", ".join(item.name for item in config.schedules) or "none"
        console.print(f"[red]no schedule {escape(schedule)!r} in routes.yml (known: {escape(known)})[/red]")
        raise typer.Exit(2) from None
    parameters = render(entry.parameters, fire_values(entry, datetime.now(timezone.utc)))
    api = ApiClient.from_settings(settings)
    try:
        job = api.execute(entry.process, parameters, demand_run_key(entry.name, request or request_id()))
    finally:
        api.close()
    console.print(f"{entry.process}: job {job.id} {job.status} ({job.url})", soft_wrap=True)


@events_app.command("notify")
def notify_command(
    ctx: typer.Context,
    keys: list[str] = typer.Argument(..., help="Object keys of the bucket (e.g. incoming/aws/x.csv)."),
    topic: str = typer.Option("bucket", help="Topic below OPENCDMS_EVENTS_TOPIC_ROOT."),
) -> None:
    """Publish bucket notifications (MinIO's format) for objects, as MinIO would (folder buckets send none)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from opencdms_kernel.bucket import bucket_key_problem, open_bucket
    from services.events.broker import broker_address
    from services.events.messages import bucket_notification
    from services.events.sweep import Fingerprints

    settings = _settings(ctx)
    bucket = open_bucket(settings)
    fingerprints = Fingerprints()
    payloads = []
    for key in keys:
        if problem := bucket_key_problem(key):
            console.print(f"[red]{escape(problem)}[/red]")
            raise typer.Exit(2)
        try:
            etag, size = fingerprints.object_etag(bucket, key)
        except FileNotFoundError:
            console.print(f"[red]no object {escape(key)!r} in the bucket[/red]")
            raise typer.Exit(2) from None
        name = bucket.root.split("/")[0] if bucket.protocol == "s3" else "bucket"
        payloads.append(bucket_notification(name, key, etag, size))
    address = broker_address(settings)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{settings.events_client_id}-notify-{os.getpid()}",
                         protocol=mqtt.MQTTv311)
    if address.username:
        client.username_pw_set(address.username, address.password)
    if address.tls:
        client.tls_set()
    client.connect(address.host, address.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(f"{settings.events_topic_root}/{topic}", payload, qos=1).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()
    console.print(f"{len(payloads)} notification(s) published on {settings.events_topic_root}/{topic}")


@events_app.command("check")
def check_command(ctx: typer.Context) -> None:
    """Validate routes.yml, and its processes and parameters against the API when it answers."""
    from services.events.api_client import ApiClient
    from services.events.errors import TransientError
    from services.events.routes import load_routes, routes_file
    from services.events.service import EventService
    from opencdms_kernel.bucket import open_bucket

    settings = _settings(ctx)
    path = routes_file(settings)
    config = load_routes(path)
    api = ApiClient.from_settings(settings)
    try:
        EventService(settings, config, api, open_bucket(settings)).check_processes(wait=False)
        checked = "and its processes and parameters (API)"
    except TransientError as exc:
        checked = f"(the API was not checked: {exc})"
    finally:
        api.close()
    console.print(f"{path}: {len(config.routes)} routes, {len(config.schedules)} schedules valid {checked}",
                  soft_wrap=True)
