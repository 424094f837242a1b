"""The apps' speed (issue 13): time to first interactive render through the hub, in Debian's
chromium, beside a bare Voilà page; a full month form saved through the keying kernel; the
explorer's 30-year series redrawn.

Everything real and on 127.0.0.1: a scratch database (bench/common.py) seeded with the API
tests' network (tests/api_support.py ``seed_network``: station Alpha with 30 years of daily TMAX
and TMIN, PRCP added here) and exported to the archive; a JupyterHub over it
(tests/support/hub.py), a clerk and a scientist who sign up, are authorised and log in through
the hub's form; each server spawned once and every page loaded once before the timed loads
(warm servers and browser cache, as for someone who works there every day).  The apps are
processes of each user's server behind its proxy (apps/proxy.py): Voilà with a preheated kernel
for data entry, one ``panel serve`` for the Panel apps.

1. **Browser**, median of --repeat page loads each, interleaved (one load of each per round):
   (a) the data-entry app (``/user/<clerk>/opencdms-entry/``): the page interactive (its Period
   box), then the sheet opened from the keyboard and the grid's first cell focused; (b) the
   explorer (``/user/<scientist>/opencdms-apps/explorer``): its first plot canvas painted, then
   every plot drawn for the station; (c) the baseline, a bare Voilà notebook of one Text widget
   through the server's own Voilà (``/voila/render/…``, a kernel started per page load: what a
   notebook shown with Voilà costs without a process of its own) until its box shows.  Target:
   (a) and (b) <= 2 s each; each printed with its ratio to (c).
   Beside the marks, when the server had sent the whole page, and every request that left
   127.0.0.1 (there should be none).
2. **Kernel** (no browser), median of --repeat: the daily climate form's full month (31 days x
   6 elements) saved by ``opencdms_kernel.keying.save_keying`` as a clerk's own database login —
   the first keying, then the second (agreeing) keying, which commits 186 observations —
   beside the same 186 values inserted into ``observation`` by one bare statement; and the
   explorer's series redrawn by the app's own ``Explorer.draw_series`` (the series query, the
   plot updated in place through its ``Pipe``, the flagged-values table, and the document patch
   the server would send the browser serialised), 30 years of daily values alternating TMAX and
   TMIN, beside ``opencdms_kernel.explore.series`` alone.  Targets: save <= 300 ms, redraw <= 500 ms.

The machine the figures come from matters: on a shared, busy one they are upper bounds.

    .venv/bin/python bench/apps.py [--repeat 5] [--skip-browser] [--skip-kernel]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
# The project first: this file is bench/apps.py, and ``import apps`` must find the apps package.
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
sys.path.append(str(Path(__file__).resolve().parent))

import sqlalchemy as sa  # noqa: E402

from api_support import STATION_A, STATION_B, seed_network  # noqa: E402
from common import Measurement, postgres_admin_url, report, scratch_datastore  # noqa: E402
from opencdms_kernel.archive import export_archive  # noqa: E402
from opencdms_kernel.bucket import open_bucket  # noqa: E402
from opencdms_kernel.db.engine import Datastore  # noqa: E402
from opencdms_kernel.db.roles import drop_roles, ensure_hub_user  # noqa: E402
from opencdms_kernel.keying import CellInput, open_sheet, save_keying, shipped_form  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402
from opencdms_kernel.vocabulary import HubRole  # noqa: E402

FORM = "daily_climate"
CLERK, SCIENTIST = "carla", "sam"
PAGE_PERIOD = "2020-07"  # the sheet the data-entry page opens (read only: nothing is saved)
RENDER_TARGET = 2.0  # seconds (issue 13)
SAVE_TARGET = 0.3
REDRAW_TARGET = 0.5
TIMEOUT_MS = 120_000
BARE_NOTEBOOK = "bench_one_widget.ipynb"
# Every canvas of the page, through Panel's shadow roots; ``host`` (a CSS class) limits it to
# the canvases under the component carrying that class.  A canvas counts as painted once more
# than 1,000 of its pixels are not transparent (one Bokeh only laid out has none).
CANVASES_JS = """
const canvases = (root, host, inside, found) => {
  for (const element of root.querySelectorAll('*')) {
    const within = inside || host === null || element.classList.contains(host);
    if (element.tagName === 'CANVAS' && within) found.push(element);
    if (element.shadowRoot) canvases(element.shadowRoot, host, within, found);
  }
  return found;
};
const painted = canvas => {
  if (!canvas.width || !canvas.height) return false;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let count = 0;
  for (let i = 3; i < data.length; i += 4) { if (data[i] > 0 && ++count > 1000) return true; }
  return false;
};
"""
FIRST_CANVAS_JS = "() => {" + CANVASES_JS + "return canvases(document, null, false, []).some(painted); }"
# The plots the explorer draws once the page is there (the series' empty plot is there before).
DRAWN_PLOTS = ("explorer-map", "explorer-climatology", "explorer-anomalies", "explorer-availability")
EVERY_PLOT_JS = ("hosts => {" + CANVASES_JS
                 + "return hosts.every(host => canvases(document, host, false, []).some(painted)); }")


# --------------------------------------------------------------------------- data


def seed(datastore: Datastore, settings: Settings) -> None:
    """The API tests' network, with 30 years of daily PRCP at Alpha besides its TMAX and TMIN
    (made by PostgreSQL, as ``seed_network`` makes the others), exported to the archive (the
    explorer's climatology, normal and availability read it)."""
    seed_network(datastore)
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'bench-apps', true)"))
        connection.execute(sa.text(
            """
            INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level, source_id,
                                     value, result_quality, qc_status, version, status, changed_at, changed_by)
            SELECT (SELECT id FROM station WHERE wigos_id = :station), (SELECT id FROM element WHERE code = 'PRCP'),
                   day, 86400, 0, (SELECT id FROM source WHERE name = 'api-tests'),
                   CASE WHEN extract(doy FROM day)::int % 3 = 0 THEN round((extract(doy FROM day)::int % 17)::numeric
                        * 1.3, 1) ELSE 0 END,
                   '{}'::jsonb, 'none', 1, 'latest', now(), 'bench-apps'
            FROM generate_series(CAST(:first AS timestamptz), CAST(:last AS timestamptz), interval '1 day') AS day
            """), {"station": STATION_A, "first": "1991-01-01", "last": "2020-12-31"})
    export_archive(datastore, open_bucket(settings))


