"""API benchmark: the OGC API against the bare SQL and pygeoapi's stock provider, same run.

Measured (HTTP on 127.0.0.1, an async httpx loop; medians and p95 of every request):

- **EDR position query**, one station, one element, 30 years of daily values (10,958), as
  CoverageJSON, at 1 and at 20 concurrent clients.  Baselines in the same run:
  - the bare SQL for the same rows (the SELECT of the values -- latest versions, lowest source
    per key -- through a pooled SQLAlchemy connection, every row fetched, nothing serialised):
    target API <= 2x.  The provider's own read (the values packed by PostgreSQL, read into
    numpy) is printed beside it, to show where the API's time goes;
  - pygeoapi's stock xarray EDR provider serving the same series from a NetCDF file (a 1 x 1
    grid, 10,958 days) in a stock pygeoapi process: target API >= 3x faster.
- **Stations items page** (limit 100 of 400 stations): target median <= 20 ms.
- **Asynchronous execution request -> 201** (the job is recorded, no worker runs it), with a
  scientist's hub token (the API runs as the service of a real JupyterHub, tests/support/hub.py;
  the token's check is cached by the API, as in production): target median <= 50 ms.

Queue throughput with one and two workers (100 trivial jobs) is measured by
``bench/notebooks.py`` (the worker pool's own benchmark), not repeated here.

The EDR comparison alternates rounds between the two servers (the machine is shared: load that
changes during the run weighs on both alike).

Usage: python bench/api.py [--requests 40] [--concurrency 20]
Runs on the embedded PostgreSQL unless OPENCDMS_DATABASE_URL names a server (then a scratch
database on it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import numpy as np
import sqlalchemy as sa
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from api_support import STATION_A, free_port, seed_network, start_api, stop_api  # noqa: E402
from common import postgres_admin_url, scratch_datastore  # noqa: E402
from support.hub import started_hub  # noqa: E402

from opencdms_kernel.db.schema import station  # noqa: E402
from services.api.providers.observations import StationPoint, read_series  # noqa: E402
from services.api.runtime import install_runtime  # noqa: E402

ROUNDS = 4  # the EDR comparison alternates between the two servers this many times
POSITION = {"coords": "POINT(10 5)", "parameter-name": "TMAX", "datetime": "1991-01-01/2020-12-31", "f": "json"}


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


async def load(url: str, params: dict[str, str] | None, requests: int, concurrency: int,
               method: str = "GET", body: dict | None = None, headers: dict | None = None,
               expect: int = 200) -> tuple[list[float], int]:
    """Latencies of ``requests`` requests made by ``concurrency`` clients at once; errors counted."""
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for number in range(requests):
        queue.put_nowait(number)

    async def client() -> None:
        nonlocal errors
        # Plain HTTP on 127.0.0.1: no TLS context (httpx builds one per client by default, about
        # 40 ms of CPU each, which would weigh on the measured clients, not on the servers).
        async with httpx.AsyncClient(timeout=120, verify=False, trust_env=False) as session:
            while not queue.empty():
                number = queue.get_nowait()
                started = time.perf_counter()
                extra = {"Idempotency-Key": f"bench-{time.time_ns()}-{number}"} if headers is not None else None
                response = await session.request(method, url, params=params, json=body,
                                                 headers={**(headers or {}), **(extra or {})})
                await response.aread()
                latencies.append(time.perf_counter() - started)
                if response.status_code != expect:
                    errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, errors


def line(name: str, latencies: list[float], errors: int) -> float:
    median = statistics.median(latencies)
    print(f"{name:<58} median {median * 1000:8.1f} ms  p95 {percentile(latencies, 0.95) * 1000:8.1f} ms"
          f"  n={len(latencies)} errors={errors}")
    return median


def _read_arguments(datastore):  # type: ignore[no-untyped-def]
    from datetime import datetime, timezone

    from services.api.providers.common import Interval
    from services.api.providers.observations import known_elements

    with datastore.engine.connect() as connection:
        row = connection.execute(sa.select(station).where(station.c.wigos_id == STATION_A)).one()
    point = StationPoint(row.id, row.wigos_id, row.name, row.longitude, row.latitude, row.elevation)
    interval = Interval(datetime(1991, 1, 1, tzinfo=timezone.utc), datetime(2021, 1, 1, tzinfo=timezone.utc))
    return point, interval, known_elements()["TMAX"]


def bare_sql(datastore, requests: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The bare SQL for the same rows: the SELECT of the values a client would write (latest
    versions, lowest source per key), through a pooled connection, every row fetched."""
    point, interval, element = _read_arguments(datastore)
    query = sa.text("""
        SELECT DISTINCT ON (station_id, element_id, phenomenon_time, duration_seconds, level)
               phenomenon_time, duration_seconds, level, value, qc_status
        FROM observation
        WHERE status = 'latest' AND station_id = :station AND element_id = :element
          AND phenomenon_time >= :start AND phenomenon_time < :end
        ORDER BY station_id, element_id, phenomenon_time, duration_seconds, level, source_id""")
    parameters = {"station": point.id, "element": element.id, "start": interval.start, "end": interval.end}
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        with datastore.engine.connect() as connection:
            rows = connection.execute(query, parameters).all()
        timings.append(time.perf_counter() - started)
    assert len(rows) == 10958
    return timings


