"""The QC review app in a real browser (Debian's chromium through Playwright), served standalone
by ``panel serve`` on the embedded PostgreSQL with the explorer's seeded network
(tests/support/network.py ``build_network``: four flagged values at station Alpha) and one value
whose source changed after a decision.  The reviewer rita opens a flagged value in context,
is refused without a reason, rejects it with one; the explorer then shows it rejected.  A bulk
decision waits for its confirmation (cancel writes nothing).  The "source changed" tab lists the
value.  Every request of every page stays on 127.0.0.1.  Screenshots: var/test-artifacts/ (or
$OPENCDMS_TEST_ARTIFACTS)."""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from api_support import STATION_A, STATION_FAR
from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel import explore
from opencdms_kernel.catalog import close_catalog, open_catalog
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.ingest import IngestRequest, IngestStatus, ingest
from opencdms_kernel.qc.manual import decide_many
from opencdms_kernel.settings import Settings
from support.apps import RunningApp, record_requests, serve_panel
from support.browser import Shots
from support.network import SPIKE_DAY, SWAP_DAY, build_network, key

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

REVIEWER = "rita"


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    folder = outside_pytest_tmp("opencdms-test-app-qc-review-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def deliver_far(datastore: Datastore, settings: Settings, value: float) -> None:
    from opencdms_kernel.bucket import open_bucket

    text = f"station,element,time,value\n{STATION_FAR},TMAX,2021-01-02,{value}\n"
    result = ingest(IngestRequest.from_bytes("incoming/far.csv", text.encode()), datastore, open_bucket(settings),
                    "loader")
    assert result.status is IngestStatus.LOADED, result.error


@pytest.fixture(scope="module")
def settings(embedded_server: PostgresServer, home: Path) -> Iterator[Settings]:
    """The seeded network, and a value at FAR corrected by a reviewer whose source has since
    delivered another value."""
    name = embedded_server.new_database()
    built = Settings(home=home, database_url=embedded_server.url_of(name), bucket_url=f"file://{home / 'bucket'}",
                     user=REVIEWER, hub_role="qc-reviewer")
    network = build_network(built)
    close_catalog(network.catalog)
    deliver_far(network.datastore, built, 21.0)
    decide_many(network.datastore, [key(datetime(2021, 1, 2, tzinfo=timezone.utc), station=STATION_FAR)],
                 "correct", "transposed digits", "quinn", corrected_value=12.0)
    deliver_far(network.datastore, built, 21.4)
    network.datastore.close()
    yield built
    embedded_server.drop(name)


@dataclass
class Apps:
    review: RunningApp
    explorer: RunningApp


@pytest.fixture(scope="module")
def apps(settings: Settings, home: Path) -> Iterator[Apps]:
    """Both apps, started side by side (each start is mostly Python imports)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        starts = [pool.submit(serve_panel, app, settings, REVIEWER, home / f"{app}.log")
                  for app in ("qc_review", "explorer")]
        try:
            yield Apps(starts[0].result(), starts[1].result())
        finally:
            for start in starts:
                if start.exception() is None:
                    start.result().stop()



def row(page: object, *texts: str) -> object:
    """The row of the items table holding every one of ``texts``."""
    locator = page.locator(".review-items .tabulator-row")  # type: ignore[attr-defined]
    for text in texts:
        locator = locator.filter(has_text=text)
    return locator


def element_cell(page: object, day: str, element: str) -> object:
    """The element cell of the items table's row of ``element`` on ``day`` (a click selects the row)."""
    return row(page, day).locator(".tabulator-cell[tabulator-field='element']").filter(
        has_text=re.compile(f"^{element}$"))


def manual(settings: Settings, element: str, day: datetime) -> tuple[str | None, dict | None]:
    with Datastore.open(settings) as datastore, datastore.engine.connect() as connection:
        found = connection.execute(sa.text(
            "SELECT o.final_flag, o.result_quality -> 'manual' FROM observation AS o "
            "JOIN station AS s ON s.id = o.station_id JOIN element AS e ON e.id = o.element_id "
            "WHERE s.wigos_id = :s AND e.code = :e AND o.phenomenon_time = :t"),
            {"s": STATION_A, "e": element, "t": day}).one()
    return found[0], found[1]


def test_the_reviewer_rejects_a_flagged_value_and_the_explorer_shows_it_marked(
    apps: Apps, settings: Settings, page: object, shots: Shots
) -> None:
    recorded = record_requests(page)
    page.goto(apps.review.url)
    page.wait_for_selector(".review-count .app-message:has-text('4 flagged values')", timeout=90_000)
    spike = row(page, "2020-01-10", "TMAX")
    assert "range: above_range (failed)" in spike.inner_text()

    spike.locator(".tabulator-cell[tabulator-field='element']").click()
    page.wait_for_selector(".review-context-note .app-message:has-text('Neighbours: stations within 150 km')")
    page.locator(".review-context canvas").first.wait_for()
    assert "high 42; failed" in page.inner_text(".review-tests .tabulator-row")
    shots(page, "spike-in-context")

    page.click(".review-decision button:has-text('reject')")
    page.click(".review-apply button")
    refused = page.wait_for_selector(".review-feedback .app-message.error")
    assert "parameter 'reason': a manual decision needs a reason" in refused.inner_text()
    assert manual(settings, "TMAX", SPIKE_DAY) == ("bad", None)
    shots(page, "refused-without-a-reason")

    page.fill(".review-reason input", "thermometer replaced that morning; reading before the swap")
    page.press(".review-reason input", "Enter")
    page.click(".review-apply button")
    done = page.wait_for_selector(".review-feedback .app-message.ok")
    assert f"rejected by {REVIEWER}" in done.inner_text()
    page.wait_for_selector(".review-count .app-message:has-text('3 flagged values')")
    assert row(page, "2020-01-10").count() == 0
    flag, decision = manual(settings, "TMAX", SPIKE_DAY)
    assert flag == "rejected" and decision["by"] == REVIEWER and decision["reason"].startswith("thermometer")
    shots(page, "rejected")

    page.goto(apps.explorer.url)
    page.wait_for_selector(f".explorer-status .app-message.ok:has-text('Showing TMAX at Alpha ({STATION_A})')",
                           timeout=90_000)
    marked = page.locator(".explorer-flagged .tabulator-row").filter(has_text="2020-01-10")
    assert "rejected" in marked.inner_text() and "45" in marked.inner_text()
    shots(page, "explorer-shows-it-rejected")
    catalog = open_catalog(settings)
    try:
        series = explore.series(catalog, STATION_A, "TMAX", "2020-01-01", "2020-01-31")
    finally:
        close_catalog(catalog)
    assert list(series.marked(explore.Mark.REJECTED)["value"]) == [45.0]
    assert recorded.leaving() == []


def test_a_bulk_decision_waits_for_its_confirmation(apps: Apps, settings: Settings, page: object,
                                                     shots: Shots) -> None:
    recorded = record_requests(page)
    page.goto(apps.review.url)
    page.wait_for_selector(".review-count .app-message", timeout=90_000)
    element_cell(page, "2020-02-10", "TMAX").click()
    element_cell(page, "2020-02-10", "TMIN").click(modifiers=["Control"])
    page.click(".review-decision button:has-text('accept')")
    page.fill(".review-reason input", "heat burst confirmed by the observer's note")
    page.press(".review-reason input", "Enter")
    page.click(".review-apply-many button")
    question = page.wait_for_selector(".review-confirm-text .confirm-question:has-text('Accept 2 values')")
    assert "heat burst confirmed" in question.inner_text()
    shots(page, "confirmation")

    page.click(".review-cancel button")
    page.wait_for_selector(".review-confirmation", state="hidden")
    assert manual(settings, "TMAX", SWAP_DAY) == ("bad", None) and manual(settings, "TMIN", SWAP_DAY)[1] is None

    page.click(".review-apply-many button")
    page.wait_for_selector(".review-confirm-text .confirm-question:has-text('Accept 2 values')")
    page.click(".review-confirm button")
    done = page.wait_for_selector(".review-feedback .app-message.ok")
    assert f"2 values: accepted by {REVIEWER}" in done.inner_text()
    for element in ("TMAX", "TMIN"):
        flag, decision = manual(settings, element, SWAP_DAY)
        assert flag == "verified" and decision["reason"] == "heat burst confirmed by the observer's note"
    shots(page, "accepted-together")
    assert recorded.leaving() == []


def test_the_values_whose_source_changed_are_listed(apps: Apps, page: object, shots: Shots) -> None:
    recorded = record_requests(page)
    page.goto(apps.review.url)
    page.wait_for_selector(".review-count .app-message", timeout=90_000)
    page.click(".review-tabs :text('Source changed since the decision')")
    changed = page.locator(".review-changes .tabulator-row").filter(has_text=STATION_FAR)
    changed.first.wait_for()
    text = changed.inner_text()
    assert "2021-01-02" in text and "correct" in text and "21.4" in text and "12" in text
    shots(page, "source-changed")
    assert recorded.leaving() == []
