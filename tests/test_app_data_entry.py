"""The data-entry app (apps/data_entry.ipynb) in a real browser (Debian's chromium through
Playwright), served standalone by Voilà on the embedded PostgreSQL, one server per person (the
hub gives each their own): two clerks key a month blind, an out-of-range value is flagged as it
is typed, a supervisor resolves the one difference and the values are stored with the clerk as
author; a whole row keyed and saved with the keyboard alone; two clerks saving the same sheet,
the later refused.  Every request of every page stays on 127.0.0.1 (Voilà's Font Awesome CDN
link is removed by the app's template).  Screenshots: var/test-artifacts/ (or
$OPENCDMS_TEST_ARTIFACTS)."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa

from conftest import PostgresServer, outside_pytest_tmp
from opencdms_kernel.db.engine import Datastore
from opencdms_kernel.keying import shipped_form
from opencdms_kernel.qc.model import QcTest
from opencdms_kernel.qc.rules import Threshold, add_thresholds
from opencdms_kernel.settings import Settings
from opencdms_kernel.vocabulary import HubRole
from support.apps import APPS, RecordedRequests, RunningApp, record_requests, serve_voila
from support.browser import Shots

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

HILL = "0-20000-0-63741"  # Keyed Hill: a July TMAX threshold of its own (15-38 degC)
CREEK = "0-20000-0-63742"
# The page's template (no CDN, the grid's keys) is found through JUPYTER_PATH and Voilà's settings
# (a preheated kernel) through JUPYTER_CONFIG_PATH, as in a hub server.
VOILA_ENVIRONMENT = {"JUPYTER_PATH": str(APPS / "jupyter"), "JUPYTER_CONFIG_PATH": str(APPS / "jupyter")}
PEOPLE = {"alice": HubRole.CLERK, "bob": HubRole.CLERK, "sam": HubRole.QC_REVIEWER}
STATION_LABELS = {HILL: f"Keyed Hill ({HILL})", CREEK: f"Paper Creek ({CREEK})"}  # as the station list shows them


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    folder = outside_pytest_tmp("opencdms-test-app-entry-")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def settings(embedded_server: PostgresServer, home: Path) -> Iterator[Settings]:
    """A migrated database of its own on the embedded server with two stations."""
    name = embedded_server.new_database()
    built = Settings(home=home, database_url=embedded_server.url_of(name), bucket_url=f"file://{home / 'bucket'}")
    with Datastore.open(built) as datastore:
        with datastore.engine.begin() as connection:
            connection.execute(sa.text(
                "INSERT INTO station (wigos_id, name, latitude, longitude, timezone) VALUES "
                "(:hill, 'Keyed Hill', -1.3, 36.8, 'Africa/Nairobi'), (:creek, 'Paper Creek', -1.2, 36.9, 'UTC')"),
                {"hill": HILL, "creek": CREEK})
        add_thresholds(datastore, [Threshold(test=QcTest.RANGE, element="TMAX", station=HILL, month=7,
                                             duration_seconds=86400, low=15.0, high=38.0)],
                       user="qc-admin", reason="station climatology")
    yield built
    embedded_server.drop(name)


@pytest.fixture(scope="module")
def apps(settings: Settings, home: Path) -> Iterator[dict[str, RunningApp]]:
    """One Voilà server per person (started together), acting for them with their hub role."""
    def start(person: str) -> RunningApp:
        return serve_voila("data_entry", settings.model_copy(update={"hub_role": PEOPLE[person]}), person,
                           home / f"voila-{person}.log", extra=VOILA_ENVIRONMENT)

    with ThreadPoolExecutor(len(PEOPLE)) as pool:
        started = dict(zip(PEOPLE, pool.map(start, PEOPLE)))
    yield started
    with ThreadPoolExecutor(len(started)) as pool:
        list(pool.map(RunningApp.stop, started.values()))


class Pages:
    """Browser pages of the module: each person's page is loaded once and reused by the tests
    (a page load starts a kernel: seconds), each in its own browser context; fresh ones on request."""

    def __init__(self, chromium: object, apps: dict[str, RunningApp]) -> None:
        self.chromium = chromium
        self.apps = apps
        self.contexts: list[object] = []
        self.kept: dict[str, tuple[object, RecordedRequests]] = {}

    def fresh(self, person: str) -> tuple[object, RecordedRequests]:
        context = self.chromium.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
        self.contexts.append(context)
        page = context.new_page()
        recorded = record_requests(page)
        page.goto(self.apps[person].url)
        page.wait_for_selector(".keying-app", timeout=90_000)
        return page, recorded

    def of(self, person: str) -> tuple[object, RecordedRequests]:
        if person not in self.kept:
            self.kept[person] = self.fresh(person)
        return self.kept[person]

    def close(self) -> None:
        for context in self.contexts:
            context.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def pages(chromium: object, apps: dict[str, RunningApp]) -> Iterator[Pages]:
    opened = Pages(chromium, apps)
    yield opened
    opened.close()


def open_sheet(page, station: str, form: str, period: str, expect: str) -> None:  # type: ignore[no-untyped-def]
    selects = page.locator(".keying-app select")
    selects.nth(0).select_option(label=STATION_LABELS[station])
    selects.nth(1).select_option(label=shipped_form(form).title)
    page.fill(".keying-period input", period)
    page.click("button.keying-open")
    wanted = [STATION_LABELS[station], period, expect]
    page.wait_for_function("wanted => { const h = document.querySelector('.keying-heading');"
                           " return h !== null && wanted.every(w => h.innerText.includes(w)); }", arg=wanted)


def wait_focus(page, cell: str) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_function(f"document.activeElement && document.activeElement.closest('.{cell}') !== null")


def key_row(page, values: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Type a row's values, Enter after each (the grid moves on along the row, then down)."""
    for value in values:
        page.keyboard.type(value)
        page.keyboard.press("Enter")