def login_settings(datastore: Datastore, settings: Settings, user: str, role: HubRole) -> Settings:
    """``settings`` acting for ``user`` through their own database login, as the hub gives one
    to their server (``db.roles.ensure_hub_user``)."""
    url = ensure_hub_user(datastore, user, role).render_as_string(hide_password=False)
    return settings.model_copy(update={"database_url": url, "user": user, "hub_role": role})


# --------------------------------------------------------------------------- kernel: a month saved


def month_cells(day_count: int) -> dict[tuple[int, str], CellInput]:
    """A full month of the daily climate form as a clerk types it: plausible values (no
    warning to explain), rainfall with a few trace codes."""
    cells: dict[tuple[int, str], CellInput] = {}
    for day in range(1, day_count + 1):
        cells[(day, "TMAX")] = CellInput(f"{28 + day % 5 * 0.3:.1f}")
        cells[(day, "TMIN")] = CellInput(f"{17 + day % 4 * 0.2:.1f}")
        cells[(day, "PRCP")] = CellInput("T" if day % 6 == 0 else f"{day % 7 * 1.5:.1f}")
        cells[(day, "EVAP")] = CellInput(f"{4 + day % 3 * 0.5:.1f}")
        cells[(day, "SUN")] = CellInput(f"{6 + day % 5 * 0.4:.1f}")
        cells[(day, "RH")] = CellInput(f"{60 + day % 9}")
    return cells


