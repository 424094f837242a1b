"""The apps as long-running processes of each user's server, behind jupyter-server-proxy.

Why not Voilà's server extension and Panel's ``panel-preview`` inside the server: both start a
kernel for every page load (4 to 20 s before a clerk can type).  Here each app is one process per
user's server, started on the first visit, that keeps what is slow warm:

- ``/user/<name>/opencdms-entry/``: Voilà on the data-entry notebook with a preheated kernel
  (the notebook already run when the page is asked for; ``apps/jupyter/voila.json``);
- ``/user/<name>/opencdms-apps/<app>``: ``panel serve`` of the explorer, the QC review and the
  administration (one Python process; a page is a Bokeh session in it, not a kernel).

They inherit the server's environment: they act for its user (``OPENCDMS_USER``, the user's
database login, the server's hub token for the admin app).  The proxy only lets the server's
owner in (the hub's login); the processes themselves must not be reachable another way, so
Panel listens on a Unix socket in a private folder and Voilà (TCP only) asks for a token that
only the proxy knows (``OPENCDMS_APPS_TOKEN``, read by ``apps/jupyter/voila.py``; never on a
command line, which other local users can read).

Registered as ``jupyter_serverproxy_servers`` entry points (pyproject.toml).
"""

from __future__ import annotations

import secrets
import sys
from functools import cache
from pathlib import Path
from typing import Any

APPS = Path(__file__).resolve().parent
ENTRY_PATH = "opencdms-entry"
PANEL_PATH = "opencdms-apps"
PANEL_APPS = ("explorer", "qc_review", "admin")
TOKEN_VARIABLE = "OPENCDMS_APPS_TOKEN"
# A first start imports the kernel, Panel and Bokeh (several seconds on a busy machine).
START_TIMEOUT = 90.0


@cache
def _token() -> str:
    """This server's secret between the proxy and Voilà (made once per server process)."""
    return secrets.token_urlsafe(32)


def data_entry_server() -> dict[str, Any]:
    """jupyter-server-proxy's description of the data-entry app (Voilà, preheated kernel)."""
    return {
        "command": [
            sys.executable, "-m", "voila", str(APPS / "data_entry.ipynb"), "--no-browser",
            "--port={port}", "--Voila.ip=127.0.0.1",
            # The browser's links go through the proxy; Voilà itself answers at its root.
            "--Voila.base_url={base_url}" + ENTRY_PATH + "/", "--Voila.server_url=/",
        ],
        "environment": {TOKEN_VARIABLE: _token()},
        "request_headers_override": {"Authorization": f"token {_token()}"},
        "timeout": START_TIMEOUT,
        "launcher_entry": {"title": "Data entry", "icon_path": str(APPS / "jupyter" / "icons" / "data-entry.svg"),
                           "category": "OpenCDMS"},
    }


def panel_apps_server() -> dict[str, Any]:
    """jupyter-server-proxy's description of the Panel apps (one ``panel serve`` process)."""
    return {
        "command": [
            sys.executable, "-m", "panel", "serve", *(str(APPS / f"{app}.py") for app in PANEL_APPS),
            "--unix-socket={unix_socket}", "--prefix={base_url}" + PANEL_PATH,
            # The socket is private; the browser's origin is the hub's, whatever its address.
            "--allow-websocket-origin=*", "--num-procs=1",
        ],
        "unix_socket": True,
        "absolute_url": True,  # Bokeh serves under its --prefix
        "timeout": START_TIMEOUT,
        "launcher_entry": {"title": "Explorer", "path_info": f"{PANEL_PATH}/explorer",
                           "icon_path": str(APPS / "jupyter" / "icons" / "explorer.svg"), "category": "OpenCDMS"},
    }
