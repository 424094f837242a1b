"""The OGC API served by a real uvicorn process: configuration, collections, EDR, records, pages.

One API process per PostgreSQL setup (embedded and external) serves a small seeded network for
the whole module; tests that change data use their own station or put it back.  This API runs
without a hub (the open reads only); what needs a hub identity is tests/test_api_processes.py.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
import yaml

from api_support import (
    STATION_A,
    STATION_B,
    STATION_C,
    STATION_FAR,
    YEARS_A,
    RunningApi,
    seed_network,
    served,
    start_api,
    stop_api,
)
from conftest import PostgresServer, service_missing
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

CLOSED = "monthly-summaries"  # closed to anonymous readers (api_closed_collections)


@pytest.fixture(scope="module", params=["embedded", "external"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApi]:
    """The API over a fresh seeded database of each PostgreSQL setup."""
    server: PostgresServer | None = request.getfixturevalue(f"{request.param}_server")
    if server is None:
        service_missing("no external PostgreSQL")
    assert server is not None
    name = server.new_database()
    home = tmp_path_factory.mktemp(f"api-{request.param}")
    settings = Settings(home=home, database_url=server.url_of(name), bucket_url=f"file://{home / 'bucket'}",
                        api_closed_collections=[CLOSED])
    with Datastore.open(settings) as datastore:
        seed_network(datastore)
    try:
        yield from served(start_api(settings, home / "api.log"))
    finally:
        server.drop(name)


def _json(api: RunningApi, path: str, **params: object) -> dict:
    with api.client() as client:
        response = client.get(path, params={"f": "json", **params})
    assert response.status_code == 200, response.text
    return response.json()


# --------------------------------------------------------------------------- configuration


def test_generated_configuration_validates_and_openapi_is_cached(api: RunningApi) -> None:
    folder = api.settings.var_dir / "api"
    config = folder / "pygeoapi-config.yml"
    documents = list(folder.glob("openapi-*.yml"))
    assert config.is_file() and len(documents) == 1
    pygeoapi = Path(sys.executable).with_name("pygeoapi")
    for command in (["config", "validate", "-c", str(config)], ["openapi", "validate", str(documents[0])]):
        result = subprocess.run([str(pygeoapi), *command], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and "Valid" in result.stdout, result.stdout + result.stderr
    generated = yaml.safe_load(config.read_text())
    # Generated, not hand-kept: every registered notebook is a process, providers are ours.
    processes = {name for name, resource in generated["resources"].items() if resource["type"] == "process"}
    assert {"qc_run", "monthly_report", "ingest_file"} <= processes
    assert generated["resources"]["stations"]["providers"][0]["name"].startswith("services.api.")
    # Nothing changed: writing again keeps the file and the same cached OpenAPI document.
    from services.api import config as api_config
    from services.api.runtime import install_runtime, reset_runtime

    before = (config.stat().st_mtime_ns, documents[0].stat().st_mtime_ns)
    try:
        current = install_runtime(api.settings)
        path, written = api_config.write_config(api.settings, current.datastore)
        files = api_config.ensure_openapi(path)
    finally:
        reset_runtime()
    assert not written and files.openapi == documents[0]
    assert (config.stat().st_mtime_ns, documents[0].stat().st_mtime_ns) == before


# --------------------------------------------------------------------------- features


def test_collections_are_listed(api: RunningApi) -> None:
    ids = {collection["id"] for collection in _json(api, "/collections")["collections"]}
    assert {"stations", "observations", "monthly-summaries", "climate-normals", "discovery-metadata"} <= ids


def test_stations_page_with_next_links(api: RunningApi) -> None:
    first = _json(api, "/collections/stations/items", limit=2)
    assert first["numberMatched"] == 4 and [f["id"] for f in first["features"]] == [STATION_A, STATION_B]
    following = [link for link in first["links"] if link["rel"] == "next"]
    assert following
    with api.client() as client:
        second = client.get(following[0]["href"].replace(api.url, "")).json()
    assert [f["id"] for f in second["features"]] == [STATION_C, STATION_FAR]


def test_stations_filters(api: RunningApi) -> None:
    inside = _json(api, "/collections/stations/items", bbox="9.9,4.9,10.1,5.1")
    assert {f["id"] for f in inside["features"]} == {STATION_A, STATION_B}
    assert [f["id"] for f in _json(api, "/collections/stations/items", name="Bravo")["features"]] == [STATION_B]
    # In operation during 2022: C closed at the end of 2020.
    operating = _json(api, "/collections/stations/items", datetime="2022-01-01/2022-12-31")
    assert STATION_C not in {f["id"] for f in operating["features"]}
    ordered = _json(api, "/collections/stations/items", sortby="-elevation")
    assert ordered["features"][0]["id"] == STATION_FAR
    cql = _json(api, "/collections/stations/items", filter="elevation > 95 AND name LIKE '%a%'")
    assert {f["id"] for f in cql["features"]} == {STATION_A, STATION_B, STATION_FAR}
    one = _json(api, f"/collections/stations/items/{STATION_A}")
    assert one["properties"]["name"] == "Alpha" and one["geometry"]["coordinates"] == [10.0, 5.0]


# --------------------------------------------------------------------------- EDR


def test_position_query_thirty_years(api: RunningApi) -> None:
    document = _json(api, "/collections/observations/position", coords="POINT(10 5)", **{"parameter-name": "TMAX"})
    assert document["type"] == "CoverageCollection"
    (coverage,) = document["coverages"]
    times = coverage["domain"]["axes"]["t"]["values"]
    assert len(times) == sum(366 if (1991 + y) % 4 == 0 else 365 for y in range(YEARS_A))
    assert set(coverage["ranges"]) == {"TMAX", "TMAX_qc"}
    assert document["parameters"]["TMAX"]["unit"]["symbol"]["value"] == "degC"
    assert "air_temperature" in document["parameters"]["TMAX"]["observedProperty"]["id"]


def test_edr_datetime_qc_and_formats(api: RunningApi) -> None:
    params = {"coords": "POINT(10 5)", "parameter-name": "TMAX", "datetime": "2020-01-01/2020-01-10"}
    every = _json(api, "/collections/observations/position", **params)["coverages"][0]
    assert len(every["domain"]["axes"]["t"]["values"]) == 10
    statuses = every["ranges"]["TMAX_qc"]["values"]
    assert statuses.count(3) == 1 and statuses.count(2) == 1  # failed, suspect
    kept = _json(api, "/collections/observations/position", **params, **{"qc-status": "none,passed,suspect"})
    assert len(kept["coverages"][0]["domain"]["axes"]["t"]["values"]) == 9
    instant = _json(api, "/collections/observations/position", coords="POINT(10 5)",
                    datetime="2020-01-05T00:00:00Z", **{"parameter-name": "TMIN"})
    assert instant["coverages"][0]["domain"]["axes"]["t"]["values"] == ["2020-01-05T00:00:00Z"]
    with api.client() as client:
        csv_text = client.get("/collections/observations/position", params={**params, "f": "csv"})
        geojson = client.get("/collections/observations/position", params={**params, "f": "geojson"})
    assert csv_text.status_code == 200 and csv_text.text.splitlines()[0].startswith("wigos_id,")
    assert len(csv_text.text.splitlines()) == 11 and "failed" in csv_text.text
    assert geojson.status_code == 200 and len(geojson.json()["features"]) == 10


def test_radius_area_cube_and_locations(api: RunningApi) -> None:
    base = {"parameter-name": "TMAX", "datetime": "2020-06-01"}
    near = _json(api, "/collections/observations/radius", coords="POINT(10 5)", within=10, **{"within-units": "km"}, **base)
    assert {c["wigos_id"] for c in near["coverages"]} == {STATION_A, STATION_B}
    area = _json(api, "/collections/observations/area", coords="POLYGON((9 4,11 4,11 6,9 6,9 4))", **base)
    assert {c["wigos_id"] for c in area["coverages"]} == {STATION_A, STATION_B, STATION_C}
    cube = _json(api, "/collections/observations/cube", bbox="10.1,5.05,10.3,5.2", **base)
    assert {c["wigos_id"] for c in cube["coverages"]} == {STATION_C}
    locations = _json(api, "/collections/observations/locations")
    assert {f["id"] for f in locations["features"]} == {STATION_A, STATION_B, STATION_C, STATION_FAR}
    one = _json(api, f"/collections/observations/locations/{STATION_B}", **base)
    assert [c["wigos_id"] for c in one["coverages"]] == [STATION_B]
    levels = _json(api, "/collections/observations/position", coords="POINT(10 5)", z="0", **base)
    assert levels["coverages"][0]["domain"]["axes"]["z"]["values"] == [0.0]
    collection = _json(api, "/collections/observations")
    assert collection["parameter_names"]["TMAX"]["unit"]["symbol"]["value"] == "degC"


def test_observation_items_page(api: RunningApi) -> None:
    page = _json(api, "/collections/observations/items", wigos_id=STATION_B, element="TMIN", limit=5)
    assert len(page["features"]) == 5 and {f["properties"]["element"] for f in page["features"]} == {"TMIN"}
    assert any(link["rel"] == "next" for link in page["links"])


def test_correction_is_served_on_the_next_request(api: RunningApi) -> None:
    params = {"coords": "POINT(10.2 5.1)", "parameter-name": "TMAX", "datetime": "2020-03-03"}
    before = _json(api, "/collections/observations/position", **params)["coverages"][0]["ranges"]["TMAX"]["values"]
    with Datastore.open(api.settings) as datastore, datastore.engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.reason', 'api test correction', true)"))
        connection.execute(sa.text("""
            UPDATE observation SET value = 12.3 FROM station, element
            WHERE station.id = observation.station_id AND element.id = observation.element_id
              AND station.wigos_id = :station AND element.code = 'TMAX' AND phenomenon_time = '2020-03-03T00:00:00Z'
        """), {"station": STATION_C})
    after = _json(api, "/collections/observations/position", **params)["coverages"][0]["ranges"]["TMAX"]["values"]
    assert before != [12.3] and after == [12.3]


# --------------------------------------------------------------------------- records


def test_records_are_valid_wcmp2(api: RunningApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = _json(api, "/collections/discovery-metadata/items")["features"]
    assert {record["id"].rsplit(".", 1)[-1] for record in records} >= {"observations", "stations"}
    schema_path = _wmo_file("wcmp2-bundled.json")
    import jsonschema

    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for record in records:
        problems = [error.message for error in validator.iter_errors(record)]
        assert not problems, (record["id"], problems)
    monkeypatch.setenv("HOME", str(tmp_path))  # pywcmp reads its bundle from ~/.pywcmp
    _pywcmp_bundle(schema_path.parent, tmp_path / ".pywcmp")
    from pywcmp.wcmp2.ets import WMOCoreMetadataProfileTestSuite2

    for record in records:
        suite = WMOCoreMetadataProfileTestSuite2(record)
        # The demo centre id is not in the WMO register: pywcmp's own relaxation for that.
        report = suite.run_tests(fail_on_schema_validation=True, relax_centre_id_checks=True)
        failed = [test for test in report["tests"] if test["code"] == "FAILED"]
        assert not failed and report["summary"]["PASSED"] >= 10, (record["id"], failed)


def _pywcmp_bundle(wmo: Path, userdir: Path) -> None:
    """Lay out pywcmp's folder from ../shared/wmo, as `pywcmp bundle sync` would (it downloads)."""
    import shutil

    (userdir / "wcmp-2" / "codelists").mkdir(parents=True, exist_ok=True)
    shutil.copy(wmo / "wcmp2-bundled.json", userdir / "wcmp-2" / "wcmp2-bundled.json")
    for table in (wmo / "wcmp2-codelists" / "codelists").glob("*.csv"):
        shutil.copy(table, userdir / "wcmp-2" / "codelists" / table.name)
    tree = wmo / "topic-hierarchy-src" / "topic-hierarchy"
    tables = userdir / "wis2-topic-hierarchy"
    tables.mkdir(parents=True, exist_ok=True)
    for level in tree.glob("*.csv"):
        shutil.copy(level, tables / level.name)
    # The bundle's earth-system-discipline.csv lists every topic below that level, one per row.
    disciplines = tree / "earth-system-discipline"
    topics = ["Name"]
    for index in sorted(disciplines.rglob("index.csv")):
        parent = index.parent.relative_to(disciplines).as_posix()
        with index.open() as handle:
            for row in list(csv.reader(handle))[1:]:
                topics.append(row[0] if parent == "." else f"{parent}/{row[0]}")
    (tables / "earth-system-discipline.csv").write_text("\n".join(topics) + "\n")
    # The IANA link relation registry is not among the offline copies: the names our records use
    # (all registered with IANA) stand in for it.
    relations = userdir / "wcmp-2" / "link-relations-1.csv"
    if not relations.is_file():
        relations.write_text("Relation Name\nabout\ncollection\ndata\nitems\nlicense\nrelated\nself\n")