def long_months(count: int, first_year: int) -> list[str]:
    """``count`` months of 31 days from January of ``first_year`` on (``YYYY-MM``)."""
    found: list[str] = []
    year = first_year
    while len(found) < count:
        found += [f"{year}-{month:02d}" for month in (1, 3, 5, 7, 8, 10, 12)]
        year += 1
    return found[:count]


# One statement for the whole month (the values as arrays, unnested by PostgreSQL): the floor
# of writing 186 observations, without checks, keyings or their audit.
_BARE_INSERT = sa.text(
    """
    INSERT INTO observation (station_id, element_id, phenomenon_time, duration_seconds, level, source_id, value,
                             result_quality, qc_status, version, status, changed_at, changed_by)
    SELECT :station, e.id, r.time, 86400, 0, :source, r.value, '{}'::jsonb, 'none', 1, 'latest', now(), 'bench-apps'
    FROM unnest(CAST(:codes AS text[]), CAST(:times AS timestamptz[]), CAST(:values AS float8[])) AS r (code, time, value)
    JOIN element AS e ON e.code = r.code
    """
)


def bare_insert(datastore: Datastore, month: str, rows: list[tuple[int, str, float]], station_id: int,
                source_id: int) -> None:
    """The baseline: the month's values straight into ``observation``, one statement."""
    year, number = (int(part) for part in month.split("-"))
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("SELECT set_config('opencdms.user', 'bench-apps', true)"))
        written = connection.execute(_BARE_INSERT, {
            "station": station_id, "source": source_id, "codes": [code for _, code, _ in rows],
            "times": [f"{year:04d}-{number:02d}-{day:02d}T00:00:00Z" for day, _, _ in rows],
            "values": [value for _, _, value in rows]}).rowcount
    if written != len(rows):
        raise SystemExit(f"the baseline wrote {written} of {len(rows)} rows")


def measure_saves(datastore: Datastore, settings: Settings, repeat: int) -> list[Measurement]:
    """First keying, second keying (+ commit) and the bare insert of a full month, ``repeat``
    times each on months of their own (one untimed round first)."""
    form = shipped_form(FORM)
    clerks = {name: Datastore.open(login_settings(datastore, settings, name, HubRole.CLERK))
              for name in ("bench-clerk-1", "bench-clerk-2")}
    cells = month_cells(31)
    values = [(day, code, float(cell.text) if cell.text != "T" else 0.0)
              for (day, code), cell in cells.items()]
    with datastore.engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO source (name) VALUES ('bench-apps-baseline')"))
        source_id = connection.execute(sa.text("SELECT id FROM source WHERE name = 'bench-apps-baseline'")).scalar_one()
        station_id = connection.execute(sa.text("SELECT id FROM station WHERE wigos_id = :w"),
                                        {"w": STATION_B}).scalar_one()
    first = Measurement("save: 1st keying of a month (186 cells)", len(cells))
    second = Measurement("save: 2nd keying + commit (186 observations)", len(cells))
    bare = Measurement("baseline: 186 rows, one bare INSERT", len(cells))
    try:
        for round_, (month, other) in enumerate(zip(long_months(repeat + 1, 2021), long_months(repeat + 1, 2031))):
            for name, measurement in zip(clerks, (first, second)):
                view = open_sheet(clerks[name], form, STATION_B, month, user=name, role=HubRole.CLERK)
                began = time.perf_counter()
                result = save_keying(clerks[name], view, cells)
                elapsed = time.perf_counter() - began
                if round_:
                    measurement.seconds.append(elapsed)
            if result.written != len(cells):
                raise SystemExit(f"the second keying of {month} wrote {result.written} observations: {result.message}")
            began = time.perf_counter()
            bare_insert(datastore, other, values, station_id, source_id)
            if round_:
                bare.seconds.append(time.perf_counter() - began)
    finally:
        for clerk in clerks.values():
            clerk.close()
    return [first, second, bare]


# --------------------------------------------------------------------------- kernel: the series redrawn


