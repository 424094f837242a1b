"""The explorer in a real browser (Debian's chromium through Playwright), served standalone by
``panel serve`` on the embedded PostgreSQL with the explorer's seeded network
(tests/support/network.py ``build_network``: station Alpha with 30 years of daily values, three
of them flagged).  Its plots are drawn for the demo station — map, series, climatology,
anomalies, heat map: each Bokeh canvas exists and has been painted — the flagged values and
the normal are shown beside them, another station redraws it, the selection downloads as CSV
and NetCDF, and every request of the page stays on 127.0.0.1.  Screenshots:
var/test-artifacts/ (or $OPENCDMS_TEST_ARTIFACTS)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from api_support import STATION_A, STATION_B
from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel import explore
from opencdms_kernel.catalog import close_catalog
from opencdms_kernel.settings import Settings
from support.apps import RunningApp, record_requests, serve_panel
from support.browser import Shots
from support.network import build_network

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PLOTS = ("map", "series", "climatology", "anomalies", "availability")
# Pixels a canvas has painted (not fully transparent); a canvas Bokeh only laid out has none.
PAINTED_PIXELS_JS = """canvas => {
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let painted = 0;
    for (let i = 3; i < data.length; i += 4) { if (data[i] > 0) painted++; }
    return painted;
}"""


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    folder = outside_pytest_tmp("opencdms-test-app-explorer-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(embedded_server: PostgresServer, home: Path) -> Iterator[Settings]:
    name = embedded_server.new_database()
    built = Settings(home=home, database_url=embedded_server.url_of(name), bucket_url=f"file://{home / 'bucket'}",
                     user="sam", hub_role="scientist")
    network = build_network(built)
    close_catalog(network.catalog)
    network.datastore.close()
    yield built
    embedded_server.drop(name)


@pytest.fixture(scope="module")
def app(settings: Settings, home: Path) -> Iterator[RunningApp]:
    running = serve_panel("explorer", settings, "sam", home / "explorer.log")
    yield running
    running.stop()



def drawn(page: object, station_label: str) -> None:
    """Wait until the page says it shows the station (every plot of it drawn)."""
    page.wait_for_selector(f".explorer-status .app-message.ok:has-text('Showing TMAX at {station_label}')",  # type: ignore[attr-defined]
                           timeout=90_000)


def test_the_explorer_draws_every_plot_for_a_demo_station(app: RunningApp, page: object, shots: Shots) -> None:
    recorded = record_requests(page)
    page.goto(app.url)
    drawn(page, f"Alpha ({STATION_A})")
    for plot in PLOTS:
        canvases = page.locator(f".explorer-{plot} canvas")
        canvases.first.wait_for(timeout=30_000)
        painted = max(canvases.nth(i).evaluate(PAINTED_PIXELS_JS) for i in range(canvases.count()))
        assert painted > 1000, f"the {plot} canvas is blank"
    shots(page, "alpha-tmax")

    # The data behind the series' marks, and the normal beside the climatology.
    flagged = page.locator(".explorer-flagged .tabulator-row")
    assert flagged.count() == 3
    rows = [flagged.nth(i).inner_text() for i in range(3)]
    assert "2020-01-10" in rows[0] and "failed" in rows[0] and "45" in rows[0]
    assert "2020-02-20" in rows[2] and "suspect" in rows[2]
    assert "normal 1991-2020 (mean, 12 of 12 months), computed from the archive" in page.inner_text(".explorer-normal .app-message")
    assert page.input_value(".explorer-page input[type=text] >> nth=0") == "1991-01-01"

    # Another station redraws the page: Bravo has 2020 only, and no normal.
    page.select_option(".explorer-page select >> nth=0", label=f"Bravo ({STATION_B})")
    drawn(page, f"Bravo ({STATION_B})")
    page.wait_for_selector(".explorer-normal :text('no normal: the 1991-2020 record does not meet the rule')")
    assert page.locator(".explorer-flagged .tabulator-row").count() == 0
    shots(page, "bravo-tmax")
    assert recorded.leaving() == []


def test_the_selection_downloads_as_csv_and_netcdf(app: RunningApp, settings: Settings, page: object,
                                                   tmp_path: Path) -> None:
    recorded = record_requests(page)
    page.goto(app.url)
    drawn(page, f"Alpha ({STATION_A})")
    with page.expect_download(timeout=60_000) as csv_download:  # type: ignore[attr-defined]
        page.click(".download-csv button, .download-csv a")
    csv_path = tmp_path / csv_download.value.suggested_filename
    csv_download.value.save_as(csv_path)
    lines = csv_path.read_text().splitlines()
    assert csv_download.value.suggested_filename == f"{STATION_A}_TMAX.csv"
    assert lines[0].startswith("wigos_id,element,phenomenon_time") and len(lines) == 1 + 10958

    with page.expect_download(timeout=60_000) as nc_download:  # type: ignore[attr-defined]
        page.click(".download-netcdf button, .download-netcdf a")
    dataset = explore.read_netcdf(Path(nc_download.value.path()).read_bytes())
    assert dataset.attrs["featureType"] == "timeSeries" and dataset["TMAX"].size == 10958
    assert str(dataset["station_id"].values) == STATION_A
    assert recorded.leaving() == []


def test_the_map_has_tiles_only_when_a_tile_url_is_set() -> None:
    """No browser: which layers the map is made of (no tile server is asked for anything)."""
    import holoviews as hv
    import holoviews.plotting.bokeh  # noqa: F401  (the backend the options are for, as the app loads it)
    import pandas as pd
    from pydantic import ValidationError

    from apps.explorer import map_plot

    stations = pd.DataFrame({"wigos_id": [STATION_A, STATION_B], "label": ["Alpha", "Bravo"],
                             "longitude": [10.0, 10.05], "latitude": [5.0, 5.02], "elevation": [100.0, 120.0],
                             "status": ["operational"] * 2})
    plain = map_plot(stations, STATION_A, Settings().apps_map_tile_url)
    assert not any(isinstance(layer, hv.Tiles) for layer in plain)
    assert list(plain.get(0).data["longitude"]) == [10.0, 10.05]
    url = "https://tiles.example.org/{Z}/{X}/{Y}.png"
    tiled = map_plot(stations, STATION_A, Settings(apps_map_tile_url=url).apps_map_tile_url)
    assert isinstance(tiled.get(0), hv.Tiles) and tiled.get(0).data == url
    assert tiled.get(1).data["x"].iloc[0] == pytest.approx(1_113_195, rel=1e-3)  # 10° east, in metres
    with pytest.raises(ValidationError, match="apps_map_tile_url"):
        Settings(apps_map_tile_url="tiles.example.org/{Z}/{X}/{Y}.png")
