"""The event service against real brokers (Mosquitto on 127.0.0.1:1883, the embedded amqtt) and the
real API: one job per object however often it is announced, nothing lost while the service is
down or killed, poison messages kept as dead letters, replicas sharing one subscription, the
sweep, the API away.  The jobs are only recorded here (no worker): the job table is what shows
that each object was asked for exactly once; test_events_pipeline.py runs the notebooks."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import sqlalchemy as sa

from api_support import free_port, stop_api
from events_support import (
    API_PREFIX,
    REPORT,
    TOUCH,
    Collector,
    Stack,
    mqtt_client,
    open_stack,
    publish_all,
    put_objects,
    require_mosquitto,
    service_status,
    service_factory,  # noqa: F401 - a fixture
    start_process,
    stop_process,
    unique_root,
    wait_subscribed,
    wait_until,
    write_routes,
)
from opencdms_kernel.settings import Settings
from services.events.broker import EmbeddedBroker

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROUTES = """
routes:
  - name: touch
    topic: bucket
    key: "incoming/**/*.csv"
    process: touch
    parameters: {object_key: "{object.key}", note: "{object.stem}"}
  - name: wrong-prefix
    topic: bucket
    key: "uploads/*.csv"
    process: touch
    parameters: {object_key: "{object.key}"}
    sweep: false
  - name: sized
    topic: sized
    key: "incoming/*.csv"
    process: touch
    parameters: {object_key: "{object.key}", note: "{object.size}"}
"""


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opened = open_stack(request, tmp_path_factory.mktemp("events-service"), {"touch": TOUCH, "report": REPORT})
    try:
        yield opened
    finally:
        opened.close()


# The embedded brokers started by ``broker_url``, by URL (a test asks one about its sessions).
_EMBEDDED: dict[str, EmbeddedBroker] = {}


@pytest.fixture(params=["mosquitto", "embedded"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each broker: the machine's Mosquitto (MQTT v5), the embedded amqtt (3.1.1)."""
    if request.param == "mosquitto":
        yield require_mosquitto()
        return
    broker = EmbeddedBroker(free_port()).start()
    _EMBEDDED[broker.url] = broker
    try:
        yield broker.url
    finally:
        del _EMBEDDED[broker.url]
        broker.stop()


def _objects_jobs(stack: Stack, root: str) -> list[dict[str, Any]]:
    return stack.jobs("idempotency_key LIKE 'events:object:%' AND parameters->>'object_key' LIKE :prefix",
                      prefix=f"incoming/{root}/%")


def _keys(count: int, root: str) -> list[str]:
    return [f"incoming/{root}/file-{number:03d}.csv" for number in range(count)]


