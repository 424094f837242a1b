"""Event service benchmark: routing rate, upload-to-success latency, burst throughput.

Everything real and on 127.0.0.1: Mosquitto (127.0.0.1:1883), JupyterHub (the API needs a hub
identity to run processes: tests/support/hub.py starts one), the API as its service, ``opencdms
worker`` processes, the event service in this process; a scratch database (bench/common.py) and a
folder bucket.

1. **Latency** of a 1,000-row CSV file from its upload (write + notification) to its
   ``ingest_file`` job's success, --files files one after another (one worker, kept running:
   warm interpreter, each run in a kernel of its own that the worker started ahead); against the
   same notebook run back to back by the plain ``papermill`` command line on files of the same
   size, interleaved in the same run (after one warm-up file each, not counted).  Median and p95
   of each.  Target: event path <= 0.5 x papermill.
2. **Burst**: --burst small files uploaded at once, run by 1 worker, then by 2 (concurrency 1
   each): seconds from the first upload to the last job finished, files per second.
3. **Routing rate** (trivial notebooks, no worker; measured last): --messages bucket
   notifications published at once; messages per second from the first publish to the last acknowledgement (each one parsed,
   routed, submitted to the API with its idempotency key, its job followed).  Beside it, the
   service's own routing work alone (parse, match, key, templates; no API call) in a loop.
   Target: >= 500 messages/s — routing must never be the bottleneck.

Usage: python bench/events.py [--messages 1000] [--files 7] [--burst 200] [--skip-routing]
       [--skip-latency] [--skip-burst]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from datetime import date
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import Measurement, postgres_admin_url, report, scratch_datastore  # noqa: E402

from opencdms_kernel.bucket import open_bucket  # noqa: E402
from opencdms_kernel.db.schema import station  # noqa: E402
from opencdms_kernel.notebooks import ensure_kernel_spec  # noqa: E402
from opencdms_kernel.notebooks.execution import kernel_environment  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402
from services.events.messages import (  # noqa: E402
    ObjectEvent,
    bucket_notification,
    object_run_key,
    parse_bucket_notification,
)
from services.events.routes import parse_routes, render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BROKER = "mqtt://127.0.0.1:1883"
STATION = "0-20000-0-60001"
ROUTES = """
routes:
  - name: touch
    topic: bucket
    key: "incoming/touch/*.csv"
    process: touch
    parameters: {object_key: "{object.key}"}
  - name: daily
    topic: bucket
    key: "incoming/daily/*.csv"
    process: ingest_file
    parameters: {object_key: "{object.key}"}
    ledger: true
"""


class Days:
    """Consecutive days from 1950 on, handed out so that every file loads days of its own."""

    def __init__(self) -> None:
        self.next = date(1950, 1, 1).toordinal()

    def take(self, count: int) -> int:
        first, self.next = self.next, self.next + count
        return first


def csv_rows(rows: int, days: Days) -> bytes:
    """A long-layout CSV: ``rows`` daily values of two elements, on days no other file has."""
    lines = ["station,element,time,value"]
    first = days.take(rows // 2)
    for number in range(rows // 2):
        day = date.fromordinal(first + number).isoformat()
        lines.append(f"{STATION},TMAX,{day},{25 + number % 10 / 10:.1f}")
        lines.append(f"{STATION},TMIN,{day},{15 + number % 10 / 10:.1f}")
    return ("\n".join(lines) + "\n").encode()


def touch_notebook(folder: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    parameters = new_code_cell('object_key: BucketKey = "incoming/x.csv"  # the object [prefixes: incoming/]')
    parameters.metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=[new_markdown_cell("# Touch\n\nDoes nothing with an object."),
                                   new_code_cell("from opencdms_kernel.notebooks import BucketKey"),
                                   parameters, new_code_cell("object_key")],
                            metadata={"kernelspec": {"name": "opencdms", "display_name": "OpenCDMS (Python 3)",
                                                     "language": "python"}, "language_info": {"name": "python"}})
    nbformat.write(notebook, folder / "touch.ipynb")


def routing_alone(messages: int) -> float:
    """Seconds for the service's own routing work (no network) on ``messages`` notifications."""
    config = parse_routes(ROUTES)
    payloads = [bucket_notification("bucket", f"incoming/touch/f{n}.csv", hashlib.md5(str(n).encode()).hexdigest(), 10)
                for n in range(messages)]
    started = time.perf_counter()
    for payload in payloads:
        for event in parse_bucket_notification(payload):
            for route in config.routes:
                if route.matches_key(event.key):
                    object_run_key(route.name, event)
                    render(route.parameters, event.template_values(route.name))
    return time.perf_counter() - started