def provider_read(datastore, requests: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The provider's own read of the same values (packed arrays into numpy), for the breakdown."""
    point, interval, element = _read_arguments(datastore)
    timings = []
    for _ in range(requests):
        started = time.perf_counter()
        series = read_series([point], [element], interval, None, None)
        timings.append(time.perf_counter() - started)
    assert len(series[0].times) == 10958
    return timings


def stock_pygeoapi(datastore, folder: Path) -> tuple[subprocess.Popen[bytes], str]:  # type: ignore[no-untyped-def]
    """A stock pygeoapi (its xarray EDR provider) serving the same series from NetCDF."""
    import xarray as xr

    with datastore.engine.connect() as connection:
        rows = connection.execute(sa.text("""
            SELECT o.phenomenon_time, o.value FROM observation o JOIN station s ON s.id = o.station_id
            JOIN element e ON e.id = o.element_id
            WHERE s.wigos_id = :station AND e.code = 'TMAX' ORDER BY o.phenomenon_time"""), {"station": STATION_A}).all()
    times = np.array([r[0].replace(tzinfo=None) for r in rows], dtype="datetime64[ns]")
    # A 2 x 2 grid (the provider derives its resolution from neighbouring cells), the station's
    # series in every cell; the position query picks the cell at the station.
    series = np.array([r[1] for r in rows], dtype="float32")
    values = np.repeat(series.reshape(-1, 1, 1), 4, axis=1).reshape(-1, 2, 2)
    dataset = xr.Dataset({"TMAX": (("time", "lat", "lon"), values, {"units": "degC", "long_name": "TMAX"})},
                         coords={"time": times, "lat": [5.0, 5.5], "lon": [10.0, 10.5]})
    path = folder / "station.nc"
    dataset.to_netcdf(path, engine="h5netcdf")
    port = free_port()
    config = {
        "server": {"bind": {"host": "127.0.0.1", "port": port}, "url": f"http://127.0.0.1:{port}",
                   "mimetype": "application/json; charset=UTF-8", "encoding": "utf-8", "languages": ["en-US"],
                   "limits": {"default_items": 10, "max_items": 50}, "map": {"url": "x", "attribution": "x"}},
        "logging": {"level": "ERROR"},
        "metadata": {"identification": {"title": "stock", "description": "stock", "keywords": ["x"], "url": "x",
                                        "terms_of_service": "x"},
                     "license": {"name": "x", "url": "x"}, "provider": {"name": "x", "url": "x"},
                     "contact": {"name": "x", "url": "x"}},
        "resources": {"station": {
            "type": "collection", "title": "station", "description": "station", "keywords": ["x"],
            "extents": {"spatial": {"bbox": [9, 4, 11, 6]}},
            "providers": [{"type": "edr", "name": "xarray-edr", "data": str(path), "x_field": "lon",
                           "y_field": "lat", "time_field": "time",
                           "format": {"name": "netcdf", "mimetype": "application/x-netcdf"}}]}},
    }
    config_path = folder / "stock.yml"
    config_path.write_text(yaml.safe_dump(config))
    openapi = folder / "stock-openapi.yml"
    environment = {**os.environ, "PYGEOAPI_CONFIG": str(config_path), "PYGEOAPI_OPENAPI": str(openapi)}
    pygeoapi = Path(sys.executable).with_name("pygeoapi")
    subprocess.run([str(pygeoapi), "openapi", "generate", str(config_path), "--output-file", str(openapi)],
                   check=True, env=environment, capture_output=True)
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "pygeoapi.starlette_app:APP", "--host", "127.0.0.1",
                                "--port", str(port), "--log-level", "warning"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/conformance?f=json", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the stock pygeoapi did not start")