def message(page, contains: str) -> str:  # type: ignore[no-untyped-def]
    page.wait_for_selector(f".keying-message :text('{contains}')")
    return page.inner_text(".keying-message")


def keyed_observations(settings: Settings) -> list[sa.Row]:
    with Datastore.open(settings) as datastore, datastore.engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT st.wigos_id, e.code, o.phenomenon_time, o.value, o.changed_by, o.comment "
            "FROM observation AS o JOIN source AS s ON s.id = o.source_id JOIN element AS e ON e.id = o.element_id "
            "JOIN station AS st ON st.id = o.station_id WHERE s.name = 'keying' "
            "ORDER BY st.wigos_id, o.phenomenon_time, e.code")).all()


DAY_1 = ["31,2", "18.4", "0", "6.1", "9.5", "61"]
DAY_3 = ["29.5", "18.1", "12.4", "M", "4.2", "80"]


def test_two_clerks_key_blind_and_a_supervisor_resolves_the_difference(
    pages: Pages, settings: Settings, shots: Shots
) -> None:
    alice, alice_requests = pages.of("alice")
    open_sheet(alice, HILL, "daily_climate", "2020-07", "Keying 1 of 2")
    wait_focus(alice, "kc-1-TMAX")
    key_row(alice, DAY_1)
    alice.keyboard.type("75")  # day 2, TMAX: above the physical limit (60 degC)
    alice.keyboard.press("Enter")
    alice.wait_for_selector(".kc-2-TMAX.kc-error")  # flagged as typed, before any save
    alice.wait_for_selector(".keying-findings .kf-error.kf-2-TMAX")
    assert "75.0 degC is above the physical limit of TMAX" in alice.inner_text(".keying-findings")
    shots(alice, "alice-out-of-range-flagged")
    alice.keyboard.press("Shift+Enter")  # back to it, corrected: 39.5, above the station's threshold
    key_row(alice, ["39.5", "17.9", "T", "5.8", "8.7", "64"])
    key_row(alice, DAY_3)
    alice.wait_for_selector(".kc-2-TMAX.kc-warning")
    alice.wait_for_selector(".keying-findings .kf-warning.kf-2-TMAX")
    assert "above the station threshold" in alice.inner_text(".keying-findings")
    alice.fill(".kr-2-TMAX input", "as on the form: hot spell")
    alice.keyboard.press("Control+s")
    assert "waiting for the second keying" in message(alice, "keying 1 saved")
    alice.locator(".keying-message").scroll_into_view_if_needed()
    shots(alice, "alice-saved-keying-1")
    assert keyed_observations(settings) == []

    bob, bob_requests = pages.of("bob")
    open_sheet(bob, HILL, "daily_climate", "2020-07", "Keying 2 of 2")
    values = bob.eval_on_selector_all(".kc input", "inputs => inputs.map(i => i.value).filter(v => v)")
    assert values == []  # blind: nothing of the first keying on the page
    shown = bob.inner_text(".keying-app")
    assert "31.2" not in shown and "39.5" not in shown and "alice" in shown  # the keyer's name, not her values
    wait_focus(bob, "kc-1-TMAX")
    key_row(bob, DAY_1)
    key_row(bob, ["39.5", "19.7", "T", "5.8", "8.7", "64"])  # one value differs: TMIN 19.7
    key_row(bob, DAY_3)
    bob.fill(".kr-2-TMAX input", "as on the form")
    bob.keyboard.press("Control+s")
    assert "1 cell differs from the other keying" in message(bob, "keying 2 saved")
    bob.wait_for_selector(".kc-2-TMIN.kc-diff")  # where, never what the other keying says
    bob.locator(".keying-message").scroll_into_view_if_needed()
    shots(bob, "bob-saved-keying-2-one-difference")
    assert keyed_observations(settings) == []

    sam, sam_requests = pages.of("sam")
    open_sheet(sam, HILL, "daily_climate", "2020-07", "You do not key this sheet")
    sam.wait_for_selector(".keying-supervision :text('2020-07-02 TMIN')")
    listed = sam.inner_text(".keying-supervision")
    assert "2020-07-02 TMIN: keying 1 17.9 (alice) · keying 2 19.7 (bob)" in listed
    sam.locator(".keying-supervision").scroll_into_view_if_needed()
    shots(sam, "sam-differences")
    sam.fill(".kd-value-2-TMIN input", "17.9")
    sam.fill(".kd-reason-2-TMIN input", "the form reads 17.9")
    sam.click("button.kd-resolve-2-TMIN")
    assert "18 observations written" in message(sam, "every difference is resolved")
    sam.wait_for_selector(".keying-audit :text('committed')")
    audit = sam.inner_text(".keying-audit")
    for line in ("saved keying 1", "saved keying 2", "resolved 2020-07-02 TMIN: 17.9 / 19.7 -> 17.9 (the form reads 17.9)",
                 "committed: 18 observation(s) written"):
        assert line in audit
    assert {"alice", "bob", "sam"} <= set(audit.split())
    sam.locator(".keying-audit").scroll_into_view_if_needed()
    shots(sam, "sam-resolved-and-audit")

    stored = keyed_observations(settings)
    assert len(stored) == 18 and {row.changed_by for row in stored} == {"alice"}
    assert {row.wigos_id for row in stored} == {HILL}
    tmax = [row for row in stored if row.code == "TMAX"]
    assert [row.value for row in tmax] == [31.2, 39.5, 29.5]
    assert "kept despite a warning: as on the form: hot spell" in tmax[1].comment
    for recorded in (alice_requests, bob_requests, sam_requests):
        assert recorded.urls and recorded.leaving() == []


