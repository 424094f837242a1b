"""Helpers of the API tests (tests/test_api_*.py): a small network in a real database, and the
API served by a real uvicorn process on 127.0.0.1 (``opencdms api serve``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Iterator

import httpx
import sqlalchemy as sa

from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.db.schema import element, source, station
from opencdms_kernel.settings import Settings

# The network: A has 30 years of daily TMAX and TMIN; B and C (near A) one year; FAR is elsewhere.
STATION_A = "0-20000-0-60001"
STATION_B = "0-20000-0-60002"
STATION_C = "0-20000-0-60003"
STATION_FAR = "0-20000-0-60099"
STATIONS = [
    (STATION_A, "Alpha", 10.0, 5.0, 100.0, "Africa/Lagos", date(1990, 1, 1), None),
    (STATION_B, "Bravo", 10.05, 5.02, 120.0, "Africa/Lagos", date(2000, 1, 1), None),
    (STATION_C, "Charlie", 10.2, 5.1, 90.0, "Africa/Lagos", date(2005, 1, 1), date(2020, 12, 31)),
    (STATION_FAR, "Far away", 30.0, -20.0, 1500.0, "UTC", None, None),
]
YEARS_A = 30
FIRST_DAY = date(1991, 1, 1)


def free_port() -> int:
    """A port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def seed_network(datastore: Datastore) -> int:
    """Write the stations and observations above (audited like any writer); return the values written."""
    with datastore.engine.begin() as connection:
        connection.execute(sa.insert(station), [
            {"wigos_id": w, "name": n, "longitude": x, "latitude": y, "elevation": z, "timezone": tz,
             "opened": o, "closed": c}
            for w, n, x, y, z, tz, o, c in STATIONS
        ])
        connection.execute(sa.insert(source).values(name="api-tests"))
        ids = dict(connection.execute(sa.select(station.c.wigos_id, station.c.id)).all())
        elements = dict(connection.execute(sa.select(element.c.code, element.c.id)).all())
        source_id = connection.execute(sa.select(source.c.id).where(source.c.name == "api-tests")).scalar_one()
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'api-tests', true)"))
        insert = sa.text("""
            INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                                     value, result_quality, qc_status, version, status, changed_at, changed_by)
            SELECT :station, :element, day, 86400, 0, :source,
                   round((:base + 8 * sin(2 * pi() * extract(doy FROM day) / 365.25))::numeric, 1),
                   '{}'::jsonb, 'none', 1, 'latest', now(), 'api-tests'
            FROM generate_series(CAST(:first AS timestamptz), CAST(:last AS timestamptz), interval '1 day') AS day
        """)
        last_a = date(FIRST_DAY.year + YEARS_A - 1, 12, 31)
        count = 0
        for wigos, first, last in ((STATION_A, FIRST_DAY, last_a), (STATION_B, date(2020, 1, 1), date(2020, 12, 31)),
                                   (STATION_C, date(2020, 1, 1), date(2020, 12, 31))):
            for code, base in (("TMAX", 30.0), ("TMIN", 20.0)):
                count += connection.execute(insert, {
                    "station": ids[wigos], "element": elements[code], "source": source_id, "base": base,
                    "first": first.isoformat(), "last": last.isoformat()}).rowcount
        # Some values a reviewer judged: suspect and failed, for the QC filter.
        connection.execute(sa.text("""
            UPDATE observation SET qc_status = 'failed'
            WHERE station_id = :station AND phenomenon_time = '2020-01-05T00:00:00Z'
        """), {"station": ids[STATION_A]})
        connection.execute(sa.text("""
            UPDATE observation SET qc_status = 'suspect'
            WHERE station_id = :station AND phenomenon_time = '2020-01-06T00:00:00Z'
        """), {"station": ids[STATION_A]})
    return count


@dataclass
class RunningApi:
    """An API process and how to reach it."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    settings: Settings

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]


def start_api(settings: Settings, log: Path, *, prefix: str = "", extra_env: dict[str, str] | None = None,
              timeout: float = 90.0, port: int | None = None) -> RunningApi:
    """``opencdms api serve`` on 127.0.0.1 (``port``, or a free one), once it answers."""
    port = port or free_port()
    # Only what the test gives: no settings and no hub connection inherited from the caller.
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("OPENCDMS_", "JUPYTERHUB_"))}
    environment.update(settings.as_environment())
    environment.update(extra_env or {})
    command = [sys.executable, "-m", "opencdms_kernel.cli", "api", "serve", "--host", "127.0.0.1",
               "--port", str(port)]
    if prefix:
        command += ["--prefix", prefix]
    handle = log.open("wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=environment,
                               cwd=settings.home, start_new_session=True)
    url = f"http://127.0.0.1:{port}{prefix}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the API exited ({process.returncode}): {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/conformance?f=json", timeout=2).status_code == 200:
                serving = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": port, "api_prefix": prefix})
                return RunningApi(url, process, log, serving)
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_api(process)
    raise RuntimeError(f"the API did not answer within {timeout} s: {log.read_text()[-3000:]}")


def stop_api(process: subprocess.Popen[bytes]) -> None:
    """Stop the API process (its own process group: we started it with a new session)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def served(api: RunningApi) -> Iterator[RunningApi]:
    """Yield ``api`` and stop it afterwards (for fixtures)."""
    try:
        yield api
    finally:
        stop_api(api.process)
