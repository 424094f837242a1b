"""Hub timings, medians of N: hub start to login page, login to server ready (spawn), first render
of JupyterLab in Debian's chromium; beside them, the same run's bare JupyterLab start (what `up`
started before the hub) as the baseline.  Then `make demo`'s `opencdms up` on a fresh folder
(warm venv) to "running" — beside it, in the same run, the time its steps before the hub took
(datastore, demo data, archive: what `up` is without the hub).  Targets (issue 12): spawn <= 5 s;
`make demo` to ready <= 60 s.

    .venv/bin/python bench/hub.py [--repeat 5] [--demo-repeat 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from support.hub import hub_settings  # noqa: E402

from opencdms_kernel.hub import running_hub  # noqa: E402
from opencdms_kernel.lab import jupyterlab  # noqa: E402
from opencdms_kernel.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--demo-repeat", type=int, default=1, help="fresh `opencdms up` runs to ready (0: none)")
    args = parser.parse_args()
    demo_runs = [demo_to_ready() for _ in range(args.demo_repeat)]
    for ready, before_hub in demo_runs:
        print(f"`opencdms up` (fresh folder, default demo) to ready: {ready:.1f} s; its steps before the hub: "
              f"{before_hub:.1f} s; the hub and its services: {ready - before_hub:.1f} s (target: ready <= 60 s)",
              flush=True)
    from playwright.sync_api import sync_playwright

    starts, spawns, renders, labs = [], [], [], []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
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
                began = time.perf_counter()
                page.fill("#username_input", hub.admin_user)
                page.fill("#password_input", hub.admin_password or "")
                with page.expect_navigation():
                    page.click("#login_submit")
                page.wait_for_url("**/user/**/lab**", timeout=120_000)
                spawns.append(time.perf_counter() - began)
                began = time.perf_counter()
                page.wait_for_selector("#jp-main-dock-panel", timeout=120_000)
                renders.append(time.perf_counter() - began)
                page.close()
            print(f"round {round_ + 1}: lab {labs[-1]:.2f} s, hub {starts[-1]:.2f} s, "
                  f"spawn {spawns[-1]:.2f} s, render {renders[-1]:.2f} s", flush=True)
        browser.close()
    lab, start = statistics.median(labs), statistics.median(starts)
    print(f"median of {args.repeat}: bare JupyterLab start {lab:.2f} s; hub start to login page {start:.2f} s "
          f"({start / lab:.2f}x the bare lab); login to server ready {statistics.median(spawns):.2f} s "
          f"(target <= 5 s); first JupyterLab render {statistics.median(renders):.2f} s")


def demo_to_ready() -> tuple[float, float]:
    """`opencdms up` in a fresh folder (on ports of its own): seconds to "running" (its Ctrl-C
    prompt), and to the end of its steps before the hub (the archive export line)."""
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

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            if line.startswith("archive:"):
                marks["before_hub"] = time.perf_counter() - began
            if "press Ctrl-C" in line:
                marks["ready"] = time.perf_counter() - began

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while "ready" not in marks:
            if process.poll() is not None:
                raise SystemExit(f"`opencdms up` exited with {process.returncode} before it was ready")
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
        shutil.rmtree(home, ignore_errors=True)
    return marks["ready"], marks["before_hub"]


if __name__ == "__main__":
    main()
