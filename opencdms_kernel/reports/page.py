"""The report: one self-contained HTML page, built section by section and written whole.

Tables, and PNG images inline as ``data:`` URIs; no scripts, fonts or styles from elsewhere, so
the page opens offline.  A report is written to the bucket in one write, never half-written.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping

import pandas as pd

from opencdms_kernel.products.model import figure
from opencdms_kernel.reports.figures import figure_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from opencdms_kernel.bucket import Bucket


@dataclass(frozen=True)
class Picture:
    """A PNG image that shows itself in a notebook (and was added to a report)."""

    png: bytes = field(repr=False)  # not in the notebook's text/plain output
    caption: str = ""

    def _repr_png_(self) -> bytes:
        return self.png


_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 64rem; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
p.meta { color: #666; font-size: 0.85rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.5rem; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; }
figcaption { color: #444; font-size: 0.85rem; }
pre { background: #f7f7f7; padding: 0.6rem; overflow-x: auto; }
"""


@dataclass
class Report:
    """An HTML report built section by section, then written whole to the bucket.

    ``parameters`` (the notebook's) are listed at the end, so a report says how it was made.
    The methods return what they added in a form a notebook shows (a DataFrame, a
    :class:`Picture`), so a cell adds to the report and shows the same thing.
    """

    title: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    made_by: str = ""
    parts: list[str] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def preformatted(self, text: str, caption: str = "") -> None:
        label = f"<p><strong>{html.escape(caption)}</strong></p>" if caption else ""
        self.parts.append(f"{label}<pre>{html.escape(text)}</pre>")

    def table(self, frame: pd.DataFrame, caption: str = "", *, decimals: int = 1, index: bool = False) -> pd.DataFrame:
        """Add ``frame`` as a table (numbers rounded to ``decimals``); returns it for display."""
        rendered = frame.to_html(
            index=index, na_rep="", border=0, classes="data", escape=True,
            # Rounded as CLIMAT and the BUFR messages round (half away from zero), so a figure
            # of the report is the figure of the messages to the last digit.
            float_format=lambda value: format(figure(value, decimals), "f"),
        )
        if caption:
            rendered = rendered.replace(">", f"><caption>{html.escape(caption)}</caption>", 1)
        self.parts.append(rendered)
        return frame

    def figure(self, figure: Figure, caption: str = "") -> Picture:
        """Add the figure as an inline PNG; returns it as a :class:`Picture` for the notebook."""
        png = figure_png(figure)
        encoded = base64.b64encode(png).decode("ascii")
        alt = html.escape(caption or self.title, quote=True)
        caption_html = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(f'<figure><img src="data:image/png;base64,{encoded}" alt="{alt}">{caption_html}</figure>')
        return Picture(png, caption)

    def to_html(self) -> str:
        made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        by = f" by {html.escape(self.made_by)}" if self.made_by else ""
        parameters = ""
        if self.parameters:
            rows = "".join(
                f"<tr><td>{html.escape(str(name))}</td><td>{html.escape(_parameter_text(value))}</td></tr>"
                for name, value in self.parameters.items()
            )
            parameters = f"<h2>Parameters</h2><table><tr><th>name</th><th>value</th></tr>{rows}</table>"
        description = f"<p>{html.escape(self.description)}</p>" if self.description else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(self.title)}</h1>\n{description}\n"
            f"<p class=\"meta\">Made {made}{by} (OpenCDMS Workbench)</p>\n"
            + "\n".join(self.parts)
            + f"\n{parameters}\n</body>\n</html>\n"
        )

    def write(self, bucket: "Bucket", key: str) -> str:
        """Write the report to ``key`` in the bucket (whole, never half-written); returns the key."""
        bucket.write_bytes(key, self.to_html().encode("utf-8"))
        return key


def _parameter_text(value: Any) -> str:
    if value is None or value == []:
        return "(none: all)" if value == [] else "(none)"
    if isinstance(value, str):
        return value if value else "(empty)"
    return json.dumps(value, default=str)