def test_keyboard_only_a_whole_row_keyed_and_saved(
    pages: Pages, settings: Settings, shots: Shots
) -> None:
    page, recorded = pages.fresh("alice")  # the keyboard from the page's very start
    page.evaluate("""() => {
        window.mouseEvents = 0;
        for (const kind of ['mousedown', 'mouseup', 'pointerdown', 'pointerup']) {
            document.addEventListener(kind, event => { if (event.isTrusted) window.mouseEvents += 1; }, true);
        }
    }""")
    page.keyboard.press("Tab")  # the station (Keyed Hill, the first)
    page.wait_for_function("document.activeElement && document.activeElement.tagName === 'SELECT'")
    page.keyboard.press("Tab")  # the form
    page.keyboard.press("ArrowDown")  # daily climate -> hourly synoptic (keyed once)
    page.keyboard.press("Tab")  # the period
    page.keyboard.type("2020-07-15")
    page.keyboard.press("Enter")  # opens the sheet; the first cell has the focus
    page.wait_for_selector(".keying-heading :text('Keying 1 of 1')", timeout=60_000)  # a new grid: the first of its form
    wait_focus(page, "kc-0-TMEAN")
    page.keyboard.type("18.65")  # more decimals than the form has: a warning, kept with a reason
    page.keyboard.press("Tab")
    page.keyboard.press("Shift+Tab")
    page.wait_for_selector(".kc-0-TMEAN.kc-warning")
    page.wait_for_selector(".kr-0-TMEAN input")  # its reason box, under the grid
    page.keyboard.press("Alt+r")  # to the warning's reason box
    page.wait_for_function("document.activeElement && document.activeElement.closest('.kr-0-TMEAN') !== null")
    page.keyboard.type("two decimals on the form")
    page.keyboard.press("Enter")  # back to the cell
    wait_focus(page, "kc-0-TMEAN")
    page.keyboard.press("Tab")
    row = ["12.1", "67", "843.2", "1012.4", "90", "8", "T"]  # the rest of hour 00: every element
    for value in row[:-1]:
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    page.keyboard.type(row[-1])
    page.keyboard.press("Control+s")
    assert "8 observations written" in message(page, "saved (version 1, 8 cells)")
    shots(page, "keyboard-row-saved")
    assert page.evaluate("window.mouseEvents") == 0
    stored = [r for r in keyed_observations(settings) if r.phenomenon_time.isoformat() == "2020-07-15T00:00:00+00:00"]
    assert [(r.code, r.changed_by) for r in stored] == [
        (code, "alice") for code in ("MSLP", "PRCP", "PRES", "RH", "TDEW", "TMEAN", "WDIR", "WSPD")]
    values = {r.code: r for r in stored}
    assert values["WSPD"].value == pytest.approx(8 * 1852 / 3600)  # knots on the form, m s-1 stored
    assert values["TMEAN"].value == 18.65 and "kept despite a warning: two decimals on the form" in values["TMEAN"].comment
    assert recorded.leaving() == []


