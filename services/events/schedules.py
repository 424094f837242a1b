"""Schedules: cron expressions read in a time zone (croniter), and a clock tests can drive.

A schedule fires at its fire times; each run's idempotency key is the schedule's name + the fire
time, so replicas firing the same schedule make one job, and a fire time asked for again (a
restart) returns the job it already made.  At start the latest fire time at or before now is
fired (``missed: run_once``): if it ran before the service stopped, the API answers the job it
already has; if it was missed, it runs once — several missed fire times are coalesced into the
latest.  ``missed: skip`` starts from the next fire time instead.  A clock that jumps forward
(suspend, a test's clock) is treated the same way: only the latest fire time due runs.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol

from croniter import croniter

from services.events.errors import TransientError
from services.events.routes import MissedPolicy, Schedule


class Clock(Protocol):
    """What the scheduler reads the time from, and waits on."""

    def now(self) -> datetime:
        """The current time (aware)."""

    def sleep_until(self, moment: datetime, stop: threading.Event, longest: float) -> None:
        """Return at ``moment``, when ``stop`` is set, or after ``longest`` real seconds."""


class SystemClock:
    """The machine's clock."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep_until(self, moment: datetime, stop: threading.Event, longest: float) -> None:
        remaining = (moment - self.now()).total_seconds()
        stop.wait(max(0.0, min(remaining, longest)))


class ManualClock:
    """A clock that moves only when told (:meth:`set`, :meth:`advance`); for tests."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the clock needs an aware datetime")
        self._now = start
        self._changed = threading.Condition()

    def now(self) -> datetime:
        with self._changed:
            return self._now

    def set(self, moment: datetime) -> None:
        """Move the clock to ``moment`` and wake whoever waits on it."""
        with self._changed:
            self._now = moment
            self._changed.notify_all()

    def advance(self, delta: timedelta) -> None:
        """Move the clock forward by ``delta``."""
        self.set(self.now() + delta)

    def sleep_until(self, moment: datetime, stop: threading.Event, longest: float) -> None:
        deadline = time.monotonic() + longest
        with self._changed:
            while self._now < moment and not stop.is_set() and time.monotonic() < deadline:
                self._changed.wait(0.05)


def latest_fire(schedule: Schedule, at: datetime) -> datetime | None:
    """The schedule's latest fire time at or before ``at`` (None without a cron)."""
    if schedule.cron is None:
        return None
    local = at.astimezone(schedule.zone)
    # croniter's get_prev is strictly before: step a second past ``at`` to include it.
    previous = croniter(schedule.cron, local + timedelta(seconds=1)).get_prev(datetime)
    return previous.astimezone(timezone.utc)


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    """The schedule's first fire time strictly after ``after`` (None without a cron)."""
    if schedule.cron is None:
        return None
    return croniter(schedule.cron, after.astimezone(schedule.zone)).get_next(datetime).astimezone(timezone.utc)


class Scheduler:
    """Fires the schedules with a cron; ``fire(schedule, time)`` asks the API (and may raise to retry)."""

    def __init__(self, schedules: list[Schedule], clock: Clock, fire: Callable[[Schedule, datetime], None],
                 retry_wait: Callable[[int], float], *, longest_sleep: float = 30.0) -> None:
        self.schedules = [schedule for schedule in schedules if schedule.cron is not None]
        self.clock = clock
        self.fire = fire
        self.retry_wait = retry_wait
        self.longest_sleep = longest_sleep
        self.done: dict[str, datetime | None] = {}
        self.failures: dict[str, int] = {}
        self.not_before: dict[str, float] = {}

    def start_state(self) -> None:
        """What counts as done at start: nothing for ``run_once`` (the latest fire time runs), the
        latest fire time for ``skip``."""
        now = self.clock.now()
        for schedule in self.schedules:
            self.done[schedule.name] = latest_fire(schedule, now) if schedule.missed is MissedPolicy.SKIP else None

    def next_times(self) -> dict[str, datetime | None]:
        """Each schedule's next fire time after now."""
        now = self.clock.now()
        return {schedule.name: next_fire(schedule, now) for schedule in self.schedules}

    def run_due(self) -> None:
        """Fire every schedule whose latest fire time has not been fired yet (one per schedule)."""
        now = self.clock.now()
        for schedule in self.schedules:
            due = latest_fire(schedule, now)
            if due is None or (self.done.get(schedule.name) is not None and due <= self.done[schedule.name]):
                continue
            if time.monotonic() < self.not_before.get(schedule.name, 0.0):
                continue
            try:
                self.fire(schedule, due)
            except TransientError:  # fire() logged it; the fire time is retried after a backoff
                attempt = self.failures.get(schedule.name, 0) + 1
                self.failures[schedule.name] = attempt
                self.not_before[schedule.name] = time.monotonic() + self.retry_wait(attempt)
                continue
            self.failures.pop(schedule.name, None)
            self.not_before.pop(schedule.name, None)
            self.done[schedule.name] = due

    def run(self, stop: threading.Event) -> None:
        """Fire schedules until ``stop`` is set."""
        self.start_state()
        while not stop.is_set():
            self.run_due()
            upcoming = [moment for moment in self.next_times().values() if moment is not None]
            if self.not_before:
                # A failed fire is retried after its backoff, whatever the clock says.
                stop.wait(max(0.05, min(self.not_before.values()) - time.monotonic()))
                continue
            if not upcoming:
                stop.wait(self.longest_sleep)
                continue
            self.clock.sleep_until(min(upcoming), stop, self.longest_sleep)