def test_the_same_notification_twice_and_the_same_upload_twice_give_one_job(
        stack: Stack, broker_url: str, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    root = unique_root()
    settings = stack.service_settings(broker_url, root, events_routes_file=write_routes(tmp_path, ROUTES))
    collector = Collector(broker_url, f"{root}/#")
    service = service_factory(settings, settings.events_routes_file, sweep_at_start=False)
    (key,) = _keys(1, root)
    (notification,) = put_objects(stack.bucket, [key])
    publish_all(broker_url, f"{root}/bucket", [notification, notification])
    # The same content uploaded again: MinIO announces it again, with the same ETag.
    (again,) = put_objects(stack.bucket, [key])
    publish_all(broker_url, f"{root}/bucket", [again])
    wait_until(lambda: service.counters.acknowledged == 3, 30, message="three messages acknowledged")
    jobs = _objects_jobs(stack, root)
    assert len(jobs) == 1 and jobs[0]["parameters"] == {"object_key": key, "note": "file-000"}
    assert jobs[0]["status"] == "accepted" and jobs[0]["trigger"] == "api"
    # A changed file is another version: one more job.
    (changed,) = put_objects(stack.bucket, [key], lambda _: b"station,element,time,value\n")
    publish_all(broker_url, f"{root}/bucket", [changed])
    wait_until(lambda: len(_objects_jobs(stack, root)) == 2, 30, message="a job for the changed file")
    # Status messages for the jobs it asked for.
    statuses = wait_until(lambda: collector.json(f"/jobs/{jobs[0]['id']}"), 20)
    assert statuses[0][1]["status"] == "accepted" and statuses[0][1]["origin"]["object"] == key
    collector.close()


def test_poison_messages_become_dead_letters_and_the_service_goes_on(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    # A replica that routed topic 'old' once: its persistent session still subscribes to it.
    earlier = write_routes(tmp_path, ROUTES + """
  - name: old
    topic: old
    key: "incoming/*.csv"
    process: touch
""")
    service = service_factory(stack.service_settings(url, root, events_routes_file=earlier), earlier,
                              sweep_at_start=False)
    service.stop()
    routes = write_routes(tmp_path, ROUTES + """
schedules:
  - name: report
    process: report
""")
    settings = stack.service_settings(url, root, events_routes_file=routes)
    collector = Collector(url, f"{root}/deadletter")
    service = service_factory(settings, routes, sweep_at_start=False)
    from services.events.messages import bucket_notification

    poison = [
        (f"{root}/bucket", b"not json at all"),
        (f"{root}/bucket", json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"object": {}}}]}).encode()),
        # The API refuses the parameters: touch takes keys under incoming/ only.
        (f"{root}/bucket", bucket_notification("bucket", f"uploads/{root}.csv", "abc", 3)),
        # The template has no value: this notification carries no size.
        (f"{root}/sized", json.dumps({"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {
            "object": {"key": f"incoming/{root}.csv", "eTag": "abc"}}}]}).encode()),
        (f"{root}/schedules/nothing/run", b'{"id": "1"}'),
        (f"{root}/schedules/report/run", b'{"no id": 1}'),
        (f"{root}/old", b'{"Records": []}'),  # no route any more for the session's old subscription
    ]
    client = mqtt_client(url)
    for topic, payload in poison:
        client.publish(topic, payload, qos=1).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()
    wait_until(lambda: service.counters.dead_letters == len(poison), 30, message="a dead letter for each")
    # Still alive: a good message after the poison ones is routed.
    (key,) = _keys(1, root)
    publish_all(url, f"{root}/bucket", put_objects(stack.bucket, [key]))
    wait_until(lambda: len(_objects_jobs(stack, root)) == 1, 30, message="the good message's job")
    assert service.counters.acknowledged == len(poison) + 1
    records = [json.loads(stack.bucket.read_bytes(topic_record))
               for topic_record in (letter["record"] for letter in service.recent_dead_letters)]
    reasons = " | ".join(record["reason"] for record in records)
    for expected in ("not JSON", "s3.object.key is missing", "is not under an allowed prefix (incoming/)",
                     "parameter 'note': must be a str, not null", "no schedule called 'nothing'",
                     "an on-demand run needs an 'id'", "no route for topic 'old'"):
        assert expected in reasons
    assert all(record["payload"] is not None for record in records)
    published = wait_until(lambda: len(collector.json()) == len(poison) and collector.json(), 10)
    assert {message["record"] for _, message in published} == {letter["record"] for letter in service.recent_dead_letters}
    collector.close()


def _serve(stack: Stack, settings: Settings, name: str, *arguments: str) -> Any:
    return start_process(["events", "serve", *arguments], settings, stack.home / f"{name}.log")


def test_files_arriving_while_the_service_is_stopped_are_all_run_once(
        stack: Stack, broker_url: str, tmp_path: Path) -> None:
    root = unique_root()
    settings = stack.service_settings(broker_url, root, events_routes_file=write_routes(tmp_path, ROUTES),
                                      events_status_port=free_port())
    embedded = _EMBEDDED.get(broker_url)
    # Mosquitto keeps a stopped client's QoS 1 messages: no sweep, the broker alone must deliver
    # all 20.  amqtt (the embedded broker) loses some of them (seen: 6 of 20 under load, after
    # it had seen the client go): there the sweep at start is the net, as in production, and the
    # test checks what the issue asks of the system — all 20 run, none twice.
    sweep = () if embedded else ("--no-sweep",)
    service = _serve(stack, settings, f"stopped-{root}", *sweep)
    wait_subscribed(settings, service)  # the session (and its subscription) exists from now on
    stop_process(service)
    if embedded:
        wait_until(lambda: not embedded.client_connected(settings.events_client_id), 30,
                   message="the embedded broker saw the service disconnect")
    keys = _keys(20, root)
    publish_all(broker_url, f"{root}/bucket", put_objects(stack.bucket, keys))
    assert _objects_jobs(stack, root) == []
    service = _serve(stack, settings, f"stopped-{root}", *sweep)
    try:
        wait_until(lambda: len(_objects_jobs(stack, root)) >= 20, 60,
                   message=lambda: f"20 jobs (status: {service_status(settings)})")
        time.sleep(1)
        jobs = _objects_jobs(stack, root)
        assert sorted(job["parameters"]["object_key"] for job in jobs) == keys
        if not embedded:
            status = wait_until(lambda: (s := service_status(settings)) and s["counters"]["acknowledged"] == 20 and s, 20)
            assert status["counters"]["dead_letters"] == 0
    finally:
        stop_process(service)


