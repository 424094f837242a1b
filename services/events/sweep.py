"""The sweep: objects in the bucket that no notification brought, found by listing.

A notification can be lost (broker killed before it saved its queue, a store that sends none: a
folder bucket, an S3 without notifications).  At start and every ``events_sweep_interval`` the
service lists the folders its object routes watch (``incoming/aws/`` for
``incoming/aws/*.csv``…) and compares them with the ingest ledger, read through the API
(``ingest-ledger`` collection: no database credentials here).  For a route with ``ledger: true``
an object is done when the ledger has it ``loaded`` (or ``skipped``: same content again) with
the same size, started no earlier than the object was last modified.  Every other object of a
route is submitted like a notification, with the same idempotency key (route + key + ETag), so
an object already submitted through a notification — accepted, running or finished — is
answered with its job and never runs twice.

The ETag is the listing's on S3 (what MinIO and S3 notifications carry); a folder has none, so
its MD5 is used, which is what S3 gives a single-part upload (computed once per object version:
kept per key, size and modification time).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from opencdms_kernel.bucket import Bucket
from services.events.api_client import ApiClient, LedgerEntry
from services.events.messages import ObjectEvent, normalise_etag
from services.events.routes import Route, Source, glob_prefix

log = logging.getLogger(__name__)

DONE_STATUSES = frozenset({"loaded", "skipped"})
PARTIAL_SUFFIX = ".partial"  # a folder bucket's object being written (Bucket.write_bytes)


@dataclass(frozen=True)
class ListedObject:
    """One object of a listing."""

    key: str
    size: int
    modified: datetime | None
    etag: str | None


@dataclass
class SweepResult:
    """What one sweep saw and did."""

    listed: int = 0
    routed: int = 0
    done_in_ledger: int = 0
    submitted: int = 0
    accepted: int = 0
    ledger_available: bool = True
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    seconds: float = 0.0


def sweep_prefixes(routes: list[Route]) -> list[str]:
    """The folders to list: each sweeping object route's fixed prefix, nested ones left out."""
    prefixes = sorted({glob_prefix(route.key or "") for route in routes
                       if route.source is Source.OBJECT and route.sweep})
    kept: list[str] = []
    for prefix in prefixes:
        if not any(prefix.startswith(outer) for outer in kept):
            kept.append(prefix)
    return kept


def list_objects(bucket: Bucket, prefix: str) -> list[ListedObject]:
    """Every object under ``prefix`` (recursively), without objects still being written."""
    root = bucket.root.rstrip("/")
    base = f"{root}/{prefix.rstrip('/')}" if prefix else root
    bucket.fs.invalidate_cache(base)  # s3fs keeps listings: a sweep must see the store as it is now
    try:
        found: dict[str, dict[str, Any]] = bucket.fs.find(base, detail=True)
    except FileNotFoundError:
        return []
    objects = []
    for path, info in found.items():
        if info.get("type") != "file" or not path.startswith(root + "/"):
            continue
        relative = path[len(root) + 1:]
        if relative.endswith(PARTIAL_SUFFIX):
            continue
        objects.append(ListedObject(key=relative, size=int(info.get("size") or 0), modified=_modified(info),
                                    etag=normalise_etag(info["ETag"]) if info.get("ETag") else None))
    return sorted(objects, key=lambda listed: listed.key)


def _modified(info: dict[str, Any]) -> datetime | None:
    value = info.get("LastModified", info.get("mtime", info.get("created")))
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, timezone.utc)
    return None


class Fingerprints:
    """ETags of listed objects: S3's own; a folder's computed MD5, cached per key, size and time."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, int, datetime | None], str] = {}

    def etag(self, bucket: Bucket, listed: ListedObject) -> str:
        """The object's ETag (reads a folder object once per version)."""
        if listed.etag:
            return listed.etag
        marker = (listed.key, listed.size, listed.modified)
        if marker not in self._cache:
            digest = hashlib.md5(usedforsecurity=False)
            with bucket.fs.open(bucket.path(listed.key), "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            self._cache[marker] = digest.hexdigest()
        return self._cache[marker]

    def object_etag(self, bucket: Bucket, key: str) -> tuple[str, int]:
        """The ETag and size of one object (for notifications that came without an ETag)."""
        info = bucket.fs.info(bucket.path(key))
        listed = ListedObject(key, int(info.get("size") or 0), _modified(info),
                              normalise_etag(info["ETag"]) if info.get("ETag") else None)
        return self.etag(bucket, listed), listed.size


def is_done(listed: ListedObject, entries: list[LedgerEntry]) -> bool:
    """Whether the ledger has this version of the object loaded (same size, load started after it
    was last modified)."""
    for entry in entries:
        if entry.status not in DONE_STATUSES or entry.size_bytes != listed.size:
            continue
        if listed.modified is None or entry.started_at is None:
            return True
        started = datetime.fromisoformat(entry.started_at.replace("Z", "+00:00"))
        if started >= listed.modified:
            return True
    return False


def sweep(
    bucket: Bucket,
    api: ApiClient,
    routes: list[Route],
    fingerprints: Fingerprints,
    submit: Callable[[Route, ObjectEvent], bool],
) -> SweepResult:
    """List the routes' folders, leave out what the ledger has loaded, submit the rest.

    ``submit(route, event)`` asks for the run (same idempotency key as a notification) and says
    whether the API made a new job; it raises TransientError to end the sweep (retried later).
    """
    began = time.perf_counter()
    result = SweepResult()
    sweeping = [route for route in routes if route.source is Source.OBJECT and route.sweep]
    listed: list[ListedObject] = []
    for prefix in sweep_prefixes(sweeping):
        listed += list_objects(bucket, prefix)
    result.listed = len(listed)
    wanted = [(item, [route for route in sweeping if route.matches_key(item.key)]) for item in listed]
    wanted = [(item, matched) for item, matched in wanted if matched]
    result.routed = len(wanted)
    ledger_keys = [item.key for item, matched in wanted if any(route.ledger for route in matched)]
    by_key: dict[str, list[LedgerEntry]] = {}
    if ledger_keys:
        entries = api.ledger_entries(ledger_keys)
        if entries is None:
            result.ledger_available = False
            log.warning("the API has no %s collection: the sweep asks for every object (the idempotency "
                        "keys keep runs single)", "ingest-ledger")
        else:
            for entry in entries:
                by_key.setdefault(entry.object_key, []).append(entry)
    for item, matched in wanted:
        for route in matched:
            if route.ledger and is_done(item, by_key.get(item.key, [])):
                result.done_in_ledger += 1
                continue
            try:
                etag = fingerprints.etag(bucket, item)
            except FileNotFoundError:
                continue  # gone since the listing (moved or deleted): nothing to run
            event = ObjectEvent(key=item.key, etag=etag, size=item.size, name="opencdms:Sweep",
                                time=item.modified.isoformat() if item.modified else None)
            result.submitted += 1
            if submit(route, event):
                result.accepted += 1
    result.seconds = time.perf_counter() - began
    return result