def _wmo_file(name: str) -> Path:
    for base in (Path(__file__).resolve().parents[1].parent / "shared" / "wmo", Path("/work/shared/wmo")):
        if (base / name).is_file():
            return base / name
    service_missing(f"WMO reference file {name} (../shared/wmo) not found")
    raise AssertionError


# --------------------------------------------------------------------------- pages offline


def test_html_pages_load_nothing_from_outside(api: RunningApi) -> None:
    from services.api.app import static_files_present

    if not static_files_present():
        pytest.fail("the local copies of the pages' scripts are missing (make install runs npm ci)")
    pages = ["/", "/collections", "/collections/stations", "/collections/stations/items",
             "/collections/observations", "/processes", "/openapi"]
    loaded = re.compile(r"""<(?:script|link|img)\b[^>]*?(?:src|href)\s*=\s*["']([^"']+)["']""", re.I)
    with api.client() as client:
        for page in pages:
            response = client.get(page, params={"f": "html"})
            assert response.status_code == 200, page
            urls = loaded.findall(response.text)
            outside = [url for url in urls if url.startswith(("http://", "https://", "//")) and not url.startswith(api.url)]
            assert not outside, (page, outside)
            for url in urls:
                if url.startswith(f"{api.url}/vendor/") and "_not-available-offline" not in url:
                    assert client.get(url.replace(api.url, "")).status_code == 200, url