def test_two_users_saving_the_same_sheet_the_later_is_refused(
    pages: Pages, settings: Settings, shots: Shots
) -> None:
    alice, alice_requests = pages.of("alice")
    bob, bob_requests = pages.of("bob")
    for page in (alice, bob):  # both open the empty sheet: both are its first keying
        open_sheet(page, CREEK, "daily_climate", "2020-09", "Keying 1 of 2")
    for page, value in ((alice, "30.1"), (bob, "29.9")):
        wait_focus(page, "kc-1-TMAX")
        page.keyboard.type(value)
        page.keyboard.press("Tab")
    alice.keyboard.press("Control+s")
    message(alice, "keying 1 saved")
    bob.keyboard.press("Control+s")
    refused = message(bob, "after you opened it")
    assert "keying 1 of daily_climate, station 0-20000-0-63742, 2020-09 was saved by alice at" in refused
    assert "nothing of yours was saved" in refused
    shots(bob, "bob-refused")
    with Datastore.open(settings) as datastore, datastore.engine.connect() as connection:
        cells = connection.execute(sa.text(
            "SELECT e.keyed_by, e.version, e.cells -> '1|TMAX' ->> 'text' FROM keying_entry AS e "
            "JOIN keying_sheet AS s ON s.id = e.sheet_id WHERE s.period = '2020-09'")).all()
    assert [tuple(row) for row in cells] == [("alice", 1, "30.1")]  # nothing overwritten
    assert alice_requests.leaving() == [] and bob_requests.leaving() == []
