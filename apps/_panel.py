"""What the Panel apps of the explorer and the QC review share: the catalog of the server
process, messages, and HoloViews' Bokeh backend set up once.

Assets: ``panel serve`` serves Bokeh's, Panel's and its extensions' JavaScript and CSS from its
own ``/static`` routes (``pn.config.resources`` stays ``server``), and nothing here names a
CDN, a web font or a map tile (a tile URL is the optional ``apps_map_tile_url`` setting).
"""

from __future__ import annotations

import html

import holoviews as hv
import panel as pn
from intake.readers.entry import Catalog

from opencdms_kernel.catalog import open_catalog
from opencdms_kernel.errors import OpenCDMSError
from opencdms_kernel.settings import Settings

# Each Panel component draws in a shadow root of its own: the style goes with the pane.
_MESSAGE_STYLE = {"ok": "background:#e6f4ea;color:#1e4620", "error": "background:#fdecea;color:#611a15",
                  "info": "background:#e8f0fe;color:#174ea6"}


def setup() -> None:
    """Panel's extensions for the apps (Tabulator tables, HoloViews plots), resources local."""
    pn.extension("tabulator")
    hv.extension("bokeh", logo=False)


def shared_catalog(settings: Settings) -> Catalog:
    """One catalog (and so one datastore pool) per server process, shared by its sessions."""
    key = "opencdms-apps-catalog"
    catalog = pn.state.cache.get(key)
    if catalog is None:
        catalog = pn.state.cache[key] = open_catalog(settings)
    return catalog


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