# --------------------------------------------------------------------------- standard clients


def test_owslib_features_edr_and_records(api: RunningApi) -> None:
    from owslib.ogcapi.edr import EnvironmentalDataRetrieval
    from owslib.ogcapi.features import Features
    from owslib.ogcapi.records import Records

    features = Features(api.url, timeout=60)
    assert "stations" in features.feature_collections()
    seen, offset = [], 0
    while True:  # page through the stations two at a time
        page = features.collection_items("stations", limit=2, offset=offset)
        seen += [feature["id"] for feature in page["features"]]
        if not any(link["rel"] == "next" for link in page["links"]):
            break
        offset += 2
    assert seen == [STATION_A, STATION_B, STATION_C, STATION_FAR]
    edr = EnvironmentalDataRetrieval(api.url, timeout=60)
    # OWSLib sends parameter_names under the wrong name (STACK_NOTES): every element comes back.
    answer = edr.query_data("observations", "position", coords="POINT(10 5)", datetime_="1991-01-01/2020-12-31")
    (coverage,) = answer["coverages"]
    assert len(coverage["domain"]["axes"]["t"]["values"]) == 10958
    assert {"TMAX", "TMIN"} <= set(coverage["ranges"])
    records = Records(api.url, timeout=60)
    assert "discovery-metadata" in records.records()
    items = records.collection_items("discovery-metadata")
    assert items["numberMatched"] >= 4