def measure_redraws(datastore: Datastore, settings: Settings, repeat: int) -> list[Measurement]:
    """The explorer's series redrawn in place by the app's own code, ``repeat`` times (one
    untimed first), beside the series query alone; 30 years of daily values each time."""
    import param
    from bokeh.document import Document
    from bokeh.protocol import Protocol

    from apps._panel import setup
    from apps.explorer import Explorer
    from opencdms_kernel import explore
    from opencdms_kernel.catalog import close_catalog, open_catalog

    setup()
    as_scientist = login_settings(datastore, settings, "bench-scientist", HubRole.SCIENTIST)
    catalog = open_catalog(as_scientist)
    query = Measurement("baseline: explore.series alone (30 y daily)", 0)
    redraw = Measurement("redraw: Explorer.draw_series in place", 0)
    try:
        explorer = Explorer(as_scientist, catalog)
        document = Document()
        document.add_root(explorer.page().get_root(document))
        events: list[object] = []
        document.on_change(events.append)
        protocol = Protocol()
        for round_ in range(repeat + 1):
            element = ("TMIN", "TMAX")[round_ % 2]  # each redraw shows other values than the last
            with param.discard_events(explorer.element):  # the series only, not the whole page
                explorer.element.value = element
            events.clear()
            began = time.perf_counter()
            explorer.draw_series()
            message = protocol.create("PATCH-DOC", list(events))  # what goes to the browser
            elapsed = time.perf_counter() - began
            if not message.buffers:
                raise SystemExit(f"redrawing {element} sent the browser no data: the plot was not updated")
            began = time.perf_counter()
            found = explore.series(catalog, STATION_A, element)
            alone = time.perf_counter() - began
            if round_:
                redraw.seconds.append(elapsed)
                query.seconds.append(alone)
                redraw.items = query.items = found.count
    finally:
        close_catalog(catalog)
    return [redraw, query]


# --------------------------------------------------------------------------- browser


@dataclass
class Marks:
    """The seconds from a page's navigation to each of its marks, per timed load."""

    name: str
    runs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, marks: dict[str, float]) -> None:
        for mark, seconds in marks.items():
            self.runs.setdefault(mark, []).append(seconds)

    def median(self, mark: str) -> float:
        return statistics.median(self.runs[mark])


def bare_notebook(folder: Path) -> None:
    """A Voilà page of one Text widget, with the data-entry app's kernel and page template."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cell = new_code_cell('import ipywidgets as widgets\n\nbox = widgets.Text(description="One")\n'
                         'box.add_class("bench-one")\nbox')
    notebook = new_notebook(cells=[cell], metadata={
        "kernelspec": {"name": "opencdms", "display_name": "OpenCDMS (Python 3)", "language": "python"},
        "language_info": {"name": "python"}, "voila": {"template": "opencdms"}})
    nbformat.write(notebook, folder / BARE_NOTEBOOK)


def log_in(page: object, hub_url: str, name: str, password: str) -> None:
    """Through the hub's login form, as a person would (the server spawns after it)."""
    page.goto(f"{hub_url}hub/login")  # type: ignore[attr-defined]
    page.fill("#username_input", name)  # type: ignore[attr-defined]
    page.fill("#password_input", password)  # type: ignore[attr-defined]
    with page.expect_navigation():  # type: ignore[attr-defined]
        page.click("#login_submit")  # type: ignore[attr-defined]


def timed_marks(context: object, url: str, steps: Callable[[object, float], dict[str, float]],
                leaving: set[str]) -> dict[str, float]:
    """Load ``url`` in a new page of ``context`` and return the marks ``steps`` reports
    (seconds since the navigation began); the page's requests that left 127.0.0.1 go to ``leaving``."""
    from support.apps import record_requests

    page = context.new_page()  # type: ignore[attr-defined]
    recorded = record_requests(page)
    try:
        began = time.perf_counter()
        response = page.goto(url, wait_until="commit", timeout=TIMEOUT_MS)
        marks = steps(page, began)
        # When the server had sent the whole page (Voilà streams it as the notebook runs; Panel
        # runs the app's script first): the server's share of the marks.
        received = response.request.timing["responseEnd"] if response is not None else -1
        return ({"page sent by the server": received / 1000} if received > 0 else {}) | marks
    finally:
        leaving.update(f"{url.rsplit('/', 1)[-1]}: {left}" for left in recorded.leaving())
        page.close()


