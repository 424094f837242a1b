"""Hub timings, medians of N: hub start to login page, login to server ready (spawn), first render
of JupyterLab in Debian's chromium; beside them, the same run's bare JupyterLab start (what `up`
started before the hub) as the baseline.  Targets (issue 12): spawn <= 5 s.

    .venv/bin/python bench/hub.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