def test_a_service_killed_mid_burst_loses_nothing_and_runs_nothing_twice(stack: Stack, tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    settings = stack.service_settings(url, root, events_routes_file=write_routes(tmp_path, ROUTES),
                                      events_status_port=free_port())
    service = _serve(stack, settings, f"killed-{root}", "--no-sweep")
    wait_subscribed(settings, service)
    # Big enough that the kill lands mid-burst (the service routes hundreds a second), small
    # enough for Mosquitto's default queue of a disconnected session (1000 messages).
    burst = 400
    keys = _keys(burst, root)
    publish_all(url, f"{root}/bucket", put_objects(stack.bucket, keys))
    wait_until(lambda: len(_objects_jobs(stack, root)) >= 5, 60, every=0.05, message="the burst under way")
    stop_process(service, signal.SIGKILL)
    done_before = len(_objects_jobs(stack, root))
    service = _serve(stack, settings, f"killed-{root}", "--no-sweep")
    try:
        wait_until(lambda: len(_objects_jobs(stack, root)) >= burst, 90, message=f"{burst} jobs")
        time.sleep(1)
        counts = Counter(job["parameters"]["object_key"] for job in _objects_jobs(stack, root))
        assert set(counts) == set(keys) and set(counts.values()) == {1}
        assert done_before < burst, "the kill came after the burst: the test proved nothing"
    finally:
        stop_process(service)


def test_three_replicas_on_one_shared_subscription_handle_each_message_once(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = write_routes(tmp_path, ROUTES)
    replicas = [service_factory(stack.service_settings(url, root, events_routes_file=routes,
                                                       events_client_id=f"{root}-replica-{number}"),
                                routes, sweep_at_start=False) for number in range(3)]
    assert all(replica.connection.shared for replica in replicas)
    keys = _keys(300, root)
    publish_all(url, f"{root}/bucket", put_objects(stack.bucket, keys))
    wait_until(lambda: sum(replica.counters.acknowledged for replica in replicas) >= 300, 120,
               message="300 messages acknowledged")
    time.sleep(1)
    received = [replica.counters.received for replica in replicas]
    assert sum(received) == 300, received  # each message went to exactly one replica
    assert all(count > 0 for count in received), received
    assert sum(replica.counters.runs_requested for replica in replicas) == 300
    counts = Counter(job["parameters"]["object_key"] for job in _objects_jobs(stack, root))
    assert set(counts) == set(keys) and set(counts.values()) == {1}


def test_the_sweep_runs_what_no_notification_announced_and_leaves_what_the_ledger_has(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = write_routes(tmp_path, f"""
routes:
  - name: touch
    topic: bucket
    key: "incoming/{root}/*.csv"
    process: touch
    parameters: {{object_key: "{{object.key}}", note: "{{object.stem}}"}}
    ledger: true
""")
    keys = _keys(6, root)
    put_objects(stack.bucket, keys)
    time.sleep(0.05)
    # The ledger (as an ingest would have left it): 0 loaded, 1 skipped, 2 failed, 3 loaded before a
    # change of the file, 4 loaded with another size.
    engine = sa.create_engine(stack.settings.database_url)  # type: ignore[arg-type]
    later, earlier = "now() + interval '1 minute'", "now() - interval '1 day'"
    with engine.begin() as connection:
        for key, status, size, started in ((keys[0], "loaded", None, later), (keys[1], "skipped", None, later),
                                           (keys[2], "failed", None, later), (keys[3], "loaded", None, earlier),
                                           (keys[4], "loaded", 1, later)):
            real = stack.bucket.fs.size(stack.bucket.path(key))
            connection.execute(sa.text(
                "INSERT INTO ingest_ledger (object_key, size_bytes, checksum, status, ingested_by, started_at) "
                f"VALUES (:key, :size, 'x', :status, 'tests', {started})"),
                {"key": key, "size": size if size is not None else real, "status": status})
    engine.dispose()
    settings = stack.service_settings(url, root, events_routes_file=routes)
    service = service_factory(settings, routes, sweep_at_start=False)
    result = service.run_sweep()
    assert result.ledger_available and result.done_in_ledger == 2
    ran = {job["parameters"]["object_key"] for job in _objects_jobs(stack, root)}
    assert ran == {keys[2], keys[3], keys[4], keys[5]}
    # A notification for a swept object, and the next sweep: the same jobs.
    publish_all(url, f"{root}/bucket", put_objects(stack.bucket, [keys[5]]))
    wait_until(lambda: service.counters.acknowledged == 1, 20)
    service.run_sweep()
    assert len(_objects_jobs(stack, root)) == 4


def test_while_the_api_is_away_messages_wait_unacknowledged(stack: Stack, service_factory: Callable[..., Any],
                                                            tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    port = free_port()
    settings = stack.service_settings(url, root, events_routes_file=write_routes(tmp_path, ROUTES),
                                      events_api_url=f"http://127.0.0.1:{port}{API_PREFIX}")
    service = service_factory(settings, settings.events_routes_file, check=False, sweep_at_start=False)
    keys = _keys(3, root)
    publish_all(url, f"{root}/bucket", put_objects(stack.bucket, keys))
    wait_until(lambda: service.counters.retries >= 6, 30, message="retries while the API is away")
    assert service.counters.acknowledged == 0 and service.counters.dead_letters == 0
    api = stack.start_api(tmp_path / "api.log", port=port)
    try:
        wait_until(lambda: service.counters.acknowledged == 3, 60, message="acknowledged once the API is back")
        assert sorted(job["parameters"]["object_key"] for job in _objects_jobs(stack, root)) == keys
    finally:
        stop_api(api.process)


def test_an_on_demand_run_and_the_cli_status(stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = write_routes(tmp_path, ROUTES + """
schedules:
  - name: on-demand
    process: report
    parameters: {month: "{fire.previous_month}", label: "demand"}
""")
    settings = stack.service_settings(url, root, events_routes_file=routes)
    service = service_factory(settings, routes, sweep_at_start=False)
    request = uuid.uuid4().hex
    publish_all(url, f"{root}/schedules/on-demand/run", [json.dumps({"id": request}).encode()] * 2)
    wait_until(lambda: service.counters.acknowledged == 2, 20)
    jobs = stack.jobs("idempotency_key LIKE :key", key=f"events:demand:on-demand:%")
    assert len([job for job in jobs if job["parameters"]["label"] == "demand"]) >= 1
    assert len(stack.jobs("idempotency_key = :key", key=f"events:demand:on-demand:{_digest(request)}")) == 1
    status = service.status()
    assert status["broker"]["connected"] and status["counters"]["runs_requested"] == 2
    assert status["schedules"][0]["name"] == "on-demand" and status["schedules"][0]["next"] is None


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:40]


def test_under_the_hub_the_status_page_wants_a_token_with_access(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from services.events.status import HubAccess, StatusServer

    # The hub's variables as it gives them to a service (here: the service 'api' of the test hub).
    for name, value in stack.hub_environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JUPYTERHUB_SERVICE_NAME", "api")
    access = HubAccess.from_environment()
    assert access is not None
    server = StatusServer(lambda: {"client_id": "x"}, "127.0.0.1", 0, "/services/events", access).start()
    try:
        page = server.url + "status.json"
        assert httpx.get(page, timeout=10).status_code == 401
        assert httpx.get(page, headers={"Authorization": "token not-a-token"}, timeout=10).status_code == 401
        allowed = httpx.get(page, headers={"Authorization": f"token {stack.token}"}, timeout=10)
        assert allowed.status_code == 200 and allowed.json() == {"client_id": "x"}
        assert httpx.get(page, params={"token": stack.token}, timeout=10).status_code == 200
        without_access = stack.extra["hub"].token_for("eventservice", scopes=["custom:opencdms:execute"])
        assert httpx.get(page, headers={"Authorization": f"token {without_access}"}, timeout=10).status_code == 403
    finally:
        server.stop()
