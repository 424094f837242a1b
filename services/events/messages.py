"""Messages in and out: bucket notifications in the S3/MinIO event format, and our own events.

In: MinIO publishes one JSON document per event to MQTT (``{"EventName": …, "Key": "<bucket>/<key>",
"Records": [{"eventName": "s3:ObjectCreated:Put", "eventTime": …, "s3": {"bucket": {"name": …},
"object": {"key": <URL-encoded key>, "size": …, "eTag": …}}}]}``); AWS S3's event records have the
same ``Records`` shape.  Only object-created records start runs; others (removals, test events)
are acknowledged and left.  Anything that is not such a document is a poison message.

Out (QoS 1, below the topic root): ``jobs/<job id>`` (a job's status as it changes),
``events/ingested`` (an ingest run finished: the object and its job), ``events/product`` (a run
recorded an output: its key and media type), ``deadletter`` (a message no retry can route).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any, Mapping
from urllib.parse import quote, unquote_plus

from services.events.errors import PoisonMessageError

MAX_PAYLOAD_BYTES = 1_000_000
CREATED = "ObjectCreated"


@dataclass(frozen=True)
class ObjectEvent:
    """One object-created record of a bucket notification (or an object the sweep found)."""

    key: str
    etag: str
    size: int | None = None
    bucket: str | None = None
    name: str = "s3:ObjectCreated:Put"
    time: str | None = None

    def template_values(self, route_name: str) -> dict[str, Any]:
        """The ``object.*``, ``event.*`` and ``route.*`` values of routes' templates."""
        path = PurePosixPath(self.key)
        return {
            "object": {"key": self.key, "etag": self.etag, "size": self.size, "name": path.name,
                       "stem": path.stem, "folder": str(path.parent) + "/" if str(path.parent) != "." else ""},
            "event": {"name": self.name, "time": self.time},
            "route": {"name": route_name},
        }


def normalise_etag(etag: str) -> str:
    """An ETag as the listing and the notification both give it: no quotes, lower case."""
    return etag.strip().strip('"').lower()