def publish(payloads: list[bytes], topic: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(200)
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(120)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_jobs(engine: sa.Engine, keys: list[str], statuses: tuple[str, ...], timeout: float = 1800) -> float:
    """Wait until every job of ``keys`` (idempotency keys) is in one of ``statuses``; the time then."""
    deadline = time.monotonic() + timeout
    query = sa.text("SELECT count(*) FROM job WHERE idempotency_key = ANY(:keys) AND status = ANY(:statuses)")
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            done = connection.execute(query, {"keys": keys, "statuses": list(statuses)}).scalar_one()
        if done >= len(keys):
            return time.perf_counter()
        time.sleep(0.02)
    raise SystemExit(f"jobs not {statuses} within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--files", type=int, default=10, help="files of the latency measurement (each path)")
    parser.add_argument("--burst", type=int, default=200)
    parser.add_argument("--skip-routing", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--skip-burst", action="store_true")
    arguments = parser.parse_args()
    # SIGTERM ends the run like Ctrl-C: the processes it started are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from events_support import SERVICE_SCOPES, hub_for_api, start_api, stop_process, start_process, API_PREFIX
    from api_support import stop_api
    from services.events.api_client import ApiClient
    from services.events.service import EventService

    ensure_kernel_spec(ROOT)
    work = Path(tempfile.mkdtemp(prefix="opencdms-bench-events-"))
    measurements: list[Measurement] = []
    ratios: list[tuple[str, float, str, float]] = []
    with postgres_admin_url() as admin_url, ExitStack() as stack:
        datastore, base = stack.enter_context(scratch_datastore(admin_url, work / "bucket"))
        notebooks = work / "notebooks"
        notebooks.mkdir()
        shutil.copy(ROOT / "notebooks" / "ingest_file.ipynb", notebooks)
        touch_notebook(notebooks)
        settings = Settings(**{**base.model_dump(), "home": work, "notebook_dir": notebooks})
        database_url = datastore.url.render_as_string(hide_password=False)
        with datastore.engine.begin() as connection:
            connection.execute(sa.insert(station).values(wigos_id=STATION, name="Bench", longitude=10.0,
                                                         latitude=5.0, elevation=10.0, timezone="UTC"))
        hub, hub_context, hub_environment, port = hub_for_api(work)
        stack.callback(hub_context.__exit__, None, None, None)
        api = start_api(settings, work / "api.log", port=port, prefix=API_PREFIX, extra_env=hub_environment)
        stack.callback(stop_api, api.process)
        hub.create_user("eventservice", "scientist")
        token = hub.token_for("eventservice", scopes=SERVICE_SCOPES)
        root = f"bench{uuid.uuid4().hex[:8]}"
        (work / "routes.yml").write_text(ROUTES)
        service_settings = Settings(**{**settings.model_dump(), "database_url": None, "broker_url": BROKER,
                                       "events_topic_root": root, "events_api_url": api.url,
                                       "events_api_token": token, "events_client_id": f"{root}-svc",
                                       "events_share_group": root, "events_routes_file": work / "routes.yml",
                                       "events_sweep_interval": 0, "events_concurrency": 8,
                                       "events_job_poll_interval": 0.5})
        service = EventService(service_settings, parse_routes(ROUTES), ApiClient.from_settings(service_settings),
                               open_bucket(settings))
        service.start(sweep_at_start=False)
        stack.callback(service.stop)
        if not service.connection or not service.connection.subscribed.wait(30):
            raise SystemExit("the event service did not subscribe (is Mosquitto on 127.0.0.1:1883?)")
        bucket = open_bucket(settings)
        days = Days()
        engine = sa.create_engine(database_url)
        stack.callback(engine.dispose)

        worker = None
        if not arguments.skip_latency or not arguments.skip_burst:
            worker = start_process(["worker", "--concurrency", "1"], settings, work / "worker.log")
            stack.callback(stop_process, worker)

        if not arguments.skip_latency:
            event_seconds: list[float] = []
            papermill_seconds: list[float] = []
            papermill = Path(sys.executable).parent / "papermill"
            environment = kernel_environment(settings, database_url=database_url)
            # Round 0 of each path is a warm-up, not counted: the worker's first job waits for the
            # kernel its pool started with it, and first imports; what is measured is the steady state.
            for number in range(arguments.files + 1):
                data = csv_rows(1000, days)
                key = f"incoming/daily/{root}-event-{number}.csv"
                started = time.perf_counter()
                bucket.write_bytes(key, data)
                etag = hashlib.md5(data).hexdigest()
                publish([bucket_notification("bucket", key, etag, len(data))], f"{root}/bucket")
                run_key = object_run_key("daily", ObjectEvent(key, etag))
                event_took = wait_jobs(engine, [run_key], ("successful", "failed")) - started
                baseline_key = f"incoming/daily/{root}-papermill-{number}.csv"
                bucket.write_bytes(baseline_key, csv_rows(1000, days))
                started = time.perf_counter()
                subprocess.run([str(papermill), str(notebooks / "ingest_file.ipynb"), str(work / "out.ipynb"),
                                "-p", "object_key", baseline_key, "-k", "opencdms", "--no-progress-bar"],
                               check=True, capture_output=True, env=environment, cwd=work)
                if number:
                    event_seconds.append(event_took)
                    papermill_seconds.append(time.perf_counter() - started)
            with engine.connect() as connection:
                failed = connection.execute(sa.text(
                    "SELECT count(*) FROM job WHERE process = 'ingest_file' AND status <> 'successful'")).scalar_one()
            if failed:
                raise SystemExit(f"{failed} ingest jobs did not succeed (see {work})")
            event = Measurement("upload -> ingest_file success (event service), files", 1, event_seconds)
            plain = Measurement("papermill CLI, ingest_file, files", 1, papermill_seconds)
            measurements += [event, plain]
            p95 = lambda values: statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]  # noqa: E731
            print(f"latency p95: event {p95(event_seconds):.2f} s, papermill {p95(papermill_seconds):.2f} s")
            ratios.append(("event path / papermill CLI (median latency)", event.median / plain.median, "<=", 0.5))
            ratios.append(("event path / papermill CLI (p95 latency)", p95(event_seconds) / p95(papermill_seconds),
                           "<=", 0.5))

        if not arguments.skip_burst:
            rates = []
            for workers in (1, 2):
                extra = [start_process(["worker", "--concurrency", "1"], settings, work / f"worker-{n}.log") for n in range(workers - 1)]
                keys, payloads = [], []
                for number in range(arguments.burst):
                    data = csv_rows(24, days)
                    key = f"incoming/daily/{root}-burst{workers}-{number}.csv"
                    bucket.write_bytes(key, data)
                    etag = hashlib.md5(data).hexdigest()
                    payloads.append(bucket_notification("bucket", key, etag, len(data)))
                    keys.append(object_run_key("daily", ObjectEvent(key, etag)))
                started = time.perf_counter()
                publish(payloads, f"{root}/bucket")
                finished = wait_jobs(engine, keys, ("successful", "failed"))
                for process in extra:
                    stop_process(process)
                burst = Measurement(f"burst of {arguments.burst} files, {workers} worker(s), files", arguments.burst,
                                    [finished - started])
                measurements.append(burst)
                rates.append(burst.rate)
            ratios.append(("burst: 2 workers / 1 worker (files per second)", rates[1] / rates[0], ">=", 1.6))

        if not arguments.skip_routing:
            # Last, with no worker running: the jobs it makes are only recorded.
            if worker is not None:
                stop_process(worker)
            alone = Measurement("routing work alone (no API), messages", arguments.messages,
                                [routing_alone(arguments.messages) for _ in range(3)])
            payloads = [bucket_notification("bucket", f"incoming/touch/{root}-{n}.csv",
                                            hashlib.md5(f"{root}{n}".encode()).hexdigest(), 10)
                        for n in range(arguments.messages)]
            before = service.counters.acknowledged
            started = time.perf_counter()
            publish(payloads, f"{root}/bucket")
            while service.counters.acknowledged - before < arguments.messages:
                time.sleep(0.01)
            routed = Measurement("routed through the API (async accept), messages", arguments.messages,
                                 [time.perf_counter() - started])
            measurements += [alone, routed]
            ratios.append(("messages/s routed through the API", routed.rate, ">=", 500))
            ratios.append(("messages/s of the routing work alone", alone.rate, ">=", 500))

    report("event service", measurements, ratios)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
