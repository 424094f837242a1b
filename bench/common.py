"""Shared pieces of the benchmarks: a scratch PostgreSQL database, timing, and the report."""

from __future__ import annotations

import os
import statistics
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from opencdms_kernel.db import migrate
from opencdms_kernel.db.engine import Datastore, start_embedded_postgres
from opencdms_kernel.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "var" / "bench"


@contextmanager
def postgres_admin_url() -> Iterator[str]:
    """The server to measure on: OPENCDMS_DATABASE_URL if set, else a private embedded one."""
    configured = os.environ.get("OPENCDMS_DATABASE_URL")
    if configured:
        yield Settings(database_url=configured).database_url  # type: ignore[misc]
        return
    url, handle = start_embedded_postgres(WORK / "pgdata")
    try:
        yield url
    finally:
        handle.cleanup()  # type: ignore[attr-defined]


@contextmanager
def scratch_datastore(admin_url: str, bucket_dir: Path) -> Iterator[tuple[Datastore, Settings]]:
    """A new migrated database for one measurement, dropped afterwards."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"opencdms_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a name made here, not input
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    settings = Settings(home=ROOT, database_url=url, bucket_url=f"file://{bucket_dir}")
    try:
        with Datastore.open(settings) as datastore:
            migrate.upgrade(datastore)
            yield datastore, settings
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed(action: Callable[[], object]) -> float:
    """Seconds taken by ``action``."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


@dataclass
class Measurement:
    """Repeated timings of one thing, with the amount of work each run did."""

    name: str
    items: int
    seconds: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def rate(self) -> float:
        """Items per second, from the median time."""
        return self.items / self.median


def report(title: str, measurements: list[Measurement], ratios: list[tuple[str, float, str, float]]) -> None:
    """Print medians and rates, then each ratio with its target (">=" or "<=") and the verdict."""
    print(f"\n== {title} ==")
    for m in measurements:
        runs = ", ".join(f"{s:.2f}" for s in m.seconds)
        print(f"{m.name:<48} median {m.median:8.3f} s  {m.rate:>12,.0f} /s   runs: {runs}")
    for label, value, op, target in ratios:
        met = value >= target if op == ">=" else value <= target
        print(f"{label:<64} {value:8.3f}  (target {op} {target}: {'meets' if met else 'MISSES'})")
