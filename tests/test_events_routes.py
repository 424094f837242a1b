"""The event service's pure parts: routes.yml, templates, messages, idempotency keys, schedules,
the sweep's ledger decision.  No broker, no API (those are test_events_service.py's)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from opencdms_kernel.settings import Settings
from services.events.errors import PoisonMessageError, RoutesError, TemplateError
from services.events.messages import (
    ObjectEvent,
    bucket_notification,
    chain_run_key,
    object_run_key,
    parse_bucket_notification,
    schedule_run_key,
)
from services.events.routes import (
    MissedPolicy,
    fire_values,
    glob_prefix,
    key_pattern,
    load_routes,
    parse_routes,
    render,
    routes_file,
    topic_matches,
)
from services.events.api_client import LedgerEntry
from services.events.schedules import ManualClock, Scheduler, latest_fire, next_fire
from services.events.sweep import ListedObject, is_done, sweep_prefixes

GOOD = """
routes:
  - name: aws
    topic: bucket
    key: "incoming/aws/*.csv"
    process: ingest_file
    parameters: {object_key: "{object.key}", mapping_key: "incoming/aws/mapping.yaml"}
    ledger: true
    then:
      - process: qc_run
        parameters: {stations: "{loaded.stations}", start: "{loaded.start}", end: "{loaded.end}"}
  - name: done
    topic: jobs/+
    source: event
    match: {status: successful, process: [ingest_file, qc_run]}
    process: archive_refresh
schedules:
  - name: monthly
    cron: "0 6 3 * *"
    timezone: Africa/Lagos
    process: monthly_report
    parameters: {month: "{fire.previous_month}"}
  - name: normals
    process: normals