def seed_many_stations(datastore, count: int) -> None:  # type: ignore[no-untyped-def]
    with datastore.engine.begin() as connection:
        connection.execute(sa.insert(station), [
            {"wigos_id": f"0-20000-1-{70000 + n}", "name": f"Station {n}", "longitude": -170 + n * 0.8,
             "latitude": -60 + (n % 100) * 1.2, "elevation": float(n), "timezone": "UTC"}
            for n in range(count)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=40, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=20, help="clients of the concurrent measurement")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="opencdms-bench-api-"))
    with postgres_admin_url() as admin_url, scratch_datastore(admin_url, folder / "bucket") as (datastore, settings), \
            ExitStack() as stack:
        settings = settings.model_copy(update={"home": folder})
        install_runtime(settings)  # the bare-SQL baseline reads through the provider's own runtime
        seed_network(datastore)
        seed_many_stations(datastore, 396)
        # A real hub (tests/support/hub.py): execution needs a token with the execute scope.
        port = free_port()
        (folder / "hub").mkdir()
        hub = stack.enter_context(started_hub(folder / "hub", external_services={"api": f"http://127.0.0.1:{port}"}))
        api = start_api(settings, folder / "api.log", port=port, prefix="/services/api", extra_env={
            "JUPYTERHUB_API_URL": hub.hub_api_url, "JUPYTERHUB_API_TOKEN": hub.service_tokens["api"],
            "JUPYTERHUB_SERVICE_PREFIX": "/services/api/"})
        token = hub.create_user("bench", "scientist").token
        stock, stock_url = stock_pygeoapi(datastore, folder)
        try:
            position = f"{api.url}/collections/observations/position"
            stock_position = f"{stock_url}/collections/station/position"
            stock_params = {"coords": "POINT(10 5)", "parameter-name": "TMAX", "datetime": "1991-01-01/2020-12-31",
                            "f": "json"}
            # Warm both (imports, pools, caches), then check they serve the same number of values.
            ours = httpx.get(position, params=POSITION, timeout=120).json()
            theirs = httpx.get(stock_position, params=stock_params, timeout=120).json()
            their_values = (theirs.get("ranges") or theirs["coverages"][0]["ranges"])["TMAX"]["values"]
            assert len(ours["coverages"][0]["ranges"]["TMAX"]["values"]) == len(their_values) == 10958
            print(f"\n== API benchmark ({args.requests} requests each; 10,958 daily values per EDR answer) ==")
            sql = line("bare SQL, same rows (SELECT, rows fetched, no HTTP)", bare_sql(datastore, args.requests), 0)
            read = line("provider's read of the same values (arrays, no HTTP)", provider_read(datastore, args.requests), 0)
            results = {}
            for clients in (1, args.concurrency):
                # Alternating rounds, so a change in the machine's load (it is shared) weighs on
                # both servers alike rather than on whichever was measured second.
                measured: dict[str, tuple[list[float], int]] = {"ours": ([], 0), "stock": ([], 0)}
                per_round = max(clients, args.requests // ROUNDS)
                for _ in range(ROUNDS):
                    for name, url, params in (("ours", position, POSITION), ("stock", stock_position, stock_params)):
                        latencies, errors = asyncio.run(load(url, params, per_round, clients))
                        measured[name] = (measured[name][0] + latencies, measured[name][1] + errors)
                results[("ours", clients)] = line(f"EDR position, OpenCDMS provider, {clients} client(s)",
                                                  *measured["ours"])
                results[("stock", clients)] = line(f"EDR position, pygeoapi xarray-edr, {clients} client(s)",
                                                   *measured["stock"])
            page = line("stations items, limit 100 (400 stations)", *asyncio.run(load(
                f"{api.url}/collections/stations/items", {"limit": "100", "f": "json"}, args.requests, 1)))
            execution = line("async execution request -> 201", *asyncio.run(load(
                f"{api.url}/processes/archive_refresh/execution", None, args.requests, 1, method="POST",
                body={"inputs": {}}, headers={"Prefer": "respond-async", "Authorization": f"token {token}"},
                expect=201)))
            print()
            ratio_sql = results[("ours", 1)] / sql
            print(f"{'API / bare SQL (1 client, median)':<58} {ratio_sql:6.2f}x  (target <= 2: "
                  f"{'meets' if ratio_sql <= 2 else 'MISSES'})")
            print(f"{'API / provider read (1 client, median)':<58} {results[('ours', 1)] / read:6.2f}x  "
                  "(HTTP, pygeoapi and the coverage on top of the read)")
            for clients in (1, args.concurrency):
                speedup = results[("stock", clients)] / results[("ours", clients)]
                print(f"{f'stock xarray-edr / API ({clients} clients, median)':<58} {speedup:6.2f}x  (target >= 3: "
                      f"{'meets' if speedup >= 3 else 'MISSES'})")
            print(f"{'stations page median':<58} {page * 1000:6.1f} ms (target <= 20: {'meets' if page <= 0.02 else 'MISSES'})")
            print(f"{'async execution median':<58} {execution * 1000:6.1f} ms (target <= 50: "
                  f"{'meets' if execution <= 0.05 else 'MISSES'})")
        finally:
            stop_api(api.process)
            if stock.poll() is None:
                os.killpg(stock.pid, signal.SIGTERM)
                stock.wait(timeout=30)


if __name__ == "__main__":
    main()
