"""Hub timings, medians of N: hub start to login page, login to server ready (spawn), first render
of JupyterLab in Debian's chromium; beside them, the same run's bare JupyterLab start (what `up`
started before the hub) as the baseline.  Then `make demo`'s `opencdms up` on a fresh folder
(warm venv) to "running" — beside it, in the same run, the time its steps before the hub took
(datastore, demo data, archive: what `up` is without the hub) — and, in that installation (its
datastore, so each spawn makes the user's database login; its API, events, worker and culler
running), the administrator's login to server ready and JupyterLab's first render, N times (the
server stopped between).  Targets (issue 12): spawn <= 5 s; `make demo` to ready <= 60 s.

    .venv/bin/python bench/hub.py [--repeat 5] [--demo-repeat 1]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from support.hub import hub_settings  # noqa: E402

from opencdms_kernel.hub import running_hub  # noqa: E402
from opencdms_kernel.lab import jupyterlab  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402


# `up`'s line with the first administrator's generated password (printed once).
ADMIN_LINE = re.compile(r"^admin\s+user (?P<user>\S+), password (?P<password>\S+)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo-repeat", type=int, default=1, help="fresh `opencdms up` runs to ready (0: none)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    starts, spawns, renders, labs = [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        demo_spawns: list[float] = []
        demo_renders: list[float] = []
        for _ in range(args.demo_repeat):
            ready, before_hub = demo_to_ready(browser, args.repeat, demo_spawns, demo_renders)
            print(f"`opencdms up` (fresh folder, default demo) to ready: {ready:.1f} s; its steps before the hub: "
                  f"{before_hub:.1f} s; the hub and its services: {ready - before_hub:.1f} s (target: ready <= 60 s)",
                  flush=True)
        if demo_spawns:
            print(f"in that installation, median of {len(demo_spawns)}: login to server ready "
                  f"{statistics.median(demo_spawns):.2f} s (target <= 5 s; runs: "
                  f"{', '.join(f'{s:.2f}' for s in demo_spawns)}); first JupyterLab render "
                  f"{statistics.median(demo_renders):.2f} s", flush=True)
        for round_ in range(args.repeat):
            home = Path(tempfile.mkdtemp(prefix="opencdms-bench-hub-"))
            began = time.perf_counter()
            with jupyterlab(Settings(home=home), port=0 or 18888):
                labs.append(time.perf_counter() - began)
            settings = hub_settings(home)
            began = time.perf_counter()
            with running_hub(settings) as hub:
                page = browser.new_page()
                page.goto(f"{hub.url}hub/login")
                starts.append(time.perf_counter() - began)
                hub.api("POST", "/groups/scientist/users", {"users": [hub.admin_user]})
                spawned, rendered = login_to_lab(page, hub.admin_user, hub.admin_password or "")
                spawns.append(spawned)
                renders.append(rendered)
                page.close()
            print(f"round {round_ + 1}: lab {labs[-1]:.2f} s, hub {starts[-1]:.2f} s, "
                  f"spawn {spawns[-1]:.2f} s, render {renders[-1]:.2f} s", flush=True)
        browser.close()
    lab, start = statistics.median(labs), statistics.median(starts)
    print(f"median of {args.repeat}: bare JupyterLab start {lab:.2f} s; hub start to login page {start:.2f} s "
          f"({start / lab:.2f}x the bare lab); login to server ready {statistics.median(spawns):.2f} s "
          f"(target <= 5 s); first JupyterLab render {statistics.median(renders):.2f} s")


def login_to_lab(page: Any, user: str, password: str) -> tuple[float, float]:
    """On the hub's login page: seconds from submitting the form to the server's JupyterLab URL
    (the spawn), then to JupyterLab's main area drawn."""
    began = time.perf_counter()
    page.fill("#username_input", user)
    page.fill("#password_input", password)
    with page.expect_navigation():
        page.click("#login_submit")
    page.wait_for_url("**/user/**/lab**", timeout=120_000)
    spawned = time.perf_counter() - began
    began = time.perf_counter()
    page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
    return spawned, time.perf_counter() - began


def spawn_in_demo(browser: Any, hub_url: str, user: str, password: str) -> tuple[float, float]:
    """One login (a new browser context) to the administrator's JupyterLab in the running `up`;
    the server is stopped afterwards, through the hub's API with the login's own cookie."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{hub_url}hub/login")
        spawned, rendered = login_to_lab(page, user, password)
        # The hub's own _xsrf cookie (the user's server sets another, under its path).
        xsrf = next(cookie["value"] for cookie in context.cookies(f"{hub_url}hub/api/")
                    if cookie["name"] == "_xsrf" and cookie["path"].startswith("/hub"))
        stopped = context.request.delete(f"{hub_url}hub/api/users/{user}/server", headers={"X-XSRFToken": xsrf})
        if stopped.status not in (202, 204):
            raise SystemExit(f"stopping {user}'s server answered {stopped.status}: {stopped.text()}")
        deadline = time.monotonic() + 120
        while context.request.get(f"{hub_url}hub/api/users/{user}",
                                  headers={"X-XSRFToken": xsrf}).json().get("servers"):
            if time.monotonic() > deadline:
                raise SystemExit(f"{user}'s server did not stop within 120 s")
            time.sleep(0.2)
        return spawned, rendered
    finally:
        context.close()


def demo_to_ready(browser: Any, spawns: int, spawn_seconds: list[float],
                  render_seconds: list[float]) -> tuple[float, float]:
    """`opencdms up` in a fresh folder (on ports of its own): seconds to "running" (its Ctrl-C
    prompt), and to the end of its steps before the hub (the archive export line); then
    ``spawns`` logins of its administrator, their spawn and render seconds added to the lists."""
    home = Path(tempfile.mkdtemp(prefix="opencdms-bench-demo-"))
    ports = hub_settings(home)  # free ports for the hub, its proxy and the API
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OPENCDMS_")}
    environment.update({"OPENCDMS_HOME": str(home), "COLUMNS": "200", "OPENCDMS_HUB_PORT": str(ports.hub_port),
                        "OPENCDMS_HUB_API_PORT": str(ports.hub_api_port),
                        "OPENCDMS_HUB_PROXY_API_PORT": str(ports.hub_proxy_api_port),
                        "OPENCDMS_API_PORT": str(ports.api_port)})
    began = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "opencdms_kernel.cli", "up"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True)
    marks: dict[str, float] = {}

    login: dict[str, str] = {}

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("archive:"):
                marks["before_hub"] = time.perf_counter() - began
            if found := ADMIN_LINE.search(line):
                login.update(user=found["user"], password=found["password"])
            if "press Ctrl-C" in line:
                marks["ready"] = time.perf_counter() - began

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while "ready" not in marks:
            if process.poll() is not None:
                raise SystemExit(f"`opencdms up` exited with {process.returncode} before it was ready")
            time.sleep(0.1)
        if not login:
            raise SystemExit("`opencdms up` printed no administrator's password")
        hub_url = f"http://127.0.0.1:{ports.hub_port}/"
        for _ in range(spawns):
            spawned, rendered = spawn_in_demo(browser, hub_url, login["user"], login["password"])
            spawn_seconds.append(spawned)
            render_seconds.append(rendered)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    return marks["ready"], marks["before_hub"]


if __name__ == "__main__":
    main()
