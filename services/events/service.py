"""The event service: messages and schedules in, process runs through the API out.

Exactly-once effects over at-least-once delivery:

- every run has an **idempotency key** derived from what caused it (route + object key + ETag;
  schedule + fire time; parent job + chain step; route + event), so a message delivered twice,
  an object both notified and swept, or two replicas firing one schedule make one job;
- a message is **acknowledged only after the API accepted** every run it asks for (or after a
  poison message's dead letter was written); a transient failure (API away, 5xx, bucket away)
  is retried with exponential backoff without acknowledging, so a crash at any point leaves the
  message with the broker, which delivers it again;
- a **poison message** (not JSON, missing fields, no route for its topic, a template without a
  value, parameters the API refuses) becomes a **dead letter**: a JSON record in the bucket
  under ``deadletters/`` (with the error) and a message on ``<root>/deadletter``; the service
  goes on.  The service holds no database credentials.

Jobs the service asked for are **followed** (the API's job list, polled every
``events_job_poll_interval``): each status change is published on ``<root>/jobs/<id>``, a
finished ingest on ``<root>/events/ingested``, each recorded output on
``<root>/events/product``, and a successful job's chain steps are submitted.  A job with a chain
is also written to the bucket (``events/follow/<job id>.json``) before its message is
acknowledged, so a restart resumes the chain.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import queue
import threading
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from opencdms_kernel.bucket import Bucket
from opencdms_kernel.settings import Settings
from services.events.api_client import FINISHED, AcceptedJob, ApiClient
from services.events.broker import broker_address
from services.events.errors import PoisonMessageError, RequestRefusedError, RoutesError, TransientError
from services.events.messages import (
    ObjectEvent,
    chain_run_key,
    dead_letter_message,
    demand_run_key,
    event_run_key,
    job_status_message,
    now_stamp,
    object_run_key,
    parse_bucket_notification,
    parse_event,
    schedule_run_key,
)
from services.events.mqtt import Delivery, MqttConnection, Protocol
from services.events.routes import ChainStep, Route, RoutesConfig, Schedule, Source, fire_values, render, topic_matches
from services.events.schedules import Clock, Scheduler, SystemClock, next_fire
from services.events.sweep import Fingerprints, SweepResult, sweep

log = logging.getLogger(__name__)

DEAD_LETTER_PREFIX = "deadletters/"
FOLLOW_PREFIX = "events/follow/"
RECENT = 200
JOB_PAGE = 500
# Pages of the newest jobs read per round while some followed job is not found yet: a page
# answers 500 jobs for the price of about 20 single lookups.
JOB_PAGES = 4
SINGLE_JOB_LOOKUPS = 50  # followed jobs older than those pages, asked for one by one per round


@dataclass(frozen=True)
class Run:
    """One process run to ask the API for, and what it came from."""

    process: str
    parameters: dict[str, Any]
    key: str
    origin: dict[str, Any]
    context: dict[str, Any] = field(default_factory=dict)
    then: tuple[ChainStep, ...] = ()
    ledger: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the persisted follow records and dead letters)."""
        return {"process": self.process, "parameters": self.parameters, "idempotency_key": self.key,
                "origin": self.origin, "context": self.context, "ledger": self.ledger,
                "then": [step.model_dump() for step in self.then]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Run":
        """The run of a persisted follow record."""
        return cls(process=data["process"], parameters=data["parameters"], key=data["idempotency_key"],
                   origin=data["origin"], context=data.get("context", {}), ledger=bool(data.get("ledger")),
                   then=tuple(ChainStep.model_validate(step) for step in data.get("then", [])))


@dataclass
class Follow:
    """A job the service follows until it finishes."""

    job_id: str
    url: str
    run: Run
    last_status: str | None = None
    persisted: bool = False
    announced: bool = False  # the ingested/product events of its success were published


@dataclass
class Counters:
    """What the service did since it started."""

    received: int = 0
    acknowledged: int = 0
    runs_requested: int = 0
    dead_letters: int = 0
    retries: int = 0
    ignored: int = 0
    status_messages: int = 0


def backoff_seconds(settings: Settings, attempt: int) -> float:
    """The wait before retry ``attempt`` (1, 2, …): doubling from ``events_retry_backoff`` up to the maximum."""
    first = settings.events_retry_backoff.total_seconds()
    longest = settings.events_retry_backoff_max.total_seconds()
    return min(longest, first * 2 ** min(attempt - 1, 30))


class EventService:
    """Routes, schedules, sweep, chains and status of one replica."""

    def __init__(
        self,
        settings: Settings,
        routes: RoutesConfig,
        api: ApiClient,
        bucket: Bucket,
        *,
        clock: Clock | None = None,
        client_id: str | None = None,
        protocol: Protocol | None = None,
    ) -> None:
        self.settings = settings
        self.routes = routes
        self.api = api
        self.bucket = bucket
        self.clock: Clock = clock or SystemClock()
        self.client_id = client_id or settings.events_client_id
        self.root = settings.events_topic_root
        if protocol is None:
            protocol = Protocol(settings.events_mqtt_protocol)
            if protocol is Protocol.AUTO and settings.broker_url is None:
                protocol = Protocol.V311  # the embedded broker (amqtt) speaks 3.1.1 only
        self.protocol = protocol
        self.counters = Counters()
        self.started_at = now_stamp()
        self._stop = threading.Event()
        self._inbox: queue.Queue[Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._follows: dict[str, Follow] = {}
        self._lookup_turn = 0  # where the single job lookups of the next round start
        self._threads: list[threading.Thread] = []
        self._fingerprints = Fingerprints()
        self._swept_dead: set[str] = set()
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.recent_jobs: dict[str, dict[str, Any]] = {}
        self.recent_dead_letters: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.last_sweep: SweepResult | None = None
        self.scheduler = Scheduler(routes.schedules, self.clock, self.fire_schedule,
                                   lambda attempt: backoff_seconds(settings, attempt))
        self.connection: MqttConnection | None = None
        self.wake_follower = threading.Event()

    # ----------------------------------------------------------------- life cycle

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def topic(self, relative: str) -> str:
        """A topic below the root."""
        return f"{self.root}/{relative}"

    def subscriptions(self) -> list[str]:
        """The topic filters to subscribe to: the routes' and the on-demand schedule runs'."""
        topics = [self.topic(relative) for relative in self.routes.topic_filters()]
        if self.routes.schedules:
            topics.append(self.topic("schedules/+/run"))
        return topics

    def check_processes(self, wait: bool = True) -> None:
        """Check that every process of routes.yml exists and takes the parameters given to it.

        RoutesError names the route or schedule and the field; the API away is waited for (with
        backoff) when ``wait``, else raised as TransientError.
        """
        attempt = 0
        while True:
            try:
                known = self.api.processes()
                inputs = {name: self.api.process_inputs(name) for name in self.routes.processes() if name in known}
                break
            except TransientError as exc:
                if not wait or self._stop.is_set():
                    raise
                attempt += 1
                pause = backoff_seconds(self.settings, attempt)
                log.warning("waiting for the API (%s); again in %.0f s", exc, pause)
                if self._stop.wait(pause):
                    return
        label = "routes.yml"
        for kind, entries in (("route", self.routes.routes), ("schedule", self.routes.schedules)):
            for entry in entries:
                self._check_run(label, f"{kind} {entry.name!r}", "", entry.process, entry.parameters, known, inputs)
                self._check_steps(label, f"{kind} {entry.name!r}", "then", entry.then, known, inputs)

    def _check_steps(self, label: str, where: str, field_path: str, steps: list[ChainStep], known: set[str],
                     inputs: dict[str, set[str]]) -> None:
        for position, step in enumerate(steps):
            here = f"{field_path}.{position}"
            self._check_run(label, where, f"{here}.", step.process, step.parameters, known, inputs)
            self._check_steps(label, where, f"{here}.then", step.then, known, inputs)

    @staticmethod
    def _check_run(label: str, where: str, prefix: str, process: str, parameters: dict[str, Any], known: set[str],
                   inputs: dict[str, set[str]]) -> None:
        if process not in known:
            raise RoutesError(label, where, f"{prefix}process",
                              f"the API has no process {process!r} (it has: {', '.join(sorted(known)) or 'none'})")
        for name in parameters:
            if name not in inputs[process]:
                raise RoutesError(label, where, f"{prefix}parameters.{name}",
                                  f"process {process!r} has no parameter {name!r} "
                                  f"(it has: {', '.join(sorted(inputs[process])) or 'none'})")

    def start(self, *, check: bool = True, sweep_at_start: bool = True, status_server: bool = False) -> None:
        """Connect to the broker and start the dispatchers, the follower, the sweep and the schedules."""
        if check:
            self.check_processes()
        if self._stop.is_set():  # asked to stop while waiting for the API
            return
        self._load_follows()
        self.connection = MqttConnection(
            broker_address(self.settings), self.client_id, self.subscriptions(), self._on_delivery,
            protocol=self.protocol, share_group=self.settings.events_share_group,
            session_expiry=self.settings.events_session_expiry.total_seconds(),
            backoff=(self.settings.events_retry_backoff.total_seconds(),
                     self.settings.events_retry_backoff_max.total_seconds()),
        )
        self.connection.start()
        for number in range(self.settings.events_concurrency):
            self._spawn(self._dispatch_loop, f"events-dispatch-{number}")
        self._spawn(self._follow_loop, "events-follow")
        self._spawn(lambda: self._sweep_loop(sweep_at_start), "events-sweep")
        if self.scheduler.schedules:
            self._spawn(lambda: self.scheduler.run(self._stop), "events-schedules")
        log.info("event service %s started: %d routes, %d schedules, subscriptions %s", self.client_id,
                 len(self.routes.routes), len(self.routes.schedules), ", ".join(self.subscriptions()))

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=self._guarded(target, name), name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _guarded(self, target: Callable[[], None], name: str) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except Exception:  # noqa: BLE001 - a dead thread must be loud; the service stops (kept as the cause)
                log.exception("event service thread %s failed; stopping the service", name)
                self._stop.set()
        return run

    def interrupt(self) -> None:
        """Ask the service to stop, from a signal handler too: a start waiting for the API gives up,
        each thread ends after its turn; :meth:`stop` then waits for them and disconnects."""
        self._stop.set()
        self.wake_follower.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop: messages not yet acknowledged stay with the broker (delivered again later)."""
        self.interrupt()
        for thread in self._threads:
            thread.join(timeout)
        if self.connection is not None:
            self.connection.stop()
        self._threads.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the service stops (True) or ``timeout`` passes (False)."""
        return self._stop.wait(timeout)

    # ----------------------------------------------------------------- messages in

    def _on_delivery(self, delivery: Delivery) -> None:
        with self._lock:
            self.counters.received += 1
        self._inbox.put(delivery)

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self.handle(delivery)

    def handle(self, delivery: Delivery) -> bool:
        """Route one delivery, retrying transient failures; acknowledge it when done.  False when
        stopped first (the message stays unacknowledged)."""
        attempt = 0
        while True:
            try:
                self.route_message(delivery.topic, delivery.payload)
                break
            except TransientError as exc:
                attempt += 1
                pause = backoff_seconds(self.settings, attempt)
                with self._lock:
                    self.counters.retries += 1
                self._event("retry", topic=delivery.topic, reason=str(exc), wait=pause)
                log.warning("message on %s: %s; retry %d in %.1f s (not acknowledged)", delivery.topic, exc,
                            attempt, pause)
                if self._stop.wait(pause):
                    return False
        assert self.connection is not None
        if self.connection.ack(delivery):
            with self._lock:
                self.counters.acknowledged += 1
        else:
            log.info("message on %s handled, but its connection is gone: the broker delivers it again "
                     "(the same job is answered)", delivery.topic)
        return True

    def route_message(self, topic: str, payload: bytes) -> None:
        """Ask for every run a message calls for.  Poison parts become dead letters; TransientError
        leaves the message to be retried whole (runs already accepted are answered again by key)."""
        relative = topic[len(self.root) + 1:] if topic.startswith(self.root + "/") else None
        if relative is None:
            self.dead_letter(f"topic {topic!r} is not below {self.root}/", topic, payload, {"kind": "message"})
            return
        levels = relative.split("/")
        if len(levels) == 3 and levels[0] == "schedules" and levels[2] == "run":
            self._on_demand(levels[1], topic, payload)
            return
        routes = [route for route in self.routes.routes if topic_matches(route.topic, relative)]
        if not routes:
            self.dead_letter(f"no route for topic {relative!r}", topic, payload, {"kind": "message"})
            return
        object_routes = [route for route in routes if route.source is Source.OBJECT]
        event_routes = [route for route in routes if route.source is Source.EVENT]
        if object_routes:
            try:
                events = parse_bucket_notification(payload)
            except PoisonMessageError as exc:
                self.dead_letter(exc.reason, topic, payload, {"kind": "notification"})
                events = []
            for event in events:
                matched = [route for route in object_routes if route.matches_key(event.key)]
                if not matched:
                    with self._lock:
                        self.counters.ignored += 1
                    self._event("ignored", topic=topic, key=event.key, reason="no route for this key")
                    continue
                for route in matched:
                    self.submit_object(route, event, topic=topic, payload=payload)
        if event_routes:
            try:
                document = parse_event(payload)
            except PoisonMessageError as exc:
                self.dead_letter(exc.reason, topic, payload, {"kind": "event"})
                return
            for route in event_routes:
                if route.matches_event(document):
                    context = {"event": document, "topic": relative, "route": {"name": route.name}}
                    self._submit_templated(route.process, route.parameters, context,
                                           event_run_key(route.name, {"topic": relative, "event": document}),
                                           {"kind": "route", "route": route.name, "topic": relative},
                                           route.then, False, topic, payload)

    def submit_object(self, route: Route, event: ObjectEvent, *, topic: str | None = None,
                      payload: bytes | None = None) -> AcceptedJob | None:
        """Ask for ``route``'s run for one object (a notification's record or a swept object)."""
        origin = {"kind": "route", "route": route.name, "object": event.key, "etag": event.etag,
                  "via": "sweep" if event.name == "opencdms:Sweep" else "notification"}
        return self._submit_templated(route.process, route.parameters, event.template_values(route.name),
                                      object_run_key(route.name, event), origin, route.then, route.ledger,
                                      topic, payload)

    def _submit_templated(self, process: str, parameters: dict[str, Any], context: dict[str, Any], key: str,
                          origin: dict[str, Any], then: list[ChainStep], ledger: bool, topic: str | None,
                          payload: bytes | None) -> AcceptedJob | None:
        try:
            rendered = render(parameters, context)
        except PoisonMessageError as exc:
            self.dead_letter(exc.reason, topic, payload, origin)
            return None
        run = Run(process, rendered, key, origin, context, tuple(then), ledger)
        return self.submit(run, topic=topic, payload=payload)

    def submit(self, run: Run, *, topic: str | None = None, payload: bytes | None = None) -> AcceptedJob | None:
        """Ask the API for one run; follow its job.  None when the API refused it (a dead letter)."""
        try:
            job = self.api.execute(run.process, run.parameters, run.key)
        except RequestRefusedError as exc:
            self.dead_letter(str(exc), topic, payload, run.origin, run)
            return None
        with self._lock:
            self.counters.runs_requested += 1
        self._follow(job, run)
        self._event("run", process=run.process, job=job.id, status=job.status, origin=run.origin)
        return job

    # ----------------------------------------------------------------- on demand, schedules

    def _on_demand(self, name: str, topic: str, payload: bytes) -> None:
        try:
            schedule = self.routes.schedule(name)
        except KeyError:
            self.dead_letter(f"no schedule called {name!r}", topic, payload, {"kind": "demand"})
            return
        try:
            document = parse_event(payload)
            request_id = document.get("id")
            if not isinstance(request_id, str) or not request_id.strip():
                raise PoisonMessageError("an on-demand run needs an 'id' (text): it makes the idempotency key")
        except PoisonMessageError as exc:
            self.dead_letter(exc.reason, topic, payload, {"kind": "demand", "schedule": name})
            return
        self.run_on_demand(schedule, request_id, topic=topic, payload=payload)

    def run_on_demand(self, schedule: Schedule, request_id: str, *, topic: str | None = None,
                      payload: bytes | None = None) -> AcceptedJob | None:
        """Run a schedule now (fire time: now), once per ``request_id``."""
        fire = self.clock.now()
        origin = {"kind": "demand", "schedule": schedule.name, "request": request_id, "fire": fire.isoformat()}
        return self._submit_templated(schedule.process, schedule.parameters, fire_values(schedule, fire),
                                      demand_run_key(schedule.name, request_id), origin, schedule.then, False,
                                      topic, payload)

    def fire_schedule(self, schedule: Schedule, fire: datetime) -> None:
        """One fire time of a schedule (TransientError: the scheduler retries it)."""
        origin = {"kind": "schedule", "schedule": schedule.name, "fire": fire.isoformat()}
        try:
            self._submit_templated(schedule.process, schedule.parameters, fire_values(schedule, fire),
                                   schedule_run_key(schedule.name, fire), origin, schedule.then, False, None, None)
        except TransientError as exc:
            log.warning("schedule %s at %s: %s; retried", schedule.name, fire.isoformat(), exc)
            raise
        self._event("schedule", schedule=schedule.name, fire=fire.isoformat())

    # ----------------------------------------------------------------- dead letters

    def dead_letter(self, reason: str, topic: str | None, payload: bytes | None, origin: dict[str, Any],
                    run: Run | None = None) -> str:
        """Keep a message (or run) no retry can route: a record in the bucket, a message on
        ``<root>/deadletter``.  TransientError when the bucket cannot be written (retried)."""
        identity = hashlib.sha256(json.dumps(
            [reason, topic, payload.hex() if payload else None, origin, run.key if run else None],
            sort_keys=True, default=str).encode()).hexdigest()[:20]
        now = datetime.now(timezone.utc)
        key = f"{DEAD_LETTER_PREFIX}{now:%Y-%m-%d}/{now:%H%M%S}-{identity}.json"
        record: dict[str, Any] = {"id": identity, "time": now.isoformat(), "reason": reason, "topic": topic,
                                  "origin": origin, "client_id": self.client_id,
                                  "run": run.as_dict() if run else None}
        if payload is not None:
            try:
                record["payload"] = payload.decode("utf-8")
            except UnicodeDecodeError:
                record["payload_base64"] = base64.b64encode(payload).decode("ascii")
        try:
            self.bucket.write_bytes(key, json.dumps(record, indent=1, default=str).encode("utf-8"))
        except OSError as exc:
            raise TransientError(f"the dead letter cannot be written to the bucket ({exc})") from exc
        self._publish("deadletter", dead_letter_message(key, reason, topic, payload))
        with self._lock:
            self.counters.dead_letters += 1
        summary = {"record": key, "reason": reason, "topic": topic, "origin": origin, "time": now.isoformat()}
        self.recent_dead_letters.appendleft(summary)
        self._event("deadletter", **summary)
        log.warning("dead letter %s: %s", key, reason)
        return key

    # ----------------------------------------------------------------- following jobs

    def _follow(self, job: AcceptedJob, run: Run) -> None:
        with self._lock:
            if job.id in self._follows:
                return
        follow = Follow(job.id, job.url, run)
        if run.then:
            # Before the message is acknowledged: a restart must still run the chain.
            record = {"job": job.id, "url": job.url, "run": run.as_dict(), "client_id": self.client_id}
            try:
                self.bucket.write_bytes(f"{FOLLOW_PREFIX}{job.id}.json", json.dumps(record, default=str).encode())
            except OSError as exc:
                raise TransientError(f"the chain of job {job.id} cannot be recorded in the bucket ({exc})") from exc
            follow.persisted = True
        with self._lock:
            self._follows.setdefault(job.id, follow)
            self.recent_jobs[job.id] = {"id": job.id, "process": run.process, "status": job.status,
                                        "origin": run.origin, "updated": now_stamp()}
            self._trim_jobs()
        self.wake_follower.set()

    def _trim_jobs(self) -> None:
        while len(self.recent_jobs) > RECENT:
            self.recent_jobs.pop(next(iter(self.recent_jobs)))

    def _load_follows(self) -> None:
        """The chains a previous run (of any replica) left unfinished: followed again."""
        try:
            keys = self.bucket.fs.find(f"{self.bucket.root}/{FOLLOW_PREFIX.rstrip('/')}")
        except FileNotFoundError:
            return
        for path in keys:
            key = path[len(self.bucket.root.rstrip('/')) + 1:]
            try:
                record = json.loads(self.bucket.read_bytes(key))
                follow = Follow(record["job"], record["url"], Run.from_dict(record["run"]), persisted=True)
            except (OSError, ValueError, KeyError) as exc:
                log.error("follow record %s cannot be read (%s); left in place", key, exc)
                continue
            self._follows.setdefault(follow.job_id, follow)
        if self._follows:
            log.info("following %d unfinished chains again", len(self._follows))

    def followed(self) -> list[str]:
        """The ids of the jobs followed now."""
        with self._lock:
            return list(self._follows)

    def _follow_loop(self) -> None:
        interval = self.settings.events_job_poll_interval.total_seconds()
        while not self._stop.is_set():
            self.wake_follower.wait(interval)
            self.wake_follower.clear()
            if self._stop.is_set():
                return
            with self._lock:
                follows = list(self._follows.values())
            if not follows:
                continue
            try:
                self.poll_jobs(follows)
            except TransientError as exc:
                log.warning("following jobs: %s", exc)
            # Let the API breathe between rounds even when woken often.
            self._stop.wait(min(interval, 0.5))

    def poll_jobs(self, follows: list[Follow]) -> None:
        """One round: the status of every followed job; publish changes; finish finished ones."""
        wanted = {follow.job_id for follow in follows}
        documents: dict[str, dict[str, Any]] = {}
        for page in range(JOB_PAGES):
            entries = self.api.jobs(JOB_PAGE, page * JOB_PAGE)
            documents.update((str(entry.get("jobID")), entry) for entry in entries)
            if len(entries) < JOB_PAGE or wanted <= documents.keys():
                break
        missing = [follow for follow in follows if follow.job_id not in documents]
        if len(missing) > SINGLE_JOB_LOOKUPS:
            # Each round asks for other ones, so that no old job waits behind others for ever.
            start = self._lookup_turn % len(missing)
            missing = (missing[start:] + missing[:start])[:SINGLE_JOB_LOOKUPS]
            self._lookup_turn += SINGLE_JOB_LOOKUPS
        for follow in missing:
            try:
                documents[follow.job_id] = self.api.job(follow.job_id)
            except RequestRefusedError as exc:
                if exc.status == 404:
                    log.warning("job %s is gone from the API; no longer followed", follow.job_id)
                    self._unfollow(follow)
        for follow in follows:
            document = documents.get(follow.job_id)
            if document is None:
                continue
            status = str(document.get("status"))
            if status != follow.last_status:
                follow.last_status = status
                self._publish_status(follow, document)
            if status in FINISHED:
                self._finished(follow, document)

    def _publish_status(self, follow: Follow, document: dict[str, Any]) -> None:
        job = {"id": follow.job_id, "process": document.get("processID", follow.run.process),
               "status": document.get("status"), "message": document.get("message")}
        self._publish(f"jobs/{follow.job_id}", job_status_message(job, follow.run.origin, follow.url))
        with self._lock:
            self.counters.status_messages += 1
            self.recent_jobs[follow.job_id] = {"id": follow.job_id, "process": job["process"],
                                               "status": job["status"], "origin": follow.run.origin,
                                               "message": job["message"], "updated": now_stamp()}
            self._trim_jobs()

    def _finished(self, follow: Follow, document: dict[str, Any]) -> None:
        """A followed job finished: events out, then its chain (TransientError: again next round)."""
        if document.get("status") == "successful" and not follow.announced:
            if follow.run.ledger:
                self._publish("events/ingested", {
                    "type": "ingested", "job": follow.job_id, "process": follow.run.process,
                    "object_key": (document.get("parameters") or {}).get("object_key",
                                                                         follow.run.origin.get("object")),
                    "origin": follow.run.origin, "time": now_stamp()})
            self._publish_products(follow)
            follow.announced = True
        if document.get("status") == "successful" and follow.run.then:
            context = {**follow.run.context, "parent": {
                "id": follow.job_id, "process": follow.run.process,
                "parameters": document.get("parameters") or follow.run.parameters}}
            # What the ingest loaded is read once, after the ingest, and handed down the chain.
            if "loaded" not in context and follow.run.ledger and needs_loaded(follow.run.then):
                loaded = self._loaded(follow, document)
                if loaded is not None:
                    context["loaded"] = loaded
            for position, step in enumerate(follow.run.then):
                self._chain_step(follow, position, step, context)
        self._unfollow(follow)

    def _publish_products(self, follow: Follow) -> None:
        try:
            results = self.api.job_results(follow.job_id)
        except RequestRefusedError:
            return
        for link in results.get("links", []):
            if link.get("rel") == "output":
                self._publish("events/product", {
                    "type": "product", "job": follow.job_id, "process": follow.run.process,
                    "name": link.get("name"), "key": link.get("key"), "media_type": link.get("type"),
                    "href": link.get("href"), "time": now_stamp()})

    def _chain_step(self, follow: Follow, position: int, step: ChainStep, context: dict[str, Any]) -> None:
        path = str(position) if "step" not in follow.run.origin else f"{follow.run.origin['step']}.{position}"
        root_origin = {name: value for name, value in follow.run.origin.items() if name not in ("kind", "parent", "step")}
        origin = {"kind": "chain", "parent": follow.job_id, "step": path, **root_origin}
        if step.needs_loaded:
            loaded = context.get("loaded")
            if loaded is None:
                self.dead_letter("what the ingest loaded is unknown (the API has no ingest-ledger collection)",
                                 None, None, origin)
                return
            if not loaded.get("stations"):
                self._event("chain-skipped", parent=follow.job_id, process=step.process, reason="nothing was loaded")
                return
        self._submit_templated(step.process, step.parameters, context, chain_run_key(follow.job_id, path), origin,
                               step.then, False, None, None)

    def _loaded(self, follow: Follow, document: dict[str, Any]) -> dict[str, Any] | None:
        """What the parent's ingest loaded (ledger entry of its object started at or after the job)."""
        parameters = document.get("parameters") or {}
        key = parameters.get("object_key") or follow.run.context.get("object", {}).get("key")
        if not key:
            return {"stations": []}
        entries = self.api.ledger_entries([key])
        if entries is None:
            return None
        started = document.get("started") or document.get("created")
        since = datetime.fromisoformat(started) if started else None
        candidates = [entry for entry in entries if entry.started_at is not None and (
            since is None or datetime.fromisoformat(entry.started_at) >= since)]
        if not candidates:
            return {"stations": []}
        entry = self.api.ledger_entry(max(candidate.id for candidate in candidates))
        return (entry or {}).get("loaded") or {"stations": []}

    def _unfollow(self, follow: Follow) -> None:
        with self._lock:
            self._follows.pop(follow.job_id, None)
        if follow.persisted:
            try:
                self.bucket.fs.rm(self.bucket.path(f"{FOLLOW_PREFIX}{follow.job_id}.json"))
            except FileNotFoundError:
                pass  # another replica finished the same chain first

    # ----------------------------------------------------------------- sweep

    def _sweep_loop(self, at_start: bool) -> None:
        interval = self.settings.events_sweep_interval.total_seconds()
        if not at_start and (interval == 0 or self._stop.wait(interval)):
            return
        attempt = 0
        while not self._stop.is_set():
            try:
                self.run_sweep()
                attempt = 0
            except TransientError as exc:
                attempt += 1
                pause = backoff_seconds(self.settings, attempt)
                log.warning("sweep: %s; again in %.0f s", exc, pause)
                if self._stop.wait(pause):
                    return
                continue
            if interval == 0 or self._stop.wait(interval):
                return

    def run_sweep(self) -> SweepResult:
        """One sweep of the routes' folders (TransientError: the API or bucket away)."""
        def submit(route: Route, event: ObjectEvent) -> bool:
            return self.submit_object(route, event) is not None

        try:
            result = sweep(self.bucket, self.api, self.routes.routes, self._fingerprints, submit)
        except OSError as exc:
            raise TransientError(f"the bucket cannot be listed ({exc})") from exc
        self.last_sweep = result
        self._event("sweep", **asdict(result))
        log.info("sweep: %d objects listed, %d routed, %d loaded already, %d asked for (%.2f s)", result.listed,
                 result.routed, result.done_in_ledger, result.submitted, result.seconds)
        return result

    # ----------------------------------------------------------------- out

    def _publish(self, relative: str, document: dict[str, Any]) -> None:
        if self.connection is None:
            return
        self.connection.publish(self.topic(relative), json.dumps(document, default=str).encode("utf-8"), qos=1)

    def _event(self, kind: str, **details: Any) -> None:
        self.recent_events.appendleft({"type": kind, "time": now_stamp(), **details})

    # ----------------------------------------------------------------- status

    def status(self) -> dict[str, Any]:
        """What the status page and ``opencdms events status`` show."""
        connection = self.connection
        with self._lock:
            counters = asdict(self.counters)
            jobs = sorted(self.recent_jobs.values(), key=lambda job: job["updated"], reverse=True)
            following = len(self._follows)
        next_times = self.scheduler.next_times()

        def stamp(value: datetime | None) -> str | None:
            return value.isoformat() if value is not None else None

        return {
            "client_id": self.client_id, "started": self.started_at, "topic_root": self.root,
            "broker": {
                "url": connection.address.url if connection else None,
                "connected": bool(connection and connection.connected.is_set()),
                "subscribed": bool(connection and connection.subscribed.is_set()),
                "protocol": connection.protocol.value if connection else None,
                "shared_subscriptions": bool(connection and connection.shared),
                "subscriptions": connection.subscription_filters() if connection else self.subscriptions(),
                "last_error": connection.last_error if connection else None,
            },
            "api": self.api.base, "counters": counters, "following": following, "inbox": self._inbox.qsize(),
            "schedules": [{
                "name": schedule.name, "process": schedule.process, "cron": schedule.cron,
                "timezone": schedule.timezone, "missed": schedule.missed.value,
                "next": stamp(next_times.get(schedule.name)),
                "last_fired": stamp(self.scheduler.done.get(schedule.name)),
            } for schedule in self.routes.schedules],
            "last_sweep": asdict(self.last_sweep) if self.last_sweep else None,
            "recent_events": list(self.recent_events)[:100],
            "recent_jobs": jobs[:100],
            "dead_letters": list(self.recent_dead_letters)[:50],
        }


def needs_loaded(steps: tuple[ChainStep, ...] | list[ChainStep]) -> bool:
    """Whether a step of the chain, at any depth, uses what the ingest loaded."""
    return any(step.needs_loaded or needs_loaded(step.then) for step in steps)


def schedule_overview(routes: RoutesConfig, now: datetime) -> list[dict[str, Any]]:
    """Each schedule and its next fire time (for the CLI when no service answers)."""
    overview = []
    for schedule in routes.schedules:
        upcoming = next_fire(schedule, now)
        overview.append({"name": schedule.name, "process": schedule.process, "cron": schedule.cron,
                         "timezone": schedule.timezone, "next": upcoming.isoformat() if upcoming else None})
    return overview


def request_id() -> str:
    """A new on-demand request id."""
    return uuid.uuid4().hex