"""


def test_the_shipped_routes_file_is_valid() -> None:
    config = load_routes(routes_file(Settings(home=Path("/tmp"))))
    assert {"ingest_file", "qc_run", "monthly_report", "archive_refresh", "normals"} <= config.processes()
    monthly = config.schedule("monthly-report")
    assert monthly.cron == "0 6 3 * *" and monthly.missed is MissedPolicy.RUN_ONCE
    assert config.schedule("normals").cron is None  # on demand
    assert config.route("aws-hourly").matches_key("incoming/aws/0-20000-0-60001-2024.csv")
    assert not config.route("aws-hourly").matches_key("incoming/aws/mapping.yaml")


def test_a_valid_file() -> None:
    config = parse_routes(GOOD)
    assert config.topic_filters() == ["bucket", "jobs/+"]
    assert config.route("aws").then[0].needs_loaded
    done = config.route("done")
    assert done.matches_event({"status": "successful", "process": "qc_run"})
    assert not done.matches_event({"status": "failed", "process": "qc_run"})
    assert not done.matches_event({"process": "qc_run"})


@pytest.mark.parametrize(("text", "message"), [
    ("routes: [{name: a, topic: bucket, process: p}]", "route 'a': a route of bucket objects needs 'key'"),
    ('routes: [{name: a, topic: bucket, key: "*", process: p, parameters: {k: "{objet.key}"}}]',
     "route 'a': field 'parameters.k': template {objet.key} is not known here"),
    ('routes: [{name: a, topic: bucket, key: "*", process: p, then: [{process: q, parameters: {s: "{fire.month}"}}]}]',
     "route 'a': field 'then.0.parameters.s': template {fire.month} is not known here"),
    ('schedules: [{name: s, cron: "0 6 * * *", process: p, parameters: {k: "{object.key}"}}]',
     "schedule 's': field 'parameters.k': template {object.key} is not known here"),
    ('schedules: [{name: s, cron: "61 * * * *", process: p}]', "schedule 's': field 'cron': '61 * * * *' is not a valid"),
    ('schedules: [{name: s, cron: "0 6 * *", process: p}]', "five fields"),
    ('schedules: [{name: s, cron: "0 6 * * *", timezone: Mars/Olympus, process: p}]',
     "schedule 's': field 'timezone': 'Mars/Olympus' is not an IANA time zone"),
    ("routes: [{name: a, topic: 'a/#/b', key: '*', process: p}]", "route 'a': field 'topic': '#' must be"),
    ("routes: [{name: a, topic: '$SYS/x', key: '*', process: p}]", "route 'a': field 'topic'"),
    ("routes: [{name: a, topic: b, key: '*', process: 'no good'}]", "route 'a': field 'process'"),
    ("routes: [{name: a, topic: b, key: '*', process: p, extra: 1}]", "route 'a': field 'extra'"),
    ("routes: [{name: a, topic: b, key: '*', process: p}, {name: a, topic: c, key: '*', process: p}]",
     "route 'a': field 'name': another route is called 'a'"),
    ("routes: [{name: a, topic: b, source: event, key: '*', process: p}]", "an event route filters with 'match'"),
    ("routes: [{topic: b, key: '*', process: p}]", "route #1: field 'name'"),
    ("routes: {a: 1}", "field 'routes'"),
    ("[1", "line 1: not valid YAML"),
    ("- 1", "must be a mapping"),
])
def test_errors_name_the_route_and_the_field(text: str, message: str) -> None:
    with pytest.raises(RoutesError) as caught:
        parse_routes(text, "routes.yml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("routes.yml")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RoutesError, match="missing.yml"):
        load_routes(tmp_path / "missing.yml")


def test_key_patterns_and_prefixes() -> None:
    one_level = key_pattern("incoming/aws/*.csv")
    assert one_level.match("incoming/aws/a.csv") and not one_level.match("incoming/aws/x/a.csv")
    assert not one_level.match("incoming/aws/a.csv.partial")
    deep = key_pattern("incoming/**/*.csv")
    assert deep.match("incoming/a.csv") and deep.match("incoming/x/y/a.csv") and not deep.match("other/a.csv")
    assert key_pattern("incoming/a?.csv").match("incoming/a1.csv")
    assert key_pattern("incoming/(x)[1].csv").match("incoming/(x)[1].csv")  # no regex leaks
    assert glob_prefix("incoming/aws/*.csv") == "incoming/aws/"
    assert glob_prefix("incoming/**/*.csv") == "incoming/"
    assert glob_prefix("*.csv") == ""


def test_topic_filters() -> None:
    assert topic_matches("bucket", "bucket") and not topic_matches("bucket", "bucket/x")
    assert topic_matches("jobs/+", "jobs/123") and not topic_matches("jobs/+", "jobs/1/2")
    assert topic_matches("a/#", "a/b/c") and topic_matches("#", "anything/at/all")


def test_templates_keep_types_and_refuse_missing_values() -> None:
    context = {"loaded": {"stations": ["0-20000-0-60001"], "start": "2024-01-01"}, "object": {"key": "incoming/a.csv"}}
    rendered = render({"stations": "{loaded.stations}", "key": "{object.key}", "text": "file {object.key}!", "n": 3},
                      context)
    assert rendered == {"stations": ["0-20000-0-60001"], "key": "incoming/a.csv", "text": "file incoming/a.csv!", "n": 3}
    with pytest.raises(TemplateError, match="object.size"):
        render("{object.size}", context)
    with pytest.raises(TemplateError, match="list"):
        render("stations {loaded.stations}", context)


def test_fire_values_are_read_in_the_schedules_zone() -> None:
    config = parse_routes(GOOD)
    monthly = config.schedule("monthly")
    # 05:00 UTC on 3 January is 06:00 in Lagos: the report of December of the year before.
    values = fire_values(monthly, datetime(2026, 1, 3, 5, 0, tzinfo=timezone.utc))
    assert values["fire"]["previous_month"] == "2025-12" and values["fire"]["date"] == "2026-01-03"
    assert values["fire"]["previous_day"] == "2026-01-02" and values["fire"]["previous_year"] == 2025
    assert render(monthly.parameters, values) == {"month": "2025-12"}


def test_bucket_notifications_in_minio_format() -> None:
    payload = bucket_notification("climate", "incoming/aws/a b+c.csv", '"0123abcd"', 42)
    events = parse_bucket_notification(payload)
    assert events == [ObjectEvent(key="incoming/aws/a b+c.csv", etag="0123abcd", size=42, bucket="climate",
                                  name="s3:ObjectCreated:Put", time=events[0].time)]
    # What MinIO itself sends: the key URL-encoded with '+' for a space.
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": "climate/incoming/x y.csv", "Records": [
        {"eventName": "s3:ObjectCreated:CompleteMultipartUpload", "eventTime": "2026-01-01T00:00:00.000Z",
         "s3": {"bucket": {"name": "climate"}, "object": {"key": "incoming%2Fx+y.csv", "size": 5,
                                                         "eTag": "d41d8cd98f00b204e9800998ecf8427e-2"}}}]}
    (event,) = parse_bucket_notification(json.dumps(minio).encode())
    assert event.key == "incoming/x y.csv" and event.etag.endswith("-2")
    removed = {"Records": [{"eventName": "s3:ObjectRemoved:Delete", "s3": {"object": {"key": "a"}}}]}
    assert parse_bucket_notification(json.dumps(removed).encode()) == []
    assert parse_bucket_notification(json.dumps({"Event": "s3:TestEvent"}).encode()) == []


@pytest.mark.parametrize(("payload", "reason"), [
    (b"not json", "not JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b"[1, 2]", "must be a JSON object"),
    (b"{}", "'Records' list"),
    (b'{"Records": [1]}', "Records[0] is not an object"),
    (b'{"Records": [{"s3": {}}]}', "eventName is missing"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {}}]}', "s3.object is missing"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"object": {"key": "a"}}}]}', "eTag is missing"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"object": {"key": 5, "eTag": "x"}}}]}',
     "key is missing or not text"),
    (b'{"Records": [{"eventName": "s3:ObjectCreated:Put", "s3": {"object": {"key": "a", "eTag": "x", "size": -1}}}]}',
     "size is not a byte count"),
    (b"{" * 2_000_000, "larger than"),
])
def test_poison_notifications_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(PoisonMessageError, match=re.escape(reason)):
        parse_bucket_notification(payload)


def test_idempotency_keys() -> None:
    event = ObjectEvent("incoming/a.csv", "abc")
    assert object_run_key("aws", event) == object_run_key("aws", ObjectEvent("incoming/a.csv", "abc", size=9))
    assert object_run_key("aws", event) != object_run_key("aws", ObjectEvent("incoming/a.csv", "abd"))
    assert object_run_key("aws", event) != object_run_key("daily", event)
    long_key = ObjectEvent("incoming/" + "x" * 990, "abc")
    assert len(object_run_key("a" * 64, long_key)) <= 255
    # The schedule's key is the same whatever zone the fire time is written in.
    fire = datetime(2026, 1, 3, 6, 0, tzinfo=timezone.utc)
    assert schedule_run_key("monthly", fire) == schedule_run_key("monthly", fire.astimezone(timezone(timedelta(hours=1))))
    assert schedule_run_key("monthly", fire) == "events:schedule:monthly:2026-01-03T06:00:00Z"
    assert chain_run_key("job-1", "0.1") == "events:chain:job-1:0.1"


def test_cron_fire_times_in_a_time_zone() -> None:
    monthly = parse_routes(GOOD).schedule("monthly")  # 06:00 in Lagos (UTC+1) on the 3rd
    at = datetime(2026, 3, 3, 5, 0, tzinfo=timezone.utc)
    assert latest_fire(monthly, at) == at  # a fire time counts as due at that very second
    assert latest_fire(monthly, at - timedelta(seconds=1)) == datetime(2026, 2, 3, 5, 0, tzinfo=timezone.utc)
    assert next_fire(monthly, at) == datetime(2026, 4, 3, 5, 0, tzinfo=timezone.utc)


def _scheduler(missed: str, start: datetime) -> tuple[Scheduler, ManualClock, list[datetime]]:
    config = parse_routes(f'schedules: [{{name: hourly, cron: "0 * * * *", process: p, missed: {missed}}}]')
    clock = ManualClock(start)
    fired: list[datetime] = []
    scheduler = Scheduler(config.schedules, clock, lambda schedule, moment: fired.append(moment), lambda attempt: 0.01)
    return scheduler, clock, fired


def test_a_missed_fire_time_runs_once_at_start_and_a_jump_is_coalesced() -> None:
    start = datetime(2026, 5, 1, 10, 30, tzinfo=timezone.utc)
    scheduler, clock, fired = _scheduler("run_once", start)
    scheduler.start_state()
    scheduler.run_due()
    scheduler.run_due()
    assert fired == [datetime(2026, 5, 1, 10, 0, tzinfo=timezone.utc)]  # once, however often asked
    clock.advance(timedelta(hours=5))  # a clock jump over five fire times: the latest runs, once
    scheduler.run_due()
    assert fired[1:] == [datetime(2026, 5, 1, 15, 0, tzinfo=timezone.utc)]
    skipping, _, skipped = _scheduler("skip", start)
    skipping.start_state()
    skipping.run_due()
    assert skipped == []


def test_the_scheduler_waits_on_the_clock_it_is_given() -> None:
    scheduler, clock, fired = _scheduler("skip", datetime(2026, 5, 1, 10, 59, 59, tzinfo=timezone.utc))
    stop = threading.Event()
    thread = threading.Thread(target=scheduler.run, args=(stop,))
    thread.start()
    try:
        assert not fired
        clock.advance(timedelta(seconds=1))
        deadline = datetime.now() + timedelta(seconds=10)
        while not fired and datetime.now() < deadline:
            stop.wait(0.02)
        assert fired == [datetime(2026, 5, 1, 11, 0, tzinfo=timezone.utc)]
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_the_ledger_decides_what_the_sweep_leaves_out() -> None:
    modified = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    listed = ListedObject("incoming/a.csv", 100, modified, None)

    def entry(status: str, size: int = 100, started: datetime = modified + timedelta(seconds=1)) -> LedgerEntry:
        return LedgerEntry(1, "incoming/a.csv", size, status, started.isoformat(), None)

    assert is_done(listed, [entry("loaded")]) and is_done(listed, [entry("skipped")])
    assert not is_done(listed, [])
    assert not is_done(listed, [entry("failed")]) and not is_done(listed, [entry("loading")])
    assert not is_done(listed, [entry("loaded", size=99)])  # another version of the object
    assert not is_done(listed, [entry("loaded", started=modified - timedelta(seconds=5))])  # changed after its load
    aws = parse_routes(GOOD).routes
    assert sweep_prefixes(aws) == ["incoming/aws/"]


def test_a_folder_objects_etag_is_its_md5(tmp_path: Path) -> None:
    from opencdms_kernel.bucket import open_bucket
    from services.events.sweep import Fingerprints, list_objects

    bucket = open_bucket(Settings(home=tmp_path, bucket_url=f"file://{tmp_path / 'bucket'}"))
    bucket.write_bytes("incoming/a.csv", b"hello")
    (tmp_path / "bucket" / "incoming" / "b.csv.partial").write_bytes(b"half")
    (listed,) = list_objects(bucket, "incoming/")
    assert listed.key == "incoming/a.csv" and listed.size == 5
    assert Fingerprints().etag(bucket, listed) == hashlib.md5(b"hello").hexdigest()


def test_what_an_ingest_loaded_is_only_known_after_an_ingest() -> None:
    text = """
routes:
  - name: a
    topic: bucket
    key: "incoming/*.csv"
    process: touch
    then:
      - process: archive_refresh
        then:
          - process: qc_run
            parameters: {stations: "{loaded.stations}"}
"""
    with pytest.raises(RoutesError, match="route 'a': field 'then': .*needs 'ledger: true'"):
        parse_routes(text)
    config = parse_routes(text.replace("    process: touch\n", "    process: touch\n    ledger: true\n"))
    assert not config.route("a").then[0].needs_loaded and config.route("a").then[0].then[0].needs_loaded
