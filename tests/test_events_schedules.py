"""Schedules of the event service under a controlled clock, with the real API, a real worker and
Mosquitto: a fire time leaves its report in the bucket and its job row; a fire time missed
while the service was down runs once at start; two replicas with one schedule make one job."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from events_support import (
    REPORT,
    Collector,
    Stack,
    open_stack,
    require_mosquitto,
    service_factory,  # noqa: F401 - a fixture
    unique_root,
    wait_until,
    write_routes,
)
from services.events.schedules import ManualClock

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    opened = open_stack(request, tmp_path_factory.mktemp("events-schedules"), {"report": REPORT}, worker=True)
    try:
        yield opened
    finally:
        opened.close()


def _routes(tmp_path: Path, root: str, missed: str) -> Path:
    # The monthly report on the 3rd at 06:00 in Lagos (05:00 UTC), for the previous month.  The
    # schedule's name is the test's own: the fire time's key (name + time) is shared by every
    # routes file that uses the name, as it is by replicas.
    return write_routes(tmp_path, f"""
schedules:
  - name: monthly-{root}
    cron: "0 6 3 * *"
    timezone: Africa/Lagos
    process: report
    parameters: {{month: "{{fire.previous_month}}", label: "{root}"}}
    missed: {missed}
""")


def _schedule_jobs(stack: Stack, root: str) -> list[dict[str, Any]]:
    return stack.jobs("idempotency_key LIKE :key AND parameters->>'label' = :label",
                      key=f"events:schedule:monthly-{root}:%", label=root)


def test_a_schedule_fires_under_a_controlled_clock_and_leaves_its_report(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = _routes(tmp_path, root, "skip")
    clock = ManualClock(datetime(2026, 3, 3, 4, 59, 50, tzinfo=timezone.utc))
    collector = Collector(url, f"{root}/jobs/+")
    service = service_factory(stack.service_settings(url, root, events_routes_file=routes), routes, clock=clock,
                              sweep_at_start=False)
    assert service.status()["schedules"][0]["next"] == "2026-03-03T05:00:00+00:00"
    wait_until(lambda: service.scheduler.done, 10, message="the scheduler started")
    assert _schedule_jobs(stack, root) == []  # skip: nothing before the next fire time
    clock.advance(timedelta(seconds=9))
    assert _schedule_jobs(stack, root) == []
    clock.advance(timedelta(seconds=1))
    (job,) = wait_until(lambda: _schedule_jobs(stack, root), 20, message="the fire time's job")
    assert job["idempotency_key"] == f"events:schedule:monthly-{root}:2026-03-03T05:00:00Z"
    assert job["parameters"] == {"month": "2026-02", "label": root}
    finished = wait_until(lambda: (rows := _schedule_jobs(stack, root)) and rows[0]["status"] in
                          ("successful", "failed") and rows[0], 180, every=1, message="the worker ran the report")
    assert finished["status"] == "successful", finished["error"]
    report = stack.bucket.read_bytes(f"reports/test/{root}-2026-02.html")
    assert f"{root} 2026-02".encode() in report
    assert finished["outputs"]["report"]["key"] == f"reports/test/{root}-2026-02.html"
    statuses = wait_until(lambda: [message["status"] for _, message in collector.json()
                                   if message["id"] == str(job["id"])].count("successful") and collector.json(), 30)
    origin = statuses[-1][1]["origin"]
    assert origin == {"kind": "schedule", "schedule": f"monthly-{root}", "fire": "2026-03-03T05:00:00+00:00"}
    collector.close()


def test_a_fire_time_missed_while_the_service_was_down_runs_once_at_start(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = _routes(tmp_path, root, "run_once")
    settings = stack.service_settings(url, root, events_routes_file=routes)
    clock = ManualClock(datetime(2026, 3, 3, 5, 0, 30, tzinfo=timezone.utc))
    first = service_factory(settings, routes, clock=clock, sweep_at_start=False)
    wait_until(lambda: len(_schedule_jobs(stack, root)) == 1, 20, message="the fire time of 3 March")
    first.stop()
    # Down over three fire times (3 April, 3 May, 3 June): at start, the latest runs, once.
    clock.set(datetime(2026, 6, 20, 12, 0, tzinfo=timezone.utc))
    second = service_factory(settings, routes, clock=clock, sweep_at_start=False)
    wait_until(lambda: len(_schedule_jobs(stack, root)) == 2, 20, message="one catch-up run")
    second.stop()
    # A restart with nothing missed runs nothing more (the fire time's key finds its job).
    third = service_factory(settings, routes, clock=clock, sweep_at_start=False)
    wait_until(lambda: third.scheduler.done.get(f"monthly-{root}"), 20)
    jobs = _schedule_jobs(stack, root)
    assert [job["idempotency_key"].rsplit(":", 3)[-3:] for job in jobs] == [
        ["2026-03-03T05", "00", "00Z"], ["2026-06-03T05", "00", "00Z"]]
    assert [job["parameters"]["month"] for job in jobs] == ["2026-02", "2026-05"]


def test_two_replicas_with_the_same_schedule_make_one_job(
        stack: Stack, service_factory: Callable[..., Any], tmp_path: Path) -> None:
    url = require_mosquitto()
    root = unique_root()
    routes = _routes(tmp_path, root, "skip")
    clock = ManualClock(datetime(2026, 3, 3, 4, 59, 0, tzinfo=timezone.utc))
    replicas = [service_factory(stack.service_settings(url, root, events_routes_file=routes,
                                                       events_client_id=f"{root}-{number}"),
                                routes, clock=clock, sweep_at_start=False) for number in range(2)]
    wait_until(lambda: all(replica.scheduler.done for replica in replicas), 10)
    clock.advance(timedelta(minutes=1))
    fire = datetime(2026, 3, 3, 5, 0, tzinfo=timezone.utc)
    wait_until(lambda: all(replica.scheduler.done[f"monthly-{root}"] == fire for replica in replicas), 20,
               message="both replicas fired")
    jobs = wait_until(lambda: _schedule_jobs(stack, root), 20, message="the schedule's job recorded")
    # Both replicas asked for the run, and the API answered both with the one job (each replica
    # notes the answer when its request returns: wait for both, then count again).
    wait_until(lambda: all(str(jobs[0]["id"]) in replica.recent_jobs for replica in replicas), 20,
               message="both replicas answered with the one job")
    assert len(_schedule_jobs(stack, root)) == 1
    assert all(replica.counters.runs_requested == 1 for replica in replicas)
