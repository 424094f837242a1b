"""What the Panel apps (explorer, QC review, administration) share: what a server process
keeps for its sessions (the catalog), messages, a session's page, and HoloViews' Bokeh backend
set up once.

Assets: ``panel serve`` serves Bokeh's, Panel's and its extensions' JavaScript and CSS from its
own ``/static`` routes (``pn.config.resources`` stays ``server``), and nothing here names a
CDN, a web font or a map tile (a tile URL is the optional ``apps_map_tile_url`` setting).
"""

from __future__ import annotations

import html
from typing import Callable, Protocol, TypeVar

import holoviews as hv
import panel as pn
from intake.readers.entry import Catalog

from opencdms_kernel.catalog import open_catalog
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings

T = TypeVar("T")

# Each Panel component draws in a shadow root of its own: the style goes with the pane.
_MESSAGE_STYLE = {"ok": "background:#e6f4ea;color:#1e4620", "error": "background:#fdecea;color:#611a15",
                  "info": "background:#e8f0fe;color:#174ea6"}


def setup() -> None:
    """Panel's extensions for the apps (Tabulator tables, HoloViews plots), resources local."""
    pn.extension("tabulator")
    hv.extension("bokeh", logo=False)


def shared(key: str, make: Callable[[], T]) -> T:
    """One ``make()`` per server process under ``key``, shared by its sessions (e.g. a
    datastore pool)."""
    found = pn.state.cache.get(key)
    if found is None:
        found = pn.state.cache[key] = make()
    return found


def shared_catalog(settings: Settings) -> Catalog:
    """One catalog (and so one datastore pool) per server process, shared by its sessions."""
    return shared("opencdms-apps-catalog", lambda: open_catalog(settings))


def message(text: str, kind: str = "info") -> str:
    """A line of feedback as HTML (escaped: messages quote what people typed); ``kind``: ok,
    error or info (the CSS class ``app-message <kind>`` lets tests find it)."""
    return (f'<div class="app-message {kind}" style="{_MESSAGE_STYLE[kind]};padding:6px 10px;'
            f'border-radius:4px">{html.escape(text)}</div>')


def refusal(error: Exception) -> str:
    """What the page says when the kernel refuses: its message, which names the field at fault."""
    if isinstance(error, OpenCDMSError):
        return message(str(error), "error")
    return message(f"{type(error).__name__}: {error}", "error")


class SessionApp(Protocol):
    """An app object made for one browser session."""

    def page(self) -> pn.viewable.Viewable: ...

    def load(self) -> None: ...


def session_page(make: Callable[[], SessionApp]) -> pn.viewable.Viewable:
    """The page of the app ``make`` builds for this session, or the kernel's refusal (which names
    what is wrong).  The page is sent at once; its data loads once the browser has it (over its
    websocket)."""
    try:
        app = make()
    except OpenCDMSError as error:
        return pn.pane.HTML(refusal(error))
    pn.state.onload(app.load)
    return app.page()