# --------------------------------------------------------------------------- bad input


def _counts(api: RunningApi) -> tuple[int, int, int]:
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        return (connection.execute(sa.text("SELECT count(*) FROM observation")).scalar_one(),
                connection.execute(sa.text("SELECT count(*) FROM observation_history")).scalar_one(),
                connection.execute(sa.text("SELECT count(*) FROM station")).scalar_one())


INJECTION = "'; DROP TABLE observation;--"
BAD_REQUESTS = [
    ("/collections/observations/position", {"coords": "POINT(10 5"}),
    ("/collections/observations/position", {"coords": "POLYGON((1 2, 3 4))"}),
    ("/collections/observations/position", {"coords": "POINT(999 5)"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "datetime": "yesterday-ish"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "datetime": "99999999999999999999"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "datetime": "2020-13-45"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "datetime": "2021-01-01/2020-01-01"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "parameter-name": "NOPE"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "parameter-name": f"TMAX,{INJECTION}"}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "qc-status": INJECTION}),
    ("/collections/observations/position", {"coords": "POINT(10 5)", "z": INJECTION}),
    ("/collections/observations/radius", {"coords": "POINT(10 5)", "within": "far", "within-units": "km"}),
    ("/collections/observations/radius", {"coords": "POINT(10 5)", "within": "5", "within-units": "parsecs"}),
    ("/collections/observations/area", {"coords": "POINT(10 5)"}),
    ("/collections/observations/cube", {"bbox": "1,2,3"}),
    ("/collections/observations/cube", {"bbox": "nan,2,3,4"}),
    ("/collections/stations/items", {"limit": "-1"}),
    ("/collections/stations/items", {"limit": str(10**9)}),
    ("/collections/stations/items", {"limit": "ten"}),
    ("/collections/stations/items", {"offset": "-5"}),
    ("/collections/stations/items", {"sortby": INJECTION}),
    ("/collections/stations/items", {"sortby": "name; DROP TABLE station"}),
    ("/collections/stations/items", {"filter": INJECTION}),
    ("/collections/stations/items", {"filter": f"name = 'x' OR 1=1; {INJECTION}"}),
    ("/collections/stations/items", {"filter": "nosuchfield = 1"}),
    ("/collections/stations/items", {"filter": "elevation = 'high'"}),
    ("/collections/stations/items", {"elevation": "high"}),
    ("/collections/stations/items", {"opened": "not-a-date"}),
    ("/collections/stations/items", {"datetime": "garbage"}),
    ("/collections/stations/items", {"name": "a\x00b"}),
    ("/collections/observations/items", {"source_id": "99999999999"}),
    ("/collections/observations/items", {"filter": "value > 'warm'"}),
    ("/collections/climate-normals/items", {"filter": "month = 1"}),
    ("/collections/climate-normals/items", {"month": "January"}),
]