def bare_steps(page: object, began: float) -> dict[str, float]:
    page.locator(".bench-one input").wait_for(state="visible", timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
    return {"box shown": time.perf_counter() - began}


def data_entry_steps(page: object, began: float) -> dict[str, float]:
    period = page.locator(".keying-period input")  # type: ignore[attr-defined]
    period.wait_for(state="visible", timeout=TIMEOUT_MS)
    interactive = time.perf_counter() - began
    page.locator(".keying-app select").nth(1).select_option(label=shipped_form(FORM).title)  # type: ignore[attr-defined]
    period.fill(PAGE_PERIOD)
    period.press("Enter")  # opens the sheet (the page's keys), which focuses its first cell
    page.wait_for_function(  # type: ignore[attr-defined]
        "document.activeElement !== null && document.activeElement.closest('.kc-1-TMAX') !== null",
        timeout=TIMEOUT_MS, polling=20)
    return {"page interactive": interactive, "grid's first cell focused": time.perf_counter() - began}


def explorer_steps(page: object, began: float) -> dict[str, float]:
    page.locator(".explorer-page select").first.wait_for(state="visible", timeout=TIMEOUT_MS)  # type: ignore[attr-defined]
    shown = time.perf_counter() - began
    page.wait_for_function(FIRST_CANVAS_JS, timeout=TIMEOUT_MS, polling=50)  # type: ignore[attr-defined]
    first = time.perf_counter() - began
    page.wait_for_selector(".explorer-status .app-message.ok:has-text('Showing TMAX at')",  # type: ignore[attr-defined]
                           timeout=TIMEOUT_MS)
    page.wait_for_function(EVERY_PLOT_JS, arg=list(DRAWN_PLOTS), timeout=TIMEOUT_MS, polling=50)  # type: ignore[attr-defined]
    return {"page interactive": shown, "first plot painted": first, "every plot drawn": time.perf_counter() - began}


def measure_pages(database_url: str, home: Path, repeat: int) -> tuple[Marks, Marks, Marks, set[str]]:
    """The three pages through a real hub, ``repeat`` timed loads each (after one untimed)."""
    from playwright.sync_api import sync_playwright

    from services.hub.config import _user_home  # where SimpleLocalProcessSpawner puts each user's home
    from support.browser import CHROMIUM, CHROMIUM_ARGS
    from support.hub import started_hub

    bare, entry, explorer = Marks("(c) bare Voilà, one widget"), Marks("(a) data entry"), Marks("(b) explorer")
    leaving: set[str] = set()
    with ExitStack() as stack:
        began = time.perf_counter()
        hub = stack.enter_context(started_hub(home, database_url=database_url))
        clerk = hub.create_native_user(CLERK, HubRole.CLERK)
        scientist = hub.create_native_user(SCIENTIST, HubRole.SCIENTIST)
        print(f"hub started, two users signed up and authorised: {time.perf_counter() - began:.1f} s", flush=True)
        playwright = stack.enter_context(sync_playwright())
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        stack.callback(browser.close)
        contexts = {}
        for user, landing in ((clerk, f"**/user/{CLERK}/opencdms-entry/**"), (scientist, f"**/user/{SCIENTIST}/lab**")):
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            began = time.perf_counter()
            log_in(page, hub.url, user.name, user.password or "")
            page.wait_for_url(landing, timeout=TIMEOUT_MS)
            print(f"{user.name} ({user.role.value}): login to server ready {time.perf_counter() - began:.1f} s",
                  flush=True)
            page.close()
            contexts[user.name] = context
        bare_notebook(_user_home(hub.settings) / CLERK)
        pages = [
            (bare, contexts[CLERK], f"{hub.url}user/{CLERK}/voila/render/{BARE_NOTEBOOK}", bare_steps),
            (entry, contexts[CLERK], f"{hub.url}user/{CLERK}/opencdms-entry/", data_entry_steps),
            (explorer, contexts[SCIENTIST], f"{hub.url}user/{SCIENTIST}/opencdms-apps/explorer",
             explorer_steps),
        ]
        for round_ in range(repeat + 1):  # round 0 warms servers, kernels and the browser's cache
            line = []
            for marks, context, url, steps in pages:
                found = timed_marks(context, url, steps, leaving)
                if round_:
                    marks.add(found)
                line.append(f"{marks.name.split(' ')[0]} " + ", ".join(f"{s:.2f}" for s in found.values()))
            print(f"{'warm-up' if not round_ else f'round {round_}'}: " + "; ".join(line) + " s", flush=True)
    return bare, entry, explorer, leaving


def print_pages(bare: Marks, entry: Marks, explorer: Marks, leaving: set[str]) -> None:
    baseline = bare.median("box shown")
    print("\n== Apps through the hub, in chromium: time to first interactive render (median) ==")
    for marks in (bare, entry, explorer):
        for mark, runs in marks.runs.items():
            median = statistics.median(runs)
            print(f"{marks.name + ': ' + mark:<56} median {median:7.2f} s  ({median / baseline:5.2f}x (c))   "
                  f"runs: {', '.join(f'{s:.2f}' for s in runs)}")
    for label, value in (("(a) data entry, grid's first cell focused (s)", entry.median("grid's first cell focused")),
                         ("(b) explorer, first plot painted (s)", explorer.median("first plot painted"))):
        print(f"{label:<64} {value:8.3f}  (target <= {RENDER_TARGET}: "
              f"{'meets' if value <= RENDER_TARGET else 'MISSES'})")
    print("requests that left 127.0.0.1: " + ("none" if not leaving else ""))
    for left in sorted(leaving):
        print(f"  {left}")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs of each measurement (median)")
    parser.add_argument("--skip-browser", action="store_true", help="no hub, no browser: the kernel figures only")
    parser.add_argument("--skip-kernel", action="store_true", help="the browser figures only")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="opencdms-bench-apps-"))
    try:
        with postgres_admin_url() as admin_url, scratch_datastore(admin_url, home / "bucket") as (datastore, settings):
            try:
                began = time.perf_counter()
                seed(datastore, settings)
                print(f"scratch database seeded and archived: {time.perf_counter() - began:.1f} s", flush=True)
                if not args.skip_kernel:
                    saves = measure_saves(datastore, settings, args.repeat)
                    redraws = measure_redraws(datastore, settings, args.repeat)
                    report(f"Apps, kernel level (median of {args.repeat})", saves + redraws, [
                        ("save of a full month: 1st keying (s)", saves[0].median, "<=", SAVE_TARGET),
                        ("save of a full month: 2nd keying + commit (s)", saves[1].median, "<=", SAVE_TARGET),
                        ("30-year series redraw in place (s)", redraws[0].median, "<=", REDRAW_TARGET),
                    ])
                    print(f"{'ratio: 2nd keying + commit / bare insert':<64} {saves[1].median / saves[2].median:8.2f}x")
                    print(f"{'ratio: 1st keying / bare insert':<64} {saves[0].median / saves[2].median:8.2f}x")
                    print(f"{'ratio: series redraw / series query alone':<64} "
                          f"{redraws[0].median / redraws[1].median:8.2f}x", flush=True)
                if not args.skip_browser:
                    print_pages(*measure_pages(str(settings.database_url), home, args.repeat))
            finally:
                drop_roles(datastore)  # the installation's and the hub users' logins (cluster-wide)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
