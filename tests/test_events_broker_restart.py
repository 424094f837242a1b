"""The broker restarted in the middle of a burst of 200 files (SIGTERM, and kill -9): every file
is asked for, none twice.  A Mosquitto of the test's own (its own port, persistence saved every
second, a queue larger than the default 1,000), restarted on the same port; the test plays MinIO
with a persistent session (its unacknowledged notifications are sent again after the restart).
After kill -9 the broker may have lost what it had not saved yet: the service's sweep of
incoming/ (every few seconds here) finds those objects, with the same idempotency keys."""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pytest

from events_support import (
    TOUCH,
    MosquittoProcess,
    Stack,
    mqtt_client,
    open_stack,
    put_objects,
    service_status,
    start_process,
    stop_process,
    unique_root,
    wait_subscribed,
    wait_until,
    write_routes,
)
from api_support import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

FILES = 200


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opened = open_stack(request, tmp_path_factory.mktemp("events-broker"), {"touch": TOUCH})
    try:
        yield opened
    finally:
        opened.close()


def _jobs(stack: Stack, root: str) -> list[dict[str, Any]]:
    return stack.jobs("parameters->>'object_key' LIKE :prefix", prefix=f"incoming/{root}/%")


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_broker_restarted_in_a_burst_of_200_files(stack: Stack, tmp_path: Path, how: str) -> None:
    broker = MosquittoProcess(tmp_path / "mosquitto").start()
    root = unique_root()
    routes = write_routes(tmp_path, f"""
routes:
  - name: touch
    topic: bucket
    key: "incoming/{root}/*.csv"
    process: touch
    parameters: {{object_key: "{{object.key}}"}}
""")
    settings = stack.service_settings(broker.url, root, events_routes_file=routes, events_status_port=free_port(),
                                      events_sweep_interval=3)
    service = start_process(["events", "serve"], settings, tmp_path / "events.log")
    publisher = None
    try:
        wait_subscribed(settings, service)
        keys = [f"incoming/{root}/file-{number:03d}.csv" for number in range(FILES)]
        payloads = put_objects(stack.bucket, keys)  # in the bucket before their notifications, as with MinIO
        publisher = mqtt_client(broker.url, f"{root}-minio", persistent=True)
        infos: list[Any] = []

        def burst() -> None:
            for payload in payloads:
                infos.append(publisher.publish(f"{root}/bucket", payload, qos=1))
                time.sleep(0.02)

        sender = threading.Thread(target=burst)
        sender.start()
        wait_until(lambda: len(infos) >= FILES // 3, 30, every=0.01)
        broker.stop(getattr(signal, how))
        jobs_at_stop = len(_jobs(stack, root))
        time.sleep(1.5)
        broker.start()
        sender.join(60)
        wait_until(lambda: len(_jobs(stack, root)) >= FILES, 180, every=0.5, message=f"{FILES} jobs")
        time.sleep(4)  # a sweep and any redelivery after the last job: still one job per file
        counts = Counter(job["parameters"]["object_key"] for job in _jobs(stack, root))
        assert set(counts) == set(keys) and set(counts.values()) == {1}
        assert jobs_at_stop < FILES, "the broker was not restarted in the middle of the burst"
        status = wait_until(lambda: service_status(settings), 10)
        assert service.poll() is None and status["broker"]["connected"]
        assert status["counters"]["dead_letters"] == 0
    finally:
        if publisher is not None:
            publisher.disconnect()
            publisher.loop_stop()
        stop_process(service)
        broker.stop()