@pytest.mark.parametrize(("path", "params"), BAD_REQUESTS)
def test_bad_input_is_a_400_and_changes_nothing(api: RunningApi, path: str, params: dict[str, str]) -> None:
    before = _counts(api)
    with api.client() as client:
        answer = client.get(path, params={"f": "json", **params})
    assert answer.status_code == 400, (path, params, answer.status_code, answer.text[:300])
    body = answer.json()
    assert body["code"] in ("InvalidParameterValue", "InvalidQuery", "NoApplicableCode") and body["description"]
    assert _counts(api) == before


@pytest.mark.parametrize("identifier", [INJECTION, "0-20000-0-6000%27", "x" * 5000, "%00"])
def test_unknown_or_hostile_ids_are_not_found(api: RunningApi, identifier: str) -> None:
    before = _counts(api)
    with api.client() as client:
        for path in (f"/collections/stations/items/{identifier}", f"/collections/observations/locations/{identifier}",
                     f"/collections/observations/items/{identifier}"):  # jobs: test_api_processes.py
            answer = client.get(path, params={"f": "json"})
            assert answer.status_code in (400, 404), (path, answer.status_code, answer.text[:300])
            assert answer.json()["description"]
    assert _counts(api) == before


def test_html_error_pages_and_cors_off(api: RunningApi) -> None:
    with api.client() as client:
        answer = client.get("/collections/stations/items", params={"limit": "-1"}, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 400 and "access-control-allow-origin" not in answer.headers


# --------------------------------------------------------------------------- schemathesis


def test_schemathesis_finds_no_server_error(api: RunningApi, tmp_path: Path) -> None:
    openapi = next((api.settings.var_dir / "api").glob("openapi-*.yml"))
    report = tmp_path / "junit.xml"
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", str(openapi), "--url", api.url,
               "--checks", "not_a_server_error", "--max-examples", "8", "--workers", "2",
               "--exclude-method", "POST", "--exclude-method", "PUT", "--exclude-method", "DELETE",
               "--exclude-method", "PATCH", "--request-timeout", "60", "--report", "junit",
               "--report-junit-path", str(report), "--no-color", "--suppress-health-check", "all"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert report.is_file(), output[-3000:]
    import xml.etree.ElementTree as ElementTree

    cases = ElementTree.parse(report).getroot().iter("testcase")
    failures, unusable = [], 0
    for case in cases:
        for problem in list(case.iter("failure")) + list(case.iter("error")):
            text = (problem.get("message") or "") + (problem.text or "")
            # pygeoapi's document points at OGC schemas on schemas.opengis.net, which cannot be
            # fetched offline: schemathesis cannot generate requests for those parts. Anything
            # else (a 5xx above all) is a failure.
            if problem.tag == "error" and ("Schema Error" in text or "Unresolvable" in text or "resolve" in text):
                unusable += 1
            else:
                failures.append((case.get("name"), text[:500]))
    assert not failures, failures
    generated = re.search(r"(\d+) generated, (\d+) passed", output)
    assert generated and int(generated.group(1)) >= 100 and generated.group(1) == generated.group(2), output[-3000:]


def test_url_prefix_serves_everything_under_it(api: RunningApi) -> None:
    """As a hub service: everything under /services/api, links included."""
    home = api.settings.home / "prefixed"
    home.mkdir(exist_ok=True)
    settings = api.settings.model_copy(update={"home": home, "var_dir": home / "var"})
    prefixed = start_api(settings, home / "api.log", prefix="/services/api")
    try:
        with prefixed.client() as client:
            landing = client.get("/", params={"f": "json"}).json()
            assert all(link["href"].startswith(prefixed.url) for link in landing["links"])
            answer = client.get("/collections/observations/position",
                                params={"coords": "POINT(10 5)", "parameter-name": "TMAX", "datetime": "2020-01-01"})
            assert answer.status_code == 200 and len(answer.json()["coverages"]) == 1
            page = client.get("/collections", params={"f": "html"})
            assert page.status_code == 200 and f"{prefixed.url}/vendor/" in page.text
    finally:
        stop_api(prefixed.process)


# --------------------------------------------------------------------------- without a hub


def test_without_a_hub_only_open_reads_are_served(api: RunningApi) -> None:
    before = _counts(api)
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]},
               "properties": {"name": "x"}, "id": "0-20000-0-61111"}
    refused = [
        ("POST", "/processes/archive_refresh/execution", {"json": {"inputs": {}}}),
        ("GET", "/jobs", {}),
        ("DELETE", f"/jobs/{uuid.uuid4()}", {}),
        ("POST", "/collections/stations/items", {"json": feature, "headers": {"Content-Type": "application/geo+json"}}),
        ("PUT", f"/collections/stations/items/{STATION_A}", {"json": feature}),
        ("PATCH", f"/collections/stations/items/{STATION_A}", {"json": feature}),
        ("DELETE", f"/collections/stations/items/{STATION_A}", {}),
        ("GET", f"/collections/{CLOSED}/items", {}),
    ]
    with api.client() as client:
        for method, path, extra in refused:
            answer = client.request(method, path, params={"f": "json"}, **extra)
            assert answer.status_code == 401, (method, path, answer.status_code, answer.text[:200])
            assert "without a hub" in answer.json()["description"] and "www-authenticate" in answer.headers
            # A token cannot help: there is nobody to check it with.
            with_token = client.request(method, path, params={"f": "json"}, **extra,
                                        **({} if "headers" in extra else {"headers": {"Authorization": "token x"}}))
            assert with_token.status_code == 401
        assert client.get("/collections/stations/items", params={"f": "json"}).status_code == 200
        assert client.get("/processes/archive_refresh", params={"f": "json"}).status_code == 200
    assert _counts(api) == before