def decode_json(payload: bytes) -> Any:
    """The JSON document of a message, or PoisonMessageError saying why not."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PoisonMessageError(f"the message is larger than {MAX_PAYLOAD_BYTES} bytes")
    try:
        return json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise PoisonMessageError(f"the message is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise PoisonMessageError(f"the message is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def parse_bucket_notification(payload: bytes) -> list[ObjectEvent]:
    """The object-created records of a bucket notification (possibly none: removals, test events).

    PoisonMessageError when the message is not a notification: not JSON, no ``Records`` list, a
    record without ``s3.object.key`` or ``eTag``, a key that is not text.
    """
    document = decode_json(payload)
    if not isinstance(document, dict):
        raise PoisonMessageError("a bucket notification must be a JSON object")
    if document.get("Event") == "s3:TestEvent" or document.get("EventName") == "s3:TestEvent":
        return []
    records = document.get("Records")
    if not isinstance(records, list):
        raise PoisonMessageError("a bucket notification needs a 'Records' list (S3/MinIO event format)")
    events: list[ObjectEvent] = []
    for position, record in enumerate(records):
        where = f"Records[{position}]"
        if not isinstance(record, dict):
            raise PoisonMessageError(f"{where} is not an object")
        name = record.get("eventName")
        if not isinstance(name, str):
            raise PoisonMessageError(f"{where}.eventName is missing")
        if CREATED not in name:
            continue  # removals, restores, replication: nothing to run
        s3 = record.get("s3")
        obj = s3.get("object") if isinstance(s3, dict) else None
        if not isinstance(obj, dict):
            raise PoisonMessageError(f"{where}.s3.object is missing")
        raw_key = obj.get("key")
        if not isinstance(raw_key, str) or not raw_key:
            raise PoisonMessageError(f"{where}.s3.object.key is missing or not text")
        etag = obj.get("eTag", obj.get("etag"))
        if not isinstance(etag, str) or not normalise_etag(etag):
            raise PoisonMessageError(f"{where}.s3.object.eTag is missing (it makes the idempotency key)")
        size = obj.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise PoisonMessageError(f"{where}.s3.object.size is not a byte count")
        bucket = s3.get("bucket", {}).get("name") if isinstance(s3.get("bucket"), dict) else None
        # S3 and MinIO send keys URL-encoded (a space as '+').
        events.append(ObjectEvent(key=unquote_plus(raw_key), etag=normalise_etag(etag), size=size,
                                  bucket=bucket if isinstance(bucket, str) else None, name=name,
                                  time=record.get("eventTime") if isinstance(record.get("eventTime"), str) else None))
    return events


def bucket_notification(bucket: str, key: str, etag: str, size: int, *, time: datetime | None = None,
                        event_name: str = "s3:ObjectCreated:Put") -> bytes:
    """A notification in MinIO's format for one object (what MinIO publishes to MQTT).

    For stores that send none (a folder bucket): ``opencdms events notify`` and the tests.
    """
    stamp = (time or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({
        "EventName": event_name,
        "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "", "eventTime": stamp,
            "eventName": event_name,
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "opencdms",
                   "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": quote(key, safe=""), "size": size, "eTag": etag,
                              "contentType": "application/octet-stream",
                              "sequencer": hashlib.sha256(f"{key}{etag}".encode()).hexdigest()[:16].upper()}},
        }],
    }).encode("utf-8")


def parse_event(payload: bytes) -> dict[str, Any]:
    """One of our own JSON events (a JSON object), or PoisonMessageError."""
    document = decode_json(payload)
    if not isinstance(document, dict):
        raise PoisonMessageError("an event must be a JSON object")
    return document


# --------------------------------------------------------------------------- idempotency keys


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:40]


def object_run_key(route: str, event: ObjectEvent) -> str:
    """The idempotency key of a route's run for an object: route + object key + ETag.

    The same object (same key, same content) gives the same key however it is learnt of
    (notification twice, notification and sweep, two replicas): the API returns one job.
    """
    return f"events:object:{route}:{_digest(event.key, event.etag)}"


def schedule_run_key(schedule: str, fire: datetime) -> str:
    """The idempotency key of a schedule's run: its name + the fire time (UTC): replicas agree."""
    return f"events:schedule:{schedule}:{fire.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}"


def demand_run_key(schedule: str, request_id: str) -> str:
    """The idempotency key of an on-demand run of a schedule (the request's own id)."""
    return f"events:demand:{schedule}:{_digest(request_id)}"


def chain_run_key(parent_job: str, step: str) -> str:
    """The idempotency key of a chain step: the parent job + the step's position (``0``, ``0.1``…)."""
    return f"events:chain:{parent_job}:{step}"


def event_run_key(route: str, payload: Mapping[str, Any]) -> str:
    """The idempotency key of a run for one of our events: route + the event's canonical JSON."""
    return f"events:event:{route}:{_digest(json.dumps(payload, sort_keys=True, separators=(',', ':')))}"


# --------------------------------------------------------------------------- events out


def now_stamp() -> str:
    """The current UTC time as ISO 8601 (messages' ``time``)."""
    return datetime.now(timezone.utc).isoformat()


def job_status_message(job: Mapping[str, Any], origin: Mapping[str, Any], job_url: str) -> dict[str, Any]:
    """``jobs/<id>``: a job's status, what started it (route or schedule, object) and where to read it."""
    return {
        "type": "job", "id": job.get("id"), "process": job.get("process"), "status": job.get("status"),
        "message": job.get("message"), "origin": dict(origin), "time": now_stamp(),
        "links": [{"rel": "status", "type": "application/json", "href": job_url}],
    }


def dead_letter_message(record_key: str, reason: str, topic: str | None, payload: bytes | None) -> dict[str, Any]:
    """``deadletter``: where the record of a message no retry can route is kept, and why."""
    preview = None
    if payload is not None:
        preview = payload[:500].decode("utf-8", errors="replace")
    return {"type": "deadletter", "record": record_key, "reason": reason, "topic": topic,
            "payload_preview": preview, "time": now_stamp()}