# --------------------------------------------------------------------------- the values as served


def test_coverage_is_the_latest_value_of_each_key(api: RunningApi) -> None:
    """Several sources for one key (the lowest source id is served), several levels and
    durations (a coverage each), missing values, and elements on different days (one time axis,
    nulls where an element has no value): the coverage says exactly what the rows say."""
    with Datastore.open(api.settings) as datastore, datastore.engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO source (name) VALUES ('api-tests-second') ON CONFLICT DO NOTHING"))
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'api-tests', true)"))
        insert = sa.text("""
            INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                                     value, result_quality, qc_status, version, status, changed_at, changed_by)
            SELECT s.id, e.id, CAST(:at AS timestamptz), :duration, :level, src.id, :value, '{}'::jsonb, :qc, 1,
                   'latest', now(), 'api-tests'
            FROM station s, element e, source src
            WHERE s.wigos_id = :station AND e.code = :element AND src.name = :source
            ON CONFLICT DO NOTHING""")
        rows = []
        for day in range(1, 6):
            rows.append(("TMAX", f"2021-03-0{day}T00:00:00Z", 86400, 0.0, "api-tests", 20.0 + day, "passed"))
            rows.append(("TMAX", f"2021-03-0{day}T00:00:00Z", 86400, 0.0, "api-tests-second", -5.0, "none"))
            rows.append(("TMAX", f"2021-03-0{day}T12:00:00Z", 3600, 2.0, "api-tests",
                         None if day == 3 else 10.0 + day, "suspect"))
        for day in (2, 4, 6):
            rows.append(("TMIN", f"2021-03-0{day}T00:00:00Z", 86400, 0.0, "api-tests", 1.0 + day, "failed"))
        for code, at, duration, level, source, value, qc in rows:
            connection.execute(insert, {"station": STATION_FAR, "element": code, "at": at, "duration": duration,
                                        "level": level, "source": source, "value": value, "qc": qc})
    params = {"coords": "POINT(30 -20)", "parameter-name": "TMAX,TMIN", "datetime": "2021-03-01/2021-03-31"}
    document = _json(api, "/collections/observations/position", **params)
    served = {}
    for coverage in document["coverages"]:
        times = coverage["domain"]["axes"]["t"]["values"]
        level = coverage["domain"]["axes"]["z"]["values"][0]
        for code in ("TMAX", "TMIN"):
            if code not in coverage["ranges"]:
                continue
            values, statuses = coverage["ranges"][code]["values"], coverage["ranges"][code + "_qc"]["values"]
            assert len(values) == len(statuses) == len(times) == coverage["ranges"][code]["shape"][0]
            for when, value, status in zip(times, values, statuses):
                if status is None:
                    assert value is None  # no value of this element at that time
                    continue
                served[(code, when, coverage["duration_seconds"], level)] = (value, status)
    qc_codes = {"none": 0, "passed": 1, "suspect": 2, "failed": 3}
    with Datastore.open(api.settings) as datastore, datastore.engine.connect() as connection:
        expected = {
            (code, when.strftime("%Y-%m-%dT%H:%M:%SZ"), duration, level): (value, qc_codes[qc])
            for code, when, duration, level, value, qc in connection.execute(sa.text("""
                SELECT DISTINCT ON (o.element_id, o.phenomenon_time, o.duration_seconds, o.level)
                       e.code, o.phenomenon_time, o.duration_seconds, o.level, o.value, o.qc_status
                FROM observation o JOIN station s ON s.id = o.station_id JOIN element e ON e.id = o.element_id
                WHERE s.wigos_id = :station AND o.status = 'latest'
                ORDER BY o.element_id, o.phenomenon_time, o.duration_seconds, o.level, o.source_id"""),
                {"station": STATION_FAR})}
    assert served == expected and len(expected) == 5 + 5 + 3
    assert [c["id"] for c in document["coverages"]] == [f"{STATION_FAR}/0/86400", f"{STATION_FAR}/2/3600"]
    with api.client() as client:
        table = client.get("/collections/observations/position", params={**params, "f": "csv"}).text.splitlines()
    assert len(table) == 1 + 6 + 5  # header, the daily axis (days 1-6), the hourly axis (days 1-5)


def test_too_many_values_are_refused_before_they_are_read(api: RunningApi, monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import datetime, timezone

    from services.api.errors import ApiParameterError
    from services.api.providers import observations
    from services.api.providers.common import Interval
    from services.api.runtime import install_runtime, reset_runtime

    monkeypatch.setattr(observations, "MAX_VALUES", 1000)
    try:
        install_runtime(api.settings)
        point = observations._stations(observations.station.c.wigos_id == STATION_A)
        known = observations.known_elements()
        elements = list(known.values())
        interval = Interval(datetime(1991, 1, 1, tzinfo=timezone.utc), None)
        for chosen in ([known["TMAX"]], elements):  # one pair (its LIMIT), several (a cursor on the server)
            with pytest.raises(ApiParameterError, match="more than 1000 values"):
                observations.read_series(point, chosen, interval, None, None)
        small = Interval(datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2020, 1, 11, tzinfo=timezone.utc))
        (series,) = observations.read_series(point, elements, small, None, None)  # the pool is still fine
        assert len(series.times) == 10
    finally:
        reset_runtime()
